"""A small HTTP/1.1 server on asyncio and h11, shared by the HTTP/1.1 emulators.

Keep-alive, Content-Length and chunked bodies (h11 parses both), TLS when given a context. Each
request is handed to an async handler as a `Request`; its `Response` is written back. It runs
in-process with nothing but asyncio, so tests start and stop it like any object.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import h11

from clarion.emulators.common import (
    Emulator,
    certificate_pair,
    check_certificate_files,
    load_cert_chain,
)

MAX_BODY_BYTES = 1_048_576
"""What the server keeps of a body; larger ones are counted (``size``), not stored."""


@dataclass
class Request:
    method: str
    target: str
    headers: list[tuple[str, str]]
    body: bytes
    size: int
    tls: bool
    connection: int

    @property
    def path(self) -> str:
        return urlsplit(self.target).path

    @property
    def query(self) -> dict[str, list[str]]:
        return parse_qs(urlsplit(self.target).query, keep_blank_values=True)

    def header(self, name: str) -> str | None:
        """The value of header `name` (case-insensitive); repeated ones joined with ", "."""
        wanted = name.lower()
        values = [v for k, v in self.headers if k == wanted]
        return ", ".join(values) if values else None

    def count(self, name: str) -> int:
        wanted = name.lower()
        return sum(1 for k, _ in self.headers if k == wanted)

    def json(self) -> Any:
        return json.loads(self.body or b"{}")


@dataclass
class Response:
    status: int
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""

    @classmethod
    def of_json(
        cls, status: int, value: Any, headers: list[tuple[str, str]] | None = None
    ) -> Response:
        body = json.dumps(value).encode()
        return cls(status, [("content-type", "application/json"), *(headers or [])], body)


Handler = Callable[[Request], Awaitable[Response]]


class HttpServer:
    """Serve `handler` on (`host`, `port`); TLS with `ssl_context`. Port 0 picks a free one."""

    def __init__(
        self, handler: Handler, *, host: str, port: int, ssl_context: ssl.SSLContext | None = None
    ) -> None:
        self._handler = handler
        self._host = host
        self._port = port
        self._ssl = ssl_context
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._connections = 0

    async def start(self) -> None:
        self._server = await asyncio.start_server(
            self._serve, self._host, self._port, ssl=self._ssl, backlog=1024
        )

    async def stop(self) -> None:
        if self._server is None:
            return
        self._server.close()
        for writer in list(self._writers):
            writer.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._server.wait_closed(), 2)

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("the server is not started")
        return int(self._server.sockets[0].getsockname()[1])

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._connections += 1
        number = self._connections
        self._writers.add(writer)
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=65_536)
        try:
            while True:
                request = await self._read_request(conn, reader, number)
                if request is None:
                    break
                try:
                    response = await self._handler(request)
                except Exception as exc:  # an emulator bug must not look like a network fault
                    response = Response.of_json(500, {"error": f"emulator error: {exc!r}"})
                headers = [*response.headers, ("content-length", str(len(response.body)))]
                writer.write(
                    conn.send(h11.Response(status_code=response.status, headers=headers))
                    + (conn.send(h11.Data(data=response.body)) if response.body else b"")
                    + conn.send(h11.EndOfMessage())
                )
                await writer.drain()
                if conn.our_state is h11.MUST_CLOSE or conn.their_state is h11.MUST_CLOSE:
                    break
                conn.start_next_cycle()
        except h11.RemoteProtocolError as exc:
            with contextlib.suppress(Exception):
                writer.write(
                    conn.send(
                        h11.Response(
                            status_code=exc.error_status_hint,
                            headers=[("content-length", "0"), ("connection", "close")],
                        )
                    )
                    + conn.send(h11.EndOfMessage())
                )
        except (ConnectionError, ssl.SSLError, OSError, h11.LocalProtocolError):
            pass
        finally:
            self._writers.discard(writer)
            writer.close()

    async def _read_request(
        self, conn: h11.Connection, reader: asyncio.StreamReader, number: int
    ) -> Request | None:
        head: h11.Request | None = None
        body = bytearray()
        size = 0
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                data = await reader.read(65_536)
                conn.receive_data(data)
                if not data and conn.their_state is h11.IDLE:
                    return None
                continue
            if isinstance(event, h11.Request):
                head = event
            elif isinstance(event, h11.Data):
                size += len(event.data)
                if len(body) < MAX_BODY_BYTES:
                    body += event.data[: MAX_BODY_BYTES - len(body)]
            elif isinstance(event, h11.EndOfMessage):
                assert head is not None
                return Request(
                    method=head.method.decode("latin-1"),
                    target=head.target.decode("latin-1"),
                    headers=[
                        (k.decode("latin-1").lower(), v.decode("latin-1")) for k, v in head.headers
                    ],
                    body=bytes(body),
                    size=size,
                    tls=self._ssl is not None,
                    connection=number,
                )
            elif isinstance(event, h11.ConnectionClosed) or event is h11.PAUSED:
                return None


def json_body(request: Request) -> dict[str, Any]:
    """The request's JSON object body ({} when empty).

    Raises:
        ControlError: not a JSON object.
    """
    try:
        value = request.json()
    except ValueError as exc:
        raise ControlError(400, "the body is not JSON") from exc
    if not isinstance(value, dict):
        raise ControlError(400, "the body is not a JSON object")
    return value


class ControlError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def server_context(certificate_pem: bytes, key_pem: bytes) -> ssl.SSLContext:
    """A TLS 1.2+ server context offering ALPN ``http/1.1`` with this certificate and key."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols(["http/1.1"])
    load_cert_chain(context, certificate_pem, key_pem)
    return context


def http_origin(tls: bool, host: str, port: int) -> str:
    """``scheme://host[:port]``, the port left out where it is the scheme's default."""
    scheme, default = ("https", 443) if tls else ("http", 80)
    host = f"[{host}]" if ":" in host else host
    return f"{scheme}://{host}" if port == default else f"{scheme}://{host}:{port}"


class HttpEmulator(Emulator):
    """An emulator on two `HttpServer`s: its service (TLS unless ``tls`` is false) and its plain
    HTTP control API. Subclasses call `_listen` at the end of ``__init__``."""

    def _listen(
        self,
        serve: Handler,
        serve_control: Handler,
        *,
        host: str,
        port: int,
        control_port: int,
        tls: bool,
        cert_file: Path | None,
        key_file: Path | None,
        cert_host: str,
    ) -> None:
        check_certificate_files(cert_file, key_file)
        context = None
        if tls:
            certificate, key = certificate_pair(cert_file, key_file, cert_host)
            self._certificate_pem = certificate
            context = server_context(certificate, key)
        self._server = HttpServer(serve, host=host, port=port, ssl_context=context)
        self._control = HttpServer(serve_control, host=host, port=control_port)

    async def start(self) -> None:
        await self._server.start()
        await self._control.start()

    async def stop(self) -> None:
        await self._server.stop()
        await self._control.stop()

    @property
    def port(self) -> int:
        return self._server.port

    @property
    def control_port(self) -> int:
        return self._control.port
