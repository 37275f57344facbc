"""Clarion's HPACK halves against `hpack`'s: our stateless encoder is read back by `hpack`'s
decoder without touching its table, and our decoder reads whatever `hpack`'s encoder writes,
dynamic table, evictions, size updates and all."""

from __future__ import annotations

import hpack
import pytest
from hypothesis import given, settings, strategies as st

from clarion.adapters.providers import http2
from clarion.adapters.providers.apns import header_block
from clarion.wire import apns

names = st.sampled_from(
    [b":status", b"apns-id", b"apns-unique-id", b"content-type", b"retry-after", b"x-a", b"date"]
) | st.binary(min_size=1, max_size=20).map(lambda b: b.lower())
values = st.binary(max_size=300)
header_lists = st.lists(st.tuples(names, values), max_size=12)


@settings(max_examples=300)
@given(
    blocks=st.lists(
        st.tuples(header_lists, st.booleans(), st.sampled_from([None, 0, 64, 256, 4096])),
        min_size=1,
        max_size=12,
    ),
    sensitive=st.booleans(),
)
def test_the_decoder_reads_what_hpack_encodes_and_keeps_the_same_table(
    blocks: list[tuple[list[tuple[bytes, bytes]], bool, int | None]], sensitive: bool
) -> None:
    encoder = hpack.Encoder()
    decoder = http2.HeaderDecoder()
    for headers, huffman, resize in blocks:
        if resize is not None:
            encoder.header_table_size = resize  # the next block opens with a size update
        sent = [hpack.NeverIndexedHeaderTuple(*h) if sensitive else h for h in headers]
        block = encoder.encode(sent, huffman=huffman)
        assert decoder.decode(block) == [(bytes(n), bytes(v)) for n, v in headers]
        assert decoder.table == list(encoder.header_table.dynamic_entries)


@settings(max_examples=300)
@given(
    fields=st.lists(st.tuples(names, values, st.booleans(), st.booleans()), max_size=12),
)
def test_our_fields_decode_with_hpack_and_leave_its_table_empty(
    fields: list[tuple[bytes, bytes, bool, bool]],
) -> None:
    block = b"".join(
        http2.encode_field(name, value, never_indexed=never, huffman=huffman)
        for name, value, never, huffman in fields
    )
    decoder = hpack.Decoder()
    decoded = decoder.decode(block, raw=True)
    assert [(n, v) for n, v in decoded] == [(n, v) for n, v, _, _ in fields]
    never_indexed = [isinstance(h, hpack.NeverIndexedHeaderTuple) for h in decoded]
    assert never_indexed == [never for _, _, never, _ in fields]
    assert len(decoder.header_table.dynamic_entries) == 0


def test_apns_request_headers_use_the_static_table_and_never_index_secrets() -> None:
    headers = (
        (":method", "POST"),
        (":scheme", "https"),
        (":authority", "api.push.apple.com"),
        (":path", "/3/device/" + "ab" * 32),
        ("authorization", "bearer eyJ0.eyJ1.c2ln"),
        ("apns-topic", "com.example.app"),
        ("apns-id", "4f1ec6e6-8c8c-4b11-a8a3-0c4b3e8c2c01"),
        ("apns-collapse-id", "c" * 200),  # a length past the 7-bit prefix
    )
    block = header_block(headers, apns.NEVER_INDEXED)
    assert block[:2] == b"\x83\x87"  # :method POST, :scheme https: static indexes 3 and 7
    decoder = hpack.Decoder()
    decoded = decoder.decode(block, raw=True)
    assert [(n.decode(), v.decode()) for n, v in decoded] == list(headers)
    never = {h[0] for h in decoded if isinstance(h, hpack.NeverIndexedHeaderTuple)}
    assert never == {b":path", b"authorization"}
    assert len(decoder.header_table.dynamic_entries) == 0
    assert header_block(headers, apns.NEVER_INDEXED) == block  # cached parts, same bytes


@pytest.mark.parametrize("value", [0, 14, 15, 16, 126, 127, 128, 255, 16_383, 2**20, 2**28])
@pytest.mark.parametrize("prefix", [4, 5, 6, 7])
def test_integers_round_trip_at_every_prefix(value: int, prefix: int) -> None:
    encoded = http2.encode_integer(value, prefix)
    decoded = hpack.hpack.decode_integer(encoded, prefix)
    assert decoded == (value, len(encoded))


@pytest.mark.parametrize(
    "block",
    [
        b"\x80",  # index 0
        b"\xff\x3f",  # index 190, in neither table
        b"\x40\x85abc",  # a string longer than the block
        b"\x88\x3f\xe1\x1f",  # a size update after a field
        b"\x3f\xe2\x1f",  # a size update above our 4,096
        b"\x00\x84\xff\xff\xff\xff\x01a",  # a Huffman name holding EOS
    ],
)
def test_malformed_blocks_are_refused(block: bytes) -> None:
    with pytest.raises(http2.HpackError):
        http2.HeaderDecoder().decode(block)
