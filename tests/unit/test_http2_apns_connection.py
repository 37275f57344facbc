"""The APNs `Connection` (asyncio over the HTTP/2 engine) against an `h2` server on a loopback
TLS socket: the stream-limit rules, GOAWAY, resets, protocol errors, cancellation and PING."""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
import pytest

from clarion.adapters.providers.apns import Connection, ConnectionLost
from clarion.emulators.apns import self_signed_certificate
from clarion.wire import apns

Handler = Callable[["Peer", int, dict[bytes, bytes], bytes], Awaitable[None]]


class Peer:
    """One server-side connection: `h2`'s state machine and the socket's writer."""

    def __init__(self, writer: asyncio.StreamWriter, max_streams: int) -> None:
        self.writer = writer
        self.h2 = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=False, header_encoding=None)
        )
        self.h2.local_settings = h2.settings.Settings(
            client=False,
            initial_values={h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: max_streams},
        )
        self.h2.initiate_connection()
        self.events: list[h2.events.Event] = []
        self.open: set[int] = set()
        self.peak = 0
        self.ack_pings = True

    def flush(self) -> None:
        data = self.h2.data_to_send()
        if data and not self.writer.is_closing():
            self.writer.write(data)

    def answer(self, stream_id: int, status: int = 200, body: bytes = b"") -> None:
        if stream_id not in self.open:
            return
        self.open.discard(stream_id)
        headers = [(b":status", str(status).encode()), (b"apns-id", b"an-id")]
        self.h2.send_headers(stream_id, headers, end_stream=not body)
        if body:
            self.h2.send_data(stream_id, body, end_stream=True)
        self.flush()

    def set_max_streams(self, value: int) -> None:
        self.h2.update_settings({h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: value})
        self.flush()


class Server:
    """An `h2` server over TLS on 127.0.0.1; `handler` decides what each request gets."""

    def __init__(self, handler: Handler, *, max_streams: int = 1000) -> None:
        self.handler = handler
        self.max_streams = max_streams
        self.peers: list[Peer] = []
        self.tasks: set[asyncio.Task[None]] = set()
        certificate, key = self_signed_certificate("127.0.0.1")
        self.certificate = certificate
        with tempfile.TemporaryDirectory() as directory:
            cert_path, key_path = Path(directory, "c.pem"), Path(directory, "k.pem")
            cert_path.write_bytes(certificate)
            key_path.write_bytes(key)
            self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            self.context.load_cert_chain(cert_path, key_path)
        self.context.set_alpn_protocols(["h2"])
        self.server: asyncio.Server | None = None

    async def __aenter__(self) -> Server:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self.context)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        for peer in self.peers:
            peer.writer.close()
        for task in list(self.tasks):
            task.cancel()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.server.wait_closed(), 2)

    @property
    def port(self) -> int:
        assert self.server is not None
        return int(self.server.sockets[0].getsockname()[1])

    async def connect(self, *, ping_interval: float = 600.0, timeout: float = 5.0) -> Connection:
        context = ssl.create_default_context(cadata=self.certificate.decode())
        context.set_alpn_protocols(["h2"])
        return await Connection.open(
            "127.0.0.1",
            self.port,
            context,
            timeout=timeout,
            max_streams=1000,
            ping_interval=ping_interval,
            label="test",
        )

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = Peer(writer, self.max_streams)
        self.peers.append(peer)
        peer.flush()
        requests: dict[int, tuple[dict[bytes, bytes], bytearray]] = {}
        with contextlib.suppress(ConnectionError, ssl.SSLError, h2.exceptions.ProtocolError):
            while data := await reader.read(65536):
                for event in peer.h2.receive_data(data):
                    peer.events.append(event)
                    if isinstance(event, h2.events.RequestReceived):
                        assert event.stream_id is not None
                        requests[event.stream_id] = (dict(event.headers or []), bytearray())
                        peer.open.add(event.stream_id)
                        peer.peak = max(peer.peak, len(peer.open))
                    elif isinstance(event, h2.events.DataReceived):
                        assert event.stream_id is not None
                        requests[event.stream_id][1].extend(event.data or b"")
                        peer.h2.acknowledge_received_data(
                            event.flow_controlled_length or 0, event.stream_id
                        )
                    elif isinstance(event, h2.events.StreamEnded):
                        assert event.stream_id is not None
                        headers, body = requests.pop(event.stream_id)
                        task = asyncio.create_task(
                            self.handler(peer, event.stream_id, headers, bytes(body))
                        )
                        self.tasks.add(task)
                        task.add_done_callback(self.tasks.discard)
                    elif isinstance(event, h2.events.StreamReset):
                        peer.open.discard(event.stream_id or 0)
                    elif isinstance(event, h2.events.PingReceived) and not peer.ack_pings:
                        return  # a server that stopped answering (h2 has queued the ACK)
                peer.flush()


