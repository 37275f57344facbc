"""Scale-out guarantees with real processes: `clarion api` and `clarion worker` subprocesses on
the machine's PostgreSQL, with Redis Streams or NATS JetStream as the bus.

- **Crash**: 2 api + 3 worker processes; one event to 20,000 recipients with APNs devices on
  the emulator; a random worker is killed with SIGKILL five times during the fan-out and
  started again. Afterwards every recipient has exactly one APNs delivery, `sent`, none is left
  pending, and the emulator saw every token at least once and none more than twice.
- **Broker restart**: a private redis-server / nats-server is killed and started again in the
  middle of a stream of 500 events/s for 30 s (batches of 50 on POST /v1/events/batch) to 2
  api processes (2 workers route them); the stream must reach at least 90% of that rate, and
  every event answered 202 is delivered, that is routed once, with its inbox item and its
  `websocket` delivery (the in-app inbox: no provider, so the machine's cores go to the API,
  the routers and the broker). The test prints the rate it reached.
- **Start-up redelivery**: a worker started after the broker lost what it held hands the
  unrouted events to the bus at once, without waiting for the relay's periodic sweep.
- **Cross-node fan-out**: a websocket client connected to api B gets the notification of an
  event POSTed to api A and routed by the worker, through the bus's pub/sub; a read receipt on
  B reaches the same user's socket on A.

Each needs PostgreSQL, and Redis or NATS: without them a test fails under CI and is skipped
elsewhere, with the reason.
"""

from __future__ import annotations

import asyncio
import collections
import json
import random
import shutil
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets

from clarion import bootstrap
from clarion.emulators.apns import ApnsEmulator
from clarion.settings import StreamSettings
from tests.contract.test_bus import Server
from tests.e2e.deployment import (
    KID,
    TEAM,
    Deployment,
    Process,
    Tenant,
    apns_key,
    deployed,
    environment,
    fresh_tenant,
    populate,
    query,
    settings_for,
    shared_bus,
)

pytestmark = pytest.mark.postgres

BUSES = ["redis", "nats"]


@pytest.fixture
async def emulator() -> AsyncIterator[ApnsEmulator]:
    emu = ApnsEmulator()
    await emu.start()
    yield emu
    await emu.stop()


def _http(process: Process, api_key: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=process.base_url, headers={"Authorization": f"Bearer {api_key}"}, timeout=30
    )


async def _post(process: Process, tenant: Tenant, body: dict[str, Any], key: str) -> str:
    async with _http(process, tenant.api_key) as http:
        answer = await http.post("/v1/events", json=body, headers={"Idempotency-Key": key})
    assert answer.status_code == 202, answer.text
    return str(answer.json()["id"])


# -- crash: kill -9 workers during a 20,000-recipient fan-out ----------------------------------

