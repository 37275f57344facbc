"""The bus contract: every backend (memory, Redis Streams, NATS JetStream) passes the same tests.

Redis and NATS are the shared servers at CLARION_TEST_REDIS_URL and CLARION_TEST_NATS_URL
(default 127.0.0.1:6379 and :4222, JetStream enabled). Each test works under a prefix of its own
and removes its keys and streams afterwards. Without a server the test fails under CI and is
skipped elsewhere, as the PostgreSQL tests are (tests/conftest.py).

Tests about connections (a dropped connection, a broker down, a broker restarted) run on the
networked backends only: through a TCP proxy the test can cut, and against a private
redis-server / nats-server the test starts, kills and starts again.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import nats
import pytest
from redis.asyncio import Redis

from clarion.adapters.bus import open_bus
from clarion.domain import errors
from clarion.domain.notifications import EVENTS_STREAM
from clarion.services.deadletters import DeadLetters
from clarion.services.ports import Bus, Envelope

REDIS_URL = os.environ.get("CLARION_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
NATS_URL = os.environ.get("CLARION_TEST_NATS_URL", "nats://127.0.0.1:4222")
VISIBILITY = 1.0  # seconds a taken message stays invisible to the rest of its group
MAX_DELIVERIES = 2
WAIT = 15.0  # the longest any single expected message may take to arrive

MakeBus = Callable[..., Bus]


def unavailable(what: str, exc: BaseException | str, variable: str) -> None:
    """A server the test needs is missing: fail under CI, skip (with the reason) elsewhere."""
    message = f"{what} is not reachable ({exc!r}); start it or set {variable}"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


async def _check_redis(url: str) -> None:
    client = Redis.from_url(url, socket_connect_timeout=2, socket_timeout=2)
    try:
        await client.ping()
    except Exception as exc:
        unavailable("Redis", exc, "CLARION_TEST_REDIS_URL")
    finally:
        await client.aclose()


async def _check_nats(url: str) -> None:
    async def quiet(exc: Exception) -> None:
        pass

    try:
        nc = await asyncio.wait_for(
            nats.connect(
                url,
                allow_reconnect=False,
                max_reconnect_attempts=1,
                reconnect_time_wait=0.1,
                connect_timeout=2,
                error_cb=quiet,
            ),
            3,
        )
    except Exception as exc:
        unavailable("NATS", exc, "CLARION_TEST_NATS_URL")
    try:
        await nc.jetstream().account_info()
    except Exception as exc:
        unavailable("NATS JetStream", exc, "CLARION_TEST_NATS_URL")
    finally:
        await nc.close()


async def _forget(kind: str, url: str, prefix: str) -> None:
    """Remove what a test left on a shared server."""
    if kind == "redis":
        client = Redis.from_url(url)
        try:
            keys = [key async for key in client.scan_iter(match=f"{prefix}:*")]
            if keys:
                await client.delete(*keys)
        finally:
            await client.aclose()
    elif kind == "nats":
        nc = await nats.connect(url, allow_reconnect=False)
        try:
            js = nc.jetstream()
            for stream in await js.streams_info():
                if stream.config.name and stream.config.name.startswith(f"{prefix}_"):
                    await js.delete_stream(stream.config.name)
        finally:
            await nc.close()


def _options(kind: str, prefix: str, overrides: dict[str, Any]) -> dict[str, Any]:
    options: dict[str, Any] = {
        "visibility_timeout": VISIBILITY,
        "max_deliveries": MAX_DELIVERIES,
        "dedupe_window": 30.0,
    }
    if kind == "memory":
        overrides = {k: v for k, v in overrides.items() if k != "prefetch"}
    else:
        options |= {
            "prefix": prefix,
            "poll_interval": 0.1,
            "command_timeout": 2.0,
            "reconnect_base": 0.05,
            "reconnect_max": 0.3,
        }
    return options | overrides


@contextlib.asynccontextmanager
async def _buses(kind: str, url: str | None, prefix: str | None = None) -> AsyncIterator[MakeBus]:
    """A factory of buses of one kind sharing one prefix (one process each, as it were)."""
    prefix = prefix or f"clarion-test-{uuid.uuid4().hex[:10]}"
    opened: list[Bus] = []
    memory: Bus | None = None

    def make(**overrides: Any) -> Bus:
        nonlocal memory
        if kind == "memory":  # one process: every "process" shares the one in-memory bus
            if memory is None:
                memory = open_bus("memory", None, **_options(kind, prefix, overrides))
                opened.append(memory)
            return memory
        bus: Bus = open_bus(kind, url, **_options(kind, prefix, overrides))
        opened.append(bus)
        return bus

    try:
        yield make
    finally:
        for bus in opened:
            await bus.close()
        if url is not None:
            await _forget(kind, url, prefix)


async def _url_of(kind: str) -> str | None:
    if kind == "redis":
        await _check_redis(REDIS_URL)
        return REDIS_URL
    if kind == "nats":
        await _check_nats(NATS_URL)
        return NATS_URL
    return None


@pytest.fixture(params=["memory", "redis", "nats"])
async def make_bus(request: pytest.FixtureRequest) -> AsyncIterator[MakeBus]:
    """Buses of each backend in turn."""
    async with _buses(request.param, await _url_of(request.param)) as make:
        yield make


@pytest.fixture(params=["redis", "nats"])
def networked(request: pytest.FixtureRequest) -> str:
    """Each backend that talks to a broker over a connection."""
    return str(request.param)


def _name(what: str) -> str:
    return f"{what}-{uuid.uuid4().hex[:8]}"


async def _next(messages: AsyncIterator[Envelope], timeout: float = WAIT) -> Envelope:
    return await asyncio.wait_for(anext(messages), timeout)


async def _eventually(attempt: Callable[[], Awaitable[Any]], timeout: float = WAIT) -> Any:
    """The first result of `attempt` that does not raise, retried until `timeout`."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        try:
            return await attempt()
        except Exception:
            if asyncio.get_running_loop().time() > deadline:
                raise
            await asyncio.sleep(0.1)


