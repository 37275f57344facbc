"""The status of a notification for one recipient, and of each delivery of it.

Rule: everything that decides whether a status may change lives in `TRANSITIONS`. Storage
derives its set-based ``WHERE status IN (...)`` guards from `sources_of`, so the table is the
one place the lifecycle is written down.

The lifecycle only moves forward::

    pending ──► sent ──► received ──► read
       │                    ▲          ▲
       ├──► failed ─────────┴──────────┘   (the user saw it anyway, e.g. in the inbox)
       └──► expired

An item or delivery whose recipient opted out is created `suppressed` and stays so.

A state may skip ahead (an app that fetches its inbox over HTTP reads a `pending` item without
it ever being `sent`), but never goes back: a late `received` after `read` changes nothing.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime


class Status(enum.StrEnum):
    """Where a notification stands for one recipient (inbox item) or one endpoint (delivery)."""

    PENDING = "pending"
    SENT = "sent"
    RECEIVED = "received"
    READ = "read"
    FAILED = "failed"
    EXPIRED = "expired"
    SUPPRESSED = "suppressed"
    """The recipient opted out (of the group, category or channel): created so, never sent."""


TRANSITIONS: dict[Status, frozenset[Status]] = {
    Status.PENDING: frozenset(
        {Status.SENT, Status.RECEIVED, Status.READ, Status.FAILED, Status.EXPIRED}
    ),
    Status.SENT: frozenset({Status.RECEIVED, Status.READ}),
    Status.RECEIVED: frozenset({Status.READ}),
    Status.READ: frozenset(),
    Status.FAILED: frozenset({Status.RECEIVED, Status.READ}),
    Status.EXPIRED: frozenset(),
    Status.SUPPRESSED: frozenset(),
}
"""Every allowed move, and nothing else: ``TRANSITIONS[current]`` is where ``current`` may go."""

RESENDS: dict[Status, Status] = {Status.SENT: Status.PENDING}
"""The one way back, outside the lifecycle: a rule's escalation puts a `sent` push delivery
that no device reported `received` back to `pending`, so that it goes out once more
(`domain.escalations`). Nothing else moves backwards."""

UNREAD: frozenset[Status] = frozenset({Status.PENDING, Status.SENT, Status.RECEIVED, Status.FAILED})
"""What an inbox counts as unread: not read yet, and neither withheld nor expired."""

VISIBLE: frozenset[Status] = frozenset(Status) - {Status.SUPPRESSED}
"""What an inbox lists at all: a suppressed item was never meant to reach the user."""

TERMINAL: frozenset[Status] = frozenset(s for s, targets in TRANSITIONS.items() if not targets)
"""States nothing leaves."""


class Subject(enum.StrEnum):
    """What an audit entry is about."""

    ITEM = "item"
    DELIVERY = "delivery"


@dataclass(frozen=True, slots=True)
class Transition:
    """One entry of the audit trail: `subject_id` moved from `source` to `target` at `at`.

    `source` is None for the creation of the subject (it comes into being as `pending`).
    """

    subject: Subject
    subject_id: int
    source: Status | None
    target: Status
    cause: str
    at: datetime


def can_move(source: Status, target: Status) -> bool:
    """Whether `source` may become `target` (a move to the same status is not a move)."""
    return target in TRANSITIONS[source]


def advance(
    subject: Subject, subject_id: int, source: Status, target: Status, *, cause: str, at: datetime
) -> Transition | None:
    """The transition that moves `source` to `target`, or None when the move is not allowed.

    None is the normal answer for a repeated or late report (idempotent receipts): the caller
    keeps the current status and records nothing.
    """
    if not can_move(source, target):
        return None
    return Transition(subject, subject_id, source, target, cause, at)


def sources_of(target: Status) -> frozenset[Status]:
    """Every status from which `target` may be reached: the guard of a set-based update."""
    return frozenset(s for s, targets in TRANSITIONS.items() if target in targets)


def timestamp_field(target: Status) -> str | None:
    """The name of the column that records when a subject first reached `target`."""
    return _STAMPS.get(target)


_STAMPS = {
    Status.SENT: "sent_at",
    Status.RECEIVED: "received_at",
    Status.READ: "read_at",
    Status.FAILED: "failed_at",
    Status.EXPIRED: "expired_at",
}
