"""Scale-out benchmark: end-to-end APNs deliveries/s with 1, 2 and 4 `clarion worker` processes.

    .venv/bin/python bench/scale.py [--workers 1,2,4] [--bus redis|nats] [--events 1000]
        [--recipients 20] [--postgres-url postgresql://postgres@127.0.0.1:5432/postgres]
        [--runs 1] [--in-flight 4] [--record] [--json]

For each worker count W, from a clean state: a scratch PostgreSQL database created next to the
one `--postgres-url` names (migrated, dropped afterwards), the APNs emulator in its own process
(``clarion emulate apns --tls``, latency 0, pinned to CPU 1 with ``taskset`` when it exists,
a freshly generated P-256 key registered through its control API), a tenant with that key as
its APNs credential (token auth), and ``events x recipients`` users each with one iOS device,
written set-based. Then a real deployment of subprocesses: one ``clarion api`` and W
``clarion worker``, sharing the scratch database (a pool of 4 connections each) and the bus
(the machine's Redis Streams, or NATS JetStream with ``--bus nats``) under a stream prefix of
their own, removed afterwards. The api and the workers are not pinned.

Timed: from the first ``POST /v1/events/batch`` (``--events`` events, each naming
``--recipients`` of the users, ``channels: ["apns"]``, 100 events per request, ``--in-flight``
requests at once) to the moment PostgreSQL shows every APNs delivery ``sent`` (polled every
0.25 s). The moment every event is ``routed`` is noted on the way. Checked afterwards: exactly
``events x recipients`` APNs deliveries, all ``sent``, one per user, and the emulator received
exactly that many pushes.

Baseline: the run with the fewest workers (W=1 by default) of the same invocation, on the same
machine minutes apart; each W reports its deliveries/s as a ratio to it (with ``--runs N``, the
median of the per-run ratios; the order of W alternates between runs). CPU seconds come from
/proc: the api process, the workers (summed), the emulator, this process, and the machine's
total busy time (the rest is PostgreSQL, the bus server and whatever else runs).

``--record`` writes the table to docs/benchmarks.md, between the markers
``<!-- bench/scale.py: begin -->`` and ``<!-- bench/scale.py: end -->`` (appended when absent).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import platform
import secrets
import shlex
import signal
import socket
import statistics
import sys
import tempfile
import textwrap
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import httpx
import nats
from redis.asyncio import Redis
from sqlalchemy.engine import make_url

from apns_pipeline import KID, TEAM, Database, Emulator, Key, machine_busy_s, populate
from clarion import bootstrap
from clarion.settings import Settings
from common import process_cpu_s

DOCS = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"
BEGIN = "<!-- bench/scale.py: begin -->"
END = "<!-- bench/scale.py: end -->"
TITLE = "## Scale-out: 1, 2 and 4 worker processes"
BUS_URLS = {"redis": "redis://127.0.0.1:6379/0", "nats": "nats://127.0.0.1:4222"}
POOL_SIZE = 4  # per process: 1 api + 4 workers stay well inside PostgreSQL's 100 connections
PER_REQUEST = 100  # events per POST /v1/events/batch, the API's maximum
POLL_S = 0.25
START_TIMEOUT_S = 90.0  # importing and starting five processes on a loaded two-core machine
STALL_S = 180.0  # no new `sent` for this long: the run has failed
CORES = os.cpu_count() or 1
PROGRESS = (
    "SELECT (SELECT count(*) FROM events WHERE state = 'routed'),"
    " (SELECT count(*) FROM deliveries WHERE channel = 'apns' AND status = 'sent')"
)
OUTCOME = (
    "SELECT count(*) AS total, count(*) FILTER (WHERE status = 'sent') AS sent,"
    " count(*) FILTER (WHERE status = 'pending') AS pending,"
    " count(DISTINCT user_id) AS users FROM deliveries WHERE channel = 'apns'"
)


@dataclass
class Trial:
    """One deployment of W workers, measured once."""

    workers: int
    run: int
    bus: str
    events: int
    deliveries: int
    wall_s: float  # first POST to every APNs delivery `sent`
    routed_s: float  # first POST to every event `routed`
    posted_s: float  # first POST to the last 202
    api_cpu_s: float
    workers_cpu_s: float
    emulator_cpu_s: float
    bench_cpu_s: float  # this process: the HTTP client and the polling
    machine_cpu_s: float  # every core, every process

    @property
    def per_s(self) -> float:
        return self.deliveries / self.wall_s

    @property
    def routed_per_s(self) -> float:
        return self.events / self.routed_s

    @property
    def clarion_cpu_s(self) -> float:
        return self.api_cpu_s + self.workers_cpu_s

    @property
    def other_cpu_s(self) -> float:
        """PostgreSQL, the bus server and whatever else ran."""
        known = self.clarion_cpu_s + self.emulator_cpu_s + self.bench_cpu_s
        return max(0.0, self.machine_cpu_s - known)

    @property
    def machine_busy(self) -> float:
        return self.machine_cpu_s / (CORES * self.wall_s)

    @property
    def emulator_busy(self) -> float:
        return self.emulator_cpu_s / self.wall_s


# -- the deployment ------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Role:
    """A `clarion api` or `clarion worker` child process; its output goes to `<name>.log`."""

    def __init__(self, name: str, role: str, env: dict[str, str], directory: Path) -> None:
        self.name, self.role = name, role
        self.port = free_port() if role == "api" else None
        self.env = env if self.port is None else {**env, "CLARION_PORT": str(self.port)}
        self.log = directory / f"{name}.log"
        self.process: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    async def start(self) -> None:
        """Start it, and return once it serves: /readyz answers 200 (api), or it logged
        `"action": "started"` (worker)."""
        with self.log.open("wb") as out:
            self.process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "clarion",
                self.role,
                env=self.env,
                stdout=out,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,  # a Ctrl-C reaches this process, which stops them
            )
        deadline = time.monotonic() + START_TIMEOUT_S
        async with httpx.AsyncClient(timeout=2) as http:
            while time.monotonic() < deadline:
                self.check()
                if self.role == "api":
                    with contextlib.suppress(httpx.TransportError):
                        if (await http.get(f"{self.url}/readyz")).status_code == 200:
                            return
                elif b'"action": "started"' in self.log.read_bytes():
                    return
                await asyncio.sleep(0.1)
        raise RuntimeError(f"{self.name} did not start:\n{self.tail()}")

    def check(self) -> None:
        if self.process is not None and self.process.returncode is not None:
            raise RuntimeError(f"{self.name} exited ({self.process.returncode}):\n{self.tail()}")

    def cpu_s(self) -> float:
        return process_cpu_s(self.pid)

    async def stop(self) -> None:
        """SIGTERM, SIGKILL after 10 s."""
        process, self.process = self.process, None
        if process is None or process.returncode is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), 10)
        except TimeoutError:
            process.kill()
            await process.wait()

    def tail(self, lines: int = 30) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else "(no log)"
        return "\n".join(text.splitlines()[-lines:])


@contextlib.asynccontextmanager
async def deployment(
    workers: int, env: dict[str, str], directory: Path
) -> AsyncIterator[tuple[Role, list[Role]]]:
    """1 api and `workers` workers, started together, stopped when the block ends."""
    api = Role("api", "api", env, directory)
    crew = [Role(f"worker-{n}", "worker", env, directory) for n in range(1, workers + 1)]
    try:
        await asyncio.gather(api.start(), *(w.start() for w in crew))
        yield api, crew
    finally:
        await asyncio.gather(*(r.stop() for r in (api, *crew)), return_exceptions=True)


async def forget_prefix(bus: str, url: str, prefix: str) -> None:
    """Remove the streams (NATS) or keys (Redis) of one deployment's prefix."""
    if bus == "redis":
        redis = Redis.from_url(url)
        try:
            doomed = [key async for key in redis.scan_iter(match=f"{prefix}:*", count=1000)]
            for start in range(0, len(doomed), 500):
                await redis.delete(*doomed[start : start + 500])
        finally:
            await redis.aclose()
        return
    connection = await nats.connect(url, allow_reconnect=False)
    try:
        jetstream = connection.jetstream()
        for info in await jetstream.streams_info():
            name = info.config.name or ""
            if name.startswith(f"{prefix}_"):
                await jetstream.delete_stream(name)
    finally:
        await connection.close()


