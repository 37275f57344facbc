"""FCM client benchmark: Clarion's `FcmTransport` against firebase-admin, one emulator.

    .venv/bin/python bench/fcm.py [--messages 50000] [--runs 3] [--batch 500] [--json]

Starts the FCM emulator in a separate process (``clarion emulate fcm --tls``, latency 0, no
quota to speak of, pinned to CPU 1 with ``taskset -c 1`` when taskset exists), has it create a
service account (``POST /control/service-accounts``: the key file, its ``token_uri`` the
emulator's token endpoint), and pins this process to CPU 0. Each run then sends N messages
(default 50,000) with each client, over TLS to that one emulator, to distinct registration
tokens, with the same notification (title, body) and data:

- ``clarion``: `FcmTransport.send` called with batches of ``--batch`` claimed deliveries, one
  batch after another, as `Delivering.deliver_once` does (``worker.delivery_batch`` is 500), with
  the transport's defaults (``fcm.concurrency`` 500 in flight, ``fcm.connections`` 5 HTTP/2
  connections).
- ``firebase-admin``: ``messaging.send_each_async`` (7.7.0: one ``messages:send`` per message,
  ``asyncio.gather`` on one httpx HTTP/2 client, which holds at most 100 streams on its one
  connection) on chunks of ``--batch`` messages (it takes at most 500 per call). It reaches the
  emulator by its own means: the key file's ``token_uri`` for OAuth, the CA bundle through
  ``SSL_CERT_FILE``/``REQUESTS_CA_BUNDLE``, and its send URL, a class attribute
  (``_MessagingService.FCM_URL``), patched, as firebase-admin has no emulator switch for FCM.

Both fetch their access token once, in a warm-up send outside the timing. The order of the
phases alternates between runs. For each phase: wall time, the client's CPU time
(``time.process_time``), messages/s, messages per client CPU-second ("per core"), and the
emulator's CPU time (from /proc). Before each phase the emulator's received list is cleared
(``DELETE /control/received``); after it, the count it clears must equal N, and every answer
must be a success.

Reports medians over the runs, and the medians of the per-run ratios clarion / firebase-admin.
The emulator is pure-Python HTTP/2 on one core, so it bounds the wall-clock rate of both
clients; the per-core figure (client CPU) is the one that compares them.
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
import warnings
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from clarion.adapters.providers.fcm import AccessTokens, FcmTransport
from clarion.domain.notifications import InboxItem
from clarion.domain.outcomes import Delivered
from clarion.domain.records import Claimed, Credential, CredentialInfo
from clarion.domain.statuses import Status
from common import CLIENT_CPU, EmulatorProcess, pin_client

PROJECT = "clarion-bench"
TITLE = "Hello"
BODY = "A benchmark notification body of ordinary length."
DATA = {"k": "v"}
NO_QUOTA = 1_000_000_000


@dataclass
class Phase:
    """One client's figures in one run (or, from `median_of`, the medians of several)."""

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


def token_of(n: int) -> str:
    return f"bench{n:012d}:APA91b{'x' * 120}"


# -- the emulator process ------------------------------------------------------------------------


class Emulator(EmulatorProcess):
    """``clarion emulate fcm`` in a child process, with its ports read from its output."""

    def __init__(self, *, cert_out: Path) -> None:
        options = ["--port", "0", "--control-port", "0", "--latency-ms", "0", "--tls"]
        options += ["--quota-per-minute", str(NO_QUOTA), "--cert-out", str(cert_out)]
        super().__init__("fcm", options)
        said = self.line("FCM emulator:")
        self.base_url = said.split(": ", 1)[1].split("/v1/", 1)[0].strip() if said else ""
        if not self.base_url:
            self.failed()


# -- the two clients -----------------------------------------------------------------------------


