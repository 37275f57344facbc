"""Routing decisions that need no I/O."""

from __future__ import annotations

from clarion.domain.channels import DEFAULT_CHANNELS, Channel
from clarion.domain.notifications import EventSpec


def group_of(spec: EventSpec) -> str | None:
    """The group a notification belongs to (for inbox filters, opt-outs and statistics).

    The event's `group` when it names one; otherwise the one group or community it is
    addressed to, if it is addressed to exactly one.
    """
    if spec.group is not None:
        return spec.group
    named = (*spec.recipients.groups, *spec.recipients.communities)
    return named[0] if len(named) == 1 else None


def channels_for(spec: EventSpec) -> tuple[Channel, ...]:
    """The channels an event goes out on: the ones it names, else the defaults.

    The in-app inbox (websocket) is always kept: every notification has an inbox item, and
    naming channels chooses the ways it is pushed, not whether it is recorded.
    """
    if spec.channels is None:
        return DEFAULT_CHANNELS
    return tuple(dict.fromkeys((Channel.WEBSOCKET, *spec.channels)))
