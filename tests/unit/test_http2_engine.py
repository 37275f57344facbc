"""Clarion's HTTP/2 client engine against `h2`'s server state machine, a strict and independent
peer, over a real socket pair: every frame we send is judged by `h2`, and every frame `h2` sends
(or one crafted byte for byte where `h2` cannot be made to misbehave) is read by the engine."""

from __future__ import annotations

import contextlib
import json
import socket
import struct
from collections.abc import Iterator
from typing import Any

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.settings
import pytest
from hpack import NeverIndexedHeaderTuple

from clarion.adapters.providers import http2
from clarion.adapters.providers.apns import header_block
from clarion.wire import apns

Headers = list[tuple[bytes, bytes]]


class Recorder:
    """The engine's listener: what it was told, in order."""

    def __init__(self) -> None:
        self.responses: dict[int, tuple[Headers, bytes]] = {}
        self.resets: dict[int, int] = {}
        self.goaways: list[tuple[int, int, bytes]] = []
        self.settings_changes = 0
        self.pings: list[bytes] = []

    def response_received(self, stream_id: int, headers: Headers, body: bytes) -> None:
        assert stream_id not in self.responses
        self.responses[stream_id] = (headers, body)

    def stream_reset(self, stream_id: int, error_code: int) -> None:
        self.resets[stream_id] = error_code

    def goaway_received(self, last_stream_id: int, error_code: int, debug_data: bytes) -> None:
        self.goaways.append((last_stream_id, error_code, debug_data))

    def settings_changed(self) -> None:
        self.settings_changes += 1

    def ping_acked(self, data: bytes) -> None:
        self.pings.append(data)


class Pair:
    """A `ClientConnection` and an `h2` server, each on one end of a socket pair. `pump` moves
    bytes both ways, without blocking, until neither side has anything more to say."""

    def __init__(self, **server_settings: int) -> None:
        self.client_socket, self.server_socket = socket.socketpair()
        for sock in (self.client_socket, self.server_socket):
            sock.setblocking(False)
        self.listener = Recorder()
        self.client = http2.ClientConnection(self.listener)
        self.server = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=False, header_encoding=None)
        )
        initial = {getattr(h2.settings.SettingCodes, k): v for k, v in server_settings.items()}
        self.server.local_settings = h2.settings.Settings(client=False, initial_values=initial)
        self.events: list[h2.events.Event] = []
        self.error: http2.ProtocolError | None = None
        self.raw_to_client = b""
        self._pending = {"client": b"", "server": b""}
        self.client.initiate()
        self.server.initiate_connection()

    def close(self) -> None:
        self.client_socket.close()
        self.server_socket.close()

    def _send(self, side: str, sock: socket.socket, data: bytes) -> bool:
        pending = self._pending[side] + data
        if not pending:
            return False
        try:
            sent = sock.send(pending)
        except BlockingIOError:
            sent = 0
        self._pending[side] = pending[sent:]
        return sent > 0

    @staticmethod
    def _read(sock: socket.socket) -> bytes:
        chunks = []
        with contextlib.suppress(BlockingIOError):
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks)

    def pump(self) -> list[h2.events.Event]:
        """Exchange frames until both sides are quiet; the server's events since the last call."""
        start = len(self.events)
        while True:
            moved = self._send("client", self.client_socket, self.client.data_to_send())
            server_out = self.server.data_to_send() + self.raw_to_client
            self.raw_to_client = b""
            moved |= self._send("server", self.server_socket, server_out)
            if data := self._read(self.server_socket):
                moved = True
                self.events += self.server.receive_data(data)
            if data := self._read(self.client_socket):
                moved = True
                try:
                    self.client.receive(data)
                except http2.ProtocolError as exc:
                    self.error = exc
            if not moved:
                return self.events[start:]

    def of(self, kind: type[Any], events: list[h2.events.Event] | None = None) -> list[Any]:
        return [e for e in (self.events if events is None else events) if isinstance(e, kind)]

    def request(self, body: bytes = b"", token: str = "ab" * 32, **extra: str) -> int:
        headers = [
            (":method", "POST"),
            (":scheme", "https"),
            (":authority", "api.push.apple.com"),
            (":path", f"/3/device/{token}"),
            ("authorization", "bearer eyJ0.eyJ1.c2ln"),
            ("apns-topic", "com.example.app"),
            ("apns-push-type", "alert"),
            *extra.items(),
        ]
        return self.client.request(header_block(headers, apns.NEVER_INDEXED), body)

    def answer(
        self, stream_id: int, status: bytes = b"200", body: bytes = b"", **extra: str
    ) -> None:
        headers = [(b":status", status), *((k.encode(), v.encode()) for k, v in extra.items())]
        self.server.send_headers(stream_id, headers, end_stream=not body)
        if body:
            self.server.send_data(stream_id, body, end_stream=True)


