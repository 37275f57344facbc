"""Routing rules: validation, matching order, the trace, and rules files."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, strategies as st

from clarion.domain.errors import InvalidRequest
from clarion.domain.expressions import Path, parse
from clarion.domain.notifications import EventSpec, Recipients
from clarion.domain.rules import (
    MAX_RULES,
    Decision,
    Digest,
    Enrichment,
    Escalation,
    OnFailure,
    Priority,
    Rule,
    Verdict,
    context_for,
    load_rules_file,
    match,
    needs_user_attributes,
    ordered,
    rule_from_json,
    rules_from_json,
)

# The example: orders go by push and in-app; security events by every channel, critical;
# comments to the inbox at once and by an email digest every 30 minutes.
EXAMPLE: list[dict[str, Any]] = [
    {"key": "orders", "event_type": "order.*", "channels": ["push", "websocket"]},
    {
        "key": "security",
        "event_type": "security.*",
        "channels": ["websocket", "push", "email"],
        "priority": "critical",
    },
    {
        "key": "comments",
        "event_type": "comment.*",
        "channels": ["websocket"],
        "digest": {"window": 1800, "key": "event.data.thread_id", "channels": ["email"]},
    },
]

EXAMPLE_TOML = """
[[rules]]
key = "orders"
event_type = "order.*"
channels = ["push", "websocket"]

[[rules]]
key = "security"
event_type = "security.*"
channels = ["websocket", "push", "email"]
priority = "critical"

