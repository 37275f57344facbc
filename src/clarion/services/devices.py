"""The device registry: push endpoints per user, kept clean of retired tokens."""

from __future__ import annotations

import re
from urllib.parse import urlsplit

from clarion.domain import errors
from clarion.domain.notifications import JsonObject
from clarion.services.ports import Clock, Device, Store

PROVIDERS = ("apns", "fcm", "wns", "webpush")
MAX_TOKEN_LENGTH = 2000  # fits a B-tree index entry on PostgreSQL with room to spare
_APNS = re.compile(r"^[0-9A-Fa-f]{64,200}$")  # 32-byte tokens today, longer allowed by Apple
_FCM = re.compile(r"^[A-Za-z0-9_:.\-]{20,}$")
_B64URL = re.compile(r"^[A-Za-z0-9_\-]+=*$")


class Devices:
    """Registering and unregistering push endpoints."""

    def __init__(self, store: Store, clock: Clock) -> None:
        self._store = store
        self._clock = clock

    async def register(
        self,
        tenant_id: str,
        user: str,
        *,
        provider: str,
        token: str,
        app_id: str | None,
        keys: JsonObject,
    ) -> tuple[Device, bool]:
        """Register `token` for `user` (created if unknown); True if the token is new.

        A token another user had moves to this one; a token a provider had retired is active
        again (the app has just proved it valid by registering it).

        Raises:
            errors.InvalidRequest: an unknown provider, or a token or keys of the wrong shape.
        """
        problem = token_problem(provider, token, keys)
        if problem:
            raise errors.InvalidRequest(problem)
        return await self._store.put_device(
            tenant_id,
            user,
            provider=provider,
            token=token,
            app_id=app_id,
            keys=keys,
            now=self._clock.now(),
        )

    async def unregister(self, tenant_id: str, user: str, token: str) -> None:
        """Forget the user's device with this token.

        Raises:
            errors.NotFound: the user has no such device.
        """
        if not await self._store.delete_device(tenant_id, user, token):
            raise errors.NotFound("no such device")

    async def of(self, tenant_id: str, user: str) -> list[Device]:
        """The user's devices, active and retired."""
        return await self._store.devices_of(tenant_id, user)


def token_problem(provider: str, token: str, keys: JsonObject) -> str | None:
    """Why `token` (and `keys`) cannot be a `provider` endpoint, or None."""
    if provider not in PROVIDERS:
        return f"provider must be one of {', '.join(PROVIDERS)}"
    if not token or len(token) > MAX_TOKEN_LENGTH:
        return f"token must be 1 to {MAX_TOKEN_LENGTH} characters"
    if provider == "apns" and not _APNS.fullmatch(token):
        return "an APNs token is hexadecimal (64 digits or more)"
    if provider == "fcm" and not _FCM.fullmatch(token):
        return "an FCM token is a registration token of letters, digits and :_-."
    if provider in ("wns", "webpush"):
        parts = urlsplit(token)
        if parts.scheme != "https" or not parts.hostname:
            return f"a {provider} token is the https URL of the endpoint"
    if provider == "webpush":
        for name in ("p256dh", "auth"):
            value = keys.get(name)
            if not isinstance(value, str) or not _B64URL.fullmatch(value):
                return f"a webpush subscription needs keys.{name} (base64url)"
    elif keys:
        return "keys are only for webpush subscriptions"
    return None


def masked(token: str) -> str:
    """A token as lists show it: enough to recognise, too little to use."""
    if len(token) <= 12:
        return "…" + token[-4:]
    return f"{token[:6]}…{token[-4:]}"
