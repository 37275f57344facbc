"""The bus's way in: events producers publish onto the `ingest` stream (docs/bus.md).

Each message is validated with the API's own models (`entrypoints/inputs.py`) and stored by
`Accepting` as `POST /v1/events` would store it, with the message's idempotency key, so a
message the bus hands out twice is stored once. What can never succeed (invalid, unknown tenant,
refused as the API would refuse it) is dead-lettered at once with the API's error code as the
reason; what may succeed later (the database is down, too much work waits) stays owed and comes
back from the bus, until its delivery limit dead-letters it.
"""

from __future__ import annotations

import asyncio
import logging

from pydantic import ValidationError

from clarion.domain import errors
from clarion.domain.notifications import INGEST_STREAM
from clarion.entrypoints.inputs import IngestMessage, event_spec
from clarion.services.accepting import Accepting
from clarion.services.ports import Bus, Envelope
from clarion.services.tenancy import Tenancy

log = logging.getLogger(__name__)

GROUP = "ingesters"
_TEMPORARY = (errors.Unavailable, errors.Overloaded)


async def run_ingest(accepting: Accepting, tenancy: Tenancy, bus: Bus, stop: asyncio.Event) -> None:
    """Take events from the `ingest` stream until `stop` is set."""
    known: set[str] = set()
    messages = bus.consume(INGEST_STREAM, GROUP).__aiter__()
    while not stop.is_set():
        next_message = asyncio.ensure_future(anext(messages))
        stopping = asyncio.ensure_future(stop.wait())
        done, _ = await asyncio.wait({next_message, stopping}, return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()
        if next_message not in done:
            next_message.cancel()
            break
        await ingest_one(accepting, tenancy, next_message.result(), known)


async def ingest_one(
    accepting: Accepting, tenancy: Tenancy, envelope: Envelope, known: set[str]
) -> None:
    """Store one published event, dead-letter it, or leave it owed (see the module doc)."""
    try:
        message = IngestMessage.model_validate(envelope.payload)
    except ValidationError as exc:
        where = ", ".join(
            ".".join(str(p) for p in problem.get("loc", ())) for problem in exc.errors()
        )
        await envelope.reject(f"invalid_request: {where}"[:500])
        return
    try:
        if message.tenant_id not in known:
            if not await tenancy.exists(message.tenant_id):
                await envelope.reject("unknown_tenant")
                return
            known.add(message.tenant_id)
        spec = event_spec(message.event, accepting.push_channels)
        accepted = await accepting.accept(
            message.tenant_id, spec, idempotency_key=message.idempotency_key
        )
    except _TEMPORARY as exc:
        log.warning(
            "ingest postponed; the message stays owed",
            extra={"action": "ingest_postponed", "error": exc.message},
        )
        return
    except errors.ClarionError as exc:
        await envelope.reject(exc.code)
        return
    await envelope.ack()
    log.info(
        "event ingested from the bus",
        extra={"action": "event_ingested", "tenant": message.tenant_id, "event_id": accepted.id},
    )
