"""Enrichment: extra template context fetched before an email or push is rendered.

A rule's ``enrichment`` (`domain.rules.Enrichment`) asks for

- ``attributes``: the notification's group's stored attributes, as ``group``, and those merged
  with the user's (the user's win), as ``attributes``; the user's own stay in
  ``user.attributes`` either way;
- ``webhook``: the tenant's enrichment webhook (``PUT /v1/settings``), POSTed once per event
  and batch of recipients, signed like status webhooks (`wire.webhooks.signature`), through
  the same SSRF-guarded client, with a 2 s budget. Its JSON answer
  ``{"event": {...}, "users": {"<user id>": {...}}}`` becomes ``enrichment``: the event part
  overlaid with the user's part. Answers are cached per (tenant, event, user) for
  `CACHE_SECONDS`, so retries and later batches of one event do not ask again.

When the webhook fails (timeout, refusal, non-2xx, an answer that is not that JSON), the rule's
``on_failure`` decides: ``send`` renders without it, ``retry`` gives the delivery a
`RetryLater` and ``fail`` a `Rejected`, both with the reason ``enrichment failed: <why>``.
The rule is the one routing stored on the notification (``notifications.rule_key``), read
through a per-process cache of the tenant's rules like `services.ruling` keeps.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final, Protocol

from clarion.domain import errors, outcomes
from clarion.domain.outcomes import Outcome
from clarion.domain.rules import Enrichment, OnFailure, Rule, StoredRule
from clarion.services.ports import Claimed, Clock, EnrichmentSource, EnrichmentWebhook
from clarion.wire import webhooks as wire

log = logging.getLogger(__name__)

TIMEOUT_SECONDS: Final = 2.0
"""The whole exchange with the tenant's webhook (issue 8): rendering waits on it, so it must
answer about as fast as a template renders, or be skipped by the rule's policy."""

CACHE_SECONDS: Final = 300.0
"""How long an answer serves an event's retries and later batches: long enough for the
backoff's first several attempts, short enough that stale data does not linger."""

RULES_CACHE_SECONDS: Final = 5.0
"""As `services.ruling.RULES_CACHE_SECONDS`: a tenant's rule change shows within seconds."""

MAX_CACHED: Final = 100_000
"""Cached answers per process (users and events); past it the cache starts over."""

MAX_RECIPIENTS: Final = 500
"""User ids in one request: a delivery batch's worth, so one batch is one request per event."""

MAX_CONCURRENT: Final = 8
"""Requests in flight for one batch (one per event): a slow tenant costs its own batch only."""

MIN_SECRET_LENGTH: Final = 16
MAX_SECRET_LENGTH: Final = 200

Variables = dict[str, Any]


class EnrichmentStore(Protocol):
    """What enriching needs of the store."""

    async def enrichment_webhook(self, tenant_id: str) -> EnrichmentWebhook | None: ...

    async def put_enrichment_webhook(
        self, tenant_id: str, webhook: EnrichmentWebhook | None
    ) -> bool: ...

    async def enrichment_sources(
        self, tenant_id: str, notification_ids: Sequence[str]
    ) -> dict[str, EnrichmentSource]: ...


class RuleSource(Protocol):
    """The tenant's rules (the rules store)."""

    async def list_rules(self, tenant_id: str) -> list[StoredRule]: ...


class Fetcher(Protocol):
    """POSTs to a tenant's URL through the SSRF guard and returns the answer with its body
    (`adapters.webhooks_http.HttpWebhookSender.fetch`)."""

    async def fetch(
        self, url: str, body: bytes, headers: Mapping[str, str]
    ) -> wire.Answer | outcomes.RetryLater: ...


class EnrichmentFailed(Exception):
    """The webhook gave nothing usable; the message says why."""


@dataclass(slots=True)
class _Rules:
    by_key: dict[str, Rule]
    at: datetime


@dataclass(slots=True)
class _Answer:
    data: dict[str, Any]
    at: datetime


@dataclass(slots=True)
class _Event:
    event_id: str
    type: str
    users: list[str] = field(default_factory=list)


