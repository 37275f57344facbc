"""Routing rules: which channels, template, priority, TTL and follow-ups an event gets.

A tenant keeps a set of rules (``PUT /v1/rules/{key}``, or a file applied with
``clarion rules apply FILE``). For each event and recipient the router tries them in a fixed
order, `Rule.order` then `Rule.key`, and the first whose event type pattern and condition both
hold decides; `match` also returns the trace of every rule tried, which ``POST /v1/rules/test``
shows. An event that names its channels keeps them: rules still pick its template, priority and
the rest (`Decision.channels`).

A rule as JSON (every field but ``key`` and ``event_type`` optional)::

    {
      "key": "comments",
      "event_type": "comment.*",
      "condition": "event.data.author != user.key",
      "channels": ["websocket"],
      "template": "comment",
      "priority": "normal",
      "ttl": 86400,
      "enrichment": {"attributes": true, "webhook": false, "on_failure": "send"},
      "escalation": {"resend_push_after": 300, "email_if_unread_after": 3600},
      "digest": {"window": 1800, "key": "event.data.thread_id", "channels": ["email"]},
      "order": 10
    }

Rules files are JSON (``{"rules": [...]}`` or a bare list) or TOML (``[[rules]]`` tables): PyYAML
is not one of Clarion's pinned dependencies, so YAML is not read.
"""

from __future__ import annotations

import json
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any, Final, NoReturn, TypeVar

from clarion.domain import identifiers
from clarion.domain.channels import PUSH, PUSH_ALIAS, Channel
from clarion.domain.errors import InvalidRequest
from clarion.domain.expressions import Expression, Path, glob_match, holds, parse, parse_path
from clarion.domain.notifications import EventSpec, JsonObject

ROOTS: Final = frozenset({"event", "user"})
"""The names a condition's paths start with: ``event.type``, ``event.data...``, ``user.key``,
``user.attributes...`` (see `context_for`)."""

CHANNEL_NAMES: Final = frozenset({*(str(c) for c in Channel), PUSH_ALIAS})
"""What a rule may name as a channel: each transport, or ``push`` for every push provider."""

MAX_RULES: Final = 500
"""Rules in one file or one tenant: each event may try them all, each costing up to
`expressions.MAX_NODES` steps, so this bounds routing work per recipient."""

MAX_FILE_LENGTH: Final = 1_048_576
"""Characters in a rules file: 500 generous rules fit ten times over."""

MAX_CHANNELS: Final = 16
"""Channel names in one list: there are only a handful, so more is a mistake, not a need."""

MAX_TTL: Final = 2_419_200
"""28 days, FCM's longest `ttl`; longer would be cut short by the provider anyway."""

MAX_DELAY: Final = 604_800
"""A week: the longest escalation delay or digest window. Later than that, a reminder is news."""

MIN_DIGEST_WINDOW: Final = 60
"""A digest batches over at least a minute; shorter is a stream of single-item digests."""

MAX_ORDER: Final = 1_000_000
"""`order` stays within +/- this, so it fits every integer column and leaves room to insert."""

_RULE_FIELDS: Final = frozenset(
    {
        "key",
        "event_type",
        "condition",
        "channels",
        "template",
        "priority",
        "ttl",
        "enrichment",
        "escalation",
        "digest",
        "order",
    }
)


class Priority(StrEnum):
    """How urgent the notifications a rule picks are. Critical ones go through quiet hours."""

    NORMAL = "normal"
    CRITICAL = "critical"


class OnFailure(StrEnum):
    """What enrichment does when its source fails or times out."""

    SEND = "send"  # send what the event carries, unenriched
    RETRY = "retry"  # try the enrichment again later, with backoff
    FAIL = "fail"  # give up on the notification; the failure is recorded


@dataclass(frozen=True, slots=True)
class Enrichment:
    """Extra data fetched before rendering: the user's stored attributes, the tenant's
    enrichment webhook, or both."""

    attributes: bool = False
    webhook: bool = False
    on_failure: OnFailure = OnFailure.SEND

    def to_json(self) -> JsonObject:
        """As `rule_from_json` reads it."""
        return {
            "attributes": self.attributes,
            "webhook": self.webhook,
            "on_failure": str(self.on_failure),
        }