@pytest.fixture
def pair() -> Iterator[Pair]:
    made = Pair()
    yield made
    made.close()


def _frame(kind: int, flags: int, stream_id: int, payload: bytes) -> bytes:
    return struct.pack(
        ">BHBBL", len(payload) >> 16, len(payload) & 0xFFFF, kind, flags, stream_id
    ) + (payload)


def test_the_preface_and_settings_are_exchanged_and_acknowledged_both_ways(pair: Pair) -> None:
    pair.pump()
    [changed] = pair.of(h2.events.RemoteSettingsChanged)
    assert changed.changed_settings[h2.settings.SettingCodes.ENABLE_PUSH].new_value == 0
    assert pair.of(h2.events.SettingsAcknowledged)  # the server's SETTINGS, acknowledged by us
    assert pair.client.settings_unacknowledged == 0  # ours, acknowledged by the server
    assert pair.listener.settings_changes == 1


def test_a_request_arrives_whole_and_its_answer_comes_back(pair: Pair) -> None:
    pair.pump()
    stream_id = pair.request(b'{"aps":{}}', **{"apns-id": "4f1ec6e6-8c8c-4b11-a8a3-0c4b3e8c2c01"})
    assert stream_id == 1
    events = pair.pump()
    [received] = pair.of(h2.events.RequestReceived, events)
    headers = dict(received.headers)
    assert headers[b":path"] == b"/3/device/" + b"ab" * 32
    assert headers[b"apns-id"] == b"4f1ec6e6-8c8c-4b11-a8a3-0c4b3e8c2c01"
    never = {h[0] for h in received.headers if isinstance(h, NeverIndexedHeaderTuple)}
    assert never == {b":path", b"authorization"}
    assert [e.data for e in pair.of(h2.events.DataReceived, events)] == [b'{"aps":{}}']
    assert pair.of(h2.events.StreamEnded, events)
    assert (
        pair.server.decoder.header_table.dynamic_entries
        == type(pair.server.decoder.header_table.dynamic_entries)()
    )  # nothing of ours entered the server's table
    pair.answer(1, b"400", json.dumps({"reason": "BadDeviceToken"}).encode(), **{"apns-id": "x"})
    pair.pump()
    headers_back, body = pair.listener.responses[1]
    assert headers_back == [(b":status", b"400"), (b"apns-id", b"x")]
    assert json.loads(body) == {"reason": "BadDeviceToken"}
    assert pair.client.open_streams == 0


def test_stream_ids_are_odd_and_increasing(pair: Pair) -> None:
    pair.pump()
    assert [pair.request(b"{}") for _ in range(4)] == [1, 3, 5, 7]
    pair.pump()
    assert sorted(e.stream_id for e in pair.of(h2.events.RequestReceived)) == [1, 3, 5, 7]


def test_bodies_beyond_the_connection_window_wait_for_window_update(pair: Pair) -> None:
    pair.pump()
    body = b"x" * 4096
    ids = [pair.request(body) for _ in range(1000)]  # 4 MB against a 65,535-octet window
    events = pair.pump()
    received = sum(e.flow_controlled_length for e in pair.of(h2.events.DataReceived, events))
    assert received == 65_535  # h2 would have raised FlowControlError on one octet more
    assert len(pair.of(h2.events.StreamEnded, events)) == 65_535 // 4096
    assert pair.client.send_window == 0
    ended: set[int] = set()
    for _ in range(1000):
        for event in pair.of(h2.events.DataReceived, events):
            pair.server.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        ended |= {e.stream_id for e in pair.of(h2.events.StreamEnded, events)}
        if len(ended) == len(ids):
            break
        events = pair.pump()
    assert ended == set(ids)
    for stream_id in ids:
        pair.answer(stream_id)
    pair.pump()
    assert set(pair.listener.responses) == set(ids)


