"""A credential the provider refuses is paused once per batch; other outcomes pass through."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

from clarion.domain.channels import Channel
from clarion.domain.notifications import InboxItem
from clarion.domain.outcomes import AuthFailed, Delivered, Outcome, RetryLater
from clarion.domain.records import Claimed
from clarion.domain.statuses import Status
from clarion.services.pausing import PausingTransport

NOW = datetime(2026, 11, 21, 9, 0, tzinfo=UTC)


def claimed(n: int, tenant: str = "t1") -> Claimed:
    item = InboxItem(
        id=n,
        notification_id=f"n{n}",
        event_id="e1",
        user=f"u{n}",
        status=Status.PENDING,
        type="news",
        title="t",
        body="b",
        data={},
        category=None,
        group=None,
        created_at=NOW,
    )
    return Claimed(
        id=n,
        fence=1,
        tenant_id=tenant,
        channel="apns",
        endpoint=str(n),
        attempts=1,
        item=item,
        address=f"{n:064x}",
    )


class Scripted:
    channel = Channel.APNS

    def __init__(self, outcomes: list[Outcome]) -> None:
        self.outcomes = outcomes

    async def send(self, batch: Sequence[Claimed]) -> Sequence[Outcome]:
        return self.outcomes[: len(batch)]


class Pauses:
    def __init__(self, fail: bool = False) -> None:
        self.calls: list[tuple[str, str, str]] = []
        self.fail = fail

    async def pause(self, tenant_id: str, credential_id: str, reason: str) -> bool:
        self.calls.append((tenant_id, credential_id, reason))
        if self.fail:
            raise RuntimeError("the database is down")
        return True


async def test_each_refused_credential_is_paused_once_and_outcomes_pass_through() -> None:
    results: list[Outcome] = [
        Delivered("a"),
        AuthFailed("InvalidProviderToken", credential_id="c1"),
        AuthFailed("InvalidProviderToken", credential_id="c1"),
        AuthFailed("BadCertificate", credential_id="c2"),
        RetryLater("busy"),
    ]
    pauses = Pauses()
    transport = PausingTransport(Scripted(results), pauses)
    batch = [claimed(1), claimed(2), claimed(3), claimed(4, tenant="t2"), claimed(5)]
    assert list(await transport.send(batch)) == results
    assert pauses.calls == [("t1", "c1", "InvalidProviderToken"), ("t2", "c2", "BadCertificate")]
    assert transport.channel is Channel.APNS


async def test_an_auth_failure_without_a_credential_id_pauses_nothing() -> None:
    pauses = Pauses()
    transport = PausingTransport(Scripted([AuthFailed("no key")]), pauses)
    assert list(await transport.send([claimed(1)])) == [AuthFailed("no key")]
    assert pauses.calls == []


async def test_a_failed_pause_still_returns_the_outcomes() -> None:
    results: list[Outcome] = [AuthFailed("Forbidden", credential_id="c1")]
    pauses = Pauses(fail=True)
    transport = PausingTransport(Scripted(results), pauses)
    assert list(await transport.send([claimed(1)])) == results
    assert len(pauses.calls) == 1