@dataclass(frozen=True, slots=True)
class Escalation:
    """Follow-ups for a notification that is not acknowledged in time (seconds after sending).

    Attributes:
        resend_push_after: resend the push once if no device reported it `received` by then.
        email_if_unread_after: send it by email if it was not `read` anywhere by then.
    """

    resend_push_after: int | None = None
    email_if_unread_after: int | None = None

    def to_json(self) -> JsonObject:
        """As `rule_from_json` reads it."""
        return {
            "resend_push_after": self.resend_push_after,
            "email_if_unread_after": self.email_if_unread_after,
        }


@dataclass(frozen=True, slots=True)
class Digest:
    """Batch a recipient's matching events over `window` seconds, into one message per `key`
    value (one per recipient when `key` is None), sent on `channels`.

    The rule's own `Rule.channels` still go out at once: "inbox now, email digest every 30
    minutes" is ``channels=["websocket"]`` with ``digest.channels=["email"]``.
    """

    window: int
    key: Path | None = None
    channels: tuple[str, ...] = (str(Channel.EMAIL),)

    def to_json(self) -> JsonObject:
        """As `rule_from_json` reads it."""
        return {
            "window": self.window,
            "key": None if self.key is None else str(self.key),
            "channels": list(self.channels),
        }


@dataclass(frozen=True, slots=True)
class Rule:
    """One routing rule of a tenant.

    Attributes:
        key: the rule's name within its tenant (``PUT /v1/rules/{key}``).
        event_type: an exact event type, or a pattern where ``*`` is any run of characters
            (dots included) and ``?`` one character; case-sensitive.
        condition: must also hold, over `context_for`'s ``event`` and ``user``; None: always.
        channels: channel names (`CHANNEL_NAMES`; ``push`` is expanded by the router to the
            providers this server has); None: the server's defaults.
        template: the template name to render with instead of the event type; None: the type.
        priority: critical notifications go through the recipient's quiet hours.
        ttl: seconds after which an undelivered push is no longer worth delivering.
        enrichment: what to fetch before rendering; None: nothing.
        escalation: follow-ups when not received or read in time; None: none.
        digest: batch the event into a periodic digest as well; None: no digest.
        order: rules are tried by ascending `order`, then by `key`.
    """

    key: str
    event_type: str
    condition: Expression | None = None
    channels: tuple[str, ...] | None = None
    template: str | None = None
    priority: Priority = Priority.NORMAL
    ttl: int | None = None
    enrichment: Enrichment | None = None
    escalation: Escalation | None = None
    digest: Digest | None = None
    order: int = 0

    def matches_type(self, event_type: str) -> bool:
        """Whether `event_type` fits this rule's pattern."""
        return glob_match(event_type, self.event_type)

    @property
    def reads_user_attributes(self) -> bool:
        """Whether the condition reads ``user.attributes``, so routing must load them first."""
        return self.condition is not None and self.condition.reads("user", "attributes")

    def to_json(self) -> JsonObject:
        """The rule as stored and as the API shows it; `rule_from_json` reads it back."""
        return {
            "key": self.key,
            "event_type": self.event_type,
            "condition": None if self.condition is None else self.condition.source,
            "channels": None if self.channels is None else list(self.channels),
            "template": self.template,
            "priority": str(self.priority),
            "ttl": self.ttl,
            "enrichment": None if self.enrichment is None else self.enrichment.to_json(),
            "escalation": None if self.escalation is None else self.escalation.to_json(),
            "digest": None if self.digest is None else self.digest.to_json(),
            "order": self.order,
        }


DIGEST_CHANNELS: Final = frozenset({str(Channel.EMAIL)})
"""The channels a digest can go out on: a digest renders a list, which only email can carry.
Other channels a rule's digest names are sent at once, as if there were no digest."""

MAX_DIGEST_KEY: Final = 255
"""Characters of a digest key's value kept (the column's width); longer values are cut."""


def digest_key_of(digest: Digest, spec: EventSpec) -> str:
    """The value that keys `spec`'s digest: the event's field at `Digest.key` as text (a
    string as it is, anything else as compact JSON), '' without a key or when it is missing."""
    if digest.key is None:
        return ""
    current: object = context_for(spec)
    for step in digest.key.parts:
        if isinstance(step, str) and isinstance(current, Mapping):
            current = current.get(step)
        elif (
            isinstance(step, int)
            and isinstance(current, list)
            and -len(current) <= step < len(current)
        ):
            current = current[step]
        else:
            return ""
    if current is None:
        return ""
    text = current if isinstance(current, str) else json.dumps(current, separators=(",", ":"))
    return text[:MAX_DIGEST_KEY]