def show_logs(directory: Path) -> None:
    """The end of every process's log, on stderr (after a failure)."""
    for log in sorted(directory.glob("*.log")):
        tail = log.read_text(errors="replace").splitlines()[-15:]
        print(f"--- {log.name}", *tail, sep="\n", file=sys.stderr)


def complaints(directory: Path) -> list[str]:
    """The warnings and errors the processes logged: the message and the exception's last line."""
    found = []
    for log in sorted(directory.glob("*.log")):
        for line in log.read_text(errors="replace").splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                entry = {"level": "error", "event": line} if "Traceback" in line else {}
            if entry.get("level") in ("warning", "error", "critical"):
                cause = str(entry.get("exception", "")).replace("\\n", "\n").strip()
                last = cause.splitlines()[-1] if cause else ""
                found.append(f"{log.stem}: {entry['level']}: {entry.get('event')} {last}")
    return found


# -- one trial -----------------------------------------------------------------------------------


def plain(url: str) -> str:
    """The URL for asyncpg (no SQLAlchemy driver suffix)."""
    return url.replace("postgresql+asyncpg://", "postgresql://")


def requests_of(events: int, recipients: int) -> list[bytes]:
    """The POST bodies: event i names users i*recipients+1 .. (i+1)*recipients, as
    `populate` named them."""
    everyone = [
        {
            "type": "bench.scale",
            "recipients": {
                "users": [f"bench-user-{i * recipients + j}" for j in range(1, recipients + 1)]
            },
            "title": "Hello",
            "body": "A benchmark notification body of ordinary length.",
            "channels": ["apns"],
            "idempotency_key": f"scale-{i}",
        }
        for i in range(events)
    ]
    return [
        json.dumps({"events": everyone[i : i + PER_REQUEST]}).encode()
        for i in range(0, events, PER_REQUEST)
    ]