[[rules]]
key = "comments"
event_type = "comment.*"
channels = ["websocket"]
digest = { window = 1800, key = "event.data.thread_id", channels = ["email"] }
"""


def context(
    event_type: str = "order.placed",
    data: dict[str, Any] | None = None,
    user: str = "u1",
    attributes: dict[str, Any] | None = None,
) -> dict[str, object]:
    spec = EventSpec(type=event_type, recipients=Recipients(users=(user,)), data=data or {})
    return context_for(spec, user=user, attributes=attributes)


def decide(rules: tuple[Rule, ...], event_type: str, **kwargs: Any) -> Decision:
    return match(rules, event_type, context(event_type, **kwargs))


def refused(raw: object, **kwargs: Any) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as caught:
        rule_from_json(raw, **kwargs)
    return caught.value


# --- the example -----------------------------------------------------------------------


def test_the_example_sends_orders_by_push_and_in_app() -> None:
    decision = decide(rules_from_json(EXAMPLE), "order.placed")
    assert decision.rule is not None
    assert decision.rule.key == "orders"
    assert decision.rule.channels == ("push", "websocket")
    assert decision.rule.priority is Priority.NORMAL


def test_the_example_sends_security_events_everywhere_as_critical() -> None:
    decision = decide(rules_from_json(EXAMPLE), "security.login.new_device")
    assert decision.rule is not None
    assert decision.rule.key == "security"
    assert decision.rule.channels == ("websocket", "push", "email")
    assert decision.rule.priority is Priority.CRITICAL


def test_the_example_puts_comments_in_the_inbox_and_an_email_digest() -> None:
    decision = decide(rules_from_json(EXAMPLE), "comment.created")
    assert decision.rule is not None
    assert decision.rule.channels == ("websocket",)
    assert decision.rule.digest == Digest(
        window=1800, key=Path("event", ("data", "thread_id")), channels=("email",)
    )


def test_the_example_matches_nothing_for_other_events_and_says_why() -> None:
    decision = decide(rules_from_json(EXAMPLE), "invoice.paid")
    assert decision.rule is None
    assert [(a.rule, a.verdict) for a in decision.trace] == [
        ("comments", Verdict.TYPE_MISMATCH),
        ("orders", Verdict.TYPE_MISMATCH),
        ("security", Verdict.TYPE_MISMATCH),
    ]
    assert decision.channels(None) is None  # the server's defaults


def test_the_example_reads_the_same_from_json_and_toml() -> None:
    from_json = load_rules_file(json.dumps({"rules": EXAMPLE}), "json")
    assert from_json == load_rules_file(json.dumps(EXAMPLE), "json")
    assert from_json == load_rules_file(EXAMPLE_TOML, "toml")
    assert [rule.key for rule in from_json] == ["orders", "security", "comments"]


# --- matching ----------------------------------------------------------------------------------


def rule(key: str, event_type: str = "*", order: int = 0, condition: str | None = None) -> Rule:
    raw: dict[str, Any] = {"key": key, "event_type": event_type, "order": order}
    if condition is not None:
        raw["condition"] = condition
    return rule_from_json(raw)


@pytest.mark.parametrize(
    ("pattern", "event_type", "expected"),
    [
        ("order.placed", "order.placed", True),
        ("order.placed", "order.placed.v2", False),
        ("order.placed", "Order.Placed", False),
        ("order.*", "order.placed", True),
        ("order.*", "order.item.added", True),
        ("order.*", "order", False),
        ("order.*", "orders.placed", False),
        ("*.failed", "payment.card.failed", True),
        ("order.?", "order.a", True),
        ("order.?", "order.ab", False),
        ("*", "anything.at.all", True),
        ("*order*", "reorder.placed", True),
        ("Order.*", "order.placed", False),
    ],
)
def test_event_type_patterns_are_exact_or_glob_and_case_sensitive(
    pattern: str, event_type: str, expected: bool
) -> None:
    assert rule("r", pattern).matches_type(event_type) is expected


def test_rules_are_tried_by_order_then_key_and_the_first_match_wins() -> None:
    rules = (rule("zeta", order=1), rule("beta", order=5), rule("alpha", order=5), rule("mu"))
    assert [r.key for r in ordered(rules)] == ["mu", "zeta", "alpha", "beta"]
    decision = match(rules, "x", context("x"))
    assert decision.rule is not None
    assert decision.rule.key == "mu"
    assert [a.rule for a in decision.trace] == ["mu"]


def test_negative_orders_go_first() -> None:
    rules = (rule("a"), rule("b", order=-1))
    assert [r.key for r in ordered(rules)] == ["b", "a"]


def test_the_order_rules_are_given_in_does_not_matter() -> None:
    rules = [rule("c", order=2), rule("a", order=2), rule("b", order=1)]
    assert match(rules, "x", context("x")) == match(rules[::-1], "x", context("x"))


def test_the_trace_says_why_each_rule_tried_did_not_match() -> None:
    rules = (
        rule("1-orders", "order.*"),
        rule("2-vip", "invoice.*", condition="user.attributes.tier == 'gold'"),
        rule("3-big", "invoice.*", condition="event.data.total >= 1000"),
        rule("4-all-invoices", "invoice.*"),
        rule("5-never-tried", "*"),
    )
    decision = decide(rules, "invoice.paid", data={"total": 5000}, attributes={"tier": "silver"})
    assert decision.rule is not None
    assert decision.rule.key == "3-big"
    assert [(a.rule, a.verdict) for a in decision.trace] == [
        ("1-orders", Verdict.TYPE_MISMATCH),
        ("2-vip", Verdict.CONDITION_FALSE),
        ("3-big", Verdict.MATCHED),
    ]
    reasons = [a.reason for a in decision.trace]
    assert reasons[0] == "event type 'invoice.paid' does not match 'order.*'"
    assert reasons[1] == "condition is false: user.attributes.tier == 'gold'"
    assert reasons[2] == (
        "event type 'invoice.paid' matches 'invoice.*' and event.data.total >= 1000"
    )


def test_the_trace_is_json_for_the_test_endpoint() -> None:
    rules = (rule("a", "order.*"), rule("b", "*", condition="event.data.urgent"))
    shown = decide(rules, "ping", data={"urgent": True}).to_json()
    assert shown["rule"]["key"] == "b"
    assert shown["trace"] == [
        {
            "rule": "a",
            "verdict": "type_mismatch",
            "reason": "event type 'ping' does not match 'order.*'",
        },
        {
            "rule": "b",
            "verdict": "matched",
            "reason": "event type 'ping' matches '*' and event.data.urgent",
        },
    ]
    json.dumps(shown)


def test_conditions_read_the_event_and_the_recipient() -> None:
    rules = (
        rule("own", condition="event.data.author == user.key"),
        rule(
            "vip",
            order=1,
            condition="user.attributes.tier in ['gold', 'platinum'] and event.type != 'x'",
        ),
        rule("rest", order=2),
    )
    assert decide(rules, "c", data={"author": "u1"}).rule == rules[0]
    assert decide(rules, "c", data={"author": "u2"}, attributes={"tier": "gold"}).rule == rules[1]
    assert decide(rules, "c", data={"author": "u2"}).rule == rules[2]


def test_a_condition_on_missing_data_is_false_not_an_error() -> None:
    rules = (rule("big", condition="event.data.order.total > 100"),)
    decision = decide(rules, "order.placed", data={"order": "not an object"})
    assert decision.rule is None
    assert decision.trace[0].verdict is Verdict.CONDITION_FALSE


def test_no_rules_decide_nothing() -> None:
    assert match((), "x", context("x")) == Decision(None, ())


def test_channels_named_by_the_event_override_the_rule() -> None:
    decision = decide(rules_from_json(EXAMPLE), "security.alert")
    assert decision.channels(("email",)) == ("email",)
    assert decision.channels(()) == ()
    assert decision.channels(None) == ("websocket", "push", "email")


def test_routing_loads_user_attributes_only_when_a_candidate_rule_reads_them() -> None:
    rules = (
        rule("a", "order.*", condition="user.attributes.tier == 'gold'"),
        rule("b", "comment.*", condition="user.key == event.data.author"),
    )
    assert needs_user_attributes(rules, "order.placed")
    assert not needs_user_attributes(rules, "comment.new")
    assert not needs_user_attributes(rules, "other")
    assert rules[0].reads_user_attributes
    assert not rules[1].reads_user_attributes


def test_the_context_holds_the_event_and_the_user() -> None:
    spec = EventSpec(
        type="t",
        recipients=Recipients(users=("u",)),
        title="Hi",
        body="There",
        data={"k": 1},
        category="billing",
        group="g",
    )
    assert context_for(spec, user="u", attributes={"tier": "gold"}) == {
        "event": {
            "type": "t",
            "data": {"k": 1},
            "category": "billing",
            "group": "g",
            "title": "Hi",
            "body": "There",
        },
        "user": {"key": "u", "attributes": {"tier": "gold"}},
    }
    assert context_for(spec)["user"] == {"key": None, "attributes": {}}


# --- validation --------------------------------------------------------------------------------

FULL: dict[str, Any] = {
    "key": "everything",
    "event_type": "order.*",
    "condition": "event.data.total > 10",
    "channels": ["push", "websocket"],
    "template": "order-v2",
    "priority": "critical",
    "ttl": 3600,
    "enrichment": {"attributes": True, "webhook": True, "on_failure": "retry"},
    "escalation": {"resend_push_after": 300, "email_if_unread_after": 3600},
    "digest": {"window": 600, "key": "event.data.order_id", "channels": ["email"]},
    "order": -5,
}


def test_a_full_rule_reads_every_field() -> None:
    full = rule_from_json(FULL)
    assert full == Rule(
        key="everything",
        event_type="order.*",
        condition=parse("event.data.total > 10"),
        channels=("push", "websocket"),
        template="order-v2",
        priority=Priority.CRITICAL,
        ttl=3600,
        enrichment=Enrichment(attributes=True, webhook=True, on_failure=OnFailure.RETRY),
        escalation=Escalation(resend_push_after=300, email_if_unread_after=3600),
        digest=Digest(window=600, key=Path("event", ("data", "order_id")), channels=("email",)),
        order=-5,
    )
    assert full.to_json() == FULL


def test_a_minimal_rule_has_the_defaults() -> None:
    minimal = rule_from_json({"key": "m", "event_type": "x"})
    assert minimal == Rule(key="m", event_type="x")
    assert minimal.channels is None
    assert minimal.priority is Priority.NORMAL
    assert minimal.order == 0
    assert rule_from_json(minimal.to_json()) == minimal


def test_a_digest_without_channels_goes_by_email_and_without_key_per_recipient() -> None:
    digested = rule_from_json({"key": "d", "event_type": "x", "digest": {"window": 60}})
    assert digested.digest == Digest(window=60, key=None, channels=("email",))


def test_nulls_mean_the_defaults() -> None:
    raw = {
        "key": "n",
        "event_type": "x",
        "condition": None,
        "channels": None,
        "template": None,
        "ttl": None,
        "enrichment": None,
        "escalation": None,
        "digest": None,
    }
    assert rule_from_json(raw) == Rule(key="n", event_type="x")
    assert rule_from_json({**raw, "enrichment": "none"}).enrichment is None


def test_channel_names_repeat_once_in_order() -> None:
    raw = {"key": "c", "event_type": "x", "channels": ["email", "push", "email"]}
    assert rule_from_json(raw).channels == ("email", "push")


def test_the_key_can_come_from_the_url() -> None:
    assert rule_from_json({"event_type": "x"}, key="from-url").key == "from-url"
    assert rule_from_json({"key": "same", "event_type": "x"}, key="same").key == "same"
    error = refused({"key": "other", "event_type": "x"}, key="from-url")
    assert error.message == 'key: "other" differs from the URL\'s'
    assert error.details["field"] == "key"


BASE: dict[str, Any] = {"key": "r", "event_type": "x"}


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"key": None}, "key: must be a string, not null"),
        ({"key": ""}, "key: a rule key must be 1 to 255 printable characters"),
        ({"key": " padded "}, "key: a rule key must be 1 to 255"),
        ({"key": "a\nb"}, "key: a rule key must be 1 to 255"),
        ({"key": "k" * 256}, "key: a rule key must be 1 to 255"),
        ({"event_type": 5}, "event_type: must be a string, not a number"),
        ({"event_type": ""}, "event_type: an event type pattern must be 1 to 255"),
        ({"event_type": "order.[ab]"}, "event_type: '[' and ']' are not allowed"),
        ({"condition": 5}, "condition: must be an expression in a string, not a number"),
        ({"condition": "event.type =="}, "condition: expected a value, found end of expression"),
        ({"condition": "evnt.type == 'x'"}, "condition: unknown name 'evnt'"),
        ({"condition": "system('x')"}, "condition: unknown function 'system'"),
        ({"condition": "event.type.upper()"}, "condition: event.type.upper cannot be called"),
        ({"channels": "email"}, "channels: must be a list of channel names, not a string"),
        ({"channels": ["email", "sms"]}, 'channels[1]: unknown channel "sms"'),
        ({"channels": [1]}, "channels[0]: unknown channel 1"),
        ({"channels": ["email"] * 17}, "channels: names more than 16 channels"),
        ({"template": ""}, "template: a template name must be 1 to 255"),
        ({"template": 3}, "template: must be a string, not a number"),
        ({"priority": "urgent"}, 'priority: must be one of normal, critical, not "urgent"'),
        ({"priority": None}, "priority: must be one of normal, critical, not null"),
        ({"ttl": -1}, "ttl: must be between 0 and 2419200 seconds, not -1"),
        ({"ttl": 2_419_201}, "ttl: must be between 0 and 2419200 seconds"),
        ({"ttl": 1.5}, "ttl: must be a whole number of seconds, not a number"),
        ({"ttl": True}, "ttl: must be a whole number of seconds, not a boolean"),
        ({"ttl": "60"}, "ttl: must be a whole number of seconds, not a string"),
        ({"order": "1"}, "order: must be a whole number, not a string"),
        ({"order": 10**7}, "order: must be between -1000000 and 1000000"),
        ({"chanels": ["email"]}, "chanels: unknown field (the fields are: channels, condition,"),
        ({"enrichment": True}, "enrichment: must be an object, not a boolean"),
        ({"enrichment": {}}, 'enrichment: enriches nothing: set "attributes", "webhook"'),
        ({"enrichment": {"attributes": "yes"}}, "enrichment.attributes: must be true or false"),
        (
            {"enrichment": {"webhook": True, "on_failure": "ignore"}},
            'enrichment.on_failure: must be one of send, retry, fail, not "ignore"',
        ),
        ({"enrichment": {"webhook": True, "url": "x"}}, "enrichment.url: unknown field"),
        ({"escalation": []}, "escalation: must be an object, not a list"),
        ({"escalation": {}}, "escalation: escalates nothing"),
        (
            {"escalation": {"resend_push_after": 0}, "channels": ["push"]},
            "escalation.resend_push_after: must be between 1 and 604800 seconds, not 0",
        ),
        (
            {"escalation": {"resend_push_after": 60}, "channels": ["websocket"]},
            "escalation.resend_push_after: the rule sends no push to resend",
        ),
        (
            {"escalation": {"resend_push_after": 60}},
            "escalation.resend_push_after: the rule sends no push to resend",
        ),
        (
            {"escalation": {"email_if_unread_after": 60}, "channels": ["email"]},
            "escalation.email_if_unread_after: the rule already sends email at once",
        ),
        ({"escalation": {"email_after": 60}}, "escalation.email_after: unknown field"),
        ({"digest": {}}, "digest.window: is required"),
        ({"digest": {"window": 59}}, "digest.window: must be between 60 and 604800 seconds"),
        ({"digest": {"window": 60, "key": 1}}, "digest.key: must be a field path in a string"),
        ({"digest": {"window": 60, "key": "event.a == 1"}}, "digest.key: expected a field path"),
        ({"digest": {"window": 60, "key": "thread"}}, "digest.key: unknown name 'thread'"),
        ({"digest": {"window": 60, "channels": []}}, "digest.channels: must name at least one"),
        (
            {"digest": {"window": 60, "channels": ["fax"]}},
            'digest.channels[0]: unknown channel "fax"',
        ),
        (
            {"digest": {"window": 60, "channels": ["email"]}, "channels": ["websocket", "email"]},
            "digest.channels: email also go out at once by the rule's channels",
        ),
    ],
)
def test_validation_names_the_field_and_the_problem(changes: dict[str, Any], message: str) -> None:
    error = refused({**BASE, **changes})
    assert error.message.startswith(message), error.message
    assert error.details["field"] == message.split(":")[0]


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"event_type": "x"}, "key: is required"),
        ({"key": "k"}, "event_type: is required"),
        ("rule", "rule: must be an object, not a string"),
        (None, "rule: must be an object, not null"),
    ],
)
def test_required_fields_and_shape(raw: object, message: str) -> None:
    assert refused(raw).message.startswith(message)


def test_a_condition_error_keeps_its_column() -> None:
    error = refused({**BASE, "condition": "event.type = 'x'"})
    assert error.message == "condition: '=' is not an operator: compare with '==' at column 12"
    assert error.details["field"] == "condition"
    assert error.details["column"] == 12


def test_errors_in_a_set_of_rules_name_the_rule_by_index() -> None:
    with pytest.raises(InvalidRequest) as caught:
        rules_from_json({"rules": [BASE, {**BASE, "key": "s", "condition": "(event"}]})
    assert (
        caught.value.message
        == "rules[1].condition: expected ')', found end of expression at column 7"
    )
    assert caught.value.details == {"field": "rules[1].condition", "column": 7, "expected": "')'"}


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ([BASE, BASE], "rules[1].key: 'r' is also the key of rules[0]"),
        ({"rules": [BASE], "extra": 1}, "extra: unknown field (the fields are: rules)"),
        ({"rules": {"r": BASE}}, "rules: must be a list of rules, not an object"),
        ("rules", "rules: must be a list of rules, not a string"),
        ([BASE, 5], "rules[1]: must be an object, not a number"),
        ([{**BASE, "digest": {"window": "1h"}}], "rules[0].digest.window: must be a whole number"),
        ([{"key": f"r{i}", "event_type": "x"} for i in range(MAX_RULES + 1)], "rules: holds more"),
    ],
)
def test_a_set_of_rules_is_validated_as_a_whole(raw: object, message: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        rules_from_json(raw)
    assert caught.value.message.startswith(message), caught.value.message


def test_an_empty_set_of_rules_is_fine() -> None:
    assert rules_from_json({"rules": []}) == ()
    assert rules_from_json({}) == ()
    assert rules_from_json([]) == ()


@given(
    st.fixed_dictionaries(
        {"key": st.sampled_from(["a", "b-1", "ré"]), "event_type": st.sampled_from(["x", "a.*"])},
        optional={
            "condition": st.sampled_from(["event.data.n > 1", "user.key == 'u'", "true"]),
            "channels": st.lists(
                st.sampled_from(["push", "websocket", "apns", "webpush"]), max_size=6
            ),
            "template": st.sampled_from(["t", "order.v2"]),
            "priority": st.sampled_from(["normal", "critical"]),
            "ttl": st.integers(0, 2_419_200),
            "enrichment": st.fixed_dictionaries(
                {"webhook": st.just(True)},
                optional={
                    "attributes": st.booleans(),
                    "on_failure": st.sampled_from(["send", "retry", "fail"]),
                },
            ),
            "digest": st.fixed_dictionaries(
                {"window": st.integers(60, 604_800)},
                optional={"key": st.sampled_from(["event.data.t", "user.attributes['x y']"])},
            ),
            "order": st.integers(-1_000_000, 1_000_000),
        },
    )
)
def test_a_valid_rule_survives_a_round_trip_through_json(raw: dict[str, Any]) -> None:
    once = rule_from_json(raw)
    again = rule_from_json(json.loads(json.dumps(once.to_json())))
    assert again == once
    assert again.to_json() == once.to_json()


@given(st.recursive(st.none() | st.booleans() | st.integers() | st.text(), st.lists, max_leaves=5))
def test_anything_but_an_object_is_refused_cleanly(raw: object) -> None:
    with pytest.raises(InvalidRequest):
        rule_from_json(raw)


# --- rules files -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "format", "message"),
    [
        ('{"rules": [', "json", "rules file: not valid JSON: Expecting value at line 1 column 12"),
        (
            '{\n "rules": [],\n "rules": []\n}',
            "json",
            "rules file: the field 'rules' appears twice",
        ),
        ('[{"key": "a", "event_type": "x", "key": "b"}]', "json", "rules file: the field 'key'"),
        ('[{"key": "a", "event_type": "x", "ttl": NaN}]', "json", "rules file: NaN is not a JSON"),
        ("[" * 100_000 + "]" * 100_000, "json", "rules file: nested too deeply"),
        ("[[rules]\nkey = 'a'", "toml", "rules file: not valid TOML"),
        ("rules = 5", "toml", "rules: must be a list of rules, not a number"),
        ("[[rules]]\nkey = 'a'\nevent_type = 'x'\nttl = 1979-05-27", "toml", "rules[0].ttl: must"),
        ("rules: []", "yaml", "rules file: format 'yaml' is not supported; use json or toml"),
        ("x" * 1_048_577, "json", "rules file: longer than 1048576 characters"),
    ],
)
def test_a_bad_rules_file_is_refused_with_a_reason(text: str, format: str, message: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        load_rules_file(text, format)
    assert caught.value.message.startswith(message), caught.value.message


def test_a_json_syntax_error_carries_its_line_and_column() -> None:
    with pytest.raises(InvalidRequest) as caught:
        load_rules_file('{\n  "rules": [\n    {"key": }\n  ]\n}', "json")
    assert caught.value.details == {"line": 3, "column": 13}


def test_the_format_name_is_not_case_sensitive() -> None:
    assert load_rules_file("[]", "JSON") == ()
    assert load_rules_file("", "Toml") == ()


def test_a_rules_file_error_names_the_rule_and_field() -> None:
    text = EXAMPLE_TOML + '\n[[rules]]\nkey = "bad"\nevent_type = "x"\ncondition = "user.tier >"\n'
    with pytest.raises(InvalidRequest) as caught:
        load_rules_file(text, "toml")
    assert caught.value.message == (
        "rules[3].condition: expected a value, found end of expression at column 12"
    )