def digested(rule: Rule | None) -> frozenset[str]:
    """The channels `rule` batches into its digest instead of sending at once."""
    if rule is None or rule.digest is None:
        return frozenset()
    return frozenset(rule.digest.channels) & DIGEST_CHANNELS


# --- matching ----------------------------------------------------------------------------------


class Verdict(StrEnum):
    """What became of one rule `match` tried."""

    MATCHED = "matched"
    TYPE_MISMATCH = "type_mismatch"
    CONDITION_FALSE = "condition_false"


@dataclass(frozen=True, slots=True)
class Attempt:
    """One line of a `Decision`'s trace: a rule tried, its verdict, and why, in words."""

    rule: str
    verdict: Verdict
    reason: str

    def to_json(self) -> JsonObject:
        """As ``POST /v1/rules/test`` shows it."""
        return {"rule": self.rule, "verdict": str(self.verdict), "reason": self.reason}


@dataclass(frozen=True, slots=True)
class Decision:
    """The outcome of `match`: the rule that decides (None: no rule matched) and the trace."""

    rule: Rule | None
    trace: tuple[Attempt, ...]

    def channels(self, named_by_event: tuple[str, ...] | None) -> tuple[str, ...] | None:
        """The channels to send on: the event's own when it names any (they override rules),
        else the matched rule's; None when neither says, meaning the server's defaults."""
        if named_by_event is not None:
            return named_by_event
        return None if self.rule is None else self.rule.channels

    def to_json(self) -> JsonObject:
        """As ``POST /v1/rules/test`` shows it."""
        return {
            "rule": None if self.rule is None else self.rule.to_json(),
            "trace": [attempt.to_json() for attempt in self.trace],
        }


def ordered(rules: Iterable[Rule]) -> tuple[Rule, ...]:
    """`rules` in the order they are tried: ascending `Rule.order`, then `Rule.key`."""
    return tuple(sorted(rules, key=lambda rule: (rule.order, rule.key)))


def match(rules: Iterable[Rule], event_type: str, context: Mapping[str, object]) -> Decision:
    """The first rule, in `ordered` order, whose type pattern fits `event_type` and whose
    condition holds over `context` (see `context_for`), with the trace of every rule tried.

    Rules after the one that matched are not tried and not in the trace.
    """
    trace: list[Attempt] = []
    for rule in ordered(rules):
        if not rule.matches_type(event_type):
            reason = f"event type {event_type!r} does not match {rule.event_type!r}"
            trace.append(Attempt(rule.key, Verdict.TYPE_MISMATCH, reason))
        elif rule.condition is not None and not holds(rule.condition, context):
            reason = f"condition is false: {rule.condition.source}"
            trace.append(Attempt(rule.key, Verdict.CONDITION_FALSE, reason))
        else:
            condition = "" if rule.condition is None else f" and {rule.condition.source}"
            reason = f"event type {event_type!r} matches {rule.event_type!r}{condition}"
            trace.append(Attempt(rule.key, Verdict.MATCHED, reason))
            return Decision(rule, tuple(trace))
    return Decision(None, tuple(trace))


def needs_user_attributes(rules: Iterable[Rule], event_type: str) -> bool:
    """Whether some rule that could be tried for `event_type` reads ``user.attributes``.

    Conservative: it may say yes when an earlier rule would have matched without them.
    """
    return any(rule.reads_user_attributes and rule.matches_type(event_type) for rule in rules)


def context_for(
    spec: EventSpec, *, user: str | None = None, attributes: Mapping[str, object] | None = None
) -> dict[str, object]:
    """What a condition reads for `spec` and one recipient: ``event`` (``type``, ``data``,
    ``category``, ``group``, ``title``, ``body``) and ``user`` (``key``, ``attributes``)."""
    return {
        "event": {
            "type": spec.type,
            "data": spec.data,
            "category": spec.category,
            "group": spec.group,
            "title": spec.title,
            "body": spec.body,
        },
        "user": {"key": user, "attributes": {} if attributes is None else dict(attributes)},
    }


# --- validation --------------------------------------------------------------------------------


