"""APNs pipeline benchmark: one event to N iOS users, from POST /v1/events to the last `sent`.

    .venv/bin/python bench/apns_pipeline.py [--users 100000] [--runs 1]
        [--database sqlite | postgresql+asyncpg://postgres@127.0.0.1:5432/postgres]
        [--batch 500] [--concurrency 4] [--phases pipeline,null,transport] [--json]

The APNs emulator runs in its own process (``clarion emulate apns --tls``, latency 0, pinned to
CPU 1 with ``taskset -c 1`` when taskset exists); a freshly generated P-256 key is registered
through its control API. This process, pinned to CPU 0, is Clarion: API and worker in one
process (`clarion.entrypoints.server.serve`), with the APNs transport talking TLS to the
emulator, the emulator's certificate as CA, and the key stored as the tenant's credential.

Setup (not timed), on a fresh database per phase: a tenant, its APNs credential, a group of
N users, and one iOS device per user, written set-based (``INSERT ... SELECT``). SQLite is a
file in a temporary directory; for a PostgreSQL URL a scratch database is created next to the
one the URL names and dropped afterwards.

Phases, each timed from just before POST /v1/events (real HTTP to the server) to the moment
the last completion is committed (`Store.complete_deliveries` returned):

- ``pipeline``: the whole thing, accept, relay, route (N items, N websocket and N APNs
  deliveries, 3N audit entries), then claim, send to the emulator, record `sent` with the
  apns-id. Checked afterwards: N APNs deliveries `sent` with distinct references, and the
  emulator received exactly N pushes.
- ``null`` (baseline): the same pipeline, with the APNs transport replaced by one that answers
  `Delivered` at once. What the registry side (HTTP, routing, claims, completions) can do on
  this machine without a provider.
- ``transport`` (baseline): `ApnsTransport.send` alone against the same emulator, with
  `Claimed` records built before the clock starts, in batches of ``--batch`` with
  ``--concurrency`` batches in flight, as `Delivering` runs them. What the provider side can
  do (client and emulator), without a database.

For each phase: wall time, deliveries/s, this process's CPU seconds (all threads, so SQLite's
too), the emulator's CPU seconds (from /proc), and the machine's total busy CPU seconds (from
/proc/stat: the rest is PostgreSQL and whatever else runs). The machine is shared and noisy;
compare phases of one run, not runs of different days.

`run(...)` is importable (bench/apns.py may call it): it returns the measured phases.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import http.client
import json
import os
import secrets
import shutil
import signal
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import sqlalchemy as sa
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy.engine import make_url

from clarion import bootstrap
from clarion.adapters.providers.apns import ApnsTransport, ProviderTokens
from clarion.adapters.storage.tables import (
    BigId,
    UtcDateTime,
    deliveries,
    devices,
    memberships,
    users,
)
from clarion.domain import outcomes
from clarion.domain.channels import Channel
from clarion.domain.notifications import InboxItem
from clarion.domain.records import Claimed, Credential, CredentialInfo
from clarion.domain.statuses import Status
from clarion.entrypoints.server import serve
from clarion.services.delivering import Delivering
from clarion.settings import ApnsSettings, Settings, WorkerSettings
from common import median_of  # bench/ is first on sys.path

TEAM = "TEAM123456"
KID = "KEY1234567"
TOPIC = "com.example.app"
GROUP = "everyone"
EVENT = {
    "type": "bench.apns",
    "recipients": {"groups": [GROUP]},
    "title": "Hello",
    "body": "A benchmark notification body of ordinary length.",
    "data": {"k": "v"},
    "group": "g1",
    "channels": ["apns"],
}
CLARION_CPU = 0
EMULATOR_CPU = 1
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
TIMEOUT_SECONDS = 1800.0
PHASES = ("pipeline", "null", "transport")


@dataclass
class Phase:
    """One phase of one run."""

    phase: str
    database: str
    deliveries: int
    batch: int
    concurrency: int
    wall_s: float
    cpu_s: float  # this process, every thread
    emulator_cpu_s: float
    machine_cpu_s: float  # both cores, every process
    routed_s: float | None = None  # POST to routing committed (pipeline phases)
    first_sent_s: float | None = None  # POST to the first completion committed
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def per_s(self) -> float:
        return self.deliveries / self.wall_s

    @property
    def per_cpu_s(self) -> float:
        return self.deliveries / self.cpu_s if self.cpu_s else 0.0


def token_of(n: int) -> str:
    return f"{n:064x}"


def machine_busy_s() -> float:
    """CPU seconds spent by every process on every core since boot (not idle, not iowait)."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    ticks = [int(f) for f in fields]
    idle = ticks[3] + ticks[4]
    return (sum(ticks[:8]) - idle) / CLOCK_TICKS


