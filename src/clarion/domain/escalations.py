"""Escalation: a rule's follow-ups for a notification that is not acknowledged in time.

A rule's `rules.Escalation` becomes, at routing, one timer per recipient and kind, stored as
a row (so that it outlives a restart). When a timer comes due, the item's status decides:

- `Kind.RESEND_PUSH` resends the item's push once, while no device has reported it
  `received` (the item is still `pending` or `sent`);
- `Kind.EMAIL_IF_UNREAD` sends the item by email while it is unread anywhere (`UNREAD`).

Otherwise the timer is cancelled. Reaching `received` cancels a pending resend, reaching
`read` cancels both, in the transaction that moves the item.
"""

from __future__ import annotations

import enum
from typing import Final

from clarion.domain.statuses import UNREAD, Status


class Kind(enum.StrEnum):
    """What an escalation does when it comes due."""

    RESEND_PUSH = "resend_push"
    EMAIL_IF_UNREAD = "email_if_unread"


class State(enum.StrEnum):
    """Where an escalation stands: waiting, fired, or made pointless by the recipient."""

    PENDING = "pending"
    DONE = "done"
    CANCELLED = "cancelled"


FIRES_WHILE: Final[dict[Kind, frozenset[Status]]] = {
    Kind.RESEND_PUSH: frozenset({Status.PENDING, Status.SENT}),
    Kind.EMAIL_IF_UNREAD: UNREAD,
}
"""The item statuses in which a due escalation of each kind still acts; in any other it is
cancelled."""

RESEND_CAUSE: Final = "escalation_resend"
"""The audit cause of a push delivery put back to `pending` by a resend."""

EMAIL_CAUSE: Final = "escalation_email"
"""The audit cause of an email delivery created by an escalation."""


def cancelled_by(target: Status) -> frozenset[Kind]:
    """The kinds of pending escalation an item reaching `target` makes pointless."""
    if target == Status.READ:
        return frozenset(Kind)
    if target == Status.RECEIVED:
        return frozenset({Kind.RESEND_PUSH})
    return frozenset()


def fires(kind: Kind, item_status: Status) -> bool:
    """Whether a due escalation of `kind` acts on an item in `item_status`."""
    return item_status in FIRES_WHILE[kind]