def _at(where: str, name: str) -> str:
    return f"{where}.{name}" if where else name


def _refuse(where: str, problem: str) -> NoReturn:
    raise InvalidRequest(f"{where}: {problem}", field=where)


def _object(raw: object, where: str) -> Mapping[str, Any]:
    if not isinstance(raw, dict):
        _refuse(where, f"must be an object, not {_json_type(raw)}")
    return raw


def _json_type(raw: object) -> str:
    if raw is None:
        return "null"
    if isinstance(raw, bool):
        return "a boolean"
    if isinstance(raw, int | float):
        return "a number"
    if isinstance(raw, str):
        return "a string"
    if isinstance(raw, list):
        return "a list"
    if isinstance(raw, dict):
        return "an object"
    return type(raw).__name__


def _no_unknown_fields(raw: Mapping[str, Any], known: Iterable[str], where: str) -> None:
    known = sorted(known)
    for name in raw:
        if name not in known:
            # A typo (`chanels`) must not be silently dropped, leaving the rule doing less.
            _refuse(_at(where, str(name)), f"unknown field (the fields are: {', '.join(known)})")


def _key(raw: object, where: str, what: str) -> str:
    if not isinstance(raw, str):
        _refuse(where, f"must be a string, not {_json_type(raw)}")
    if not identifiers.is_valid_key(raw):
        _refuse(
            where,
            f"{what} must be 1 to {identifiers.MAX_KEY_LENGTH} printable characters "
            "without surrounding blanks",
        )
    return raw


def _seconds(raw: object, where: str, low: int, high: int) -> int:
    if not isinstance(raw, int) or isinstance(raw, bool):
        _refuse(where, f"must be a whole number of seconds, not {_json_type(raw)}")
    if not low <= raw <= high:
        _refuse(where, f"must be between {low} and {high} seconds, not {raw}")
    return raw


_E = TypeVar("_E", bound=StrEnum)


def _bool(raw: object, where: str) -> bool:
    if not isinstance(raw, bool):
        _refuse(where, f"must be true or false, not {_json_type(raw)}")
    return raw


def _choice(raw: object, where: str, kind: type[_E]) -> _E:
    choices = [str(member) for member in kind]
    if not isinstance(raw, str) or raw not in choices:
        _refuse(where, f"must be one of {', '.join(choices)}, not {json.dumps(raw)[:40]}")
    return kind(raw)


def _channels(raw: object, where: str) -> tuple[str, ...]:
    if not isinstance(raw, list):
        _refuse(where, f"must be a list of channel names, not {_json_type(raw)}")
    if len(raw) > MAX_CHANNELS:
        _refuse(where, f"names more than {MAX_CHANNELS} channels")
    for i, name in enumerate(raw):
        if not isinstance(name, str) or name not in CHANNEL_NAMES:
            _refuse(
                f"{where}[{i}]",
                f"unknown channel {json.dumps(name)[:40]} "
                f"(the channels are: {', '.join(sorted(CHANNEL_NAMES))})",
            )
    return identifiers.unique_in_order(raw)


def _pattern(raw: object, where: str) -> str:
    pattern = _key(raw, where, "an event type pattern")
    if "[" in pattern or "]" in pattern:
        # fnmatch would read brackets as a character class, we read them literally; refusing
        # them keeps a pattern from meaning two things.
        _refuse(where, "'[' and ']' are not allowed: the wildcards are * and ?")
    return pattern


def _condition(raw: object, where: str) -> Expression | None:
    if raw is None:
        return None
    if not isinstance(raw, str):
        _refuse(where, f"must be an expression in a string, not {_json_type(raw)}")
    try:
        return parse(raw, roots=ROOTS)
    except InvalidRequest as error:
        raise InvalidRequest(f"{where}: {error.message}", field=where, **error.details) from None


def _enrichment(raw: object, where: str) -> Enrichment | None:
    if raw is None or raw == "none":
        return None
    fields = _object(raw, where)
    _no_unknown_fields(fields, ("attributes", "webhook", "on_failure"), where)
    enrichment = Enrichment(
        attributes=_bool(fields.get("attributes", False), _at(where, "attributes")),
        webhook=_bool(fields.get("webhook", False), _at(where, "webhook")),
        on_failure=_choice(
            fields.get("on_failure", str(OnFailure.SEND)), _at(where, "on_failure"), OnFailure
        ),
    )
    if not (enrichment.attributes or enrichment.webhook):
        _refuse(where, 'enriches nothing: set "attributes", "webhook" or both to true')
    return enrichment