# -- work streams ------------------------------------------------------------------------------


async def test_a_consumer_gets_the_stream_in_publish_order(make_bus: MakeBus) -> None:
    bus = make_bus()
    stream = _name("s")
    for n in range(30):
        await bus.publish(stream, {"n": n})
    messages = bus.consume(stream, "g").__aiter__()
    got = []
    for _ in range(30):
        envelope = await _next(messages)
        assert envelope.deliveries == 1
        got.append(envelope.payload["n"])
        await envelope.ack()
    assert got == list(range(30))


async def test_a_burst_of_acknowledgements_all_land(make_bus: MakeBus) -> None:
    # A router acknowledges its batches at once: several hundred in flight must wait for a
    # connection, not fail (redis-py's default pool raised "Too many connections" past 100).
    bus = make_bus()
    stream = _name("s")
    await asyncio.gather(*(bus.publish(stream, {"n": n}) for n in range(300)))
    messages = bus.consume(stream, "g").__aiter__()
    held = [await _next(messages) for _ in range(300)]
    await asyncio.gather(*(envelope.ack() for envelope in held))
    assert sorted(e.payload["n"] for e in held) == list(range(300))
    with pytest.raises(TimeoutError):
        await _next(messages, timeout=1.5)  # all acknowledged: nothing comes back


async def test_acknowledging_many_at_once_settles_each_of_them(make_bus: MakeBus) -> None:
    bus = make_bus()
    stream = _name("s")
    for n in range(120):
        await bus.publish(stream, {"n": n})
    messages = bus.consume(stream, "g").__aiter__()
    held = [await _next(messages) for _ in range(120)]
    await bus.acknowledge(held[:100])  # the last 20 stay owed
    await bus.acknowledge([])
    back = []
    for _ in range(20):
        again = await _next(messages, timeout=WAIT + VISIBILITY)
        back.append((again.payload["n"], again.deliveries))
        await again.ack()
    assert sorted(back) == [(n, 2) for n in range(100, 120)]
    with pytest.raises(TimeoutError):
        await _next(messages, timeout=2 * VISIBILITY)  # the 100 acknowledged never come back


async def test_a_group_made_after_publishing_starts_from_the_oldest_message(
    make_bus: MakeBus,
) -> None:
    bus = make_bus()
    stream = _name("s")
    await bus.publish(stream, {"n": 1})
    messages = bus.consume(stream, "late").__aiter__()
    assert (await _next(messages)).payload == {"n": 1}
    await bus.publish(stream, {"n": 2})
    assert (await _next(messages)).payload == {"n": 2}


async def test_every_consumer_group_gets_every_message(make_bus: MakeBus) -> None:
    bus = make_bus()
    stream = _name("s")
    routers = bus.consume(stream, "routers").__aiter__()
    auditors = make_bus().consume(stream, "auditors").__aiter__()
    for n in range(5):
        await bus.publish(stream, {"n": n})
    for messages in (routers, auditors):
        got = []
        for _ in range(5):
            envelope = await _next(messages)
            got.append(envelope.payload["n"])
            await envelope.ack()
        assert got == list(range(5))


