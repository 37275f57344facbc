"""APNs over HTTP/2: our lean HTTP/2 client (`http2`) on an asyncio protocol, a thin shell over
`clarion.wire.apns`.

One long-lived TLS connection (ALPN h2) per credential and environment. Streams on it are
bounded by the server's SETTINGS_MAX_CONCURRENT_STREAMS: one until the first request is
answered (APNs allows one stream until it has seen a valid provider token), then whatever the
server advertises, following it down and up as it changes (protocols.md §1). A GOAWAY is read
(its JSON reason logged) and the connection retired: new requests go to a new connection,
those still in flight on the old one come back as `RetryLater`. Provider tokens are minted once
per signing key for the whole process and refreshed per `wire.apns.needs_refresh`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import logging
import os
import shutil
import ssl
import tempfile
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, cast

from clarion.adapters.providers import http2
from clarion.domain import errors
from clarion.domain.channels import Channel
from clarion.domain.outcomes import AuthFailed, Outcome, Rejected, RetryLater
from clarion.domain.records import Claimed, Credential, CredentialInfo, PushExtras
from clarion.wire import apns

log = logging.getLogger(__name__)

PROVIDER = "apns"
STREAM_ID_LIMIT = 2**31 - 1 - 10_000
"""Stream ids are never reused; a connection this far along is replaced before they run out."""
PING_DATA = b"clarion!"
CLOSE_TIMEOUT = 5.0
"""How long `Connection.close` waits for TLS to shut down before dropping the socket."""
_APNS_ID_NAMESPACE = uuid.UUID("6f1c3f4e-2f43-4d44-9a8e-6b3a3c0d9b21")

_FIELD_CACHE_LIMIT = 512
"""Encoded header fields kept per never-indexed set: the constant ones (method, scheme,
authority, provider token, topic, push type, priority) of many credentials and topics."""
_PER_PUSH = (":path", "apns-id", "apns-expiration", "apns-collapse-id")
"""Unique per push (device, delivery, time): encoded each time, without Huffman coding (saving
a few octets is not worth the CPU for a value seen once), rather than cached."""
_LENGTHS = [http2.encode_integer(n, 7) for n in range(0x7F)]


class _Fields:
    """Pre-encoded header fields for one set of never-indexed names."""

    def __init__(self, never_indexed: frozenset[str]) -> None:
        self.never_indexed = never_indexed
        self.constant: dict[tuple[str, str], bytes] = {}
        self.heads = {
            name: http2.encode_name(name.encode(), never_indexed=name in never_indexed)
            for name in _PER_PUSH
        }


_FIELDS: dict[frozenset[str], _Fields] = {}


def header_block(headers: Sequence[tuple[str, str]], never_indexed: frozenset[str]) -> bytes:
    """The HPACK block of a request, as `http2.encode_field` encodes each field: nothing enters
    APNs's dynamic table, `never_indexed` names (``authorization``, ``:path``) go as literals
    never indexed [AP-send], and the fields that repeat are encoded once and cached."""
    fields = _FIELDS.get(never_indexed)
    if fields is None:
        fields = _FIELDS[never_indexed] = _Fields(never_indexed)
    heads, constant = fields.heads, fields.constant
    parts: list[bytes] = []
    for pair in headers:
        head = heads.get(pair[0])
        if head is not None:
            value = pair[1].encode()
            size = len(value)
            length = _LENGTHS[size] if size < 0x7F else http2.encode_integer(size, 7)
            parts.append(head + length + value)
            continue
        chunk = constant.get(pair)
        if chunk is None:
            name, value_text = pair
            chunk = http2.encode_field(
                name.encode(), value_text.encode(), never_indexed=name in never_indexed
            )
            if len(constant) >= _FIELD_CACHE_LIMIT:
                constant.clear()
            constant[pair] = chunk
        parts.append(chunk)
    return b"".join(parts)


CredentialLoader = Callable[[str, str, str | None], Awaitable[Credential | None]]
"""Loads the opened credential for (tenant, provider, app id); `services.credentials` fits."""


def _utcnow() -> datetime:
    return datetime.now(UTC)


def apns_id_for(delivery_id: int) -> uuid.UUID:
    """The ``apns-id`` of a delivery: stable across its retries, unique among deliveries."""
    return uuid.uuid5(_APNS_ID_NAMESPACE, str(delivery_id))


def notification_for(claimed: Claimed, topic: str) -> apns.Notification:
    """The push for a claimed delivery: the item's title, body, category and group (as the
    thread id), its data beside ``aps``; with `Claimed.push`, the badge, sound, thread id,
    ``apns-collapse-id`` and the deep link (``link`` beside ``aps``)."""
    item = claimed.item
    extras = claimed.push or PushExtras()
    custom = dict(item.data)
    if extras.link is not None:
        custom.setdefault("link", extras.link)
    return apns.Notification(
        device_token=claimed.address or "",
        topic=topic,
        title=item.title,
        body=item.body,
        category=item.category,
        thread_id=extras.thread_id or item.group,
        badge=extras.badge,
        sound=extras.sound,
        collapse_id=extras.collapse_id,
        custom_data=custom,
        apns_id=apns_id_for(claimed.id),
        # APNs stops storing it for an offline device when the notification expires.
        expiration=item.expires_at,
    )


class ProviderTokens:
    """Provider tokens (ES256 JWTs), one per signing key for the whole process [AP-tok]: Apple
    asks for few tokens per team, and refuses a new one on a connection within 20 minutes."""

    def __init__(self, now: Callable[[], datetime] = _utcnow) -> None:
        self._now = now
        self._tokens: dict[tuple[str, str, str], tuple[str, datetime, bool]] = {}

    @staticmethod
    def _key(pem: str, key_id: str, team_id: str) -> tuple[str, str, str]:
        return team_id, key_id, hashlib.sha256(pem.encode()).hexdigest()

    def token(self, pem: str, key_id: str, team_id: str) -> str:
        """The current token for this key, minted or renewed when due."""
        key = self._key(pem, key_id, team_id)
        now = self._now()
        cached = self._tokens.get(key)
        if cached is not None and not apns.needs_refresh(cached[1], now, expired_by_apns=cached[2]):
            return cached[0]
        token = apns.sign_provider_token(pem, key_id, team_id, now)
        self._tokens[key] = (token, now, False)
        return token

    def expired(self, pem: str, key_id: str, team_id: str, token: str) -> None:
        """APNs answered ExpiredProviderToken to `token`: renew it as soon as the rules allow."""
        key = self._key(pem, key_id, team_id)
        cached = self._tokens.get(key)
        if cached is not None and cached[0] == token:
            self._tokens[key] = (cached[0], cached[1], True)


PROCESS_TOKENS = ProviderTokens()


class ConnectionLost(Exception):
    """The request could not be answered on this connection; `started` says whether it may
    have reached APNs."""

    def __init__(self, reason: str, *, started: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        self.started = started


class ConnectFailed(Exception):
    """No connection to APNs now; try again after `after` seconds."""

    def __init__(self, reason: str, after: float) -> None:
        super().__init__(reason)
        self.reason = reason
        self.after = after


@dataclass
class Answer:
    """One response: status, headers, body."""

    status: int = 0
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytearray = field(default_factory=bytearray)


class Connection(asyncio.Protocol):
    """One HTTP/2 connection to APNs, multiplexing requests within the server's stream limit.

    It is the asyncio protocol of its TLS socket: what arrives goes straight to the `http2`
    engine, whose callbacks (`response_received`, `stream_reset`, `goaway_received`, ...)
    settle the requests' futures; what the engine queues is written once per event-loop turn.
    """

    def __init__(
        self, *, max_streams: int, ping_interval: float, ping_timeout: float, label: str
    ) -> None:
        self._max_streams = max_streams
        self._ping_interval = ping_interval
        self._ping_timeout = ping_timeout
        self._label = label
        self._loop = asyncio.get_running_loop()
        self._engine = http2.ClientConnection(self)
        self._transport: asyncio.Transport | None = None
        self._pending: dict[int, asyncio.Future[Answer]] = {}
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._in_flight = 0
        self._answered = False
        self._draining = False
        self._paused = False
        self._closed: str | None = None
        self._flush_soon: asyncio.Handle | None = None
        self._last_activity = time.monotonic()
        self._ping_ack: asyncio.Future[None] | None = None
        self._gone: asyncio.Future[None] = self._loop.create_future()
        self._tasks: list[asyncio.Task[None]] = []
        self.peak_streams = 0
        self.goaway_reason: str | None = None

    @classmethod
    async def open(
        cls,
        host: str,
        port: int,
        context: ssl.SSLContext,
        *,
        timeout: float,
        max_streams: int,
        ping_interval: float,
        label: str,
    ) -> Connection:
        """Connect with TLS and ALPN h2."""
        connection = cls(
            max_streams=max_streams,
            ping_interval=ping_interval,
            ping_timeout=timeout,
            label=label,
        )
        async with asyncio.timeout(timeout):
            await connection._loop.create_connection(
                lambda: connection, host, port, ssl=context, server_hostname=host
            )
        if connection._closed is not None:
            raise ConnectionError(connection._closed)
        connection._tasks.append(asyncio.create_task(connection._keepalive()))
        return connection

    # -- asyncio.Protocol ----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = stream = cast("asyncio.Transport", transport)  # a stream transport
        ssl_object = stream.get_extra_info("ssl_object")
        if ssl_object is None or ssl_object.selected_alpn_protocol() != "h2":
            self._closed = "the server did not agree to HTTP/2 (ALPN h2)"
            stream.close()
            return
        self._engine.initiate()
        self._flush()

    def data_received(self, data: bytes) -> None:
        self._last_activity = time.monotonic()
        try:
            self._engine.receive(data)
        except http2.ProtocolError as exc:
            self._flush()  # the GOAWAY saying why
            self._lost(f"HTTP/2 protocol error: {exc}")
            return
        if self._engine.has_output:
            self._flush()  # acknowledgements and window updates go at once

    def connection_lost(self, exc: Exception | None) -> None:
        if self.goaway_reason is not None:
            reason = f"GOAWAY {self.goaway_reason}"
        elif exc is None:
            reason = "APNs closed the connection"
        else:
            reason = f"connection error: {exc.__class__.__name__}"
        self._lost(reason)
        if not self._gone.done():
            self._gone.set_result(None)

    def pause_writing(self) -> None:
        self._paused = True  # the socket's buffer is full: no new stream until it drains

    def resume_writing(self) -> None:
        self._paused = False
        self._wake()

    # -- http2.Listener ------------------------------------------------------------------------

    def response_received(
        self, stream_id: int, headers: list[tuple[bytes, bytes]], body: bytes
    ) -> None:
        self._answered = True
        future = self._pending.pop(stream_id, None)
        if future is not None and not future.done():
            status = 0
            decoded: list[tuple[str, str]] = []
            for name, value in headers:
                text = value.decode("utf-8", "replace")
                if name == b":status":
                    status = int(text) if text.isdigit() else 0
                decoded.append((name.decode("utf-8", "replace"), text))
            future.set_result(Answer(status, decoded, bytearray(body)))
        if self._waiters:
            self._wake()  # the first answer raises the limit from 1

    def stream_reset(self, stream_id: int, error_code: int) -> None:
        future = self._pending.pop(stream_id, None)
        if future is not None and not future.done():
            # REFUSED_STREAM: APNs did not process it, it may go again (RFC 9113 §8.7).
            started = error_code != http2.ErrorCode.REFUSED_STREAM
            reason = f"stream reset ({http2.error_name(error_code)})"
            future.set_exception(ConnectionLost(reason, started=started))

    def goaway_received(self, last_stream_id: int, error_code: int, debug_data: bytes) -> None:
        self.goaway_reason = apns.parse_goaway_reason(debug_data) or (
            f"error code {http2.error_name(error_code)}"
        )
        log.warning(
            "APNs sent GOAWAY",
            extra={"connection": self._label, "reason": self.goaway_reason},
        )
        self._draining = True
        for stream_id in [s for s in self._pending if s > last_stream_id]:
            future = self._pending.pop(stream_id)
            if not future.done():
                reason = f"GOAWAY {self.goaway_reason}"
                future.set_exception(ConnectionLost(reason, started=False))
        self._wake()

    def settings_changed(self) -> None:
        if self._waiters:
            self._wake()  # the stream limit may have grown

    def ping_acked(self, data: bytes) -> None:
        if self._ping_ack is not None and not self._ping_ack.done():
            self._ping_ack.set_result(None)

    # -- requests ------------------------------------------------------------------------------

    @property
    def usable(self) -> bool:
        """Whether new requests may start here."""
        return (
            self._closed is None
            and not self._draining
            and self._engine.next_stream_id < STREAM_ID_LIMIT
        )

    @property
    def idle(self) -> bool:
        """No request in flight."""
        return self._in_flight == 0

    def limit(self) -> int:
        """Streams allowed at once now: 1 until the first answer, then the server's value
        (capped by ours)."""
        if not self._answered:
            return 1
        return min(self._max_streams, self._engine.max_outbound_streams)

    def retire(self) -> None:
        """Take no new requests; close once the ones in flight are answered."""
        self._draining = True
        self._wake()
        if self._in_flight == 0:
            self.close_now()

    async def request(self, request: apns.Request) -> Answer:
        """Send one request and wait for its answer (the caller bounds the wait).

        Raises:
            ConnectionLost: the connection went away (or was retired) before an answer.
        """
        if (
            self._in_flight < self.limit()
            and not self._waiters
            and not self._paused
            and self._closed is None
            and not self._draining
        ):
            self._in_flight += 1
        else:
            await self._acquire()
        stream_id = 0
        try:
            if not self.usable:
                raise ConnectionLost(self._closed or "the connection is retiring", started=False)
            block = header_block(request.headers, request.never_indexed)
            try:
                stream_id = self._engine.request(block, request.body)
            except http2.CannotStart as exc:
                raise ConnectionLost(str(exc), started=False) from exc
            future: asyncio.Future[Answer] = self._loop.create_future()
            self._pending[stream_id] = future
            if self._in_flight > self.peak_streams:
                self.peak_streams = self._in_flight
            if self._flush_soon is None:
                # The requests started in this event-loop turn share one TLS write.
                self._flush_soon = self._loop.call_soon(self._flush)
            return await future
        finally:
            unanswered = stream_id and self._pending.pop(stream_id, None) is not None
            if unanswered and self._closed is None:  # cancelled or timed out: tell APNs
                self._engine.reset(stream_id)
                self._schedule_flush()
            self._in_flight -= 1
            self._last_activity = time.monotonic()
            if self._waiters:
                self._wake()
            if self._draining and self._in_flight == 0:
                self.close_now()

    async def _acquire(self) -> None:
        while True:
            if self._closed is not None or self._draining:
                raise ConnectionLost(self._closed or "the connection is retiring", started=False)
            if self._in_flight < self.limit() and not self._paused:
                self._in_flight += 1
                return
            waiter: asyncio.Future[None] = self._loop.create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            except BaseException:
                if waiter.done() and not waiter.cancelled():
                    self._wake()  # woken, but leaving: the turn passes on
                else:
                    with contextlib.suppress(ValueError):
                        self._waiters.remove(waiter)
                raise

    def _wake(self) -> None:
        """Wake as many waiting requests as may start now (all of them once closing)."""
        waiters = self._waiters
        if self._closed is not None or self._draining:
            free = len(waiters)
        elif self._paused:
            return
        else:
            free = self.limit() - self._in_flight
        while free > 0 and waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                free -= 1

    def _schedule_flush(self) -> None:
        if self._flush_soon is None:
            self._flush_soon = self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_soon = None
        data = self._engine.data_to_send()
        transport = self._transport
        if data and transport is not None and not transport.is_closing():
            transport.write(data)

    async def _keepalive(self) -> None:
        # Apple: PING a connection that has been idle; a dead one is found before a push needs it.
        while self._closed is None:
            await asyncio.sleep(self._ping_interval)
            idle_for = time.monotonic() - self._last_activity
            if self._closed is not None or self._in_flight or idle_for < self._ping_interval:
                continue
            self._ping_ack = self._loop.create_future()
            self._engine.ping(PING_DATA)
            self._flush()
            try:
                async with asyncio.timeout(self._ping_timeout):
                    await self._ping_ack
            except TimeoutError:
                self._lost("no answer to PING")
                return

    def _lost(self, reason: str) -> None:
        if self._closed is None:
            self._closed = reason
        pending, self._pending = self._pending, {}
        for future in pending.values():
            if not future.done():
                future.set_exception(ConnectionLost(reason, started=True))
        if self._ping_ack is not None and not self._ping_ack.done():
            self._ping_ack.set_result(None)  # the keep-alive loop sees the close and ends
        self._wake()
        if self._transport is not None:
            self._transport.close()

    def close_now(self) -> None:
        """Say GOAWAY and close; requests in flight end as `ConnectionLost`."""
        if self._closed is None:
            self._engine.close()
            self._flush()
        self._lost("closed by Clarion")
        for task in self._tasks:
            if task is not asyncio.current_task():
                task.cancel()

    async def close(self) -> None:
        """`close_now`, and wait for the background task and the socket to end."""
        self.close_now()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._transport is not None and not self._gone.done():
            try:
                async with asyncio.timeout(CLOSE_TIMEOUT):
                    await asyncio.shield(self._gone)
            except TimeoutError:
                self._transport.abort()


class Endpoint:
    """The connection for one credential and environment, reopened with backoff."""

    def __init__(
        self,
        opener: Callable[[], Awaitable[Connection]],
        *,
        backoff_base: float,
        backoff_max: float,
    ) -> None:
        self._opener = opener
        self._base = backoff_base
        self._max = backoff_max
        self._lock = asyncio.Lock()
        self._connection: Connection | None = None
        self._old: list[Connection] = []
        self._failures = 0
        self._retry_at = 0.0
        self._last_error = ""

    @property
    def current(self) -> Connection | None:
        """The connection in use, if any."""
        return self._connection

    async def connection(self) -> Connection:
        """A usable connection.

        Raises:
            ConnectFailed: connecting failed now or recently (backing off).
        """
        found = self._connection
        if found is not None and found.usable:
            return found
        async with self._lock:
            found = self._connection
            if found is not None and found.usable:
                return found
            if found is not None:
                found.retire()
                self._old = [c for c in self._old if not c.idle] + [found]
                self._connection = None
            wait = self._retry_at - time.monotonic()
            if wait > 0:
                raise ConnectFailed(f"reconnecting to APNs ({self._last_error})", wait)
            try:
                self._connection = await self._opener()
            except (OSError, TimeoutError, ssl.SSLError) as exc:
                self._failures += 1
                delay = min(self._max, self._base * 2 ** (self._failures - 1))
                self._retry_at = time.monotonic() + delay
                self._last_error = f"connect failed: {exc.__class__.__name__}"
                log.warning("APNs connect failed", extra={"error": repr(exc), "retry_in": delay})
                raise ConnectFailed(self._last_error, delay) from exc
            self._failures = 0
            return self._connection

    async def close(self) -> None:
        """Close every connection."""
        for connection in [*self._old, *([self._connection] if self._connection else [])]:
            await connection.close()
        self._connection = None
        self._old = []


class ApnsTransport:
    """The `Transport` for `Channel.APNS`: token- or certificate-authenticated pushes over
    HTTP/2; nothing is sent on a paused credential."""

    channel = Channel.APNS

    def __init__(
        self,
        load_credential: CredentialLoader,
        *,
        host: str | None = None,
        port: int = apns.PORT,
        ssl_context: ssl.SSLContext | None = None,
        connect_timeout: float = 10.0,
        request_timeout: float = 30.0,
        max_concurrent_streams: int = 1000,
        reconnect_base: float = 1.0,
        reconnect_max: float = 60.0,
        ping_interval: float = 600.0,
        tokens: ProviderTokens | None = None,
    ) -> None:
        self._load = load_credential
        self._host = host
        self._port = port
        self._context = ssl_context or ssl.create_default_context()
        self._context.set_alpn_protocols(["h2"])
        self._connect_timeout = connect_timeout
        self._request_timeout = request_timeout
        self._max_streams = max_concurrent_streams
        self._reconnect_base = reconnect_base
        self._reconnect_max = reconnect_max
        self._ping_interval = ping_interval
        self._tokens = tokens or PROCESS_TOKENS
        self._endpoints: dict[tuple[str, datetime, str], Endpoint] = {}

    def connections(self) -> list[Connection]:
        """The connections in use (for tests and metrics)."""
        return [e.current for e in self._endpoints.values() if e.current is not None]

    async def send(self, batch: Sequence[Claimed]) -> list[Outcome]:
        """One outcome per delivery, in order; never raises for what APNs or the network do."""
        results: list[Outcome] = [RetryLater("not sent")] * len(batch)
        groups: dict[tuple[str, str | None], list[int]] = {}
        for index, claimed in enumerate(batch):
            groups.setdefault((claimed.tenant_id, claimed.app_id), []).append(index)

        async def send_group(tenant_id: str, app_id: str | None, indexes: list[int]) -> None:
            try:
                credential = await self._load(tenant_id, PROVIDER, app_id)
            except Exception:
                log.exception("APNs credential could not be opened", extra={"tenant": tenant_id})
                for i in indexes:
                    results[i] = RetryLater("the APNs credential could not be opened")
                return
            if credential is None:
                for i in indexes:
                    results[i] = Rejected("no APNs credential for this app")
                return
            if credential.info.status != ACTIVE:
                # Paused after APNs refused it: no request until the tenant replaces it.
                held = paused(credential.info)
                for i in indexes:
                    results[i] = held
                return
            sent = await asyncio.gather(*(self._send_one(credential, batch[i]) for i in indexes))
            for i, outcome in zip(indexes, sent, strict=True):
                results[i] = outcome

        await asyncio.gather(*(send_group(t, a, ix) for (t, a), ix in groups.items()))
        return results

    async def _send_one(self, credential: Credential, claimed: Claimed) -> Outcome:
        info = credential.info
        meta = info.metadata
        auth = meta.get("auth")
        if auth not in ("token", "certificate"):
            return AuthFailed(f"the APNs credential is unusable: unknown auth {auth!r}", info.id)
        if not claimed.address:
            return Rejected("the device has no APNs token")
        key_id, team_id = str(meta.get("key_id")), str(meta.get("team_id"))
        token: str | None = None
        try:
            environment = apns.Environment(info.environment or "production")
            if auth == "token":
                token = self._tokens.token(credential.secret, key_id, team_id)
        except (ValueError, errors.InvalidRequest) as exc:
            return AuthFailed(f"the APNs credential is unusable: {exc}", info.id)
        if auth == "certificate":
            expired = certificate_expired(meta, _utcnow())
            if expired is not None:
                return AuthFailed(expired, info.id)
        try:
            request = apns.build_request(
                notification_for(claimed, str(meta.get("topic"))),
                environment=environment,
                authorization=token,  # None: the TLS client certificate authenticates
            )
        except errors.InvalidRequest as exc:
            return Rejected(exc.message)
        try:
            endpoint = self._endpoint(credential, environment)
        except (ssl.SSLError, ValueError) as exc:
            # The vault checked the pair when it was stored; one that no longer loads is the
            # credential's fault (no PEM text in the reason: it is stored and logged).
            reason = getattr(exc, "reason", None) or exc.__class__.__name__
            return AuthFailed(f"the APNs certificate does not load: {reason}", info.id)
        except OSError as exc:  # the private temporary file could not be written
            return RetryLater(f"the APNs certificate could not be loaded: {exc.strerror}")
        answer: Answer | None = None
        connection: Connection | None = None
        last = "the connection was retiring"
        for _ in range(2):  # once more on a new connection if the first never took the request
            try:
                connection = await endpoint.connection()
            except ConnectFailed as exc:
                return RetryLater(exc.reason, exc.after)
            try:
                async with asyncio.timeout(self._request_timeout):
                    answer = await connection.request(request)
                break
            except ConnectionLost as exc:
                if exc.started:
                    return RetryLater(f"APNs connection lost: {exc.reason}")
                last = exc.reason
            except TimeoutError:
                return RetryLater("APNs did not answer in time")
        if answer is None or connection is None:
            return RetryLater(f"APNs connection lost: {last}")
        body = bytes(answer.body)
        outcome = apns.classify_response(
            answer.status, answer.headers, body, token_registered_at=claimed.registered_at
        )
        if answer.status != 200:
            reason = apns.parse_reason(body)
            if token is not None and reason in apns.RENEW_TOKEN_REASONS:
                self._tokens.expired(credential.secret, key_id, team_id, token)
            if reason in apns.RECONNECT_REASONS:
                connection.retire()
        if isinstance(outcome, AuthFailed):
            # `wire` does not know which credential was refused; the delivering side pauses it.
            return dataclasses.replace(outcome, credential_id=info.id)
        return outcome

    def _endpoint(self, credential: Credential, environment: apns.Environment) -> Endpoint:
        """The endpoint of this version of the credential (a certificate credential gets its
        own TLS context, presenting its certificate).

        Raises:
            ssl.SSLError, ValueError: a certificate credential's PEM does not load.
            OSError: its private temporary file could not be written.
        """
        info = credential.info
        key = (info.id, info.updated_at, str(environment))
        endpoint = self._endpoints.get(key)
        if endpoint is None:
            context = self._context
            if info.metadata.get("auth") == "certificate":
                context = certificate_context(self._context, credential.secret)
            # A replaced credential (newer updated_at) gets a fresh connection; the old one goes.
            for stale in [k for k in self._endpoints if k[0] == info.id and k[2] == key[2]]:
                old = self._endpoints.pop(stale)
                task = asyncio.create_task(old.close())
                task.add_done_callback(lambda t: t.exception() if not t.cancelled() else None)
            host = self._host or environment.host
            label = f"{info.id}/{environment}"

            async def opener() -> Connection:
                return await Connection.open(
                    host,
                    self._port,
                    context,
                    timeout=self._connect_timeout,
                    max_streams=self._max_streams,
                    ping_interval=self._ping_interval,
                    label=label,
                )

            endpoint = Endpoint(
                opener, backoff_base=self._reconnect_base, backoff_max=self._reconnect_max
            )
            self._endpoints[key] = endpoint
        return endpoint

    async def close(self) -> None:
        """Close every connection."""
        endpoints, self._endpoints = list(self._endpoints.values()), {}
        for endpoint in endpoints:
            await endpoint.close()


# --- credentials: paused ones, certificates ------------------------------------------------------

ACTIVE = "active"
"""The stored status of a credential in use; any other (``paused``) sends nothing."""
PAUSED_RETRY_SECONDS = 300.0
"""How long a paused credential's deliveries wait between looks. Only the tenant's fix (a new
key or certificate) un-pauses it: five minutes picks that up soon after, at one credential read
per look, without APNs ever seeing the refused credential again."""


def paused(info: CredentialInfo) -> RetryLater:
    """The outcome of every push on a paused credential: wait, sending nothing."""
    why = info.paused_reason or "no reason recorded"
    return RetryLater(f"the APNs credential is paused: {why}", PAUSED_RETRY_SECONDS)


def certificate_expired(metadata: Mapping[str, Any], now: datetime) -> str | None:
    """Why a certificate credential cannot authenticate any more (it expired, per the expiry
    the vault recorded), or None. APNs refuses an expired certificate (BadCertificate, or a
    TLS ``certificate_expired`` alert): no use connecting."""
    raw = metadata.get("certificate_expires_at")
    if not isinstance(raw, str):
        return None
    try:
        expires = datetime.fromisoformat(raw)
    except ValueError:
        return None
    if expires.tzinfo is None:
        expires = expires.replace(tzinfo=UTC)
    if expires > now:
        return None
    return f"BadCertificate: the certificate expired at {expires.isoformat()}; upload a renewed one"


def certificate_context(base: ssl.SSLContext, chain_pem: str) -> ssl.SSLContext:
    """A TLS client context for one certificate credential: it trusts the server certificates
    `base` trusts (its loaded CAs, else the system's), verifies them as `base` does, offers
    ALPN h2, and presents the credential's certificate. `chain_pem` is the stored secret: the
    certificate (and any intermediates), then its private key.

    Raises:
        ssl.SSLError: the PEM is not a certificate with its matching private key.
        OSError: the private temporary file could not be written.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = base.minimum_version
    context.maximum_version = base.maximum_version
    context.options = base.options
    context.verify_flags = base.verify_flags
    context.check_hostname = base.check_hostname
    context.verify_mode = base.verify_mode
    anchors = base.get_ca_certs(binary_form=True)
    if anchors:
        context.load_verify_locations(cadata=b"".join(anchors))
    else:
        context.load_default_certs(ssl.Purpose.SERVER_AUTH)
    context.set_alpn_protocols(["h2"])
    # Python's ssl loads a certificate and key only from files: the secret is written to a
    # fresh private directory (mkdtemp: 0700) as a 0600 file, loaded, and both are deleted
    # whatever happens. It exists on disk only for the duration of `load_cert_chain`.
    directory = tempfile.mkdtemp(prefix="clarion-apns-")
    try:
        path = os.path.join(directory, "credential.pem")
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w", encoding="utf-8") as file:
            file.write(chain_pem)
        context.load_cert_chain(path)
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    return context
