"""Routing rules as a use case: tenants save, list, apply and test them; routing asks them
which channels, template, priority and TTL each event (and recipient) gets.

Rules are validated by `domain.rules` when saved; a refused rule is `errors.InvalidRule`, whose
message and ``details.field`` name the field (``rules[2].condition``). Routing reads a tenant's
rules at most once per `RULES_CACHE_SECONDS` per process; this process's own writes take effect
at once.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Final, TypeVar

from clarion.domain import errors, identifiers
from clarion.domain.channels import Channel
from clarion.domain.notifications import EventSpec, JsonObject
from clarion.domain.records import RuleApplied
from clarion.domain.routing import RoutePlan, channels_for, usable_channels
from clarion.domain.rules import (
    MAX_RULES,
    Decision,
    Rule,
    RuleChanges,
    StoredRule,
    context_for,
    digest_key_of,
    digested,
    load_rules_file,
    match,
    ordered,
    rule_from_json,
    rules_from_json,
)
from clarion.services.ports import Clock, RuleStore, Store

RULES_CACHE_SECONDS: Final = 5.0
"""How long routing trusts the rules it read for a tenant: a rule saved through another
process applies within this long, and a busy tenant's rules are read once per window, not once
per event."""

MAX_CACHED_TENANTS: Final = 10_000
"""Tenants whose rules one process keeps: past this the cache starts afresh (each entry is
re-read within `RULES_CACHE_SECONDS` anyway)."""

_T = TypeVar("_T")

Audience = Callable[[], Awaitable[list[tuple[str, JsonObject]]]]
"""Loads (external id, attributes) of an event's existing recipients, when a rule needs them."""


@dataclass(frozen=True, slots=True)
class SavedRule:
    """A rule as saved, and whether it was new."""

    stored: StoredRule
    created: bool


@dataclass(frozen=True, slots=True)
class Explanation:
    """What ``POST /v1/rules/test`` answers: which rule decides a sample event for a sample
    user, why, and what would be sent on this server.

    Attributes:
        decision: the matched rule (None: none matched) and the trace of every rule tried.
        channels: the channels the notification would go out on here (after the event's own
            channels override the rule's, ``push`` is expanded, channels without a transport
            are dropped, and websocket is added).
        channels_from: ``event`` (the event named them), ``rule`` or ``default``.
        template: the template name rendering would use (the rule's, else the event type).
        user: the recipient tested: its key, whether it was found stored, the attributes used.
    """

    decision: Decision
    channels: tuple[Channel, ...]
    channels_from: str
    template: str
    user: JsonObject

    def to_json(self) -> JsonObject:
        """As the API shows it."""
        rule = self.decision.rule
        return {
            "matched": None if rule is None else rule.key,
            "rule": None if rule is None else rule.to_json(),
            "trace": [attempt.to_json() for attempt in self.decision.trace],
            "channels": [str(c) for c in self.channels],
            "channels_from": self.channels_from,
            "template": self.template,
            "priority": "normal" if rule is None else str(rule.priority),
            "ttl": None if rule is None else rule.ttl,
            "enrichment": None
            if rule is None or rule.enrichment is None
            else rule.enrichment.to_json(),
            "escalation": None
            if rule is None or rule.escalation is None
            else rule.escalation.to_json(),
            "digest": None if rule is None or rule.digest is None else rule.digest.to_json(),
            "user": self.user,
        }


@dataclass(slots=True)
class _Cached:
    rules: tuple[Rule, ...]
    at: datetime


def applied(rule: Rule | None, spec: EventSpec | None = None) -> RuleApplied | None:
    """What `rule` sets on a notification it decides (`spec`, the event, keys its digest)."""
    if rule is None:
        return None
    batched = digested(rule)
    return RuleApplied(
        digest_window=rule.digest.window if rule.digest is not None and batched else None,
        digest_key=(
            digest_key_of(rule.digest, spec)
            if rule.digest is not None and spec is not None and batched
            else ""
        ),
        digest_channels=tuple(sorted(batched)),
        rule_key=rule.key,
        priority=str(rule.priority),
        ttl_seconds=rule.ttl,
        template_key=rule.template,
        resend_push_after=None if rule.escalation is None else rule.escalation.resend_push_after,
        email_if_unread_after=(
            None if rule.escalation is None else rule.escalation.email_if_unread_after
        ),
    )


def _reads_user(rules: Sequence[Rule], event_type: str) -> bool:
    # user.key varies per recipient as much as user.attributes does.
    return any(
        rule.condition is not None
        and rule.condition.reads("user")
        and rule.matches_type(event_type)
        for rule in rules
    )


