"""APNs client benchmark: Clarion's `ApnsTransport` against aioapns and h2load, one emulator.

    .venv/bin/python bench/apns.py [--pushes 200000] [--runs 3] [--batch 100] [--json]
        [--pipeline-users 100000]

Starts the APNs emulator in a separate process (``clarion emulate apns --tls``, latency 0, pinned
to CPU 1 with ``taskset -c 1`` when taskset exists), registers a freshly generated P-256 signing
key through its control API, and pins this process (and h2load) to CPU 0. Each run then sends N
pushes (default 200,000) with each client, over TLS to that one emulator:

- ``clarion``: `ApnsTransport.send` called with batches of ``--batch`` claimed deliveries, one
  batch after another, as `Delivering.deliver_once` does (its default batch is 100). The
  transport uses one TLS connection and as many streams as the batch needs.
- ``aioapns``: ``APNs.send_notification`` for the same pushes, ``asyncio.gather`` over chunks of
  ``--batch`` (aioapns opens connections as its streams run out; with its stream-limit bug, see
  `fixed_settings`, that is ten).
- ``aioapns+fix``: the same with that bug corrected: one connection.
- ``h2load`` (Debian ``nghttp2-client``; ``scripts/ensure-bench-tools.sh`` installs it): the
  protocol ceiling, ``-c 1 -m <batch>`` on one connection with the same body and headers (one
  provider token, N distinct device tokens via ``-i``). The emulator, like APNs, allows one stream
  until it has seen a valid token, and h2load would open all its streams before reading the
  server's SETTINGS (the emulator then drops the connection), so h2load is paced with ``--rps``
  (far above what the emulator can take: it only makes h2load start its first requests on a
  timer tick, after SETTINGS, and then keeps ``-m`` in flight).

All send the same payload (alert title and body, thread id, category, one custom key) with the
same topic, to distinct device tokens. The order of the phases alternates between runs. For each
phase: wall time and the client's CPU time (``time.process_time`` for the Python clients, the
child's rusage for h2load), pushes/s, pushes per client CPU-second ("per core"), and the
emulator's CPU time (from /proc). Before each phase the emulator's received list is cleared
(``DELETE /control/received``); after it, the count it clears must equal N, and every outcome
must be a success.

Reports medians over the runs, and the medians of the per-run ratios clarion / each other client.
The emulator is pure-Python HTTP/2 on one core, so it bounds the wall-clock rate of every client
(h2load's pushes/s is that bound); the per-core figure (client CPU) is the one that compares the
clients.

Then, unless ``--pipeline-users 0``, the full pipeline (`bench/apns_pipeline.py`'s ``pipeline``
and ``null`` phases: one event to that many iOS users, from POST /v1/events to the last `sent`,
on SQLite), so that one command gives both of the issue's figures.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import resource
import shutil
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from clarion.adapters.providers.apns import ApnsTransport, ProviderTokens
from clarion.domain.notifications import InboxItem
from clarion.domain.outcomes import Delivered
from clarion.domain.records import Claimed, Credential, CredentialInfo
from clarion.domain.statuses import Status
from common import CLIENT_CPU, EmulatorProcess, pin_client, port_of

TEAM = "TEAM123456"
KID = "KEY1234567"
TOPIC = "com.example.app"
TITLE = "Hello"
BODY = "A benchmark notification body of ordinary length."
GROUP = "g1"
CATEGORY = "news"
DATA = {"k": "v"}


@dataclass
class Phase:
    """One client's figures in one run (or, from `median_of`, the medians of several)."""

    client: str
    pushes: int
    wall_s: float
    cpu_s: float
    emulator_cpu_s: float
    connections: int = 1
    note: str = ""

    @property
    def per_s(self) -> float:
        return self.pushes / self.wall_s

    @property
    def per_cpu_s(self) -> float:
        return self.pushes / self.cpu_s


def token_of(n: int) -> str:
    return f"{n:064x}"


# -- the emulator process ------------------------------------------------------------------------


class Emulator(EmulatorProcess):
    """``clarion emulate apns`` in a child process, with its ports read from its output."""

    def __init__(self, *, tls: bool, cert_out: Path | None) -> None:
        options = ["--port", "0", "--control-port", "0", "--latency-ms", "0"]
        options += ["--tls" if tls else "--h2c"]
        if cert_out is not None:
            options += ["--cert-out", str(cert_out)]
        super().__init__("apns", options)
        said = self.line("APNs emulator:")
        self.port = port_of(said) if said else 0
        if not self.port:
            self.failed()


