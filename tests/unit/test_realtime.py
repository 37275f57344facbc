"""The gateway's frame protocol: what clients may send and what the server sends back."""

from __future__ import annotations

import contextlib
import json
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given, strategies as st

from clarion.domain import errors
from clarion.domain.notifications import InboxItem, parse_cursor
from clarion.domain.statuses import Status
from clarion.wire.realtime import (
    SUBPROTOCOL,
    Auth,
    Pong,
    Receipt,
    Resume,
    ack_frame,
    error_frame,
    notification_frame,
    parse_frame,
    ping_frame,
    ready_frame,
    status_frame,
    token_from_subprotocols,
)

CREATED = datetime(2024, 5, 1, 12, 30, tzinfo=UTC)


def frame(**fields: Any) -> str:
    return json.dumps(fields)


def item(**fields: Any) -> InboxItem:
    values: dict[str, Any] = {
        "id": 42,
        "notification_id": "ntf_7",
        "event_id": "evt_9",
        "user": "alice",
        "status": Status.SENT,
        "type": "order.shipped",
        "title": "Shipped",
        "body": "Your order is on its way",
        "data": {"order": 17, "tags": ["a", "b"]},
        "category": "orders",
        "group": "order-17",
        "created_at": CREATED,
    }
    values.update(fields)
    return InboxItem(**values)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (frame(type="auth", token="tok", since="12"), Auth(token="tok", since="12")),
        (frame(type="auth", token="tok"), Auth(token="tok", since=None)),
        (frame(type="auth", token="tok", since=None), Auth(token="tok", since=None)),
        (frame(type="auth"), Auth(token=None, since=None)),
        (frame(type="resume", since="12"), Resume(since="12")),
        (frame(type="resume"), Resume(since=None)),
        (frame(type="received", id=7), Receipt(item_id=7, status=Status.RECEIVED)),
        (frame(type="read", id=7), Receipt(item_id=7, status=Status.READ)),
        (frame(type="read", id=2**40), Receipt(item_id=2**40, status=Status.READ)),
        (frame(type="pong"), Pong()),
        (' { "id" : 3 ,\n "type" : "read" } ', Receipt(item_id=3, status=Status.READ)),
    ],
    ids=lambda v: v if isinstance(v, str) else type(v).__name__,
)
def test_parse_frame_reads_every_frame_type(text: str, expected: object) -> None:
    assert parse_frame(text) == expected


def test_a_receipt_id_sent_as_a_string_of_digits_is_read_as_a_number() -> None:
    assert parse_frame(frame(type="read", id="42")) == Receipt(item_id=42, status=Status.READ)


def test_a_receipt_reports_only_received_or_read() -> None:
    for kind in ("received", "read"):
        receipt = parse_frame(frame(type=kind, id=1))
        assert isinstance(receipt, Receipt)
        assert receipt.status is Status(kind)


MALFORMED = {
    "empty": "",
    "not json": "hello",
    "truncated json": '{"type": "auth"',
    "a list": "[]",
    "a string": '"auth"',
    "a number": "42",
    "null": "null",
    "no type": "{}",
    "type null": frame(type=None),
    "type not a string": frame(type=["auth"]),
    "unknown type": frame(type="subscribe"),
    "type in capitals": frame(type="AUTH"),
    "server frame type": frame(type="ping"),
    "unknown field in auth": frame(type="auth", token="t", user="alice"),
    "unknown field in resume": frame(type="resume", since="1", token="t"),
    "unknown field in received": frame(type="received", id=1, status="read"),
    "unknown field in read": frame(type="read", id=1, at="now"),
    "id missing": frame(type="read"),
    "id null": frame(type="read", id=None),
    "id true": frame(type="read", id=True),
    "id false": frame(type="received", id=False),
    "id zero": frame(type="read", id=0),
    "id negative": frame(type="read", id=-3),
    "id float": frame(type="read", id=1.5),
    "id whole float": frame(type="read", id=2.0),
    "id list": frame(type="read", id=[1]),
    "id object": frame(type="read", id={"id": 1}),
    "id word": frame(type="read", id="abc"),
    "id empty string": frame(type="read", id=""),
    "id negative string": frame(type="read", id="-3"),
    "id zero string": frame(type="read", id="0"),
    "id padded string": frame(type="read", id=" 5"),
    "id decimal string": frame(type="read", id="1.5"),
    "token a number": frame(type="auth", token=5),
    "token true": frame(type="auth", token=True),
    "token a list": frame(type="auth", token=["t"]),
    "token an object": frame(type="auth", token={"t": 1}),
    "auth since a number": frame(type="auth", token="t", since=5),
    "resume since a number": frame(type="resume", since=5),
    "resume since a list": frame(type="resume", since=["5"]),
}