class Ruling:
    """Saves, lists, applies and tests the tenants' routing rules, and decides with them."""

    def __init__(
        self,
        rules: RuleStore,
        store: Store,
        clock: Clock,
        *,
        channels: Collection[Channel],
        cache_seconds: float = RULES_CACHE_SECONDS,
    ) -> None:
        self._rules = rules
        self._store = store
        self._clock = clock
        self._channels = frozenset(channels)
        self._cache_seconds = cache_seconds
        self._cache: dict[str, _Cached] = {}

    # --- managing ------------------------------------------------------------------------------

    async def put(self, tenant_id: str, key: str, body: object) -> SavedRule:
        """Save the rule `body` (JSON-like) under `key`, replacing any rule of that key.

        Raises:
            errors.InvalidRule: the rule is not valid (the message and ``details.field`` name
                the field), or it would be the tenant's rule number `MAX_RULES` + 1.
        """
        rule = _checked(lambda: rule_from_json(body, key=key))
        existing = {s.rule.key for s in await self._rules.list_rules(tenant_id)}
        if key not in existing and len(existing) >= MAX_RULES:
            raise errors.InvalidRule(f"a tenant has at most {MAX_RULES} rules", field="key")
        stored, created = await self._rules.put_rule(tenant_id, rule, self._clock.now())
        self._forget(tenant_id)
        return SavedRule(stored, created)

    async def get(self, tenant_id: str, key: str) -> StoredRule:
        """The rule saved under `key`.

        Raises:
            errors.InvalidIdentifier: `key` cannot be a rule's key.
            errors.NotFound: the tenant has no rule of that key.
        """
        _check_key(key)
        found = await self._rules.get_rule(tenant_id, key)
        if found is None:
            raise errors.NotFound("no such rule")
        return found

    async def list_rules(self, tenant_id: str) -> list[StoredRule]:
        """The tenant's rules, in the order routing tries them."""
        found = {s.rule.key: s for s in await self._rules.list_rules(tenant_id)}
        return [found[rule.key] for rule in ordered(s.rule for s in found.values())]

    async def delete(self, tenant_id: str, key: str) -> None:
        """Forget the rule saved under `key`.

        Raises:
            errors.InvalidIdentifier: `key` cannot be a rule's key.
            errors.NotFound: the tenant has no rule of that key.
        """
        _check_key(key)
        if not await self._rules.delete_rule(tenant_id, key):
            raise errors.NotFound("no such rule")
        self._forget(tenant_id)

    async def apply(
        self, tenant_id: str, rules: Sequence[Rule], *, replace: bool = False
    ) -> RuleChanges:
        """Save every rule of `rules` at once; with `replace`, also delete the tenant's other
        rules, so that it has exactly `rules`.

        Raises:
            errors.InvalidRule: two rules share a key, or the tenant would have more than
                `MAX_RULES`.
        """
        keys = [rule.key for rule in rules]
        if len(set(keys)) != len(keys):
            raise errors.InvalidRule("two rules share a key", field="rules")
        kept = (
            0
            if replace
            else len({s.rule.key for s in await self._rules.list_rules(tenant_id)} - set(keys))
        )
        if kept + len(keys) > MAX_RULES:
            raise errors.InvalidRule(f"a tenant has at most {MAX_RULES} rules", field="rules")
        changes = await self._rules.apply_rules(
            tenant_id, rules, self._clock.now(), replace=replace
        )
        self._forget(tenant_id)
        return changes

    async def apply_file(
        self, tenant_id: str, text: str, format: str, *, replace: bool = False
    ) -> RuleChanges:
        """`apply` the rules of a rules file (`domain.rules.load_rules_file`).

        Raises:
            errors.InvalidRule: the file does not parse or a rule in it is not valid.
        """
        return await self.apply(
            tenant_id, _checked(lambda: load_rules_file(text, format)), replace=replace
        )

    @staticmethod
    def parse_rules(raw: object) -> tuple[Rule, ...]:
        """Validate ``{"rules": [...]}`` or a bare list of rules.

        Raises:
            errors.InvalidRule: naming the rule and field.
        """
        return _checked(lambda: rules_from_json(raw))

    # --- deciding ------------------------------------------------------------------------------

    async def decide(
        self,
        tenant_id: str,
        spec: EventSpec,
        *,
        user: str | None = None,
        user_attributes: Mapping[str, object] | None = None,
    ) -> Decision:
        """The rule that decides `spec` for one recipient (None: no rule matched), with the
        trace of every rule tried. Reads the tenant's rules through the cache."""
        rules = await self._rules_of(tenant_id)
        return match(rules, spec.type, context_for(spec, user=user, attributes=user_attributes))

    def channels_for(self, spec: EventSpec, decision: Decision) -> tuple[Channel, ...]:
        """The channels `decision` sends `spec` on here: the event's own when it names any
        (kept as they are: acceptance checked them against this server's transports), else
        the rule's with ``push`` expanded and only the channels this server has; websocket
        always. Channels the rule batches into a digest (`domain.rules.digested`) are left
        out: they go out later, in the digest."""
        if spec.channels is not None:
            chosen = channels_for(spec)
        else:
            chosen = usable_channels(decision.channels(None), self._channels)
        batched = digested(decision.rule)
        return tuple(c for c in chosen if str(c) not in batched)

    async def plan(self, tenant_id: str, spec: EventSpec, audience: Audience) -> RoutePlan:
        """How to route `spec`: its channels, and what the deciding rule sets.

        When a rule that fits the event type reads ``user`` in its condition, every recipient
        is decided alone (`audience` loads them): each channel then goes to the recipients
        whose rule sends it, and the notification carries the earliest (in rule order) of the
        rules that matched. Recipients named but not yet stored are decided with no
        attributes. Otherwise one decision serves everyone, with no query.
        """
        rules = await self._rules_of(tenant_id)
        if not rules:
            return RoutePlan(channels_for(spec))
        if not _reads_user(rules, spec.type):
            decision = match(rules, spec.type, context_for(spec))
            return RoutePlan(self.channels_for(spec, decision), rule=applied(decision.rule, spec))
        recipients = dict(await audience())
        for named in spec.recipients.users:
            recipients.setdefault(named, {})
        per_user: dict[str, tuple[Channel, ...]] = {}
        matched: dict[str, Rule] = {}
        for user, attributes in recipients.items():
            decision = match(rules, spec.type, context_for(spec, user=user, attributes=attributes))
            per_user[user] = self.channels_for(spec, decision)
            if decision.rule is not None:
                matched[decision.rule.key] = decision.rule
        every: dict[Channel, set[str]] = {}
        for user, channels in per_user.items():
            for channel in channels:
                every.setdefault(channel, set()).add(user)
        if not every:
            return RoutePlan(usable_channels(None, self._channels))
        only: dict[Channel, frozenset[str]] = {
            channel: frozenset(users)
            for channel, users in every.items()
            if channel != Channel.WEBSOCKET and len(users) < len(per_user)
        }
        first = ordered(matched.values())
        return RoutePlan(tuple(every), only=only, rule=applied(first[0], spec) if first else None)

    async def test(
        self,
        tenant_id: str,
        spec: EventSpec,
        *,
        user: str | None = None,
        attributes: Mapping[str, object] | None = None,
    ) -> Explanation:
        """Explain how `spec` would be routed for one recipient: `user`'s stored attributes
        are used unless `attributes` are given (a user not stored has none). Reads the rules
        afresh, not through the cache."""
        found = False
        if attributes is None and user is not None:
            stored = await self._store.get_user(tenant_id, user)
            found = stored is not None
            attributes = {} if stored is None else stored.attributes
        rules = tuple(s.rule for s in await self._rules.list_rules(tenant_id))
        decision = match(rules, spec.type, context_for(spec, user=user, attributes=attributes))
        rule = decision.rule
        if spec.channels is not None:
            source = "event"
        elif rule is not None and rule.channels is not None:
            source = "rule"
        else:
            source = "default"
        return Explanation(
            decision=decision,
            channels=self.channels_for(spec, decision),
            channels_from=source,
            template=rule.template if rule is not None and rule.template else spec.type,
            user={
                "id": user,
                "stored": found,
                "attributes": dict(attributes or {}),
            },
        )

    # -------------------------------------------------------------------------------------------

    async def _rules_of(self, tenant_id: str) -> tuple[Rule, ...]:
        now = self._clock.now()
        cached = self._cache.get(tenant_id)
        if cached is not None and 0 <= (now - cached.at).total_seconds() < self._cache_seconds:
            return cached.rules
        rules = tuple(s.rule for s in await self._rules.list_rules(tenant_id))
        if len(self._cache) >= MAX_CACHED_TENANTS:
            self._cache.clear()
        self._cache[tenant_id] = _Cached(rules, now)
        return rules

    def _forget(self, tenant_id: str) -> None:
        self._cache.pop(tenant_id, None)


def _checked(parse: Callable[[], _T]) -> _T:
    try:
        return parse()
    except errors.InvalidRule:
        raise
    except errors.InvalidRequest as error:
        raise errors.InvalidRule(error.message, **error.details) from None


def _check_key(key: str) -> None:
    if not identifiers.is_valid_key(key):
        raise errors.InvalidIdentifier(
            "a rule key is 1-255 printable characters without surrounding blanks"
        )
