"""API keys: printable form, checksum, digest."""

from __future__ import annotations

import hashlib
import string

import pytest
from hypothesis import given, strategies as st

from clarion.domain.keys import PREFIX, ParsedKey, digest, format_key, parse_key, same_digest

KEY_ID = "0123456789abcdef"
SECRET = bytes(range(32))
# Issued by an earlier build: keys already handed out must keep parsing.
ISSUED = "clk_0123456789abcdef_AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh80rzxNm"

key_ids = st.text(alphabet="0123456789abcdef", min_size=16, max_size=16)
secrets = st.binary(min_size=32, max_size=32)
# Characters the key's shape allows anywhere, so most changes get past the shape to the checksum.
key_characters = st.sampled_from(string.ascii_letters + string.digits + "_-") | st.characters()


def test_a_formatted_key_has_the_documented_shape() -> None:
    key = format_key(KEY_ID, SECRET)
    prefix, key_id, rest = key.split("_", 2)
    assert prefix == PREFIX == "clk"
    assert key_id == KEY_ID
    assert len(rest) == 43 + 6


def test_a_key_issued_earlier_still_parses() -> None:
    assert format_key(KEY_ID, SECRET) == ISSUED
    assert parse_key(ISSUED) == ParsedKey(key_id=KEY_ID, digest=digest(ISSUED))


@given(key_id=key_ids, secret=secrets)
def test_every_formatted_key_parses_back_to_its_key_id_and_digest(
    key_id: str, secret: bytes
) -> None:
    key = format_key(key_id, secret)
    assert parse_key(key) == ParsedKey(key_id=key_id, digest=digest(key))


@given(secret=secrets, data=st.data())
def test_changing_any_one_character_is_rejected(secret: bytes, data: st.DataObject) -> None:
    key = format_key(KEY_ID, secret)
    position = data.draw(st.integers(min_value=0, max_value=len(key) - 1), label="position")
    replacement = data.draw(key_characters.filter(lambda c: c != key[position]), label="with")
    changed = key[:position] + replacement + key[position + 1 :]
    assert parse_key(changed) is None


@pytest.mark.parametrize("position", range(len(ISSUED)))
def test_every_position_is_covered_by_shape_or_checksum(position: int) -> None:
    # A change that keeps the character class at each position, so only the checksum can tell.
    original = ISSUED[position]
    if original in string.hexdigits and position < 20:
        replacement = "0" if original != "0" else "1"
    elif original == "_" and position in (3, 20):
        replacement = "-"
    else:
        replacement = "A" if original != "A" else "B"
    assert parse_key(ISSUED[:position] + replacement + ISSUED[position + 1 :]) is None


@pytest.mark.parametrize(
    "text",
    [
        "",
        "clk",
        ISSUED.replace("clk_", "cls_", 1),
        ISSUED.replace("clk_", "CLK_", 1),
        ISSUED.replace("clk_", "clk-", 1),
        "sk_" + ISSUED[4:],
        ISSUED[:-1],
        ISSUED + "a",
        ISSUED[:5] + ISSUED[6:],
        ISSUED.replace(KEY_ID, KEY_ID.upper(), 1),
        " " + ISSUED,
        ISSUED + " ",
        ISSUED + "\n",
        ISSUED.replace("_", "", 1),
    ],
    ids=lambda t: repr(t)[:24],
)
def test_a_key_of_the_wrong_prefix_or_shape_is_rejected(text: str) -> None:
    assert parse_key(text) is None


@given(st.text())
def test_arbitrary_text_is_not_taken_for_a_key(text: str) -> None:
    assert parse_key(text) is None


def test_the_digest_is_the_hex_sha256_of_the_whole_key() -> None:
    assert digest("") == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    assert digest(ISSUED) == hashlib.sha256(ISSUED.encode()).hexdigest()


@given(st.text(), st.text())
def test_the_digest_is_stable_and_tells_keys_apart(a: str, b: str) -> None:
    assert digest(a) == digest(a)
    assert len(digest(a)) == 64
    assert set(digest(a)) <= set("0123456789abcdef")
    assert (digest(a) == digest(b)) == (a == b)


def test_two_keys_with_the_same_id_have_different_digests() -> None:
    other = format_key(KEY_ID, bytes(32))
    assert parse_key(other).digest != parse_key(ISSUED).digest  # type: ignore[union-attr]


def test_same_digest_accepts_equal_digests() -> None:
    assert same_digest(digest(ISSUED), digest(ISSUED))


@pytest.mark.parametrize(
    "other", [digest("another key"), digest(ISSUED)[:-1], digest(ISSUED).upper(), ""]
)
def test_same_digest_rejects_any_other_digest(other: str) -> None:
    assert not same_digest(digest(ISSUED), other)
