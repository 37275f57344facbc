"""The rules external keys follow."""

from __future__ import annotations

import pytest
from hypothesis import given, strategies as st

from clarion.domain.identifiers import MAX_KEY_LENGTH, is_valid_key, unique_in_order

printable = st.characters(categories=["L", "M", "N", "P", "S"])


@pytest.mark.parametrize(
    "key",
    [
        "a",
        "user-42",
        "alice@example.com",
        "3f2504e0-4f89-11d3-9a0c-0305e82c3301",
        "team/eng/backend",
        "first last",
        "名前",
        "x" * MAX_KEY_LENGTH,
    ],
)
def test_an_ordinary_key_is_valid(key: str) -> None:
    assert is_valid_key(key)


@pytest.mark.parametrize(
    "key",
    [
        "",
        "x" * (MAX_KEY_LENGTH + 1),
        " user",
        "user ",
        "\tuser",
        "user\n",
        "user\nINFO forged log line",
        "user\r\n",
        "us\x00er",
        "us\x1b[31mer",
        "us\x7fer",
        "us\u2028er",
        "us\u200ber",
        " ",
    ],
    ids=repr,
)
def test_a_key_with_blanks_around_control_characters_or_a_bad_length_is_invalid(
    key: str,
) -> None:
    assert not is_valid_key(key)


def test_max_key_length_is_255() -> None:
    assert MAX_KEY_LENGTH == 255


@given(st.text(printable, min_size=1, max_size=MAX_KEY_LENGTH))
def test_printable_text_of_a_valid_length_is_a_valid_key(key: str) -> None:
    assert is_valid_key(key)


@given(
    st.text(printable, max_size=20),
    st.characters(categories=["Cc"]),
    st.text(printable, max_size=20),
)
def test_a_control_character_anywhere_makes_a_key_invalid(
    before: str, control: str, after: str
) -> None:
    assert not is_valid_key(before + control + after)


@given(
    st.text(printable, min_size=1, max_size=20),
    st.sampled_from([" ", "\t", "\n", "\u00a0", "\u3000"]),
    st.booleans(),
)
def test_a_blank_at_either_end_makes_a_key_invalid(key: str, blank: str, leading: bool) -> None:
    assert not is_valid_key(blank + key if leading else key + blank)


@given(st.text(printable, min_size=MAX_KEY_LENGTH + 1, max_size=MAX_KEY_LENGTH + 50))
def test_a_key_longer_than_the_maximum_is_invalid(key: str) -> None:
    assert not is_valid_key(key)


def test_unique_in_order_keeps_the_first_occurrence_of_each() -> None:
    assert unique_in_order(["b", "a", "b", "c", "a"]) == ("b", "a", "c")
    assert unique_in_order(()) == ()


@given(st.lists(st.sampled_from("abcde") | st.text(max_size=3)))
def test_unique_in_order_drops_repeats_and_keeps_order(values: list[str]) -> None:
    result = unique_in_order(values)
    assert len(result) == len(set(result))
    assert set(result) == set(values)
    assert list(result) == [v for i, v in enumerate(values) if v not in values[:i]]
    assert unique_in_order(tuple(values)) == result
