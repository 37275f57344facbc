"""What a user opted out of: channels per group or category, and email altogether."""

from __future__ import annotations

from clarion.domain import errors
from clarion.domain.channels import Channel
from clarion.services.ports import Clock, Store
from clarion.services.tokens import Principal

SCOPES = {"groups": "group", "categories": "category"}
ALL_CHANNELS = "*"
USER_EMAIL_STATES = frozenset({"subscribed", "unsubscribed"})


class Subscriptions:
    """A user's opt-outs."""

    def __init__(self, store: Store, clock: Clock) -> None:
        self._store = store
        self._clock = clock

    async def set(
        self, me: Principal, scope: str, key: str, channels: dict[str, bool]
    ) -> dict[str, bool]:
        """Replace the switches for one group or category. ``{"*": false}`` unsubscribes from
        every channel, ``{"email": false}`` from one; a channel's own switch wins over "*".
        An empty map re-subscribes to everything.

        Raises:
            errors.InvalidRequest: an unknown scope or channel name.
        """
        if scope not in SCOPES:
            raise errors.NotFound("no such preference scope")
        known = {str(c) for c in Channel} | {ALL_CHANNELS}
        unknown = sorted(set(channels) - known)
        if unknown:
            raise errors.InvalidRequest(f"unknown channel(s): {', '.join(unknown)}")
        await self._store.put_preferences(
            me.tenant_id, me.user_id, SCOPES[scope], key, channels, self._clock.now()
        )
        return dict(sorted(channels.items()))

    async def all(self, me: Principal) -> dict[str, dict[str, dict[str, bool]]]:
        """Every switch of the user, by scope (groups, categories) and key."""
        stored = await self._store.preferences(me.tenant_id, me.user_id)
        return {plural: stored[singular] for plural, singular in SCOPES.items()}

    async def set_email(self, me: Principal, status: str) -> str:
        """Subscribe or unsubscribe the user's email address.

        Raises:
            errors.InvalidRequest: not `subscribed` or `unsubscribed`.
            errors.NotFound: the user has no email address.
            errors.Conflict: the address bounced or complained; only a new address clears that.
        """
        if status not in USER_EMAIL_STATES:
            raise errors.InvalidRequest("status must be subscribed or unsubscribed")
        after = await self._store.set_email_status(
            me.tenant_id, me.user_id, status, self._clock.now()
        )
        if after is None:
            raise errors.NotFound("no email address is known for this user")
        if after != status:
            raise errors.Conflict(f"the address is {after}; the producer must set a new one")
        return after
