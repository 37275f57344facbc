"""The routing consumer: takes accepted events off the bus and routes them."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from clarion.domain import errors
from clarion.domain.notifications import EVENTS_STREAM
from clarion.services.ports import Bus
from clarion.services.routing import Routing

log = logging.getLogger(__name__)

GROUP = "routers"

# While the database is unreachable a router keeps retrying the events it holds, backing off
# from the first to the second figure, for up to UNAVAILABLE_PATIENCE seconds: its slots stay
# busy, so it takes nothing more off the bus (which would only fail too and spend the
# messages' delivery counts). The patience stays under the bus's visibility timeout (60 s), so
# that no other consumer is handed the same message meanwhile.
UNAVAILABLE_BACKOFF = (0.2, 5.0)
UNAVAILABLE_PATIENCE = 45.0


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
            await _route(routing, event_id, stop)
            await envelope.ack()  # type: ignore[attr-defined]
        except errors.Unavailable as exc:
            log.warning(
                "routing postponed; the event will be redelivered",
                extra={"action": "routing_postponed", "error": exc.message},
            )
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


async def _route(routing: Routing, event_id: str, stop: asyncio.Event) -> None:
    """Route one event, retrying while the database is unreachable (see UNAVAILABLE_PATIENCE);
    gives up at once when stopping."""
    loop = asyncio.get_running_loop()
    delay, longest = UNAVAILABLE_BACKOFF
    deadline = loop.time() + UNAVAILABLE_PATIENCE
    while True:
        try:
            await routing.route(event_id)
            return
        except errors.Unavailable:
            if stop.is_set() or loop.time() + delay > deadline:
                raise
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)
            if stop.is_set():
                raise
        delay = min(delay * 2, longest)
