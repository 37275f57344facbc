"""The sessions connected to this process, and the news that reaches them.

Every gateway process listens to the bus's realtime broadcasts. When a notification is routed,
the hub asks the registry which of its connected users are recipients and queues a frame on
each of their sessions; when an item changes status elsewhere, the user's sessions are told.
An item is recorded `sent` only once its frame was written to a socket, in batches.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict, defaultdict
from typing import Any

from clarion.domain.statuses import Status
from clarion.services.ports import Bus
from clarion.services.realtime import Realtime
from clarion.services.routing import REALTIME_CHANNEL
from clarion.wire import realtime as frames

log = logging.getLogger(__name__)

SEEN_IDS = 4096  # per session: enough to cover the overlap of a backlog and live frames
FLUSH_SECONDS = 0.05  # how long a written frame may wait to be recorded `sent`
FLUSH_BATCH = 500


class Session:
    """One open socket of one user, with its bounded queue of frames to send."""

    def __init__(self, tenant_id: str, user_id: int, user: str, *, capacity: int) -> None:
        self.tenant_id = tenant_id
        self.user_id = user_id
        self.user = user
        self.queue: asyncio.Queue[tuple[dict[str, Any], int | None]] = asyncio.Queue(capacity)
        self.overflowed = asyncio.Event()
        self._seen: OrderedDict[int, None] = OrderedDict()

    def offer(
        self, frame: dict[str, Any], item_id: int | None = None, *, again: bool = False
    ) -> None:
        """Queue a frame. A notification already queued for this session is skipped (a backlog
        and live delivery can overlap) unless `again` says the client asked for it anew."""
        if item_id is not None:
            if item_id in self._seen and not again:
                return
            self._seen[item_id] = None
            if len(self._seen) > SEEN_IDS:
                self._seen.popitem(last=False)
        try:
            self.queue.put_nowait((frame, item_id))
        except asyncio.QueueFull:
            self.overflowed.set()


class Hub:
    """The registry of live sessions in this process."""

    def __init__(self, realtime: Realtime, bus: Bus) -> None:
        self._realtime = realtime
        self._bus = bus
        self._users: dict[str, dict[int, set[Session]]] = defaultdict(dict)
        self._written: dict[str, list[int]] = defaultdict(list)
        self._flush = asyncio.Event()

    def add(self, session: Session) -> None:
        """Start routing news to `session`."""
        self._users[session.tenant_id].setdefault(session.user_id, set()).add(session)

    def remove(self, session: Session) -> None:
        """Stop routing news to `session`."""
        users = self._users.get(session.tenant_id, {})
        sessions = users.get(session.user_id)
        if sessions is not None:
            sessions.discard(session)
            if not sessions:
                del users[session.user_id]

    def connected(self) -> int:
        """How many sessions are open."""
        return sum(len(s) for users in self._users.values() for s in users.values())

    def written(self, tenant_id: str, item_id: int) -> None:
        """A notification frame went out on a socket: record the item `sent` soon."""
        batch = self._written[tenant_id]
        batch.append(item_id)
        if len(batch) >= FLUSH_BATCH:
            self._flush.set()

    async def flush(self) -> None:
        """Record every written item `sent` now."""
        pending, self._written = self._written, defaultdict(list)
        for tenant_id, ids in pending.items():
            try:
                await self._realtime.mark_sent(tenant_id, sorted(set(ids)))
            except Exception:
                # The frames did go out; failing to record it leaves the items pending, and the
                # next connection's backlog sends them again (at-least-once, deduped by id).
                log.exception("recording sent items failed", extra={"tenant": tenant_id})

    async def run(self, stop: asyncio.Event) -> None:
        """Listen for realtime news and record written frames until `stop` is set."""
        async with asyncio.TaskGroup() as group:
            listener = group.create_task(self._listen())
            await self._flush_until(stop)
            listener.cancel()

    async def _flush_until(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._flush.wait(), FLUSH_SECONDS)
            self._flush.clear()
            await self.flush()
        await self.flush()

    async def _listen(self) -> None:
        async with self._bus.listen(REALTIME_CHANNEL) as messages:
            async for message in messages:
                try:
                    await self._dispatch(message)
                except Exception:
                    log.exception("realtime dispatch failed", extra={"kind": message.get("kind")})

    async def _dispatch(self, message: dict[str, Any]) -> None:
        tenant_id = message.get("tenant_id")
        users = self._users.get(tenant_id or "")
        if not users or tenant_id is None:
            return
        if message.get("kind") == "routed":
            addressed = await self._realtime.for_notification(
                tenant_id, message["notification_id"], list(users)
            )
            for entry in addressed:
                frame = frames.notification_frame(entry.item)
                for session in tuple(users.get(entry.user_id, ())):
                    session.offer(frame, entry.item.id)
        elif message.get("kind") == "status":
            frame = frames.status_frame(message["item_id"], Status(message["status"]))
            for session in tuple(users.get(message["user_id"], ())):
                session.offer(frame)
        elif message.get("kind") == "statuses":
            frame = frames.statuses_frame(message["item_ids"], Status(message["status"]))
            for session in tuple(users.get(message["user_id"], ())):
                session.offer(frame)