# -- the emulator process ------------------------------------------------------------------------


class Emulator:
    """``clarion emulate apns --tls`` in a child process, with its ports read from its output."""

    def __init__(self, cert_out: Path) -> None:
        command = [sys.executable, "-m", "clarion", "emulate", "apns", "--tls"]
        command += ["--port", "0", "--control-port", "0", "--latency-ms", "0"]
        command += ["--cert-out", str(cert_out)]
        self.pinned = shutil.which("taskset") is not None
        if self.pinned:
            command = ["taskset", "-c", str(EMULATOR_CPU), *command]
        self.process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
        )
        self.cert = cert_out
        self.port = self.control_port = 0
        assert self.process.stdout is not None
        for line in self.process.stdout:
            if line.startswith("APNs emulator:"):
                self.port = int(line.rsplit(":", 1)[1].split("/", 1)[0])
            elif line.startswith("control API:"):
                self.control_port = int(line.rsplit(":", 1)[1].split("/", 1)[0])
                break
        if not self.port or not self.control_port:
            self.stop()
            raise RuntimeError("the emulator did not start")

    def control(self, method: str, path: str, body: Any = None) -> Any:
        connection = http.client.HTTPConnection("127.0.0.1", self.control_port, timeout=120)
        try:
            data = json.dumps(body).encode() if body is not None else None
            connection.request(method, path, body=data, headers={"connection": "close"})
            response = connection.getresponse()
            answer = json.loads(response.read())
            if response.status >= 300:
                raise RuntimeError(f"{method} {path}: {response.status} {answer}")
            return answer
        finally:
            connection.close()

    def cleared(self) -> int:
        """Forget what was received (and every attempt); how many pushes were received."""
        count = int(self.control("DELETE", "/control/received")["cleared"])
        self.control("DELETE", "/control/attempts")
        return count

    def cpu_s(self) -> float:
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@dataclass
class Key:
    """The signing key: PEM for Clarion's credential, public PEM for the emulator."""

    pem: str
    public: str

    @classmethod
    def generate(cls) -> Key:
        key = ec.generate_private_key(ec.SECP256R1())
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode()
        public = (
            key.public_key()
            .public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            .decode()
        )
        return cls(pem, public)


# -- databases -----------------------------------------------------------------------------------


class Database:
    """A fresh database for one phase: a SQLite file, or a scratch PostgreSQL database."""

    def __init__(self, spec: str, tmp: Path) -> None:
        self.kind = "sqlite" if spec == "sqlite" else "postgresql"
        self.admin_url = spec
        self.tmp = tmp
        self.name = f"clarion_bench_{uuid.uuid4().hex[:12]}"

    @property
    def url(self) -> str | None:
        if self.kind == "sqlite":
            return None  # Settings puts clarion.db in data_dir
        return make_url(self.admin_url).set(database=self.name).render_as_string(False)

    def _plain(self, url: str) -> str:
        return url.replace("postgresql+asyncpg://", "postgresql://")

    async def _admin(self, url: str, statement: str) -> None:
        conn = await asyncpg.connect(self._plain(url), timeout=10)
        try:
            await conn.execute(statement)
        finally:
            await conn.close()

    @contextlib.asynccontextmanager
    async def scratch(self) -> AsyncIterator[None]:
        if self.kind == "postgresql":
            await self._admin(self.admin_url, f'CREATE DATABASE "{self.name}"')
        try:
            yield
        finally:
            if self.kind == "postgresql":
                await self._admin(
                    self.admin_url, f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)'
                )

    async def settle(self) -> None:
        """Checkpoint (SQLite's WAL; PostgreSQL after VACUUM ANALYZE) so setup's writes do not
        land inside the measured phase."""
        if self.kind == "sqlite":
            import sqlite3

            with sqlite3.connect(self.tmp / "clarion.db") as conn:
                conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            return
        assert self.url is not None
        for table in ("users", "memberships", "devices", "groups"):
            await self._admin(self.url, f"VACUUM ANALYZE {table}")
        await self._admin(self.url, "CHECKPOINT")