async def post_all(client: httpx.AsyncClient, bodies: list[bytes], in_flight: int) -> None:
    slots = asyncio.Semaphore(in_flight)

    async def one(body: bytes) -> None:
        async with slots:
            answer = await client.post(
                "/v1/events/batch", content=body, headers={"content-type": "application/json"}
            )
        if answer.status_code != 202:
            raise RuntimeError(f"POST /v1/events/batch: {answer.status_code} {answer.text}")

    async with asyncio.TaskGroup() as group:
        for body in bodies:
            group.create_task(one(body))


async def watch(
    db: asyncpg.Connection, events: int, deliveries: int, roles: Sequence[Role]
) -> tuple[float, float]:
    """Poll until every event is routed and every APNs delivery sent; when each was first seen."""
    routed_at: float | None = None
    seen, changed = -1, time.perf_counter()
    while True:
        routed, sent = await db.fetchrow(PROGRESS)
        now = time.perf_counter()
        if routed_at is None and routed >= events:
            routed_at = now
        if routed_at is not None and sent >= deliveries:
            return routed_at, now
        if sent != seen:
            seen, changed = sent, now
        elif now - changed > STALL_S:
            raise RuntimeError(f"stalled: {routed}/{events} routed, {sent}/{deliveries} sent")
        for role in roles:
            role.check()
        await asyncio.sleep(POLL_S)