def credential(account: dict[str, Any]) -> Credential:
    now = datetime.now(UTC)
    info = CredentialInfo(
        id="cred-bench",
        tenant_id="t",
        provider="fcm",
        name="main",
        app_id=None,
        environment=None,
        metadata={
            k: account[k] for k in ("project_id", "client_email", "token_uri", "private_key_id")
        },
        status="active",
        paused_reason=None,
        created_at=now,
        updated_at=now,
    )
    return Credential(info=info, secret=account["private_key"])


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
        category=None,
        group=None,
        created_at=now,
    )
    return Claimed(
        id=n,
        fence=1,
        tenant_id="t",
        channel="fcm",
        endpoint=f"d{n}",
        attempts=0,
        item=item,
        address=token_of(n),
    )


def chunks(start: int, stop: int, size: int) -> Iterator[range]:
    for first in range(start, stop, size):
        yield range(first, min(first + size, stop))


async def run_clarion(
    emulator: Emulator, context: ssl.SSLContext, account: dict[str, Any], args: Any
) -> Phase:
    opened = credential(account)

    async def load(tenant: str, provider: str, app_id: str | None) -> Credential:
        return opened

    transport = FcmTransport(
        load, base_url=emulator.base_url, ssl_context=context, tokens=AccessTokens()
    )
    now = datetime.now(UTC)
    # What the store hands the transport; built before the clock starts, as claiming is not
    # the client's work.
    deliveries = [claimed(n, now) for n in range(args.messages + 1)]
    try:
        warm = await transport.send(deliveries[:1])  # connect, fetch the access token
        assert isinstance(warm[0], Delivered), warm
        emulator.cleared()
        cpu0, emu0, wall0 = time.process_time(), emulator.cpu_s(), time.perf_counter()
        failed = 0
        for batch in chunks(1, args.messages + 1, args.batch):
            outcomes = await transport.send(deliveries[batch.start : batch.stop])
            failed += sum(not isinstance(o, Delivered) for o in outcomes)
        wall = time.perf_counter() - wall0
        cpu, emu = time.process_time() - cpu0, emulator.cpu_s() - emu0
    finally:
        await transport.close()
    received = emulator.cleared()
    if failed or received != args.messages:
        raise RuntimeError(f"clarion: {failed} failed, emulator received {received}")
    return Phase("clarion", args.messages, wall, cpu, emu)


