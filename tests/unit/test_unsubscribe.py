"""Signed one-click unsubscribe tokens: they round-trip, and no edit, splice or foreign key
gets one accepted."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta

import pytest

from clarion.domain import errors
from clarion.wire import unsubscribe

SECRET = b"s" * 32
NOW = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
KEY = unsubscribe.tenant_key(SECRET, "tenant-a")


def token(**changes: str) -> str:
    fields = {"tenant": "tenant-a", "user": "alice", "category": "billing"} | changes
    key = unsubscribe.tenant_key(SECRET, fields["tenant"])
    return unsubscribe.issue(key, now=NOW, **fields)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def test_a_token_round_trips_to_its_claim() -> None:
    claim = unsubscribe.verify(token(), [KEY], now=NOW + timedelta(days=400), tenant="tenant-a")
    assert claim == unsubscribe.UnsubscribeClaim("tenant-a", "alice", "billing", "email", NOW)


def test_tokens_are_url_safe() -> None:
    assert all(ch.isalnum() or ch in "-_." for ch in token())


def test_an_edited_user_is_refused() -> None:
    prefix, payload, tag = token().split(".")
    forged = unb64(payload).replace(b"alice", b"bobby")
    with pytest.raises(errors.NotFound):
        unsubscribe.verify(f"{prefix}.{b64(forged)}.{tag}", [KEY], now=NOW)


def test_a_tag_spliced_from_another_token_is_refused() -> None:
    _, payload, _ = token(user="mallory").split(".")
    _, _, tag = token().split(".")
    with pytest.raises(errors.NotFound):
        unsubscribe.verify(f"u1.{payload}.{tag}", [KEY], now=NOW)


def test_field_boundaries_cannot_be_shifted() -> None:
    # ("alice", "billing") and ("alic", "ebilling") must not share a payload or a tag.
    a = token(user="alice", category="billing").split(".")[1]
    b = token(user="alic", category="ebilling").split(".")[1]
    assert a != b


def test_another_tenants_key_is_refused() -> None:
    other = unsubscribe.tenant_key(SECRET, "tenant-b")
    with pytest.raises(errors.NotFound):
        unsubscribe.verify(token(), [other], now=NOW)


def test_a_token_of_another_tenant_is_refused_for_this_one() -> None:
    theirs = token(tenant="tenant-b")
    key_b = unsubscribe.tenant_key(SECRET, "tenant-b")
    with pytest.raises(errors.NotFound):
        unsubscribe.verify(theirs, [key_b], now=NOW, tenant="tenant-a")


def test_a_rotated_out_key_still_verifies_while_listed() -> None:
    new = unsubscribe.tenant_key(b"n" * 32, "tenant-a")
    assert unsubscribe.verify(token(), [new, KEY], now=NOW).user == "alice"
    with pytest.raises(errors.NotFound):
        unsubscribe.verify(token(), [new], now=NOW)


def test_expiry_is_optional() -> None:
    later = NOW + timedelta(days=31)
    assert unsubscribe.verify(token(), [KEY], now=later).user == "alice"
    with pytest.raises(errors.NotFound):
        unsubscribe.verify(token(), [KEY], now=later, max_age=timedelta(days=30))


def test_a_token_from_the_future_is_refused() -> None:
    with pytest.raises(errors.NotFound):
        unsubscribe.verify(token(), [KEY], now=NOW - timedelta(hours=1))


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "u1",
        "u1..",
        "u2." + ".".join(token().split(".")[1:]),
        token()[:-2],
        token() + "A",
        token().replace(".", "!"),
        "u1.%%%%.%%%%",
        "u1." + "A" * 2000 + ".AAAA",
        "u1.ünï.cøde",
    ],
)
def test_malformed_tokens_are_refused_without_saying_why(bad: str) -> None:
    with pytest.raises(errors.NotFound) as caught:
        unsubscribe.verify(bad, [KEY], now=NOW)
    assert caught.value.message == "this unsubscribe link is not valid"


def test_a_short_server_secret_is_refused() -> None:
    with pytest.raises(errors.InvalidRequest):
        unsubscribe.tenant_key(b"short", "tenant-a")


def test_urls_and_mailto_carry_the_token() -> None:
    t = token()
    assert unsubscribe.one_click_url("https://c.example/v1/unsubscribe/", t) == (
        f"https://c.example/v1/unsubscribe/{t}"
    )
    mailto = unsubscribe.mailto_uri("unsubscribe@c.example", t)
    assert mailto == f"mailto:unsubscribe@c.example?subject=unsubscribe%20{t}"
    assert unsubscribe.token_from_subject(f"Re: unsubscribe {t}") == t
    with pytest.raises(errors.InvalidRequest):
        unsubscribe.one_click_url("http://c.example/u", t)
    with pytest.raises(errors.InvalidRequest):
        unsubscribe.mailto_uri("a@b.example?cc=x@evil.example", t)