async def trial(
    workers: int, number: int, args: argparse.Namespace, key: Key, secret: str
) -> Trial:
    deliveries = args.events * args.recipients
    with tempfile.TemporaryDirectory(prefix="clarion-bench-scale-") as tmp:
        directory = Path(tmp)
        db = Database(args.postgres_url, directory)
        assert db.url is not None
        async with db.scratch():
            settings = Settings(data_dir=directory / "var", database_url=db.url, secret_key=secret)
            await bootstrap.migrate(settings)
            clarion = bootstrap.build(settings)
            try:
                _, api_key = await populate(clarion, key, deliveries)
            finally:
                await clarion.close()
            await db.settle()
            emulator = Emulator(directory / "emulator.pem")
            prefix = f"bench-scale-{uuid.uuid4().hex[:12]}"
            bus_url = BUS_URLS[args.bus]
            try:
                emulator.control(
                    "POST",
                    "/control/keys",
                    {"team_id": TEAM, "key_id": KID, "public_key": key.public},
                )
                env = {k: v for k, v in os.environ.items() if not k.startswith("CLARION_")}
                env.update(
                    {
                        "CLARION_DATA_DIR": str(directory / "var"),
                        "CLARION_DATABASE_URL": db.url,
                        "CLARION_SECRET_KEY": secret,
                        "CLARION_DATABASE_POOL_SIZE": str(POOL_SIZE),
                        "CLARION_BUS": args.bus,
                        "CLARION_BUS_URL": bus_url,
                        "CLARION_STREAMS__PREFIX": prefix,
                        "CLARION_WORKER__DRAIN_SECONDS": "2",
                        "CLARION_APNS__ENABLED": "true",
                        "CLARION_APNS__HOST": "127.0.0.1",
                        "CLARION_APNS__PORT": str(emulator.port),
                        "CLARION_APNS__CA_FILE": str(emulator.cert),
                    }
                )
                async with deployment(workers, env, directory) as (api, crew):
                    result = await timed(workers, number, args, api, crew, emulator, api_key, db)
                received = emulator.cleared()
                logged = complaints(directory)
                if logged:
                    print(f"{len(logged)} warning(s) or error(s) logged:", file=sys.stderr)
                    print(*logged[:5], sep="\n", file=sys.stderr)
            except Exception:
                show_logs(directory)
                raise
            finally:
                emulator.stop()
                with contextlib.suppress(Exception):
                    await forget_prefix(args.bus, bus_url, prefix)
            await verify(db, args.events, deliveries, received)
    return result


async def timed(
    workers: int,
    number: int,
    args: argparse.Namespace,
    api: Role,
    crew: list[Role],
    emulator: Emulator,
    api_key: str,
    db: Database,
) -> Trial:
    bodies = requests_of(args.events, args.recipients)
    deliveries = args.events * args.recipients
    assert db.url is not None
    conn = await asyncpg.connect(plain(db.url), timeout=10)
    try:
        async with httpx.AsyncClient(
            base_url=api.url, headers={"Authorization": f"Bearer {api_key}"}, timeout=120
        ) as client:
            # Open the connection and let FastAPI build its route state before the clock
            # starts: 422 for an empty batch.
            await client.post("/v1/events/batch", json={})
            cpu0 = [api.cpu_s(), sum(w.cpu_s() for w in crew), emulator.cpu_s()]
            bench0, machine0 = time.process_time(), machine_busy_s()
            started = time.perf_counter()
            posting = asyncio.create_task(post_all(client, bodies, args.in_flight))
            watching = asyncio.create_task(watch(conn, args.events, deliveries, [api, *crew]))
            try:
                await posting
                posted = time.perf_counter()
                routed, done = await watching
            finally:
                watching.cancel()
            cpu1 = [api.cpu_s(), sum(w.cpu_s() for w in crew), emulator.cpu_s()]
            bench1, machine1 = time.process_time(), machine_busy_s()
    finally:
        await conn.close()
    return Trial(
        workers=workers,
        run=number,
        bus=args.bus,
        events=args.events,
        deliveries=deliveries,
        wall_s=done - started,
        routed_s=routed - started,
        posted_s=posted - started,
        api_cpu_s=cpu1[0] - cpu0[0],
        workers_cpu_s=cpu1[1] - cpu0[1],
        emulator_cpu_s=cpu1[2] - cpu0[2],
        bench_cpu_s=bench1 - bench0,
        machine_cpu_s=machine1 - machine0,
    )