# -- the two clients -----------------------------------------------------------------------------


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
        notification_id=f"n{n}",
        event_id="e1",
        user=f"u{n}",
        status=Status.PENDING,
        type="news",
        title=TITLE,
        body=BODY,
        data=DATA,
        category=CATEGORY,
        group=GROUP,
        created_at=now,
    )
    return Claimed(
        id=n,
        fence=1,
        tenant_id="t",
        channel="apns",
        endpoint=f"d{n}",
        attempts=0,
        item=item,
        address=token_of(n),
        registered_at=now,
    )


def chunks(start: int, stop: int, size: int) -> Iterator[range]:
    for first in range(start, stop, size):
        yield range(first, min(first + size, stop))


async def run_clarion(emulator: Emulator, context: ssl.SSLContext, pem: str, args: Any) -> Phase:
    opened = credential(pem)

    async def load(tenant: str, provider: str, app_id: str | None) -> Credential:
        return opened

    transport = ApnsTransport(
        load, host="127.0.0.1", port=emulator.port, ssl_context=context, tokens=ProviderTokens()
    )
    now = datetime.now(UTC)
    # What the store hands the transport; built before the clock starts, as claiming is not
    # the client's work.
    deliveries = [claimed(n, now) for n in range(args.pushes + 1)]
    try:
        warm = await transport.send(deliveries[:1])  # connect, first token, stream limit raised
        assert isinstance(warm[0], Delivered), warm
        emulator.cleared()
        cpu0, emu0, wall0 = time.process_time(), emulator.cpu_s(), time.perf_counter()
        failed = 0
        for batch in chunks(1, args.pushes + 1, args.batch):
            outcomes = await transport.send(deliveries[batch.start : batch.stop])
            failed += sum(not isinstance(o, Delivered) for o in outcomes)
        wall = time.perf_counter() - wall0
        cpu, emu = time.process_time() - cpu0, emulator.cpu_s() - emu0
        connections = len(transport.connections())
    finally:
        await transport.close()
    received = emulator.cleared()
    if failed or received != args.pushes:
        raise RuntimeError(f"clarion: {failed} failed, emulator received {received}")
    return Phase("clarion", args.pushes, wall, cpu, emu, connections)


def fixed_settings(self: Any, changed: dict[Any, Any]) -> None:
    """aioapns 4.0's stream-limit change, corrected: its `DynamicBoundedSemaphore.bound` setter
    releases the new slots before raising the bound, so they are capped at the old one. After
    APNs' 1 -> 1000 raise (sent while the first request is in flight) a connection keeps about one
    stream; aioapns then opens up to 10 connections and polls them every 10 ms."""
    from h2.settings import SettingCodes

    for setting in changed.values():
        if setting.setting != SettingCodes.MAX_CONCURRENT_STREAMS:
            continue
        pool = self.free_channels
        old = pool.bound
        if setting.new_value > old:
            pool._bound_value = setting.new_value
            for _ in range(setting.new_value - old):
                pool.release()
        else:
            pool.bound = setting.new_value


async def run_aioapns(
    emulator: Emulator, context: ssl.SSLContext, pem: str, args: Any, *, fixed: bool
) -> Phase:
    from aioapns import APNs, NotificationRequest
    from aioapns.connection import APNsDevelopmentClientProtocol

    # aioapns hard-codes host and port as class constants; a subclass points it at the emulator.
    attributes: dict[str, Any] = {"APNS_SERVER": "127.0.0.1", "APNS_PORT": emulator.port}
    if fixed:
        attributes["on_remote_settings_changed"] = fixed_settings
    protocol: Any = type("EmulatedApnsProtocol", (APNsDevelopmentClientProtocol,), attributes)
    client = APNs(
        key=pem, key_id=KID, team_id=TEAM, topic=TOPIC, use_sandbox=True, ssl_context=context
    )
    client.pool.protocol_class = protocol

    def request(n: int) -> Any:
        message = {
            "aps": {
                "alert": {"title": TITLE, "body": BODY},
                "thread-id": GROUP,
                "category": CATEGORY,
            },
            **DATA,
        }
        return NotificationRequest(device_token=token_of(n), message=message)

    try:
        warm = await asyncio.wait_for(client.send_notification(request(0)), 10)
        assert warm.is_successful, warm.description
        emulator.cleared()
        cpu0, emu0, wall0 = time.process_time(), emulator.cpu_s(), time.perf_counter()
        failed = 0
        for batch in chunks(1, args.pushes + 1, args.batch):
            results = await asyncio.gather(*(client.send_notification(request(n)) for n in batch))
            failed += sum(not r.is_successful for r in results)
        wall = time.perf_counter() - wall0
        cpu, emu = time.process_time() - cpu0, emulator.cpu_s() - emu0
        connections = len(client.pool.connections)
    finally:
        client.pool.close()
        await asyncio.sleep(0.05)
    received = emulator.cleared()
    name = "aioapns+fix" if fixed else "aioapns"
    if failed or received != args.pushes:
        raise RuntimeError(f"{name}: {failed} failed, emulator received {received}")
    return Phase(name, args.pushes, wall, cpu, emu, connections)