def _escalation(raw: object, where: str, channels: tuple[str, ...] | None) -> Escalation | None:
    if raw is None:
        return None
    fields = _object(raw, where)
    _no_unknown_fields(fields, ("resend_push_after", "email_if_unread_after"), where)
    resend, email = fields.get("resend_push_after"), fields.get("email_if_unread_after")
    escalation = Escalation(
        resend_push_after=None
        if resend is None
        else _seconds(resend, _at(where, "resend_push_after"), 1, MAX_DELAY),
        email_if_unread_after=None
        if email is None
        else _seconds(email, _at(where, "email_if_unread_after"), 1, MAX_DELAY),
    )
    if escalation.resend_push_after is None and escalation.email_if_unread_after is None:
        _refuse(
            where, 'escalates nothing: set "resend_push_after", "email_if_unread_after" or both'
        )
    named = () if channels is None else channels
    pushes = {PUSH_ALIAS, *(str(c) for c in PUSH)}
    if escalation.resend_push_after is not None and not pushes.intersection(named):
        _refuse(_at(where, "resend_push_after"), "the rule sends no push to resend")
    if escalation.email_if_unread_after is not None and str(Channel.EMAIL) in named:
        _refuse(_at(where, "email_if_unread_after"), "the rule already sends email at once")
    return escalation


def _digest(raw: object, where: str, channels: tuple[str, ...] | None) -> Digest | None:
    if raw is None:
        return None
    fields = _object(raw, where)
    _no_unknown_fields(fields, ("window", "key", "channels"), where)
    if "window" not in fields:
        _refuse(_at(where, "window"), "is required: the seconds a digest batches over")
    window = _seconds(fields["window"], _at(where, "window"), MIN_DIGEST_WINDOW, MAX_DELAY)
    key: Path | None = None
    if fields.get("key") is not None:
        raw_key = fields["key"]
        if not isinstance(raw_key, str):
            _refuse(
                _at(where, "key"), f"must be a field path in a string, not {_json_type(raw_key)}"
            )
        try:
            key = parse_path(raw_key, roots=ROOTS)
        except InvalidRequest as error:
            _refuse(_at(where, "key"), error.message)
    digested = Digest(window=window, key=key).channels
    if "channels" in fields:
        digested = _channels(fields["channels"], _at(where, "channels"))
        if not digested:
            _refuse(_at(where, "channels"), "must name at least one channel")
    both = [name for name in digested if channels is not None and name in channels]
    if both:
        _refuse(
            _at(where, "channels"),
            f"{', '.join(both)} also go out at once by the rule's channels; name each in one place",
        )
    return Digest(window=window, key=key, channels=digested)


def rule_from_json(raw: object, *, key: str | None = None, where: str = "") -> Rule:
    """Validate one rule as JSON-like data (see the module docstring for its shape).

    `key` is the key from the URL (``PUT /v1/rules/{key}``): the body may then leave ``key``
    out, or must repeat it. `where` prefixes field names in messages (``rules[0]``).

    Raises:
        InvalidRequest: naming the field (``rules[0].condition: ...``), in the message and in
            the error's ``field`` detail; a condition's error also carries ``column``.
    """
    label = where or "rule"
    fields = _object(raw, label)
    _no_unknown_fields(fields, _RULE_FIELDS, where)
    if key is not None:
        key = _key(key, _at(where, "key"), "a rule key")
        if "key" in fields and fields["key"] != key:
            _refuse(_at(where, "key"), f"{json.dumps(fields['key'])[:60]} differs from the URL's")
    elif "key" in fields:
        key = _key(fields["key"], _at(where, "key"), "a rule key")
    else:
        _refuse(_at(where, "key"), "is required")
    if "event_type" not in fields:
        _refuse(_at(where, "event_type"), "is required: an event type, or a pattern with * and ?")
    channels = (
        None
        if fields.get("channels") is None
        else _channels(fields["channels"], _at(where, "channels"))
    )
    template = fields.get("template")
    order = fields.get("order", 0)
    if not isinstance(order, int) or isinstance(order, bool):
        _refuse(_at(where, "order"), f"must be a whole number, not {_json_type(order)}")
    if not -MAX_ORDER <= order <= MAX_ORDER:
        _refuse(_at(where, "order"), f"must be between {-MAX_ORDER} and {MAX_ORDER}")
    ttl = fields.get("ttl")
    return Rule(
        key=key,
        event_type=_pattern(fields["event_type"], _at(where, "event_type")),
        condition=_condition(fields.get("condition"), _at(where, "condition")),
        channels=channels,
        template=None
        if template is None
        else _key(template, _at(where, "template"), "a template name"),
        priority=_choice(
            fields.get("priority", str(Priority.NORMAL)), _at(where, "priority"), Priority
        ),
        ttl=None if ttl is None else _seconds(ttl, _at(where, "ttl"), 0, MAX_TTL),
        enrichment=_enrichment(fields.get("enrichment"), _at(where, "enrichment")),
        escalation=_escalation(fields.get("escalation"), _at(where, "escalation"), channels),
        digest=_digest(fields.get("digest"), _at(where, "digest"), channels),
        order=order,
    )


