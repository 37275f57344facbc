"""The Redis Streams bus: consumer groups, reclaiming of stuck entries, dead letters, pub/sub.

Names (prefix `clarion` by default; see docs/bus.md):

- the stream `events` is the key `clarion:events`; each entry has one field, `payload`, a JSON
  object. Its dead letters go to `clarion:events.dead`, in the same shape.
- publish dedupe markers are `clarion:events:seen:<message id>`, set in the same script as the
  XADD and kept for the dedupe window;
- the broadcast channel `realtime` is the pub/sub channel `clarion:broadcast:realtime`.

A group is created at `0` (it starts from the oldest entry the stream holds). Each consumer
reads new entries with XREADGROUP and, every poll interval, takes over entries other consumers
left idle for longer than the visibility timeout (XAUTOCLAIM, which counts a delivery). An
entry whose delivery count passes `max_deliveries` is moved to the dead-letter stream and
acknowledged, in one MULTI. Streams are capped with `MAXLEN ~`.

Durability is Redis's own (AOF/RDB, asynchronous replication): a failover can lose acknowledged
entries, which the outbox relay hands on again. Dedupe holds within the window on one server;
a failover can lose a marker together with the entries it guarded.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import json
import logging
import os
import re
import secrets
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, NoReturn

from redis import exceptions as redis_errors
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.client import PubSub
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff

from clarion.adapters.bus import messages
from clarion.adapters.bus.messages import (
    COMMAND_TIMEOUT,
    DEDUPE_WINDOW,
    MAX_DELIVERIES,
    MAX_LENGTH,
    POLL_INTERVAL,
    PREFETCH,
    RECONNECT_BASE,
    RECONNECT_MAX,
    VISIBILITY_TIMEOUT,
    Acknowledgeable,
    Backoff,
    StoredDeadLetter,
    check_channel,
    check_group,
    check_stream,
    raise_if_cancelled,
)
from clarion.domain import errors

log = logging.getLogger(__name__)

PREFIX = "clarion"  # every key and channel starts with it, so one Redis can serve other apps
# A consumer that has held nothing and done nothing for this long belongs to a process that is
# gone (live consumers read every poll interval); it is removed from the group's listing.
STALE_CONSUMER_MS = 3_600_000
# Connections per process: blocked reads (one per consumer), pub/sub, and bursts of commands
# (a batch's acknowledgements, the relay's publishes), which wait for one past this.
MAX_CONNECTIONS = 64
_ACK_CHUNK = 500  # entry ids per XACK

# XADD unless the message id was published within the window (KEYS: stream, marker; ARGV:
# payload, max length, window in ms). The marker is set after the XADD succeeds, so a failed
# append never makes its retry look like a duplicate. Returns the entry id, or nil.
PUBLISH_ONCE = """
if redis.call('EXISTS', KEYS[2]) == 1 then
  return false