@pytest.mark.parametrize("text", list(MALFORMED.values()), ids=list(MALFORMED))
def test_a_malformed_frame_raises_invalid_frame(text: str) -> None:
    with pytest.raises(errors.InvalidFrame) as caught:
        parse_frame(text)
    assert caught.value.code == "invalid_frame"
    assert caught.value.status == 400


def test_an_unknown_field_is_named_in_the_error() -> None:
    with pytest.raises(errors.InvalidFrame, match="user"):
        parse_frame(frame(type="auth", token="t", user="alice"))


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=6,
)
frame_objects = st.fixed_dictionaries(
    {},
    optional={
        "type": st.sampled_from(["auth", "resume", "received", "read", "pong", "other"])
        | json_values,
        "id": json_values,
        "token": json_values,
        "since": json_values,
        "extra": json_values,
    },
)


@given(frame_objects)
def test_a_json_object_either_parses_or_is_an_invalid_frame(raw: dict[str, Any]) -> None:
    try:
        parsed = parse_frame(json.dumps(raw))
    except errors.InvalidFrame:
        return
    assert isinstance(parsed, Auth | Resume | Receipt | Pong)
    if isinstance(parsed, Receipt):
        assert parsed.item_id > 0


@given(st.text(max_size=200))
def test_any_text_either_parses_or_is_an_invalid_frame(text: str) -> None:
    with contextlib.suppress(errors.InvalidFrame):
        parse_frame(text)


@pytest.mark.parametrize("item_id", ["\u00b2", "\u2460", "1\u00b3"], ids=["²", "①", "1³"])
def test_a_receipt_id_of_non_decimal_digits_is_an_invalid_frame(item_id: str) -> None:
    with pytest.raises(errors.InvalidFrame):
        parse_frame(frame(type="read", id=item_id))


def test_a_receipt_id_string_too_long_for_a_number_is_an_invalid_frame() -> None:
    with pytest.raises(errors.InvalidFrame):
        parse_frame(frame(type="received", id="9" * 5000))


@pytest.mark.parametrize("text", ["[" * 5000, '{"a":' * 5000], ids=["arrays", "objects"])
def test_a_deeply_nested_frame_is_an_invalid_frame(text: str) -> None:
    with pytest.raises(errors.InvalidFrame):
        parse_frame(text)


def test_an_unknown_field_in_a_pong_is_an_invalid_frame() -> None:
    with pytest.raises(errors.InvalidFrame):
        parse_frame(frame(type="pong", id=1))


@pytest.mark.parametrize(
    ("offered", "token"),
    [
        ([], None),
        ([SUBPROTOCOL], None),
        ([SUBPROTOCOL, "clarion.token.abc"], "abc"),
        (["clarion.token.abc", SUBPROTOCOL], "abc"),
        (["clarion.token.a.b-c_d"], "a.b-c_d"),
        (["clarion.token."], None),
        (["clarion.token.first", "clarion.token.second"], "first"),
        (["chat", "clarion.tokenabc", "token.abc"], None),
    ],
)
def test_token_from_subprotocols_finds_the_offered_token(
    offered: list[str], token: str | None
) -> None:
    assert token_from_subprotocols(offered) == token


