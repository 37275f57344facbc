"""FCM HTTP v1 over HTTP/2 (httpx), a thin shell over `clarion.wire.fcm`.

One ``messages:send`` request per delivery: the batch endpoints are gone (protocols.md §2), so
throughput comes from multiplexing many streams on a few long-lived HTTP/2 connections, with a
bound on the sends in flight. OAuth access tokens are fetched with the service account's signed
assertion, cached per account for the whole process, fetched again before they expire, and
fetched by one caller at a time (the others wait for its answer). A plain 401 (our token went
stale) fetches a new token once and sends again; an answer with ``Retry-After`` (429
QUOTA_EXCEEDED, 503 UNAVAILABLE) is honoured for the delivery and holds the whole project's
sends until it has passed.

The sends go over Clarion's own HTTP/2 engine (`http2`, sans I/O) on asyncio protocols, a few
connections per FCM origin with up to `streams_per_connection` streams each; the OAuth token
requests, a few an hour, go through httpx. httpx (httpcore + h2) carried about 650 sends per
client CPU-second against the emulator, a third of what the same engine does for APNs
(docs/benchmarks.md, "FCM client vs firebase-admin").
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import itertools
import logging
import ssl
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import httpx

from clarion.adapters.providers import http2
from clarion.domain import errors
from clarion.domain.channels import Channel
from clarion.domain.notifications import InboxItem
from clarion.domain.outcomes import AuthFailed, Outcome, Rejected, RetryLater
from clarion.domain.records import Claimed, ClaimedTopicSend, Credential, CredentialInfo
from clarion.domain.statuses import Status
from clarion.wire import fcm

log = logging.getLogger(__name__)

PROVIDER = "fcm"
ACTIVE = "active"
"""The stored status of a credential in use; any other (``paused``) sends nothing."""
PAUSED_RETRY_SECONDS = 300.0
"""How long a paused credential's deliveries wait between looks: only the tenant's fix (a new
service-account key) un-pauses it, and FCM never sees the refused account in between."""
TOPIC_PREFIX = "/topics/"
"""A claimed address of this form is an FCM topic, not a registration token (see
`message_for`)."""
DEFAULT_BASE_URL = f"https://{fcm.HOST}"
NO_CREDENTIAL = "no FCM credential for this app"
NO_DEFAULT_CREDENTIAL = "no default FCM credential (one without app_id) for topic sends"
_BLOCK_CACHE_LIMIT = 256
"""Encoded header blocks kept: one per project and access token in use."""

CredentialLoader = Callable[[str, str, str | None], Awaitable[Credential | None]]
"""Loads the opened credential for (tenant, provider, app id); `services.credentials` fits."""

TokenFetch = Callable[[], Awaitable["fcm.AccessToken | AuthFailed | RetryLater"]]


def _utcnow() -> datetime:
    return datetime.now(UTC)


def message_for(claimed: Claimed, now: datetime | None = None) -> fcm.Message:
    """The FCM message for a claimed delivery: the item's title and body as the notification,
    its data as FCM's data (string values only: `wire.fcm` refuses others, see
    `fcm.Message`). The address is the device's registration token, or ``/topics/<name>``
    for a send to a topic.

    Raises:
        errors.InvalidRequest: the message cannot be built (no address, a non-string data value,
            a reserved data key, ...).
    """
    item = claimed.item
    address = claimed.address or ""
    if not address:
        raise errors.InvalidRequest("the device has no FCM registration token")
    notification = None
    if item.title is not None or item.body is not None:
        notification = fcm.Notification(title=item.title, body=item.body)
    ttl = None
    if item.expires_at is not None:
        # FCM keeps it for an offline device until the notification expires (capped by FCM).
        left = item.expires_at - (now or _utcnow())
        ttl = min(max(left, timedelta(0)), fcm.MAX_TTL)
    data = item.data
    extras = claimed.push
    android_notification = None
    apns_config = None
    if extras is not None:
        if extras.link is not None and "link" not in data:
            data = {**data, "link": extras.link}
        if notification is not None and (extras.sound or extras.collapse_id or extras.badge):
            android_notification = fcm.AndroidNotification(
                sound=extras.sound,
                tag=extras.collapse_id,
                extra={"notification_count": extras.badge} if extras.badge else {},
            )
        aps: dict[str, Any] = {}
        if extras.badge is not None:
            aps["badge"] = extras.badge
        if extras.sound is not None:
            aps["sound"] = extras.sound
        if extras.thread_id is not None:
            aps["thread-id"] = extras.thread_id
        headers = {"apns-collapse-id": extras.collapse_id} if extras.collapse_id else {}
        if aps or headers:
            apns_config = fcm.ApnsConfig(headers=headers, payload={"aps": aps} if aps else {})
    android = None
    if ttl is not None or android_notification is not None:
        android = fcm.AndroidConfig(ttl=ttl, notification=android_notification)
    if address.startswith(TOPIC_PREFIX):
        return fcm.Message(
            topic=address.removeprefix(TOPIC_PREFIX),
            notification=notification,
            data=data,
            android=android,
            apns=apns_config,
        )
    return fcm.Message(
        token=address, notification=notification, data=data, android=android, apns=apns_config
    )


def topic_claim(send: ClaimedTopicSend) -> Claimed:
    """A topic send as the claim `message_for` reads: addressed to ``/topics/<name>``, with no
    app (so the tenant's default credential sends it) and no recipient."""
    item = InboxItem(
        id=send.id,
        notification_id=send.notification_id,
        event_id=send.event_id,
        user="",
        status=Status.PENDING,
        type=send.type,
        title=send.title,
        body=send.body,
        data=send.data,
        category=send.category,
        group=send.group,
        created_at=send.created_at,
    )
    return Claimed(
        id=send.id,
        fence=send.fence,
        tenant_id=send.tenant_id,
        channel=send.channel,
        endpoint=send.topic,
        attempts=send.attempts,
        item=item,
        address=TOPIC_PREFIX + send.topic,
    )


def paused(info: CredentialInfo) -> RetryLater:
    """The outcome of every send on a paused credential: wait, sending nothing."""
    why = info.paused_reason or "no reason recorded"
    return RetryLater(f"the FCM credential is paused: {why}", PAUSED_RETRY_SECONDS)


TokenKey = tuple[str, str, str]


class AccessTokens:
    """OAuth access tokens, one per service account (and token endpoint) for the whole process.

    A token is used until `fcm.AccessToken.needs_refresh`; then one caller fetches the next
    while the others await the same fetch (single flight). When that fetch fails and the old
    token has not expired yet, the old one goes on serving.
    """

    def __init__(self, now: Callable[[], datetime] = _utcnow) -> None:
        self._now = now
        self._tokens: dict[TokenKey, fcm.AccessToken] = {}
        self._fetching: dict[TokenKey, asyncio.Task[fcm.AccessToken | AuthFailed | RetryLater]] = {}
        self.fetches = 0

    @staticmethod
    def key(account: fcm.ServiceAccount, token_url: str) -> TokenKey:
        """Tokens are per account, per key (a replaced key gets its own) and per endpoint."""
        digest = hashlib.sha256(account.private_key.encode()).hexdigest()
        return account.client_email, token_url, digest

    async def get(
        self, key: TokenKey, fetch: TokenFetch
    ) -> fcm.AccessToken | AuthFailed | RetryLater:
        """The current token for `key`, fetched through `fetch` when due."""
        token = self._tokens.get(key)
        now = self._now()
        if token is not None and not token.needs_refresh(now):
            return token
        loop = asyncio.get_running_loop()
        task = self._fetching.get(key)
        if task is None or task.done() or task.get_loop() is not loop:
            task = loop.create_task(self._fetch(key, fetch))
            self._fetching[key] = task
        result = await asyncio.shield(task)
        if not isinstance(result, fcm.AccessToken):
            current = self._tokens.get(key)
            if current is not None and self._now() < current.expires_at:
                return current  # a failed early refresh: the old token still works
        return result

    async def _fetch(
        self, key: TokenKey, fetch: TokenFetch
    ) -> fcm.AccessToken | AuthFailed | RetryLater:
        try:
            self.fetches += 1
            result = await fetch()
            if isinstance(result, fcm.AccessToken):
                self._tokens[key] = result
            return result
        finally:
            if self._fetching.get(key) is asyncio.current_task():
                del self._fetching[key]

    def refused(self, key: TokenKey, value: str) -> None:
        """FCM refused `value` (a plain 401): forget it, unless a newer token replaced it
        already, so that many sends refused at once cause one fetch."""
        token = self._tokens.get(key)
        if token is not None and token.value == value:
            del self._tokens[key]


PROCESS_TOKENS = AccessTokens()


# --- HTTP/2 to FCM --------------------------------------------------------------------------------

CLOSE_TIMEOUT = 5.0
"""How long closing waits for the socket (TLS shutdown) before dropping it."""


@dataclass(slots=True)
class Answer:
    """One response: status, headers (lower-case names), body."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        """The first value of header `name`."""
        return next((v for k, v in self.headers if k == name), None)


class ConnectionLost(Exception):
    """No answer on this connection; `started` says whether FCM may have processed it."""

    def __init__(self, reason: str, *, started: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        self.started = started


class ConnectFailed(Exception):
    """No connection to FCM now; try again after `after` seconds."""

    def __init__(self, reason: str, after: float) -> None:
        super().__init__(reason)
        self.reason = reason
        self.after = after


class Connection(asyncio.Protocol):
    """One HTTP/2 connection to FCM (TLS with ALPN h2, or cleartext with prior knowledge),
    multiplexing requests within min(our cap, the server's SETTINGS_MAX_CONCURRENT_STREAMS).

    The asyncio protocol of its socket: what arrives goes straight to the `http2` engine,
    whose callbacks settle the requests' futures; what the engine queues is written once per
    event-loop turn, so the requests started in one turn share one write.
    """

    def __init__(self, *, max_streams: int, tls: bool) -> None:
        self._max_streams = max_streams
        self._tls = tls
        self._loop = asyncio.get_running_loop()
        self._engine = http2.ClientConnection(self)
        self._transport: asyncio.Transport | None = None
        self._pending: dict[int, asyncio.Future[Answer]] = {}
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._in_flight = 0
        self._draining = False
        self._closed: str | None = None
        self._flush_soon: asyncio.Handle | None = None
        self._gone: asyncio.Future[None] = self._loop.create_future()

    @classmethod
    async def open(
        cls,
        host: str,
        port: int,
        context: ssl.SSLContext | None,
        *,
        timeout: float,
        max_streams: int,
    ) -> Connection:
        """Connect (TLS with ALPN h2 when `context` is given).

        Raises:
            OSError, TimeoutError, ssl.SSLError: the connection could not be made.
        """
        connection = cls(max_streams=max_streams, tls=context is not None)
        async with asyncio.timeout(timeout):
            await connection._loop.create_connection(
                lambda: connection,
                host,
                port,
                ssl=context,
                server_hostname=host if context is not None else None,
            )
        if connection._closed is not None:
            raise ConnectionError(connection._closed)
        return connection

    # -- asyncio.Protocol ----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        if self._tls:
            ssl_object = transport.get_extra_info("ssl_object")
            if ssl_object is None or ssl_object.selected_alpn_protocol() != "h2":
                self._closed = "the server did not agree to HTTP/2 (ALPN h2)"
                transport.close()
                return
        self._engine.initiate()
        self._flush()

    def data_received(self, data: bytes) -> None:
        try:
            self._engine.receive(data)
        except http2.ProtocolError as exc:
            self._flush()  # the GOAWAY saying why
            self._lost(f"HTTP/2 protocol error: {exc}")
            return
        if self._engine.has_output:
            self._flush()  # acknowledgements and window updates go at once

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost("FCM closed the connection" if exc is None else f"connection error: {exc!r}")
        if not self._gone.done():
            self._gone.set_result(None)

    # -- http2.Listener ------------------------------------------------------------------------

    def response_received(
        self, stream_id: int, headers: list[tuple[bytes, bytes]], body: bytes
    ) -> None:
        future = self._pending.pop(stream_id, None)
        if future is not None and not future.done():
            status = 0
            decoded: list[tuple[str, str]] = []
            for name, value in headers:
                text = value.decode("utf-8", "replace")
                if name == b":status":
                    status = int(text) if text.isdigit() else 0
                else:
                    decoded.append((name.decode("ascii", "replace"), text))
            future.set_result(Answer(status, decoded, body))

    def stream_reset(self, stream_id: int, error_code: int) -> None:
        future = self._pending.pop(stream_id, None)
        if future is not None and not future.done():
            # REFUSED_STREAM: FCM did not process it, it may go again (RFC 9113 §8.7).
            started = error_code != http2.ErrorCode.REFUSED_STREAM
            reason = f"stream reset ({http2.error_name(error_code)})"
            future.set_exception(ConnectionLost(reason, started=started))

    def goaway_received(self, last_stream_id: int, error_code: int, debug_data: bytes) -> None:
        # Google's front ends say GOAWAY to idle and long-lived connections: no new streams
        # here; those it did not process go again on another connection.
        self._draining = True
        for stream_id in [s for s in self._pending if s > last_stream_id]:
            future = self._pending.pop(stream_id)
            if not future.done():
                reason = f"GOAWAY ({http2.error_name(error_code)})"
                future.set_exception(ConnectionLost(reason, started=False))
        self._wake()

    def settings_changed(self) -> None:
        if self._waiters:
            self._wake()  # the stream limit may have grown

    def ping_acked(self, data: bytes) -> None:
        pass  # we send no PING: an idle connection that died is found by the next request

    # -- requests ------------------------------------------------------------------------------

    @property
    def usable(self) -> bool:
        """Whether new requests may start here."""
        return self._closed is None and not self._draining

    def limit(self) -> int:
        """Streams allowed at once now."""
        return min(self._max_streams, self._engine.max_outbound_streams)

    async def request(self, header_block: bytes, body: bytes) -> Answer:
        """Send one request and wait for its answer (the caller bounds the wait).

        Raises:
            ConnectionLost: the connection went away (or is going) before an answer.
        """
        if self._in_flight < self.limit() and not self._waiters and self.usable:
            self._in_flight += 1
        else:
            await self._acquire()
        stream_id = 0
        try:
            if not self.usable:
                raise ConnectionLost(self._closed or "the connection is going away", started=False)
            try:
                stream_id = self._engine.request(header_block, body)
            except http2.CannotStart as exc:
                raise ConnectionLost(str(exc), started=False) from exc
            future: asyncio.Future[Answer] = self._loop.create_future()
            self._pending[stream_id] = future
            if self._flush_soon is None:
                self._flush_soon = self._loop.call_soon(self._flush)
            return await future
        finally:
            unanswered = stream_id and self._pending.pop(stream_id, None) is not None
            if unanswered and self._closed is None:  # cancelled or timed out: tell FCM
                self._engine.reset(stream_id)
                if self._flush_soon is None:
                    self._flush_soon = self._loop.call_soon(self._flush)
            self._in_flight -= 1
            if self._waiters:
                self._wake()
            if self._draining and self._in_flight == 0:
                self.close_now()

    async def _acquire(self) -> None:
        while True:
            if not self.usable:
                raise ConnectionLost(self._closed or "the connection is going away", started=False)
            if self._in_flight < self.limit():
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
        waiters = self._waiters
        free = len(waiters) if not self.usable else self.limit() - self._in_flight
        while free > 0 and waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                free -= 1

    def _flush(self) -> None:
        self._flush_soon = None
        data = self._engine.data_to_send()
        transport = self._transport
        if data and transport is not None and not transport.is_closing():
            transport.write(data)

    def _lost(self, reason: str) -> None:
        if self._closed is None:
            self._closed = reason
        pending, self._pending = self._pending, {}
        for future in pending.values():
            if not future.done():
                future.set_exception(ConnectionLost(reason, started=True))
        self._wake()
        if self._transport is not None:
            self._transport.close()

    def close_now(self) -> None:
        """Say GOAWAY and close; requests in flight end as `ConnectionLost`."""
        if self._closed is None:
            self._engine.close()
            self._flush()
        self._lost("closed by Clarion")

    async def close(self) -> None:
        """`close_now`, and wait for the socket to end."""
        self.close_now()
        if self._transport is not None and not self._gone.done():
            try:
                async with asyncio.timeout(CLOSE_TIMEOUT):
                    await asyncio.shield(self._gone)
            except TimeoutError:
                self._transport.abort()


class Origin:
    """Up to `size` connections to one FCM origin, used in turn, each opened when first needed
    and again after it went away; connects that fail back off exponentially."""

    def __init__(
        self,
        opener: Callable[[], Awaitable[Connection]],
        *,
        size: int,
        backoff_base: float = 1.0,
        backoff_max: float = 60.0,
    ) -> None:
        self._opener = opener
        self._slots: list[Connection | None] = [None] * size
        self._turn = itertools.count()
        self._lock = asyncio.Lock()
        self._base = backoff_base
        self._max = backoff_max
        self._failures = 0
        self._retry_at = 0.0
        self._last_error = ""
        self._old: list[Connection] = []

    async def connection(self) -> Connection:
        """A usable connection, the next in turn.

        Raises:
            ConnectFailed: connecting failed now or recently (backing off).
        """
        slot = next(self._turn) % len(self._slots)
        found = self._slots[slot]
        if found is not None and found.usable:
            return found
        async with self._lock:
            found = self._slots[slot]
            if found is not None and found.usable:
                return found
            if found is not None:
                self._old.append(found)
            wait = self._retry_at - time.monotonic()
            if wait > 0:
                raise ConnectFailed(f"reconnecting to FCM ({self._last_error})", wait)
            try:
                found = await self._opener()
            except (OSError, TimeoutError, ssl.SSLError) as exc:
                self._failures += 1
                delay = min(self._max, self._base * 2 ** (self._failures - 1))
                self._retry_at = time.monotonic() + delay
                self._last_error = f"connect failed: {exc.__class__.__name__}"
                log.warning("FCM connect failed", extra={"error": repr(exc), "retry_in": delay})
                raise ConnectFailed(self._last_error, delay) from exc
            self._failures = 0
            self._slots[slot] = found
            return found

    @property
    def open_connections(self) -> int:
        """Connections in use (for tests and metrics)."""
        return sum(c is not None and c.usable for c in self._slots)

    async def close(self) -> None:
        """Close every connection."""
        connections = [c for c in [*self._slots, *self._old] if c is not None]
        self._slots = [None] * len(self._slots)
        self._old = []
        for connection in connections:
            await connection.close()


@dataclass(frozen=True, slots=True)
class _Account:
    account: fcm.ServiceAccount
    send_path: str
    token_url: str
    key: TokenKey


class FcmTransport:
    """The `Transport` for `Channel.FCM`: service-account OAuth and HTTP v1 sends over HTTP/2;
    nothing is sent on a paused credential."""

    channel = Channel.FCM

    def __init__(
        self,
        load_credential: CredentialLoader,
        *,
        base_url: str | None = None,
        token_url: str | None = None,
        ssl_context: ssl.SSLContext | None = None,
        connect_timeout: float = 10.0,
        request_timeout: float = 30.0,
        concurrency: int = 500,
        connections: int = 5,
        streams_per_connection: int = 100,
        tokens: AccessTokens | None = None,
        now: Callable[[], datetime] = _utcnow,
    ) -> None:
        if concurrency < 1 or connections < 1 or streams_per_connection < 1:
            raise ValueError("concurrency, connections and streams must be at least 1")
        self._load = load_credential
        self._base_url = (base_url or DEFAULT_BASE_URL).rstrip("/")
        parts = urlsplit(self._base_url)
        if parts.scheme not in ("https", "http") or not parts.hostname:
            raise ValueError("the FCM base URL must be an http(s):// URL")
        self._host = parts.hostname
        self._port = parts.port or (443 if parts.scheme == "https" else 80)
        self._scheme = parts.scheme
        self._authority = parts.netloc
        # `http://` (an emulator): HTTP/2 with prior knowledge, as there is no ALPN to ask.
        self._context: ssl.SSLContext | None = None
        if parts.scheme == "https":
            self._context = ssl_context or ssl.create_default_context()
            self._context.set_alpn_protocols(["h2"])
        self._token_url = token_url
        self._verify: ssl.SSLContext | bool = ssl_context or True
        self._timeout = httpx.Timeout(request_timeout, connect=connect_timeout)
        self._connect_timeout = connect_timeout
        self._request_timeout = request_timeout
        self._concurrency = concurrency
        self._connections = connections
        self._streams = streams_per_connection
        self._tokens = tokens or PROCESS_TOKENS
        self._now = now
        self._origin: Origin | None = None
        self._token_client: httpx.AsyncClient | None = None
        self._slots: asyncio.Semaphore | None = None
        self._accounts: dict[tuple[str, datetime], _Account] = {}
        self._holds: dict[str, tuple[float, str]] = {}
        self._blocks: dict[tuple[str, str], bytes] = {}

    # -- connections ---------------------------------------------------------------------------

    def _connections_to_fcm(self) -> Origin:
        if self._origin is None:

            async def opener() -> Connection:
                return await Connection.open(
                    self._host,
                    self._port,
                    self._context,
                    timeout=self._connect_timeout,
                    max_streams=self._streams,
                )

            self._origin = Origin(opener, size=self._connections)
        return self._origin

    def _tokens_client(self) -> httpx.AsyncClient:
        if self._token_client is None:
            self._token_client = httpx.AsyncClient(
                http2=True, verify=self._verify, timeout=self._timeout, trust_env=False
            )
        return self._token_client

    def _header_block(self, path: str, access_token: str) -> bytes:
        """The HPACK block of a send: the same for every message of one project under one
        access token (the message, token included, is in the body), so it is encoded once.
        The bearer token is never indexed [RFC 7541 §7.1.3]."""
        key = (path, access_token)
        block = self._blocks.get(key)
        if block is None:
            if len(self._blocks) >= _BLOCK_CACHE_LIMIT:
                self._blocks.clear()
            block = self._blocks[key] = b"".join(
                [
                    http2.encode_field(b":method", b"POST"),
                    http2.encode_field(b":scheme", self._scheme.encode()),
                    http2.encode_field(b":authority", self._authority.encode()),
                    http2.encode_field(b":path", path.encode()),
                    http2.encode_field(
                        b"authorization", f"Bearer {access_token}".encode(), never_indexed=True
                    ),
                    http2.encode_field(b"content-type", b"application/json; charset=UTF-8"),
                    http2.encode_field(b"user-agent", b"clarion"),
                ]
            )
        return block

    def open_connections(self) -> int:
        """HTTP/2 connections to FCM now open (for tests and metrics)."""
        return 0 if self._origin is None else self._origin.open_connections

    async def close(self) -> None:
        """Close every connection."""
        origin, self._origin = self._origin, None
        if origin is not None:
            await origin.close()
        client, self._token_client = self._token_client, None
        if client is not None:
            await client.aclose()

    # -- sending -------------------------------------------------------------------------------

    async def send(self, batch: Sequence[Claimed]) -> list[Outcome]:
        """One outcome per delivery, in order; never raises for what FCM or the network do."""
        if self._slots is None:
            self._slots = asyncio.Semaphore(self._concurrency)
        results: list[Outcome] = [RetryLater("not sent")] * len(batch)
        groups: dict[tuple[str, str | None], list[int]] = {}
        for index, claimed in enumerate(batch):
            groups.setdefault((claimed.tenant_id, claimed.app_id), []).append(index)

        async def send_group(tenant_id: str, app_id: str | None, indexes: list[int]) -> None:
            outcomes = await self._send_group(tenant_id, app_id, [batch[i] for i in indexes])
            for i, outcome in zip(indexes, outcomes, strict=True):
                results[i] = outcome

        await asyncio.gather(*(send_group(t, a, ix) for (t, a), ix in groups.items()))
        return results

    async def send_topics(self, sends: Sequence[ClaimedTopicSend]) -> list[Outcome]:
        """One outcome per topic send, in order, each sent with its tenant's default
        credential (a topic belongs to a Firebase project, not to one app's devices); the
        payload limit is FCM's for topics (2048 bytes, `wire.fcm`)."""
        results = await self.send([topic_claim(s) for s in sends])
        return [
            Rejected(NO_DEFAULT_CREDENTIAL) if o == Rejected(NO_CREDENTIAL) else o for o in results
        ]

    async def _send_group(
        self, tenant_id: str, app_id: str | None, claims: list[Claimed]
    ) -> Sequence[Outcome]:
        try:
            credential = await self._load(tenant_id, PROVIDER, app_id)
        except Exception:
            log.exception("FCM credential could not be opened", extra={"tenant": tenant_id})
            return [RetryLater("the FCM credential could not be opened")] * len(claims)
        if credential is None:
            return [Rejected(NO_CREDENTIAL)] * len(claims)
        info = credential.info
        if info.status != ACTIVE:
            return [paused(info)] * len(claims)
        try:
            account = self._account(credential)
        except errors.InvalidRequest as exc:
            return [AuthFailed(f"the FCM credential is unusable: {exc.message}", info.id)] * len(
                claims
            )
        token = await self._token(account)
        if not isinstance(token, fcm.AccessToken):
            if isinstance(token, AuthFailed):
                token = dataclasses.replace(token, credential_id=info.id)
            return [token] * len(claims)
        return await asyncio.gather(*(self._send_one(info, account, token, c) for c in claims))

    def _account(self, credential: Credential) -> _Account:
        """The service account of this version of the credential, read once.

        Raises:
            errors.InvalidRequest: the stored account no longer reads.
        """
        info = credential.info
        cached = self._accounts.get((info.id, info.updated_at))
        if cached is not None:
            return cached
        meta = info.metadata
        account = fcm.parse_service_account(
            {
                "type": "service_account",
                "project_id": meta.get("project_id"),
                "client_email": meta.get("client_email"),
                "token_uri": meta.get("token_uri"),
                "private_key_id": meta.get("private_key_id"),
                "private_key": credential.secret,
            }
        )
        token_url = self._token_url or account.token_uri
        found = _Account(
            account=account,
            send_path=urlsplit(fcm.send_url(account.project_id, base=self._base_url)).path,
            token_url=token_url,
            key=AccessTokens.key(account, token_url),
        )
        for stale in [k for k in self._accounts if k[0] == info.id]:
            del self._accounts[stale]
        self._accounts[(info.id, info.updated_at)] = found
        return found

    async def _token(self, account: _Account) -> fcm.AccessToken | AuthFailed | RetryLater:
        async def fetch() -> fcm.AccessToken | AuthFailed | RetryLater:
            return await self._fetch_token(account)

        return await self._tokens.get(account.key, fetch)

    async def _fetch_token(self, account: _Account) -> fcm.AccessToken | AuthFailed | RetryLater:
        now = self._now()
        try:
            assertion = fcm.sign_assertion(account.account, now=now)
        except errors.InvalidRequest as exc:
            return AuthFailed(f"the FCM credential cannot sign: {exc.message}")
        try:
            async with asyncio.timeout(self._request_timeout):
                response = await self._tokens_client().post(
                    account.token_url,
                    content=fcm.token_request_body(assertion),
                    headers={"Content-Type": fcm.TOKEN_REQUEST_CONTENT_TYPE},
                )
        except (httpx.HTTPError, TimeoutError, OSError) as exc:
            log.warning(
                "FCM access token fetch failed",
                extra={"client_email": account.account.client_email, "error": repr(exc)},
            )
            return RetryLater(f"the OAuth token endpoint did not answer: {exc.__class__.__name__}")
        # Issued no later than the request went out: a token counted from then is refreshed
        # a little early rather than late.
        result = fcm.classify_token_response(
            response.status_code, response.headers.multi_items(), response.content, now=now
        )
        if not isinstance(result, fcm.AccessToken):
            log.warning(
                "FCM access token refused",
                extra={"client_email": account.account.client_email, "reason": result.reason},
            )
        return result

    async def _send_one(
        self,
        info: CredentialInfo,
        account: _Account,
        token: fcm.AccessToken,
        claimed: Claimed,
    ) -> Outcome:
        try:
            body = fcm.encode_body(message_for(claimed, self._now()))
        except errors.InvalidRequest as exc:
            return Rejected(exc.message)
        project = account.account.project_id
        answer = await self._post(project, account.send_path, token.value, body)
        if not isinstance(answer, Answer):
            return answer
        verdict = fcm.classify_response(answer.status, answer.headers, answer.body, now=self._now())
        if isinstance(verdict, fcm.RefreshAccessToken):
            # Our token went stale before its time (revoked, rotated): one new one, one resend.
            self._tokens.refused(account.key, token.value)
            fresh = await self._token(account)
            if not isinstance(fresh, fcm.AccessToken):
                if isinstance(fresh, AuthFailed):
                    return dataclasses.replace(fresh, credential_id=info.id)
                return fresh
            answer = await self._post(project, account.send_path, fresh.value, body)
            if not isinstance(answer, Answer):
                return answer
            verdict = fcm.classify_response(
                answer.status,
                answer.headers,
                answer.body,
                now=self._now(),
                retried_with_new_token=True,
            )
            if isinstance(verdict, fcm.RefreshAccessToken):  # not expected from the wire
                return AuthFailed(verdict.reason, info.id)
        if isinstance(verdict, AuthFailed):
            # `wire` does not know which credential was refused; the delivering side pauses it.
            return dataclasses.replace(verdict, credential_id=info.id)
        if (
            isinstance(verdict, RetryLater)
            and verdict.after_seconds
            and answer.header("retry-after") is not None
        ):
            self._hold(project, verdict)
        return verdict

    async def _post(
        self, project: str, path: str, access_token: str, body: bytes
    ) -> Answer | RetryLater:
        """One send on one of the connections, once more on another if the first never took
        it (GOAWAY, a connection going away); RetryLater when FCM cannot be reached, does not
        answer in time, or may have got it and the connection was lost (at least once)."""
        assert self._slots is not None
        async with self._slots:
            # Looked at once a slot is free: a Retry-After that arrived meanwhile counts.
            held = self._held(project)
            if held is not None:
                return held
            block = self._header_block(path, access_token)
            origin = self._connections_to_fcm()
            last = "the connection was going away"
            for _ in range(2):
                try:
                    connection = await origin.connection()
                except ConnectFailed as exc:
                    return RetryLater(f"FCM could not be reached: {exc.reason}", exc.after)
                try:
                    async with asyncio.timeout(self._request_timeout):
                        return await connection.request(block, body)
                except ConnectionLost as exc:
                    if exc.started:
                        return RetryLater(f"FCM connection lost: {exc.reason}")
                    last = exc.reason
                except TimeoutError:
                    return RetryLater("FCM did not answer in time")
            return RetryLater(f"FCM connection lost: {last}")

    # -- Retry-After, project-wide -------------------------------------------------------------

    def _hold(self, project: str, outcome: RetryLater) -> None:
        """FCM asked the project to wait (429 QUOTA_EXCEEDED, 503 UNAVAILABLE with
        Retry-After): the project's other sends wait too, rather than spend its quota on
        answers that are known in advance."""
        until = time.monotonic() + (outcome.after_seconds or 0.0)
        current = self._holds.get(project)
        if current is None or current[0] < until:
            self._holds[project] = (until, outcome.reason)

    def _held(self, project: str) -> RetryLater | None:
        hold = self._holds.get(project)
        if hold is None:
            return None
        wait = hold[0] - time.monotonic()
        if wait <= 0:
            del self._holds[project]
            return None
        return RetryLater(f"held after {hold[1]}", wait)

    def describe(self) -> dict[str, Any]:
        """What the transport holds (for tests and metrics)."""
        return {
            "accounts": len(self._accounts),
            "held_projects": sorted(self._holds),
            "connections": self.open_connections(),
        }