# -- h2load, the protocol ceiling ----------------------------------------------------------------

H2LOAD_MISSING = "h2load is not on PATH: run scripts/ensure-bench-tools.sh (Debian nghttp2-client)"
H2LOAD_RPS = 1_000_000
"""Requests per second h2load may start: far above the emulator's ~2k/s, so it only delays the
first requests to a timer tick after the server's SETTINGS (see the module docstring)."""


def children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_h2load(emulator: Emulator, pem: str, workdir: Path, args: Any) -> Phase:
    import jwt

    h2load = shutil.which("h2load")
    if h2load is None:
        raise RuntimeError(H2LOAD_MISSING)
    token = jwt.encode(
        {"iss": TEAM, "iat": int(datetime.now(UTC).timestamp())},
        pem,
        algorithm="ES256",
        headers={"kid": KID},
    )
    body = workdir / "payload.json"
    payload = {
        "aps": {"alert": {"title": TITLE, "body": BODY}, "thread-id": GROUP, "category": CATEGORY},
        **DATA,
    }
    body.write_text(json.dumps(payload, separators=(",", ":")))
    urls = workdir / "urls.txt"
    if (
        not urls.exists()
        or urls.stat().st_size == 0
        or args.pushes != len(urls.read_text().splitlines())
    ):
        base = f"https://127.0.0.1:{emulator.port}/3/device/"
        urls.write_text("".join(f"{base}{token_of(n)}\n" for n in range(1, args.pushes + 1)))
    command = [h2load, "-n", str(args.pushes), "-c", "1", "-m", str(args.batch)]
    command += ["--rps", str(H2LOAD_RPS), "-i", str(urls), "-d", str(body)]
    command += ["-H", f"authorization: bearer {token}", "-H", f"apns-topic: {TOPIC}"]
    command += ["-H", "apns-push-type: alert"]
    if shutil.which("taskset"):
        command = ["taskset", "-c", str(CLIENT_CPU), *command]
    emulator.cleared()
    cpu0, emu0, wall0 = children_cpu_s(), emulator.cpu_s(), time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - wall0
    cpu, emu = children_cpu_s() - cpu0, emulator.cpu_s() - emu0
    received = emulator.cleared()
    lines = done.stdout.splitlines()
    summary = next((line for line in lines if line.startswith("requests:")), "")
    if done.returncode or f"{args.pushes} succeeded" not in summary or received != args.pushes:
        raise RuntimeError(
            f"h2load: exit {done.returncode}, {summary or done.stderr[-500:]!r},"
            f" emulator received {received}"
        )
    finished = next((line for line in lines if line.startswith("finished in")), "")
    return Phase("h2load", args.pushes, wall, cpu, emu, 1, finished.strip())


# -- main ----------------------------------------------------------------------------------------


def median_of(phases: list[Phase]) -> Phase:
    return Phase(
        phases[0].client,
        phases[0].pushes,
        statistics.median(p.wall_s for p in phases),
        statistics.median(p.cpu_s for p in phases),
        statistics.median(p.emulator_cpu_s for p in phases),
        max(p.connections for p in phases),
    )


def row(p: Phase) -> str:
    return (
        f"| {p.client:<11} | {p.pushes:>8,} | {p.wall_s:>7.2f} | {p.per_s:>9,.0f} "
        f"| {p.cpu_s:>7.2f} | {p.per_cpu_s:>12,.0f} | {p.emulator_cpu_s:>9.2f} "
        f"| {p.connections:>5} |"
    )


