"""A TCP proxy that can be cut, for outage tests: stand it between Clarion and PostgreSQL, then
`cut()` it to look like a database that went down (every open connection reset, new ones
refused) and `restore()` it to bring the database back, on the same port.

No toxiproxy here (a Go binary), and the machine's PostgreSQL is shared: stopping it for real
would take the other suites down with it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator


class TcpProxy:
    """Forwards 127.0.0.1:`port` to `upstream`, until cut."""

    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self._upstream = (upstream_host, upstream_port)
        self._server: asyncio.Server | None = None
        self._port = 0
        self._pairs: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()
        self._pumps: set[asyncio.Task[None]] = set()
        self.accepted = 0

    @property
    def port(self) -> int:
        """Where clients connect."""
        return self._port

    @property
    def is_cut(self) -> bool:
        """Whether the proxy currently refuses connections."""
        return self._server is None

    async def start(self) -> int:
        """Listen (on the port of before, after a cut); the port."""
        self._server = await asyncio.start_server(
            self._accept, "127.0.0.1", self._port, reuse_address=True
        )
        self._port = self._server.sockets[0].getsockname()[1]
        return self._port

    async def cut(self) -> None:
        """Reset every open connection and refuse new ones, as a stopped database does."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
        for client, upstream in list(self._pairs):
            client.transport.abort()
            upstream.transport.abort()
        self._pairs.clear()
        for pump in list(self._pumps):
            pump.cancel()
        await asyncio.gather(*self._pumps, return_exceptions=True)
        if server is not None:
            await server.wait_closed()

    async def restore(self) -> None:
        """Take connections again, on the same port."""
        if self._server is None:
            await self.start()

    async def close(self) -> None:
        """Stop for good."""
        await self.cut()

    async def _accept(self, client_in: asyncio.StreamReader, client: asyncio.StreamWriter) -> None:
        try:
            upstream_in, upstream = await asyncio.open_connection(*self._upstream)
        except OSError:
            client.transport.abort()
            return
        self.accepted += 1
        pair = (client, upstream)
        self._pairs.add(pair)
        pumps = [
            asyncio.create_task(self._pump(client_in, upstream)),
            asyncio.create_task(self._pump(upstream_in, client)),
        ]
        self._pumps.update(pumps)
        try:
            await asyncio.gather(*pumps, return_exceptions=True)
        finally:
            self._pumps.difference_update(pumps)
            self._pairs.discard(pair)
            for writer in pair:
                writer.transport.abort()

    @staticmethod
    async def _pump(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            while chunk := await source.read(65_536):
                sink.write(chunk)
                await sink.drain()
        with contextlib.suppress(OSError, RuntimeError):
            if sink.can_write_eof():
                sink.write_eof()


@contextlib.asynccontextmanager
async def proxied(host: str, port: int) -> AsyncIterator[TcpProxy]:
    """A started proxy to `host`:`port`, closed when the block ends."""
    proxy = TcpProxy(host, port)
    await proxy.start()
    try:
        yield proxy
    finally:
        await proxy.close()