RECIPIENTS = 20_000
KILLS = 5
KILL_EVERY = 4.0  # seconds between kills, once the first pushes have arrived
# The fan-out is slowed to last well past the five kills, however fast the machine: each worker
# has 2 batches of 50 in flight, and the emulator answers each push after 500 ms, so 3 workers
# send at most 600 pushes/s and 20,000 take at least 33 s (the kills are over within about
# 20 s on a quiet machine). Leases run out `LEASE_SECONDS` after a claim, so the deliveries a
# killed worker held go out again after that: the last kill must come before the first lease
# of a killed worker runs out, which is why no push can be cut short twice. The lease is set
# long so that this holds on a loaded machine too, where a restart takes seconds.
DELIVERY_BATCH = 50
DELIVERY_CONCURRENCY = 2
LEASE_SECONDS = 90.0
LATENCY_MS = 500
SETTLE_SECONDS = 240.0  # from the last kill until no delivery is pending


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.parametrize("bus", BUSES)
async def test_killing_workers_during_a_fan_out_loses_no_push_and_sends_none_thrice(
    bus: str, postgres_url: str, emulator: ApnsEmulator, tmp_path: Path
) -> None:
    started = time.monotonic()
    seed = random.randrange(1_000_000)
    chooser = random.Random(seed)
    async with shared_bus(bus) as (bus_url, prefix):
        tenant = await fresh_tenant(postgres_url, tmp_path)
        private, public = apns_key()
        emulator.register_key(TEAM, KID, public)
        await populate(
            postgres_url, tmp_path, tenant, group="everyone", count=RECIPIENTS, key_pem=private
        )
        assert emulator.certificate_pem is not None
        ca = tmp_path / "emulator.pem"
        ca.write_bytes(emulator.certificate_pem)
        env = environment(
            tmp_path,
            database_url=postgres_url,
            bus=bus,
            bus_url=bus_url,
            prefix=prefix,
            APNS__ENABLED="true",
            APNS__HOST="127.0.0.1",
            APNS__PORT=str(emulator.port),
            APNS__CA_FILE=str(ca),
            WORKER__DELIVERY_BATCH=str(DELIVERY_BATCH),
            WORKER__DELIVERY_CONCURRENCY=str(DELIVERY_CONCURRENCY),
            WORKER__DELIVERY_LEASE_SECONDS=str(LEASE_SECONDS),
        )
        async with deployed(tmp_path / "deployment", env) as deployment:
            for n in (1, 2):
                deployment.add("api", f"api-{n}")
            for n in (1, 2, 3):
                deployment.add("worker", f"worker-{n}")
            await deployment.start()
            emulator.latency_ms = LATENCY_MS
            ready = time.monotonic()

            event_id = await _post(
                deployment.apis[0],
                tenant,
                {
                    "type": "announcement",
                    "recipients": {"groups": ["everyone"]},
                    "title": "To everyone",
                    "channels": ["apns"],
                },
                "crash-1",
            )
            await _until(lambda: len(emulator.received) >= 200, 120, "no push arrived")
            fan_out = time.monotonic()
            kills: list[tuple[str, float, int]] = []
            for _ in range(KILLS):
                victim = chooser.choice(deployment.workers)
                at = time.monotonic() - fan_out
                sent_before = len({p["token"] for p in emulator.received})
                assert sent_before < RECIPIENTS, (
                    f"the fan-out ended before kill {len(kills) + 1}: slow it down",
                    kills,
                )
                await victim.kill()
                kills.append((victim.name, round(at, 1), sent_before))
                await victim.start()
                await asyncio.sleep(max(0.0, KILL_EVERY - (time.monotonic() - fan_out - at)))
            # Else a push resent after a lease ran out could be cut short again.
            assert kills[-1][1] < LEASE_SECONDS - 10, ("the kills took too long", kills)

            pending_sql = (
                "SELECT count(*) FROM deliveries d JOIN notifications n"
                " ON n.id = d.notification_id WHERE n.event_id = $1"
                " AND d.channel = 'apns' AND d.status = 'pending'"
            )
            settled_at = await _until_query(
                postgres_url, pending_sql, [event_id], 0, SETTLE_SECONDS, deployment
            )
            fan_out_seconds = settled_at - fan_out

            # Every recipient: exactly one APNs delivery, terminal, and `sent`.
            rows = await query(
                postgres_url,
                "SELECT count(DISTINCT i.user_id) AS users, count(d.id) AS deliveries,"
                " count(DISTINCT d.item_id) AS items,"
                " count(*) FILTER (WHERE d.status = 'sent') AS sent,"
                " count(*) FILTER (WHERE d.status = 'pending') AS pending"
                " FROM inbox_items i JOIN notifications n ON n.id = i.notification_id"
                " LEFT JOIN deliveries d ON d.item_id = i.id AND d.channel = 'apns'"
                " WHERE n.event_id = $1",
                event_id,
            )
            summary = dict(rows[0])
            assert summary == {
                "users": RECIPIENTS,
                "deliveries": RECIPIENTS,
                "items": RECIPIENTS,
                "sent": RECIPIENTS,
                "pending": 0,
            }, summary
            [notifications] = await query(
                postgres_url,
                "SELECT count(*) AS n FROM notifications WHERE event_id = $1",
                event_id,
            )
            assert notifications["n"] == 1  # routed once, whoever was killed
            # Exactly once in the registry: one `pending → sent` in each delivery's audit trail,
            # however many times its push went out.
            [audited] = await query(
                postgres_url,
                "SELECT count(*) AS moves, count(DISTINCT t.subject_id) AS deliveries"
                " FROM transitions t JOIN deliveries d ON d.id = t.subject_id"
                " JOIN notifications n ON n.id = d.notification_id"
                " WHERE t.subject = 'delivery' AND t.target = 'sent'"
                " AND n.event_id = $1 AND d.channel = 'apns'",
                event_id,
            )
            assert dict(audited) == {"moves": RECIPIENTS, "deliveries": RECIPIENTS}

            # The emulator: every token at least once, none more than twice; what the registry
            # recorded as sent is what the emulator accepted.
            tokens = {
                r["token"]
                for r in await query(
                    postgres_url,
                    "SELECT token FROM devices WHERE tenant_id = $1",
                    tenant.id,
                )
            }
            seen = collections.Counter(p["token"] for p in emulator.received)
            assert len(tokens) == RECIPIENTS
            assert not tokens - set(seen), f"{len(tokens - set(seen))} tokens never pushed to"
            assert not set(seen) - tokens
            assert max(seen.values()) <= 2, seen.most_common(3)
            duplicates = sum(n - 1 for n in seen.values())
            references = {
                r["reference"]
                for r in await query(
                    postgres_url,
                    "SELECT d.reference FROM deliveries d JOIN notifications n"
                    " ON n.id = d.notification_id WHERE n.event_id = $1 AND d.channel = 'apns'",
                    event_id,
                )
            }
            assert references <= {p["apns_id"] for p in emulator.received}
            assert len(references) == RECIPIENTS

    print(
        f"\ncrash[{bus}] seed={seed} kills={kills} pushes={len(emulator.received)}"
        f" duplicates={duplicates} tokens_twice={sum(1 for n in seen.values() if n == 2)}"
        f" setup={ready - started:.1f}s fan_out={fan_out_seconds:.1f}s"
        f" total={time.monotonic() - started:.1f}s"
    )