async def verify(db: Database, events: int, deliveries: int, received: int) -> None:
    """Exactly one APNs delivery per user, all sent, and as many pushes at the emulator."""
    assert db.url is not None
    conn = await asyncpg.connect(plain(db.url), timeout=10)
    try:
        row = await conn.fetchrow(OUTCOME)
        routed = await conn.fetchval("SELECT count(*) FROM events WHERE state = 'routed'")
    finally:
        await conn.close()
    got = (routed, row["total"], row["sent"], row["pending"], row["users"], received)
    wanted = (events, deliveries, deliveries, 0, deliveries, deliveries)
    if got != wanted:
        raise RuntimeError(
            "(routed events, APNs deliveries, sent, pending, users, pushes received):"
            f" {got}, wanted {wanted}"
        )


# -- runs and medians ----------------------------------------------------------------------------


async def run_all(args: argparse.Namespace) -> list[Trial]:
    task = asyncio.current_task()
    assert task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    key = Key.generate()
    secret = base64.b64encode(secrets.token_bytes(32)).decode()
    measured: list[Trial] = []
    for number in range(1, args.runs + 1):
        order = args.workers if number % 2 else list(reversed(args.workers))
        for workers in order:
            result = await trial(workers, number, args, key, secret)
            measured.append(result)
            print(
                f"run {number}, {workers} worker(s): {result.per_s:,.0f} deliveries/s"
                f" ({result.wall_s:.1f} s), {result.routed_per_s:,.0f} events/s routed,"
                f" machine {100 * result.machine_busy:.0f}% busy,"
                f" emulator {100 * result.emulator_busy:.0f}% of a core",
                file=sys.stderr,
            )
    return measured


@dataclass
class Row:
    """The medians of one worker count over the runs."""

    workers: int
    trials: list[Trial]
    ratio: float  # median of the per-run ratios of deliveries/s to the baseline's

    def med(self, field: str) -> float:
        return statistics.median(float(getattr(t, field)) for t in self.trials)


def rows_of(measured: list[Trial], counts: Sequence[int]) -> list[Row]:
    baseline = min(counts)
    base = {t.run: t.per_s for t in measured if t.workers == baseline}
    rows = []
    for workers in counts:
        trials = [t for t in measured if t.workers == workers]
        ratio = statistics.median(t.per_s / base[t.run] for t in trials)
        rows.append(Row(workers, trials, ratio))
    return rows


HEADER = (
    "| workers | wall s | routed s | events/s routed | deliveries/s | vs baseline "
    "| api CPU s | workers CPU s | emulator CPU s | other CPU s | emulator busy | machine busy |\n"
    "|--------:|-------:|---------:|----------------:|-------------:|------------:"
    "|----------:|--------------:|---------------:|------------:|--------------:|-------------:|"
)


def table(rows: list[Row]) -> str:
    lines = [HEADER]
    for r in rows:
        lines.append(
            f"| {r.workers:>7} | {r.med('wall_s'):>6.1f} | {r.med('routed_s'):>8.1f} "
            f"| {r.med('routed_per_s'):>15,.0f} | {r.med('per_s'):>12,.0f} "
            f"| {r.ratio:>11.2f} | {r.med('api_cpu_s'):>9.1f} | {r.med('workers_cpu_s'):>13.1f} "
            f"| {r.med('emulator_cpu_s'):>14.1f} | {r.med('other_cpu_s'):>11.1f} "
            f"| {100 * r.med('emulator_busy'):>11.0f} % | {100 * r.med('machine_busy'):>10.0f} % |"
        )
    return "\n".join(lines)


