"""Status webhooks: producers register URLs, and the dispatcher tells them what became of their
notifications.

Each webhook tails the audit trail from its cursor. A batch is the next status changes of the
tenant's inbox items in audit-trail order; the cursor moves past them only after a 2xx, so
delivery is at least once and in order (receivers de-duplicate by change id). A failure leaves
the cursor where it was and makes the webhook due again after an exponential backoff that
honours Retry-After; nothing is dropped while a receiver is down.
"""

from __future__ import annotations

import asyncio
import logging
import random
import re
import secrets
from dataclasses import dataclass
from datetime import timedelta

from clarion.domain import errors, outcomes
from clarion.services.ports import Clock, DueWebhook, WebhookInfo, WebhookSender, WebhookStore
from clarion.wire import webhooks as wire

log = logging.getLogger(__name__)

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
"""Webhook names: short, URL-safe, and fit the column (64)."""

SECRET_BYTES = 32  # 256-bit HMAC keys, the size of the SHA-256 output
LEASE_MARGIN_SECONDS = 30.0  # a lease outlives the request's own timeout by this much


@dataclass(frozen=True, slots=True)
class SavedWebhook:
    """A registration as saved, with the secret when Clarion generated it (shown this once)."""

    webhook: WebhookInfo
    created: bool
    generated_secret: str | None


