"""The channels a notification can travel on."""

from __future__ import annotations

import enum


class Channel(enum.StrEnum):
    """A way to reach a recipient. Each is served by one adapter (a transport or the gateway)."""

    WEBSOCKET = "websocket"
    APNS = "apns"
    FCM = "fcm"
    WNS = "wns"
    WEBPUSH = "webpush"
    EMAIL = "email"


PUSH: tuple[Channel, ...] = (Channel.APNS, Channel.FCM, Channel.WNS, Channel.WEBPUSH)
"""The mobile, desktop and browser push providers, in the order an event alias expands them."""

PUSH_ALIAS = "push"
"""What a producer may name instead of the providers: every push provider this server has, so a
user's iPhone, Android phone, Windows laptop and browser all hear of the event."""

REALTIME: frozenset[Channel] = frozenset({Channel.WEBSOCKET})
"""Channels whose deliveries wait for the recipient to be connected rather than being sent out."""

DEFAULT_CHANNELS: tuple[Channel, ...] = (Channel.WEBSOCKET,)
"""What an event gets when neither it nor a rule names channels: the in-app inbox."""
