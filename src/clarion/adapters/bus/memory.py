"""The in-process bus: the embedded default for a single `clarion serve`.

Supported, not a test double, within its limits: work lives in bounded logs in this process (so
`publish` waits when the slowest consumer group falls behind, rather than buffering without
end), and anything queued dies with the process. That loss is covered by the outbox relay, which
hands unrouted events to the bus again (services/relaying.py).

Otherwise it keeps the contract the networked buses keep: every consumer group gets every
message, consumers of one group share them, a message not acknowledged within the visibility
timeout is delivered again, and after `max_deliveries` it goes to `<stream>.dead`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from clarion.adapters.bus import messages
from clarion.adapters.bus.messages import (
    DEDUPE_WINDOW,
    MAX_DELIVERIES,
    VISIBILITY_TIMEOUT,
    Acknowledgeable,
    StoredDeadLetter,
    check_channel,
    check_group,
    check_stream,
)

log = logging.getLogger(__name__)

STREAM_CAPACITY = 10_000  # messages a group may lag behind before producers are made to wait
LISTENER_CAPACITY = 10_000  # broadcasts a slow gateway may lag behind before some are dropped


@dataclass(slots=True)
class _Pending:
    payload: dict[str, Any]
    deliveries: int
    deadline: float


@dataclass(slots=True)
class _Group:
    name: str
    cursor: int  # the sequence number of the next message to hand out
    pending: OrderedDict[int, _Pending] = field(default_factory=OrderedDict)  # by deadline


class _Stream:
    """One stream: a log of its newest messages, and the groups reading it.

    Like a capped Redis or JetStream stream, the log keeps up to `capacity` messages after every
    group took them, so a group made later starts from the oldest one kept. Unlike them, it never
    drops a message some group has yet to take: the producer waits instead.
    """

    def __init__(self, name: str, capacity: int) -> None:
        self.name = name
        self.capacity = capacity
        # Dead letters are kept for inspection, not worked off: the oldest make room.
        self.trims = name.endswith(messages.DEAD_SUFFIX)
        # A removed dead letter leaves a hole (payload None) that readers step over, so that
        # sequence numbers still index the log.
        self.log: deque[tuple[int, dict[str, Any] | None]] = deque()
        self.stamps: dict[int, datetime] = {}  # dead letters: when each was written
        self.next_seq = 0
        self.groups: dict[str, _Group] = {}
        self.seen: OrderedDict[str, float] = OrderedDict()  # message id -> expiry, oldest first
        self._changed = asyncio.Event()

    def changed(self) -> None:
        """Wake everyone waiting on this stream (new message, ack, or room freed)."""
        self._changed.set()
        self._changed = asyncio.Event()

    def waiter(self) -> asyncio.Event:
        return self._changed

    def group(self, name: str) -> _Group:
        group = self.groups.get(name)
        if group is None:
            first = self.log[0][0] if self.log else self.next_seq
            group = self.groups[name] = _Group(name, cursor=first)
        return group

    def has_room(self) -> bool:
        """Whether a message can be appended: the log is not full, or its oldest message was
        taken by every group (or this stream keeps only the newest)."""
        if len(self.log) < self.capacity or self.trims:
            return True
        return bool(self.groups) and self.log[0][0] < min(g.cursor for g in self.groups.values())

    def append(self, payload: dict[str, Any]) -> None:
        if self.trims:
            self.stamps[self.next_seq] = datetime.now(UTC)
        self.log.append((self.next_seq, payload))
        self.next_seq += 1
        if len(self.log) > self.capacity:
            oldest, _ = self.log.popleft()
            self.stamps.pop(oldest, None)
        self.changed()

    def take(self, group: _Group) -> tuple[int, dict[str, Any]] | None:
        """The group's next message, if any."""
        while self.log and group.cursor < self.next_seq:
            offset = max(0, group.cursor - self.log[0][0])
            seq, payload = self.log[offset]
            group.cursor = seq + 1
            if payload is not None:
                self.changed()  # a producer waiting for room may go on
                return seq, payload
        return None

    def entries(self, after: int, limit: int) -> list[tuple[int, dict[str, Any]]]:
        """Up to `limit` messages still held, with sequence numbers above `after`."""
        if not self.log:
            return []
        start = max(0, after + 1 - self.log[0][0])
        found: list[tuple[int, dict[str, Any]]] = []
        for offset in range(start, len(self.log)):
            seq, payload = self.log[offset]
            if payload is not None:
                found.append((seq, payload))
                if len(found) >= limit:
                    break
        return found

    def remove(self, seq: int) -> bool:
        """Forget one message still held; False when there is none with that number."""
        if not self.log or not self.log[0][0] <= seq < self.next_seq:
            return False
        offset = seq - self.log[0][0]
        if self.log[offset][1] is None:
            return False
        self.log[offset] = (seq, None)
        self.stamps.pop(seq, None)
        return True

    def is_duplicate(self, message_id: str, now: float, window: float) -> bool:
        while self.seen and next(iter(self.seen.values())) <= now:
            self.seen.popitem(last=False)
        if message_id in self.seen:
            return True
        self.seen[message_id] = now + window
        return False