class Callbacks:
    """Registers status webhooks and dispatches status changes to them."""

    def __init__(
        self,
        store: WebhookStore,
        sender: WebhookSender,
        clock: Clock,
        *,
        allowed_networks: tuple[wire.IPNetwork, ...],
        allow_http: bool,
        batch: int,
        commit_lag: float,
        poll_interval: float,
        retry_base: float,
        retry_max: float,
        timeout: float,
        concurrency: int,
        max_per_tenant: int,
        rng: random.Random | None = None,
    ) -> None:
        self._store = store
        self._sender = sender
        self._clock = clock
        self._allowed = allowed_networks
        self._allow_http = allow_http
        self._batch = batch
        self._commit_lag = timedelta(seconds=commit_lag)
        self._poll_interval = poll_interval
        self._retry_base = retry_base
        self._retry_max = retry_max
        self._lease_seconds = timeout + LEASE_MARGIN_SECONDS
        self._concurrency = concurrency
        self._max_per_tenant = max_per_tenant
        self._rng = rng or random.Random()

    # -----------------------------------------------------------------------------------------
    # registration

    async def register(
        self, tenant_id: str, name: str, *, url: str, secret: str | None, enabled: bool
    ) -> SavedWebhook:
        """Create or update the tenant's webhook `name`.

        Without `secret`, a new webhook gets a generated one (returned this once) and an
        existing one keeps its own.

        Raises:
            errors.InvalidRequest: a bad name, or a URL Clarion will not call (not https, a
                literal private address, credentials in it, ...).
            errors.Conflict: the tenant has as many webhooks as it may.
        """
        if not re.fullmatch(NAME_PATTERN, name):
            raise errors.InvalidRequest(
                "a webhook name is 1-64 letters, digits, '.', '_' or '-'",
                fields=[{"field": "path.name", "problem": "not a valid webhook name"}],
            )
        try:
            wire.parse_url(url, allow_http=self._allow_http, allowed=self._allowed)
        except wire.UnsafeUrl as exc:
            raise errors.InvalidRequest(
                str(exc), fields=[{"field": "body.url", "problem": str(exc)}]
            ) from None
        generated = secrets.token_urlsafe(SECRET_BYTES)
        info, created = await self._store.put_webhook(
            tenant_id,
            name,
            url=url,
            secret=secret,
            new_secret=generated,
            enabled=enabled,
            max_webhooks=self._max_per_tenant,
            now=self._clock.now(),
        )
        shown = generated if created and secret is None else None
        return SavedWebhook(webhook=info, created=created, generated_secret=shown)

    async def list_webhooks(self, tenant_id: str) -> list[WebhookInfo]:
        """The tenant's webhooks, without their secrets."""
        return await self._store.list_webhooks(tenant_id)

    async def get(self, tenant_id: str, name: str) -> WebhookInfo:
        """One of the tenant's webhooks.

        Raises:
            errors.NotFound: the tenant has no webhook of that name.
        """
        for webhook in await self._store.list_webhooks(tenant_id):
            if webhook.name == name:
                return webhook
        raise errors.NotFound("no such webhook")

    async def delete(self, tenant_id: str, name: str) -> None:
        """Forget a webhook; nothing more is sent to it.

        Raises:
            errors.NotFound: the tenant has no webhook of that name.
        """
        if not await self._store.delete_webhook(tenant_id, name):
            raise errors.NotFound("no such webhook")

    # -----------------------------------------------------------------------------------------
    # dispatching

    async def dispatch(self, webhook: DueWebhook) -> outcomes.Outcome | None:
        """Send the next batch of a leased webhook and record the result; the outcome, or None
        when there was nothing to send (the cursor only stepped over unreported entries)."""
        now = self._clock.now()
        batch = await self._store.status_changes(
            webhook.tenant_id,
            after=webhook.cursor,
            settled_before=now - self._commit_lag,
            limit=self._batch,
        )
        if not batch.changes:
            await self._store.webhook_delivered(webhook.id, cursor=batch.cursor, now=now)
            return None
        body = wire.payload(webhook.name, batch.changes)
        headers = {
            wire.SIGNATURE_HEADER: wire.signature(
                webhook.secret, body, timestamp=int(self._clock.now().timestamp())
            )
        }
        outcome = await self._sender.post(webhook.url, body, headers)
        now = self._clock.now()
        if isinstance(outcome, outcomes.Delivered):
            await self._store.webhook_delivered(webhook.id, cursor=batch.cursor, now=now)
            return outcome
        reason = outcome.reason
        hint = outcome.after_seconds if isinstance(outcome, outcomes.RetryLater) else None
        failures = webhook.failures + 1
        delay = wire.retry_delay(
            failures,
            base=self._retry_base,
            cap=self._retry_max,
            hint=hint,
            jitter=self._rng.random(),
        )
        await self._store.webhook_failed(
            webhook.id, error=reason, retry_at=now + timedelta(seconds=delay), now=now
        )
        log.warning(
            "status webhook failed; retrying later",
            extra={
                "action": "webhook_failed",
                "tenant": webhook.tenant_id,
                "webhook": webhook.name,
                "failures": failures,
                "retry_in": round(delay, 3),
                "reason": reason,
            },
        )
        return outcome

    async def dispatch_due(self, *, limit: int) -> list[DueWebhook]:
        """Lease up to `limit` webhooks that have changes to send."""
        now = self._clock.now()
        return await self._store.claim_webhooks(
            now=now,
            settled_before=now - self._commit_lag,
            lease_seconds=self._lease_seconds,
            limit=limit,
        )

    async def run(self, stop: asyncio.Event) -> None:
        """Dispatch until `stop` is set, up to `concurrency` webhooks at once, then let the
        requests in flight finish."""
        running: set[asyncio.Task[None]] = set()
        stopping = asyncio.ensure_future(stop.wait())
        try:
            while not stop.is_set():
                free = self._concurrency - len(running)
                claimed: list[DueWebhook] = []
                if free > 0:
                    try:
                        claimed = await self.dispatch_due(limit=free)
                    except Exception:
                        log.exception(
                            "looking for due webhooks failed", extra={"action": "webhooks_failed"}
                        )
                for webhook in claimed:
                    running.add(asyncio.create_task(self._guarded(webhook)))
                if claimed and len(claimed) == free:
                    # Every slot is busy: wait for one to free up (or for stop).
                    await asyncio.wait({*running, stopping}, return_when=asyncio.FIRST_COMPLETED)
                else:
                    await asyncio.wait(
                        {*running, stopping},
                        timeout=self._poll_interval,
                        return_when=asyncio.FIRST_COMPLETED,
                    )
                running = {t for t in running if not t.done()}
            if running:
                await asyncio.wait(running)
        finally:
            stopping.cancel()
            for task in running:
                task.cancel()
            await self._sender.close()

    async def _guarded(self, webhook: DueWebhook) -> None:
        # A failure to record an outcome leaves the lease to run out; the webhook then comes due
        # again, so nothing is lost and nothing spins.
        try:
            await self.dispatch(webhook)
        except Exception:
            log.exception(
                "status webhook dispatch failed",
                extra={
                    "action": "webhook_dispatch_failed",
                    "tenant": webhook.tenant_id,
                    "webhook": webhook.name,
                },
            )