end
local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], '*', 'payload', ARGV[1])
redis.call('SET', KEYS[2], id, 'PX', ARGV[3])
return id
"""

_consumers = itertools.count(1)
_ENTRY_ID = re.compile(r"^[0-9]{1,20}-[0-9]{1,20}$")

Entry = tuple[bytes, dict[bytes, bytes] | None, int]  # entry id, fields, delivery count


def _dumps(payload: Any) -> str:
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False)


def _decode(raw: bytes | None) -> dict[str, Any] | None:
    if raw is None:
        return None
    try:
        payload = json.loads(raw)
    except ValueError:
        return None
    return payload if isinstance(payload, dict) else None


@dataclass(slots=True)
class RedisEnvelope:
    """An entry read for a group; XACKed by `ack`."""

    payload: dict[str, Any]
    deliveries: int
    _settle: Callable[[str | None], Awaitable[None]] = field(repr=False)
    # (stream key, group, entry id): what `RedisStreamsBus.acknowledge` XACKs in one command.
    _entry: tuple[str, str, bytes] | None = field(default=None, repr=False)

    async def ack(self) -> None:
        """XACK the entry for its group."""
        await self._settle(None)

    async def reject(self, reason: str) -> None:
        """Move the entry to the dead-letter stream and XACK it, in one MULTI."""
        await self._settle(reason)


class RedisStreamsBus:
    """Streams and broadcasts on one Redis server (standalone or behind Sentinel's address)."""

    def __init__(
        self,
        url: str,
        *,
        prefix: str = PREFIX,
        name: str | None = None,
        max_length: int = MAX_LENGTH,
        visibility_timeout: float = VISIBILITY_TIMEOUT,
        max_deliveries: int = MAX_DELIVERIES,
        dedupe_window: float = DEDUPE_WINDOW,
        poll_interval: float = POLL_INTERVAL,
        prefetch: int = PREFETCH,
        command_timeout: float = COMMAND_TIMEOUT,
        reconnect_base: float = RECONNECT_BASE,
        reconnect_max: float = RECONNECT_MAX,
    ) -> None:
        if max_length < 1 or max_deliveries < 1 or prefetch < 1:
            raise ValueError("max_length, max_deliveries and prefetch must be positive")
        if visibility_timeout <= 0 or poll_interval <= 0 or command_timeout <= 0:
            raise ValueError("timeouts must be positive")
        self._prefix = prefix
        self.name = name or f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"
        self._max_length = max_length
        self._visibility_ms = max(1, int(visibility_timeout * 1000))
        self._max_deliveries = max_deliveries
        self._dedupe_ms = int(dedupe_window * 1000)
        # Stuck entries are looked for at least twice per visibility timeout.
        self._poll = min(poll_interval, visibility_timeout / 2)
        self._prefetch = prefetch
        self._reconnect = (reconnect_base, reconnect_max)
        self._timeout = command_timeout
        # A pool that makes a command wait for a free connection rather than fail: a router
        # acknowledges a whole batch at once, and redis-py's default pool raises "Too many
        # connections" past its limit instead of queueing.
        pool = BlockingConnectionPool.from_url(
            url,
            max_connections=MAX_CONNECTIONS,
            timeout=command_timeout,
            protocol=2,
            client_name=self.name,
            socket_connect_timeout=command_timeout,
            # A blocked XREADGROUP waits up to the poll interval for its answer.
            socket_timeout=command_timeout + self._poll,
            # One retry on a fresh connection: a pooled connection is dead after a restart.
            retry=Retry(ExponentialBackoff(cap=0.2, base=0.05), 1),
            health_check_interval=max(1, int(command_timeout)),
        )
        self._redis = Redis(connection_pool=pool)
        self._redis.auto_close_connection_pool = True  # aclose() disconnects the pool too
        kwargs = pool.connection_kwargs
        self._where = f"{kwargs.get('host', 'localhost')}:{kwargs.get('port', 6379)}"
        self._publish_once = self._redis.register_script(PUBLISH_ONCE)
        self._consumers: set[tuple[str, str, str]] = set()
        self._closed = False

    def _key(self, stream: str) -> str:
        return f"{self._prefix}:{check_stream(stream)}"

    def _channel(self, channel: str) -> str:
        return f"{self._prefix}:{messages.BROADCAST_SEGMENT}:{check_channel(channel)}"

    def _unavailable(self, exc: BaseException) -> NoReturn:
        raise errors.Unavailable(
            f"the Redis bus at {self._where} is unavailable: {exc}", broker="redis"
        ) from exc

    # -- work streams -------------------------------------------------------------------------

    async def publish(
        self, stream: str, payload: dict[str, Any], *, message_id: str | None = None
    ) -> None:
        """XADD to the stream (once per message id within the dedupe window)."""
        key = self._key(stream)
        data = _dumps(payload)
        message_id = messages.message_id(payload, message_id) if self._dedupe_ms > 0 else None
        try:
            if message_id is None:
                await self._redis.xadd(
                    key, {"payload": data}, maxlen=self._max_length, approximate=True
                )
            else:
                marker = f"{key}:seen:{message_id}"
                await self._publish_once(
                    keys=[key, marker], args=[data, self._max_length, self._dedupe_ms]
                )
        except redis_errors.RedisError as exc:
            self._unavailable(exc)

    async def acknowledge(self, envelopes: Sequence[Acknowledgeable]) -> None:
        """One XACK per stream and group for all their entries (of at most `_ACK_CHUNK` ids),
        instead of one per message."""
        entries: dict[tuple[str, str], list[bytes]] = {}
        others: list[Acknowledgeable] = []
        for envelope in envelopes:
            entry = getattr(envelope, "_entry", None)
            if entry is None:
                others.append(envelope)
            else:
                entries.setdefault((entry[0], entry[1]), []).append(entry[2])
        try:
            for (key, group), ids in entries.items():
                for start in range(0, len(ids), _ACK_CHUNK):
                    await self._redis.xack(key, group, *ids[start : start + _ACK_CHUNK])
        except redis_errors.RedisError as exc:
            self._unavailable(exc)
        for envelope in others:
            await envelope.ack()

    async def consume(self, stream: str, group: str) -> AsyncIterator[RedisEnvelope]:
        """Read the stream for `group` as one consumer of it, until the bus is closed."""
        key = self._key(stream)
        check_group(group)
        consumer = f"{self.name}.{next(_consumers)}"
        self._consumers.add((key, group, consumer))
        loop = asyncio.get_running_loop()
        backoff = Backoff(*self._reconnect)
        ready = False
        cursor = b"0-0"
        next_claim = 0.0
        while not self._closed:
            try:
                if not ready:
                    await self._ensure_group(key, group, consumer)
                    ready = True
                entries: list[Entry] = []
                now = loop.time()
                if now >= next_claim:
                    entries, cursor = await self._claim(key, group, consumer, cursor)
                    if cursor == b"0-0":
                        next_claim = now + self._poll
                if not entries:
                    entries = await self._read(key, group, consumer)
                envelopes = await self._open(stream, key, group, entries)
            except redis_errors.RedisError as exc:
                raise_if_cancelled()
                if self._closed:
                    return
                if str(exc).startswith("NOGROUP"):  # the key was deleted or Redis lost it
                    ready = False
                    log.warning(
                        "consumer group missing; creating it again",
                        extra={"action": "bus_group_recreated", "stream": stream, "group": group},
                    )
                    continue
                await self._pause(backoff, exc, stream)
                continue
            raise_if_cancelled()
            if backoff.failing:
                log.warning("Redis bus reconnected", extra={"action": "bus_reconnected"})
                backoff.reset()
            fetched = loop.time()
            for envelope in envelopes:
                # An entry that waited here half its visibility timeout is left for XAUTOCLAIM:
                # another consumer may be about to take it over.
                if loop.time() - fetched > self._visibility_ms / 2000:
                    break
                yield envelope

    async def _pause(self, backoff: Backoff, exc: BaseException, stream: str) -> None:
        if not backoff.failing:
            log.warning(
                "Redis bus unavailable; retrying",
                extra={"action": "bus_unavailable", "stream": stream, "error": str(exc)},
            )
        await asyncio.sleep(backoff.next())

    async def _ensure_group(self, key: str, group: str, consumer: str) -> None:
        try:
            await self._redis.xgroup_create(key, group, id="0", mkstream=True)
        except redis_errors.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        for info in await self._redis.xinfo_consumers(key, group):
            name = info["name"].decode() if isinstance(info["name"], bytes) else info["name"]
            if name != consumer and not info["pending"] and info["idle"] > STALE_CONSUMER_MS:
                await self._redis.xgroup_delconsumer(key, group, name)

    async def _claim(
        self, key: str, group: str, consumer: str, cursor: bytes
    ) -> tuple[list[Entry], bytes]:
        answer = await self._redis.xautoclaim(
            key, group, consumer, self._visibility_ms, start_id=cursor, count=self._prefetch
        )
        next_cursor, claimed = answer[0], answer[1]
        claimed = [(entry_id, fields) for entry_id, fields in claimed if entry_id is not None]
        if not claimed:
            return [], next_cursor
        # XAUTOCLAIM counted the delivery but does not say the count; XPENDING does.
        async with self._redis.pipeline(transaction=False) as pipe:
            for entry_id, _ in claimed:
                pipe.xpending_range(key, group, min=entry_id, max=entry_id, count=1)
            counts = await pipe.execute()
        entries = [
            (entry_id, fields, int(info[0]["times_delivered"]) if info else 1)
            for (entry_id, fields), info in zip(claimed, counts, strict=True)
        ]
        return entries, next_cursor

    async def _read(self, key: str, group: str, consumer: str) -> list[Entry]:
        answer: Any = await self._redis.xreadgroup(
            group, consumer, {key: ">"}, count=self._prefetch, block=int(self._poll * 1000)
        )
        if not answer:
            return []
        return [(entry_id, fields, 1) for entry_id, fields in answer[0][1]]

    async def _open(
        self, stream: str, key: str, group: str, entries: list[Entry]
    ) -> list[RedisEnvelope]:
        """Envelopes for the entries; dead-letters those over the limit or not JSON objects."""
        envelopes = []
        for entry_id, fields, deliveries in entries:
            raw = (fields or {}).get(b"payload")
            payload = _decode(raw)
            if payload is None:
                text = raw.decode("utf-8", "replace") if raw is not None else None
                letter = messages.dead_letter(stream, group, deliveries - 1, text, reason="invalid")
                await self._dead_letter(stream, key, group, entry_id, letter)
            elif deliveries > self._max_deliveries:
                letter = messages.dead_letter(stream, group, deliveries - 1, payload)
                await self._dead_letter(stream, key, group, entry_id, letter)
            else:
                settle = functools.partial(
                    self._settle, stream, key, group, entry_id, payload, deliveries
                )
                envelopes.append(RedisEnvelope(payload, deliveries, settle, (key, group, entry_id)))
        return envelopes

    async def _dead_letter(
        self, stream: str, key: str, group: str, entry_id: bytes, letter: dict[str, Any]
    ) -> None:
        log.warning(
            "message dead-lettered",
            extra={
                "action": "bus_dead_letter",
                "stream": stream,
                "group": group,
                "reason": letter["reason"],
            },
        )
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.xadd(
                self._key(messages.dead_stream(stream)),
                {"payload": _dumps(letter)},
                maxlen=self._max_length,
                approximate=True,
            )
            pipe.xack(key, group, entry_id)
            await pipe.execute()

    async def _settle(
        self,
        stream: str,
        key: str,
        group: str,
        entry_id: bytes,
        payload: dict[str, Any],
        deliveries: int,
        reason: str | None,
    ) -> None:
        try:
            if reason is None:
                await self._redis.xack(key, group, entry_id)
            else:
                letter = messages.dead_letter(stream, group, deliveries, payload, reason=reason)
                await self._dead_letter(stream, key, group, entry_id, letter)
        except redis_errors.RedisError as exc:
            self._unavailable(exc)

    # -- dead letters, for operators ----------------------------------------------------------

    async def dead_letters(
        self, stream: str, *, after: str | None = None, limit: int = 100
    ) -> list[StoredDeadLetter]:
        """XRANGE over `<stream>.dead`, oldest first, after the entry `after`."""
        key = self._key(messages.dead_stream(stream))
        if limit < 1:
            return []
        start = f"({after}" if after is not None and _ENTRY_ID.match(after) else "-"
        try:
            entries: Any = await self._redis.xrange(key, min=start, max="+", count=limit)
        except redis_errors.RedisError as exc:
            self._unavailable(exc)
        return [_dead_letter_of(stream, entry_id, fields) for entry_id, fields in entries]

    async def dead_letter(self, stream: str, letter_id: str) -> StoredDeadLetter | None:
        """The entry `letter_id` of `<stream>.dead`, or None."""
        key = self._key(messages.dead_stream(stream))
        if not _ENTRY_ID.match(letter_id):
            return None
        try:
            entries: Any = await self._redis.xrange(key, min=letter_id, max=letter_id, count=1)
        except redis_errors.RedisError as exc:
            self._unavailable(exc)
        if not entries:
            return None
        entry_id, fields = entries[0]
        return _dead_letter_of(stream, entry_id, fields)

    async def remove_dead_letter(self, stream: str, letter_id: str) -> bool:
        """XDEL the entry `letter_id` from `<stream>.dead`."""
        key = self._key(messages.dead_stream(stream))
        if not _ENTRY_ID.match(letter_id):
            return False
        try:
            return bool(await self._redis.xdel(key, letter_id))
        except redis_errors.RedisError as exc:
            self._unavailable(exc)

    # -- broadcasts ---------------------------------------------------------------------------

    async def broadcast(self, channel: str, payload: dict[str, Any]) -> None:
        """PUBLISH to the channel's subscribers."""
        name = self._channel(channel)
        try:
            await self._redis.publish(name, _dumps(payload))
        except redis_errors.RedisError as exc:
            self._unavailable(exc)

    @asynccontextmanager
    async def listen(self, channel: str) -> AsyncIterator[AsyncIterator[dict[str, Any]]]:
        """SUBSCRIBE for as long as the context is open; subscribed again after a reconnect
        (broadcasts sent while disconnected are missed, as they are for a late listener)."""
        name = self._channel(channel)
        pubsub = await self._subscribe(name)

        async def received() -> AsyncIterator[dict[str, Any]]:
            nonlocal pubsub
            backoff = Backoff(*self._reconnect)
            while not self._closed:
                try:
                    message = await pubsub.get_message(
                        ignore_subscribe_messages=True, timeout=self._poll
                    )
                except (redis_errors.RedisError, OSError) as exc:
                    raise_if_cancelled()
                    if self._closed:
                        return
                    await _close_quietly(pubsub)
                    await self._pause(backoff, exc, channel)
                    pubsub = await self._subscribe(name)
                    continue
                raise_if_cancelled()
                if backoff.failing:
                    backoff.reset()
                if message is None or message.get("type") != "message":
                    continue
                payload = _decode(message["data"])
                if payload is None:
                    log.warning("broadcast is not a JSON object", extra={"channel": channel})
                    continue
                yield payload

        try:
            yield received()
        finally:
            await _close_quietly(pubsub)

    async def _subscribe(self, name: str) -> PubSub:
        """A pub/sub connection subscribed to `name`, confirmed; retries until Redis answers."""
        backoff = Backoff(*self._reconnect)
        while True:
            pubsub = self._redis.pubsub()
            try:
                await pubsub.subscribe(name)
                async with asyncio.timeout(self._timeout):
                    while True:
                        message = await pubsub.get_message(timeout=self._poll)
                        raise_if_cancelled()
                        if message is not None and message.get("type") == "subscribe":
                            return pubsub
            except (redis_errors.RedisError, OSError, TimeoutError) as exc:
                raise_if_cancelled()
                await _close_quietly(pubsub)
                if self._closed:
                    self._unavailable(exc)
                await self._pause(backoff, exc, name)

    async def close(self) -> None:
        """Drop this process's idle consumers from their groups, then the connections."""
        self._closed = True
        with contextlib.suppress(redis_errors.RedisError, OSError, TimeoutError):
            async with asyncio.timeout(1.0):
                for key, group, consumer in self._consumers:
                    infos = await self._redis.xinfo_consumers(key, group)
                    for info in infos:
                        if info["name"] in (consumer, consumer.encode()) and not info["pending"]:
                            await self._redis.xgroup_delconsumer(key, group, consumer)
        await self._redis.aclose()


def _dead_letter_of(
    stream: str, entry_id: bytes, fields: dict[bytes, bytes] | None
) -> StoredDeadLetter:
    letter_id = entry_id.decode()
    # An entry id starts with the milliseconds since the epoch at which Redis added it.
    dead_at = datetime.fromtimestamp(int(letter_id.split("-", 1)[0]) / 1000, UTC)
    return messages.read_dead_letter(stream, letter_id, (fields or {}).get(b"payload"), dead_at)


async def _close_quietly(pubsub: PubSub) -> None:
    with contextlib.suppress(redis_errors.RedisError, OSError):
        await pubsub.aclose()  # type: ignore[no-untyped-call]
