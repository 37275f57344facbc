"""Accepting events: validate, store durably with the outbox entry, answer with the id.

Routing happens later, in the worker; this use case only promises that the event is on disk.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable

from clarion.domain import errors
from clarion.domain.channels import REALTIME, Channel
from clarion.domain.notifications import AcceptedEvent, EventSpec
from clarion.services.ports import Clock, Store


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
    ) -> None:
        self._store = store
        # The channels this server can deliver on: realtime plus every configured transport.
        self._channels = channels
        self._clock = clock
        self._max_recipients = max_recipients
        # Wakes the outbox relay so an event is routed now, not at the next poll.
        self._on_accepted = on_accepted

    async def accept(
        self, tenant_id: str, spec: EventSpec, *, idempotency_key: str | None = None
    ) -> AcceptedEvent:
        """Store the event, or replay the answer given to the same Idempotency-Key.

        Raises:
            errors.NoRecipients, errors.TooManyRecipients: the recipient list is empty or long.
            errors.UnknownGroup, errors.UnknownCommunity: a named group does not exist.
            errors.IdempotencyKeyReused: the key was used with another body.
        """
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
        for kind, named, error in (
            ("group", spec.recipients.groups, errors.UnknownGroup),
            ("community", spec.recipients.communities, errors.UnknownCommunity),
        ):
            if named:
                missing = await self._store.missing_groups(tenant_id, named, kind)
                if missing:
                    raise error(f"no {kind} named {', '.join(map(repr, missing[:10]))}")
        fingerprint = spec.fingerprint()
        event_id = str(uuid.uuid4())
        stored = await self._store.insert_event(
            tenant_id=tenant_id,
            event_id=event_id,
            spec=spec,
            idempotency_key=idempotency_key,
            fingerprint=fingerprint,
            now=self._clock.now(),
        )
        if stored.fingerprint != fingerprint:
            raise errors.IdempotencyKeyReused()
        created = stored.id == event_id
        if created:
            self._on_accepted()
        return AcceptedEvent(id=stored.id, created=created)
