"""Dead letters, for operators: read what the bus gave up on, replay it, or drop it.

The bus moves a message to `<stream>.dead` after `max_deliveries` failed deliveries, or at once
when its consumer rejects it (docs/bus.md). A replay publishes the original payload to its
stream again and then forgets the dead letter, so the message is taken once more by every
group that reads the stream. The replay publishes under an id of its own (`replay:<letter>`):
the message's own id may still be within the bus's dedupe window, which would swallow it, while
a replay retried after a failure (published, not yet forgotten) is swallowed as it should be.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from clarion.domain import errors
from clarion.domain.notifications import EVENTS_STREAM, INGEST_STREAM
from clarion.services.ports import Bus, DeadLetter

log = logging.getLogger(__name__)

STREAMS = (EVENTS_STREAM, INGEST_STREAM)
"""The work streams Clarion reads, whose dead letters operators look after."""

MAX_PAGE = 500  # dead letters per listing: each is read from the broker, some one at a time


class DeadLetters:
    """Listing, showing, replaying and dropping dead letters of Clarion's streams."""

    def __init__(self, bus: Bus) -> None:
        self._bus = bus

    async def page(
        self, stream: str = EVENTS_STREAM, *, after: str | None = None, limit: int = 50
    ) -> Sequence[DeadLetter]:
        """Dead letters of `stream`, oldest first, after the letter `after` (the last id of the
        previous page).

        Raises:
            errors.InvalidRequest: an unknown stream, or a limit out of bounds.
            errors.Unavailable: the bus is unreachable.
        """
        _check(stream)
        if not 0 < limit <= MAX_PAGE:
            raise errors.InvalidRequest(f"limit must be between 1 and {MAX_PAGE}")
        return await self._bus.dead_letters(stream, after=after, limit=limit)

    async def show(self, stream: str, letter_id: str) -> DeadLetter:
        """One dead letter.

        Raises:
            errors.InvalidRequest: an unknown stream.
            errors.NotFound: no such dead letter (never was, replayed or dropped).
            errors.Unavailable: the bus is unreachable.
        """
        _check(stream)
        letter = await self._bus.dead_letter(stream, letter_id)
        if letter is None:
            raise errors.NotFound("no such dead letter")
        return letter

    async def replay(self, stream: str, letter_id: str) -> DeadLetter:
        """Publish the letter's payload to its stream again, then forget the letter; what was
        replayed. The message is then processed once more, as if it were new.

        Raises:
            errors.InvalidRequest: an unknown stream, or a letter whose payload is not a JSON
                object (nothing a consumer could take; drop it instead).
            errors.NotFound: no such dead letter.
            errors.Unavailable: the bus is unreachable. The letter is kept then, and replaying
                it again is safe: a replay that did reach the stream is not published twice.
        """
        letter = await self.show(stream, letter_id)
        if not isinstance(letter.payload, dict):
            raise errors.InvalidRequest(
                "this dead letter holds no JSON object, so it cannot be replayed; drop it"
            )
        await self._bus.publish(
            stream, letter.payload, message_id=f"replay:{stream}.dead:{letter.id}"
        )
        await self._bus.remove_dead_letter(stream, letter.id)
        log.warning(
            "dead letter replayed",
            extra={
                "action": "dead_letter_replayed",
                "stream": stream,
                "letter": letter.id,
                "reason": letter.reason,
            },
        )
        return letter

    async def drop(self, stream: str, letter_id: str) -> None:
        """Forget a dead letter without replaying it.

        Raises:
            errors.InvalidRequest: an unknown stream.
            errors.NotFound: no such dead letter.
            errors.Unavailable: the bus is unreachable.
        """
        _check(stream)
        if not await self._bus.remove_dead_letter(stream, letter_id):
            raise errors.NotFound("no such dead letter")
        log.warning(
            "dead letter dropped",
            extra={"action": "dead_letter_dropped", "stream": stream, "letter": letter_id},
        )


def _check(stream: str) -> None:
    if stream not in STREAMS:
        raise errors.InvalidRequest(f"stream must be one of: {', '.join(STREAMS)}")