def rules_from_json(raw: object) -> tuple[Rule, ...]:
    """Validate a set of rules: ``{"rules": [...]}`` or the bare list, keys unique.

    Raises:
        InvalidRequest: naming the rule and field (``rules[2].digest.window: ...``).
    """
    if isinstance(raw, dict):
        _no_unknown_fields(raw, ("rules",), "")
        raw = raw.get("rules", [])
    if not isinstance(raw, list):
        _refuse("rules", f"must be a list of rules, not {_json_type(raw)}")
    if len(raw) > MAX_RULES:
        _refuse("rules", f"holds more than {MAX_RULES} rules")
    rules: list[Rule] = []
    seen: dict[str, int] = {}
    for i, item in enumerate(raw):
        rule = rule_from_json(item, where=f"rules[{i}]")
        if rule.key in seen:
            _refuse(f"rules[{i}].key", f"{rule.key!r} is also the key of rules[{seen[rule.key]}]")
        seen[rule.key] = i
        rules.append(rule)
    return tuple(rules)


def _unique_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for name, value in pairs:
        if name in result:
            # JSON would keep the last silently; in a rules file that hides an edit gone wrong.
            raise InvalidRequest(f"rules file: the field {name!r} appears twice in one object")
        result[name] = value
    return result


def _no_constant(name: str) -> NoReturn:
    raise InvalidRequest(f"rules file: {name} is not a JSON number")


def load_rules_file(text: str, format: str) -> tuple[Rule, ...]:
    """The rules in a rules file's `text`; `format` is ``json`` or ``toml``.

    JSON holds ``{"rules": [...]}`` or the bare list; TOML holds ``[[rules]]`` tables. Nothing
    is read from disk here: the CLI reads the file and picks `format` from its suffix.

    Raises:
        InvalidRequest: the format is not supported (YAML is not: PyYAML is not a dependency),
            the text does not parse (with its line and column) or a rule is not valid.
    """
    if len(text) > MAX_FILE_LENGTH:
        raise InvalidRequest(f"rules file: longer than {MAX_FILE_LENGTH} characters")
    kind = format.lower()
    raw: object
    try:
        if kind == "json":
            raw = json.loads(text, object_pairs_hook=_unique_pairs, parse_constant=_no_constant)
        elif kind == "toml":
            raw = tomllib.loads(text)
        else:
            raise InvalidRequest(
                f"rules file: format {format[:20]!r} is not supported; use json or toml"
            )
    except json.JSONDecodeError as error:
        raise InvalidRequest(
            f"rules file: not valid JSON: {error.msg} at line {error.lineno} column {error.colno}",
            line=error.lineno,
            column=error.colno,
        ) from None
    except tomllib.TOMLDecodeError as error:
        raise InvalidRequest(f"rules file: not valid TOML: {error}") from None
    except RecursionError:
        raise InvalidRequest("rules file: nested too deeply") from None
    return rules_from_json(raw)


@dataclass(frozen=True, slots=True)
class StoredRule:
    """A tenant's rule as stored, with when it was first saved and last replaced."""

    rule: Rule
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class RuleChanges:
    """What applying a set of rules changed: keys created, replaced and (with replace) deleted."""

    created: tuple[str, ...] = ()
    updated: tuple[str, ...] = ()
    deleted: tuple[str, ...] = ()