class Enriching:
    """Saves the tenant's enrichment webhook, and gives each claim its extra template context."""

    def __init__(
        self,
        store: EnrichmentStore,
        rules: RuleSource,
        fetcher: Fetcher,
        clock: Clock,
        *,
        allowed_networks: tuple[wire.IPNetwork, ...] = (),
        allow_http: bool = False,
        timeout: float = TIMEOUT_SECONDS,
        cache_seconds: float = CACHE_SECONDS,
    ) -> None:
        self._store = store
        self._rules = rules
        self._fetcher = fetcher
        self._clock = clock
        self._allowed = allowed_networks
        self._allow_http = allow_http
        self._timeout = timeout
        self._cache_seconds = cache_seconds
        self._rule_cache: dict[str, _Rules] = {}
        self._answers: dict[tuple[str, str, str | None], _Answer] = {}

    # --- the setting ---------------------------------------------------------------------------

    def checked(self, url: str, secret: str) -> EnrichmentWebhook:
        """`url` and `secret` as a webhook Clarion will call.

        Raises:
            errors.InvalidRequest: a URL Clarion will not call, a secret too short or long.
        """
        try:
            wire.parse_url(url, allow_http=self._allow_http, allowed=self._allowed)
        except wire.UnsafeUrl as exc:
            raise _invalid("enrichment.url", str(exc)) from None
        if not MIN_SECRET_LENGTH <= len(secret) <= MAX_SECRET_LENGTH:
            raise _invalid(
                "enrichment.secret",
                f"between {MIN_SECRET_LENGTH} and {MAX_SECRET_LENGTH} characters",
            )
        return EnrichmentWebhook(url=url, secret=secret)

    async def put_webhook(self, tenant_id: str, webhook: EnrichmentWebhook | None) -> None:
        """Set or (None) remove the tenant's enrichment webhook.

        Raises:
            errors.NotFound: no such tenant.
        """
        if not await self._store.put_enrichment_webhook(tenant_id, webhook):
            raise errors.NotFound("no such tenant")

    # --- enriching -----------------------------------------------------------------------------

    async def context(self, tenant_id: str, claims: Sequence[Claimed]) -> list[Variables | Outcome]:
        """Per claim, in order: the extra template variables (``group``, ``attributes``,
        ``enrichment``; empty when its rule asks for none), or the outcome the rule's policy
        gives a failed enrichment."""
        found: list[Variables | Outcome] = [{} for _ in claims]
        rules = await self._rules_of(tenant_id)
        if not any(r.enrichment is not None for r in rules.values()):
            return found
        sources = await self._store.enrichment_sources(
            tenant_id, [c.item.notification_id for c in claims]
        )
        wanted: list[Enrichment | None] = []
        for claimed in claims:
            source = sources.get(claimed.item.notification_id)
            rule = None if source is None or source.rule_key is None else rules.get(source.rule_key)
            wanted.append(None if rule is None else rule.enrichment)
        failures = await self._fetch_missing(tenant_id, claims, wanted)
        now = self._clock.now()
        for index, (claimed, enrichment) in enumerate(zip(claims, wanted, strict=True)):
            if enrichment is None:
                continue
            variables: Variables = {}
            if enrichment.attributes:
                source = sources[claimed.item.notification_id]
                variables["group"] = dict(source.group_attributes)
                variables["attributes"] = {**source.group_attributes, **claimed.attributes}
            if enrichment.webhook:
                failure = failures.get(claimed.item.event_id)
                if failure is not None:
                    outcome = _on_failure(enrichment.on_failure, failure)
                    if outcome is not None:
                        found[index] = outcome
                        continue
                    variables["enrichment"] = {}
                else:
                    event = self._cached(tenant_id, claimed.item.event_id, None, now) or {}
                    user = self._cached(tenant_id, claimed.item.event_id, claimed.item.user, now)
                    variables["enrichment"] = {**event, **(user or {})}
            found[index] = variables
        return found

    async def _fetch_missing(
        self, tenant_id: str, claims: Sequence[Claimed], wanted: Sequence[Enrichment | None]
    ) -> dict[str, str]:
        """Ask the webhook about every (event, user) not cached; the failures by event id."""
        now = self._clock.now()
        events: dict[str, _Event] = {}
        for claimed, enrichment in zip(claims, wanted, strict=True):
            if enrichment is None or not enrichment.webhook:
                continue
            item = claimed.item
            if self._cached(tenant_id, item.event_id, item.user, now) is not None:
                continue
            event = events.setdefault(item.event_id, _Event(item.event_id, item.type))
            if item.user not in event.users:
                event.users.append(item.user)
        if not events:
            return {}
        webhook = await self._store.enrichment_webhook(tenant_id)
        if webhook is None:
            why = "the tenant has no enrichment webhook (PUT /v1/settings)"
            return dict.fromkeys(events, why)
        limit = asyncio.Semaphore(MAX_CONCURRENT)
        failures: dict[str, str] = {}

        async def ask(event: _Event, users: list[str]) -> None:
            async with limit:
                try:
                    answer = await self._ask(tenant_id, webhook, event, users)
                except EnrichmentFailed as exc:
                    failures[event.event_id] = str(exc)
                    log.warning(
                        "enrichment failed",
                        extra={"tenant": tenant_id, "event_id": event.event_id, "reason": exc},
                    )
                    return
            self._remember(tenant_id, event.event_id, users, answer)

        async with asyncio.TaskGroup() as group:
            for event in events.values():
                for start in range(0, len(event.users), MAX_RECIPIENTS):
                    group.create_task(ask(event, event.users[start : start + MAX_RECIPIENTS]))
        return failures

    async def _ask(
        self, tenant_id: str, webhook: EnrichmentWebhook, event: _Event, users: list[str]
    ) -> dict[str, Any]:
        body = json.dumps(
            {
                "event_id": event.event_id,
                "type": event.type,
                "tenant": tenant_id,
                "recipients": users,
            },
            separators=(",", ":"),
        ).encode()
        timestamp = int(self._clock.now().timestamp())
        headers = {wire.SIGNATURE_HEADER: wire.signature(webhook.secret, body, timestamp=timestamp)}
        try:
            async with asyncio.timeout(self._timeout):
                answer = await self._fetcher.fetch(webhook.url, body, headers)
        except TimeoutError:
            raise EnrichmentFailed("timeout") from None
        if isinstance(answer, outcomes.RetryLater):
            raise EnrichmentFailed(answer.reason)
        return parse_answer(answer)

    def _remember(
        self, tenant_id: str, event_id: str, users: Sequence[str], answer: Mapping[str, Any]
    ) -> None:
        if len(self._answers) + len(users) + 1 > MAX_CACHED:
            self._answers.clear()
        now = self._clock.now()
        self._answers[(tenant_id, event_id, None)] = _Answer(dict(answer.get("event", {})), now)
        answered = answer.get("users", {})
        for user in users:
            self._answers[(tenant_id, event_id, user)] = _Answer(dict(answered.get(user, {})), now)

    def _cached(
        self, tenant_id: str, event_id: str, user: str | None, now: datetime
    ) -> dict[str, Any] | None:
        found = self._answers.get((tenant_id, event_id, user))
        if found is None or not 0 <= (now - found.at).total_seconds() < self._cache_seconds:
            return None
        return found.data

    async def _rules_of(self, tenant_id: str) -> dict[str, Rule]:
        now = self._clock.now()
        cached = self._rule_cache.get(tenant_id)
        if cached is not None and 0 <= (now - cached.at).total_seconds() < RULES_CACHE_SECONDS:
            return cached.by_key
        by_key = {s.rule.key: s.rule for s in await self._rules.list_rules(tenant_id)}
        if len(self._rule_cache) >= MAX_CACHED:
            self._rule_cache.clear()
        self._rule_cache[tenant_id] = _Rules(by_key, now)
        return by_key