async def test_a_message_taken_by_one_consumer_is_not_given_to_another_of_its_group(
    make_bus: MakeBus,
) -> None:
    # One message per read, so that the first consumer does not take both into its buffer.
    first, second = make_bus(prefetch=1), make_bus(prefetch=1)
    stream = _name("s")
    await first.publish(stream, {"n": 1})
    await first.publish(stream, {"n": 2})
    one = first.consume(stream, "g").__aiter__()
    two = second.consume(stream, "g").__aiter__()
    held = await _next(one)
    other = await _next(two)
    assert held.payload == {"n": 1}
    assert other.payload == {"n": 2}


async def test_consumers_of_one_group_share_the_messages(make_bus: MakeBus) -> None:
    buses = [make_bus(), make_bus()]
    stream = _name("s")
    received: list[list[int]] = [[], []]
    total = 40
    done = asyncio.Event()

    async def work(index: int) -> None:
        async for envelope in buses[index].consume(stream, "g"):
            received[index].append(envelope.payload["n"])
            await envelope.ack()
            if sum(len(r) for r in received) >= total:
                done.set()
            await asyncio.sleep(0.01)  # a little work, so that both get a share

    workers = [asyncio.create_task(work(i)) for i in range(2)]
    try:
        for n in range(total):
            await buses[0].publish(stream, {"n": n})
        await asyncio.wait_for(done.wait(), WAIT)
    finally:
        for worker in workers:
            worker.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
    assert sorted(received[0] + received[1]) == list(range(total))  # each exactly once
    assert received[0]
    assert received[1]


async def test_an_unacknowledged_message_is_delivered_again_after_the_visibility_timeout(
    make_bus: MakeBus,
) -> None:
    bus = make_bus()
    stream = _name("s")
    await bus.publish(stream, {"n": 1})
    messages = bus.consume(stream, "g").__aiter__()
    # Timed from before the first read: the broker counts from when it handed the message out,
    # which a loaded client may only see later.
    started = asyncio.get_running_loop().time()
    first = await _next(messages)
    assert (first.payload, first.deliveries) == ({"n": 1}, 1)
    again = await _next(messages)
    assert (again.payload, again.deliveries) == ({"n": 1}, 2)
    assert asyncio.get_running_loop().time() - started >= VISIBILITY * 0.9
    await again.ack()
    # Acknowledged now: after another visibility timeout the next message is a new one.
    await asyncio.sleep(VISIBILITY * 1.5)
    await bus.publish(stream, {"n": 2})
    assert (await _next(messages)).payload == {"n": 2}


async def test_another_consumer_takes_over_the_message_of_one_that_died(
    make_bus: MakeBus,
) -> None:
    dying, survivor = make_bus(), make_bus()
    stream = _name("s")
    await dying.publish(stream, {"n": 1})
    taken = dying.consume(stream, "g")
    assert (await _next(taken.__aiter__())).payload == {"n": 1}
    await taken.aclose()
    envelope = await _next(survivor.consume(stream, "g").__aiter__())
    assert (envelope.payload, envelope.deliveries) == ({"n": 1}, 2)
    await envelope.ack()


async def test_a_poison_message_goes_to_the_dead_letter_stream_after_max_deliveries(
    make_bus: MakeBus,
) -> None:
    bus = make_bus()
    stream = _name("s")
    seen: list[tuple[str, int]] = []
    after = asyncio.Event()

    async def work() -> None:
        async for envelope in bus.consume(stream, "g"):
            seen.append((envelope.payload["kind"], envelope.deliveries))
            if envelope.payload["kind"] == "after":
                after.set()
            if envelope.payload["kind"] != "poison":
                await envelope.ack()

    worker = asyncio.create_task(work())
    try:
        await bus.publish(stream, {"kind": "poison", "data": [1, "x"]})
        await bus.publish(stream, {"kind": "good"})
        dead = make_bus().consume(f"{stream}.dead", "inspect").__aiter__()
        letter = await _next(dead, WAIT + MAX_DELIVERIES * VISIBILITY)
        await letter.ack()
        assert letter.payload == {
            "stream": stream,
            "group": "g",
            "deliveries": MAX_DELIVERIES,
            "reason": "max_deliveries",
            "payload": {"kind": "poison", "data": [1, "x"]},
        }
        await asyncio.sleep(VISIBILITY * 1.5)  # it would be due again by now
        await bus.publish(stream, {"kind": "after"})
        await asyncio.wait_for(after.wait(), WAIT)
    finally:
        worker.cancel()
        await asyncio.gather(worker, return_exceptions=True)
    assert [s for s in seen if s[0] == "poison"] == [("poison", 1), ("poison", 2)]
    assert seen.count(("good", 1)) == 1