# -- setup (not timed) ---------------------------------------------------------------------------


async def populate(clarion: bootstrap.Clarion, key: Key, n: int) -> tuple[str, str]:
    """A tenant with an APNs credential, a group of `n` users each with one iOS device; the
    tenant's id and API key."""
    created = await clarion.tenancy.create_tenant("bench")
    tenant = created.tenant_id
    await clarion.credentials.put_apns(
        tenant,
        "main",
        auth="token",
        topic=TOPIC,
        environment="sandbox",
        private_key=key.pem,
        key_id=KID,
        team_id=TEAM,
    )
    group, _ = await clarion.directory.put_group(
        tenant, GROUP, kind="group", name=None, community=None, attributes={}
    )
    engine = clarion.store.engine
    now = datetime.now(UTC)
    seq = sa.select(sa.literal_column("1").label("n")).cte("seq", recursive=True)
    seq = seq.union_all(sa.select((seq.c.n + 1).label("n")).where(seq.c.n < n))
    if engine.dialect.name == "postgresql":
        token = sa.func.lpad(sa.func.to_hex(users.c.id), 64, "0")
    else:
        token = sa.func.printf("%064x", users.c.id)
    async with engine.begin() as conn:
        await conn.execute(
            users.insert().from_select(
                ["tenant_id", "external_id", "attributes", "created_at", "updated_at"],
                sa.select(
                    sa.literal(tenant),
                    sa.literal("bench-user-") + sa.cast(seq.c.n, sa.String),
                    sa.literal({}, users.c.attributes.type),
                    sa.literal(now, UtcDateTime),
                    sa.literal(now, UtcDateTime),
                ),
            )
        )
        mine = users.c.tenant_id == tenant
        await conn.execute(
            memberships.insert().from_select(
                ["group_id", "user_id", "created_at"],
                sa.select(
                    sa.literal(group.id, BigId), users.c.id, sa.literal(now, UtcDateTime)
                ).where(mine),
            )
        )
        await conn.execute(
            devices.insert().from_select(
                [
                    "tenant_id",
                    "user_id",
                    "provider",
                    "token",
                    "keys",
                    "status",
                    "created_at",
                    "updated_at",
                ],
                sa.select(
                    sa.literal(tenant),
                    users.c.id,
                    sa.literal("apns"),
                    token,
                    sa.literal({}, devices.c["keys"].type),
                    sa.literal("active"),
                    sa.literal(now, UtcDateTime),
                    sa.literal(now, UtcDateTime),
                ).where(mine),
            )
        )
        made = await conn.scalar(sa.select(sa.func.count()).where(devices.c.tenant_id == tenant))
    if made != n:
        raise SystemExit(f"setup made {made} devices, wanted {n}")
    return tenant, created.api_key


# -- the pipeline phases -------------------------------------------------------------------------


class InstantApns:
    """The null transport: every push `Delivered` at once, with an apns-id-shaped reference."""

    channel = Channel.APNS

    async def send(self, batch: Sequence[Claimed]) -> list[outcomes.Outcome]:
        return [outcomes.Delivered(str(uuid.UUID(int=c.id))) for c in batch]


class Completions:
    """Wraps `Store.complete_deliveries` to see, without polling, when the last one committed,
    and `Routing.route` to see when routing did."""

    def __init__(self, clarion: bootstrap.Clarion, wanted: int) -> None:
        self.wanted = wanted
        self.final: set[int] = set()
        self.other: dict[str, int] = {}
        self.first: float | None = None
        self.routed: float | None = None
        self.last = 0.0
        self.done = asyncio.Event()
        routing = clarion.routing
        route = routing.route

        async def routed(event_id: str) -> Any:
            result = await route(event_id)
            if result is not None:
                self.routed = time.perf_counter()
            return result

        routing.route = routed  # type: ignore[method-assign]
        store = clarion.store
        original = store.complete_deliveries

        async def complete(completions: Any, now: datetime) -> list[int]:
            applied = await original(completions, now)
            moment = time.perf_counter()
            kinds = {c.delivery_id: c.outcome for c in completions}
            for delivery_id in applied:
                outcome = kinds[delivery_id]
                if not isinstance(outcome, outcomes.RetryLater | outcomes.AuthFailed):
                    self.final.add(delivery_id)
                if not isinstance(outcome, outcomes.Delivered):
                    name = type(outcome).__name__
                    self.other[name] = self.other.get(name, 0) + 1
            if applied and self.first is None:
                self.first = moment
            self.last = moment
            if len(self.final) >= self.wanted:
                self.done.set()
            return applied

        store.complete_deliveries = complete  # type: ignore[method-assign]


