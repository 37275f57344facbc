"""Users, groups, communities and memberships, as producers describe them."""

from __future__ import annotations

from clarion.domain import errors
from clarion.domain.notifications import JsonObject
from clarion.services.ports import Clock, GroupRecord, Store, UserFields, UserRecord


class Directory:
    """Who exists, and who belongs where."""

    def __init__(self, store: Store, clock: Clock) -> None:
        self._store = store
        self._clock = clock

    async def put_user(
        self, tenant_id: str, external_id: str, fields: UserFields
    ) -> tuple[UserRecord, bool]:
        """Create or replace a user; the flag says whether it was created."""
        return await self._store.put_user(tenant_id, external_id, fields, self._clock.now())

    async def get_user(self, tenant_id: str, external_id: str) -> UserRecord:
        """The user.

        Raises:
            errors.NotFound: no such user in this tenant.
        """
        user = await self._store.get_user(tenant_id, external_id)
        if user is None:
            raise errors.NotFound("no such user")
        return user

    async def delete_user(self, tenant_id: str, external_id: str) -> None:
        """Erase a user with their inbox, deliveries, memberships and audit entries.

        Raises:
            errors.NotFound: no such user.
        """
        if not await self._store.delete_user(tenant_id, external_id):
            raise errors.NotFound("no such user")

    async def put_group(
        self,
        tenant_id: str,
        key: str,
        *,
        kind: str,
        name: str | None,
        community: str | None,
        attributes: JsonObject,
        fcm_topic: str | None = None,
    ) -> tuple[GroupRecord, bool]:
        """Create or update a group or a community; `fcm_topic` maps it to an FCM topic (None
        removes the mapping)."""
        return await self._store.put_group(
            tenant_id,
            key,
            kind=kind,
            name=name,
            community=community,
            attributes=attributes,
            now=self._clock.now(),
            fcm_topic=fcm_topic,
        )

    async def get_group(self, tenant_id: str, key: str) -> GroupRecord:
        """The group.

        Raises:
            errors.NotFound: no such group.
        """
        group = await self._store.get_group(tenant_id, key)
        if group is None:
            raise errors.NotFound("no such group")
        return group

    async def put_member(self, tenant_id: str, group_key: str, external_id: str) -> bool:
        """Add a user (created if unknown) to a group; True if they were not in it yet.

        Raises:
            errors.NotFound: no such group.
        """
        added = await self._store.put_member(tenant_id, group_key, external_id, self._clock.now())
        if added is None:
            raise errors.NotFound("no such group")
        return added

    async def delete_member(self, tenant_id: str, group_key: str, external_id: str) -> None:
        """Remove a user from a group.

        Raises:
            errors.NotFound: they were not a member (or the group or user does not exist).
        """
        if not await self._store.delete_member(tenant_id, group_key, external_id):
            raise errors.NotFound("no such membership")

    async def ensure_user(self, tenant_id: str, external_id: str) -> int:
        """The user's internal id, creating the user if unknown."""
        return await self._store.ensure_user(tenant_id, external_id, self._clock.now())