async def test_a_rejected_message_goes_to_the_dead_letters_at_once(make_bus: MakeBus) -> None:
    bus = make_bus()
    stream = _name("s")
    await bus.publish(stream, {"n": 1})
    await bus.publish(stream, {"n": 2})
    messages = bus.consume(stream, "g").__aiter__()
    first = await _next(messages)
    await first.reject("schema: 'type' is missing")
    await first.ack()  # too late: a no-op
    await (await _next(messages)).ack()
    letter = await _next(bus.consume(f"{stream}.dead", "inspect").__aiter__())
    assert letter.payload == {
        "stream": stream,
        "group": "g",
        "deliveries": 1,
        "reason": "schema: 'type' is missing",
        "payload": {"n": 1},
    }
    await asyncio.sleep(VISIBILITY * 1.5)  # it would be due again by now
    await bus.publish(stream, {"n": 3})
    assert (await _next(messages)).payload == {"n": 3}


async def test_a_message_published_twice_under_one_id_is_delivered_once(
    make_bus: MakeBus,
) -> None:
    bus = make_bus()
    stream = _name("s")
    await bus.publish(stream, {"event_id": "evt_1"})
    await bus.publish(stream, {"event_id": "evt_1"})
    await make_bus().publish(stream, {"event_id": "evt_1"})  # from another process too
    await bus.publish(stream, {"event_id": "evt_2"})
    await bus.publish(stream, {"note": "no id: never deduped"})
    await bus.publish(stream, {"note": "no id: never deduped"})
    messages = bus.consume(stream, "g").__aiter__()
    got = [(await _next(messages)).payload for _ in range(4)]
    assert got == [
        {"event_id": "evt_1"},
        {"event_id": "evt_2"},
        {"note": "no id: never deduped"},
        {"note": "no id: never deduped"},
    ]


async def test_a_cancelled_consumer_ends_at_once(make_bus: MakeBus) -> None:
    # Routers stop by cancelling their read; a driver that swallowed the cancellation would
    # leave the consumer running forever. Cancel at many points of its cycle.
    bus = make_bus()
    stream = _name("s")
    await bus.publish(stream, {"n": 0})

    async def consume() -> None:
        async for envelope in bus.consume(stream, "g"):
            await envelope.ack()

    for attempt in range(25):
        task = asyncio.create_task(consume())
        await asyncio.sleep(0.013 * attempt)
        task.cancel()
        done, _ = await asyncio.wait({task}, timeout=3)
        assert done, f"consumer still running after cancel #{attempt}"


async def test_closing_the_bus_ends_its_consumers_and_listeners(make_bus: MakeBus) -> None:
    bus = make_bus()
    stream, channel = _name("s"), _name("c")
    await bus.publish(stream, {"n": 1})
    messages = bus.consume(stream, "g").__aiter__()
    await (await _next(messages)).ack()
    waiting = asyncio.ensure_future(anext(messages))
    async with bus.listen(channel) as heard:
        hearing = asyncio.ensure_future(anext(heard))
        await asyncio.sleep(0.2)
        await bus.close()
        for ending in (waiting, hearing):
            with pytest.raises(StopAsyncIteration):
                await asyncio.wait_for(ending, WAIT)


async def test_stream_and_group_names_are_checked(make_bus: MakeBus) -> None:
    bus = make_bus()
    for bad in ("", "a b", "a..b", "a:b", "a*", "broadcast.x"):
        with pytest.raises(ValueError, match="invalid stream"):
            await bus.publish(bad, {})
    with pytest.raises(ValueError, match="invalid consumer group"):
        await anext(bus.consume("fine", "a.b").__aiter__())


# -- broadcasts --------------------------------------------------------------------------------


async def test_a_broadcast_reaches_every_listener_connected(make_bus: MakeBus) -> None:
    channel = _name("c")
    one, two, sender = make_bus(), make_bus(), make_bus()
    async with one.listen(channel) as first, two.listen(channel) as second:
        async with sender.listen(channel) as own:
            await sender.broadcast(channel, {"kind": "routed", "n": 1})
            for messages in (first, second, own):
                assert await asyncio.wait_for(anext(messages), WAIT) == {"kind": "routed", "n": 1}


async def test_a_broadcast_is_not_kept_for_a_late_listener(make_bus: MakeBus) -> None:
    channel = _name("c")
    bus = make_bus()
    await bus.broadcast(channel, {"n": 1})
    async with make_bus().listen(channel) as messages:
        await bus.broadcast(channel, {"n": 2})
        assert await asyncio.wait_for(anext(messages), WAIT) == {"n": 2}


