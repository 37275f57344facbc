"""The routing consumer: takes accepted events off the bus and routes them."""

from __future__ import annotations

import asyncio
import logging

from clarion.domain.notifications import EVENTS_STREAM
from clarion.services.ports import Bus
from clarion.services.routing import Routing

log = logging.getLogger(__name__)

GROUP = "routers"


async def run_routers(routing: Routing, bus: Bus, stop: asyncio.Event, *, concurrency: int) -> None:
    """Route events from the bus, `concurrency` at a time, until `stop` is set.

    A message is acknowledged only after its event is routed (or found routed already); one
    that fails stays owed and comes back through the bus or the relay's redelivery.
    """
    slots = asyncio.Semaphore(concurrency)
    running: set[asyncio.Task[None]] = set()

    async def handle(envelope: object) -> None:
        try:
            event_id = envelope.payload["event_id"]  # type: ignore[attr-defined]
            await routing.route(event_id)
            await envelope.ack()  # type: ignore[attr-defined]
        except Exception:
            log.exception("routing failed; the event will be redelivered")
        finally:
            slots.release()

    messages = bus.consume(EVENTS_STREAM, GROUP).__aiter__()
    while not stop.is_set():
        await slots.acquire()
        next_message = asyncio.ensure_future(anext(messages))
        stopping = asyncio.ensure_future(stop.wait())
        done, _ = await asyncio.wait({next_message, stopping}, return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()
        if next_message not in done:
            next_message.cancel()
            slots.release()
            break
        task = asyncio.create_task(handle(next_message.result()))
        running.add(task)
        task.add_done_callback(running.discard)
    if running:
        await asyncio.wait(running)