async def pipeline_phase(
    phase: str,
    database: str,
    n: int,
    emulator: Emulator,
    key: Key,
    *,
    batch: int,
    concurrency: int,
) -> Phase:
    with tempfile.TemporaryDirectory(prefix="clarion-bench-") as tmp:
        db = Database(database, Path(tmp))
        async with db.scratch():
            settings = Settings(
                data_dir=Path(tmp),
                database_url=db.url,
                secret_key=base64.b64encode(secrets.token_bytes(32)).decode(),
                port=0,
                log_level="warning",
                apns=ApnsSettings(
                    enabled=True, host="127.0.0.1", port=emulator.port, ca_file=emulator.cert
                ),
                worker=WorkerSettings(delivery_batch=batch, delivery_concurrency=concurrency),
            )
            await bootstrap.migrate(settings)
            clarion = bootstrap.build(settings)
            try:
                tenant, api_key = await populate(clarion, key, n)
                if phase == "null":
                    clarion.delivering = Delivering(
                        clarion.store,
                        clarion.clock,
                        {Channel.APNS: InstantApns()},
                        batch=batch,
                        concurrency=concurrency,
                    )
                await db.settle()
                emulator.cleared()
                return await _timed_pipeline(
                    phase, db, clarion, (tenant, api_key), n, emulator, batch
                )
            finally:
                await clarion.close()


async def _timed_pipeline(
    phase: str,
    db: Database,
    clarion: bootstrap.Clarion,
    tenant: tuple[str, str],
    n: int,
    emulator: Emulator,
    batch: int,
) -> Phase:
    _, api_key = tenant
    seen = Completions(clarion, n)
    stop = asyncio.Event()
    listening: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    server = asyncio.create_task(serve(clarion, stop=stop, on_listening=listening.set_result))
    try:
        port = await asyncio.wait_for(listening, 30)
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{port}",
            headers={"Authorization": f"Bearer {api_key}"},
            timeout=60,
        ) as client:
            # Open the connection, and let FastAPI build its route state (pydantic schemas,
            # ~0.2 s, once per process) before the clock starts: 422 for an empty event.
            await client.get("/healthz")
            await client.post("/v1/events", json={})
            cpu0, emu0, machine0 = time.process_time(), emulator.cpu_s(), machine_busy_s()
            started = time.perf_counter()
            answer = await client.post("/v1/events", json=EVENT)
            if answer.status_code != 202:
                raise SystemExit(f"POST /v1/events: {answer.status_code} {answer.text}")
            await asyncio.wait_for(seen.done.wait(), TIMEOUT_SECONDS)
            wall = seen.last - started
            cpu = time.process_time() - cpu0
            emu, machine = emulator.cpu_s() - emu0, machine_busy_s() - machine0
    finally:
        stop.set()
        await asyncio.wait_for(server, 60)
    received = emulator.cleared()
    checked = await verify(clarion, n)
    if phase == "pipeline" and received != n:
        raise SystemExit(f"the emulator received {received} pushes, wanted {n}")
    return Phase(
        phase=phase,
        database=db.kind,
        deliveries=n,
        batch=batch,
        concurrency=clarion.settings.worker.delivery_concurrency,
        wall_s=wall,
        cpu_s=cpu,
        emulator_cpu_s=emu,
        machine_cpu_s=machine,
        routed_s=None if seen.routed is None else seen.routed - started,
        first_sent_s=None if seen.first is None else seen.first - started,
        details={"received": received, **checked, **seen.other},
    )


async def verify(clarion: bootstrap.Clarion, n: int) -> dict[str, Any]:
    """N APNs deliveries sent, each with its own reference."""
    async with clarion.store.engine.connect() as conn:
        row = (
            await conn.execute(
                sa.select(
                    sa.func.count(),
                    sa.func.count(sa.distinct(deliveries.c.reference)),
                ).where(deliveries.c.channel == "apns", deliveries.c.status == str(Status.SENT))
            )
        ).one()
    if row[0] != n or row[1] != n:
        raise SystemExit(f"{row[0]} APNs deliveries sent with {row[1]} references, wanted {n}")
    return {"sent": row[0]}


# -- the transport phase -------------------------------------------------------------------------