def per_run(rows: list[Row]) -> str:
    runs = len(rows[0].trials)
    head = "| deliveries/s | " + " | ".join(f"run {n}" for n in range(1, runs + 1)) + " | median |"
    rule = "|--------------|" + "------:|" * runs + "-------:|"
    lines = [head, rule]
    for r in rows:
        values = " | ".join(f"{t.per_s:,.0f}" for t in sorted(r.trials, key=lambda t: t.run))
        lines.append(f"| {r.workers} worker(s) | {values} | {r.med('per_s'):,.0f} |")
    return "\n".join(lines)


def bounds(rows: list[Row]) -> list[str]:
    """What the figures say bounds the rate, one paragraph per finding."""
    most = rows[-1]
    n = most.med("deliveries")
    us = {
        "clarion": 1e6 * most.med("clarion_cpu_s") / n,
        "api": 1e6 * most.med("api_cpu_s") / n,
        "workers": 1e6 * most.med("workers_cpu_s") / n,
        "emulator": 1e6 * most.med("emulator_cpu_s") / n,
        "other": 1e6 * most.med("other_cpu_s") / n,
        "bench": 1e6 * most.med("bench_cpu_s") / n,
    }
    total = us["clarion"] + us["emulator"] + us["other"] + us["bench"]
    machine, emulator = most.med("machine_busy"), most.med("emulator_busy")
    if emulator >= 0.85:
        verdict = (
            f"**The emulator**: one process on one core, busy {100 * emulator:.0f} % of the wall"
            " time, so more workers cannot push faster than it answers."
        )
    elif machine >= 0.85:
        verdict = (
            f"**The machine's {CORES} cores**: {100 * machine:.0f} % busy with {most.workers}"
            " worker(s), so more workers only share the same CPU (the emulator had"
            f" {100 * emulator:.0f} % of a core)."
        )
    else:
        verdict = (
            f"**Neither the cores ({100 * machine:.0f} % busy) nor the emulator"
            f" ({100 * emulator:.0f} % of a core)**: waiting (polling intervals, batch"
            " sizes, round trips) bounds it more than CPU."
        )
    return [
        f"With {most.workers} worker(s): {verdict}",
        f"CPU per delivery with {most.workers} worker(s), all in: Clarion {us['clarion']:,.0f} µs"
        f" (api {us['api']:,.0f}, workers {us['workers']:,.0f}), the emulator"
        f" {us['emulator']:,.0f} µs, PostgreSQL, the bus server and everything else"
        f" {us['other']:,.0f} µs, the benchmark's client and polling {us['bench']:,.0f} µs:"
        f" {total:,.0f} µs together. {CORES} cores fully busy would therefore cap this pipeline"
        f" near {CORES * 1e6 / total:,.0f} deliveries/s however many workers run; adding"
        " workers raises the rate only while cores are idle.",
        *growth(rows),
    ]


def growth(rows: list[Row]) -> list[str]:
    """How the CPU per delivery changed from the baseline to the most workers."""
    first, last = rows[0], rows[-1]
    if first is last:
        return []

    def per(row: Row, field: str) -> float:
        return 1e6 * row.med(field) / row.med("deliveries")

    def total(row: Row) -> float:
        return per(row, "machine_cpu_s")

    change = total(last) / total(first) - 1
    if last.ratio < 0.95:
        busy = "on cores that are already busy " if last.med("machine_busy") >= 0.85 else ""
        verdict = (
            "Each worker process polls the bus and the database and claims its own batches, so"
            f" {busy}the extra processes cost more than they add."
        )
    elif last.ratio > 1.05:
        verdict = "The extra processes found idle CPU to use."
    else:
        verdict = "The extra processes neither added nor cost much."
    return [
        f"From {first.workers} to {last.workers} worker(s) the machine's CPU per delivery went"
        f" from {total(first):,.0f} to {total(last):,.0f} µs ({100 * change:+.0f} %): the"
        f" workers' from {per(first, 'workers_cpu_s'):,.0f} to {per(last, 'workers_cpu_s'):,.0f}"
        f" µs, PostgreSQL's and the rest's from {per(first, 'other_cpu_s'):,.0f} to"
        f" {per(last, 'other_cpu_s'):,.0f} µs. Deliveries/s went from"
        f" {first.med('per_s'):,.0f} to {last.med('per_s'):,.0f} (x{last.ratio:.2f}). {verdict}"
        f" These figures show what {CORES} cores allow, not how Clarion scales on a machine"
        " with more cores than processes.",
    ]


