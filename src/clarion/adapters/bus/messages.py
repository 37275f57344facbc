"""What every bus backend shares: names, message ids, dead letters, defaults and backoff.

The backends differ in technology, not in meaning: a stream named `events` is `clarion:events`
in Redis and the subject `clarion.events` (JetStream stream `clarion_events`) in NATS, and its
dead letters go to the stream `events.dead` on all three.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol


class Acknowledgeable(Protocol):
    """A message handed out by a bus, as `acknowledge` takes it (`services.ports.Envelope`)."""

    async def ack(self) -> None: ...


# How long a consumer may hold a message without acknowledging it before it is given to another
# consumer. Longer than any one routing run (a 100,000-recipient fan-out is a few seconds), short
# enough that a crashed worker's work moves on within a minute.
VISIBILITY_TIMEOUT = 60.0
# How many times a message is handed to a consumer before it is moved to `<stream>.dead`. As
# SQS's common redrive policy: a transient fault (a database failover) gets several chances, a
# message that can never succeed stops costing work after a few minutes.
MAX_DELIVERIES = 5
# Publishing the same message id to a stream again within this window is a no-op: NATS
# JetStream's own default `duplicate_window`, long enough to cover a producer's retries.
DEDUPE_WINDOW = 120.0
# Entries a Redis or NATS stream keeps before the oldest are trimmed. Streams are bounded so a
# stopped consumer cannot fill the broker's memory or disk; the outbox relay re-derives any
# trimmed `events` message from the database.
MAX_LENGTH = 1_000_000
# How long a blocked read waits for new messages before the consumer looks again at stuck ones.
POLL_INTERVAL = 1.0
# Messages a consumer takes from the broker per read: a router routes what one read brings
# in one transaction (`worker.routing_batch`), so a read is about one batch.
PREFETCH = 50
# Reconnection backoff: quick after a blip; a restarted broker is found again within 2 s, and a
# broker that is down sees one attempt per 2 s from each consumer.
RECONNECT_BASE = 0.1
RECONNECT_MAX = 2.0
# How long one command to the broker may take before the bus reports it unavailable.
COMMAND_TIMEOUT = 5.0

DEAD_SUFFIX = ".dead"
"""A stream's dead letters go to the stream of the same name with this suffix."""

MESSAGE_ID_FIELDS = ("event_id", "id")
"""The payload fields that name a message, in order of preference, for publish dedupe."""

_STREAM = re.compile(r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$")
_GROUP = re.compile(r"^[A-Za-z0-9_-]+$")
BROADCAST_SEGMENT = "broadcast"  # reserved: broadcast subjects are `<prefix>.broadcast.<channel>`


def check_stream(name: str) -> str:
    """A valid stream name (dot-separated tokens of letters, digits, `_` and `-`), or ValueError.

    The first token may not be `broadcast`, which names broadcast subjects on NATS.
    """
    if not _STREAM.match(name) or name.split(".", 1)[0] == BROADCAST_SEGMENT:
        raise ValueError(f"invalid stream name {name!r}")
    return name


def check_group(name: str) -> str:
    """A valid consumer group name (letters, digits, `_` and `-`), or ValueError."""
    if not _GROUP.match(name):
        raise ValueError(f"invalid consumer group name {name!r}")
    return name


def check_channel(name: str) -> str:
    """A valid broadcast channel name (as a stream name), or ValueError."""
    if not _STREAM.match(name):
        raise ValueError(f"invalid broadcast channel name {name!r}")
    return name


def dead_stream(stream: str) -> str:
    """Where the stream's dead letters go."""
    return stream + DEAD_SUFFIX


def message_id(payload: dict[str, Any], given: str | None = None) -> str | None:
    """The id that dedupes a payload: `given` when the publisher names one, else the payload's
    `event_id`, else its `id`; None without any."""
    if given:
        return given
    for field in MESSAGE_ID_FIELDS:
        value = payload.get(field)
        if isinstance(value, str) and value:
            return value
        if isinstance(value, int) and not isinstance(value, bool):
            return str(value)
    return None


def dead_letter(
    stream: str, group: str, deliveries: int, payload: Any, *, reason: str = "max_deliveries"
) -> dict[str, Any]:
    """The payload of a dead letter: where it came from, how often it was tried, and why.

    `payload` is the original payload, or the raw text of one that was not a JSON object.
    """
    return {
        "stream": stream,
        "group": group,
        "deliveries": deliveries,
        "reason": reason,
        "payload": payload,
    }


@dataclass(frozen=True, slots=True)
class StoredDeadLetter:
    """A dead letter as it is read back for an operator (fits `services.ports.DeadLetter`)."""

    id: str
    stream: str
    group: str
    deliveries: int
    reason: str
    payload: Any
    dead_at: datetime | None


def read_dead_letter(
    stream: str, letter_id: str, raw: Any, dead_at: datetime | None
) -> StoredDeadLetter:
    """A dead letter of `stream` from what its dead-letter stream holds (a JSON object, or its
    text). Something else written there by hand is shown as it is, with the reason
    `unreadable`, so that an operator sees it and can drop it."""
    body = raw
    if isinstance(raw, bytes | str):
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
    if (
        isinstance(body, dict)
        and isinstance(body.get("group"), str)
        and isinstance(body.get("deliveries"), int)
        and isinstance(body.get("reason"), str)
        and "payload" in body
    ):
        return StoredDeadLetter(
            letter_id,
            stream,
            body["group"],
            body["deliveries"],
            body["reason"],
            body["payload"],
            dead_at,
        )
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
    return StoredDeadLetter(letter_id, stream, "", 0, "unreadable", text, dead_at)


def raise_if_cancelled() -> None:
    """Raise the cancellation of the current task if a driver swallowed it.

    redis-py (8.1, on Python 3.11) can return normally from a read that was cancelled while
    its socket timeout was armed; a consumer loop that went on would never end.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


class Backoff:
    """Exponential backoff with full jitter, from `base` up to `cap` seconds."""

    def __init__(self, base: float = RECONNECT_BASE, cap: float = RECONNECT_MAX) -> None:
        self._base = base
        self._cap = cap
        self._attempt = 0

    @property
    def failing(self) -> bool:
        """Whether the last attempt failed."""
        return self._attempt > 0

    def next(self) -> float:
        """How long to wait before the next attempt."""
        ceiling = min(self._cap, self._base * 2**self._attempt)
        self._attempt = min(self._attempt + 1, 32)
        return random.uniform(ceiling / 2, ceiling)

    def reset(self) -> None:
        """The last attempt succeeded."""
        self._attempt = 0
