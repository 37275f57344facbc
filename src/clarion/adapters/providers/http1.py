"""Pooled HTTP/1.1 POSTs for the Web Push and WNS transports: asyncio streams and h11 (the
HTTP/1.1 state machine httpx itself runs on).

Not ``httpx.AsyncClient``: measured with bench/webpush.py, httpcore's connection pool spent
about 5 ms of CPU per request with 64 connections to one origin (each request scans every
connection, and each scan asks anyio for socket details and sniffio for the event loop), five
times pywebpush's whole cost per message. This client keeps idle connections per origin in a
stack, so taking one is O(1).

The SSRF guard: when `allowed_networks` is given, the host is resolved here, every address is
checked (`wire.webhooks.vet_addresses`: no loopback, private, link-local... unless the operator
allows the network) and the connection goes to a checked address, so a second DNS answer cannot
slip a private address in (rebinding). TLS still verifies the certificate against the host
*name* (SNI and hostname check), and connections are pooled per origin (scheme, host, port), so
a pooled connection only ever carries requests for the name it was verified for.

Concurrency is bounded per origin (HTTP/1.1 carries one request per connection at a time, so
this also bounds connections) and overall.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
import ssl
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

import h11

from clarion import __version__
from clarion.wire import webhooks

USER_AGENT = f"Clarion/{__version__}"
MAX_RESPONSE_BYTES = 16_384
"""Push services answer with a few headers and at most a short error text; more is not read."""
KEEPALIVE_SECONDS = 50.0
"""Idle connections are closed after this long: push services and proxies drop idle ones after
about a minute, and a request on a connection the server is closing would fail."""
READ_SIZE = 65_536


class Refused(Exception):
    """The SSRF guard refused the endpoint's address; nothing was sent."""


