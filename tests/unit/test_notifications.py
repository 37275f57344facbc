"""Events as stored and fingerprinted, status counts and inbox cursors."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given, strategies as st

from clarion.domain.channels import Channel
from clarion.domain.notifications import (
    EventSpec,
    InboxItem,
    Recipients,
    StatusCounts,
    parse_cursor,
)
from clarion.domain.statuses import Status

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=15,
)
json_objects = st.dictionaries(st.text(max_size=10), json_values, max_size=5)
keys = st.text(min_size=1, max_size=30)
key_tuples = st.lists(keys, max_size=4).map(tuple)
optional_text = st.none() | st.text(max_size=40)
specs = st.builds(
    EventSpec,
    type=st.text(min_size=1, max_size=30),
    recipients=st.builds(Recipients, users=key_tuples, groups=key_tuples, communities=key_tuples),
    title=optional_text,
    body=optional_text,
    data=json_objects,
    category=st.none() | keys,
    group=st.none() | keys,
    channels=st.none() | st.lists(st.sampled_from(list(Channel)), max_size=6).map(tuple),
)


def through_json_text(spec: EventSpec) -> EventSpec:
    return EventSpec.from_json(json.loads(json.dumps(spec.to_json())))


@given(specs)
def test_an_event_spec_survives_to_json_and_back(spec: EventSpec) -> None:
    assert EventSpec.from_json(spec.to_json()) == spec


@given(specs)
def test_an_event_spec_survives_storage_as_json_text(spec: EventSpec) -> None:
    restored = through_json_text(spec)
    assert restored == spec
    assert restored.channels is None or all(isinstance(c, Channel) for c in restored.channels)


def test_from_json_fills_what_an_older_stored_event_left_out() -> None:
    spec = EventSpec.from_json({"type": "order.placed", "recipients": {"users": ["u1"]}})
    assert spec == EventSpec(type="order.placed", recipients=Recipients(users=("u1",)))


def test_from_json_rejects_a_channel_it_does_not_know() -> None:
    raw = EventSpec(type="t", recipients=Recipients(users=("u",))).to_json()
    raw["channels"] = ["pigeon"]
    with pytest.raises(ValueError, match="pigeon"):
        EventSpec.from_json(raw)


@given(specs)
def test_equal_specs_have_equal_fingerprints(spec: EventSpec) -> None:
    copy = replace(spec, data=json.loads(json.dumps(spec.data)))
    assert copy.fingerprint() == spec.fingerprint()
    assert through_json_text(spec).fingerprint() == spec.fingerprint()


@given(specs)
def test_the_fingerprint_ignores_the_order_of_keys_in_data(spec: EventSpec) -> None:
    reordered = replace(spec, data=dict(reversed(list(spec.data.items()))))
    assert reordered.fingerprint() == spec.fingerprint()


def test_the_fingerprint_ignores_key_order_in_nested_data() -> None:
    a = EventSpec(type="t", recipients=Recipients(users=("u",)), data={"x": {"a": 1, "b": 2}})
    b = EventSpec(type="t", recipients=Recipients(users=("u",)), data={"x": {"b": 2, "a": 1}})
    assert a.fingerprint() == b.fingerprint()


def _other_text(value: str | None) -> str | None:
    return "" if value is None else None


CHANGES: dict[str, Callable[[EventSpec], EventSpec]] = {
    "type": lambda s: replace(s, type=s.type + "x"),
    "users": lambda s: replace(
        s, recipients=replace(s.recipients, users=(*s.recipients.users, "added"))
    ),
    "groups": lambda s: replace(
        s, recipients=replace(s.recipients, groups=(*s.recipients.groups, "added"))
    ),
    "communities": lambda s: replace(
        s, recipients=replace(s.recipients, communities=(*s.recipients.communities, "added"))
    ),
    "title": lambda s: replace(s, title=_other_text(s.title)),
    "body": lambda s: replace(s, body=_other_text(s.body)),
    "data": lambda s: replace(s, data={"wrapped": s.data}),
    "category": lambda s: replace(s, category=_other_text(s.category)),
    "group": lambda s: replace(s, group=_other_text(s.group)),
    "channels": lambda s: replace(s, channels=None if s.channels is not None else ()),
}


@pytest.mark.parametrize("field", list(CHANGES))
@given(spec=specs)
def test_the_fingerprint_changes_when_any_field_changes(field: str, spec: EventSpec) -> None:
    changed = CHANGES[field](spec)
    assert changed != spec
    assert changed.fingerprint() != spec.fingerprint()


def test_the_fingerprint_tells_a_user_from_a_group_of_the_same_key() -> None:
    as_user = EventSpec(type="t", recipients=Recipients(users=("k",)))
    as_group = EventSpec(type="t", recipients=Recipients(groups=("k",)))
    assert as_user.fingerprint() != as_group.fingerprint()


def test_the_fingerprint_is_a_hex_sha256() -> None:
    fingerprint = EventSpec(type="t", recipients=Recipients(users=("u",))).fingerprint()
    assert len(fingerprint) == 64
    assert set(fingerprint) <= set("0123456789abcdef")


def test_recipients_are_empty_only_when_nobody_is_named() -> None:
    assert Recipients().is_empty()
    assert Recipients().count() == 0
    for named in (
        Recipients(users=("u",)),
        Recipients(groups=("g",)),
        Recipients(communities=("c",)),
    ):
        assert not named.is_empty()
        assert named.count() == 1
    assert Recipients(users=("a", "b"), groups=("g",), communities=("c",)).count() == 4


@given(st.dictionaries(st.sampled_from(list(Status)), st.integers(min_value=0, max_value=10**9)))
def test_status_counts_name_every_status_with_zero_for_the_missing(
    counts: dict[Status, int],
) -> None:
    result = StatusCounts.of(counts)
    assert set(result.by_status) == set(Status)
    for status in Status:
        assert result.by_status[status] == counts.get(status, 0)
    assert result.total == sum(counts.values())


def test_status_counts_of_nothing_are_all_zero() -> None:
    result = StatusCounts.of({})
    assert result.total == 0
    assert result.by_status == dict.fromkeys(Status, 0)


@pytest.mark.parametrize(
    "cursor", [None, "", "abc", "-1", "-100", "1.5", "0x10", "1e3", "[]", "None"]
)
def test_an_absent_unreadable_or_negative_cursor_means_the_start(cursor: str | None) -> None:
    assert parse_cursor(cursor) == 0


@given(st.integers(min_value=0, max_value=2**63 - 1))
def test_a_cursor_reads_back_the_item_id_behind_it(item_id: int) -> None:
    item = _item(item_id)
    assert parse_cursor(item.cursor) == item_id


@given(st.text())
def test_parse_cursor_never_fails_and_never_goes_below_the_start(cursor: str) -> None:
    assert parse_cursor(cursor) >= 0


def test_a_cursor_too_long_to_be_a_number_means_the_start() -> None:
    assert parse_cursor("9" * 5000) == 0


def test_later_items_have_cursors_that_read_as_later() -> None:
    assert parse_cursor(_item(9).cursor) < parse_cursor(_item(10).cursor)


def _item(item_id: int, **fields: Any) -> InboxItem:
    values: dict[str, Any] = {
        "id": item_id,
        "notification_id": "ntf_1",
        "event_id": "evt_1",
        "user": "u1",
        "status": Status.PENDING,
        "type": "t",
        "title": None,
        "body": None,
        "data": {},
        "category": None,
        "group": None,
        "created_at": datetime(2024, 1, 1, tzinfo=UTC),
    }
    values.update(fields)
    return InboxItem(**values)
