"""A digest's key value and the channels it batches (`domain.rules`)."""

from __future__ import annotations

from clarion.domain.expressions import parse_path
from clarion.domain.notifications import EventSpec, Recipients
from clarion.domain.rules import Digest, Rule, digest_key_of, digested


def _spec(data: dict[str, object]) -> EventSpec:
    return EventSpec(type="comment.created", data=data, recipients=Recipients(users=("a",)))


def test_the_digest_key_is_the_events_field_as_text() -> None:
    digest = Digest(window=60, key=parse_path("event.data.thread"))
    assert digest_key_of(digest, _spec({"thread": "t1"})) == "t1"
    assert digest_key_of(digest, _spec({"thread": 7})) == "7"
    assert digest_key_of(digest, _spec({"thread": {"b": 1}})) == '{"b":1}'
    assert digest_key_of(digest, _spec({})) == ""
    assert digest_key_of(Digest(window=60), _spec({"thread": "t1"})) == ""


def test_only_email_is_batched() -> None:
    rule = Rule(
        key="r",
        event_type="comment.*",
        digest=Digest(window=60, channels=("email", "apns")),
    )
    assert digested(rule) == {"email"}
    assert digested(Rule(key="r", event_type="*")) == frozenset()
    assert digested(None) == frozenset()