def test_a_body_larger_than_the_stream_window_is_sent_as_the_window_opens() -> None:
    pair = Pair(INITIAL_WINDOW_SIZE=1000)
    try:
        pair.pump()
        stream_id = pair.request(b"y" * 2500)
        events = pair.pump()
        assert sum(len(e.data) for e in pair.of(h2.events.DataReceived, events)) == 1000
        pair.server.increment_flow_control_window(1000, stream_id=stream_id)
        events = pair.pump()
        assert sum(len(e.data) for e in pair.of(h2.events.DataReceived, events)) == 1000
        pair.server.increment_flow_control_window(10_000, stream_id=stream_id)
        events = pair.pump()
        assert sum(len(e.data) for e in pair.of(h2.events.DataReceived, events)) == 500
        assert pair.of(h2.events.StreamEnded, events)
    finally:
        pair.close()


def test_initial_window_size_changes_move_the_windows_of_open_streams() -> None:
    pair = Pair(INITIAL_WINDOW_SIZE=100)
    try:
        pair.pump()
        first = pair.request(b"a" * 1000)
        second = pair.request(b"b" * 1000)
        events = pair.pump()
        assert sum(len(e.data) for e in pair.of(h2.events.DataReceived, events)) == 200
        # Raised: both streams' windows grow by the difference, no WINDOW_UPDATE needed.
        pair.server.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 600})
        events = pair.pump()
        data = pair.of(h2.events.DataReceived, events)
        assert {e.stream_id for e in data} == {first, second}
        assert sum(len(e.data) for e in data) == 1000
        # Lowered below what was sent: the windows go negative and nothing more goes out...
        pair.server.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 0})
        events = pair.pump()
        assert not pair.of(h2.events.DataReceived, events)
        # ...until WINDOW_UPDATEs bring them above zero again.
        pair.server.increment_flow_control_window(600, stream_id=first)
        events = pair.pump()
        assert not pair.of(h2.events.DataReceived, events)  # 600 - 600 = 0 left
        pair.server.increment_flow_control_window(400, stream_id=first)
        events = pair.pump()
        assert sum(len(e.data) for e in pair.of(h2.events.DataReceived, events)) == 400
        assert [e.stream_id for e in pair.of(h2.events.StreamEnded, events)] == [first]
    finally:
        pair.close()


def test_max_concurrent_streams_is_followed_down_and_up_mid_flight(pair: Pair) -> None:
    pair.pump()
    opened = [pair.request(b"{}") for _ in range(5)]
    pair.pump()
    pair.server.update_settings({h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: 2})
    pair.pump()
    assert pair.client.max_outbound_streams == 2
    with pytest.raises(http2.CannotStart):
        pair.request(b"{}")  # 5 open, 2 allowed: the streams in flight go on, no new one
    for stream_id in opened[:4]:
        pair.answer(stream_id)
    pair.pump()
    assert pair.client.open_streams == 1
    pair.request(b"{}")
    with pytest.raises(http2.CannotStart):
        pair.request(b"{}")
    pair.server.update_settings({h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: 1000})
    pair.pump()
    more = [pair.request(b"{}") for _ in range(50)]
    pair.pump()  # h2 raises TooManyStreamsError on a stream beyond its limit
    assert len(pair.of(h2.events.RequestReceived)) == 5 + 1 + len(more)


def test_answer_headers_split_over_continuation_frames_are_reassembled(pair: Pair) -> None:
    pair.pump()
    stream_id = pair.request(b"{}")
    pair.pump()
    big = "v" * 40_000  # past the 16,384-octet frame size: HEADERS + CONTINUATION x2
    pair.answer(stream_id, **{"x-big": big})
    sent = pair.server.data_to_send()
    assert _frame_kinds(sent) == [1, 9, 9]  # HEADERS, CONTINUATION, CONTINUATION
    pair.raw_to_client = sent
    pair.pump()
    headers, _ = pair.listener.responses[stream_id]
    assert dict(headers)[b"x-big"] == big.encode()


