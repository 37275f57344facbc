"""Web Push client benchmark: Clarion's `WebPushTransport` against pywebpush, same emulator,
same run.

    .venv/bin/python bench/webpush.py [--messages 10000] [--runs 3] [--subscriptions 500]
        [--batch 100] [--concurrency 2] [--json]

Starts the Web Push emulator in a separate process (``clarion emulate webpush --tls``, latency
0, pinned to CPU 1 with ``taskset -c 1`` when taskset exists), creates ``--subscriptions``
subscriptions through its control API (``POST /control/subscriptions``; the emulator keeps their
private keys and decrypts every message), and pins this process to CPU 0. Each run sends N
messages, round-robin over the subscriptions, over HTTPS (HTTP/1.1 keep-alive):

- ``clarion``: `WebPushTransport.send` with batches of ``--batch`` claimed deliveries,
  ``--concurrency`` batches in flight, as `Delivering` runs them. Encrypts per message (RFC
  8291, fresh ephemeral key and salt), one VAPID token per origin, pooled connections (at most
  64 to the origin), the SSRF guard on (127.0.0.1/32 allowed).
- ``pywebpush`` (2.5, async): ``webpush_async`` with one shared ``aiohttp.ClientSession``
  (connection reuse, at most 64 connections) and a pre-loaded ``Vapid`` key, ``asyncio.gather``
  over chunks of ``--batch`` x ``--concurrency``. pywebpush signs a VAPID token per message: that
  is how it works.

Both send the same JSON payload with the same TTL. The order of the phases alternates between
runs. For each phase: wall time, this process's CPU time (``time.process_time``), messages/s,
messages per client CPU-second ("per core"), and the emulator's CPU time (from /proc). After
each phase ``DELETE /control/messages`` must report exactly N decrypted messages, and every
send must have succeeded (201).

The emulator decrypts (ECDH + AES-GCM) every message on one core, so it may bound the
wall-clock rate of both clients; the per-core figure is the one that compares the clients.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import ssl
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from py_vapid import Vapid
from pywebpush import webpush_async

from clarion.adapters.providers.webpush import WebPushTransport, payload_for
from clarion.domain.notifications import InboxItem
from clarion.domain.outcomes import Delivered
from clarion.domain.records import Claimed, Credential, CredentialInfo
from clarion.domain.statuses import Status
from clarion.wire.webhooks import parse_networks
from common import CLIENT_CPU, EmulatorProcess

SUBJECT = "mailto:bench@example.com"
TTL = 86_400
CONNECTIONS = 64


@dataclass
class Phase:
    client: str
    messages: int
    wall_s: float
    cpu_s: float
    emulator_cpu_s: float

    @property
    def per_s(self) -> float:
        return self.messages / self.wall_s

    @property
    def per_cpu_s(self) -> float:
        return self.messages / self.cpu_s


class Emulator(EmulatorProcess):
    """``clarion emulate webpush`` in a child process, with its ports read from its output."""

    control_timeout = 300.0
    received_path = "/control/messages"

    def __init__(self, cert_out: Path) -> None:
        super().__init__(
            "webpush", ["--port", "0", "--control-port", "0", "--cert-out", str(cert_out)]
        )


def claimed(n: int, subscription: dict[str, Any], now: datetime) -> Claimed:
    item = InboxItem(
        id=n,
        notification_id=f"n{n}",
        event_id="e1",
        user=f"u{n}",
        status=Status.PENDING,
        type="news",
        title="Hello",
        body="A benchmark notification body of ordinary length.",
        data={"k": "v"},
        category="news",
        group="g1",
        created_at=now,
    )
    return Claimed(
        id=n,
        fence=1,
        tenant_id="t",
        channel="webpush",
        endpoint=str(n),
        attempts=1,
        item=item,
        address=subscription["endpoint"],
        keys=dict(subscription["keys"]),
    )


def credential(pem: str) -> Credential:
    now = datetime.now(UTC)
    info = CredentialInfo(
        id="cred-bench",
        tenant_id="t",
        provider="webpush",
        name="site",
        app_id=None,
        environment=None,
        metadata={"subject": SUBJECT},
        status="active",
        paused_reason=None,
        created_at=now,
        updated_at=now,
    )
    return Credential(info=info, secret=pem)


async def clarion_phase(
    emulator: Emulator,
    claims: list[Claimed],
    pem: str,
    context: ssl.SSLContext,
    batch: int,
    concurrency: int,
) -> Phase:
    loaded = credential(pem)

    async def load(*_: object) -> Credential:
        return loaded

    transport = WebPushTransport(
        load,
        ssl_context=context,
        allowed_networks=parse_networks(["127.0.0.1/32"]),
        connections_per_origin=CONNECTIONS,
        ttl=TTL,
    )
    try:
        [warm] = await transport.send(claims[:1])
        assert isinstance(warm, Delivered), warm
        emulator.cleared()
        chunks = [claims[i : i + batch] for i in range(0, len(claims), batch)]
        gate = asyncio.Semaphore(concurrency)
        failures: list[object] = []

        async def one(chunk: list[Claimed]) -> None:
            async with gate:
                for outcome in await transport.send(chunk):
                    if not isinstance(outcome, Delivered):
                        failures.append(outcome)

        cpu0, emu0, wall0 = time.process_time(), emulator.cpu_s(), time.perf_counter()
        await asyncio.gather(*(one(c) for c in chunks))
        wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
        emu = emulator.cpu_s() - emu0
    finally:
        await transport.close()
    assert not failures, failures[:3]
    received = emulator.cleared()
    assert received == len(claims), (received, len(claims))
    return Phase("clarion", len(claims), wall, cpu, emu)


async def pywebpush_phase(
    emulator: Emulator,
    claims: list[Claimed],
    pem: str,
    context: ssl.SSLContext,
    batch: int,
    concurrency: int,
) -> Phase:
    vapid = Vapid.from_pem(pem.encode())
    connector = aiohttp.TCPConnector(ssl=context, limit=CONNECTIONS)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def send(c: Claimed) -> int:
            claims_dict: dict[str, str | int] = {"sub": SUBJECT}
            response = await webpush_async(
                {"endpoint": c.address or "", "keys": dict(c.keys)},
                data=payload_for(c).decode(),
                vapid_private_key=vapid,
                vapid_claims=claims_dict,
                ttl=TTL,
                aiohttp_session=session,
            )
            assert not isinstance(response, str)
            response.release()
            return response.status

        assert await send(claims[0]) == 201
        emulator.cleared()
        step = batch * concurrency
        statuses: list[int] = []
        cpu0, emu0, wall0 = time.process_time(), emulator.cpu_s(), time.perf_counter()
        for i in range(0, len(claims), step):
            statuses += await asyncio.gather(*(send(c) for c in claims[i : i + step]))
        wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
        emu = emulator.cpu_s() - emu0
    assert all(s == 201 for s in statuses), [s for s in statuses if s != 201][:3]
    received = emulator.cleared()
    assert received == len(claims), (received, len(claims))
    return Phase("pywebpush", len(claims), wall, cpu, emu)


def median_of(phases: list[Phase]) -> Phase:
    return Phase(
        phases[0].client,
        phases[0].messages,
        statistics.median(p.wall_s for p in phases),
        statistics.median(p.cpu_s for p in phases),
        statistics.median(p.emulator_cpu_s for p in phases),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--subscriptions", type=int, default=500)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="clarion-bench-") as directory:
        cert = Path(directory, "emulator.pem")
        emulator = Emulator(cert)
        try:
            if hasattr(os, "sched_setaffinity") and emulator.pinned:
                os.sched_setaffinity(0, {CLIENT_CPU})
            context = ssl.create_default_context(cafile=str(cert))
            subscriptions = [
                emulator.control("POST", "/control/subscriptions", {})
                for _ in range(args.subscriptions)
            ]
            now = datetime.now(UTC)
            claims = [
                claimed(n, subscriptions[n % len(subscriptions)], now) for n in range(args.messages)
            ]
            pem = (
                ec.generate_private_key(ec.SECP256R1())
                .private_bytes(
                    serialization.Encoding.PEM,
                    serialization.PrivateFormat.PKCS8,
                    serialization.NoEncryption(),
                )
                .decode()
            )
            results: dict[str, list[Phase]] = {"clarion": [], "pywebpush": []}
            for run in range(args.runs):
                order = ["clarion", "pywebpush"] if run % 2 == 0 else ["pywebpush", "clarion"]
                for name in order:
                    phase_of = clarion_phase if name == "clarion" else pywebpush_phase
                    phase = asyncio.run(
                        phase_of(emulator, claims, pem, context, args.batch, args.concurrency)
                    )
                    results[name].append(phase)
                    print(
                        f"run {run + 1} {name:9} {phase.per_s:8.0f} msg/s "
                        f"{phase.per_cpu_s:8.0f} msg/client-CPU-s "
                        f"(wall {phase.wall_s:.2f} s, CPU {phase.cpu_s:.2f} s, "
                        f"emulator CPU {phase.emulator_cpu_s:.2f} s)",
                        file=sys.stderr,
                    )
        finally:
            emulator.stop()
    ratios_rate = [
        c.per_s / p.per_s for c, p in zip(results["clarion"], results["pywebpush"], strict=True)
    ]
    ratios_cpu = [
        c.per_cpu_s / p.per_cpu_s
        for c, p in zip(results["clarion"], results["pywebpush"], strict=True)
    ]
    medians = {name: median_of(phases) for name, phases in results.items()}
    summary = {
        "messages": args.messages,
        "runs": args.runs,
        "pinned": emulator.pinned,
        "phases": {
            name: {**asdict(m), "per_s": m.per_s, "per_cpu_s": m.per_cpu_s}
            for name, m in medians.items()
        },
        "ratio_per_s": {"runs": ratios_rate, "median": statistics.median(ratios_rate)},
        "ratio_per_cpu_s": {"runs": ratios_cpu, "median": statistics.median(ratios_cpu)},
    }
    if args.json:
        print(json.dumps(summary, indent=2))
        return
    print(f"{'client':10} {'msg/s':>8} {'client CPU s':>13} {'msg/CPU-s':>10} {'emu CPU s':>10}")
    for name, m in medians.items():
        print(
            f"{name:10} {m.per_s:8.0f} {m.cpu_s:13.2f} {m.per_cpu_s:10.0f} {m.emulator_cpu_s:10.2f}"
        )
    print(
        "ratio clarion/pywebpush msg/s:     "
        + " ".join(f"{r:.2f}" for r in ratios_rate)
        + f"  median {statistics.median(ratios_rate):.2f}"
    )
    print(
        "ratio clarion/pywebpush per core:  "
        + " ".join(f"{r:.2f}" for r in ratios_cpu)
        + f"  median {statistics.median(ratios_cpu):.2f}"
    )


if __name__ == "__main__":
    main()