async def test_a_broadcast_is_not_heard_after_the_listener_left(make_bus: MakeBus) -> None:
    channel = _name("c")
    bus = make_bus()
    async with bus.listen(channel) as messages:
        await bus.broadcast(channel, {"n": 1})
        assert await asyncio.wait_for(anext(messages), WAIT) == {"n": 1}
    await bus.broadcast(channel, {"n": 2})  # nobody listens: not an error
    async with bus.listen(channel) as messages:
        await bus.broadcast(channel, {"n": 3})
        assert await asyncio.wait_for(anext(messages), WAIT) == {"n": 3}


# -- connections (networked backends) ----------------------------------------------------------


class Proxy:
    """A TCP proxy to a broker that a test can cut (drop every connection) or stop (refuse
    connections, as a broker that is down) and start again on the same port."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._pipe, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    def cut(self) -> None:
        for writer in tuple(self._writers):
            writer.transport.abort()
        self._writers.clear()

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        self.cut()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            writer.transport.abort()
            return
        self._writers |= {writer, up_writer}

        async def copy(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError, ConnectionError):
                while data := await source.read(65536):
                    sink.write(data)
                    await sink.drain()
            sink.transport.abort()

        await asyncio.gather(copy(reader, up_writer), copy(up_reader, writer))
        self._writers -= {writer, up_writer}


def _address(url: str) -> tuple[str, int]:
    host_port = url.split("://", 1)[1].rsplit("@", 1)[-1].split("/", 1)[0]
    host, port = host_port.rsplit(":", 1)
    return host, int(port)


def _proxied(url: str, port: int) -> str:
    """`url` with its address replaced by the proxy's (credentials dropped)."""
    scheme = url.split("://", 1)[0]
    path = "/" + url.split("://", 1)[1].split("/", 1)[1] if url.count("/") > 2 else ""
    return f"{scheme}://127.0.0.1:{port}{path}"


async def _survives_an_outage(
    make: MakeBus, cut: Callable[[], Awaitable[None]], restore: Callable[[], Awaitable[None]]
) -> None:
    """The story every networked bus must tell about a broker going away and coming back."""
    bus = make()
    stream, channel = _name("s"), _name("c")
    messages = bus.consume(stream, "g").__aiter__()
    await bus.publish(stream, {"n": 1})
    first = await _next(messages)
    assert first.payload == {"n": 1}
    await first.ack()
    pending = asyncio.ensure_future(_next(messages, 60))  # a consumer waiting through it all
    async with bus.listen(channel) as heard:
        await cut()
        await _refused(lambda: bus.publish(stream, {"n": "lost"}))
        with pytest.raises(errors.Unavailable):
            await bus.broadcast(channel, {"n": "lost"})
        await restore()
        await _eventually(lambda: bus.publish(stream, {"id": "two", "n": 2}), 30)
        envelope = await asyncio.wait_for(pending, 30)
        # A publish refused as unavailable may still have been stored (the NATS client sends
        # what it had buffered when it reconnects): at-least-once, never "at most once".
        while envelope.payload["n"] == "lost":
            await envelope.ack()
            envelope = await _next(messages)
        assert envelope.payload == {"id": "two", "n": 2}
        await envelope.ack()

        # Broadcasts sent while the listener was away are missed; it hears those after it is
        # back.
        assert await _tell_until_heard(bus, channel, heard) == {"n": "again"}


async def _tell_until_heard(
    bus: Bus, channel: str, heard: AsyncIterator[dict[str, Any]]
) -> dict[str, Any]:
    """Broadcast until the listener hears it: one that reconnects misses what was sent while
    it was away."""
    listening = asyncio.ensure_future(anext(heard))
    try:
        async with asyncio.timeout(30):
            while not listening.done():
                with contextlib.suppress(errors.Unavailable):
                    await bus.broadcast(channel, {"n": "again"})
                await asyncio.wait({listening}, timeout=0.2)
        return listening.result()
    finally:
        listening.cancel()


async def _refused(publish: Callable[[], Awaitable[None]]) -> None:
    """Publish until the bus refuses with its own error: the client may not have seen the cut
    yet, and a publish it still accepts is fine."""
    async with asyncio.timeout(10):
        while True:
            try:
                await publish()
            except errors.Unavailable:
                return
            await asyncio.sleep(0.05)