def _frame_kinds(data: bytes) -> list[int]:
    kinds, pos = [], 0
    while pos + 9 <= len(data):
        kinds.append(data[pos + 3])
        pos += 9 + int.from_bytes(data[pos : pos + 3], "big")
    return kinds


def test_padded_data_and_padded_headers_are_read_and_counted_against_the_window(
    pair: Pair,
) -> None:
    pair.pump()
    first, second = pair.request(b"{}"), pair.request(b"{}")
    pair.pump()
    pair.server.send_headers(first, [(b":status", b"200")])
    pair.server.send_data(first, b"padded body", end_stream=True, pad_length=200)
    pair.pump()
    assert pair.listener.responses[first] == ([(b":status", b"200")], b"padded body")
    # h2 cannot pad HEADERS: the block is the server's own encoding, framed by hand.
    block = pair.server.encoder.encode([(b":status", b"410"), (b"apns-id", b"y")])
    payload = bytes((7,)) + block + b"\0" * 7
    pair.raw_to_client = _frame(1, 0x1 | 0x4 | 0x8, second, payload)
    pair.pump()
    assert pair.listener.responses[second][0] == [(b":status", b"410"), (b"apns-id", b"y")]
    assert pair.error is None


def test_goaway_names_the_last_stream_and_those_above_it_are_not_started(pair: Pair) -> None:
    pair.pump()
    ids = [pair.request(b"{}") for _ in range(4)]  # 1, 3, 5, 7
    pair.pump()
    pair.answer(1)
    pair.server.close_connection(
        error_code=h2.errors.ErrorCodes.NO_ERROR,
        additional_data=json.dumps({"reason": "Shutdown"}).encode(),
        last_stream_id=3,
    )
    pair.pump()
    [(last, code, debug)] = pair.listener.goaways
    assert (last, code) == (3, 0)
    assert apns.parse_goaway_reason(debug) == "Shutdown"
    assert 1 in pair.listener.responses
    assert pair.client.open_streams == 1  # stream 3 may still be answered; 5 and 7 were forgotten
    with pytest.raises(http2.CannotStart):
        pair.request(b"{}")
    assert ids == [1, 3, 5, 7]


def test_a_reset_stream_is_reported_with_its_code(pair: Pair) -> None:
    pair.pump()
    refused, cancelled = pair.request(b"{}"), pair.request(b"{}")
    pair.pump()
    pair.server.reset_stream(refused, h2.errors.ErrorCodes.REFUSED_STREAM)
    pair.server.reset_stream(cancelled, h2.errors.ErrorCodes.INTERNAL_ERROR)
    pair.pump()
    assert pair.listener.resets == {
        refused: http2.ErrorCode.REFUSED_STREAM,
        cancelled: http2.ErrorCode.INTERNAL_ERROR,
    }
    assert pair.client.open_streams == 0


def test_our_reset_reaches_the_server_and_late_frames_for_it_are_ignored(pair: Pair) -> None:
    pair.pump()
    stream_id = pair.request(b"{}")
    pair.pump()
    pair.client.reset(stream_id)
    events = pair.pump()
    [reset] = pair.of(h2.events.StreamReset, events)
    assert (reset.stream_id, reset.error_code) == (stream_id, h2.errors.ErrorCodes.CANCEL)
    # An answer already on its way when the reset arrived: read (HPACK), then dropped.
    block = pair.server.encoder.encode([(b":status", b"200"), (b"apns-id", b"late")])
    pair.raw_to_client = _frame(1, 0x5, stream_id, block)
    pair.pump()
    assert pair.listener.responses == {}
    assert pair.client.decoder.table[0] == (b"apns-id", b"late")
    assert pair.error is None


def test_pings_are_answered_and_ours_are_acknowledged(pair: Pair) -> None:
    pair.pump()
    pair.server.ping(b"12345678")
    events = pair.pump()
    assert [e.ping_data for e in pair.of(h2.events.PingAckReceived, events)] == [b"12345678"]
    pair.client.ping(b"clarion!")
    events = pair.pump()
    assert [e.ping_data for e in pair.of(h2.events.PingReceived, events)] == [b"clarion!"]
    assert pair.listener.pings == [b"clarion!"]


