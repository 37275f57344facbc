"""Email pipeline benchmark: one event to N users with an address, from POST /v1/events to the
last `sent`, through SMTP (STARTTLS + AUTH) to the SMTP emulator.

    .venv/bin/python bench/email_pipeline.py [--emails 20000] [--runs 1]
        [--database sqlite | postgresql+asyncpg://postgres@127.0.0.1:5432/postgres]
        [--phases pipeline,null,transport,aiosmtplib] [--json]

The SMTP emulator runs in its own process (``clarion emulate smtp --require-tls --user ...
--no-store-bodies``: STARTTLS and AUTH required, each message's envelope and size kept, not
parsed), pinned to CPU 1 with ``taskset`` when it exists. This process, pinned to CPU 0, is
Clarion: API and worker in one process (`clarion.entrypoints.server.serve`), email enabled, the
emulator's certificate as CA, 127.0.0.1/32 allowed past the SSRF guard.

Setup (not timed), on a fresh database per pipeline phase: a tenant, its SMTP credential
(``security: starttls``, a username and password), its settings (default locale ``en``, the
credential as provider, a sender), an email template for the event type in ``en``, ``de`` and
``fr`` (subject, text and HTML, with the event's fields, the user's id and the unsubscribe
link), and a group of N users each with an address and one of the three locales, written
set-based (``INSERT ... SELECT``). SQLite is a file in a temporary directory; for a PostgreSQL
URL a scratch database is created next to the one the URL names and dropped afterwards.

Phases:

- ``pipeline``: timed from just before POST /v1/events (real HTTP) to the commit of the last
  completion: accept, relay, route, claim (with each user's locale), render per locale, sign
  the List-Unsubscribe link, send over pooled SMTP sessions, record `sent` with the relay's
  queue id. Checked afterwards: N email deliveries `sent` with N distinct references, and the
  emulator accepted exactly N messages.
- ``null`` (baseline): the same pipeline with the email transport replaced by one answering
  `Delivered` at once: what the registry side does on this machine without rendering or SMTP.
- ``transport`` (baseline): `SmtpMailer.send` alone against the same emulator, with `Email`
  objects rendered from the same templates before the clock starts, in batches of the worker's
  ``delivery_batch`` with ``delivery_concurrency`` batches in flight, as `Delivering` runs
  them: the provider side (MIME rendering, SMTP client, emulator), without a database.
- ``aiosmtplib`` (peer): plain aiosmtplib, the library `SmtpMailer` is built on, sending the
  same N messages pre-rendered to bytes, over as many STARTTLS + AUTH sessions as `SmtpMailer`
  opens (one per `MAX_MESSAGES_PER_SESSION`), the same number at once
  (``smtp_connections_per_host``), one ``sendmail`` after another on each: the floor any
  Python SMTP client on aiosmtplib sits on.

For each phase: wall time, messages/s, SMTP connections (as Clarion counted its sessions, and
as the emulator counted accepted connections), this process's CPU seconds (all threads, so
SQLite's and the rendering thread's too), the emulator's (from /proc), and the machine's busy
CPU seconds on both cores (from /proc/stat). The machine is shared and noisy: compare the
phases of one run (the ratios), not runs of different days.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import re
import secrets
import socket
import ssl
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiosmtplib
import httpx
import sqlalchemy as sa

from apns_pipeline import Completions, Database, machine_busy_s
from clarion import bootstrap
from clarion.adapters.providers import smtp as smtp_provider
from clarion.adapters.providers.smtp import SmtpMailer
from clarion.adapters.storage.tables import (
    BigId,
    UtcDateTime,
    deliveries,
    memberships,
    users,
)
from clarion.domain import outcomes
from clarion.domain.channels import Channel
from clarion.domain.records import (
    Claimed,
    Credential,
    CredentialInfo,
    SenderSettings,
)
from clarion.domain.statuses import Status
from clarion.domain.templates import EmailTemplate, TemplateEntry
from clarion.entrypoints.server import serve
from clarion.services.delivering import Delivering
from clarion.services.templates import Renderer
from clarion.settings import EmailSettings, Settings, WorkerSettings
from clarion.wire import email as wire
from clarion.wire.webhooks import parse_networks
from common import EMULATOR_CPU, EmulatorProcess, median_of, pin_client

GROUP = "everyone"
CREDENTIAL = "relay"
USERNAME, PASSWORD = "bench", "bench-s3cret"
SENDER = "news@example.com"
PUBLIC_URL = "https://notify.example.com"
LOCALES = ("en", "de", "fr")
EVENT_TYPE = "bench.email"
EVENT = {
    "type": EVENT_TYPE,
    "recipients": {"groups": [GROUP]},
    "title": "Your weekly digest",
    "body": "Three new posts in the groups you follow, and one reply to your comment.",
    "data": {"posts": 3, "replies": 1, "url": "https://app.example.com/digest/2026-47"},
    "channels": ["email"],
}
HTML = (
    "<html><body><h1>{{ event.title }}</h1><p>GREETING {{ user.id }},</p>"
    '<p>{{ event.body }}</p><p><a href="{{ event.data.url }}">OPEN</a></p>'
    '<p style="font-size:small"><a href="{{ unsubscribe_url }}">UNSUBSCRIBE</a></p>'
    "</body></html>"
)
TEXT = (
    "GREETING {{ user.id }},\n\n{{ event.body }}\n\nOPEN: {{ event.data.url }}\n\n"
    "UNSUBSCRIBE: {{ unsubscribe_url }}\n"
)
WORDS = {
    "en": {"SUBJECT": "Digest", "GREETING": "Hello", "OPEN": "Open", "UNSUBSCRIBE": "Unsubscribe"},
    "de": {
        "SUBJECT": "Übersicht",
        "GREETING": "Hallo",
        "OPEN": "Öffnen",
        "UNSUBSCRIBE": "Abbestellen",
    },
    "fr": {
        "SUBJECT": "Résumé",
        "GREETING": "Bonjour",
        "OPEN": "Ouvrir",
        "UNSUBSCRIBE": "Se désabonner",
    },
}


def _localized(source: str, words: dict[str, str]) -> str:
    for placeholder, word in words.items():
        source = source.replace(placeholder, word)
    return source


TEMPLATES = {
    locale: EmailTemplate(
        subject=_localized("SUBJECT: {{ event.title }}", words),
        text=_localized(TEXT, words),
        html=_localized(HTML, words),
    )
    for locale, words in WORDS.items()
}
USER_COLUMNS = ["tenant_id", "external_id", "email", "locale", "attributes"]
USER_COLUMNS += ["created_at", "updated_at"]
TIMEOUT_SECONDS = 1800.0
PHASES = ("pipeline", "null", "transport", "aiosmtplib")


@dataclass
class Phase:
    """One phase of one run."""

    phase: str
    database: str
    messages: int
    wall_s: float
    cpu_s: float  # this process, every thread
    emulator_cpu_s: float
    machine_cpu_s: float  # both cores, every process
    sessions: int | None = None  # SMTP sessions the client opened
    connections: int | None = None  # SMTP connections the emulator accepted
    routed_s: float | None = None  # POST to routing committed (pipeline phases)
    first_sent_s: float | None = None  # POST to the first completion committed
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def per_s(self) -> float:
        return self.messages / self.wall_s

    @property
    def us_per_message(self) -> float:
        return 1e6 * self.cpu_s / self.messages


# -- the emulator process ------------------------------------------------------------------------


class SmtpEmulatorProcess(EmulatorProcess):
    """``clarion emulate smtp`` with STARTTLS and AUTH required, bodies not kept."""

    def __init__(self, cert_out: Path) -> None:
        super().__init__(
            "smtp",
            [
                "--port",
                "0",
                "--control-port",
                "0",
                "--require-tls",
                "--require-auth",
                "--user",
                f"{USERNAME}:{PASSWORD}",
                "--no-store-bodies",
                "--cert-out",
                str(cert_out),
            ],
        )
        self.cert = cert_out
        found = re.search(r"smtp://[^\s:]+:(\d+)", self.line("SMTP emulator"))
        if found is None:
            self.failed()
        assert found is not None
        self.port = int(found.group(1))

    def stats(self) -> dict[str, int]:
        return dict(self.control("GET", "/control/stats"))

    def sizes(self) -> list[int]:
        return [int(m["size"]) for m in self.control("GET", "/control/messages")]

    def cleared(self) -> int:
        received = int(self.stats()["messages"])
        self.control("POST", "/control/reset")
        return received


def email_settings(emulator: SmtpEmulatorProcess) -> EmailSettings:
    return EmailSettings(
        enabled=True,
        public_url=PUBLIC_URL,
        ca_file=emulator.cert,
        smtp_allowed_networks=["127.0.0.1/32"],
    )


# -- setup (not timed) ---------------------------------------------------------------------------


async def populate(clarion: bootstrap.Clarion, emulator: SmtpEmulatorProcess, n: int) -> str:
    """A tenant with an SMTP credential, sender settings, a template in three locales, and a
    group of `n` users with an address and a locale each; the tenant's API key."""
    created = await clarion.tenancy.create_tenant("bench")
    tenant = created.tenant_id
    await clarion.credentials.put_email(
        tenant,
        CREDENTIAL,
        kind="smtp",
        host="127.0.0.1",
        port=emulator.port,
        security="starttls",
        username=USERNAME,
        password=PASSWORD,
    )
    await clarion.mailing.put_settings(
        tenant,
        default_locale="en",
        email=SenderSettings(provider=CREDENTIAL, fallback=None, sender=SENDER),
    )
    await clarion.templates.put(
        tenant,
        EVENT_TYPE,
        [
            TemplateEntry("email", locale, t.subject, t.text, t.html)
            for locale, t in TEMPLATES.items()
        ],
    )
    group, _ = await clarion.directory.put_group(
        tenant, GROUP, kind="group", name=None, community=None, attributes={}
    )
    engine = clarion.store.engine
    now = datetime.now(UTC)
    seq = sa.select(sa.literal_column("1").label("n")).cte("seq", recursive=True)
    seq = seq.union_all(sa.select((seq.c.n + 1).label("n")).where(seq.c.n < n))
    name = sa.literal("bench-user-") + sa.cast(seq.c.n, sa.String)
    locale = sa.case(
        *((seq.c.n % len(LOCALES) == i, sa.literal(code)) for i, code in enumerate(LOCALES))
    )
    async with engine.begin() as conn:
        await conn.execute(
            users.insert().from_select(
                USER_COLUMNS,
                sa.select(
                    sa.literal(tenant),
                    name,
                    name + sa.literal("@example.com"),
                    locale,
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
        made = await conn.scalar(sa.select(sa.func.count()).where(mine, users.c.email.is_not(None)))
    if made != n:
        raise SystemExit(f"setup made {made} users with an address, wanted {n}")
    return created.api_key


# -- the pipeline phases -------------------------------------------------------------------------


class InstantEmail:
    """The null transport: every email `Delivered` at once, with a queue-id-shaped reference."""

    channel = Channel.EMAIL

    async def send(self, batch: Sequence[Claimed]) -> list[outcomes.Outcome]:
        return [outcomes.Delivered(f"OK: queued as {c.id:016x}") for c in batch]

    async def close(self) -> None:
        return None


async def pipeline_phase(
    phase: str, database: str, n: int, emulator: SmtpEmulatorProcess, worker: WorkerSettings
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
                email=email_settings(emulator),
                worker=worker,
            )
            await bootstrap.migrate(settings)
            clarion = bootstrap.build(settings)
            try:
                api_key = await populate(clarion, emulator, n)
                if phase == "null":
                    clarion.delivering = Delivering(
                        clarion.store,
                        clarion.clock,
                        {Channel.EMAIL: InstantEmail()},
                        batch=worker.delivery_batch,
                        concurrency=worker.delivery_concurrency,
                    )
                await db.settle()
                emulator.cleared()
                return await _timed_pipeline(phase, db, clarion, api_key, n, emulator)
            finally:
                await clarion.close()


def _mailer_of(clarion: bootstrap.Clarion) -> SmtpMailer:
    transport: Any = clarion.transports[Channel.EMAIL]
    return transport._mailers["smtp"]  # type: ignore[no-any-return]


async def _timed_pipeline(
    phase: str,
    db: Database,
    clarion: bootstrap.Clarion,
    api_key: str,
    n: int,
    emulator: SmtpEmulatorProcess,
) -> Phase:
    seen = Completions(clarion, n)
    mailer = _mailer_of(clarion)
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
            # Open the connection, and let FastAPI build its route state before the clock.
            await client.get("/healthz")
            await client.post("/v1/events", json={})
            sessions0 = mailer.sessions_opened
            cpu0, emu0, machine0 = time.process_time(), emulator.cpu_s(), machine_busy_s()
            started = time.perf_counter()
            answer = await client.post("/v1/events", json=EVENT)
            if answer.status_code != 202:
                raise SystemExit(f"POST /v1/events: {answer.status_code} {answer.text}")
            await asyncio.wait_for(seen.done.wait(), TIMEOUT_SECONDS)
            wall = seen.last - started
            cpu = time.process_time() - cpu0
            emu, machine = emulator.cpu_s() - emu0, machine_busy_s() - machine0
            sessions = mailer.sessions_opened - sessions0
    finally:
        stop.set()
        await asyncio.wait_for(server, 60)
    stats = emulator.stats()
    sizes = emulator.sizes() if stats["messages"] else []
    received = emulator.cleared()
    checked = await verify(clarion, n)
    if phase == "pipeline" and received != n:
        raise SystemExit(f"the emulator received {received} messages, wanted {n}")
    return Phase(
        phase=phase,
        database=db.kind,
        messages=n,
        wall_s=wall,
        cpu_s=cpu,
        emulator_cpu_s=emu,
        machine_cpu_s=machine,
        sessions=sessions if phase == "pipeline" else None,
        connections=stats["connections"] if phase == "pipeline" else None,
        routed_s=None if seen.routed is None else seen.routed - started,
        first_sent_s=None if seen.first is None else seen.first - started,
        details={
            "received": received,
            "mean_size": round(statistics.fmean(sizes)) if sizes else None,
            **checked,
            **seen.other,
        },
    )


async def verify(clarion: bootstrap.Clarion, n: int) -> dict[str, Any]:
    """N email deliveries sent, each with its own reference."""
    async with clarion.store.engine.connect() as conn:
        row = (
            await conn.execute(
                sa.select(
                    sa.func.count(),
                    sa.func.count(sa.distinct(deliveries.c.reference)),
                ).where(deliveries.c.channel == "email", deliveries.c.status == str(Status.SENT))
            )
        ).one()
    if row[0] != n or row[1] != n:
        async with clarion.store.engine.connect() as conn:
            others = (
                await conn.execute(
                    sa.select(deliveries.c.status, deliveries.c.attempts, deliveries.c.error)
                    .where(deliveries.c.channel == "email", deliveries.c.status != str(Status.SENT))
                    .limit(5)
                )
            ).all()
        raise SystemExit(
            f"{row[0]} email deliveries sent with {row[1]} references, wanted {n};"
            f" not sent (first 5): {[tuple(o) for o in others]}"
        )
    return {"sent": row[0]}


# -- the transport phases ------------------------------------------------------------------------


def credential(emulator: SmtpEmulatorProcess) -> Credential:
    now = datetime.now(UTC)
    info = CredentialInfo(
        id="cred-bench",
        tenant_id="t",
        provider="email",
        name=CREDENTIAL,
        app_id=None,
        environment=None,
        metadata={
            "kind": "smtp",
            "host": "127.0.0.1",
            "port": emulator.port,
            "security": "starttls",
            "username": USERNAME,
        },
        status="active",
        paused_reason=None,
        created_at=now,
        updated_at=now,
    )
    return Credential(info=info, secret=PASSWORD)


def emails(n: int) -> list[wire.Email]:
    """N messages as `EmailTransport` builds them: the same templates rendered per locale, a
    one-click link of the length Clarion's signed ones have."""
    renderer = Renderer()
    now = datetime.now(UTC)
    sender = wire.Mailbox(SENDER)
    built = []
    for i in range(1, n + 1):
        user = f"bench-user-{i}"
        link = wire.Unsubscribe(f"{PUBLIC_URL}/v1/unsubscribe/{secrets.token_urlsafe(120)}")
        variables = {
            "event": {
                "id": "e1",
                "type": EVENT_TYPE,
                "title": EVENT["title"],
                "body": EVENT["body"],
                "data": EVENT["data"],
                "category": None,
                "group": None,
            },
            "user": {"id": user, "locale": LOCALES[i % 3], "attributes": {}},
            "unsubscribe_url": link.url,
        }
        rendered = renderer.render_email(TEMPLATES[LOCALES[i % 3]], variables)
        built.append(
            wire.Email(
                sender=sender,
                to=wire.Mailbox.of(f"{user}@example.com"),
                subject=rendered.subject,
                text=rendered.text,
                html=rendered.html,
                date=now,
                message_id=f"clarion.{i}",
                unsubscribe=link,
                headers={"X-Clarion-Delivery": str(i)},
            )
        )
    return built


def _mailer(emulator: SmtpEmulatorProcess) -> SmtpMailer:
    conf = email_settings(emulator)
    return SmtpMailer(
        ssl_context=ssl.create_default_context(cafile=str(emulator.cert)),
        allowed_networks=parse_networks(conf.smtp_allowed_networks),
        connect_timeout=conf.connect_timeout_seconds,
        request_timeout=conf.request_timeout_seconds,
        connections_per_host=conf.smtp_connections_per_host,
        max_concurrency=conf.max_concurrency,
        helo_name=conf.smtp_helo_name,
    )


async def transport_phase(
    n: int, emulator: SmtpEmulatorProcess, worker: WorkerSettings, work: list[wire.Email]
) -> Phase:
    opened = credential(emulator)
    mailer = _mailer(emulator)
    batch, concurrency = worker.delivery_batch, worker.delivery_concurrency
    batches = [work[i : i + batch] for i in range(0, n, batch)]
    emulator.cleared()
    failed: dict[str, int] = {}
    slots = asyncio.Semaphore(concurrency)

    async def one(chunk: list[wire.Email]) -> None:
        try:
            for outcome in await mailer.send(opened, chunk):
                if not isinstance(outcome, outcomes.Delivered):
                    failed[str(outcome)] = failed.get(str(outcome), 0) + 1
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
        await mailer.close()
    stats = emulator.stats()
    received = emulator.cleared()
    if failed or received != n:
        raise SystemExit(f"transport: failed {failed}, the emulator received {received} of {n}")
    return Phase(
        phase="transport",
        database="-",
        messages=n,
        wall_s=wall,
        cpu_s=cpu,
        emulator_cpu_s=emu,
        machine_cpu_s=machine,
        sessions=mailer.sessions_opened,
        connections=stats["connections"],
        details={"received": received},
    )


async def aiosmtplib_phase(
    n: int, emulator: SmtpEmulatorProcess, worker: WorkerSettings, work: list[wire.Email]
) -> Phase:
    """Plain aiosmtplib: `connections_per_host` sessions at once, each sending its share of
    the pre-rendered messages with ``sendmail`` one after another, a new session every
    `MAX_MESSAGES_PER_SESSION` messages, as `SmtpMailer` does."""
    conf = email_settings(emulator)
    context = ssl.create_default_context(cafile=str(emulator.cert))
    prepared = [(m.to.address, wire.render_message(m)) for m in work]
    per_session = smtp_provider.MAX_MESSAGES_PER_SESSION
    sessions = [prepared[i : i + per_session] for i in range(0, n, per_session)]
    queue: asyncio.Queue[list[tuple[str, bytes]]] = asyncio.Queue()
    for chunk in sessions:
        queue.put_nowait(chunk)
    helo = await asyncio.to_thread(socket.getfqdn)
    sent = 0

    async def connection() -> None:
        nonlocal sent
        while not queue.empty():
            chunk = queue.get_nowait()
            client = aiosmtplib.SMTP(
                hostname="127.0.0.1",
                port=emulator.port,
                start_tls=True,
                tls_context=context,
                username=USERNAME,
                password=PASSWORD,
                timeout=conf.request_timeout_seconds,
                local_hostname=helo,
            )
            await client.connect()
            for recipient, message in chunk:
                refused, _ = await client.sendmail(SENDER, [recipient], message)
                sent += not refused
            await client.quit()

    emulator.cleared()
    cpu0, emu0, machine0 = time.process_time(), emulator.cpu_s(), machine_busy_s()
    started = time.perf_counter()
    async with asyncio.TaskGroup() as group:
        for _ in range(conf.smtp_connections_per_host):
            group.create_task(connection())
    wall = time.perf_counter() - started
    cpu = time.process_time() - cpu0
    emu, machine = emulator.cpu_s() - emu0, machine_busy_s() - machine0
    stats = emulator.stats()
    received = emulator.cleared()
    if sent != n or received != n:
        raise SystemExit(f"aiosmtplib: {sent} sent, the emulator received {received} of {n}")
    return Phase(
        phase="aiosmtplib",
        database="-",
        messages=n,
        wall_s=wall,
        cpu_s=cpu,
        emulator_cpu_s=emu,
        machine_cpu_s=machine,
        sessions=len(sessions),
        connections=stats["connections"],
        details={"received": received},
    )


# -- run -----------------------------------------------------------------------------------------


async def run(
    *,
    n: int = 20_000,
    database: str = "sqlite",
    runs: int = 1,
    phases: Sequence[str] = PHASES,
    progress: bool = True,
) -> list[Phase]:
    """Measure `phases` `runs` times (alternating their order between runs); every phase."""
    unknown = set(phases) - set(PHASES)
    if unknown:
        raise ValueError(f"unknown phases: {sorted(unknown)}")
    pin_client()
    worker = WorkerSettings()
    measured: list[Phase] = []
    with tempfile.TemporaryDirectory(prefix="clarion-bench-emu-") as tmp:
        emulator = SmtpEmulatorProcess(Path(tmp) / "smtp.pem")
        try:
            if progress:
                print(
                    f"SMTP emulator pid {emulator.process.pid} on port {emulator.port}"
                    f" ({f'CPU {EMULATOR_CPU} via taskset' if emulator.pinned else 'not pinned'});"
                    f" clarion on CPUs {sorted(os.sched_getaffinity(0))}; {n:,} emails,"
                    f" batch {worker.delivery_batch}, {worker.delivery_concurrency} in flight,"
                    f" {EmailSettings().smtp_connections_per_host} SMTP connections, {database}",
                    file=sys.stderr,
                )
            work = (
                emails(n) if {"transport", "aiosmtplib"} & set(phases) else []
            )  # rendered once, before any clock
            for number in range(runs):
                order = list(phases) if number % 2 == 0 else list(reversed(phases))
                for name in order:
                    if name == "transport":
                        result = await transport_phase(n, emulator, worker, work)
                    elif name == "aiosmtplib":
                        result = await aiosmtplib_phase(n, emulator, worker, work)
                    else:
                        result = await pipeline_phase(name, database, n, emulator, worker)
                    measured.append(result)
                    if progress:
                        print(f"run {number + 1}: {row(result)}", file=sys.stderr)
        finally:
            emulator.stop()
    return measured


# -- reporting -----------------------------------------------------------------------------------

HEADER = (
    "| phase      | database   | messages |  wall s | messages/s | routed s | first s "
    "| CPU s | CPU us/msg | emu CPU s | machine CPU s | sessions | emu conns |\n"
    "|------------|------------|---------:|--------:|-----------:|---------:|--------:"
    "|------:|-----------:|----------:|--------------:|---------:|----------:|"
)


def _opt(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def row(p: Phase) -> str:
    return (
        f"| {p.phase:<10} | {p.database:<10} | {p.messages:>8,} | {p.wall_s:>7.2f} "
        f"| {p.per_s:>10,.0f} | {_opt(p.routed_s):>8} | {_opt(p.first_sent_s):>7} "
        f"| {p.cpu_s:>5.1f} | {p.us_per_message:>10,.0f} | {p.emulator_cpu_s:>9.1f} "
        f"| {p.machine_cpu_s:>13.1f} | {_opt(p.sessions, 0):>8} | {_opt(p.connections, 0):>9} |"
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
    cores = os.cpu_count() or 1
    for phases in by_phase.values():
        m = median_of(phases)
        line = f"{m.phase}: this process {m.us_per_message:,.0f} us CPU per message"
        if m.emulator_cpu_s:
            line += (
                f"; emulator {1e6 * m.emulator_cpu_s / m.messages:,.0f} us CPU per message,"
                f" busy {100 * m.emulator_cpu_s / m.wall_s:.0f}% of the wall time"
            )
        line += f"; machine busy {100 * m.machine_cpu_s / (cores * m.wall_s):.0f}% of {cores} cores"
        if m.sessions:
            line += f"; {m.messages / m.sessions:,.0f} messages per session"
        print(line)
    pairs = [("pipeline", "null"), ("pipeline", "transport"), ("transport", "aiosmtplib")]
    pairs.append(("pipeline", "aiosmtplib"))
    for top, bottom in pairs:
        if top in by_phase and bottom in by_phase:
            ratio = statistics.median(
                a.per_s / b.per_s for a, b in zip(by_phase[top], by_phase[bottom], strict=True)
            )
            print(f"{top} / {bottom}: {ratio:.2f} (median of the per-run ratios of messages/s)")
    pipeline = by_phase.get("pipeline")
    if pipeline:
        rate = median_of(pipeline).per_s
        print(f"target >= 1,000 messages/s: {'met' if rate >= 1000 else 'not met'} ({rate:,.0f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--emails", type=int, default=20_000)
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument(
        "--database", default="sqlite", help="sqlite, or a PostgreSQL URL (admin database)"
    )
    parser.add_argument("--phases", default=",".join(PHASES), help="comma-separated")
    parser.add_argument("--json", action="store_true", help="print every phase as JSON")
    args = parser.parse_args()
    if args.emails < 1 or args.runs < 1:
        parser.error("--emails and --runs must be positive")
    measured = asyncio.run(
        run(
            n=args.emails,
            database=args.database,
            runs=args.runs,
            phases=[p.strip() for p in args.phases.split(",") if p.strip()],
        )
    )
    if args.json:
        print(json.dumps([{**asdict(p), "per_s": p.per_s} for p in measured]))
        return
    report(measured, args.runs)


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