@dataclass(slots=True)
class MemoryEnvelope:
    """A message taken from a stream, owed until acknowledged."""

    payload: dict[str, Any]
    deliveries: int = 1
    _settle: Callable[[str | None], None] | None = field(default=None, repr=False)

    async def ack(self) -> None:
        """Forget the message for this group."""
        if self._settle is not None:
            self._settle(None)

    async def reject(self, reason: str) -> None:
        """Move the message to the dead letters now."""
        if self._settle is not None:
            self._settle(reason)


class MemoryBus:
    """Streams and broadcasts inside one process."""

    def __init__(
        self,
        *,
        max_length: int = STREAM_CAPACITY,
        listener_capacity: int = LISTENER_CAPACITY,
        visibility_timeout: float = VISIBILITY_TIMEOUT,
        max_deliveries: int = MAX_DELIVERIES,
        dedupe_window: float = DEDUPE_WINDOW,
    ) -> None:
        if max_length < 1 or max_deliveries < 1 or visibility_timeout <= 0:
            raise ValueError("max_length, max_deliveries and visibility_timeout must be positive")
        self._max_length = max_length
        self._listener_capacity = listener_capacity
        self._visibility = visibility_timeout
        self._max_deliveries = max_deliveries
        self._dedupe_window = dedupe_window
        self._streams: dict[str, _Stream] = {}
        self._listeners: dict[str, set[asyncio.Queue[dict[str, Any] | None]]] = {}
        self._closed = asyncio.Event()

    def _stream(self, name: str) -> _Stream:
        stream = self._streams.get(name)
        if stream is None:
            stream = self._streams[name] = _Stream(check_stream(name), self._max_length)
        return stream

    async def publish(
        self, stream: str, payload: dict[str, Any], *, message_id: str | None = None
    ) -> None:
        """Append to `stream`, waiting while a group has `max_length` messages to take."""
        target = self._stream(stream)
        while not target.has_room():
            await target.waiter().wait()
        # Checked only once there is room, so a publish cancelled while waiting is not
        # remembered as done.
        message_id = messages.message_id(payload, message_id) if self._dedupe_window > 0 else None
        if message_id is not None:
            now = asyncio.get_running_loop().time()
            if target.is_duplicate(message_id, now, self._dedupe_window):
                return
        target.append(payload)

    async def acknowledge(self, envelopes: Sequence[Acknowledgeable]) -> None:
        """Forget each message for its group (no broker: nothing to save by batching)."""
        for envelope in envelopes:
            await envelope.ack()

    async def consume(self, stream: str, group: str) -> AsyncIterator[MemoryEnvelope]:
        """Take messages of `stream` for `group`; its consumers share them."""
        source = self._stream(stream)
        state = source.group(check_group(group))
        loop = asyncio.get_running_loop()
        while not self._closed.is_set():
            now = loop.time()
            envelope = self._redeliver(source, state, now) or self._take(source, state, now)
            if envelope is not None:
                yield envelope
                continue
            timeout = None
            if state.pending:
                timeout = max(0.0, next(iter(state.pending.values())).deadline - now)
            changed = asyncio.ensure_future(source.waiter().wait())
            closed = asyncio.ensure_future(self._closed.wait())
            try:
                await asyncio.wait(
                    {changed, closed}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
                )
            finally:
                changed.cancel()
                closed.cancel()

    def _take(self, source: _Stream, state: _Group, now: float) -> MemoryEnvelope | None:
        taken = source.take(state)
        if taken is None:
            return None
        seq, payload = taken
        state.pending[seq] = _Pending(payload, 1, now + self._visibility)
        return MemoryEnvelope(payload, 1, functools.partial(self._settle, source, state, seq))

    def _redeliver(self, source: _Stream, state: _Group, now: float) -> MemoryEnvelope | None:
        while state.pending:
            seq, pending = next(iter(state.pending.items()))
            if pending.deadline > now:
                return None
            if pending.deliveries >= self._max_deliveries:
                self._settle(source, state, seq, "max_deliveries")
                continue
            del state.pending[seq]
            pending.deliveries += 1
            pending.deadline = now + self._visibility
            state.pending[seq] = pending  # to the end: deadlines stay in order
            settle = functools.partial(self._settle, source, state, seq)
            return MemoryEnvelope(pending.payload, pending.deliveries, settle)
        return None

    def _settle(self, source: _Stream, state: _Group, seq: int, reason: str | None) -> None:
        """Forget a pending message; with a reason, move it to the dead letters first."""
        pending = state.pending.pop(seq, None)
        if pending is None:
            return
        if reason is not None:
            log.warning(
                "message dead-lettered",
                extra={
                    "action": "bus_dead_letter",
                    "stream": source.name,
                    "group": state.name,
                    "reason": reason,
                },
            )
            letter = messages.dead_letter(
                source.name, state.name, pending.deliveries, pending.payload, reason=reason
            )
            self._stream(messages.dead_stream(source.name)).append(letter)
        source.changed()

    # -- dead letters, for operators ----------------------------------------------------------

    async def dead_letters(
        self, stream: str, *, after: str | None = None, limit: int = 100
    ) -> list[StoredDeadLetter]:
        """The dead letters of `stream` still held, oldest first, after the letter `after`."""
        dead = self._streams.get(messages.dead_stream(check_stream(stream)))
        if dead is None or limit < 1:
            return []
        start = _seq_of(after) if after is not None else -1
        return [self._letter(stream, dead, seq, raw) for seq, raw in dead.entries(start, limit)]

    async def dead_letter(self, stream: str, letter_id: str) -> StoredDeadLetter | None:
        """One dead letter of `stream`, or None."""
        dead = self._streams.get(messages.dead_stream(check_stream(stream)))
        seq = _seq_of(letter_id)
        if dead is None or seq < 0:
            return None
        found = dead.entries(seq - 1, 1)
        if not found or found[0][0] != seq:
            return None
        return self._letter(stream, dead, seq, found[0][1])

    async def remove_dead_letter(self, stream: str, letter_id: str) -> bool:
        """Forget one dead letter of `stream`; False when there is no such letter."""
        dead = self._streams.get(messages.dead_stream(check_stream(stream)))
        seq = _seq_of(letter_id)
        return dead is not None and seq >= 0 and dead.remove(seq)

    @staticmethod
    def _letter(stream: str, dead: _Stream, seq: int, raw: dict[str, Any]) -> StoredDeadLetter:
        # Ids count from 1, as JetStream's sequences do.
        return messages.read_dead_letter(stream, str(seq + 1), raw, dead.stamps.get(seq))

    # -- broadcasts ---------------------------------------------------------------------------

    async def broadcast(self, channel: str, payload: dict[str, Any]) -> None:
        """Give `payload` to every listener of `channel`, dropping it for one that lags."""
        for queue in tuple(self._listeners.get(check_channel(channel), ())):
            try:
                queue.put_nowait(payload)
            except asyncio.QueueFull:
                log.warning("listener lagging; broadcast dropped", extra={"channel": channel})

    @asynccontextmanager
    async def listen(self, channel: str) -> AsyncIterator[AsyncIterator[dict[str, Any]]]:
        """Receive the broadcasts of `channel` while the context is open."""
        queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue(self._listener_capacity)
        self._listeners.setdefault(check_channel(channel), set()).add(queue)

        async def received() -> AsyncIterator[dict[str, Any]]:
            while (message := await queue.get()) is not None:
                yield message

        try:
            yield received()
        finally:
            self._listeners[channel].discard(queue)

    async def close(self) -> None:
        """End consumers and listeners; nothing else to release."""
        self._closed.set()
        for queues in self._listeners.values():
            for queue in queues:
                with contextlib.suppress(asyncio.QueueFull):
                    queue.put_nowait(None)


def _seq_of(letter_id: str) -> int:
    """The sequence number a dead letter's id names; -1 for an id that names none."""
    return int(letter_id) - 1 if letter_id.isdigit() and len(letter_id) <= 18 else -1