def test_the_servers_dynamic_table_is_followed_across_many_answers(pair: Pair) -> None:
    pair.pump()
    for n in range(600):
        stream_id = pair.request(b"{}")
        pair.pump()
        # Indexed by h2 (apns-id unique, so entries keep being evicted; the others repeat).
        pair.answer(stream_id, **{"apns-id": f"{n:08x}-0000-4000-8000-{n:012x}", "x-same": "v"})
        if n == 300:  # and the server shrinks its encoder's table mid-way
            pair.server.encoder.header_table_size = 256
        pair.pump()
        headers, _ = pair.listener.responses[stream_id]
        assert dict(headers)[b"apns-id"] == f"{n:08x}-0000-4000-8000-{n:012x}".encode()
        assert dict(headers)[b"x-same"] == b"v"
    expected = list(pair.server.encoder.header_table.dynamic_entries)
    assert pair.client.decoder.table == expected
    assert pair.client.decoder.table_size <= 256


def test_a_header_table_size_setting_makes_our_next_block_resize_to_zero() -> None:
    pair = Pair(HEADER_TABLE_SIZE=0)
    try:
        pair.pump()
        pair.request(b"{}")
        sent = pair.client.data_to_send()
        assert sent[3] == 1  # HEADERS
        assert sent[9] == 0x20  # opened by a dynamic table size update to 0
        pair._pending["client"] = sent
        pair.pump()
        assert pair.of(h2.events.RequestReceived)
        pair.request(b"{}")
        assert pair.client.data_to_send()[9] != 0x20  # once only
    finally:
        pair.close()


def test_a_header_block_larger_than_a_frame_goes_out_with_continuation(pair: Pair) -> None:
    pair.pump()
    stream_id = pair.request(b"{}", **{"apns-collapse-id": "c" * 40_000})
    pair.pump()
    [received] = pair.of(h2.events.RequestReceived)
    assert received.stream_id == stream_id
    assert dict(received.headers)[b"apns-collapse-id"] == b"c" * 40_000


def test_the_servers_max_frame_size_sets_how_large_our_data_frames_are() -> None:
    pair = Pair(INITIAL_WINDOW_SIZE=1_000_000)
    try:
        pair.pump()
        pair.server.update_settings({h2.settings.SettingCodes.MAX_FRAME_SIZE: 20_000})
        pair.server.increment_flow_control_window(1_000_000)
        pair.pump()
        pair.request(b"z" * 50_000)
        events = pair.pump()
        assert [len(e.data) for e in pair.of(h2.events.DataReceived, events)] == [
            20_000,
            20_000,
            10_000,
        ]
    finally:
        pair.close()


def test_an_answer_before_the_whole_body_cancels_the_rest_of_it() -> None:
    pair = Pair(INITIAL_WINDOW_SIZE=10)
    try:
        pair.pump()
        stream_id = pair.request(b"q" * 5000)
        pair.pump()
        pair.answer(stream_id, b"413", b'{"reason":"PayloadTooLarge"}')
        events = pair.pump()
        assert pair.listener.responses[stream_id][0][0] == (b":status", b"413")
        [reset] = pair.of(h2.events.StreamReset, events)
        assert reset.error_code == h2.errors.ErrorCodes.CANCEL
        pair.server.increment_flow_control_window(10_000, stream_id=None)
        assert not pair.of(h2.events.DataReceived, pair.pump())
    finally:
        pair.close()