async def _until(check: Any, within: float, why: str) -> None:
    deadline = time.monotonic() + within
    while not check():
        assert time.monotonic() < deadline, why
        await asyncio.sleep(0.05)


async def _until_query(
    database_url: str,
    statement: str,
    args: list[Any],
    wanted: Any,
    within: float,
    deployment: Deployment,
) -> float:
    """Poll `statement` until its first value is `wanted`; when it was."""
    deadline = time.monotonic() + within
    while True:
        [row] = await query(database_url, statement, *args)
        if row[0] == wanted:
            return time.monotonic()
        assert time.monotonic() < deadline, (row[0], deployment.logs())
        await asyncio.sleep(0.5)


# -- a broker restarted under a stream of events ------------------------------------------------

RATE = 500  # events per second
STREAM_SECONDS = 30.0  # 15,000 events
RESTART_AT = 10.0  # seconds into the stream
DOWN_FOR = 2.0
REDELIVER_AFTER = "10"  # the relay's sweep: events unrouted this long are published again
ROUTED_WITHIN = 240.0  # after the stream ends


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.parametrize("bus", BUSES)
async def test_a_broker_restart_under_load_loses_no_accepted_event(
    bus: str, postgres_url: str, tmp_path: Path
) -> None:
    started = time.monotonic()
    broker = Server(bus, tmp_path / "broker")
    (tmp_path / "broker").mkdir()
    await broker.start()
    try:
        tenant = await fresh_tenant(postgres_url, tmp_path)
        env = environment(
            tmp_path,
            database_url=postgres_url,
            bus=bus,
            bus_url=broker.url,
            prefix="restart",
            WORKER__REDELIVER_AFTER_SECONDS=REDELIVER_AFTER,
        )
        async with deployed(tmp_path / "deployment", env) as deployment:
            for n in (1, 2):
                deployment.add("api", f"api-{n}", DATABASE_POOL_SIZE="8")
            for n in (1, 2):
                deployment.add("worker", f"worker-{n}")
            await deployment.start()
            load = Load(deployment.apis, tenant, RATE, STREAM_SECONDS)
            producing = asyncio.create_task(load.run())
            await asyncio.sleep(RESTART_AT)
            await broker.kill()
            restarted_at = time.monotonic() - load.started
            await asyncio.sleep(DOWN_FOR)
            await broker.start()
            await producing
            streamed = time.monotonic()

            accepted = list(load.accepted.values())
            # Backpressure (503 with Retry-After) is allowed; a 500, or a lost answer, is not.
            assert set(load.answers) <= {"202", "503"}, load.summary()
            assert len(accepted) >= 0.95 * load.sent, load.summary()
            # The stream ran at the rate asked for (batches are what make it reachable here).
            assert load.reached >= 0.9 * RATE, load.summary()
            routed_sql = (
                "SELECT count(*) FROM events e JOIN notifications n ON n.event_id = e.id"
                " JOIN inbox_items i ON i.notification_id = n.id"
                " JOIN deliveries d ON d.item_id = i.id AND d.channel = 'websocket'"
                " WHERE e.id = ANY($1::text[]) AND e.state = 'routed'"
            )
            done = await _until_query(
                postgres_url,
                routed_sql,
                [accepted],
                len(accepted),
                ROUTED_WITHIN,
                deployment,
            )
            [dupes] = await query(
                postgres_url,
                "SELECT count(*) AS n FROM (SELECT event_id FROM notifications"
                " GROUP BY event_id HAVING count(*) > 1) AS twice",
            )
            assert dupes["n"] == 0
            redelivered = sum(
                p.log.read_text().count('"action": "events_redelivered"')
                for p in deployment.workers
            )
    finally:
        await broker.kill()
    print(
        f"\nrestart[{bus}] {load.summary()} restart_at={restarted_at:.1f}s"
        f" routed_after_stream={done - streamed:.1f}s sweeps_that_redelivered={redelivered}"
        f" total={time.monotonic() - started:.1f}s"
    )