def push(n: int = 1, body: bytes = b'{"aps":{"alert":"hi"}}') -> apns.Request:
    headers = (
        (":method", "POST"),
        (":scheme", "https"),
        (":authority", "api.push.apple.com"),
        (":path", f"/3/device/{n:064x}"),
        ("authorization", "bearer eyJ0.eyJ1.c2ln"),
        ("apns-topic", "com.example.app"),
        ("apns-push-type", "alert"),
        ("apns-priority", "10"),
    )
    return apns.Request("api.push.apple.com", 443, f"/3/device/{n:064x}", headers, body)


async def answer_at_once(
    peer: Peer, stream_id: int, headers: dict[bytes, bytes], body: bytes
) -> None:
    peer.answer(stream_id)


@pytest.fixture
async def held() -> AsyncIterator[tuple[Server, asyncio.Event]]:
    """A server that answers the first request at once and holds the others until released."""
    release = asyncio.Event()

    async def handler(peer: Peer, stream_id: int, headers: dict[bytes, bytes], body: bytes) -> None:
        if stream_id != 1:
            await release.wait()
        peer.answer(stream_id)

    async with Server(handler) as server:
        yield server, release


async def test_one_stream_until_the_first_answer_then_the_servers_limit() -> None:
    async with Server(answer_at_once) as server:
        connection = await server.connect()
        try:
            assert connection.limit() == 1
            answers = await asyncio.gather(*(connection.request(push(n)) for n in range(50)))
            assert {a.status for a in answers} == {200}
            assert dict(answers[0].headers)["apns-id"] == "an-id"
            assert connection.limit() == 1000
            [peer] = server.peers
            assert peer.peak <= 49  # the first went alone
            assert [e.stream_id for e in peer.events if isinstance(e, h2.events.RequestReceived)][
                :2
            ] == [1, 3]
        finally:
            await connection.close()


async def test_a_lowered_limit_holds_new_requests_until_streams_end_and_a_raise_frees_them(
    held: tuple[Server, asyncio.Event],
) -> None:
    server, release = held
    connection = await server.connect()
    try:
        await connection.request(push(0))  # the first answer: the limit is the server's now
        [peer] = server.peers
        peer.set_max_streams(3)
        for _ in range(100):
            if connection.limit() == 3:
                break
            await asyncio.sleep(0.01)
        assert connection.limit() == 3
        tasks = [asyncio.create_task(connection.request(push(n))) for n in range(1, 20)]
        for _ in range(100):
            if len(peer.open) == 3:
                break
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)
        assert len(peer.open) == 3  # the other 16 wait on our side
        peer.set_max_streams(1000)
        for _ in range(100):
            if len(peer.open) == 19:
                break
            await asyncio.sleep(0.01)
        assert len(peer.open) == 19
        release.set()
        answers = await asyncio.gather(*tasks)
        assert len(answers) == 19
        assert peer.peak == 19
        assert connection.peak_streams == 19
    finally:
        await connection.close()


async def test_goaway_fails_unstarted_requests_as_not_started_and_retires_the_connection(
    held: tuple[Server, asyncio.Event],
) -> None:
    server, release = held
    connection = await server.connect()
    try:
        await connection.request(push(0))
        tasks = [asyncio.create_task(connection.request(push(n))) for n in range(1, 5)]
        [peer] = server.peers
        for _ in range(100):
            if len(peer.open) == 4:
                break
            await asyncio.sleep(0.01)
        ids = sorted(peer.open)  # 3, 5, 7, 9
        # By hand: h2 would refuse to answer streams 3 and 5 after its own GOAWAY.
        debug = json.dumps({"reason": "Shutdown"}).encode()
        payload = ids[1].to_bytes(4, "big") + bytes(4) + debug
        peer.writer.write(len(payload).to_bytes(3, "big") + b"\x07\x00" + bytes(4) + payload)
        await asyncio.sleep(0.05)
        assert connection.goaway_reason == "Shutdown"
        assert not connection.usable
        with pytest.raises(ConnectionLost) as refused:
            await connection.request(push(9))
        assert not refused.value.started
        release.set()
        async with asyncio.timeout(5):
            results = await asyncio.gather(*tasks, return_exceptions=True)
        assert [r.status for r in results[:2]] == [200, 200]  # type: ignore[union-attr]
        for lost in results[2:]:
            assert isinstance(lost, ConnectionLost)
            assert not lost.started
            assert lost.reason == "GOAWAY Shutdown"
    finally:
        await connection.close()


