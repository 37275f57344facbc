"""The operators' API: dead letters of the bus (list, show, replay, drop).

Operators authenticate with the admin token (`CLARION_ADMIN__TOKEN`), never with a tenant's API
key or a user token: these routes see every tenant's work. Without a configured token the
router is not mounted (server.py), so every path answers 404 `route_not_found`, as any unknown
path does. They are left out of /openapi.json, which describes the API producers and apps use.
"""

from __future__ import annotations

import hmac
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Path, Query, Response
from pydantic import BaseModel
from starlette.exceptions import HTTPException

from clarion.domain import errors
from clarion.entrypoints.api.dependencies import App
from clarion.services.deadletters import MAX_PAGE, STREAMS
from clarion.services.ports import DeadLetter


async def operator(
    app: App, authorization: Annotated[str | None, Header(include_in_schema=False)] = None
) -> None:
    """The caller holds the admin token."""
    configured = app.settings.admin.token
    if configured is None:  # not mounted then; should it be, it still does not exist
        raise HTTPException(404)
    scheme, _, given = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not given.strip():
        raise errors.Unauthorized("send the admin token as 'Authorization: Bearer <token>'")
    expected = configured.get_secret_value().encode()
    if not hmac.compare_digest(given.strip().encode(), expected):
        raise errors.Unauthorized("the admin token is not valid")


router = APIRouter(
    prefix="/v1/admin", tags=["admin"], include_in_schema=False, dependencies=[Depends(operator)]
)

Stream = Annotated[str, Path(pattern="^(" + "|".join(STREAMS) + ")$")]
LetterId = Annotated[str, Path(min_length=1, max_length=64, pattern=r"^[0-9A-Za-z-]+$")]


class DeadLetterOut(BaseModel):
    """A message the bus gave up on (docs/bus.md, "Dead letters")."""

    id: str
    stream: str
    group: str
    deliveries: int
    reason: str
    dead_at: datetime | None
    payload: Any

    @classmethod
    def of(cls, letter: DeadLetter) -> DeadLetterOut:
        """From what the bus holds."""
        return cls(
            id=letter.id,
            stream=letter.stream,
            group=letter.group,
            deliveries=letter.deliveries,
            reason=letter.reason,
            dead_at=letter.dead_at,
            payload=letter.payload,
        )


class DeadLetterPage(BaseModel):
    """Dead letters of one stream, oldest first; `next_after` continues the listing."""

    stream: str
    dead_letters: list[DeadLetterOut]
    next_after: str | None


@router.get("/dlq", response_model=DeadLetterPage)
async def list_dead_letters(
    app: App,
    stream: Annotated[str, Query(pattern="^(" + "|".join(STREAMS) + ")$")] = STREAMS[0],
    after: Annotated[str | None, Query(max_length=64)] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 50,
) -> DeadLetterPage:
    """The stream's dead letters, oldest first, after the letter `after`."""
    letters = await app.deadletters.page(stream, after=after, limit=limit)
    return DeadLetterPage(
        stream=stream,
        dead_letters=[DeadLetterOut.of(letter) for letter in letters],
        next_after=letters[-1].id if len(letters) == limit else None,
    )


@router.get("/dlq/{stream}/{letter_id}", response_model=DeadLetterOut)
async def show_dead_letter(stream: Stream, letter_id: LetterId, app: App) -> DeadLetterOut:
    """One dead letter."""
    return DeadLetterOut.of(await app.deadletters.show(stream, letter_id))


@router.post("/dlq/{stream}/{letter_id}/replay", status_code=202, response_model=DeadLetterOut)
async def replay_dead_letter(stream: Stream, letter_id: LetterId, app: App) -> DeadLetterOut:
    """Publish the letter's payload to its stream again, then forget the letter (202: the
    message is taken once more by the stream's consumers). The letter as it was."""
    return DeadLetterOut.of(await app.deadletters.replay(stream, letter_id))


@router.delete("/dlq/{stream}/{letter_id}", status_code=204)
async def drop_dead_letter(stream: Stream, letter_id: LetterId, app: App) -> Response:
    """Forget a dead letter without replaying it."""
    await app.deadletters.drop(stream, letter_id)
    return Response(status_code=204)
