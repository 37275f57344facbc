"""What the services need from the world, as structural types.

Adapters never import this module: they fit it by shape, and mypy checks the fit where
`bootstrap` wires them. Each storage method is one transaction; methods that write many rows
do it set-based (``INSERT ... SELECT``, ``UPDATE ... WHERE id IN``), never a row at a time.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from datetime import datetime
from typing import Protocol

from clarion.domain.channels import Channel
from clarion.domain.notifications import EventSpec, JsonObject
from clarion.domain.outcomes import Outcome
from clarion.domain.records import (
    Addressed,
    ApiKeyInfo,
    Claimed,
    Completion,
    EventReport,
    GroupRecord,
    Moved,
    OutboxEntry,
    RecipientReport,
    Routed,
    StoredEvent,
    StoredKey,
    UserFields,
    UserRecord,
)
from clarion.domain.statuses import Status

__all__ = [
    "Addressed",
    "ApiKeyInfo",
    "Bus",
    "Claimed",
    "Clock",
    "Completion",
    "Envelope",
    "EventReport",
    "GroupRecord",
    "Moved",
    "OutboxEntry",
    "RecipientReport",
    "Routed",
    "Store",
    "StoredEvent",
    "StoredKey",
    "Transport",
    "UserFields",
    "UserRecord",
]


class Clock(Protocol):
    """The time, injected so that nothing below the entrypoints reads the wall clock itself."""

    def now(self) -> datetime:
        """The current time, timezone-aware, UTC."""
        ...


# ---------------------------------------------------------------------------------------------
# Ports


class Store(Protocol):
    """The system of record. Every method is one transaction; every query is tenant-scoped."""

    # tenants and keys
    async def create_tenant(
        self,
        *,
        tenant_id: str,
        name: str,
        token_secret: str,
        key_id: str,
        key_digest: str,
        now: datetime,
    ) -> None:
        """Create a tenant with its first API key."""
        ...

    async def tenant_secret(self, tenant_id: str) -> str | None:
        """The tenant's user-token signing secret, or None for an unknown tenant."""
        ...

    async def add_key(
        self, *, tenant_id: str, key_id: str, name: str, digest: str, now: datetime
    ) -> bool:
        """Add an API key; False when the tenant does not exist."""
        ...

    async def find_key(self, key_id: str) -> StoredKey | None:
        """The key with this id, revoked or not."""
        ...

    async def list_keys(self, tenant_id: str) -> list[ApiKeyInfo]:
        """The tenant's keys, oldest first."""
        ...

    async def revoke_key(self, key_id: str, now: datetime) -> bool:
        """Revoke a key at once; False when there is no such key."""
        ...

    # directory
    async def put_user(
        self, tenant_id: str, external_id: str, fields: UserFields, now: datetime
    ) -> tuple[UserRecord, bool]:
        """Create or replace a user; the flag says whether it was created."""
        ...

    async def get_user(self, tenant_id: str, external_id: str) -> UserRecord | None:
        """The user, or None."""
        ...

    async def ensure_user(self, tenant_id: str, external_id: str, now: datetime) -> int:
        """The internal id of the user, created bare if unknown."""
        ...

    async def delete_user(self, tenant_id: str, external_id: str) -> bool:
        """Erase the user and everything addressed to them; False when unknown."""
        ...

    async def put_group(
        self,
        tenant_id: str,
        key: str,
        *,
        kind: str,
        name: str | None,
        community: str | None,
        attributes: JsonObject,
        now: datetime,
    ) -> tuple[GroupRecord, bool]:
        """Create or update a group or community; the flag says whether it was created.

        Raises:
            errors.GroupKindMismatch: the kind would change, or `community` is not a community.
            errors.UnknownCommunity: `community` does not exist.
        """
        ...

    async def get_group(self, tenant_id: str, key: str) -> GroupRecord | None:
        """The group, or None."""
        ...

    async def put_member(
        self, tenant_id: str, group_key: str, external_id: str, now: datetime
    ) -> bool | None:
        """Add the user (created if unknown) to the group: True if added, False if already in,
        None if there is no such group."""
        ...

    async def delete_member(self, tenant_id: str, group_key: str, external_id: str) -> bool:
        """Remove a membership; False when there was none."""
        ...

    async def missing_groups(self, tenant_id: str, keys: Sequence[str], kind: str) -> list[str]:
        """Which of `keys` name no group of `kind`."""
        ...

    # events
    async def insert_event(
        self,
        *,
        tenant_id: str,
        event_id: str,
        spec: EventSpec,
        idempotency_key: str | None,
        fingerprint: str,
        now: datetime,
    ) -> StoredEvent:
        """Store the event and its outbox entry together, or return the event that already
        holds this idempotency key (the caller compares fingerprints)."""
        ...

    async def get_event(self, tenant_id: str, event_id: str) -> StoredEvent | None:
        """The event, or None."""
        ...

    async def route_event(
        self,
        event_id: str,
        *,
        notification_id: str,
        channels: Callable[[EventSpec], Sequence[Channel]],
        now: datetime,
    ) -> Routed | None:
        """Expand the recipients, create unknown users, and write the notification, one inbox
        item per recipient and one delivery per recipient and channel, all set-based in one
        transaction. `channels` picks the channels from the stored event. None when the event is
        unknown or was routed before."""
        ...

    async def unrouted_events(self, *, accepted_before: datetime, limit: int) -> list[str]:
        """Events accepted before the given time and still not routed, oldest first."""
        ...

    async def pending_outbox(self, limit: int) -> list[OutboxEntry]:
        """Outbox entries not yet published, in commit order."""
        ...

    async def mark_published(self, ids: Sequence[int], now: datetime) -> None:
        """Record that the entries are on the bus."""
        ...

    async def prune_outbox(self, *, published_before: datetime) -> int:
        """Forget entries published before the given time; how many went."""
        ...

    # realtime
    async def items_for_users(
        self, tenant_id: str, notification_id: str, user_ids: Sequence[int]
    ) -> list[Addressed]:
        """The notification's items for those of `user_ids` who received it."""
        ...

    async def backlog(
        self, tenant_id: str, user_id: int, *, after: int | None, start: int, limit: int
    ) -> list[Addressed]:
        """One page of what a (re)connecting user missed, items with id above `start` in id
        order: every item after the cursor `after`, and any still pending (only those when
        there is no cursor)."""
        ...

    async def mark_sent(
        self, tenant_id: str, item_ids: Sequence[int], *, channel: Channel, now: datetime
    ) -> list[int]:
        """Move pending items (and their deliveries on `channel`) to sent; the ids that moved."""
        ...

    async def apply_receipt(
        self,
        tenant_id: str,
        user_id: int,
        item_id: int,
        target: Status,
        *,
        channel: Channel | None,
        cause: str,
        now: datetime,
    ) -> Moved | None:
        """Advance the user's item (and its delivery on `channel`) towards `target`.
        None when the item is not this user's."""
        ...

    # reports
    async def event_report(self, tenant_id: str, event_id: str) -> EventReport | None:
        """The event and its per-status counts, or None."""
        ...

    async def recipient_report(
        self, tenant_id: str, event_id: str, external_id: str
    ) -> RecipientReport | None:
        """One recipient's item, deliveries and audit trail for the event, or None."""
        ...

    # deliveries sent by transports
    async def claim_deliveries(
        self, channel: Channel, *, limit: int, lease_seconds: float, now: datetime
    ) -> list[Claimed]:
        """Lease up to `limit` due, pending deliveries of `channel`, each with a new fence."""
        ...

    async def complete_deliveries(
        self, completions: Sequence[Completion], now: datetime
    ) -> list[int]:
        """Apply outcomes; those whose fence is stale are ignored. The ids applied."""
        ...


class Envelope(Protocol):
    """A message taken from a work stream; it stays owed until acknowledged."""

    payload: JsonObject

    async def ack(self) -> None:
        """The work is done; the bus may forget the message."""
        ...


class Bus(Protocol):
    """Carries work between processes, and broadcasts realtime news to every gateway.

    Work streams are at-least-once with one consumer per message within a group; broadcasts
    reach every listener that is connected at the time and are not kept.
    """

    async def publish(self, stream: str, payload: JsonObject) -> None:
        """Append work to a stream."""
        ...

    def consume(self, stream: str, group: str) -> AsyncIterator[Envelope]:
        """The stream's messages for this consumer group, forever."""
        ...

    async def broadcast(self, channel: str, payload: JsonObject) -> None:
        """Tell every listener of `channel`."""
        ...

    def listen(self, channel: str) -> AbstractAsyncContextManager[AsyncIterator[JsonObject]]:
        """Listen to `channel` for as long as the context is open."""
        ...


class Transport(Protocol):
    """Sends claimed deliveries of one channel to its provider; one adapter per provider."""

    channel: Channel

    async def send(self, batch: Sequence[Claimed]) -> Sequence[Outcome]:
        """One outcome per delivery, in order. Never raises for a provider's answer."""
        ...