def parse_answer(answer: wire.Answer) -> dict[str, Any]:
    """The webhook's JSON answer, checked: ``{"event": {...}, "users": {"<id>": {...}}}``, both
    optional.

    Raises:
        EnrichmentFailed: not a 2xx, too large, not JSON, or not that shape.
    """
    if not 200 <= answer.status < 300:
        raise EnrichmentFailed(f"HTTP {answer.status}")
    if answer.truncated:
        raise EnrichmentFailed("the answer is too large")
    try:
        data = json.loads(answer.body)
    except (ValueError, UnicodeDecodeError):
        raise EnrichmentFailed("the answer is not JSON") from None
    if not isinstance(data, dict):
        raise EnrichmentFailed("the answer is not a JSON object")
    event = data.get("event", {})
    users = data.get("users", {})
    if not isinstance(event, dict):
        raise EnrichmentFailed("'event' is not an object")
    if not isinstance(users, dict) or not all(isinstance(v, dict) for v in users.values()):
        raise EnrichmentFailed("'users' is not an object of objects")
    return {"event": event, "users": users}


def _on_failure(policy: OnFailure, reason: str) -> Outcome | None:
    """The outcome a failed enrichment gives a delivery under `policy`; None: send without it."""
    why = f"enrichment failed: {reason}"
    if policy is OnFailure.RETRY:
        return outcomes.RetryLater(why)
    if policy is OnFailure.FAIL:
        return outcomes.Rejected(why)
    return None


def _invalid(field: str, problem: str) -> errors.InvalidRequest:
    return errors.InvalidRequest(
        f"{field}: {problem}", fields=[{"field": f"body.{field}", "problem": problem}]
    )