def test_the_subprotocol_is_versioned() -> None:
    assert SUBPROTOCOL == "clarion.v1"


def test_ready_frame_tells_the_client_who_it_is_and_the_timing() -> None:
    assert ready_frame(user="alice", heartbeat_seconds=20.0, idle_timeout_seconds=60.0) == {
        "type": "ready",
        "user": "alice",
        "heartbeat": 20.0,
        "idle_timeout": 60.0,
    }


def test_notification_frame_carries_the_item_and_its_cursor() -> None:
    sent = notification_frame(item())
    assert sent == {
        "type": "notification",
        "id": 42,
        "notification_id": "ntf_7",
        "event_id": "evt_9",
        "event_type": "order.shipped",
        "title": "Shipped",
        "body": "Your order is on its way",
        "data": {"order": 17, "tags": ["a", "b"]},
        "category": "orders",
        "group": "order-17",
        "status": "sent",
        "created_at": "2024-05-01T12:30:00Z",
        "cursor": "42",
    }


@given(
    item_id=st.integers(min_value=1, max_value=2**63 - 1),
    title=st.none() | st.text(),
    body=st.none() | st.text(),
    category=st.none() | st.text(min_size=1),
    group=st.none() | st.text(min_size=1),
    status=st.sampled_from(list(Status)),
)
def test_notification_frame_is_json_and_its_cursor_resumes_after_the_item(
    item_id: int,
    title: str | None,
    body: str | None,
    category: str | None,
    group: str | None,
    status: Status,
) -> None:
    source = item(id=item_id, title=title, body=body, category=category, group=group, status=status)
    sent = json.loads(json.dumps(notification_frame(source)))
    assert sent["id"] == item_id
    assert sent["cursor"] == str(item_id)
    assert (sent["title"], sent["body"], sent["category"], sent["group"]) == (
        title,
        body,
        category,
        group,
    )
    assert sent["status"] == str(status)
    resumed = parse_frame(frame(type="resume", since=sent["cursor"]))
    assert isinstance(resumed, Resume)
    assert parse_cursor(resumed.since) == item_id


def test_notification_frame_keeps_absent_texts_as_null() -> None:
    sent = notification_frame(item(title=None, body=None, category=None, group=None, data={}))
    assert (sent["title"], sent["body"], sent["category"], sent["group"], sent["data"]) == (
        None,
        None,
        None,
        None,
        {},
    )


@pytest.mark.parametrize("status", list(Status))
def test_status_frame_names_the_item_and_its_new_status(status: Status) -> None:
    assert status_frame(5, status) == {"type": "status", "id": 5, "status": status.value}


@pytest.mark.parametrize("status", [Status.RECEIVED, Status.READ])
def test_ack_frame_answers_a_receipt_with_the_status_after_it(status: Status) -> None:
    assert ack_frame(5, status) == {"type": "ack", "id": 5, "status": status.value}


def test_ping_frame_is_a_bare_ping() -> None:
    assert ping_frame() == {"type": "ping"}


def test_error_frame_carries_the_code_and_default_message() -> None:
    assert error_frame(errors.InvalidFrame()) == {
        "type": "error",
        "error": {
            "code": "invalid_frame",
            "message": "The WebSocket frame is not one the gateway understands.",
        },
    }


def test_error_frame_carries_a_specific_message() -> None:
    sent = error_frame(errors.InvalidUserToken("token expired"))
    assert sent == {
        "type": "error",
        "error": {"code": "invalid_user_token", "message": "token expired"},
    }


def test_an_invalid_frame_error_round_trips_into_an_error_frame() -> None:
    with pytest.raises(errors.InvalidFrame) as caught:
        parse_frame(frame(type="subscribe"))
    sent = error_frame(caught.value)
    assert sent["error"]["code"] == "invalid_frame"
    assert "subscribe" in sent["error"]["message"]
