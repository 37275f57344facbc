"""Broadcasting's outcomes: sent, retried with backoff (never sooner than Retry-After), failed
once `retrying` gives up, and a refused credential paused. A store and a transport of our own,
in memory; no network and no sleeps."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from clarion.domain import outcomes, retrying
from clarion.domain.channels import Channel
from clarion.domain.records import ClaimedTopicSend, TopicCompletion
from clarion.services.broadcasting import Broadcasting

NOW = datetime(2026, 1, 1, tzinfo=UTC)


class FixedClock:
    def now(self) -> datetime:
        return NOW


def _send(n: int, attempts: int = 1) -> ClaimedTopicSend:
    return ClaimedTopicSend(
        id=n,
        fence=attempts,
        tenant_id="t",
        channel="fcm",
        topic=f"topic-{n}",
        attempts=attempts,
        notification_id="n",
        event_id="e",
        type="news",
        title="hi",
        body=None,
        data={},
        category=None,
        group="fans",
        created_at=NOW,
    )


class Store:
    def __init__(self, *sends: ClaimedTopicSend) -> None:
        self.sends = list(sends)
        self.completed: list[TopicCompletion] = []
        self.done = asyncio.Event()

    async def claim_topic_sends(
        self, channel: Channel, *, limit: int, lease_seconds: float, now: datetime
    ) -> list[ClaimedTopicSend]:
        taken, self.sends = self.sends[:limit], self.sends[limit:]
        return taken

    async def complete_topic_sends(
        self, completions: Sequence[TopicCompletion], now: datetime
    ) -> list[int]:
        self.completed.extend(completions)
        self.done.set()
        return [c.send_id for c in completions]


class Transport:
    channel = Channel.FCM

    def __init__(self, *answers: outcomes.Outcome) -> None:
        self.answers = list(answers)
        self.sent: list[str] = []

    async def send_topics(self, sends: Sequence[ClaimedTopicSend]) -> list[outcomes.Outcome]:
        self.sent += [s.topic for s in sends]
        return [self.answers.pop(0) for _ in sends]


class Pauser:
    def __init__(self) -> None:
        self.paused: list[tuple[str, str, str]] = []

    async def pause(self, tenant_id: str, credential_id: str, reason: str) -> bool:
        self.paused.append((tenant_id, credential_id, reason))
        return True


def _broadcasting(store: Store, transport: Transport, pauser: Pauser) -> Broadcasting:
    return Broadcasting(
        store,
        FixedClock(),
        {Channel.FCM: transport},
        credentials=pauser,
        rng=random.Random(7),
    )


async def test_outcomes_become_sent_retried_and_failed_topic_sends() -> None:
    store = Store(_send(1), _send(2), _send(3), _send(4, attempts=retrying.MAX_ATTEMPTS))
    transport = Transport(
        outcomes.Delivered("projects/p/messages/1"),
        outcomes.RetryLater("UNAVAILABLE", 120.0),
        outcomes.Rejected("INVALID_ARGUMENT: too big"),
        outcomes.RetryLater("UNAVAILABLE"),
    )
    pauser = Pauser()
    assert await _broadcasting(store, transport, pauser).broadcast_once(Channel.FCM) == 4
    sent, retried, refused, given_up = store.completed
    assert sent == TopicCompletion(1, 1, outcomes.Delivered("projects/p/messages/1"))
    assert retried.outcome == outcomes.RetryLater("UNAVAILABLE", 120.0)
    assert retried.retry_at is not None
    assert retried.retry_at >= NOW + timedelta(seconds=120)  # Retry-After honoured
    assert refused == TopicCompletion(3, 1, outcomes.Rejected("INVALID_ARGUMENT: too big"))
    assert isinstance(given_up.outcome, outcomes.Rejected)
    assert given_up.outcome.reason.startswith(f"gave up after {retrying.MAX_ATTEMPTS} attempts")
    assert given_up.retry_at is None
    assert pauser.paused == []


async def test_a_refused_credential_is_paused_and_the_send_retried() -> None:
    store = Store(_send(1), _send(2))
    refused = outcomes.AuthFailed("THIRD_PARTY_AUTH_ERROR", "cred-1")
    pauser = Pauser()
    broadcasting = _broadcasting(store, Transport(refused, refused), pauser)
    await broadcasting.broadcast_once(Channel.FCM)
    assert pauser.paused == [("t", "cred-1", "THIRD_PARTY_AUTH_ERROR")]
    assert all(c.outcome == refused and c.retry_at is not None for c in store.completed)


async def test_an_idle_loop_stops_when_asked() -> None:
    store, transport = Store(_send(1)), Transport(outcomes.Delivered("m"))
    stop = asyncio.Event()
    broadcasting = _broadcasting(store, transport, Pauser())
    task = asyncio.create_task(broadcasting.run(stop))
    await asyncio.wait_for(store.done.wait(), 5)
    stop.set()
    await asyncio.wait_for(task, 5)
    assert transport.sent == ["topic-1"]