def test_an_informational_answer_is_skipped_for_the_final_one(pair: Pair) -> None:
    pair.pump()
    stream_id = pair.request(b"{}")
    pair.pump()
    pair.server.send_headers(stream_id, [(b":status", b"100")])
    pair.answer(stream_id, b"200")
    pair.pump()
    assert pair.listener.responses[stream_id][0] == [(b":status", b"200")]


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        (_frame(0, 0x1, 0, b"data on stream 0"), http2.ErrorCode.PROTOCOL_ERROR),
        (_frame(5, 0x4, 1, b"\0\0\0\2" + b"\x88"), http2.ErrorCode.PROTOCOL_ERROR),  # push
        (_frame(1, 0x5, 2, b"\x88"), http2.ErrorCode.PROTOCOL_ERROR),  # a server stream
        (_frame(1, 0x5, 99, b"\x88"), http2.ErrorCode.PROTOCOL_ERROR),  # an idle stream
        (_frame(8, 0, 0, b"\0\0\0\0"), http2.ErrorCode.PROTOCOL_ERROR),  # window + 0
        (_frame(8, 0, 0, b"\x7f\xff\xff\xff"), http2.ErrorCode.FLOW_CONTROL_ERROR),
        (_frame(6, 0, 0, b"short"), http2.ErrorCode.FRAME_SIZE_ERROR),  # PING
        (_frame(4, 0, 0, b"\0\x05\0\0\0\x01"), http2.ErrorCode.PROTOCOL_ERROR),  # frame size 1
        (_frame(4, 0, 0, b"\0\x02\0\0\0\x01"), http2.ErrorCode.PROTOCOL_ERROR),  # push on
        (_frame(1, 0x5, 1, b"\xff\xff\xff\x0f"), http2.ErrorCode.COMPRESSION_ERROR),
        (_frame(9, 0x4, 1, b"\x88"), http2.ErrorCode.PROTOCOL_ERROR),  # stray CONTINUATION
        (_frame(0, 0, 1, b"x" * 20_000), http2.ErrorCode.FRAME_SIZE_ERROR),  # over 16,384
    ],
)
def test_a_protocol_violation_closes_the_connection_with_goaway(
    pair: Pair, frame: bytes, code: http2.ErrorCode
) -> None:
    pair.pump()
    pair.request(b"{}")
    pair.pump()
    pair.raw_to_client = frame
    events = pair.pump()
    assert pair.error is not None
    assert pair.error.code == code
    [terminated] = pair.of(h2.events.ConnectionTerminated, events)
    assert terminated.error_code == code
    assert pair.client.closed
    with pytest.raises(http2.CannotStart):
        pair.request(b"{}")


def test_a_header_block_interrupted_by_another_frame_is_a_protocol_error(pair: Pair) -> None:
    pair.pump()
    stream_id = pair.request(b"{}")
    pair.pump()
    block = pair.server.encoder.encode([(b":status", b"200")])
    pair.raw_to_client = _frame(1, 0x1, stream_id, block) + _frame(6, 0, 0, b"12345678")
    pair.pump()
    assert pair.error is not None
    assert pair.error.code == http2.ErrorCode.PROTOCOL_ERROR


def test_a_server_that_does_not_open_with_settings_is_refused() -> None:
    left, right = socket.socketpair()
    try:
        listener = Recorder()
        client = http2.ClientConnection(listener)
        client.initiate()
        left.sendall(client.data_to_send())
        right.sendall(_frame(6, 0, 0, b"12345678"))
        with pytest.raises(http2.ProtocolError):
            client.receive(left.recv(100))
        assert client.data_to_send().endswith(b"the server preface is SETTINGS")
    finally:
        left.close()
        right.close()


def test_response_bodies_are_acknowledged_so_the_server_can_keep_sending(pair: Pair) -> None:
    pair.pump()
    ids = [pair.request(b"{}") for _ in range(40)]
    pair.pump()
    for stream_id in ids:  # 40 x 4,000 octets: more than the 65,535 connection window
        pair.answer(stream_id, b"400", b"r" * 4000)
        pair.pump()
    assert all(pair.listener.responses[i][1] == b"r" * 4000 for i in ids)
    big = pair.request(b"{}")
    pair.pump()
    pair.server.send_headers(big, [(b":status", b"200")])
    sent = 0
    while sent < 200_000:  # one stream's body, past its 65,535 window
        window = pair.server.local_flow_control_window(big)
        assert window > 0, "we stopped giving the stream credit"
        chunk = min(window, 16_384, 200_000 - sent)
        pair.server.send_data(big, b"s" * chunk, end_stream=sent + chunk == 200_000)
        sent += chunk
        pair.pump()
    assert len(pair.listener.responses[big][1]) == 200_000
