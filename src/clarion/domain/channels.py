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


REALTIME: frozenset[Channel] = frozenset({Channel.WEBSOCKET})
"""Channels whose deliveries wait for the recipient to be connected rather than being sent out."""

DEFAULT_CHANNELS: tuple[Channel, ...] = (Channel.WEBSOCKET,)
"""What an event gets when neither it nor a rule names channels: the in-app inbox."""