class PostFailed(Exception):
    """The exchange failed; `sent` says whether the request may have reached the server."""

    def __init__(self, reason: str, *, sent: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        self.sent = sent


@dataclass(frozen=True, slots=True)
class Answer:
    """One response: status, headers (names lower-case), body (capped)."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes


@dataclass(frozen=True, slots=True)
class Origin:
    scheme: str
    host: str
    port: int

    @property
    def host_header(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.scheme == "https" else 80
        return host if self.port == default else f"{host}:{self.port}"


class _Stale(Exception):
    """A reused connection was closed by the server before it answered a single byte."""


class Connection:
    """One keep-alive HTTP/1.1 connection."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        self._h11 = h11.Connection(h11.CLIENT)
        self.idle_since = time.monotonic()
        self.uses = 0

    @property
    def reusable(self) -> bool:
        return (
            not self._writer.is_closing()
            and not self._reader.at_eof()
            and time.monotonic() - self.idle_since < KEEPALIVE_SECONDS
        )

    async def exchange(
        self, origin: Origin, target: str, headers: Sequence[tuple[str, str]], body: bytes, cap: int
    ) -> Answer:
        conn = self._h11
        self.uses += 1
        request = h11.Request(
            method="POST",
            target=target,
            headers=[
                ("Host", origin.host_header),
                ("User-Agent", USER_AGENT),
                ("Content-Length", str(len(body))),
                *headers,
            ],
        )
        data = conn.send(request)
        if body:
            data += conn.send(h11.Data(data=body))
        data += conn.send(h11.EndOfMessage())
        self._writer.write(data)
        received = 0
        status = 0
        answer_headers: list[tuple[str, str]] = []
        content = bytearray()
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                chunk = await self._reader.read(READ_SIZE)
                if not chunk and received == 0 and self.uses > 1:
                    raise _Stale
                received += len(chunk)
                conn.receive_data(chunk)
                continue
            if isinstance(event, h11.Response):
                status = event.status_code
                answer_headers = [
                    (k.decode("latin-1").lower(), v.decode("latin-1")) for k, v in event.headers
                ]
            elif isinstance(event, h11.Data):
                if len(content) < cap:
                    content += event.data[: cap - len(content)]
            elif isinstance(event, h11.EndOfMessage):
                break
            elif isinstance(event, h11.ConnectionClosed):
                raise h11.RemoteProtocolError("the server closed the connection mid-answer")
        if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
            conn.start_next_cycle()
            self.idle_since = time.monotonic()
        else:
            self.close()
        return Answer(status, answer_headers, bytes(content))

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._writer.close()


class Http1Pool:
    """HTTP/1.1 POSTs over pooled keep-alive connections, with per-origin and overall bounds.

    `allowed_networks` None turns the address guard off (WNS: its hosts are checked by name,
    under ``notify.windows.com``); a sequence turns it on, letting those networks through.
    """

    def __init__(
        self,
        *,
        ssl_context: ssl.SSLContext | None = None,
        connect_timeout: float = 10.0,
        request_timeout: float = 30.0,
        connections_per_origin: int = 64,
        max_connections: int = 512,
        allowed_networks: Sequence[webhooks.IPNetwork] | None = None,
        max_response_bytes: int = MAX_RESPONSE_BYTES,
    ) -> None:
        self._context = ssl_context or ssl.create_default_context()
        self._context.set_alpn_protocols(["http/1.1"])
        self._connect_timeout = connect_timeout
        self._request_timeout = request_timeout
        self._per_origin = connections_per_origin
        self._overall = asyncio.Semaphore(max_connections)
        self._allowed = None if allowed_networks is None else tuple(allowed_networks)
        self._cap = max_response_bytes
        self._gates: dict[Origin, asyncio.Semaphore] = {}
        self._idle: dict[Origin, deque[Connection]] = {}
        self._closed = False

    async def post(self, url: str, headers: Sequence[tuple[str, str]], body: bytes) -> Answer:
        """POST `body` to `url` and read the answer.

        Raises:
            Refused: the guard refused the address the host resolves to (nothing was sent).
            PostFailed: no answer (connect failure, timeout, broken connection).
        """
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        try:
            port = parts.port or (443 if scheme == "https" else 80)
        except ValueError as exc:
            raise PostFailed(f"bad URL: {exc}", sent=False) from None
        origin = Origin(scheme, (parts.hostname or "").lower(), port)
        target = parts.path or "/"
        if parts.query:
            target += "?" + parts.query
        gate = self._gates.get(origin)
        if gate is None:
            gate = self._gates[origin] = asyncio.Semaphore(self._per_origin)
        sent = False
        try:
            async with asyncio.timeout(self._request_timeout), gate, self._overall:
                for attempt in range(2):
                    connection = self._take(origin)
                    if connection is None:
                        connection = await self._connect(origin)
                    sent = True
                    try:
                        answer = await connection.exchange(origin, target, headers, body, self._cap)
                    except _Stale:
                        # The server had closed this idle connection; it never saw the request.
                        connection.close()
                        sent = False
                        if attempt == 0:
                            continue
                        raise PostFailed("the connection was closed", sent=False) from None
                    except BaseException:
                        connection.close()
                        raise
                    self._give_back(origin, connection)
                    return answer
                raise PostFailed("no connection", sent=False)  # not reached
        except TimeoutError:
            raise PostFailed(f"no answer within {self._request_timeout:g} s", sent=sent) from None
        except ssl.SSLError as exc:
            raise PostFailed(
                f"TLS failed: {exc.reason or type(exc).__name__}", sent=False
            ) from None
        except h11.ProtocolError as exc:
            raise PostFailed(f"HTTP/1.1 protocol error: {exc}", sent=True) from None
        except OSError as exc:
            what = "connection failed" if sent else "could not connect"
            raise PostFailed(f"{what}: {_describe(exc)}", sent=sent) from None

    def _take(self, origin: Origin) -> Connection | None:
        idle = self._idle.get(origin)
        while idle:
            connection = idle.pop()  # the most recently used: the least likely to be stale
            if connection.reusable:
                return connection
            connection.close()
        return None

    def _give_back(self, origin: Origin, connection: Connection) -> None:
        if self._closed or not connection.reusable:
            connection.close()
            return
        self._idle.setdefault(origin, deque()).append(connection)

    async def _connect(self, origin: Origin) -> Connection:
        context = self._context if origin.scheme == "https" else None
        server_hostname = origin.host if context is not None else None
        hosts: list[str] = [origin.host]
        if self._allowed is not None:
            hosts = [str(a) for a in await self._vetted(origin)]
        failure: OSError = OSError(f"{origin.host} has no address")
        async with asyncio.timeout(self._connect_timeout):
            for host in hosts:
                try:
                    reader, writer = await asyncio.open_connection(
                        host,
                        origin.port,
                        ssl=context,
                        server_hostname=server_hostname,
                        limit=READ_SIZE,
                    )
                except (ConnectionError, socket.gaierror) as exc:
                    failure = exc  # nothing was sent: the next checked address may answer
                    continue
                sock = writer.get_extra_info("socket")
                if sock is not None:
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                return Connection(reader, writer)
        raise failure

    async def _vetted(self, origin: Origin) -> list[webhooks.IPAddress]:
        name = origin.host.strip("[]")
        try:
            literal: webhooks.IPAddress | None = ipaddress.ip_address(name)
        except ValueError:
            literal = None
        if literal is not None:
            addresses: list[webhooks.IPAddress] = [literal]
        else:
            infos = await asyncio.get_running_loop().getaddrinfo(
                name, origin.port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
            )
            found: dict[webhooks.IPAddress, None] = {}
            for _family, _type, _proto, _name, sockaddr in infos:
                found[ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])] = None
            addresses = list(found)
        target = webhooks.Target(scheme="https", host=name, port=origin.port, literal=literal)
        why = webhooks.vet_addresses(target, addresses, self._allowed or ())
        if why is not None:
            raise Refused(why)
        return addresses

    async def aclose(self) -> None:
        """Close every idle connection (those in use close when their request ends)."""
        self._closed = True
        for idle in self._idle.values():
            while idle:
                idle.pop().close()
        self._idle.clear()


def _describe(exc: BaseException) -> str:
    # The exception's name and text, never the URL (a channel URI or endpoint is a credential).
    text = str(exc).split("\n", 1)[0][:200]
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