async def test_the_bus_survives_a_dropped_connection_and_a_broker_outage(networked: str) -> None:
    url = await _url_of(networked)
    assert url is not None
    proxy = Proxy(_address(url))
    await proxy.start()
    try:
        async with _buses(networked, _proxied(url, proxy.port)) as make:

            async def restore() -> None:
                await proxy.start()

            await _survives_an_outage(make, proxy.stop, restore)
            # A plain drop (the broker stays up) is survived too.
            bus = make()
            stream = _name("s")
            messages = bus.consume(stream, "g").__aiter__()
            await bus.publish(stream, {"n": 1})
            await (await _next(messages)).ack()
            proxy.cut()
            await _eventually(lambda: bus.publish(stream, {"id": "two", "n": 2}))
            envelope = await _next(messages, 30)
            assert (envelope.payload, envelope.deliveries) == ({"id": "two", "n": 2}, 1)
    finally:
        await proxy.stop()


async def test_redis_client_kill_is_survived() -> None:
    await _check_redis(REDIS_URL)
    async with _buses("redis", REDIS_URL) as make:
        bus = make()
        stream, channel = _name("s"), _name("c")
        messages = bus.consume(stream, "g").__aiter__()
        await bus.publish(stream, {"n": 1})
        first = await _next(messages)
        await first.ack()
        async with bus.listen(channel) as heard:
            admin = Redis.from_url(REDIS_URL)
            try:
                clients = await admin.client_list()
                ours = [c["id"] for c in clients if c.get("name") == bus.name]
                assert ours
                for client_id in ours:
                    await admin.client_kill_filter(_id=client_id)
            finally:
                await admin.aclose()
            await bus.publish(stream, {"n": 2})
            second = await _next(messages)
            assert (second.payload, second.deliveries) == ({"n": 2}, 1)
            await second.ack()
            assert await _tell_until_heard(bus, channel, heard) == {"n": "again"}


# -- a broker restarted (private servers) ------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Server:
    """A private redis-server or nats-server this test may kill and start again."""

    def __init__(self, kind: str, directory: Path) -> None:
        self.kind = kind
        self.port = _free_port()
        self.directory = directory
        self.process: asyncio.subprocess.Process | None = None
        binary = "redis-server" if kind == "redis" else "nats-server"
        path = shutil.which(binary) or (f"/usr/sbin/{binary}" if kind == "nats" else None)
        if path is None or not Path(path).exists():
            unavailable(binary, "not installed", "PATH")
        self.binary = str(path)

    @property
    def url(self) -> str:
        return f"{'redis' if self.kind == 'redis' else 'nats'}://127.0.0.1:{self.port}"

    async def start(self) -> None:
        if self.kind == "redis":
            args = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1"]
            args += ["--save", "", "--appendonly", "no", "--dir", str(self.directory)]
        else:
            args = [self.binary, "-a", "127.0.0.1", "-p", str(self.port), "-js"]
            args += ["-sd", str(self.directory)]
        self.process = await asyncio.create_subprocess_exec(
            *args, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
        )

        async def accepting() -> None:
            _, writer = await asyncio.open_connection("127.0.0.1", self.port)
            writer.close()

        await _eventually(accepting, 10)

    async def kill(self) -> None:
        if self.process is not None:
            self.process.kill()
            await self.process.wait()
            self.process = None


async def test_the_bus_survives_a_broker_restart(networked: str, tmp_path: Path) -> None:
    server = Server(networked, tmp_path)
    await server.start()
    try:
        async with _buses(networked, server.url) as make:
            # Redis runs without persistence here: it comes back empty, so the consumer must
            # make its group again. NATS keeps its store: the stream and consumer come back.
            await _survives_an_outage(make, server.kill, server.start)
    finally:
        await server.kill()


async def test_a_consumer_recovers_when_its_stream_is_deleted_under_it(networked: str) -> None:
    url = await _url_of(networked)
    assert url is not None
    prefix = f"clarion-test-{uuid.uuid4().hex[:10]}"
    async with _buses(networked, url, prefix) as make:
        bus = make()
        stream = _name("s")
        messages = bus.consume(stream, "g").__aiter__()
        await bus.publish(stream, {"n": 1})
        await (await _next(messages)).ack()
        waiting = asyncio.ensure_future(_next(messages, 30))
        await asyncio.sleep(0.3)
        await _forget(networked, url, prefix)  # an operator's mistake, or a broker that lost it
        await _eventually(lambda: bus.publish(stream, {"id": "two", "n": 2}))
        envelope = await waiting
        assert (envelope.payload, envelope.deliveries) == ({"id": "two", "n": 2}, 1)


# -- producers writing straight onto the broker ------------------------------------------------


