"""Tenants and their API keys: creating, listing, revoking, and authenticating with them."""

from __future__ import annotations

import secrets
import uuid
from dataclasses import dataclass

from clarion.domain import errors, keys
from clarion.services.ports import ApiKeyInfo, Clock, Store


@dataclass(frozen=True, slots=True)
class NewTenant:
    """What `create_tenant` prints once and never again."""

    tenant_id: str
    api_key: str
    user_token_secret: str


@dataclass(frozen=True, slots=True)
class NewKey:
    """A freshly made API key; the text is shown once."""

    id: str
    tenant_id: str
    api_key: str


class Tenancy:
    """Tenant administration and API-key authentication."""

    def __init__(self, store: Store, clock: Clock) -> None:
        self._store = store
        self._clock = clock

    async def create_tenant(self, name: str) -> NewTenant:
        """Create a tenant with one API key and a user-token signing secret."""
        tenant_id = str(uuid.uuid4())
        key_id, api_key = _new_key()
        token_secret = secrets.token_urlsafe(32)
        await self._store.create_tenant(
            tenant_id=tenant_id,
            name=name,
            token_secret=token_secret,
            key_id=key_id,
            key_digest=keys.digest(api_key),
            now=self._clock.now(),
        )
        return NewTenant(tenant_id=tenant_id, api_key=api_key, user_token_secret=token_secret)

    async def create_key(self, tenant_id: str, name: str) -> NewKey:
        """Add an API key to a tenant.

        Raises:
            errors.NotFound: no such tenant.
        """
        key_id, api_key = _new_key()
        added = await self._store.add_key(
            tenant_id=tenant_id,
            key_id=key_id,
            name=name,
            digest=keys.digest(api_key),
            now=self._clock.now(),
        )
        if not added:
            raise errors.NotFound(f"no tenant {tenant_id}")
        return NewKey(id=key_id, tenant_id=tenant_id, api_key=api_key)

    async def list_keys(self, tenant_id: str) -> list[ApiKeyInfo]:
        """The tenant's keys."""
        return await self._store.list_keys(tenant_id)

    async def revoke_key(self, key_id: str) -> None:
        """Revoke a key; it stops working with the next request.

        Raises:
            errors.NotFound: no such key.
        """
        if not await self._store.revoke_key(key_id, self._clock.now()):
            raise errors.NotFound(f"no key {key_id}")

    async def authenticate(self, api_key: str) -> str:
        """The tenant an API key belongs to.

        Raises:
            errors.InvalidApiKey: malformed, unknown or revoked. The three are not told apart.
        """
        parsed = keys.parse_key(api_key)
        if parsed is None:
            raise errors.InvalidApiKey()
        stored = await self._store.find_key(parsed.key_id)
        if stored is None or stored.revoked or not keys.same_digest(stored.digest, parsed.digest):
            raise errors.InvalidApiKey()
        return stored.tenant_id

    async def exists(self, tenant_id: str) -> bool:
        """Whether the tenant exists (for ways in that name it instead of proving it with a
        key: the bus's ingest stream)."""
        return await self._store.tenant_secret(tenant_id) is not None


def _new_key() -> tuple[str, str]:
    key_id = secrets.token_hex(8)
    return key_id, keys.format_key(key_id, secrets.token_bytes(32))