HEADER = (
    "| client      |   pushes |  wall s |  pushes/s |   CPU s | pushes/CPU-s "
    "| emu CPU s | conns |\n"
    "|-------------|---------:|--------:|----------:|--------:|-------------:"
    "|----------:|------:|"
)


def ratios(results: dict[str, list[Phase]]) -> dict[str, dict[str, list[float]]]:
    """Per run, clarion's pushes/s and pushes per CPU-second over each other client's."""
    found: dict[str, dict[str, list[float]]] = {}
    for other, phases in results.items():
        if other == "clarion" or len(phases) != len(results["clarion"]):
            continue
        pairs = list(zip(results["clarion"], phases, strict=True))
        found[other] = {
            "per_s": [c.per_s / o.per_s for c, o in pairs],
            "per_cpu_s": [c.per_cpu_s / o.per_cpu_s for c, o in pairs],
        }
    return found


async def bench(args: Any) -> None:
    pin_client()
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    public = (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    skipped = None if shutil.which("h2load") else H2LOAD_MISSING
    names = ["clarion", "aioapns", "aioapns+fix"] + ([] if skipped else ["h2load"])
    results: dict[str, list[Phase]] = {name: [] for name in names}
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        cert = workdir / "emulator.pem"
        emulator = Emulator(tls=True, cert_out=cert)
        try:
            emulator.control(
                "POST", "/control/keys", {"team_id": TEAM, "key_id": KID, "public_key": public}
            )
            context = ssl.create_default_context(cafile=str(cert))
            print(
                f"emulator pid {emulator.process.pid} on port {emulator.port}"
                f" ({'CPU 1 via taskset' if emulator.pinned else 'not pinned: no taskset'});"
                f" client on CPU {CLIENT_CPU}: {sorted(os.sched_getaffinity(0))}",
                file=sys.stderr,
            )

            async def h2load(*_: Any) -> Phase:
                return run_h2load(emulator, pem, workdir, args)

            phases = {
                "clarion": run_clarion,
                "aioapns": functools.partial(run_aioapns, fixed=False),
                "aioapns+fix": functools.partial(run_aioapns, fixed=True),
                "h2load": h2load,
            }
            for run in range(args.runs):
                order = names if run % 2 == 0 else names[::-1]
                for name in order:
                    measured = await phases[name](emulator, context, pem, args)
                    results[name].append(measured)
                    print(f"run {run + 1}: {row(measured)}", file=sys.stderr)
        finally:
            emulator.stop()

    medians = {name: median_of(phases) for name, phases in results.items()}
    found = ratios(results)
    if args.json:
        print(
            json.dumps(
                {
                    "runs": {k: [asdict(p) for p in v] for k, v in results.items()},
                    "medians": {k: asdict(p) for k, p in medians.items()},
                    "ratios": found,
                    "h2load_skipped": skipped,
                }
            )
        )
        return
    print(f"\nmedians of {args.runs} runs, {args.pushes:,} pushes each, {args.batch} in flight\n")
    print(HEADER)
    for phase in medians.values():
        print(row(phase))
    print("\nclarion / other, per run and median:\n")
    for other, values in found.items():
        for what, label in (("per_cpu_s", "per core"), ("per_s", "pushes/s")):
            runs = " ".join(f"{v:.2f}" for v in values[what])
            print(
                f"- clarion / {other}, {label}: {runs}; median "
                f"**{statistics.median(values[what]):.2f}x**"
            )
    for other in ("aioapns", "aioapns+fix"):
        core = statistics.median(found[other]["per_cpu_s"])
        print(f"target clarion >= 2x {other} per core: {'met' if core >= 2 else 'not met'}")
    if skipped:
        print(f"h2load ceiling: skipped: {skipped}")
    else:
        notes = "; ".join(p.note for p in results["h2load"])
        print(f"h2load's own summaries: {notes}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pushes", type=int, default=200_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--batch", type=int, default=100, help="pushes in flight (default 100)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument(
        "--pipeline-users",
        type=int,
        default=100_000,
        help="then the full pipeline to this many users (0: skip it)",
    )
    args = parser.parse_args()
    asyncio.run(bench(args))
    if args.pipeline_users > 0:
        import apns_pipeline  # bench/ is this script's directory, first on sys.path

        measured = asyncio.run(
            apns_pipeline.run(users=args.pipeline_users, phases=("pipeline", "null"))
        )
        apns_pipeline.report(measured, 1)


if __name__ == "__main__":
    main()
