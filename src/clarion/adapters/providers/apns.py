"""APNs over HTTP/2: `h2` on asyncio streams, a thin shell over `clarion.wire.apns`.

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
import hashlib
import logging
import ssl
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
from hpack import NeverIndexedHeaderTuple
from hpack.huffman import HuffmanEncoder
from hpack.huffman_constants import REQUEST_CODES, REQUEST_CODES_LENGTH

from clarion.domain import errors
from clarion.domain.channels import Channel
from clarion.domain.outcomes import AuthFailed, Outcome, Rejected, RetryLater
from clarion.domain.records import Claimed, Credential
from clarion.wire import apns

log = logging.getLogger(__name__)

PROVIDER = "apns"
STREAM_ID_LIMIT = 2**31 - 1 - 10_000
"""Stream ids are never reused; a connection this far along is replaced before they run out."""
PING_DATA = b"clarion!"
_APNS_ID_NAMESPACE = uuid.UUID("6f1c3f4e-2f43-4d44-9a8e-6b3a3c0d9b21")

_H2_CONFIG = h2.config.H2Configuration(
    client_side=True,
    header_encoding=None,
    validate_outbound_headers=False,
    normalize_outbound_headers=False,
    validate_inbound_headers=False,
)
"""Headers go out as lowercase UTF-8 bytes built by `wire.apns` (already validated there), with
`authorization` and `:path` marked never-indexed by us; answers come back as bytes."""

_HUFFMAN_BITS = [
    format(code, f"0{length}b")
    for code, length in zip(REQUEST_CODES, REQUEST_CODES_LENGTH, strict=True)
]
_MEMO_LIMIT = 256


class _HuffmanEncoder(HuffmanEncoder):
    """HPACK's Huffman code, byte for byte the same as `hpack`'s, built as a bit string (one
    join, one int conversion) instead of a Python loop of big-int shifts. Recent results are
    memoised: the provider token (sent never indexed, so a literal on every request) and the
    constant header values are encoded once."""

    def __init__(self) -> None:
        super().__init__(REQUEST_CODES, REQUEST_CODES_LENGTH)
        self._memo: dict[bytes, bytes] = {}

    def encode(self, bytes_to_encode: bytes | None) -> bytes:
        if not bytes_to_encode:
            return b""
        found = self._memo.get(bytes_to_encode)
        if found is not None:
            return found
        bits = "".join([_HUFFMAN_BITS[byte] for byte in bytes_to_encode])
        pad = -len(bits) % 8
        if pad:
            bits += "1" * pad  # pad to an octet with the EOS prefix
        encoded = int(bits, 2).to_bytes(len(bits) // 8, "big")
        if len(self._memo) >= _MEMO_LIMIT:
            self._memo.clear()
        self._memo[bytes_to_encode] = encoded
        return encoded


_Header = tuple[bytes, bytes]
_HEADER_CACHE: dict[tuple[str, str], _Header] = {}
_UNCACHED = frozenset({":path", "apns-id"})
"""Unique per push (device, delivery): encoded each time rather than cached."""


def _header_bytes(name: str, value: str, never_indexed: frozenset[str]) -> _Header:
    """One request header as the bytes tuple `h2` takes, never-indexed ones as
    `NeverIndexedHeaderTuple`; constant pairs (method, authority, token, topic) are built once."""
    key = (name, value)
    found = _HEADER_CACHE.get(key)
    if found is not None:
        return found
    pair: _Header
    if name in never_indexed:
        pair = NeverIndexedHeaderTuple(name.encode(), value.encode())
    else:
        pair = (name.encode(), value.encode())
    if name not in _UNCACHED:
        if len(_HEADER_CACHE) >= _MEMO_LIMIT:
            _HEADER_CACHE.clear()
        _HEADER_CACHE[key] = pair
    return pair


CredentialLoader = Callable[[str, str, str | None], Awaitable[Credential | None]]
"""Loads the opened credential for (tenant, provider, app id); `services.credentials` fits."""


def _utcnow() -> datetime:
    return datetime.now(UTC)


def apns_id_for(delivery_id: int) -> uuid.UUID:
    """The ``apns-id`` of a delivery: stable across its retries, unique among deliveries."""
    return uuid.uuid5(_APNS_ID_NAMESPACE, str(delivery_id))


def notification_for(claimed: Claimed, topic: str) -> apns.Notification:
    """The push for a claimed delivery: the item's title, body, category and group (as the
    thread id), its data beside ``aps``."""
    item = claimed.item
    return apns.Notification(
        device_token=claimed.address or "",
        topic=topic,
        title=item.title,
        body=item.body,
        category=item.category,
        thread_id=item.group,
        custom_data=dict(item.data),
        apns_id=apns_id_for(claimed.id),
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


class Connection:
    """One HTTP/2 connection to APNs, multiplexing requests within the server's stream limit."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        max_streams: int,
        ping_interval: float,
        ping_timeout: float,
        label: str,
    ) -> None:
        self._reader = reader
        self._writer = writer
        self._max_streams = max_streams
        self._ping_interval = ping_interval
        self._ping_timeout = ping_timeout
        self._label = label
        self._h2 = h2.connection.H2Connection(_H2_CONFIG)
        self._h2.encoder.huffman_coder = _HuffmanEncoder()
        self._pending: dict[int, asyncio.Future[Answer]] = {}
        self._answers: dict[int, Answer] = {}
        self._in_flight = 0
        self._answered = False
        self._draining = False
        self._closed: str | None = None
        self._wake: asyncio.Event | None = None
        self._flush_soon: asyncio.Handle | None = None
        self._last_activity = time.monotonic()
        self._ping_ack: asyncio.Future[None] | None = None
        self.peak_streams = 0
        self.goaway_reason: str | None = None
        self._h2.initiate_connection()
        self._flush()
        self._tasks = [
            asyncio.create_task(self._read()),
            asyncio.create_task(self._keepalive()),
        ]

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
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(
                host, port, ssl=context, server_hostname=host
            )
        ssl_object = writer.get_extra_info("ssl_object")
        if ssl_object is None or ssl_object.selected_alpn_protocol() != "h2":
            writer.close()
            raise ConnectionError("the server did not agree to HTTP/2 (ALPN h2)")
        return cls(
            reader,
            writer,
            max_streams=max_streams,
            ping_interval=ping_interval,
            ping_timeout=timeout,
            label=label,
        )

    @property
    def usable(self) -> bool:
        """Whether new requests may start here."""
        return (
            self._closed is None
            and not self._draining
            and self._h2.highest_outbound_stream_id < STREAM_ID_LIMIT
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
        return min(self._max_streams, self._h2.remote_settings.max_concurrent_streams)

    def retire(self) -> None:
        """Take no new requests; close once the ones in flight are answered."""
        self._draining = True
        self._notify()
        if self._in_flight == 0:
            self.close_now()

    async def request(self, request: apns.Request) -> Answer:
        """Send one request and wait for its answer (the caller bounds the wait).

        Raises:
            ConnectionLost: the connection went away (or was retired) before an answer.
        """
        await self._acquire()
        stream_id: int | None = None
        answered = False
        try:
            if not self.usable:
                raise ConnectionLost(self._closed or "the connection is retiring", started=False)
            stream_id = self._h2.get_next_available_stream_id()
            never_indexed = request.never_indexed
            headers = [_header_bytes(name, value, never_indexed) for name, value in request.headers]
            future: asyncio.Future[Answer] = asyncio.get_running_loop().create_future()
            self._pending[stream_id] = future
            try:
                self._h2.send_headers(stream_id, headers, end_stream=not request.body)
            except h2.exceptions.ProtocolError as exc:
                raise ConnectionLost(f"h2 refused the stream: {exc}", started=False) from exc
            if self._in_flight > self.peak_streams:
                self.peak_streams = self._in_flight
            if request.body:
                await self._send_body(stream_id, request.body)
            self._schedule_flush()
            answer = await future
            answered = True
            return answer
        finally:
            if stream_id is not None:
                self._pending.pop(stream_id, None)
                self._answers.pop(stream_id, None)
                if not answered and self._closed is None:
                    with contextlib.suppress(h2.exceptions.ProtocolError, KeyError):
                        self._h2.reset_stream(stream_id, h2.errors.ErrorCodes.CANCEL)
                        self._flush()
            self._in_flight -= 1
            self._last_activity = time.monotonic()
            self._notify()
            if self._draining and self._in_flight == 0:
                self.close_now()

    async def _acquire(self) -> None:
        while True:
            if self._closed is not None or self._draining:
                raise ConnectionLost(self._closed or "the connection is retiring", started=False)
            if self._in_flight < self.limit():
                self._in_flight += 1
                return
            await self._wait()

    async def _send_body(self, stream_id: int, body: bytes) -> None:
        offset = 0
        while offset < len(body):
            if self._closed is not None:
                raise ConnectionLost(self._closed, started=True)
            try:
                window = self._h2.local_flow_control_window(stream_id)
            except h2.exceptions.StreamClosedError as exc:
                raise ConnectionLost("the stream was closed", started=True) from exc
            size = min(window, self._h2.max_outbound_frame_size, len(body) - offset)
            if size <= 0:
                self._schedule_flush()  # what is queued goes out while we wait
                await self._wait()  # a WINDOW_UPDATE wakes us
                continue
            chunk = body if size == len(body) else body[offset : offset + size]
            offset += size
            self._h2.send_data(stream_id, chunk, end_stream=offset == len(body))

    async def _wait(self) -> None:
        """Until the next `_notify` (an answer, a setting or window change, a loss)."""
        wake = self._wake
        if wake is None:
            wake = self._wake = asyncio.Event()
        await wake.wait()

    def _notify(self) -> None:
        wake = self._wake
        if wake is not None:
            self._wake = None
            wake.set()

    def _schedule_flush(self) -> None:
        """Write what `h2` has queued once this event-loop turn is over: the requests started
        in one turn share one TLS write."""
        if self._flush_soon is None:
            self._flush_soon = asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_soon = None
        data = self._h2.data_to_send()
        if data and not self._writer.is_closing():
            self._writer.write(data)

    async def _read(self) -> None:
        reason = "APNs closed the connection"
        try:
            while data := await self._reader.read(65536):
                self._last_activity = time.monotonic()
                try:
                    events = self._h2.receive_data(data)
                except h2.exceptions.ProtocolError as exc:
                    self._flush()
                    reason = f"HTTP/2 protocol error: {exc}"
                    break
                for event in events:
                    self._on(event)
                self._flush()
        except (OSError, ssl.SSLError) as exc:
            reason = f"connection error: {exc.__class__.__name__}"
        finally:
            if self.goaway_reason is not None:
                reason = f"GOAWAY {self.goaway_reason}"
            self._lost(reason)

    def _on(self, event: h2.events.Event) -> None:
        if isinstance(event, h2.events.ResponseReceived) and event.stream_id is not None:
            status = 0
            headers: list[tuple[str, str]] = []
            for name, value in event.headers or []:
                text = bytes(value).decode("utf-8", "replace")
                if name == b":status":
                    status = int(text) if text.isdigit() else 0
                headers.append((bytes(name).decode("utf-8", "replace"), text))
            self._answers[event.stream_id] = Answer(status, headers)
        elif isinstance(event, h2.events.DataReceived) and event.stream_id is not None:
            answer = self._answers.get(event.stream_id)
            if answer is not None:
                answer.body.extend(event.data or b"")
            with contextlib.suppress(h2.exceptions.ProtocolError):
                self._h2.acknowledge_received_data(
                    event.flow_controlled_length or 0, event.stream_id
                )
        elif isinstance(event, h2.events.StreamEnded) and event.stream_id is not None:
            answer = self._answers.pop(event.stream_id, None) or Answer()
            self._answered = True
            future = self._pending.get(event.stream_id)
            if future is not None and not future.done():
                future.set_result(answer)
            self._notify()
        elif isinstance(event, h2.events.StreamReset) and event.stream_id is not None:
            future = self._pending.get(event.stream_id)
            if future is not None and not future.done():
                future.set_exception(
                    ConnectionLost(f"stream reset ({event.error_code!s})", started=True)
                )
            self._notify()
        elif isinstance(event, h2.events.ConnectionTerminated):
            self.goaway_reason = apns.parse_goaway_reason(event.additional_data or b"") or (
                f"error code {event.error_code!s}"
            )
            log.warning(
                "APNs sent GOAWAY",
                extra={"connection": self._label, "reason": self.goaway_reason},
            )
            self._draining = True
            last = event.last_stream_id or 0
            for stream_id, future in self._pending.items():
                if stream_id > last and not future.done():
                    future.set_exception(
                        ConnectionLost(f"GOAWAY {self.goaway_reason}", started=False)
                    )
            self._notify()
        elif isinstance(event, h2.events.PingAckReceived):
            if self._ping_ack is not None and not self._ping_ack.done():
                self._ping_ack.set_result(None)
        elif isinstance(event, h2.events.RemoteSettingsChanged | h2.events.WindowUpdated):
            self._notify()  # the stream limit or a flow-control window moved

    async def _keepalive(self) -> None:
        # Apple: PING a connection that has been idle; a dead one is found before a push needs it.
        while self._closed is None:
            await asyncio.sleep(self._ping_interval)
            idle_for = time.monotonic() - self._last_activity
            if self._closed is not None or self._in_flight or idle_for < self._ping_interval:
                continue
            self._ping_ack = asyncio.get_running_loop().create_future()
            try:
                self._h2.ping(PING_DATA)
                self._flush()
                async with asyncio.timeout(self._ping_timeout):
                    await self._ping_ack
            except (TimeoutError, h2.exceptions.ProtocolError):
                self._lost("no answer to PING")
                return

    def _lost(self, reason: str) -> None:
        if self._closed is None:
            self._closed = reason
        for future in self._pending.values():
            if not future.done():
                future.set_exception(ConnectionLost(reason, started=True))
        self._notify()
        self._writer.close()

    def close_now(self) -> None:
        """Say GOAWAY and close; requests in flight end as `ConnectionLost`."""
        if self._closed is None:
            with contextlib.suppress(h2.exceptions.ProtocolError):
                self._h2.close_connection()
                self._flush()
        self._lost("closed by Clarion")
        for task in self._tasks:
            if task is not asyncio.current_task():
                task.cancel()

    async def close(self) -> None:
        """`close_now`, and wait for the background tasks to end."""
        self.close_now()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        with contextlib.suppress(OSError, ssl.SSLError):
            await self._writer.wait_closed()


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
    """The `Transport` for `Channel.APNS`: token-authenticated pushes over HTTP/2."""

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
            sent = await asyncio.gather(*(self._send_one(credential, batch[i]) for i in indexes))
            for i, outcome in zip(indexes, sent, strict=True):
                results[i] = outcome

        await asyncio.gather(*(send_group(t, a, ix) for (t, a), ix in groups.items()))
        return results

    async def _send_one(self, credential: Credential, claimed: Claimed) -> Outcome:
        meta = credential.info.metadata
        if meta.get("auth") != "token":
            return Rejected("APNs certificate credentials are not supported by this transport yet")
        if not claimed.address:
            return Rejected("the device has no APNs token")
        key_id, team_id = str(meta.get("key_id")), str(meta.get("team_id"))
        try:
            environment = apns.Environment(credential.info.environment or "production")
            token = self._tokens.token(credential.secret, key_id, team_id)
        except (ValueError, errors.InvalidRequest) as exc:
            return AuthFailed(f"the APNs credential is unusable: {exc}")
        try:
            request = apns.build_request(
                notification_for(claimed, str(meta.get("topic"))),
                environment=environment,
                authorization=token,
            )
        except errors.InvalidRequest as exc:
            return Rejected(exc.message)
        endpoint = self._endpoint(credential, environment)
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
            if reason in apns.RENEW_TOKEN_REASONS:
                self._tokens.expired(credential.secret, key_id, team_id, token)
            if reason in apns.RECONNECT_REASONS:
                connection.retire()
        return outcome

    def _endpoint(self, credential: Credential, environment: apns.Environment) -> Endpoint:
        info = credential.info
        key = (info.id, info.updated_at, str(environment))
        endpoint = self._endpoints.get(key)
        if endpoint is None:
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
                    self._context,
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
