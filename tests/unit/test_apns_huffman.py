"""Clarion's HPACK Huffman coder must agree with `hpack`'s byte for byte, both ways."""

from __future__ import annotations

import pytest
from hpack.huffman import HuffmanEncoder
from hpack.huffman_constants import REQUEST_CODES, REQUEST_CODES_LENGTH
from hpack.huffman_table import decode_huffman
from hypothesis import given, settings, strategies as st

from clarion.adapters.providers.http2 import HpackError, huffman_decode, huffman_encode

REFERENCE = HuffmanEncoder(REQUEST_CODES, REQUEST_CODES_LENGTH)


@settings(max_examples=500)
@given(st.binary(max_size=600))
def test_the_fast_encoder_matches_hpack_byte_for_byte(value: bytes) -> None:
    assert huffman_encode(value) == REFERENCE.encode(value)


@settings(max_examples=500)
@given(st.binary(max_size=600))
def test_the_table_driven_decoder_reads_what_hpack_writes(value: bytes) -> None:
    coded = REFERENCE.encode(value)
    assert huffman_decode(coded) == value == decode_huffman(coded)


def test_a_provider_token_sized_value_encodes_the_same() -> None:
    token = b"bearer " + b"eyJhbGciOiJFUzI1NiIsImtpZCI6IkFCQzEyM0RFRkcifQ." * 4
    assert huffman_encode(token) == REFERENCE.encode(token)
    assert huffman_decode(huffman_encode(token)) == token


@pytest.mark.parametrize(
    "coded",
    [
        b"\xff\xff\xff\xff",  # 30 ones: the EOS symbol inside the string
        b"\x00",  # '0' (00000) then 3 bits of padding that are not all ones
        b"\x1f\xff",  # 'a' (00011) then 11 one bits: padding longer than 7 bits
    ],
)
def test_the_decoder_refuses_eos_and_bad_padding(coded: bytes) -> None:
    with pytest.raises(HpackError):
        huffman_decode(coded)
