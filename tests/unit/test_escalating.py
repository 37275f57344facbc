"""The escalation loop: fires batch after batch until nothing is due, waits when idle, and
keeps going after a failure."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any, cast

from clarion.services.escalating import Escalating
from clarion.services.ports import Store


class _Clock:
    def now(self) -> datetime:
        return datetime(2026, 1, 1, tzinfo=UTC)


class _Store:
    def __init__(self, answers: list[Any], stop: asyncio.Event | None = None) -> None:
        self.answers = answers
        self.calls = 0
        self.stop = stop

    async def escalate_due(self, *, now: datetime, limit: int) -> int:
        self.calls += 1
        if self.stop is not None and not self.answers:
            self.stop.set()
        answer = self.answers.pop(0) if self.answers else 0
        if isinstance(answer, Exception):
            raise answer
        return int(answer)


def _loop(store: _Store, **kw: Any) -> Escalating:
    return Escalating(cast("Store", store), _Clock(), **kw)


async def test_one_pass_takes_full_batches_until_a_short_one() -> None:
    store = _Store([3, 3, 1, 3])
    assert await _loop(store, batch=3).once() == 7
    assert store.calls == 3


async def test_the_loop_survives_a_failure_and_stops_when_told() -> None:
    stop = asyncio.Event()
    store = _Store([RuntimeError("database down"), 2], stop)
    await asyncio.wait_for(_loop(store, interval=0.01, batch=5).run(stop), 1)
    assert (store.answers, store.calls) == ([], 3)