async def run_firebase_admin(
    emulator: Emulator, context: ssl.SSLContext, account: dict[str, Any], args: Any
) -> Phase:
    import firebase_admin
    from firebase_admin import credentials, messaging

    messaging._MessagingService.FCM_URL = emulator.base_url + "/v1/projects/{0}/messages:send"
    app = firebase_admin.initialize_app(
        credentials.Certificate(account), name=f"bench-{time.monotonic_ns()}"
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # Message.token, in 7.7.0
        messages = [
            messaging.Message(
                token=token_of(n),
                notification=messaging.Notification(title=TITLE, body=BODY),
                data=DATA,
            )
            for n in range(args.messages + 1)
        ]
    service = messaging._get_messaging_service(app)
    try:
        # The first call fetches the access token with a blocking request (google-auth): it
        # runs here, outside the timing, in a thread so that this loop stays free.
        warm = await asyncio.to_thread(messaging.send, messages[0], app=app)
        assert warm.startswith(f"projects/{PROJECT}/messages/"), warm
        emulator.cleared()
        cpu0, emu0, wall0 = time.process_time(), emulator.cpu_s(), time.perf_counter()
        failed = 0
        for batch in chunks(1, args.messages + 1, min(args.batch, 500)):
            answer = await messaging.send_each_async(messages[batch.start : batch.stop], app=app)
            failed += answer.failure_count
        wall = time.perf_counter() - wall0
        cpu, emu = time.process_time() - cpu0, emulator.cpu_s() - emu0
    finally:
        # Its own close() runs asyncio.run(), which cannot run inside this loop.
        await service._async_client.aclose()
        service.close = lambda: None
        firebase_admin.delete_app(app)
    received = emulator.cleared()
    if failed or received != args.messages:
        raise RuntimeError(f"firebase-admin: {failed} failed, emulator received {received}")
    return Phase("firebase-admin", args.messages, wall, cpu, emu)


# -- main ----------------------------------------------------------------------------------------


def median_of(phases: list[Phase]) -> Phase:
    return Phase(
        phases[0].client,
        phases[0].messages,
        statistics.median(p.wall_s for p in phases),
        statistics.median(p.cpu_s for p in phases),
        statistics.median(p.emulator_cpu_s for p in phases),
    )


def row(p: Phase) -> str:
    return (
        f"| {p.client:<14} | {p.messages:>8,} | {p.wall_s:>7.2f} | {p.per_s:>10,.0f} "
        f"| {p.cpu_s:>7.2f} | {p.per_cpu_s:>14,.0f} | {p.emulator_cpu_s:>9.2f} |"
    )


HEADER = (
    "| client         | messages |  wall s | messages/s |   CPU s | messages/CPU-s "
    "| emu CPU s |\n"
    "|----------------|---------:|--------:|-----------:|--------:|---------------:"
    "|----------:|"
)


async def bench(args: Any) -> None:
    pin_client()
    names = ["clarion", "firebase-admin"]
    results: dict[str, list[Phase]] = {name: [] for name in names}
    with tempfile.TemporaryDirectory() as tmp:
        cert = Path(tmp) / "emulator.pem"
        emulator = Emulator(cert_out=cert)
        try:
            account = emulator.control("POST", "/control/service-accounts", {"project_id": PROJECT})
            context = ssl.create_default_context(cafile=str(cert))
            # firebase-admin's two HTTP stacks read their CA bundle from the environment.
            os.environ["SSL_CERT_FILE"] = os.environ["REQUESTS_CA_BUNDLE"] = str(cert)
            print(
                f"emulator pid {emulator.process.pid} at {emulator.base_url}"
                f" ({'CPU 1 via taskset' if emulator.pinned else 'not pinned: no taskset'});"
                f" client on CPU {CLIENT_CPU}: {sorted(os.sched_getaffinity(0))}",
                file=sys.stderr,
            )
            phases = {"clarion": run_clarion, "firebase-admin": run_firebase_admin}
            for run in range(args.runs):
                order = names if run % 2 == 0 else names[::-1]
                for name in order:
                    measured = await phases[name](emulator, context, account, args)
                    results[name].append(measured)
                    print(f"run {run + 1}: {row(measured)}", file=sys.stderr)
        finally:
            emulator.stop()

    medians = {name: median_of(phases) for name, phases in results.items()}
    pairs = list(zip(results["clarion"], results["firebase-admin"], strict=True))
    found = {
        "per_s": [c.per_s / o.per_s for c, o in pairs],
        "per_cpu_s": [c.per_cpu_s / o.per_cpu_s for c, o in pairs],
    }
    if args.json:
        print(
            json.dumps(
                {
                    "runs": {k: [asdict(p) for p in v] for k, v in results.items()},
                    "medians": {k: asdict(p) for k, p in medians.items()},
                    "ratios": found,
                }
            )
        )
        return
    print(f"\nmedians of {args.runs} runs, {args.messages:,} messages each, batch {args.batch}\n")
    print(HEADER)
    for phase in medians.values():
        print(row(phase))
    print("\nclarion / firebase-admin, per run and median:\n")
    for what, label in (("per_cpu_s", "per core"), ("per_s", "messages/s")):
        runs = " ".join(f"{v:.2f}" for v in found[what])
        print(f"- {label}: {runs}; median **{statistics.median(found[what]):.2f}x**")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=50_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.messages < 1 or args.runs < 1 or args.batch < 1:
        parser.error("--messages, --runs and --batch must be at least 1")
    asyncio.run(bench(args))


if __name__ == "__main__":
    main()
