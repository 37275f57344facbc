"""Accepting events: validate, store durably with the outbox entry, answer with the id.

Routing happens later, in the worker; this use case only promises that the event is on disk.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable, Sequence

from clarion.domain import errors
from clarion.domain.channels import PUSH, REALTIME, Channel
from clarion.domain.notifications import AcceptedEvent, EventSpec, schedule_of
from clarion.services.ports import Clock, NewEvent, Store

log = logging.getLogger(__name__)

BACKLOG_REFRESH_SECONDS = 1.0
"""The backlog is counted at most this often per process; between counts the last one holds."""


class Backlog:
    """The service-wide guard: no new events while too many accepted ones wait for the relay.

    `count(n)` counts the unpublished outbox entries, stopping at `n`. Counting costs a query,
    so the figure is cached for `refresh` seconds; a request that finds it stale recounts while
    concurrent ones go on with the old figure. `limit` 0 turns the guard off.
    """

    def __init__(
        self,
        count: Callable[[int], Awaitable[int]],
        *,
        limit: int,
        refresh: float = BACKLOG_REFRESH_SECONDS,
        monotonic: Callable[[], float] | None = None,
    ) -> None:
        self._count = count
        self._limit = limit
        self._refresh = refresh
        self._monotonic = monotonic
        self._known: int | None = None
        self._counted_at = 0.0
        self._counting: asyncio.Future[None] | None = None

    def _now(self) -> float:
        return self._monotonic() if self._monotonic else asyncio.get_running_loop().time()

    async def check(self) -> None:
        """Return if a new event may be taken.

        Raises:
            errors.Overloaded: more than `limit` accepted events wait to be handed on.
            errors.Unavailable: the backlog could not be counted (the database is down).
        """
        if self._limit <= 0:
            return
        if self._known is None or self._now() - self._counted_at >= self._refresh:
            if self._counting is None:
                self._counting = asyncio.ensure_future(self._recount())
                # Retrieved here whatever happens to the awaiting request.
                self._counting.add_done_callback(lambda f: f.cancelled() or f.exception())
                await asyncio.shield(self._counting)
            elif self._known is None:
                await asyncio.shield(self._counting)
        if self._known is not None and self._known > self._limit:
            raise errors.Overloaded(
                "too many accepted events are waiting to be routed; try again later"
            )

    async def _recount(self) -> None:
        try:
            known = await self._count(self._limit + 1)
        finally:
            self._counting = None
        was_over = self._known is not None and self._known > self._limit
        self._known, self._counted_at = known, self._now()
        if (known > self._limit) != was_over:
            log.warning(
                "backlog over its bound; refusing new events"
                if known > self._limit
                else "backlog back under its bound; taking new events",
                extra={"action": "backlog_overloaded", "limit": self._limit, "count": known},
            )


class Accepting:
    """Takes events from producers."""

    def __init__(
        self,
        store: Store,
        clock: Clock,
        *,
        max_recipients: int,
        channels: frozenset[Channel] = REALTIME,
        on_accepted: Callable[[], None] = lambda: None,
        backlog: Backlog | None = None,
    ) -> None:
        self._store = store
        self._backlog = backlog
        # The channels this server can deliver on: realtime plus every configured transport.
        self._channels = channels
        self._clock = clock
        self._max_recipients = max_recipients
        # Wakes the outbox relay so an event is routed now, not at the next poll.
        self._on_accepted = on_accepted

    def push_channels(self) -> tuple[Channel, ...]:
        """The push providers this server has a transport for, in `PUSH` order: what the
        `push` alias stands for.

        Raises:
            errors.UnknownChannel: there is none.
        """
        found = tuple(c for c in PUSH if c in self._channels)
        if not found:
            raise errors.UnknownChannel("no push transport is configured")
        return found

    async def accept(
        self, tenant_id: str, spec: EventSpec, *, idempotency_key: str | None = None
    ) -> AcceptedEvent:
        """Store the event, or replay the answer given to the same Idempotency-Key.

        Raises:
            errors.NoRecipients, errors.TooManyRecipients: the recipient list is empty or long.
            errors.UnknownGroup, errors.UnknownCommunity: a named group does not exist.
            errors.IdempotencyKeyReused: the key was used with another body.
            errors.Overloaded: too many accepted events wait for the workers (see `Backlog`).
        """
        now = self._clock.now()
        self._check(spec)
        schedule = schedule_of(spec, now)
        if self._backlog is not None:
            await self._backlog.check()
        await self._check_groups(tenant_id, [spec])
        fingerprint = spec.fingerprint()
        event_id = str(uuid.uuid4())
        stored = await self._store.insert_event(
            tenant_id=tenant_id,
            event_id=event_id,
            spec=spec,
            idempotency_key=idempotency_key,
            fingerprint=fingerprint,
            now=now,
            send_at=schedule.send_at,
            expires_at=schedule.expires_at,
        )
        if stored.fingerprint != fingerprint:
            raise errors.IdempotencyKeyReused()
        created = stored.id == event_id
        if created:
            self._on_accepted()
        return AcceptedEvent(id=stored.id, created=created)

    async def accept_many(
        self, tenant_id: str, batch: Sequence[tuple[EventSpec, str | None]]
    ) -> list[AcceptedEvent]:
        """Store a batch of events (each with its optional idempotency key) in one transaction:
        all of them, or, when one is refused, none. One answer per event, in order; an event
        whose key was seen before answers the id it was given then.

        Raises:
            as `accept`, for the first event that is refused, its message prefixed with its
            place (``events[3]: ...``).
        """
        now = self._clock.now()
        schedules = []
        for index, (spec, _) in enumerate(batch):
            try:
                self._check(spec)
                schedules.append(schedule_of(spec, now))
            except errors.ClarionError as exc:
                raise type(exc)(f"events[{index}]: {exc.message}", **exc.details) from None
        if self._backlog is not None:
            await self._backlog.check()
        await self._check_groups(tenant_id, [spec for spec, _ in batch])
        entries: list[NewEvent] = []
        by_key: dict[str, NewEvent] = {}
        for index, ((spec, key), schedule) in enumerate(zip(batch, schedules, strict=True)):
            entry = NewEvent(
                str(uuid.uuid4()),
                spec,
                key,
                spec.fingerprint(),
                send_at=schedule.send_at,
                expires_at=schedule.expires_at,
            )
            if key is not None:
                first = by_key.setdefault(key, entry)
                if first.fingerprint != entry.fingerprint:
                    raise errors.IdempotencyKeyReused(
                        f"events[{index}]: the idempotency key is used twice with different events"
                    )
                entry = first
            entries.append(entry)
        unique = list({id(e): e for e in entries}.values())
        stored = await self._store.insert_events(tenant_id=tenant_id, batch=unique, now=now)
        found = {entry.event_id: s for entry, s in zip(unique, stored, strict=True)}
        answers: list[AcceptedEvent] = []
        for index, entry in enumerate(entries):
            event = found[entry.event_id]
            if event.fingerprint != entry.fingerprint:
                raise errors.IdempotencyKeyReused(
                    f"events[{index}]: the idempotency key was used with another event"
                )
            answers.append(AcceptedEvent(id=event.id, created=event.id == entry.event_id))
        if any(a.created for a in answers):
            self._on_accepted()
        return answers

    async def cancel(self, tenant_id: str, event_id: str) -> None:
        """Cancel an event that is not routed yet (scheduled, or still on its way to the
        routers): it is never routed. Cancelling a cancelled event again changes nothing.

        Raises:
            errors.NotFound: no such event in this tenant.
            errors.AlreadySent: the event was routed already.
        """
        state = await self._store.cancel_event(tenant_id, event_id, self._clock.now())
        if state is None:
            raise errors.NotFound("no such event")
        if state == "routed":
            raise errors.AlreadySent()
        log.info(
            "event cancelled",
            extra={"action": "event_cancelled", "tenant": tenant_id, "event_id": event_id},
        )

    def _check(self, spec: EventSpec) -> None:
        if spec.recipients.is_empty():
            raise errors.NoRecipients()
        unavailable = [c for c in spec.channels or () if c not in self._channels]
        if unavailable:
            raise errors.UnknownChannel(
                f"no transport is configured for {', '.join(map(str, unavailable))}"
            )
        if spec.recipients.count() > self._max_recipients:
            raise errors.TooManyRecipients(
                f"an event may name at most {self._max_recipients} recipients; use a group"
            )

    async def _check_groups(self, tenant_id: str, specs: Sequence[EventSpec]) -> None:
        for kind, error in (
            ("group", errors.UnknownGroup),
            ("community", errors.UnknownCommunity),
        ):
            named = list(
                dict.fromkeys(
                    key
                    for spec in specs
                    for key in (
                        spec.recipients.groups if kind == "group" else spec.recipients.communities
                    )
                )
            )
            if named:
                missing = await self._store.missing_groups(tenant_id, named, kind)
                if missing:
                    raise error(f"no {kind} named {', '.join(map(repr, missing[:10]))}")