class Load:
    """Offers `rate` events per second for `seconds` as batches of `BATCH` (POST
    /v1/events/batch), round-robin over the API processes, each event with its own idempotency
    key, and records the answers. At most `IN_FLIGHT` requests are open at once: when the API
    answers more slowly than the schedule, the stream runs at the rate the machine gives (the
    summary says which), never past `seconds`. A request that dies with its connection is sent
    again with the same keys, as a producer would."""

    IN_FLIGHT = 64
    ATTEMPTS = 3
    BATCH = 50

    def __init__(self, apis: list[Process], tenant: Tenant, rate: int, seconds: float) -> None:
        self.apis = apis
        self.tenant = tenant
        self.rate = rate
        self.seconds = seconds
        self.accepted: dict[str, str] = {}
        self.answers: collections.Counter[str] = collections.Counter()
        self.retried: collections.Counter[str] = collections.Counter()
        self.sent = 0
        self.started = 0.0
        self.took = 0.0

    @property
    def reached(self) -> float:
        """Events offered per second over the stream."""
        return self.sent / max(self.took, 0.001)

    async def run(self) -> None:
        slots = asyncio.Semaphore(self.IN_FLIGHT)
        clients = [
            httpx.AsyncClient(
                base_url=api.base_url,
                headers={"Authorization": f"Bearer {self.tenant.api_key}"},
                timeout=30,
                limits=httpx.Limits(max_connections=self.IN_FLIGHT),
            )
            for api in self.apis
        ]
        tasks: set[asyncio.Task[None]] = set()
        self.started = time.monotonic()
        end = self.started + self.seconds
        requests = 0
        try:
            while True:
                due = self.started + self.sent / self.rate
                if due > time.monotonic():
                    await asyncio.sleep(due - time.monotonic())
                await slots.acquire()
                if time.monotonic() >= end:
                    break
                first = self.sent
                task = asyncio.create_task(
                    self._post(clients[requests % len(clients)], first, slots)
                )
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                self.sent += self.BATCH
                requests += 1
            self.took = time.monotonic() - self.started
            if tasks:
                await asyncio.wait(tasks)
        finally:
            for client in clients:
                await client.aclose()

    async def _post(self, http: httpx.AsyncClient, first: int, slots: asyncio.Semaphore) -> None:
        keys = [f"load-{n}" for n in range(first, first + self.BATCH)]
        events = [
            {"type": "load", "recipients": {"users": [f"u{n % 50}"]}, "idempotency_key": key}
            for n, key in zip(range(first, first + self.BATCH), keys, strict=True)
        ]
        try:
            for attempt in range(1, self.ATTEMPTS + 1):
                try:
                    answer = await http.post("/v1/events/batch", json={"events": events})
                except httpx.TransportError as exc:
                    self.retried[type(exc).__name__] += 1
                    if attempt == self.ATTEMPTS:
                        self.answers["lost"] += self.BATCH
                        return
                    continue
                self.answers[str(answer.status_code)] += self.BATCH
                if answer.status_code == 202:
                    for key, event in zip(keys, answer.json()["events"], strict=True):
                        self.accepted[key] = event["id"]
                return
        finally:
            slots.release()

    def summary(self) -> str:
        return (
            f"offered {self.rate}/s for {self.seconds:.0f}s in batches of {self.BATCH}:"
            f" sent={self.sent} ({self.reached:.0f}/s) answers={dict(self.answers)}"
            f" retried={dict(self.retried)}"
        )


