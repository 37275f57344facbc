"""Secrets at rest: sealed per owner, opened only with the same key and owner."""

from __future__ import annotations

import base64
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, strategies as st

from clarion.adapters.sealing import Sealer, SealError, load_or_create_key

KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))
SEALER = Sealer(KEY)


@pytest.fixture
def no_umask() -> Iterator[None]:
    """Let the process create files with any mode, so the mode seen is the one asked for."""
    previous = os.umask(0)
    try:
        yield
    finally:
        os.umask(previous)


@given(plaintext=st.text(), owner=st.text())
def test_a_sealed_value_opens_for_its_owner(plaintext: str, owner: str) -> None:
    assert SEALER.open(SEALER.seal(plaintext, owner=owner), owner=owner) == plaintext


def test_a_sealed_value_opens_with_a_new_sealer_of_the_same_key() -> None:
    sealed = Sealer(KEY).seal("apns-private-key", owner="tenant-1")
    assert Sealer(KEY).open(sealed, owner="tenant-1") == "apns-private-key"


def test_a_sealed_value_is_versioned_printable_and_hides_the_plaintext() -> None:
    sealed = SEALER.seal("hunter2-hunter2", owner="tenant-1")
    assert sealed.startswith("v1:")
    assert sealed.isprintable()
    assert "hunter2" not in sealed
    assert b"hunter2" not in base64.b64decode(sealed[3:])


def test_sealing_the_same_value_twice_gives_different_text() -> None:
    assert SEALER.seal("secret", owner="t") != SEALER.seal("secret", owner="t")


@given(plaintext=st.text(), owner=st.text(), other=st.text())
def test_a_sealed_value_does_not_open_for_another_owner(
    plaintext: str, owner: str, other: str
) -> None:
    if other == owner:
        other = owner + "x"
    with pytest.raises(SealError):
        SEALER.open(SEALER.seal(plaintext, owner=owner), owner=other)


def test_a_sealed_value_does_not_open_with_another_key() -> None:
    sealed = SEALER.seal("secret", owner="tenant-1")
    with pytest.raises(SealError):
        Sealer(OTHER_KEY).open(sealed, owner="tenant-1")


@given(plaintext=st.text(max_size=50), data=st.data())
def test_a_tampered_value_does_not_open(plaintext: str, data: st.DataObject) -> None:
    sealed = SEALER.seal(plaintext, owner="tenant-1")
    raw = bytearray(base64.b64decode(sealed[3:]))
    position = data.draw(st.integers(min_value=0, max_value=len(raw) - 1), label="byte")
    flip = data.draw(st.integers(min_value=1, max_value=255), label="xor")
    raw[position] ^= flip
    tampered = "v1:" + base64.b64encode(bytes(raw)).decode()
    with pytest.raises(SealError):
        SEALER.open(tampered, owner="tenant-1")


@pytest.mark.parametrize("prefix", ["v2:", "V1:", "v1;", ""])
def test_a_value_of_an_unknown_version_does_not_open(prefix: str) -> None:
    sealed = SEALER.seal("secret", owner="t")
    with pytest.raises(SealError):
        SEALER.open(prefix + sealed[3:], owner="t")


def test_a_value_too_short_to_hold_a_nonce_does_not_open() -> None:
    with pytest.raises(SealError):
        SEALER.open("v1:" + base64.b64encode(b"short").decode(), owner="t")


@pytest.mark.parametrize("cut", ["last character", "lone character"])
def test_a_truncated_value_does_not_open(cut: str) -> None:
    sealed = SEALER.seal("secret", owner="t")
    value = sealed[:-1] if cut == "last character" else "v1:A"
    with pytest.raises(SealError):
        SEALER.open(value, owner="t")


@pytest.mark.parametrize("length", [0, 16, 31, 33, 64])
def test_a_sealer_needs_a_32_byte_key(length: int) -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        Sealer(b"k" * length)


@pytest.mark.usefixtures("no_umask")
def test_load_or_create_key_creates_an_owner_only_key_file(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "sealing.key"
    key = load_or_create_key(path)
    assert len(key) == 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert base64.b64decode(path.read_text().strip()) == key


def test_load_or_create_key_returns_the_same_key_the_second_time(tmp_path: Path) -> None:
    path = tmp_path / "sealing.key"
    first = load_or_create_key(path)
    assert load_or_create_key(path) == first
    sealed = Sealer(first).seal("secret", owner="t")
    assert Sealer(load_or_create_key(path)).open(sealed, owner="t") == "secret"


def test_load_or_create_key_makes_a_new_key_per_file(tmp_path: Path) -> None:
    assert load_or_create_key(tmp_path / "a.key") != load_or_create_key(tmp_path / "b.key")


def test_load_or_create_key_reads_a_key_written_by_hand(tmp_path: Path) -> None:
    path = tmp_path / "sealing.key"
    path.write_text(base64.b64encode(KEY).decode() + "\n")
    assert load_or_create_key(path) == KEY


@pytest.mark.parametrize("length", [0, 16, 31, 33])
def test_load_or_create_key_rejects_a_file_holding_a_wrong_length_key(
    tmp_path: Path, length: int
) -> None:
    path = tmp_path / "sealing.key"
    content = base64.b64encode(b"k" * length).decode()
    path.write_text(content)
    with pytest.raises(ValueError, match="32-byte"):
        load_or_create_key(path)
    assert path.read_text() == content
