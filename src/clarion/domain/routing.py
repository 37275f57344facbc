"""Routing decisions that need no I/O."""

from __future__ import annotations

from clarion.domain.channels import DEFAULT_CHANNELS, Channel
from clarion.domain.notifications import EventSpec


def channels_for(spec: EventSpec) -> tuple[Channel, ...]:
    """The channels an event goes out on: the ones it names, else the defaults.

    The in-app inbox (websocket) is always kept: every notification has an inbox item, and
    naming channels chooses the ways it is pushed, not whether it is recorded.
    """
    if spec.channels is None:
        return DEFAULT_CHANNELS
    return tuple(dict.fromkeys((Channel.WEBSOCKET, *spec.channels)))
