"""Routing decisions that need no I/O."""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field

from clarion.domain.channels import DEFAULT_CHANNELS, PUSH, PUSH_ALIAS, Channel
from clarion.domain.notifications import EventSpec
from clarion.domain.records import RuleApplied


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


def usable_channels(
    names: Iterable[str] | None, available: Collection[Channel]
) -> tuple[Channel, ...]:
    """What a list of channel names (a rule's, or an event's own) sends on, on a server whose
    transports give `available`: ``push`` stands for each available push provider (in `PUSH`
    order), names without a transport here are dropped, and `websocket` always comes first.
    None (nobody named channels) is the defaults."""
    if names is None:
        return DEFAULT_CHANNELS
    found: list[Channel] = [Channel.WEBSOCKET]
    known = {str(c): c for c in Channel}
    for name in names:
        if name == PUSH_ALIAS:
            found.extend(c for c in PUSH if c in available)
        elif name in known and known[name] in available:
            found.append(known[name])
    return tuple(dict.fromkeys(found))


@dataclass(frozen=True, slots=True)
class RoutePlan:
    """How to route one event, decided before its transaction (by the tenant's rules).

    Attributes:
        channels: every channel any recipient is sent on.
        only: channels that go to some recipients alone (rules whose conditions read the
            recipient's attributes): the external ids of those recipients. A channel not in
            `only` goes to every recipient.
        rule: what the deciding rule sets on the notification; None when no rule matched.
    """

    channels: tuple[Channel, ...]
    only: Mapping[Channel, frozenset[str]] = field(default_factory=dict)
    rule: RuleApplied | None = None