async def test_an_entry_that_is_not_a_json_object_is_dead_lettered_at_once(
    networked: str,
) -> None:
    url = await _url_of(networked)
    assert url is not None
    prefix = f"clarion-test-{uuid.uuid4().hex[:10]}"
    async with _buses(networked, url, prefix) as make:
        bus = make()
        stream = _name("s")
        messages = bus.consume(stream, "g").__aiter__()
        await bus.publish(stream, {"n": 0})
        await (await _next(messages)).ack()  # the stream and group exist now
        if networked == "redis":
            client = Redis.from_url(url)
            try:
                await client.xadd(f"{prefix}:{stream}", {"payload": "not json"})
                await client.xadd(f"{prefix}:{stream}", {"other": "field"})
            finally:
                await client.aclose()
        else:
            nc = await nats.connect(url)
            try:
                js = nc.jetstream()
                await js.publish(f"{prefix}.{stream}", b"not json")
                await js.publish(f"{prefix}.{stream}", b"[1, 2]")
            finally:
                await nc.close()
        await bus.publish(stream, {"n": 1})
        assert (await _next(messages)).payload == {"n": 1}
        dead = bus.consume(f"{stream}.dead", "inspect").__aiter__()
        letters = [(await _next(dead)).payload for _ in range(2)]
        assert {letter["reason"] for letter in letters} == {"invalid"}
        assert letters[0]["payload"] == "not json"
        assert letters[0]["deliveries"] == 0


# -- dead letters, for operators ---------------------------------------------------------------


async def _dead_lettered(bus: Bus, stream: str, payloads: list[dict[str, Any]]) -> None:
    """Publish `payloads` to `stream` and reject each: they become dead letters, in order."""
    messages = bus.consume(stream, "g").__aiter__()
    for payload in payloads:
        await bus.publish(stream, payload)
        envelope = await _next(messages)
        assert envelope.payload == payload
        await envelope.reject(f"bad {payload['n']}")
    await messages.aclose()  # type: ignore[attr-defined]


async def test_dead_letters_are_listed_shown_and_removed(make_bus: MakeBus) -> None:
    bus = make_bus()
    stream = _name("s")
    assert await bus.dead_letters(stream) == []
    started = datetime.now(UTC) - timedelta(seconds=5)
    await _dead_lettered(bus, stream, [{"n": 1}, {"n": 2, "data": ["x"]}, {"n": 3}])

    letters = await make_bus().dead_letters(stream)  # any process may look
    assert [(x.stream, x.group, x.deliveries, x.reason, x.payload) for x in letters] == [
        (stream, "g", 1, "bad 1", {"n": 1}),
        (stream, "g", 1, "bad 2", {"n": 2, "data": ["x"]}),
        (stream, "g", 1, "bad 3", {"n": 3}),
    ]
    assert len({x.id for x in letters}) == 3
    for letter in letters:
        assert letter.dead_at is not None
        assert started <= letter.dead_at <= datetime.now(UTC) + timedelta(seconds=5)

    first_page = await bus.dead_letters(stream, limit=2)
    assert [x.id for x in first_page] == [x.id for x in letters[:2]]
    rest = await bus.dead_letters(stream, after=first_page[-1].id, limit=2)
    assert [x.id for x in rest] == [letters[2].id]
    assert await bus.dead_letters(stream, after=letters[2].id) == []

    shown = await bus.dead_letter(stream, letters[1].id)
    assert shown is not None
    assert (shown.id, shown.payload, shown.reason) == (
        letters[1].id,
        {"n": 2, "data": ["x"]},
        "bad 2",
    )

    assert await bus.remove_dead_letter(stream, letters[1].id) is True
    assert await bus.remove_dead_letter(stream, letters[1].id) is False
    assert await bus.dead_letter(stream, letters[1].id) is None
    assert [x.id for x in await bus.dead_letters(stream)] == [letters[0].id, letters[2].id]
    # Readers of the dead-letter stream step over the removed letter.
    inspect = bus.consume(f"{stream}.dead", "inspect").__aiter__()
    assert [(await _next(inspect)).payload["payload"]["n"] for _ in range(2)] == [1, 3]

    for unknown in ("", "0", "nope", "99999999", "99999999-0", "1-2-3"):
        assert await bus.dead_letter(stream, unknown) is None
        assert await bus.remove_dead_letter(stream, unknown) is False
    assert await bus.dead_letters(_name("never")) == []


async def test_a_given_message_id_dedupes_instead_of_the_payloads_own(make_bus: MakeBus) -> None:
    bus = make_bus()
    stream = _name("s")
    await bus.publish(stream, {"event_id": "e1", "n": 1})
    await bus.publish(stream, {"event_id": "e1", "n": 2}, message_id="replay-1")
    await bus.publish(stream, {"event_id": "e1", "n": 3}, message_id="replay-1")
    await bus.publish(stream, {"event_id": "e1", "n": 4})
    await bus.publish(stream, {"n": 5}, message_id="replay-2")
    messages = bus.consume(stream, "g").__aiter__()
    got = [(await _next(messages)).payload["n"] for _ in range(3)]
    await bus.publish(stream, {"n": 6})
    got.append((await _next(messages)).payload["n"])
    assert got == [1, 2, 5, 6]