async def test_a_refused_stream_may_be_retried_and_another_reset_may_not() -> None:
    async def handler(peer: Peer, stream_id: int, headers: dict[bytes, bytes], body: bytes) -> None:
        if stream_id == 1:
            peer.answer(stream_id)
            return
        code = h2.errors.ErrorCodes.REFUSED_STREAM if stream_id == 3 else 2
        peer.h2.reset_stream(stream_id, code)
        peer.flush()

    async with Server(handler) as server:
        connection = await server.connect()
        try:
            await connection.request(push(0))
            with pytest.raises(ConnectionLost) as refused:
                await connection.request(push(1))
            assert not refused.value.started
            assert "REFUSED_STREAM" in refused.value.reason
            with pytest.raises(ConnectionLost) as failed:
                await connection.request(push(2))
            assert failed.value.started
            assert connection.usable
        finally:
            await connection.close()


async def test_a_protocol_violation_ends_the_requests_and_the_connection() -> None:
    async def handler(peer: Peer, stream_id: int, headers: dict[bytes, bytes], body: bytes) -> None:
        if stream_id == 1:
            peer.answer(stream_id)
        else:  # a PUSH_PROMISE, though our SETTINGS disabled push
            peer.writer.write(
                b"\x00\x00\x05\x05\x04" + stream_id.to_bytes(4, "big") + b"\0\0\0\2\x88"
            )

    async with Server(handler) as server:
        connection = await server.connect()
        try:
            await connection.request(push(0))
            with pytest.raises(ConnectionLost) as lost:
                await connection.request(push(1))
            assert lost.value.started
            assert "PROTOCOL_ERROR" in lost.value.reason
            assert not connection.usable
            await asyncio.sleep(0.05)
            [peer] = server.peers
            [terminated] = [e for e in peer.events if isinstance(e, h2.events.ConnectionTerminated)]
            assert terminated.error_code == h2.errors.ErrorCodes.PROTOCOL_ERROR
        finally:
            await connection.close()


async def test_a_request_given_up_on_is_reset_at_the_server(
    held: tuple[Server, asyncio.Event],
) -> None:
    server, _ = held
    connection = await server.connect()
    try:
        await connection.request(push(0))
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.1):
                await connection.request(push(1))
        await asyncio.sleep(0.05)
        [peer] = server.peers
        [reset] = [e for e in peer.events if isinstance(e, h2.events.StreamReset)]
        assert (reset.stream_id, reset.error_code) == (3, h2.errors.ErrorCodes.CANCEL)
        assert connection.idle
        assert connection.usable
    finally:
        await connection.close()


async def test_bodies_past_the_flow_control_windows_all_arrive() -> None:
    received: list[bytes] = []

    async def handler(peer: Peer, stream_id: int, headers: dict[bytes, bytes], body: bytes) -> None:
        received.append(body)
        peer.answer(stream_id)

    async with Server(handler) as server:
        connection = await server.connect()
        try:
            await connection.request(push(0))
            bodies = [bytes([65 + n % 26]) * 4096 for n in range(300)]  # 1.2 MB > 65,535
            answers = await asyncio.gather(
                *(connection.request(push(n, body)) for n, body in enumerate(bodies, start=1))
            )
            assert {a.status for a in answers} == {200}
            assert sorted(received[1:]) == sorted(bodies)
        finally:
            await connection.close()


async def test_an_idle_connection_is_pinged_and_one_that_does_not_answer_is_dropped() -> None:
    async with Server(answer_at_once) as server:
        connection = await server.connect(ping_interval=0.05, timeout=0.2)
        try:
            await asyncio.sleep(0.3)
            [peer] = server.peers
            assert any(isinstance(e, h2.events.PingReceived) for e in peer.events)
            assert connection.usable
            peer.ack_pings = False
            for _ in range(100):
                if not connection.usable:
                    break
                await asyncio.sleep(0.02)
            assert not connection.usable
        finally:
            await connection.close()


async def test_retire_closes_once_the_last_request_is_answered(
    held: tuple[Server, asyncio.Event],
) -> None:
    server, release = held
    connection = await server.connect()
    await connection.request(push(0))
    task = asyncio.create_task(connection.request(push(1)))
    await asyncio.sleep(0.05)
    connection.retire()
    assert not connection.usable
    with pytest.raises(ConnectionLost):
        await connection.request(push(2))
    release.set()
    assert (await task).status == 200
    await asyncio.sleep(0.05)
    [peer] = server.peers
    assert any(isinstance(e, h2.events.ConnectionTerminated) for e in peer.events)
    await connection.close()
