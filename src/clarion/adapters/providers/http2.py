"""The client side of HTTP/2 (RFC 9113) with HPACK (RFC 7541), sans I/O, lean enough for APNs.

Why our own: pushes per client CPU-second are what bound a push worker, and the libraries fall
short. On `h2` 4.4.1 (pure Python), Clarion's APNs client did about 1,700 to 2,700 pushes per
CPU-second against the emulator, 1.03-1.17x aioapns (itself on `h2`), and a profile put about two
thirds of the client's CPU in `h2`/`hpack` state machines (about 500 µs a push in all). `jh2`
5.0.15 (a fork with a compiled HPACK) as a drop-in gained only about 1.2x: its connection and
stream state machines are still Python that runs for every frame and event, and counting open
streams costs O(open streams) per new stream. On this engine the client does about 4,900 pushes
per CPU-second, 2.6x aioapns and 2.1x aioapns with its stream-limit bug fixed (200,000 pushes,
docs/benchmarks.md); the engine's own share is about 20 µs a push. It does only what a client
sending requests and reading answers needs, in as few Python steps per request as possible:

- Requests go out as one HEADERS frame (CONTINUATION when the block is larger than the server's
  SETTINGS_MAX_FRAME_SIZE) and DATA frames within the connection's and the stream's send windows;
  a body the windows cannot take yet is queued and sent as WINDOW_UPDATEs arrive.
- HPACK encoding is stateless: static-table indexes and literals "without indexing" or "never
  indexed", which the caller may pre-encode once and cache (`encode_field`). Nothing is ever
  inserted in the server's dynamic table for us, so there is no encoder state to keep; when the
  server changes SETTINGS_HEADER_TABLE_SIZE the next block opens with a table size update to 0.
- Answers are decoded with the full HPACK decoder (`HeaderDecoder`: dynamic table, size updates,
  a table-driven Huffman decoder), whatever the server chooses to index.
- The server's SETTINGS are honoured: MAX_CONCURRENT_STREAMS (up and down; new streams beyond
  it are refused here, the caller waits), INITIAL_WINDOW_SIZE (open streams' windows move by
  the difference), MAX_FRAME_SIZE, HEADER_TABLE_SIZE; ours say ENABLE_PUSH=0.
- Receive-side flow control: WINDOW_UPDATEs for the connection and for streams as answer bodies
  are consumed. Padding, PRIORITY flags, 1xx answers and trailers are read and set aside.
- PING is answered; GOAWAY, RST_STREAM and answers reach the owner through a `Listener`; a peer
  that breaks the protocol gets GOAWAY with the error code, and `receive` raises `ProtocolError`.

The owner (the APNs `Connection`) does the I/O: it feeds `receive` with what the socket reads and
writes what `data_to_send` returns, once per event-loop turn.
"""

from __future__ import annotations

import struct
from collections import deque
from enum import IntEnum
from typing import Final, Protocol

from hpack.huffman_constants import REQUEST_CODES, REQUEST_CODES_LENGTH
from hpack.table import HeaderTable

PREFACE: Final = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
MAX_STREAM_ID: Final = 2**31 - 1
MAX_WINDOW: Final = 2**31 - 1
DEFAULT_WINDOW: Final = 65_535
DEFAULT_MAX_FRAME_SIZE: Final = 16_384
MAX_FRAME_SIZE_LIMIT: Final = 2**24 - 1
DEFAULT_HEADER_TABLE_SIZE: Final = 4_096
MAX_HEADER_LIST_SIZE: Final = 65_536
"""Largest decoded answer header list we take (and advertise): APNs answers are a few hundred
bytes; this only bounds what a broken or hostile server can make us hold."""
MAX_HEADER_BLOCK: Final = 2 * MAX_HEADER_LIST_SIZE
"""Largest encoded header block (HEADERS + CONTINUATIONs) we buffer before giving up."""
UNLIMITED_STREAMS: Final = 2**31 - 1
"""MAX_CONCURRENT_STREAMS is unlimited until the server says otherwise (RFC 9113 §6.5.2)."""

# Frame types (RFC 9113 §6).
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY = range(8)
WINDOW_UPDATE, CONTINUATION = 8, 9
# Flags.
END_STREAM = ACK = 0x1
END_HEADERS = 0x4
PADDED = 0x8
PRIORITY_FLAG = 0x20
# Settings (RFC 9113 §6.5.2).
HEADER_TABLE_SIZE, ENABLE_PUSH, MAX_CONCURRENT_STREAMS, INITIAL_WINDOW_SIZE = 1, 2, 3, 4
MAX_FRAME_SIZE, SETTINGS_MAX_HEADER_LIST_SIZE = 5, 6


class ErrorCode(IntEnum):
    """RFC 9113 §7."""

    NO_ERROR = 0x0
    PROTOCOL_ERROR = 0x1
    INTERNAL_ERROR = 0x2
    FLOW_CONTROL_ERROR = 0x3
    SETTINGS_TIMEOUT = 0x4
    STREAM_CLOSED = 0x5
    FRAME_SIZE_ERROR = 0x6
    REFUSED_STREAM = 0x7
    CANCEL = 0x8
    COMPRESSION_ERROR = 0x9
    CONNECT_ERROR = 0xA
    ENHANCE_YOUR_CALM = 0xB
    INADEQUATE_SECURITY = 0xC
    HTTP_1_1_REQUIRED = 0xD