async def test_a_replayed_dead_letter_is_processed_exactly_once_more(make_bus: MakeBus) -> None:
    bus = make_bus()
    deadletters = DeadLetters(bus)
    await bus.publish(EVENTS_STREAM, {"event_id": "evt-1"})
    await bus.publish(EVENTS_STREAM, {"event_id": "evt-2"})
    routers = bus.consume(EVENTS_STREAM, "routers").__aiter__()
    auditors = make_bus().consume(EVENTS_STREAM, "auditors").__aiter__()
    poison = await _next(routers)
    await poison.reject("routing failed")
    await (await _next(routers)).ack()
    for _ in range(2):
        await (await _next(auditors)).ack()
    [letter] = await deadletters.page(EVENTS_STREAM)
    assert (letter.group, letter.reason, letter.payload) == (
        "routers",
        "routing failed",
        {"event_id": "evt-1"},
    )

    # A replay that published but failed before forgetting the letter, then the retry: the
    # message goes out once (and within the dedupe window of its own id, which is why the
    # replay publishes under an id of its own).
    await bus.publish(
        EVENTS_STREAM, letter.payload, message_id=f"replay:{EVENTS_STREAM}.dead:{letter.id}"
    )
    replayed = await deadletters.replay(EVENTS_STREAM, letter.id)
    assert replayed.payload == {"event_id": "evt-1"}
    assert await deadletters.page(EVENTS_STREAM) == []
    with pytest.raises(errors.NotFound):
        await deadletters.replay(EVENTS_STREAM, letter.id)

    again = await _next(routers)
    assert (again.payload, again.deliveries) == ({"event_id": "evt-1"}, 1)
    await again.ack()
    # Every group gets the replay, once: the next message each sees is a new one.
    assert (await _next(auditors)).payload == {"event_id": "evt-1"}
    await bus.publish(EVENTS_STREAM, {"event_id": "evt-3"})
    assert (await _next(routers)).payload == {"event_id": "evt-3"}
    assert (await _next(auditors)).payload == {"event_id": "evt-3"}


async def test_dead_letters_that_hold_no_json_object_are_shown_but_not_replayed(
    networked: str,
) -> None:
    url = await _url_of(networked)
    assert url is not None
    prefix = f"clarion-test-{uuid.uuid4().hex[:10]}"
    async with _buses(networked, url, prefix) as make:
        bus = make()
        deadletters = DeadLetters(bus)
        messages = bus.consume(EVENTS_STREAM, "routers").__aiter__()
        await bus.publish(EVENTS_STREAM, {"n": 0})
        await (await _next(messages)).ack()
        # A producer's garbage on the stream is dead-lettered as `invalid`; garbage written
        # straight onto the dead-letter stream is shown as `unreadable`.
        await _write_raw(networked, url, f"{prefix}:{EVENTS_STREAM}", b"not json")
        await bus.publish(EVENTS_STREAM, {"n": 1})
        assert (await _next(messages)).payload == {"n": 1}
        await _write_raw(networked, url, f"{prefix}:{EVENTS_STREAM}.dead", b"[1, 2]")
        letters = await deadletters.page(EVENTS_STREAM)
        by_reason = {x.reason: x for x in letters}
        assert set(by_reason) == {"invalid", "unreadable"}
        assert by_reason["invalid"].payload == "not json"
        assert by_reason["unreadable"].payload == "[1, 2]"
        for letter in letters:
            with pytest.raises(errors.InvalidRequest):
                await deadletters.replay(EVENTS_STREAM, letter.id)
            await deadletters.drop(EVENTS_STREAM, letter.id)
        assert await deadletters.page(EVENTS_STREAM) == []
        with pytest.raises(errors.NotFound):
            await deadletters.drop(EVENTS_STREAM, letters[0].id)


async def _write_raw(kind: str, url: str, key: str, data: bytes) -> None:
    """Write bytes straight onto the broker: the Redis stream `key` (`prefix:stream`) or the
    NATS subject it names (`prefix.stream`)."""
    if kind == "redis":
        client = Redis.from_url(url)
        try:
            await client.xadd(key, {"payload": data})
        finally:
            await client.aclose()
        return
    nc = await nats.connect(url)
    try:
        await nc.jetstream().publish(key.replace(":", ".", 1), data)
    finally:
        await nc.close()
