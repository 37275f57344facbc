"""Pausing a provider credential the provider refused.

A 403 on the signing key (APNs `InvalidProviderToken`, a revoked certificate, FCM's
`THIRD_PARTY_AUTH_ERROR`, a VAPID key the push service refuses) says nothing about the message
and everything about the credential: every other push signed with it will be refused too, and
providers throttle senders that keep presenting a bad key. So the first `AuthFailed` pauses the
credential (the store records why, the API shows it, an operator alert is logged); transports
send nothing on a paused credential and answer `RetryLater` instead, so the deliveries wait with
backoff until the tenant replaces the credential, which un-pauses it.

This wraps any `Transport`, so the rule is written once for every provider.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Protocol

from clarion.domain.channels import Channel
from clarion.domain.outcomes import AuthFailed, Outcome
from clarion.services.ports import Claimed, Transport

log = logging.getLogger(__name__)


class Pauser(Protocol):
    """What pausing needs of `services.credentials.Credentials`."""

    async def pause(self, tenant_id: str, credential_id: str, reason: str) -> bool:
        """Stop using the credential until it is replaced; False when it is gone."""
        ...


class PausingTransport:
    """A `Transport` that pauses the credentials its provider refuses."""

    def __init__(self, inner: Transport, credentials: Pauser) -> None:
        self._inner = inner
        self._credentials = credentials
        self.channel: Channel = inner.channel

    @property
    def inner(self) -> Transport:
        """The wrapped transport."""
        return self._inner

    async def send(self, batch: Sequence[Claimed]) -> Sequence[Outcome]:
        """The inner transport's outcomes, after pausing every credential one of them blames."""
        results = await self._inner.send(batch)
        refused: dict[tuple[str, str], str] = {}
        for claimed, outcome in zip(batch, results, strict=False):
            if isinstance(outcome, AuthFailed) and outcome.credential_id:
                refused.setdefault((claimed.tenant_id, outcome.credential_id), outcome.reason)
        for (tenant_id, credential_id), reason in refused.items():
            try:
                await self._credentials.pause(tenant_id, credential_id, reason)
            except Exception:
                # The deliveries are retried either way; the next refusal pauses it again.
                log.exception(
                    "could not pause a refused credential",
                    extra={"tenant": tenant_id, "credential": credential_id},
                )
        return results