def error_name(code: int) -> str:
    """The RFC name of an error code, or its number when unknown (peers may send any)."""
    try:
        return ErrorCode(code).name
    except ValueError:
        return f"0x{code:x}"


class ProtocolError(Exception):
    """The server broke HTTP/2 or HPACK: a connection error; GOAWAY with `code` is queued."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(f"{code.name}: {message}")
        self.code = code


class CannotStart(Exception):
    """No new stream now: closed, told to go away, out of stream ids, or at the server's limit."""


class HpackError(Exception):
    """An undecodable header block (a connection error of type COMPRESSION_ERROR)."""


_FRAME_HEAD = struct.Struct(">BHBBL")
"""Length (24 bits, as a byte and a short), type, flags, stream id (RFC 9113 §4.1)."""
_U32 = struct.Struct(">L")
_GOAWAY_HEAD = struct.Struct(">LL")
_SETTING = struct.Struct(">HL")


def frame(kind: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    """One frame, header and payload."""
    size = len(payload)
    return _FRAME_HEAD.pack(size >> 16, size & 0xFFFF, kind, flags, stream_id) + payload


# -- HPACK ---------------------------------------------------------------------------------------

STATIC_TABLE: Final = HeaderTable.STATIC_TABLE
# Reversed, so that a name or field listed twice keeps its first (lowest) index.
_STATIC_FIELDS = {field: i for i, field in reversed(list(enumerate(STATIC_TABLE, start=1)))}
_STATIC_NAMES = {field[0]: i for i, field in reversed(list(enumerate(STATIC_TABLE, start=1)))}

_HUFFMAN_BITS = [
    format(code, f"0{length}b")
    for code, length in zip(REQUEST_CODES, REQUEST_CODES_LENGTH, strict=True)
]


def huffman_encode(data: bytes) -> bytes:
    """HPACK's Huffman code (RFC 7541 Appendix B), built as one bit string: one join and one
    int conversion instead of a loop of big-int shifts."""
    if not data:
        return b""
    bits = "".join([_HUFFMAN_BITS[byte] for byte in data])
    pad = -len(bits) % 8
    if pad:
        bits += "1" * pad  # pad to an octet with the EOS prefix
    return int(bits, 2).to_bytes(len(bits) // 8, "big")


def _huffman_tables() -> tuple[list[int], list[bytes], frozenset[int]]:
    """The Huffman decoder as a finite-state machine that eats one byte per step.

    States are the 256 inner nodes of the code tree (0 is the root), each kept shifted left by
    8 bits so that `state | byte` indexes the tables: `next_state[...]` is the (shifted) state
    after the byte, -1 when it completes EOS, which may not appear in a string; `emit[...]` the
    symbols completed on the way. Built from a 4-bit table (4,096 entries) and composed to
    65,536 once, on first use (about 30 ms)."""
    children: list[list[int]] = [[0, 0]]  # >0: inner node id, <=0: -symbol (leaf)
    leaf = [[False, False]]
    for symbol, (code, length) in enumerate(zip(REQUEST_CODES, REQUEST_CODES_LENGTH, strict=True)):
        node = 0
        for shift in range(length - 1, -1, -1):
            bit = (code >> shift) & 1
            if shift == 0:
                children[node][bit] = symbol
                leaf[node][bit] = True
            else:
                if children[node][bit] == 0:
                    children.append([0, 0])
                    leaf.append([False, False])
                    children[node][bit] = len(children) - 1
                node = children[node][bit]
    eos = len(REQUEST_CODES) - 1
    nibble_next: list[int] = []
    nibble_emit: list[bytes] = []
    for state in range(len(children)):
        for nibble in range(16):
            node, out, broken = state, bytearray(), False
            for shift in (3, 2, 1, 0):
                bit = (nibble >> shift) & 1
                if leaf[node][bit]:
                    symbol = children[node][bit]
                    if symbol == eos:
                        broken = True
                        break
                    out.append(symbol)
                    node = 0
                else:
                    node = children[node][bit]
            nibble_next.append(-1 if broken else node)
            nibble_emit.append(bytes(out))
    next_state = [-1] * (len(children) << 8)
    emit = [b""] * (len(children) << 8)
    for state in range(len(children)):
        for high in range(16):
            first = state << 4 | high
            middle = nibble_next[first]
            if middle < 0:
                continue
            row = state << 8 | high << 4
            for low in range(16):
                second = middle << 4 | low
                after = nibble_next[second]
                next_state[row | low] = after << 8 if after >= 0 else -1
                emit[row | low] = nibble_emit[first] + nibble_emit[second]
    # A string may end inside a code only on a prefix of EOS (all ones) of at most 7 bits.
    accepting, node = set(), 0
    for _ in range(8):
        accepting.add(node << 8)
        node = children[node][1]
    return next_state, emit, frozenset(accepting)


_HUFFMAN_DECODER: tuple[list[int], list[bytes], frozenset[int]] | None = None


def huffman_decode(data: bytes) -> bytes:
    """Decode an HPACK Huffman string (RFC 7541 §5.2).

    Raises:
        HpackError: EOS inside the string, or padding longer than 7 bits or not all ones.
    """
    global _HUFFMAN_DECODER  # built once, on first use
    if _HUFFMAN_DECODER is None:
        _HUFFMAN_DECODER = _huffman_tables()
    next_state, emit, accepting = _HUFFMAN_DECODER
    out = bytearray()
    state = 0
    for byte in data:
        index = state | byte
        out += emit[index]
        state = next_state[index]
        if state < 0:
            raise HpackError("EOS in a Huffman string")
    if state not in accepting:
        raise HpackError("bad Huffman padding")
    return bytes(out)


def encode_integer(value: int, prefix_bits: int, first: int = 0) -> bytes:
    """An HPACK integer (RFC 7541 §5.1) with `first`'s high bits in its first octet."""
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes((first | value,))
    out = bytearray((first | limit,))
    value -= limit
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def encode_string(data: bytes, *, huffman: bool) -> bytes:
    """An HPACK string literal (RFC 7541 §5.2), Huffman-coded when asked and shorter."""
    if huffman:
        coded = huffman_encode(data)
        if len(coded) < len(data):
            return encode_integer(len(coded), 7, 0x80) + coded
    return encode_integer(len(data), 7) + data


def encode_field(
    name: bytes, value: bytes, *, never_indexed: bool = False, huffman: bool = True
) -> bytes:
    """One header field that leaves the decoder's dynamic table alone (RFC 7541 §6.1-6.2):
    a static-table index when name and value are there, else a literal "without indexing"
    (or "never indexed", for secrets and unique values) naming a static entry when it can.

    Callers cache the result for fields that repeat: it depends on nothing but the arguments.
    """
    if not never_indexed:
        index = _STATIC_FIELDS.get((name, value))
        if index is not None:
            return encode_integer(index, 7, 0x80)
    return encode_name(name, never_indexed=never_indexed, huffman=huffman) + encode_string(
        value, huffman=huffman
    )


def encode_name(name: bytes, *, never_indexed: bool = False, huffman: bool = True) -> bytes:
    """The start of a literal field "without indexing" or "never indexed" (RFC 7541 §6.2.2-3):
    the representation's first octet and the name, by its static-table index when it has one.
    The value follows as `encode_string`."""
    first = 0x10 if never_indexed else 0x00
    name_index = _STATIC_NAMES.get(name)
    if name_index is not None:
        return encode_integer(name_index, 4, first)
    return bytes((first,)) + encode_string(name, huffman=huffman)


class HeaderDecoder:
    """HPACK decoding (RFC 7541 §3-6) with the dynamic table the server fills.

    `max_table_size` is our SETTINGS_HEADER_TABLE_SIZE: the server's table size updates may not
    exceed it."""

    def __init__(
        self,
        max_table_size: int = DEFAULT_HEADER_TABLE_SIZE,
        max_header_list_size: int = MAX_HEADER_LIST_SIZE,
    ) -> None:
        self._limit = max_table_size
        self._capacity = max_table_size
        self._size = 0
        self._entries: deque[tuple[bytes, bytes]] = deque()  # newest first
        self._max_list = max_header_list_size

    @property
    def table(self) -> list[tuple[bytes, bytes]]:
        """The dynamic table, newest entry first (for tests)."""
        return list(self._entries)

    @property
    def table_size(self) -> int:
        """Octets in the dynamic table, as RFC 7541 §4.1 counts them."""
        return self._size

    def _add(self, name: bytes, value: bytes) -> None:
        size = len(name) + len(value) + 32
        entries = self._entries
        while entries and self._size + size > self._capacity:
            old_name, old_value = entries.pop()
            self._size -= len(old_name) + len(old_value) + 32
        if size <= self._capacity:
            entries.appendleft((name, value))
            self._size += size
        # An entry larger than the table empties it and is not added (RFC 7541 §4.4).

    def _resize(self, capacity: int) -> None:
        if capacity > self._limit:
            raise HpackError(f"table size update to {capacity} above our {self._limit}")
        self._capacity = capacity
        entries = self._entries
        while entries and self._size > capacity:
            old_name, old_value = entries.pop()
            self._size -= len(old_name) + len(old_value) + 32

    def _field(self, index: int) -> tuple[bytes, bytes]:
        if 0 < index <= 61:
            return STATIC_TABLE[index - 1]
        if 62 <= index < 62 + len(self._entries):
            return self._entries[index - 62]
        raise HpackError(f"index {index} is in neither table")

    def decode(self, block: bytes) -> list[tuple[bytes, bytes]]:
        """The header list in `block`.

        Raises:
            HpackError: the block is malformed, refers to a missing entry, or decodes to more
                than the header list size we accept.
        """
        headers: list[tuple[bytes, bytes]] = []
        total = 0
        pos = 0
        end = len(block)
        try:
            while pos < end:
                byte = block[pos]
                if byte & 0x80:  # indexed field (§6.1)
                    index = byte & 0x7F
                    pos += 1
                    if index == 0x7F:
                        index, pos = _integer_tail(block, pos, index)
                    name, value = self._field(index)
                else:
                    if byte & 0x40:  # literal with incremental indexing (§6.2.1)
                        index = byte & 0x3F
                        mask = 0x3F
                    elif byte & 0x20:  # dynamic table size update (§6.3)
                        if headers:
                            raise HpackError("table size update after a header field")
                        size = byte & 0x1F
                        pos += 1
                        if size == 0x1F:
                            size, pos = _integer_tail(block, pos, size)
                        self._resize(size)
                        continue
                    else:  # literal without indexing / never indexed (§6.2.2-6.2.3)
                        index = byte & 0x0F
                        mask = 0x0F
                    pos += 1
                    if index == mask:
                        index, pos = _integer_tail(block, pos, index)
                    if index:
                        name = self._field(index)[0]
                    else:
                        name, pos = _string(block, pos)
                    value, pos = _string(block, pos)
                    if mask == 0x3F:
                        self._add(name, value)
                headers.append((name, value))
                total += len(name) + len(value) + 32
                if total > self._max_list:
                    raise HpackError(f"header list larger than {self._max_list} octets")
        except IndexError:
            raise HpackError("truncated header block") from None
        return headers


def _integer_tail(data: bytes, pos: int, value: int) -> tuple[int, int]:
    """The continuation octets of an HPACK integer whose prefix was full (RFC 7541 §5.1)."""
    shift = 0
    while True:
        byte = data[pos]
        pos += 1
        value += (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7
        if shift > 28:
            raise HpackError("integer too large")


def _string(data: bytes, pos: int) -> tuple[bytes, int]:
    byte = data[pos]
    length = byte & 0x7F
    pos += 1
    if length == 0x7F:
        length, pos = _integer_tail(data, pos, length)
    stop = pos + length
    if stop > len(data):
        raise HpackError("string runs past the header block")
    raw = data[pos:stop]
    return (huffman_decode(raw) if byte & 0x80 else raw), stop


# -- the connection ------------------------------------------------------------------------------


class Listener(Protocol):
    """What a `ClientConnection` tells its owner, as it reads the server's frames."""

    def response_received(
        self, stream_id: int, headers: list[tuple[bytes, bytes]], body: bytes
    ) -> None:
        """The final answer on `stream_id` is complete (the stream is closed)."""

    def stream_reset(self, stream_id: int, error_code: int) -> None:
        """The stream ended without an answer: reset by the server, or by us for its fault.
        REFUSED_STREAM means the server did not process it (RFC 9113 §8.7)."""

    def goaway_received(self, last_stream_id: int, error_code: int, debug_data: bytes) -> None:
        """The server will take no new stream; those above `last_stream_id` were not processed
        (and are forgotten here), the others may still be answered."""

    def settings_changed(self) -> None:
        """The server's SETTINGS were applied (the stream limit may have moved)."""

    def ping_acked(self, data: bytes) -> None:
        """The server acknowledged our PING carrying `data`."""


class _Stream:
    __slots__ = (
        "body",
        "data",
        "headers",
        "id",
        "local_ended",
        "recv_window",
        "send_window",
        "sent",
    )

    def __init__(self, stream_id: int, send_window: int) -> None:
        self.id = stream_id
        self.send_window = send_window
        self.recv_window = DEFAULT_WINDOW
        self.body = b""
        self.sent = 0
        self.local_ended = False
        self.headers: list[tuple[bytes, bytes]] | None = None
        self.data: bytearray | None = None


class ClientConnection:
    """One HTTP/2 connection, client side, sans I/O.

    Call `initiate` once, then `request` for each request; feed `receive` with the bytes read
    and write `data_to_send` out. The stream limit is the caller's to respect (see
    `max_outbound_streams`); `request` refuses a stream beyond it rather than break it.
    """

    def __init__(self, listener: Listener) -> None:
        self._listener = listener
        self._out: list[bytes] = []
        self._buffer = b""
        self._streams: dict[int, _Stream] = {}
        self._blocked: deque[_Stream] = deque()
        self._next_stream_id = 1
        self._send_window = DEFAULT_WINDOW
        self._recv_window = DEFAULT_WINDOW
        self._peer_max_streams = UNLIMITED_STREAMS
        self._peer_initial_window = DEFAULT_WINDOW
        self._peer_max_frame = DEFAULT_MAX_FRAME_SIZE
        self._peer_max_header_list: int | None = None
        self._peer_table_size = DEFAULT_HEADER_TABLE_SIZE
        self._table_size_update = False
        self._decoder = HeaderDecoder()
        self._settings_unacked = 0
        self._got_settings = False
        self._continuation: tuple[int, int, bytearray] | None = None
        self._goaway_last: int | None = None
        self._closed = False

    # -- what the owner reads ----------------------------------------------------------------

    @property
    def max_outbound_streams(self) -> int:
        """The server's SETTINGS_MAX_CONCURRENT_STREAMS (unlimited until it sends one)."""
        return self._peer_max_streams

    @property
    def open_streams(self) -> int:
        """Streams of ours not yet closed."""
        return len(self._streams)

    @property
    def next_stream_id(self) -> int:
        """The id the next request will get."""
        return self._next_stream_id

    @property
    def peer_settings(self) -> dict[str, int | None]:
        """What the server set (for tests and logs)."""
        return {
            "max_concurrent_streams": self._peer_max_streams,
            "initial_window_size": self._peer_initial_window,
            "max_frame_size": self._peer_max_frame,
            "max_header_list_size": self._peer_max_header_list,
        }

    @property
    def send_window(self) -> int:
        """What the connection's send window lets us send now."""
        return self._send_window

    @property
    def settings_unacknowledged(self) -> int:
        """How many of our SETTINGS frames the server has not acknowledged yet."""
        return self._settings_unacked

    @property
    def decoder(self) -> HeaderDecoder:
        """The HPACK decoder of the server's header blocks."""
        return self._decoder

    @property
    def closed(self) -> bool:
        """We sent GOAWAY (a close or a protocol error): nothing more is read or started."""
        return self._closed

    def data_to_send(self) -> bytes:
        """The frames queued since the last call."""
        out = self._out
        if not out:
            return b""
        self._out = []
        return b"".join(out)

    @property
    def has_output(self) -> bool:
        """Whether `data_to_send` would return something."""
        return bool(self._out)

    # -- what the owner does -----------------------------------------------------------------

    def initiate(self) -> None:
        """Queue the connection preface and our SETTINGS (RFC 9113 §3.4): no server push, and
        the header list size we take."""
        settings = _SETTING.pack(ENABLE_PUSH, 0) + _SETTING.pack(
            SETTINGS_MAX_HEADER_LIST_SIZE, MAX_HEADER_LIST_SIZE
        )
        self._out.append(PREFACE + frame(SETTINGS, 0, 0, settings))
        self._settings_unacked += 1

    def request(self, header_block: bytes, body: bytes = b"") -> int:
        """Open a stream with HEADERS carrying `header_block` (HPACK, see `encode_field`) and
        send `body` as far as the windows allow; the rest goes as they open. Returns the
        stream id.

        Raises:
            CannotStart: the connection is closed or going away, out of stream ids, or at the
                server's MAX_CONCURRENT_STREAMS.
        """
        stream_id = self._next_stream_id
        if self._closed or self._goaway_last is not None:
            raise CannotStart("the connection is closing")
        if stream_id > MAX_STREAM_ID:
            raise CannotStart("out of stream ids")
        if len(self._streams) >= self._peer_max_streams:
            raise CannotStart(f"the server allows {self._peer_max_streams} streams at once")
        self._next_stream_id = stream_id + 2
        stream = _Stream(stream_id, self._peer_initial_window)
        self._streams[stream_id] = stream
        if self._table_size_update:
            self._table_size_update = False
            header_block = b"\x20" + header_block  # our (empty) table is sized 0 (RFC 7541 §6.3)
        size = len(header_block)
        out = self._out
        if size <= self._peer_max_frame:
            flags = END_HEADERS if body else END_HEADERS | END_STREAM
            out.append(_FRAME_HEAD.pack(size >> 16, size & 0xFFFF, HEADERS, flags, stream_id))
            out.append(header_block)
        else:
            self._send_split_headers(stream_id, header_block, end_stream=not body)
        if not body:
            stream.local_ended = True
            return stream_id
        stream.body = body
        if not self._send_body(stream):
            self._blocked.append(stream)
        return stream_id

    def reset(self, stream_id: int, error_code: int = ErrorCode.CANCEL) -> None:
        """Abandon a stream (RST_STREAM); nothing more is said about it. A no-op for a stream
        already closed."""
        stream = self._streams.pop(stream_id, None)
        if stream is not None and not self._closed:
            self._out.append(frame(RST_STREAM, 0, stream_id, _U32.pack(error_code)))
            stream.local_ended = True  # drops it from the queue of waiting bodies

    def ping(self, data: bytes) -> None:
        """Queue a PING carrying 8 octets of `data`."""
        if len(data) != 8:
            raise ValueError("PING carries exactly 8 octets")
        if not self._closed:
            self._out.append(frame(PING, 0, 0, data))

    def close(self, error_code: int = ErrorCode.NO_ERROR, debug_data: bytes = b"") -> None:
        """Queue GOAWAY (no server-initiated stream was processed: last stream id 0); start
        nothing more, read nothing more."""
        if not self._closed:
            self._out.append(frame(GOAWAY, 0, 0, _GOAWAY_HEAD.pack(0, error_code) + debug_data))
            self._closed = True

    # -- sending -----------------------------------------------------------------------------

    def _send_split_headers(self, stream_id: int, block: bytes, *, end_stream: bool) -> None:
        step = self._peer_max_frame
        chunks = [block[i : i + step] for i in range(0, len(block), step)]
        flags = END_STREAM if end_stream else 0
        self._out.append(frame(HEADERS, flags, stream_id, chunks[0]))
        for i, chunk in enumerate(chunks[1:], start=2):
            self._out.append(
                frame(CONTINUATION, END_HEADERS if i == len(chunks) else 0, stream_id, chunk)
            )

    def _send_body(self, stream: _Stream) -> bool:
        """Send what the windows allow of `stream`'s body; whether it is all out."""
        body = stream.body
        offset = stream.sent
        left = len(body) - offset
        out = self._out
        stream_id = stream.id
        while left:
            size = min(left, self._send_window, stream.send_window, self._peer_max_frame)
            if size <= 0:
                stream.sent = offset
                return False
            chunk = body if size == len(body) else body[offset : offset + size]
            offset += size
            left -= size
            flags = 0 if left else END_STREAM
            out.append(_FRAME_HEAD.pack(size >> 16, size & 0xFFFF, DATA, flags, stream_id))
            out.append(chunk)
            self._send_window -= size
            stream.send_window -= size
        stream.sent = offset
        stream.local_ended = True
        return True

    def _send_blocked(self) -> None:
        """Windows opened: send the waiting bodies, oldest first."""
        blocked = self._blocked
        for _ in range(len(blocked)):
            if self._send_window <= 0:
                return
            stream = blocked.popleft()
            if stream.local_ended or stream.id not in self._streams:
                continue
            if not self._send_body(stream):
                blocked.append(stream)

    # -- receiving ---------------------------------------------------------------------------

    def receive(self, data: bytes) -> None:
        """Read what the server sent; answers and events go to the listener as they complete.

        Raises:
            ProtocolError: the server broke the protocol. GOAWAY is queued; the connection is
                closed for us and should be for the socket.
        """
        if self._closed:
            return
        buffer = self._buffer + data if self._buffer else data
        pos = 0
        end = len(buffer)
        try:
            while end - pos >= 9:
                high, low, kind, flags, stream_id = _FRAME_HEAD.unpack_from(buffer, pos)
                length = high << 16 | low
                if length > DEFAULT_MAX_FRAME_SIZE:  # ours: we never raise SETTINGS_MAX_FRAME_SIZE
                    raise self._error(ErrorCode.FRAME_SIZE_ERROR, f"a {length}-octet frame")
                stop = pos + 9 + length
                if stop > end:
                    break
                payload = buffer[pos + 9 : stop]
                pos = stop
                stream_id &= MAX_STREAM_ID
                if self._continuation is not None:
                    self._on_continuation(kind, flags, stream_id, payload)
                elif kind == HEADERS:
                    self._on_headers(flags, stream_id, payload)
                elif kind == DATA:
                    self._on_data(flags, stream_id, payload)
                elif not self._got_settings and kind != SETTINGS:
                    raise self._error(ErrorCode.PROTOCOL_ERROR, "the server preface is SETTINGS")
                else:
                    self._on_control(kind, flags, stream_id, payload)
                if self._closed:  # the listener closed us
                    return
        except HpackError as exc:
            raise self._error(ErrorCode.COMPRESSION_ERROR, str(exc)) from None
        self._buffer = buffer[pos:] if pos < end else b""

    def _error(self, code: ErrorCode, message: str) -> ProtocolError:
        """A connection error: GOAWAY queued, the connection closed (RFC 9113 §5.4.1)."""
        self.close(code, message.encode())
        self._buffer = b""
        return ProtocolError(code, message)

    def _idle(self, stream_id: int) -> bool:
        """Never opened by us: server-initiated ids are even, ours not yet used are above."""
        return stream_id % 2 == 0 or stream_id >= self._next_stream_id

    @staticmethod
    def _unpad(payload: bytes) -> bytes | None:
        if not payload:
            return None
        pad = payload[0]
        if pad >= len(payload):
            return None
        return payload[1 : len(payload) - pad]

    def _on_headers(self, flags: int, stream_id: int, payload: bytes) -> None:
        if not self._got_settings:
            raise self._error(ErrorCode.PROTOCOL_ERROR, "the server preface is SETTINGS")
        if stream_id == 0:
            raise self._error(ErrorCode.PROTOCOL_ERROR, "HEADERS on stream 0")
        if flags & PADDED:
            unpadded = self._unpad(payload)
            if unpadded is None:
                raise self._error(ErrorCode.PROTOCOL_ERROR, "padding longer than HEADERS")
            payload = unpadded
        if flags & PRIORITY_FLAG:
            if len(payload) < 5:
                raise self._error(ErrorCode.FRAME_SIZE_ERROR, "HEADERS too short for priority")
            payload = payload[5:]
        if not flags & END_HEADERS:
            self._continuation = (stream_id, flags, bytearray(payload))
            return
        self._on_header_block(flags, stream_id, payload)

    def _on_continuation(self, kind: int, flags: int, stream_id: int, payload: bytes) -> None:
        assert self._continuation is not None
        expected, first_flags, block = self._continuation
        if kind != CONTINUATION or stream_id != expected:
            raise self._error(ErrorCode.PROTOCOL_ERROR, "a header block was interrupted")
        block += payload
        if len(block) > MAX_HEADER_BLOCK:
            raise self._error(ErrorCode.ENHANCE_YOUR_CALM, "header block too large")
        if flags & END_HEADERS:
            self._continuation = None
            self._on_header_block(first_flags, stream_id, bytes(block))

    def _on_header_block(self, flags: int, stream_id: int, block: bytes) -> None:
        headers = self._decoder.decode(block)  # always: the server's table moves either way
        stream = self._streams.get(stream_id)
        if stream is None:
            if self._idle(stream_id):
                raise self._error(ErrorCode.PROTOCOL_ERROR, f"HEADERS on idle stream {stream_id}")
            return  # a stream we reset or that ended: what it says no longer matters
        if stream.headers is None:
            status = headers[0][1] if headers and headers[0][0] == b":status" else None
            if status is not None and len(status) == 3 and status[:1] == b"1":
                if flags & END_STREAM:
                    self._stream_error(stream, ErrorCode.PROTOCOL_ERROR)
                return  # informational (1xx): the final answer follows
            stream.headers = headers
        elif not flags & END_STREAM:
            self._stream_error(stream, ErrorCode.PROTOCOL_ERROR)  # trailers must end the stream
            return
        if flags & END_STREAM:
            self._end(stream)

    def _on_data(self, flags: int, stream_id: int, payload: bytes) -> None:
        if not self._got_settings:
            raise self._error(ErrorCode.PROTOCOL_ERROR, "the server preface is SETTINGS")
        if stream_id == 0:
            raise self._error(ErrorCode.PROTOCOL_ERROR, "DATA on stream 0")
        size = len(payload)  # padding counts against the windows too (RFC 9113 §6.1)
        self._recv_window -= size
        if self._recv_window < 0:
            raise self._error(ErrorCode.FLOW_CONTROL_ERROR, "DATA beyond the connection window")
        if flags & PADDED:
            unpadded = self._unpad(payload)
            if unpadded is None:
                raise self._error(ErrorCode.PROTOCOL_ERROR, "padding longer than DATA")
            payload = unpadded
        if self._recv_window < DEFAULT_WINDOW // 2:
            self._out.append(
                frame(WINDOW_UPDATE, 0, 0, _U32.pack(DEFAULT_WINDOW - self._recv_window))
            )
            self._recv_window = DEFAULT_WINDOW
        stream = self._streams.get(stream_id)
        if stream is None:
            if self._idle(stream_id):
                raise self._error(ErrorCode.PROTOCOL_ERROR, f"DATA on idle stream {stream_id}")
            return
        if stream.headers is None:
            self._stream_error(stream, ErrorCode.PROTOCOL_ERROR)  # DATA before the answer
            return
        stream.recv_window -= size
        if stream.recv_window < 0:
            self._stream_error(stream, ErrorCode.FLOW_CONTROL_ERROR)
            return
        if payload:
            if stream.data is None:
                stream.data = bytearray(payload)
            else:
                stream.data += payload
        if flags & END_STREAM:
            self._end(stream)
        elif stream.recv_window < DEFAULT_WINDOW // 2:
            increment = DEFAULT_WINDOW - stream.recv_window
            self._out.append(frame(WINDOW_UPDATE, 0, stream_id, _U32.pack(increment)))
            stream.recv_window = DEFAULT_WINDOW

    def _end(self, stream: _Stream) -> None:
        """The server ended the stream with an answer."""
        del self._streams[stream.id]
        if not stream.local_ended:
            # Answered before our body was all sent (RFC 9113 §8.1): stop sending it.
            self._out.append(frame(RST_STREAM, 0, stream.id, _U32.pack(ErrorCode.CANCEL)))
            stream.local_ended = True
        data = stream.data
        assert stream.headers is not None
        self._listener.response_received(stream.id, stream.headers, bytes(data) if data else b"")

    def _stream_error(self, stream: _Stream, code: ErrorCode) -> None:
        """A stream error (RFC 9113 §5.4.2): RST_STREAM, and the owner hears of it."""
        self._streams.pop(stream.id, None)
        stream.local_ended = True
        self._out.append(frame(RST_STREAM, 0, stream.id, _U32.pack(code)))
        self._listener.stream_reset(stream.id, code)

    def _on_control(self, kind: int, flags: int, stream_id: int, payload: bytes) -> None:
        if kind == SETTINGS:
            self._on_settings(flags, stream_id, payload)
        elif kind == WINDOW_UPDATE:
            self._on_window_update(stream_id, payload)
        elif kind == PING:
            if stream_id != 0:
                raise self._error(ErrorCode.PROTOCOL_ERROR, "PING on a stream")
            if len(payload) != 8:
                raise self._error(ErrorCode.FRAME_SIZE_ERROR, "PING is 8 octets")
            if flags & ACK:
                self._listener.ping_acked(payload)
            else:
                self._out.append(frame(PING, ACK, 0, payload))
        elif kind == RST_STREAM:
            if stream_id == 0:
                raise self._error(ErrorCode.PROTOCOL_ERROR, "RST_STREAM on stream 0")
            if len(payload) != 4:
                raise self._error(ErrorCode.FRAME_SIZE_ERROR, "RST_STREAM is 4 octets")
            if self._idle(stream_id):
                raise self._error(ErrorCode.PROTOCOL_ERROR, f"RST_STREAM on idle {stream_id}")
            stream = self._streams.pop(stream_id, None)
            if stream is not None:
                stream.local_ended = True
                self._listener.stream_reset(stream_id, _U32.unpack(payload)[0])
        elif kind == GOAWAY:
            if stream_id != 0:
                raise self._error(ErrorCode.PROTOCOL_ERROR, "GOAWAY on a stream")
            if len(payload) < 8:
                raise self._error(ErrorCode.FRAME_SIZE_ERROR, "GOAWAY is at least 8 octets")
            last, code = _GOAWAY_HEAD.unpack_from(payload)
            last &= MAX_STREAM_ID
            if self._goaway_last is not None:
                last = min(last, self._goaway_last)
            self._goaway_last = last
            for refused in [s for s in self._streams if s > last]:
                self._streams.pop(refused).local_ended = True
            self._listener.goaway_received(last, code, payload[8:])
        elif kind == PRIORITY:
            if stream_id == 0:
                raise self._error(ErrorCode.PROTOCOL_ERROR, "PRIORITY on stream 0")
            if len(payload) != 5:
                stream = self._streams.get(stream_id)
                if stream is not None:
                    self._stream_error(stream, ErrorCode.FRAME_SIZE_ERROR)
        elif kind == PUSH_PROMISE:
            raise self._error(ErrorCode.PROTOCOL_ERROR, "PUSH_PROMISE, though we disabled push")
        elif kind == CONTINUATION:
            raise self._error(ErrorCode.PROTOCOL_ERROR, "CONTINUATION without HEADERS")
        # Unknown frame types are ignored (RFC 9113 §4.1).

    def _on_settings(self, flags: int, stream_id: int, payload: bytes) -> None:
        if stream_id != 0:
            raise self._error(ErrorCode.PROTOCOL_ERROR, "SETTINGS on a stream")
        if flags & ACK:
            if payload:
                raise self._error(ErrorCode.FRAME_SIZE_ERROR, "SETTINGS ACK with a payload")
            self._settings_unacked = max(0, self._settings_unacked - 1)
            return
        if len(payload) % 6:
            raise self._error(ErrorCode.FRAME_SIZE_ERROR, "SETTINGS not a multiple of 6 octets")
        self._got_settings = True
        for offset in range(0, len(payload), 6):
            code, value = _SETTING.unpack_from(payload, offset)
            if code == MAX_CONCURRENT_STREAMS:
                self._peer_max_streams = min(value, UNLIMITED_STREAMS)
            elif code == INITIAL_WINDOW_SIZE:
                if value > MAX_WINDOW:
                    raise self._error(ErrorCode.FLOW_CONTROL_ERROR, "INITIAL_WINDOW_SIZE > 2^31-1")
                delta = value - self._peer_initial_window
                self._peer_initial_window = value
                for stream in self._streams.values():  # RFC 9113 §6.9.2
                    stream.send_window += delta
                    if stream.send_window > MAX_WINDOW:
                        raise self._error(ErrorCode.FLOW_CONTROL_ERROR, "a window over 2^31-1")
            elif code == MAX_FRAME_SIZE:
                if not DEFAULT_MAX_FRAME_SIZE <= value <= MAX_FRAME_SIZE_LIMIT:
                    raise self._error(ErrorCode.PROTOCOL_ERROR, f"MAX_FRAME_SIZE {value}")
                self._peer_max_frame = value
            elif code == HEADER_TABLE_SIZE:
                if value != self._peer_table_size:
                    # Its decoder's table changed size: tell it ours is empty (RFC 7541 §4.2).
                    self._peer_table_size = value
                    self._table_size_update = True
            elif code == ENABLE_PUSH:
                if value != 0:  # a server may not offer push (RFC 9113 §6.5.2)
                    raise self._error(
                        ErrorCode.PROTOCOL_ERROR, f"ENABLE_PUSH {value} from a server"
                    )
            elif code == SETTINGS_MAX_HEADER_LIST_SIZE:
                self._peer_max_header_list = value
            # Unknown settings are ignored (RFC 9113 §6.5.2).
        self._out.append(frame(SETTINGS, ACK, 0))
        if self._blocked:
            self._send_blocked()
        self._listener.settings_changed()

    def _on_window_update(self, stream_id: int, payload: bytes) -> None:
        if len(payload) != 4:
            raise self._error(ErrorCode.FRAME_SIZE_ERROR, "WINDOW_UPDATE is 4 octets")
        increment = _U32.unpack(payload)[0] & MAX_WINDOW
        if stream_id == 0:
            if increment == 0:
                raise self._error(ErrorCode.PROTOCOL_ERROR, "WINDOW_UPDATE of 0")
            self._send_window += increment
            if self._send_window > MAX_WINDOW:
                raise self._error(ErrorCode.FLOW_CONTROL_ERROR, "connection window over 2^31-1")
        else:
            stream = self._streams.get(stream_id)
            if stream is None:
                if self._idle(stream_id):
                    raise self._error(
                        ErrorCode.PROTOCOL_ERROR, f"WINDOW_UPDATE on idle {stream_id}"
                    )
                return
            if increment == 0:
                self._stream_error(stream, ErrorCode.PROTOCOL_ERROR)
                return
            stream.send_window += increment
            if stream.send_window > MAX_WINDOW:
                self._stream_error(stream, ErrorCode.FLOW_CONTROL_ERROR)
                return
        if self._blocked:
            self._send_blocked()
