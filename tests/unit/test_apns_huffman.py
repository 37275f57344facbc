"""Clarion's HPACK Huffman encoder must produce exactly what `hpack`'s does."""

from __future__ import annotations

from hpack.huffman import HuffmanEncoder
from hpack.huffman_constants import REQUEST_CODES, REQUEST_CODES_LENGTH
from hypothesis import given, settings, strategies as st

from clarion.adapters.providers.apns import _HuffmanEncoder

REFERENCE = HuffmanEncoder(REQUEST_CODES, REQUEST_CODES_LENGTH)


@settings(max_examples=500)
@given(st.binary(max_size=600))
def test_the_fast_encoder_matches_hpack_byte_for_byte(value: bytes) -> None:
    fast = _HuffmanEncoder()
    assert fast.encode(value) == REFERENCE.encode(value)
    # Twice: the second call may come from its memory of recent values.
    assert fast.encode(value) == REFERENCE.encode(value)


def test_a_provider_token_sized_value_encodes_the_same() -> None:
    token = b"bearer " + b"eyJhbGciOiJFUzI1NiIsImtpZCI6IkFCQzEyM0RFRkcifQ." * 4
    assert _HuffmanEncoder().encode(token) == REFERENCE.encode(token)