def report(rows: list[Row], runs: int) -> str:
    baseline = rows[0].workers
    lines = [f"medians of {runs} run(s); baseline: {baseline} worker(s)", "", table(rows), ""]
    if runs > 1:
        lines += [per_run(rows), ""]
    lines += bounds(rows)
    return "\n".join(lines)


# -- docs/benchmarks.md --------------------------------------------------------------------------


def command_line() -> str:
    shown = []
    for arg in sys.argv[1:]:
        if "://" in arg and "@" in arg:
            with contextlib.suppress(Exception):
                arg = make_url(arg).render_as_string(hide_password=True)
        shown.append(arg)
    return shlex.join([".venv/bin/python", "bench/scale.py", *shown])


def section(rows: list[Row], args: argparse.Namespace, server: str) -> str:
    baseline = rows[0].workers
    size = args.events * args.recipients
    bus = "Redis Streams" if args.bus == "redis" else "NATS JetStream"
    parts = [
        BEGIN,
        TITLE,
        "",
        f"Measured on {datetime.now(UTC):%Y-%m-%d} with:",
        "",
        "```sh",
        command_line(),
        "```",
        "",
        "Options: `--workers 1,2,4`, `--bus redis|nats`, `--events N` (1,000), `--recipients N`"
        " (20), `--in-flight N` (4), `--runs N` (1; the order of the worker counts alternates"
        " between runs), `--postgres-url`, `--json`, `--record` (writes this section).",
        "",
        f"**What is timed.** A real scaled-out deployment: one `clarion api` process and W"
        f" `clarion worker` processes (subprocesses, not pinned to CPUs), sharing a scratch"
        f" PostgreSQL {server} database (a pool of {POOL_SIZE} connections per process) and"
        f" {bus} on this machine, under a stream prefix of their own. From the first"
        f" `POST /v1/events/batch` to the moment PostgreSQL shows all {size:,} APNs deliveries"
        f" `sent` (polled every {POLL_S} s): {args.events:,} events, each naming"
        f' {args.recipients} users by id with `"channels": ["apns"]`, {PER_REQUEST} events'
        f" per request, {args.in_flight} requests in flight. In between: accept, relay, route"
        " (inbox items, websocket and APNs deliveries, audit), claim, send over TLS to the"
        " emulator, record `sent`. `routed s` is when every event was seen `routed`. Checked"
        f" afterwards: exactly {size:,} APNs deliveries, one per user, all `sent`, none pending,"
        f" and the emulator received exactly {size:,} pushes.",
        "",
        "**Setup (not timed), fresh for each worker count.** A scratch database, migrated; the"
        " APNs emulator in its own process (`clarion emulate apns --tls`, latency 0, pinned to"
        " CPU 1 with `taskset`) with a generated P-256 key registered through its control API;"
        f" a tenant with that key as its APNs credential; {size:,} users each with one iOS"
        " device, written with `INSERT … SELECT`, then `VACUUM ANALYZE`. The processes are"
        " started together and the clock waits until the api answers `/readyz` and every"
        " worker has logged `started`. Worker settings are the defaults.",
        "",
        f"**Baseline.** The {baseline}-worker run of the same invocation, on the same machine"
        " a minute or two apart: `vs baseline` is deliveries/s divided by the baseline's"
        " (with several runs, the median of the per-run ratios). CPU seconds are from"
        " `/proc` over the timed span:"
        " the api process, the workers summed, the emulator; `other` is the machine's busy"
        " time (`/proc/stat`, both cores) minus those and the benchmark's own (PostgreSQL,"
        " the bus server and other jobs). `emulator busy` is its CPU over the wall time (100 %"
        f" is its one core); `machine busy` is of {CORES} cores.",
        "",
        f"### Results (medians of {args.runs})" if args.runs > 1 else "### Results (one run)",
        "",
        table(rows),
        "",
    ]
    if args.runs > 1:
        parts += [per_run(rows), ""]
    parts += ["### What bounds the rate", ""]
    for paragraph in bounds(rows):
        parts += [paragraph, ""]
    parts.append(END)
    return "\n".join(wrap(part) for part in parts)


