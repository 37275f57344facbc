"""The status lifecycle: it only moves forward, terminal states stay put, the trail is a chain."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from itertools import pairwise

import pytest
from hypothesis import given, strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from clarion.domain.statuses import (
    TERMINAL,
    TRANSITIONS,
    Status,
    Subject,
    Transition,
    advance,
    can_move,
    sources_of,
    timestamp_field,
)

AT = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)

# The documented lifecycle, pending ──► sent ──► received ──► read, with `failed` and `expired`
# branching off `pending`: both sit one step past pending, beside `sent`.
RANK = {
    Status.PENDING: 0,
    Status.SENT: 1,
    Status.FAILED: 1,
    Status.EXPIRED: 1,
    Status.SUPPRESSED: 1,
    Status.RECEIVED: 2,
    Status.READ: 3,
}
DOCUMENTED_TERMINAL = {Status.READ, Status.EXPIRED, Status.SUPPRESSED}

statuses = st.sampled_from(list(Status))


def move(source: Status, target: Status, cause: str = "test") -> Transition | None:
    return advance(Subject.ITEM, 7, source, target, cause=cause, at=AT)


def replay(targets: list[Status]) -> list[tuple[Status, Status, Transition | None]]:
    """Apply `targets` in turn from pending: (status before, target, transition) per report."""
    current = Status.PENDING
    steps = []
    for target in targets:
        moved = move(current, target)
        steps.append((current, target, moved))
        if moved is not None:
            current = moved.target
    return steps


def test_the_rank_covers_every_status() -> None:
    assert set(RANK) == set(Status)


@given(st.lists(statuses, max_size=30))
def test_the_status_never_moves_backwards_along_the_lifecycle(targets: list[Status]) -> None:
    for before, _, moved in replay(targets):
        if moved is not None:
            assert RANK[moved.target] > RANK[before]


@given(st.lists(statuses, max_size=30))
def test_terminal_statuses_never_change(targets: list[Status]) -> None:
    for before, _, moved in replay(targets):
        if before in DOCUMENTED_TERMINAL:
            assert moved is None


@given(st.lists(statuses, max_size=30))
def test_every_transition_starts_at_the_current_status_and_is_allowed(
    targets: list[Status],
) -> None:
    for before, target, moved in replay(targets):
        if moved is not None:
            assert moved.source == before
            assert moved.target == target
            assert moved.target in TRANSITIONS[moved.source]
            assert (moved.subject, moved.subject_id, moved.cause, moved.at) == (
                Subject.ITEM,
                7,
                "test",
                AT,
            )


@given(st.lists(statuses, max_size=30))
def test_a_repeated_report_is_a_no_op(targets: list[Status]) -> None:
    for _, target, moved in replay(targets):
        if moved is not None:
            assert move(moved.target, target) is None


@given(st.lists(statuses, max_size=30))
def test_a_refused_report_leaves_nothing_to_record(targets: list[Status]) -> None:
    for before, target, moved in replay(targets):
        assert (moved is None) == (not can_move(before, target))


@pytest.mark.parametrize("status", list(Status))
def test_a_status_never_moves_to_itself(status: Status) -> None:
    assert not can_move(status, status)
    assert move(status, status) is None


def test_read_never_moves_back_to_received() -> None:
    assert move(Status.READ, Status.RECEIVED) is None


def test_a_late_sent_after_received_changes_nothing() -> None:
    assert move(Status.RECEIVED, Status.SENT) is None


def test_a_pending_item_may_be_read_without_ever_being_sent() -> None:
    moved = move(Status.PENDING, Status.READ, cause="inbox")
    assert moved == Transition(Subject.ITEM, 7, Status.PENDING, Status.READ, "inbox", AT)


@pytest.mark.parametrize("target", [Status.RECEIVED, Status.READ])
def test_a_failed_delivery_is_still_seen_when_the_user_reports_it(target: Status) -> None:
    assert can_move(Status.FAILED, target)


@pytest.mark.parametrize("target", [Status.SENT, Status.PENDING, Status.EXPIRED])
def test_a_failed_delivery_is_not_sent_retried_or_expired_by_a_status_move(
    target: Status,
) -> None:
    assert move(Status.FAILED, target) is None


@pytest.mark.parametrize("target", list(Status))
def test_nothing_leaves_expired(target: Status) -> None:
    assert move(Status.EXPIRED, target) is None


class AuditTrail(RuleBasedStateMachine):
    """A subject receiving reports in any order, recording each transition as storage would."""

    def __init__(self) -> None:
        super().__init__()
        self.current = Status.PENDING
        self.now = AT
        self.audit = [Transition(Subject.DELIVERY, 1, None, Status.PENDING, "created", self.now)]

    @rule(
        reported=statuses,
        cause=st.sampled_from(["apns", "websocket", "inbox", "expiry", "retry"]),
    )
    def report(self, reported: Status, cause: str) -> None:
        self.now += timedelta(seconds=1)
        moved = advance(Subject.DELIVERY, 1, self.current, reported, cause=cause, at=self.now)
        if moved is not None:
            self.audit.append(moved)
            self.current = moved.target

    @invariant()
    def the_trail_starts_with_the_creation_as_pending(self) -> None:
        assert self.audit[0].source is None
        assert self.audit[0].target == Status.PENDING

    @invariant()
    def the_trail_is_a_connected_chain(self) -> None:
        for previous, entry in pairwise(self.audit):
            assert entry.source == previous.target

    @invariant()
    def the_trail_ends_at_the_current_status(self) -> None:
        assert self.audit[-1].target == self.current

    @invariant()
    def the_trail_never_revisits_a_status(self) -> None:
        targets = [entry.target for entry in self.audit]
        assert len(targets) == len(set(targets))

    @invariant()
    def the_trail_is_no_longer_than_the_longest_documented_path(self) -> None:
        # creation, then at most pending → sent|failed → received → read
        assert len(self.audit) <= 4


TestAuditTrail = AuditTrail.TestCase


@pytest.mark.parametrize("target", list(Status))
def test_sources_of_is_every_status_that_may_reach_the_target(target: Status) -> None:
    assert sources_of(target) == {s for s in Status if target in TRANSITIONS[s]}


def test_nothing_goes_back_to_pending() -> None:
    assert sources_of(Status.PENDING) == frozenset()


def test_transitions_name_every_status() -> None:
    assert set(TRANSITIONS) == set(Status)
    assert all(targets <= set(Status) for targets in TRANSITIONS.values())


def test_terminal_is_exactly_the_statuses_nothing_leaves() -> None:
    assert {s for s in Status if not TRANSITIONS[s]} == TERMINAL
    assert TERMINAL == DOCUMENTED_TERMINAL


# Pending and suppressed are states a subject is created in; created_at is their time.
CREATED_IN = (Status.PENDING, Status.SUPPRESSED)


@pytest.mark.parametrize("status", [s for s in Status if s not in CREATED_IN])
def test_every_status_one_moves_into_has_a_timestamp_field(status: Status) -> None:
    field = timestamp_field(status)
    assert isinstance(field, str)
    assert field.isidentifier()
    assert field.endswith("_at")


@pytest.mark.parametrize("status", CREATED_IN)
def test_states_of_creation_have_no_timestamp_field(status: Status) -> None:
    assert timestamp_field(status) is None


def test_each_status_records_its_time_in_a_field_of_its_own() -> None:
    fields = [timestamp_field(s) for s in Status if s not in CREATED_IN]
    assert len(set(fields)) == len(fields)