def credential(pem: str) -> Credential:
    now = datetime.now(UTC)
    info = CredentialInfo(
        id="cred-bench",
        tenant_id="t",
        provider="apns",
        name="main",
        app_id=None,
        environment="sandbox",
        metadata={"auth": "token", "key_id": KID, "team_id": TEAM, "topic": TOPIC},
        status="active",
        paused_reason=None,
        created_at=now,
        updated_at=now,
    )
    return Credential(info=info, secret=pem)


def claimed(n: int, now: datetime) -> Claimed:
    item = InboxItem(
        id=n,
        notification_id="n1",
        event_id="e1",
        user=f"bench-user-{n}",
        status=Status.PENDING,
        type=str(EVENT["type"]),
        title=str(EVENT["title"]),
        body=str(EVENT["body"]),
        data={"k": "v"},
        category=None,
        group="g1",
        created_at=now,
    )
    return Claimed(
        id=n,
        fence=1,
        tenant_id="t",
        channel="apns",
        endpoint=str(n),
        attempts=1,
        item=item,
        address=token_of(n),
        registered_at=now,
    )


async def transport_phase(
    n: int, emulator: Emulator, key: Key, *, batch: int, concurrency: int
) -> Phase:
    opened = credential(key.pem)

    async def load(tenant: str, provider: str, app_id: str | None) -> Credential:
        return opened

    context = ssl.create_default_context(cafile=str(emulator.cert))
    transport = ApnsTransport(
        load, host="127.0.0.1", port=emulator.port, ssl_context=context, tokens=ProviderTokens()
    )
    now = datetime.now(UTC)
    work = [claimed(i, now) for i in range(1, n + 1)]
    batches = [work[i : i + batch] for i in range(0, n, batch)]
    emulator.cleared()
    failed = 0
    slots = asyncio.Semaphore(concurrency)

    async def one(chunk: list[Claimed]) -> None:
        nonlocal failed
        try:
            answers = await transport.send(chunk)
            failed += sum(not isinstance(o, outcomes.Delivered) for o in answers)
        finally:
            slots.release()

    cpu0, emu0, machine0 = time.process_time(), emulator.cpu_s(), machine_busy_s()
    started = time.perf_counter()
    try:
        async with asyncio.TaskGroup() as group:
            for chunk in batches:
                await slots.acquire()
                group.create_task(one(chunk))
        wall = time.perf_counter() - started
        cpu = time.process_time() - cpu0
        emu, machine = emulator.cpu_s() - emu0, machine_busy_s() - machine0
    finally:
        await transport.close()
    received = emulator.cleared()
    if failed or received != n:
        raise SystemExit(f"transport: {failed} failed, the emulator received {received} of {n}")
    return Phase(
        phase="transport",
        database="-",
        deliveries=n,
        batch=batch,
        concurrency=concurrency,
        wall_s=wall,
        cpu_s=cpu,
        emulator_cpu_s=emu,
        machine_cpu_s=machine,
        details={"received": received},
    )


# -- run -----------------------------------------------------------------------------------------


async def run(
    *,
    users: int = 100_000,
    database: str = "sqlite",
    batch: int | None = None,
    concurrency: int | None = None,
    runs: int = 1,
    phases: Sequence[str] = PHASES,
    progress: bool = True,
) -> list[Phase]:
    """Measure `phases` `runs` times (alternating their order between runs); every phase.

    `database` is "sqlite" or a PostgreSQL URL naming a database to connect to while creating
    and dropping the scratch one. `batch` and `concurrency` default to `WorkerSettings`'.
    """
    defaults = WorkerSettings()
    batch = batch or defaults.delivery_batch
    concurrency = concurrency or defaults.delivery_concurrency
    unknown = set(phases) - set(PHASES)
    if unknown:
        raise ValueError(f"unknown phases: {sorted(unknown)}")
    with contextlib.suppress(AttributeError, OSError):
        os.sched_setaffinity(0, {CLARION_CPU})
    key = Key.generate()
    measured: list[Phase] = []
    with tempfile.TemporaryDirectory(prefix="clarion-bench-emu-") as tmp:
        emulator = Emulator(Path(tmp) / "emulator.pem")
        try:
            emulator.control(
                "POST", "/control/keys", {"team_id": TEAM, "key_id": KID, "public_key": key.public}
            )
            if progress:
                print(
                    f"emulator pid {emulator.process.pid} on port {emulator.port}"
                    f" ({'CPU 1 via taskset' if emulator.pinned else 'not pinned: no taskset'});"
                    f" clarion on CPUs {sorted(os.sched_getaffinity(0))};"
                    f" {users:,} users, batch {batch}, {concurrency} in flight, {database}",
                    file=sys.stderr,
                )
            for number in range(runs):
                order = list(phases) if number % 2 == 0 else list(reversed(phases))
                for name in order:
                    if name == "transport":
                        result = await transport_phase(
                            users, emulator, key, batch=batch, concurrency=concurrency
                        )
                    else:
                        result = await pipeline_phase(
                            name,
                            database,
                            users,
                            emulator,
                            key,
                            batch=batch,
                            concurrency=concurrency,
                        )
                    measured.append(result)
                    if progress:
                        print(f"run {number + 1}: {row(result)}", file=sys.stderr)
        finally:
            emulator.stop()
    return measured


