"""The NATS JetStream bus: a JetStream stream per Clarion stream, durable pull consumers per
group, `Nats-Msg-Id` dedupe, dead letters by delivery count, and core NATS for broadcasts.

Names (prefix `clarion` by default; see docs/bus.md):

- the stream `events` is the subject `clarion.events`, stored by the JetStream stream
  `clarion_events` (dots become `_`); its dead letters go to `clarion.events.dead`
  (stream `clarion_events_dead`);
- a consumer group is a durable pull consumer of that name on the stream, with `AckWait` the
  visibility timeout;
- the broadcast channel `realtime` is the core subject `clarion.broadcast.realtime`.

Streams keep messages by limits (`max_msgs`, oldest discarded) rather than by interest, so a
group created later still finds what was published before it, and every group gets every
message. A message delivered more than `max_deliveries` times (`num_delivered` in its metadata)
is published to the dead-letter subject and terminated. The consumer's `MaxDeliver` is set a
little above that, so the server stops redelivering a message even if moving it failed.

JetStream acknowledges a publish before fsync by default (Jepsen, 2.12): the outbox relay is
what makes a lost message a delay rather than a loss.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import os
import re
import secrets
import socket
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, NoReturn

import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    DiscardPolicy,
    RawStreamMsg,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)

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

PREFIX = "clarion"  # subjects start with `clarion.`, stream names with `clarion_`
# Deliveries the server may make beyond `max_deliveries`: the consumer moves a message to the
# dead letters on the first of them, and the others cover a failure while moving it.
DEAD_LETTER_SPARE = 3
# Broadcasts a slow gateway may lag behind before the client drops some (a slow consumer).
LISTENER_CAPACITY = 10_000
# A silent connection is found dead after PING_INTERVAL * (MAX_OUTSTANDING_PINGS + 1) seconds.
PING_INTERVAL = 10
MAX_OUTSTANDING_PINGS = 2
# An idle consumer checks that its durable consumer still exists every this many poll intervals.
CONSUMER_CHECK_POLLS = 10
JS_STREAM_NAME_IN_USE = 10058  # JetStream: a stream of that name exists with another config
JS_STREAM_NOT_FOUND = 10059
# Reading or deleting a message that is not there: no such stream, no message (deleted, or
# none from the sequence on), no such sequence, or one past the end ("stream store EOF").
JS_NOT_THERE = frozenset({JS_STREAM_NOT_FOUND, 10037, 10043, 10057})

_PREFIX = re.compile(r"^[A-Za-z0-9_-]+$")


def _dumps(payload: Any) -> bytes:
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()


def _decode(raw: bytes) -> dict[str, Any] | None:
    try:
        payload = json.loads(raw)
    except ValueError:
        return None
    return payload if isinstance(payload, dict) else None


@dataclass(slots=True)
class NatsEnvelope:
    """A message fetched for a durable consumer; acknowledged with `+ACK`."""

    payload: dict[str, Any]
    deliveries: int
    _settle: Callable[[str | None], Awaitable[None]] = field(repr=False)

    async def ack(self) -> None:
        """Acknowledge the message to its consumer, and wait for the server to confirm."""
        await self._settle(None)

    async def reject(self, reason: str) -> None:
        """Publish the message to the dead-letter subject, then terminate it."""
        await self._settle(reason)


class NatsJetStreamBus:
    """Streams on JetStream and broadcasts on core NATS, over one connection."""

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
        replicas: int = 1,
        listener_capacity: int = LISTENER_CAPACITY,
    ) -> None:
        if not _PREFIX.match(prefix):
            raise ValueError(f"invalid prefix {prefix!r}: letters, digits, '_' and '-' only")
        if max_length < 1 or max_deliveries < 1 or prefetch < 1 or replicas < 1:
            raise ValueError("max_length, max_deliveries, prefetch and replicas must be positive")
        if visibility_timeout <= 0 or poll_interval <= 0 or command_timeout <= 0:
            raise ValueError("timeouts must be positive")
        self._url = url
        self._prefix = prefix
        self.name = name or f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"
        self._max_length = max_length
        self._visibility = visibility_timeout
        self._max_deliveries = max_deliveries
        self._dedupe_window = dedupe_window
        self._poll = min(poll_interval, visibility_timeout / 2)
        self._prefetch = prefetch
        self._timeout = command_timeout
        self._reconnect = (reconnect_base, reconnect_max)
        self._replicas = replicas
        self._listener_capacity = listener_capacity
        self._nc: Client | None = None
        self._js: JetStreamContext | None = None
        self._lock = asyncio.Lock()
        self._streams: set[str] = set()  # JetStream streams known to exist
        self._closed = False
        self._warned = False

    # -- names --------------------------------------------------------------------------------

    def _subject(self, stream: str) -> str:
        return f"{self._prefix}.{check_stream(stream)}"

    def _stream_name(self, stream: str) -> str:
        return f"{self._prefix}_{check_stream(stream).replace('.', '_')}"

    def _broadcast_subject(self, channel: str) -> str:
        return f"{self._prefix}.{messages.BROADCAST_SEGMENT}.{check_channel(channel)}"

    # -- the connection -----------------------------------------------------------------------

    def _unavailable(self, exc: BaseException | str) -> NoReturn:
        raise errors.Unavailable(
            f"the NATS bus at {self._where()} is unavailable: {exc}", broker="nats"
        ) from (exc if isinstance(exc, BaseException) else None)

    def _where(self) -> str:
        return self._url.rsplit("@", 1)[-1]  # no credentials in messages

    async def _connect(self) -> tuple[Client, JetStreamContext]:
        """The connection, opened on first use. The client reconnects by itself afterwards."""
        if self._nc is not None and self._js is not None and not self._nc.is_closed:
            return self._nc, self._js
        async with self._lock:
            if self._closed:
                self._unavailable("the bus is closed")
            if self._nc is None or self._js is None or self._nc.is_closed:
                nc = Client()
                try:
                    # With unlimited reconnects, connect() itself never gives up: bound it here.
                    await asyncio.wait_for(
                        nc.connect(
                            servers=[self._url],
                            name=self.name,
                            allow_reconnect=True,
                            max_reconnect_attempts=-1,
                            reconnect_time_wait=self._reconnect[1],  # type: ignore[arg-type]
                            connect_timeout=max(1, round(self._timeout)),
                            ping_interval=PING_INTERVAL,
                            max_outstanding_pings=MAX_OUTSTANDING_PINGS,
                            error_cb=self._on_error,
                            disconnected_cb=self._on_disconnected,
                            reconnected_cb=self._on_reconnected,
                        ),
                        self._timeout,
                    )
                except (TimeoutError, OSError, nats.errors.Error) as exc:
                    with contextlib.suppress(Exception):
                        await nc.close()
                    self._unavailable(exc)
                self._nc, self._js = nc, nc.jetstream(timeout=self._timeout)
            return self._nc, self._js

    async def _connected(self) -> tuple[Client, JetStreamContext]:
        nc, js = await self._connect()
        if not nc.is_connected:
            self._unavailable("reconnecting")
        return nc, js

    async def _on_error(self, exc: Exception) -> None:
        if not self._warned:
            self._warned = True
            log.warning("NATS bus error", extra={"action": "bus_error", "error": repr(exc)})

    async def _on_disconnected(self) -> None:
        if not self._closed:
            log.warning("NATS bus disconnected; reconnecting", extra={"action": "bus_unavailable"})

    async def _on_reconnected(self) -> None:
        self._warned = False
        self._streams.clear()  # a restarted server may have lost them: check again
        log.warning("NATS bus reconnected", extra={"action": "bus_reconnected"})

    async def _ensure_stream(self, js: JetStreamContext, stream: str) -> str:
        name = self._stream_name(stream)
        if name in self._streams:
            return name
        config = StreamConfig(
            name=name,
            subjects=[self._subject(stream)],
            retention=RetentionPolicy.LIMITS,
            max_msgs=self._max_length,
            discard=DiscardPolicy.OLD,
            storage=StorageType.FILE,
            num_replicas=self._replicas,
            duplicate_window=self._dedupe_window if self._dedupe_window > 0 else 0,
        )
        try:
            await js.add_stream(config)
        except nats.js.errors.BadRequestError as exc:
            if exc.err_code != JS_STREAM_NAME_IN_USE:
                raise
            await js.update_stream(config)  # settings changed since it was created
        self._streams.add(name)
        return name

    # -- work streams -------------------------------------------------------------------------

    async def publish(
        self, stream: str, payload: dict[str, Any], *, message_id: str | None = None
    ) -> None:
        """Publish to the stream's subject and wait for JetStream's ack.

        The `Nats-Msg-Id` is `message_id`, the payload's id, or a fresh one, so that the one
        retry after a lost ack or a vanished stream cannot store the message twice.
        """
        subject = self._subject(stream)
        data = _dumps(payload)
        headers = None
        if self._dedupe_window > 0:
            msg_id = messages.message_id(payload, message_id) or uuid.uuid4().hex
            headers = {"Nats-Msg-Id": msg_id}
        for attempt in (1, 2):
            _, js = await self._connected()  # fails fast while the client is reconnecting
            try:
                name = await self._ensure_stream(js, stream)
                await js.publish(subject, data, stream=name, headers=headers)
                return
            except (
                nats.errors.NoRespondersError,
                nats.js.errors.NoStreamResponseError,  # no stream takes the subject (any more)
                nats.errors.TimeoutError,
            ) as exc:
                self._streams.discard(self._stream_name(stream))
                if attempt == 2:
                    self._unavailable(exc)
            except (nats.errors.Error, OSError) as exc:
                self._unavailable(exc)

    async def acknowledge(self, envelopes: Sequence[Acknowledgeable]) -> None:
        """Acknowledge each message; JetStream has no multi-message ack, but the acks share
        the one connection, so they go out together and are confirmed together."""
        await asyncio.gather(*(envelope.ack() for envelope in envelopes))

    async def consume(self, stream: str, group: str) -> AsyncIterator[NatsEnvelope]:
        """Fetch from the group's durable consumer, until the bus is closed."""
        check_group(group)
        name = self._stream_name(stream)
        loop = asyncio.get_running_loop()
        backoff = Backoff(*self._reconnect)
        sub: JetStreamContext.PullSubscription | None = None
        checked = loop.time()
        try:
            while not self._closed:
                try:
                    if sub is None:
                        _, js = await self._connect()
                        await self._ensure_stream(js, stream)
                        await self._ensure_consumer(js, stream, group)
                        sub = await js.pull_subscribe_bind(durable=group, stream=name)
                        checked = loop.time()
                    try:
                        fetched = await sub.fetch(self._prefetch, timeout=self._poll)
                    except nats.errors.TimeoutError:
                        fetched = []
                        # Pulls from a consumer that was deleted (with its stream, or by a
                        # server that lost its store) just time out: look now and then.
                        if loop.time() - checked > self._poll * CONSUMER_CHECK_POLLS:
                            checked = loop.time()
                            _, js = await self._connected()
                            await js.consumer_info(name, group)
                    envelopes = await self._open(stream, group, fetched)
                except (nats.errors.Error, OSError, errors.Unavailable) as exc:
                    raise_if_cancelled()
                    if self._closed:
                        return
                    if isinstance(exc, nats.js.errors.APIError) and sub is not None:
                        # The consumer or its stream is gone (a server that lost its store):
                        # make them again.
                        self._streams.discard(name)
                        await _unsubscribe_quietly(sub)
                        sub = None
                    if not backoff.failing:
                        log.warning(
                            "NATS bus unavailable; retrying",
                            extra={
                                "action": "bus_unavailable",
                                "stream": stream,
                                "error": repr(exc),
                            },
                        )
                    await asyncio.sleep(backoff.next())
                    continue
                raise_if_cancelled()
                backoff.reset()
                taken = loop.time()
                for envelope in envelopes:
                    # One that waited here half its ack wait is left to be redelivered.
                    if loop.time() - taken > self._visibility / 2:
                        break
                    yield envelope
        finally:
            if sub is not None:
                await _unsubscribe_quietly(sub)

    async def _ensure_consumer(self, js: JetStreamContext, stream: str, group: str) -> None:
        name = self._stream_name(stream)
        config = ConsumerConfig(
            name=group,
            durable_name=group,
            deliver_policy=DeliverPolicy.ALL,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=self._visibility,
            max_deliver=self._max_deliveries + DEAD_LETTER_SPARE,
            filter_subject=self._subject(stream),
        )
        try:
            await js.add_consumer(name, config)
        except nats.js.errors.BadRequestError as exc:
            # It exists with settings that cannot change in place: keep using it as it is.
            await js.consumer_info(name, group)
            log.warning(
                "durable consumer kept with its old settings",
                extra={"stream": stream, "group": group, "error": exc.description},
            )

    async def _open(self, stream: str, group: str, fetched: list[Msg]) -> list[NatsEnvelope]:
        """Envelopes for the messages; dead-letters those over the limit or not JSON objects."""
        envelopes = []
        for msg in fetched:
            deliveries = msg.metadata.num_delivered
            payload = _decode(msg.data)
            if payload is None:
                text = msg.data.decode("utf-8", "replace")
                letter = messages.dead_letter(stream, group, deliveries - 1, text, reason="invalid")
                await self._dead_letter(stream, group, msg, letter)
            elif deliveries > self._max_deliveries:
                letter = messages.dead_letter(stream, group, deliveries - 1, payload)
                await self._dead_letter(stream, group, msg, letter)
            else:
                settle = functools.partial(self._settle, stream, group, msg, payload)
                envelopes.append(NatsEnvelope(payload, deliveries, settle))
        return envelopes

    async def _dead_letter(self, stream: str, group: str, msg: Msg, letter: dict[str, Any]) -> None:
        log.warning(
            "message dead-lettered",
            extra={
                "action": "bus_dead_letter",
                "stream": stream,
                "group": group,
                "reason": letter["reason"],
            },
        )
        dead = messages.dead_stream(stream)
        _, js = await self._connected()
        name = await self._ensure_stream(js, dead)
        # The id makes moving it again (after a failed term) a no-op within the window.
        msg_id = f"{self._stream_name(stream)}.{group}.{msg.metadata.sequence.stream}"
        await js.publish(
            self._subject(dead), _dumps(letter), stream=name, headers={"Nats-Msg-Id": msg_id}
        )
        await msg.term()

    async def _settle(
        self, stream: str, group: str, msg: Msg, payload: dict[str, Any], reason: str | None
    ) -> None:
        if msg.is_acked:
            return
        try:
            if reason is None:
                # Confirmed: once `ack` returns the server will not deliver it again (a plain
                # +ACK can be lost with the connection, and then the message comes back).
                await msg.ack_sync(timeout=self._timeout)
            else:
                deliveries = msg.metadata.num_delivered
                letter = messages.dead_letter(stream, group, deliveries, payload, reason=reason)
                await self._dead_letter(stream, group, msg, letter)
        except (nats.errors.Error, OSError) as exc:
            self._unavailable(exc)

    # -- dead letters, for operators ----------------------------------------------------------

    async def dead_letters(
        self, stream: str, *, after: str | None = None, limit: int = 100
    ) -> list[StoredDeadLetter]:
        """The messages of the JetStream stream `<prefix>_<stream>_dead`, oldest first, after
        the sequence number `after`; one direct read per message, no consumer made."""
        dead = messages.dead_stream(stream)
        name, subject = self._stream_name(dead), self._subject(dead)
        seq = int(after) + 1 if after is not None and after.isdigit() else 1
        letters: list[StoredDeadLetter] = []
        _, js = await self._connected()
        while len(letters) < limit:
            try:
                msg = await js.get_msg(name, seq=seq, subject=subject, next=True)
            except nats.js.errors.APIError as exc:
                if exc.err_code in JS_NOT_THERE:
                    break  # no stream, or nothing from `seq` on
                self._unavailable(exc)
            except (nats.errors.Error, OSError) as exc:
                self._unavailable(exc)
            letters.append(_dead_letter_of(stream, msg))
            seq = (msg.seq or seq) + 1
        return letters

    async def dead_letter(self, stream: str, letter_id: str) -> StoredDeadLetter | None:
        """The message `letter_id` (a sequence number) of the dead-letter stream, or None."""
        if not letter_id.isdigit() or int(letter_id) < 1:
            return None
        name = self._stream_name(messages.dead_stream(stream))
        _, js = await self._connected()
        try:
            msg = await js.get_msg(name, seq=int(letter_id))
        except nats.js.errors.APIError as exc:
            if exc.err_code in JS_NOT_THERE:
                return None
            self._unavailable(exc)
        except (nats.errors.Error, OSError) as exc:
            self._unavailable(exc)
        return _dead_letter_of(stream, msg)

    async def remove_dead_letter(self, stream: str, letter_id: str) -> bool:
        """Delete the message `letter_id` from the dead-letter stream."""
        if not letter_id.isdigit() or int(letter_id) < 1:
            return False
        name = self._stream_name(messages.dead_stream(stream))
        _, js = await self._connected()
        try:
            return bool(await js.delete_msg(name, int(letter_id)))
        except nats.js.errors.APIError as exc:
            if exc.err_code in JS_NOT_THERE:
                return False
            self._unavailable(exc)
        except (nats.errors.Error, OSError) as exc:
            self._unavailable(exc)

    # -- broadcasts ---------------------------------------------------------------------------

    async def broadcast(self, channel: str, payload: dict[str, Any]) -> None:
        """Publish on the channel's core subject (not stored)."""
        subject = self._broadcast_subject(channel)
        nc, _ = await self._connected()
        try:
            await nc.publish(subject, _dumps(payload))
        except (nats.errors.Error, OSError) as exc:
            self._unavailable(exc)

    @asynccontextmanager
    async def listen(self, channel: str) -> AsyncIterator[AsyncIterator[dict[str, Any]]]:
        """Subscribe for as long as the context is open. The client subscribes again after a
        reconnect; broadcasts sent while disconnected are missed, as for a late listener."""
        subject = self._broadcast_subject(channel)
        backoff = Backoff(*self._reconnect)
        while True:
            try:
                nc, _ = await self._connect()
                break
            except errors.Unavailable:
                if self._closed:
                    raise
                await asyncio.sleep(backoff.next())
        sub = await nc.subscribe(subject, pending_msgs_limit=self._listener_capacity)
        with contextlib.suppress(nats.errors.Error, OSError, TimeoutError):
            await nc.flush(timeout=max(1, round(self._timeout)))  # the server has the SUB

        async def received() -> AsyncIterator[dict[str, Any]]:
            async for msg in sub.messages:
                payload = _decode(msg.data)
                if payload is None:
                    log.warning("broadcast is not a JSON object", extra={"channel": channel})
                    continue
                yield payload

        try:
            yield received()
        finally:
            with contextlib.suppress(nats.errors.Error, OSError):
                await sub.unsubscribe()

    async def close(self) -> None:
        """Close the connection; consumers and listeners end."""
        self._closed = True
        if self._nc is not None:
            with contextlib.suppress(nats.errors.Error, OSError):
                await self._nc.close()


def _dead_letter_of(stream: str, msg: RawStreamMsg) -> StoredDeadLetter:
    return messages.read_dead_letter(stream, str(msg.seq), msg.data or b"", msg.time)


async def _unsubscribe_quietly(sub: JetStreamContext.PullSubscription) -> None:
    with contextlib.suppress(nats.errors.Error, OSError):
        await sub.unsubscribe()
