"""The in-process bus: the embedded default for a single `clarion serve`.

Supported, not a test double, within its limits: work lives in bounded queues in this process
(so `publish` waits when routers fall behind, rather than buffering without end), every stream
has one consumer group, and anything queued dies with the process. That loss is covered by the
outbox relay, which hands unrouted events to the bus again (services/relaying.py).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

STREAM_CAPACITY = 10_000  # events waiting for a router before producers are made to wait
LISTENER_CAPACITY = 10_000  # broadcasts a slow gateway may lag behind before some are dropped


@dataclass(slots=True)
class MemoryEnvelope:
    """A message taken from a stream; acknowledging it is a no-op in memory."""

    payload: dict[str, Any]

    async def ack(self) -> None:
        """Nothing to do: the message left the queue when it was taken."""


class MemoryBus:
    """Streams and broadcasts inside one process."""

    def __init__(
        self,
        *,
        stream_capacity: int = STREAM_CAPACITY,
        listener_capacity: int = LISTENER_CAPACITY,
    ) -> None:
        self._stream_capacity = stream_capacity
        self._listener_capacity = listener_capacity
        self._streams: dict[str, asyncio.Queue[dict[str, Any]]] = {}
        self._listeners: dict[str, set[asyncio.Queue[dict[str, Any]]]] = {}

    def _stream(self, name: str) -> asyncio.Queue[dict[str, Any]]:
        queue = self._streams.get(name)
        if queue is None:
            queue = self._streams[name] = asyncio.Queue(self._stream_capacity)
        return queue

    async def publish(self, stream: str, payload: dict[str, Any]) -> None:
        """Append to `stream`, waiting while it is full."""
        await self._stream(stream).put(payload)

    async def consume(self, stream: str, group: str) -> AsyncIterator[MemoryEnvelope]:
        """Take messages of `stream` (one group: consumers share the work)."""
        queue = self._stream(stream)
        while True:
            yield MemoryEnvelope(await queue.get())

    async def broadcast(self, channel: str, payload: dict[str, Any]) -> None:
        """Give `payload` to every listener of `channel`, dropping it for one that lags."""
        for queue in tuple(self._listeners.get(channel, ())):
            try:
                queue.put_nowait(payload)
            except asyncio.QueueFull:
                log.warning("listener lagging; broadcast dropped", extra={"channel": channel})

    @asynccontextmanager
    async def listen(self, channel: str) -> AsyncIterator[AsyncIterator[dict[str, Any]]]:
        """Receive the broadcasts of `channel` while the context is open."""
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(self._listener_capacity)
        self._listeners.setdefault(channel, set()).add(queue)

        async def messages() -> AsyncIterator[dict[str, Any]]:
            while True:
                yield await queue.get()

        try:
            yield messages()
        finally:
            self._listeners[channel].discard(queue)

    async def close(self) -> None:
        """Nothing to release."""