# -- reporting -----------------------------------------------------------------------------------

HEADER = (
    "| phase     | database   | deliveries |  wall s | deliveries/s | routed s | first s "
    "| CPU s | per CPU-s | emu CPU s | machine CPU s |\n"
    "|-----------|------------|-----------:|--------:|-------------:|---------:|--------:"
    "|------:|----------:|----------:|--------------:|"
)


def _opt(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def row(p: Phase) -> str:
    return (
        f"| {p.phase:<9} | {p.database:<10} | {p.deliveries:>10,} | {p.wall_s:>7.2f} "
        f"| {p.per_s:>12,.0f} | {_opt(p.routed_s):>8} | {_opt(p.first_sent_s):>7} "
        f"| {p.cpu_s:>5.1f} | {p.per_cpu_s:>9,.0f} | {p.emulator_cpu_s:>9.1f} "
        f"| {p.machine_cpu_s:>13.1f} |"
    )


def report(measured: list[Phase], runs: int) -> None:
    by_phase: dict[str, list[Phase]] = {}
    for p in measured:
        by_phase.setdefault(p.phase, []).append(p)
    print(f"\nmedians of {runs} run(s)\n")
    print(HEADER)
    for phases in by_phase.values():
        print(row(median_of(phases)))
    print()
    for phases in by_phase.values():
        m = median_of(phases)
        line = f"{m.phase}: clarion {1e6 * m.cpu_s / m.deliveries:,.0f} us CPU per delivery"
        if m.emulator_cpu_s:
            line += (
                f"; emulator {1e6 * m.emulator_cpu_s / m.deliveries:,.0f} us CPU per push,"
                f" busy {100 * m.emulator_cpu_s / m.wall_s:.0f}% of the wall time"
            )
        cores = os.cpu_count() or 1
        line += f"; machine busy {100 * m.machine_cpu_s / (cores * m.wall_s):.0f}% of {cores} cores"
        print(line)
    pipeline = by_phase.get("pipeline")
    for other in ("transport", "null"):
        if pipeline and other in by_phase:
            ratio = statistics.median(
                p.per_s / o.per_s for p, o in zip(pipeline, by_phase[other], strict=True)
            )
            print(f"pipeline / {other}: {ratio:.2f} (median of the per-run ratios of deliveries/s)")
    if pipeline:
        rate = median_of(pipeline).per_s
        print(f"target >= 5,000 deliveries/s: {'met' if rate >= 5000 else 'not met'} ({rate:,.0f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument(
        "--database", default="sqlite", help="sqlite, or a PostgreSQL URL (admin database)"
    )
    parser.add_argument("--batch", type=int, help="deliveries per claim (worker setting)")
    parser.add_argument("--concurrency", type=int, help="batches in flight (worker setting)")
    parser.add_argument("--phases", default=",".join(PHASES), help="comma-separated")
    parser.add_argument("--json", action="store_true", help="print every phase as JSON")
    args = parser.parse_args()
    if args.users < 1 or args.runs < 1:
        parser.error("--users and --runs must be positive")
    measured = asyncio.run(
        run(
            users=args.users,
            database=args.database,
            batch=args.batch,
            concurrency=args.concurrency,
            runs=args.runs,
            phases=[p.strip() for p in args.phases.split(",") if p.strip()],
        )
    )
    if args.json:
        print(json.dumps([{**asdict(p), "per_s": p.per_s} for p in measured]))
        return
    report(measured, args.runs)


if __name__ == "__main__":
    main()