# -- start-up redelivery on a shared bus -------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(180)
@pytest.mark.parametrize("bus", BUSES)
async def test_a_worker_started_after_the_broker_lost_its_messages_routes_them_at_once(
    bus: str, postgres_url: str, tmp_path: Path
) -> None:
    broker = Server(bus, tmp_path / "broker")
    (tmp_path / "broker").mkdir()
    await broker.start()
    try:
        tenant = await fresh_tenant(postgres_url, tmp_path)
        env = environment(
            tmp_path, database_url=postgres_url, bus=bus, bus_url=broker.url, prefix="startup"
        )
        async with deployed(tmp_path / "deployment", env) as deployment:
            api = deployment.add("api", "api")
            await api.start()
            ids = [
                await _post(api, tenant, {"type": "t", "recipients": {"users": [f"u{n}"]}}, f"k{n}")
                for n in range(20)
            ]
            # A worker's relay handed them to the bus, and the worker died before routing them.
            settings = settings_for(postgres_url, tmp_path).model_copy(
                update={
                    "bus": bus,
                    "bus_url": broker.url,
                    "streams": StreamSettings(prefix="startup"),
                }
            )
            clarion = bootstrap.build(settings)
            try:
                assert await clarion.relay.relay_once() == len(ids)
            finally:
                await clarion.close()
            # The broker loses them: a Redis without persistence restarted; for NATS, its
            # store is wiped as a lost disk would be.
            await broker.kill()
            for path in (tmp_path / "broker").iterdir():
                shutil.rmtree(path) if path.is_dir() else path.unlink()
            await broker.start()

            worker = deployment.add("worker", "worker")  # its sweep would wait 30 s
            started = time.monotonic()
            await worker.start()
            routed_sql = (
                "SELECT count(*) FROM events WHERE id = ANY($1::text[]) AND state = 'routed'"
            )
            done = await _until_query(postgres_url, routed_sql, [ids], len(ids), 20, deployment)
            assert done - started < 20
    finally:
        await broker.kill()


# -- cross-node fan-out through the bus's pub/sub ----------------------------------------------


@pytest.mark.timeout(180)
@pytest.mark.parametrize("bus", BUSES)
async def test_a_notification_reaches_a_socket_on_another_api_process(
    bus: str, postgres_url: str, tmp_path: Path
) -> None:
    async with shared_bus(bus) as (bus_url, prefix):
        tenant = await fresh_tenant(postgres_url, tmp_path)
        env = environment(
            tmp_path, database_url=postgres_url, bus=bus, bus_url=bus_url, prefix=prefix
        )
        async with deployed(tmp_path / "deployment", env) as deployment:
            a, b = deployment.add("api", "api-a"), deployment.add("api", "api-b")
            deployment.add("worker", "worker")
            await deployment.start()
            async with _http(a, tenant.api_key) as http:
                token = (await http.post("/v1/users/ann/tokens")).json()["token"]
            async with _socket(b, token) as on_b, _socket(a, token) as on_a:
                event_id = await _post(
                    a,
                    tenant,
                    {"type": "chat.message", "recipients": {"users": ["ann"]}, "title": "hi"},
                    "cross-1",
                )
                frame = await _frame(on_b, "notification")
                assert (frame["event_id"], frame["title"]) == (event_id, "hi")
                assert (await _frame(on_a, "notification"))["id"] == frame["id"]
                # A receipt on B is news for the user's socket on A.
                await on_b.send(json.dumps({"type": "read", "id": frame["id"]}))
                assert await _frame(on_b, "ack") == {
                    "type": "ack",
                    "id": frame["id"],
                    "status": "read",
                }
                assert await _frame(on_a, "status") == {
                    "type": "status",
                    "id": frame["id"],
                    "status": "read",
                }


def _socket(api: Process, token: str) -> Any:
    class Connected:
        async def __aenter__(self) -> Any:
            self.ws = await websockets.connect(api.ws_url)
            await self.ws.send(json.dumps({"type": "auth", "token": token}))
            assert (await _frame(self.ws, "ready"))["type"] == "ready"
            return self.ws

        async def __aexit__(self, *exc: object) -> None:
            await self.ws.close()

    return Connected()


async def _frame(ws: Any, kind: str, within: float = 15) -> dict[str, Any]:
    """The next frame of `kind`, skipping pings."""
    async with asyncio.timeout(within):
        while True:
            frame: dict[str, Any] = json.loads(await ws.recv())
            if frame["type"] == kind:
                return frame
            assert frame["type"] == "ping", frame
