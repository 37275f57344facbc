"""One-click unsubscribe: the signed link every email carries, and honouring it (RFC 8058).

A link names its tenant, user and category in a signed token (`wire.unsubscribe`); nothing else
authenticates the POST that follows it, so a link that is forged, altered, or made for another
tenant is refused exactly like a missing page. Following a link twice changes nothing more.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from typing import Final

from clarion.domain import errors
from clarion.services.ports import Clock, Store
from clarion.wire import unsubscribe as tokens
from clarion.wire.email import Unsubscribe

EVERY_CATEGORY: Final = "\0*"
"""The token's category when the link unsubscribes from all of the tenant's email: a control
character is never part of a category key (`identifiers.is_valid_key`), so no category can
be mistaken for it."""
SECRET_LABEL: Final = b"clarion unsubscribe-links v1"
"""Separates the link key from every other use of the server's key material."""
PATH: Final = "/v1/unsubscribe"


def derive_secret(key_material: bytes) -> bytes:
    """The secret unsubscribe links are signed under, derived from the server's sealing key
    (HMAC-SHA256 as a PRF with a label of its own, as HKDF-Expand does): knowing it tells
    nothing about the sealing key, and it changes when that key does."""
    return hmac.new(key_material, SECRET_LABEL, hashlib.sha256).digest()


@dataclass(frozen=True, slots=True)
class Unsubscribed:
    """What following a link did.

    Attributes:
        category: the category the user no longer receives email for; None: all email.
        changed: False when it was already so (a repeated POST, a link scanner).
    """

    category: str | None
    changed: bool


@dataclass(frozen=True, slots=True)
class LinkTarget:
    """What a valid link would do, for the confirmation page."""

    category: str | None


class Unsubscribing:
    """Issues and honours one-click unsubscribe links.

    Args:
        secret: the server's link secret (`derive_secret`), at least 32 bytes.
        public_url: this server's https base as recipients reach it; None: links cannot be
            issued (honouring old ones still works).
        mailto: the mailbox for ``mailto:`` unsubscribes, when the operator reads one.
    """

    def __init__(
        self,
        store: Store,
        clock: Clock,
        *,
        secret: bytes,
        public_url: str | None,
        mailto: str | None = None,
    ) -> None:
        if len(secret) < tokens.MIN_SECRET_BYTES:
            raise ValueError("the unsubscribe secret must be at least 32 bytes")
        self._store = store
        self._clock = clock
        self._secret = secret
        self._base = public_url.rstrip("/") + PATH if public_url else None
        self._mailto = mailto

    def link(self, tenant_id: str, user: str, category: str | None) -> Unsubscribe:
        """The ``List-Unsubscribe`` targets for an email to `user` (external id) of
        `tenant_id`: the https one-click URL ``<public_url>/v1/unsubscribe/<token>`` and, when
        configured, a ``mailto:``. `category` None: the link unsubscribes from all email.

        Raises:
            errors.Unavailable: no public URL is configured (``email.public_url``).
            errors.InvalidRequest: an empty or over-long id or category.
        """
        if self._base is None:
            raise errors.Unavailable("email.public_url is not set: no unsubscribe link")
        token = tokens.issue(
            tokens.tenant_key(self._secret, tenant_id),
            tenant=tenant_id,
            user=user,
            category=EVERY_CATEGORY if category is None else category,
            now=self._clock.now(),
        )
        url = tokens.one_click_url(self._base, token)
        mailto = tokens.mailto_uri(self._mailto, token) if self._mailto else None
        return Unsubscribe(url=url, mailto=mailto)

    def target(self, token: str) -> LinkTarget:
        """What `token` would unsubscribe from, without doing it.

        Raises:
            errors.UnknownUnsubscribeLink: the token is not one this server signed.
        """
        claim = self._verify(token)
        return LinkTarget(None if claim.category == EVERY_CATEGORY else claim.category)

    async def unsubscribe(self, token: str) -> Unsubscribed:
        """Do what `token` says: opt its user out of its category's email (a preference,
        scope ``category``, channel ``email``, off), or out of all email (``email_status``
        ``unsubscribed``). Idempotent.

        Raises:
            errors.UnknownUnsubscribeLink: the token is not one this server signed, or its
                user no longer exists.
        """
        claim = self._verify(token)
        user = await self._store.get_user(claim.tenant, claim.user)
        if user is None:
            raise errors.UnknownUnsubscribeLink()
        now = self._clock.now()
        if claim.category == EVERY_CATEGORY:
            if user.email_status != "subscribed":
                return Unsubscribed(None, changed=False)
            await self._store.set_email_status(claim.tenant, user.id, "unsubscribed", now)
            return Unsubscribed(None, changed=True)
        stored = await self._store.preferences(claim.tenant, user.id)
        channels = dict(stored.get("category", {}).get(claim.category, {}))
        if channels.get(tokens.CHANNEL_EMAIL) is False:
            return Unsubscribed(claim.category, changed=False)
        # The user's other switches for this category stay as they were.
        channels[tokens.CHANNEL_EMAIL] = False
        await self._store.put_preferences(
            claim.tenant, user.id, "category", claim.category, channels, now
        )
        return Unsubscribed(claim.category, changed=True)

    def _verify(self, token: str) -> tokens.UnsubscribeClaim:
        tenant = tokens.claimed_tenant(token)
        if tenant is None:
            raise errors.UnknownUnsubscribeLink()
        try:
            claim = tokens.verify(
                token,
                [tokens.tenant_key(self._secret, tenant)],
                now=self._clock.now(),
                tenant=tenant,
            )
        except errors.NotFound:
            raise errors.UnknownUnsubscribeLink() from None
        if claim.channel != tokens.CHANNEL_EMAIL:
            raise errors.UnknownUnsubscribeLink()
        return claim
