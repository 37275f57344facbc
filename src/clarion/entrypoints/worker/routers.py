"""The routing consumer: takes accepted events off the bus and routes them, in batches."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from typing import Any

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


async def run_routers(
    routing: Routing,
    bus: Bus,
    stop: asyncio.Event,
    *,
    concurrency: int,
    batch: int = 50,
    linger: float = 0.005,
) -> None:
    """Route events from the bus until `stop` is set: up to `batch` at a time in one
    transaction (what the bus has ready, or brings within `linger` seconds of the first), and
    `concurrency` batches at once.

    A message is acknowledged only after its event is routed (or found routed already); one
    that fails stays owed and comes back through the bus or the relay's redelivery. A batch
    that fails for a reason other than the database being away is tried again one event at a
    time, so that one event that cannot be routed holds back no other.
    """
    loop = asyncio.get_running_loop()
    slots = asyncio.Semaphore(concurrency)
    running: set[asyncio.Task[None]] = set()

    async def handle(envelopes: list[Any]) -> None:
        try:
            if len(envelopes) == 1:
                await _route_one(routing, envelopes[0], stop)
                return
            try:
                ids = [envelope.payload["event_id"] for envelope in envelopes]
                await _route(routing, ids, stop)
            except errors.Unavailable as exc:
                _postponed(exc)
                return
            except Exception:
                log.exception("routing a batch failed; routing its events one by one")
                for envelope in envelopes:
                    await _route_one(routing, envelope, stop)
                return
            try:
                await bus.acknowledge(envelopes)
            except Exception:
                log.exception("acknowledging routed events failed; they will be redelivered")
        finally:
            slots.release()

    messages = bus.consume(EVENTS_STREAM, GROUP).__aiter__()
    waiting: asyncio.Future[Any] | None = None
    stopping = asyncio.ensure_future(stop.wait())
    try:
        while not stop.is_set():
            await slots.acquire()
            if waiting is None:
                waiting = asyncio.ensure_future(anext(messages))
            done, _ = await asyncio.wait({waiting, stopping}, return_when=asyncio.FIRST_COMPLETED)
            if waiting not in done:
                slots.release()
                break
            held = [waiting.result()]
            waiting = None
            until = loop.time() + linger
            while len(held) < batch:
                waiting = asyncio.ensure_future(anext(messages))
                done, _ = await asyncio.wait({waiting}, timeout=max(until - loop.time(), 0.0))
                if waiting not in done or waiting.exception() is not None:
                    break  # kept for the next batch (or to raise there)
                held.append(waiting.result())
                waiting = None
            task = asyncio.create_task(handle(held))
            running.add(task)
            task.add_done_callback(running.discard)
    finally:
        stopping.cancel()
        if waiting is not None:
            waiting.cancel()
        if running:
            await asyncio.wait(running)


def _postponed(exc: errors.Unavailable) -> None:
    log.warning(
        "routing postponed; the events will be redelivered",
        extra={"action": "routing_postponed", "error": exc.message},
    )


async def _route_one(routing: Routing, envelope: Any, stop: asyncio.Event) -> None:
    try:
        await _route(routing, [envelope.payload["event_id"]], stop)
        await envelope.ack()
    except errors.Unavailable as exc:
        _postponed(exc)
    except Exception:
        log.exception("routing failed; the event will be redelivered")


async def _route(routing: Routing, event_ids: Sequence[str], stop: asyncio.Event) -> None:
    """Route the events, retrying while the database is unreachable (see
    UNAVAILABLE_PATIENCE); gives up at once when stopping."""
    loop = asyncio.get_running_loop()
    delay, longest = UNAVAILABLE_BACKOFF
    deadline = loop.time() + UNAVAILABLE_PATIENCE
    while True:
        try:
            await routing.route_many(event_ids)
            return
        except errors.Unavailable:
            if stop.is_set() or loop.time() + delay > deadline:
                raise
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)
            if stop.is_set():
                raise
        delay = min(delay * 2, longest)