def wrap(paragraph: str) -> str:
    """Prose at 100 columns, as the rest of docs/benchmarks.md; tables and code as they are."""
    if paragraph.startswith(("|", "#", "`", "<", ".venv")):
        return paragraph
    return textwrap.fill(paragraph, 100, break_long_words=False, break_on_hyphens=False)


def record(text: str) -> None:
    current = DOCS.read_text()
    if BEGIN in current and END in current:
        head, rest = current.split(BEGIN, 1)
        tail = rest.split(END, 1)[1]
        DOCS.write_text(head + text + tail)
    else:
        DOCS.write_text(current.rstrip("\n") + "\n\n" + text + "\n")


async def server_version(url: str) -> str:
    conn = await asyncpg.connect(plain(url), timeout=10)
    try:
        return str(await conn.fetchval("SHOW server_version")).split()[0]
    finally:
        await conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workers", default="1,2,4", help="worker counts, comma-separated")
    parser.add_argument("--bus", choices=sorted(BUS_URLS), default="redis")
    parser.add_argument("--events", type=int, default=1000)
    parser.add_argument("--recipients", type=int, default=20, help="users named per event")
    parser.add_argument(
        "--postgres-url",
        default="postgresql://postgres@127.0.0.1:5432/postgres",
        help="a database to connect to while creating and dropping the scratch ones",
    )
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--in-flight", type=int, default=4, help="POST requests at once")
    parser.add_argument("--record", action="store_true", help="write docs/benchmarks.md")
    parser.add_argument("--json", action="store_true", help="print every trial as JSON")
    args = parser.parse_args()
    try:
        args.workers = sorted({int(w) for w in args.workers.split(",") if w.strip()})
    except ValueError:
        parser.error("--workers takes comma-separated integers")
    if not args.workers or min(args.workers) < 1:
        parser.error("--workers must be positive")
    if min(args.events, args.recipients, args.runs, args.in_flight) < 1:
        parser.error("--events, --recipients, --runs and --in-flight must be positive")
    print(
        f"{len(args.workers)} deployment(s) of 1 api + {args.workers} workers per run,"
        f" {args.events:,} events x {args.recipients} recipients, {args.bus},"
        f" {CORES} cores, Python {platform.python_version()}",
        file=sys.stderr,
    )
    try:
        measured = asyncio.run(run_all(args))
    except (KeyboardInterrupt, asyncio.CancelledError):
        sys.exit("interrupted: the processes are stopped, the scratch database and streams gone")
    if args.json:
        print(json.dumps([{**asdict(t), "per_s": t.per_s} for t in measured]))
    rows = rows_of(measured, args.workers)
    print("\n" + report(rows, args.runs))
    if args.record:
        record(section(rows, args, asyncio.run(server_version(args.postgres_url))))
        print(f"\nrecorded in {DOCS.relative_to(DOCS.parent.parent)}")


if __name__ == "__main__":
    main()
