"""Scheduling and expiry as values: how `send_at`, `expires_at` and `ttl` resolve at
acceptance, how they are stored and fingerprinted, and how pushes carry the expiry."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from clarion.adapters.providers.apns import notification_for
from clarion.adapters.providers.fcm import message_for
from clarion.domain import errors
from clarion.domain.notifications import (
    MAX_SCHEDULE_AHEAD,
    MAX_TTL,
    EventSpec,
    InboxItem,
    Recipients,
    schedule_of,
)
from clarion.domain.records import Claimed
from clarion.domain.statuses import Status
from clarion.wire import fcm

NOW = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)


def _spec(**kw: object) -> EventSpec:
    return EventSpec(type="t", recipients=Recipients(users=("a",)), **kw)  # type: ignore[arg-type]


def test_an_event_without_a_schedule_goes_out_at_once_and_never_expires() -> None:
    schedule = schedule_of(_spec(), NOW)
    assert (schedule.send_at, schedule.expires_at) == (None, None)


def test_a_send_at_now_or_in_the_past_means_at_once() -> None:
    assert schedule_of(_spec(send_at=NOW), NOW).send_at is None
    assert schedule_of(_spec(send_at=NOW - timedelta(days=3)), NOW).send_at is None


def test_a_future_send_at_is_kept_in_utc() -> None:
    paris = datetime(2030, 1, 1, 14, 0, tzinfo=timezone(timedelta(hours=1)))
    schedule = schedule_of(_spec(send_at=paris), NOW)
    assert schedule.send_at == NOW + timedelta(hours=1)
    assert schedule.send_at.tzinfo is UTC  # type: ignore[union-attr]


def test_a_send_at_beyond_the_bound_is_refused() -> None:
    assert schedule_of(_spec(send_at=NOW + MAX_SCHEDULE_AHEAD), NOW).send_at is not None
    with pytest.raises(errors.InvalidRequest, match="days ahead"):
        schedule_of(_spec(send_at=NOW + MAX_SCHEDULE_AHEAD + timedelta(seconds=1)), NOW)


def test_ttl_runs_from_the_time_the_event_goes_out() -> None:
    assert schedule_of(_spec(ttl=60), NOW).expires_at == NOW + timedelta(seconds=60)
    later = NOW + timedelta(hours=2)
    assert schedule_of(_spec(send_at=later, ttl=60), NOW).expires_at == later + timedelta(
        seconds=60
    )


@pytest.mark.parametrize(
    "kw",
    [
        {"ttl": 60, "expires_at": NOW + timedelta(hours=1)},
        {"ttl": 0},
        {"ttl": int(MAX_TTL.total_seconds()) + 1},
        {"expires_at": NOW},
        {"send_at": NOW + timedelta(hours=2), "expires_at": NOW + timedelta(hours=1)},
        {"expires_at": NOW + MAX_TTL + timedelta(seconds=1)},
    ],
)
def test_expiries_that_cannot_be_met_are_refused(kw: dict[str, object]) -> None:
    with pytest.raises(errors.InvalidRequest):
        schedule_of(_spec(**kw), NOW)


def test_scheduling_fields_survive_storage_and_leave_old_fingerprints_alone() -> None:
    plain = _spec()
    assert "send_at" not in plain.to_json()
    assert plain.fingerprint() == _spec(send_at=None, ttl=None).fingerprint()
    scheduled = _spec(send_at=NOW, expires_at=NOW + timedelta(hours=1), ttl=None)
    assert EventSpec.from_json(scheduled.to_json()) == scheduled
    with_ttl = _spec(ttl=30)
    assert EventSpec.from_json(with_ttl.to_json()) == with_ttl
    assert with_ttl.fingerprint() != plain.fingerprint()


def _claimed(expires_at: datetime | None) -> Claimed:
    item = InboxItem(
        id=1,
        notification_id="n",
        event_id="e",
        user="a",
        status=Status.PENDING,
        type="t",
        title="T",
        body=None,
        data={},
        category=None,
        group=None,
        created_at=NOW,
        expires_at=expires_at,
    )
    return Claimed(7, 1, "tenant", "apns", "3", 1, item, address="ab" * 32)


def test_apns_gets_the_expiry_as_apns_expiration() -> None:
    assert notification_for(_claimed(None), "topic").expiration is None
    expiry = NOW + timedelta(minutes=5)
    assert notification_for(_claimed(expiry), "topic").expiration == expiry


def test_fcm_gets_what_is_left_of_the_life_as_android_ttl_capped_by_fcm() -> None:
    assert message_for(_claimed(None), NOW).android is None
    soon = message_for(_claimed(NOW + timedelta(minutes=5)), NOW).android
    assert soon is not None
    assert soon.ttl == timedelta(minutes=5)
    far = message_for(_claimed(NOW + timedelta(days=60)), NOW).android
    assert far is not None
    assert far.ttl == fcm.MAX_TTL
