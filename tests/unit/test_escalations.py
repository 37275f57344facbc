"""The escalation rules: which item statuses a due timer acts in, and what cancels it."""

from __future__ import annotations

from clarion.domain.escalations import Kind, cancelled_by, fires
from clarion.domain.statuses import RESENDS, TRANSITIONS, Status


def test_a_resend_fires_only_while_no_device_reported_the_push_received() -> None:
    assert {s for s in Status if fires(Kind.RESEND_PUSH, s)} == {Status.PENDING, Status.SENT}


def test_an_email_follow_up_fires_while_the_item_is_unread_even_if_the_push_failed() -> None:
    assert {s for s in Status if fires(Kind.EMAIL_IF_UNREAD, s)} == {
        Status.PENDING,
        Status.SENT,
        Status.RECEIVED,
        Status.FAILED,
    }


def test_reading_cancels_every_kind_and_receiving_only_the_resend() -> None:
    assert cancelled_by(Status.READ) == frozenset(Kind)
    assert cancelled_by(Status.RECEIVED) == {Kind.RESEND_PUSH}
    assert cancelled_by(Status.SENT) == frozenset()


def test_the_resend_is_the_only_move_back_and_stays_outside_the_lifecycle() -> None:
    assert RESENDS == {Status.SENT: Status.PENDING}
    assert Status.PENDING not in TRANSITIONS[Status.SENT]
