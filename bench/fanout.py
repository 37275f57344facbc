"""Fan-out benchmark: route one event to a group of N users, against a same-run floor.

    .venv/bin/python bench/fanout.py [--users 100000] [--runs 3]
        [--database sqlite|postgres|both] [--postgres-url URL]

Each run builds a fresh database (a file in a temporary directory for SQLite; a scratch
database created next to --postgres-url and dropped afterwards for PostgreSQL), migrates it,
creates a tenant, a group "everyone" and N users in it, accepts one event for the group, and
times only ``await clarion.routing.route(event_id)``: N inbox items, N websocket deliveries
and 2N creation audit entries, in one transaction, committed. Setup is set-based SQL and is
not measured.

The baseline ("floor") is measured in the same run, on the same engine, connection settings
and database: the same 4N rows written without Clarion, into scratch tables shaped like
inbox_items, deliveries and transitions (same columns, keys and indexes, no foreign keys),
by four plain ``INSERT ... SELECT`` in one transaction. The machine is shared and noisy, so
the ratio routing / floor is the figure to compare across runs and machines.

``--database both`` runs each engine in its own child process so that each peak RSS is that
engine's alone.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import resource
import secrets
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import sqlalchemy as sa
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from clarion import bootstrap
from clarion.adapters.storage import engines
from clarion.adapters.storage.tables import (
    BigId,
    UtcDateTime,
    deliveries,
    inbox_items,
    memberships,
    metadata,
    transitions,
    users,
)
from clarion.bootstrap import Clarion
from clarion.domain.notifications import EventSpec, Recipients
from clarion.settings import Settings

DEFAULT_POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/test"
GROUP = "everyone"
CHANNEL = "websocket"


@dataclass
class Run:
    """One measured run, or (from `median_of`) the medians of several."""

    database: str
    users: int
    setup_s: float
    routing_s: float
    floor_before_s: float  # the floor written just before routing
    floor_after_s: float  # ... and just after
    floor_s: float  # the baseline: the mean of the two
    ratio: float  # routing_s / floor_s
    rows: int  # rows routing wrote: items + deliveries + audit entries
    peak_rss_mb: float  # of this process, so far

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.routing_s

    @property
    def floor_rows_per_s(self) -> float:
        return self.rows / self.floor_s


# ---------------------------------------------------------------------------------------------
# the floor: scratch copies of the three tables routing fills, same columns and indexes, no FKs


def _copy(table: sa.Table, into: sa.MetaData, name: str) -> sa.Table:
    """`table`'s columns, primary key, unique constraints and indexes (partial ones too), under
    another name and without foreign keys."""
    columns = [
        sa.Column(
            c.name,
            c.type,
            primary_key=c.primary_key,
            nullable=c.nullable,
            autoincrement=c.autoincrement,
        )
        for c in table.columns
    ]
    extra: list[Any] = [
        sa.Index(None, *(c.name for c in i.columns), unique=i.unique, **i.dialect_kwargs)
        for i in table.indexes
    ]
    extra += [
        sa.UniqueConstraint(*(c.name for c in k.columns))
        for k in table.constraints
        if isinstance(k, sa.UniqueConstraint)
    ]
    copy = sa.Table(name, into, *columns, *extra)
    if _shape(copy) != _shape(table):
        raise SystemExit(f"bench/fanout.py: {name} no longer mirrors {table.name}; update it")
    return copy


def _shape(table: sa.Table) -> tuple[list[str], set[tuple[str, ...]]]:
    keys = {tuple(c.name for c in i.columns) for i in table.indexes}
    keys |= {
        ("unique", *(c.name for c in k.columns))
        for k in table.constraints
        if isinstance(k, sa.UniqueConstraint)
    }
    keys.add(("primary", *(c.name for c in table.primary_key.columns)))
    return [c.name for c in table.columns], keys


class Floor:
    """Scratch tables shaped like inbox_items, deliveries and transitions, and their filling."""

    def __init__(self, prefix: str) -> None:
        self.metadata = sa.MetaData(naming_convention=metadata.naming_convention)
        self.items = _copy(inbox_items, self.metadata, f"{prefix}_inbox_items")
        self.deliveries = _copy(deliveries, self.metadata, f"{prefix}_deliveries")
        self.transitions = _copy(transitions, self.metadata, f"{prefix}_transitions")

    @property
    def names(self) -> list[str]:
        return [t.name for t in self.metadata.sorted_tables]

    async def create(self, engine: AsyncEngine) -> None:
        async with engine.begin() as conn:
            await conn.run_sync(self.metadata.create_all)

    async def write(self, engine: AsyncEngine, tenant_id: str, group_id: int) -> float:
        """Write 4N rows as routing does, with nothing but four INSERT ... SELECT; seconds."""
        now = datetime.now(UTC)
        nid = str(uuid.uuid4())
        items, dels = self.items, self.deliveries

        def at() -> Any:
            return sa.literal(now, UtcDateTime)

        def audit(subject: str, table: sa.Table) -> Any:
            return self.transitions.insert().from_select(
                ["tenant_id", "subject", "subject_id", "target", "cause", "at"],
                sa.select(
                    sa.literal(tenant_id),
                    sa.literal(subject),
                    table.c.id,
                    sa.literal("pending"),
                    sa.literal("routed"),
                    at(),
                ).where(table.c.notification_id == nid),
            )

        statements = [
            items.insert().from_select(
                ["tenant_id", "notification_id", "user_id", "status", "created_at"],
                sa.select(
                    sa.literal(tenant_id),
                    sa.literal(nid),
                    memberships.c.user_id,
                    sa.literal("pending"),
                    at(),
                ).where(memberships.c.group_id == group_id),
            ),
            dels.insert().from_select(
                [
                    "tenant_id",
                    "notification_id",
                    "item_id",
                    "user_id",
                    "channel",
                    "endpoint",
                    "status",
                    "attempts",
                    "next_attempt_at",
                    "fence",
                    "created_at",
                    "updated_at",
                ],
                sa.select(
                    sa.literal(tenant_id),
                    sa.literal(nid),
                    items.c.id,
                    items.c.user_id,
                    sa.literal(CHANNEL),
                    sa.literal(""),
                    sa.literal("pending"),
                    sa.literal(0),
                    at(),
                    sa.literal(0),
                    at(),
                    at(),
                ).where(items.c.notification_id == nid),
            ),
            audit("item", items),
            audit("delivery", dels),
        ]
        started = time.perf_counter()
        async with engine.begin() as conn:
            for statement in statements:
                await conn.execute(statement)
        return time.perf_counter() - started

    async def verify(self, engine: AsyncEngine, n: int) -> None:
        for table, wanted in ((self.items, n), (self.deliveries, n), (self.transitions, 2 * n)):
            got = await count(engine, sa.select(sa.func.count()).select_from(table))
            if got != wanted:
                raise SystemExit(f"the floor wrote {got} rows into {table.name}, wanted {wanted}")


# ---------------------------------------------------------------------------------------------
# setup (not measured)


async def add_members(engine: AsyncEngine, tenant_id: str, group_id: int, n: int) -> None:
    """N users and N memberships, set-based: INSERT ... SELECT from a recursive CTE."""
    now = datetime.now(UTC)
    seq = sa.select(sa.literal_column("1").label("n")).cte("seq", recursive=True)
    seq = seq.union_all(sa.select((seq.c.n + 1).label("n")).where(seq.c.n < n))
    async with engine.begin() as conn:
        await conn.execute(
            users.insert().from_select(
                ["tenant_id", "external_id", "attributes", "created_at", "updated_at"],
                sa.select(
                    sa.literal(tenant_id),
                    sa.literal("bench-user-") + sa.cast(seq.c.n, sa.String),
                    sa.literal({}, users.c.attributes.type),
                    sa.literal(now, UtcDateTime),
                    sa.literal(now, UtcDateTime),
                ),
            )
        )
        await conn.execute(
            memberships.insert().from_select(
                ["group_id", "user_id", "created_at"],
                sa.select(
                    sa.literal(group_id, BigId), users.c.id, sa.literal(now, UtcDateTime)
                ).where(users.c.tenant_id == tenant_id),
            )
        )
        members = await conn.scalar(
            sa.select(sa.func.count()).where(memberships.c.group_id == group_id)
        )
    if members != n:
        raise SystemExit(f"setup made {members} memberships, wanted {n}")


async def count(engine: AsyncEngine, query: sa.Select[Any]) -> int:
    async with engine.connect() as raw:
        conn = await raw.execution_options(**{engines.READONLY: True})
        value = await conn.scalar(query)
        await conn.rollback()
    return int(value or 0)


async def verify_routing(engine: AsyncEngine, notification_id: str, n: int) -> int:
    """Exactly N items, N websocket deliveries, 2N creation audit entries; rows written."""
    item_ids = sa.select(inbox_items.c.id).where(inbox_items.c.notification_id == notification_id)
    delivery_ids = sa.select(deliveries.c.id).where(deliveries.c.notification_id == notification_id)

    def audit(subject: str, ids: sa.Select[Any]) -> sa.Select[Any]:
        return sa.select(sa.func.count()).where(
            transitions.c.subject == subject,
            transitions.c.subject_id.in_(ids),
            transitions.c.source.is_(None),
            transitions.c.target == "pending",
            transitions.c.cause == "routed",
        )

    found = {
        "inbox items": await count(
            engine,
            sa.select(sa.func.count()).where(inbox_items.c.notification_id == notification_id),
        ),
        "deliveries": await count(
            engine,
            sa.select(sa.func.count()).where(deliveries.c.notification_id == notification_id),
        ),
        "websocket deliveries": await count(
            engine,
            sa.select(sa.func.count()).where(
                deliveries.c.notification_id == notification_id, deliveries.c.channel == CHANNEL
            ),
        ),
        "item audit entries": await count(engine, audit("item", item_ids)),
        "delivery audit entries": await count(engine, audit("delivery", delivery_ids)),
    }
    wrong = {name: got for name, got in found.items() if got != n}
    if wrong:
        raise SystemExit(f"routing wrote the wrong rows for {n} users: {wrong}")
    return found["inbox items"] + found["deliveries"] + 2 * n


# ---------------------------------------------------------------------------------------------
# one run


class Database:
    """A fresh database for one run, and how to bring it to rest between measured phases."""

    def __init__(self, kind: str, admin_url: str, tmp: Path) -> None:
        self.kind = kind
        self.admin_url = admin_url
        self.tmp = tmp
        self.name = f"clarion_bench_{uuid.uuid4().hex[:12]}"

    @property
    def url(self) -> str | None:
        if self.kind == "sqlite":
            return None  # Settings puts clarion.db in data_dir
        return make_url(self.admin_url).set(database=self.name).render_as_string(False)

    async def create(self) -> None:
        if self.kind == "postgres":
            await self._admin(self.admin_url, f'CREATE DATABASE "{self.name}"')

    async def drop(self) -> None:
        if self.kind == "postgres":
            await self._admin(self.admin_url, f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')

    async def settle(self, *tables: str) -> None:
        """Empty the WAL (SQLite); vacuum, analyze and checkpoint (PostgreSQL).

        On PostgreSQL this stands in for autovacuum having seen the freshly loaded tables
        (a real 100k group is not loaded a second before its first event) and keeps a
        checkpoint or an autovacuum pass from landing inside a measured phase.
        """
        if self.kind == "sqlite":
            with sqlite3.connect(self.tmp / "clarion.db") as conn:
                busy, _, _ = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
            if busy:
                raise SystemExit("could not checkpoint the SQLite WAL")
            return
        assert self.url is not None
        for table in tables:
            await self._admin(self.url, f"VACUUM ANALYZE {table}")
        await self._admin(self.url, "CHECKPOINT")

    @staticmethod
    async def _admin(url: str, statement: str) -> None:
        conn = await asyncpg.connect(url, timeout=10)
        try:
            await conn.execute(statement)
        finally:
            await conn.close()


async def timed(call: Callable[[], Awaitable[Any]]) -> tuple[float, Any]:
    started = time.perf_counter()
    result = await call()
    return time.perf_counter() - started, result


async def one_run(kind: str, n: int, postgres_url: str) -> Run:
    with tempfile.TemporaryDirectory(prefix="clarion-bench-") as tmp:
        db = Database(kind, postgres_url, Path(tmp))
        await db.create()
        try:
            settings = Settings(
                data_dir=Path(tmp),
                database_url=db.url,
                secret_key=base64.b64encode(secrets.token_bytes(32)).decode(),
            )
            await bootstrap.migrate(settings)
            clarion = bootstrap.build(settings)
            try:
                return await _measure(clarion, db, kind, n)
            finally:
                await clarion.close()
        finally:
            await db.drop()


async def _measure(clarion: Clarion, db: Database, kind: str, n: int) -> Run:
    engine = clarion.store.engine
    setup_started = time.perf_counter()
    tenant = await clarion.tenancy.create_tenant("bench")
    group, _ = await clarion.directory.put_group(
        tenant.tenant_id, GROUP, kind="group", name=None, community=None, attributes={}
    )
    await add_members(engine, tenant.tenant_id, group.id, n)
    accepted = await clarion.accepting.accept(
        tenant.tenant_id,
        EventSpec(type="bench.fanout", recipients=Recipients(groups=(GROUP,)), title="t", body="b"),
    )
    before, after = Floor("floor_before"), Floor("floor_after")
    for floor in (before, after):
        await floor.create(engine)
    await db.settle("users", "memberships", "groups", "events", "outbox")
    setup_s = time.perf_counter() - setup_started

    # A-B-A: the floor is written just before and just after routing, each time into fresh
    # tables, so that drift during the run (and whatever the first write in a file pays)
    # falls on both sides; the baseline is the mean of the two.
    floor_before_s = await before.write(engine, tenant.tenant_id, group.id)
    await before.verify(engine, n)
    await db.settle(*before.names)

    routing_s, routed = await timed(lambda: clarion.routing.route(accepted.id))
    if routed is None:
        raise SystemExit("routing did nothing: the event was not in state 'accepted'")
    if routed.recipients != n or routed.deliveries != n:
        raise SystemExit(f"routing reported {routed}, wanted {n} recipients and deliveries")
    rows = await verify_routing(engine, routed.notification_id, n)
    await db.settle("inbox_items", "deliveries", "transitions", "notifications", "events")

    floor_after_s = await after.write(engine, tenant.tenant_id, group.id)
    await after.verify(engine, n)

    floor_s = (floor_before_s + floor_after_s) / 2
    return Run(
        database=kind,
        users=n,
        setup_s=setup_s,
        routing_s=routing_s,
        floor_before_s=floor_before_s,
        floor_after_s=floor_after_s,
        floor_s=floor_s,
        ratio=routing_s / floor_s,
        rows=rows,
        peak_rss_mb=peak_rss_mb(),
    )


def peak_rss_mb() -> float:
    # ru_maxrss is in KiB on Linux (bytes on macOS).
    scale = 1 if sys.platform == "darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20


# ---------------------------------------------------------------------------------------------
# reporting

HEADER = (
    f"{'database':<9} {'run':>6} {'users':>8} {'setup s':>8} {'routing s':>10} "
    f"{'floor s (before/after)':>24} {'ratio':>6} {'rows/s':>10} {'floor rows/s':>13} "
    f"{'peak RSS MB':>12}"
)


def line(label: str, run: Run) -> str:
    floor = f"{run.floor_s:.3f} ({run.floor_before_s:.3f}/{run.floor_after_s:.3f})"
    return (
        f"{run.database:<9} {label:>6} {run.users:>8} {run.setup_s:>8.2f} {run.routing_s:>10.3f} "
        f"{floor:>24} {run.ratio:>6.2f} {run.rows_per_s:>10,.0f} "
        f"{run.floor_rows_per_s:>13,.0f} {run.peak_rss_mb:>12.1f}"
    )


def median_of(runs: list[Run]) -> Run:
    """The median of every column; the ratio is the median of the per-run ratios."""

    def med(field: str) -> float:
        return statistics.median(getattr(r, field) for r in runs)

    return Run(
        database=runs[0].database,
        users=runs[0].users,
        setup_s=med("setup_s"),
        routing_s=med("routing_s"),
        floor_before_s=med("floor_before_s"),
        floor_after_s=med("floor_after_s"),
        floor_s=med("floor_s"),
        ratio=med("ratio"),
        rows=runs[0].rows,
        peak_rss_mb=max(r.peak_rss_mb for r in runs),
    )


def summary(runs: list[Run]) -> str:
    med = median_of(runs)
    return (
        f"{med.database}: median routing {med.routing_s:.3f} s, floor {med.floor_s:.3f} s, "
        f"ratio {med.ratio:.2f} (median of per-run ratios), {med.rows_per_s:,.0f} rows/s "
        f"({med.rows:,} rows: items + deliveries + audit), peak RSS {med.peak_rss_mb:.1f} MB"
    )


def report(runs: list[Run]) -> None:
    print(HEADER)
    for i, run in enumerate(runs, 1):
        print(line(str(i), run))
    print(line("median", median_of(runs)))


async def bench(kind: str, n: int, runs: int, postgres_url: str) -> list[Run]:
    done: list[Run] = []
    for i in range(runs):
        run = await one_run(kind, n, postgres_url)
        print(f"  run {i + 1}/{runs}: {line(str(i + 1), run)}")
        sys.stdout.flush()
        done.append(run)
    return done


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--database", choices=("sqlite", "postgres", "both"), default="sqlite")
    parser.add_argument("--postgres-url", default=DEFAULT_POSTGRES_URL)
    parser.add_argument("--json", help=argparse.SUPPRESS)  # child processes report here
    args = parser.parse_args()
    if args.users < 1 or args.runs < 1:
        parser.error("--users and --runs must be positive")

    if args.database == "both":
        results: list[list[Run]] = []
        for kind in ("sqlite", "postgres"):
            with tempfile.NamedTemporaryFile(suffix=".json") as out:
                subprocess.run(
                    [
                        sys.executable,
                        __file__,
                        f"--users={args.users}",
                        f"--runs={args.runs}",
                        f"--database={kind}",
                        f"--postgres-url={args.postgres_url}",
                        f"--json={out.name}",
                    ],
                    check=True,
                )
                results.append([Run(**r) for r in json.loads(Path(out.name).read_text())])
        print()
        print(HEADER)
        for runs in results:
            for i, run in enumerate(runs, 1):
                print(line(str(i), run))
            print(line("median", median_of(runs)))
        print()
        for runs in results:
            print(summary(runs))
        return

    settings = (
        "journal_mode=WAL, synchronous=FULL, as in clarion/adapters/storage/engines.py"
        if args.database == "sqlite"
        else "the server's own settings"
    )
    print(f"fan-out to {args.users:,} users on {args.database} ({settings}), {args.runs} runs")
    print(f"  peak RSS after imports, before any run: {peak_rss_mb():.1f} MB")
    runs = asyncio.run(bench(args.database, args.users, args.runs, args.postgres_url))
    if args.json:
        Path(args.json).write_text(json.dumps([asdict(r) for r in runs]))
    report(runs)
    print(summary(runs))


if __name__ == "__main__":
    main()
