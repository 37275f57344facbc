"""Routing benchmark: a stream of small events, routed one by one and in batches, same run.

    .venv/bin/python bench/routing.py [--events 2000] [--batch 50] [--runs 3]
        [--database sqlite | postgresql+asyncpg://postgres@127.0.0.1:5432/postgres]

Each run starts from a fresh database (a SQLite file in a temporary directory, or a scratch
PostgreSQL database next to the one the URL names, dropped afterwards), migrated and built with
`bootstrap.build`. Setup, not timed: a tenant, and 2 x ``--events`` accepted events, each
naming one of 50 users (the shape of the broker-restart test's stream: every event one inbox
item, one websocket delivery, two audit entries).

Timed, on the same database and the same process:

- ``one by one`` (the baseline): the first half routed with ``Routing.route(event_id)``, one
  transaction per event, as routers did before batches;
- ``batched``: the second half routed with ``Routing.route_many`` in batches of ``--batch``,
  one transaction per batch, as routers do now.

The two alternate which goes first from one run to the next. Reported for each: events/s, this
process's CPU per event, and the machine's busy CPU per event (from /proc/stat: PostgreSQL's
own work is in it), with the ratio one-by-one / batched. Afterwards every event must be
`routed` with exactly one item and one delivery.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa

from apns_pipeline import Database, machine_busy_s  # bench/ is first on sys.path
from clarion import bootstrap
from clarion.adapters.storage.tables import deliveries, events, inbox_items
from clarion.domain.notifications import EventSpec, Recipients
from clarion.settings import Settings

DEFAULT_DATABASE = "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres"
USERS = 50


@dataclass
class Timed:
    events: int
    wall_s: float
    cpu_s: float  # this process
    busy_s: float  # the whole machine

    @property
    def per_s(self) -> float:
        return self.events / self.wall_s

    @property
    def cpu_us(self) -> float:
        return 1e6 * self.cpu_s / self.events

    @property
    def busy_us(self) -> float:
        return 1e6 * self.busy_s / self.events


async def one_run(spec: str, n: int, batch: int, batched_first: bool) -> dict[str, Timed]:
    with tempfile.TemporaryDirectory() as tmp:
        database = Database(spec, Path(tmp))
        async with database.scratch():
            settings = Settings(data_dir=Path(tmp), database_url=database.url)
            await bootstrap.migrate(settings)
            clarion = bootstrap.build(settings)
            try:
                tenant = (await clarion.tenancy.create_tenant("bench")).tenant_id
                ids = []
                for k in range(2 * n):
                    spec_k = EventSpec(type="load", recipients=Recipients(users=(f"u{k % USERS}",)))
                    ids.append((await clarion.accepting.accept(tenant, spec_k)).id)
                await database.settle()
                halves = {"one by one": ids[:n], "batched": ids[n:]}
                order = ["batched", "one by one"] if batched_first else ["one by one", "batched"]
                measured: dict[str, Timed] = {}
                for name in order:
                    chosen = halves[name]
                    wall, cpu, busy = time.perf_counter(), time.process_time(), machine_busy_s()
                    if name == "batched":
                        for start in range(0, n, batch):
                            await clarion.routing.route_many(chosen[start : start + batch])
                    else:
                        for event_id in chosen:
                            await clarion.routing.route(event_id)
                    measured[name] = Timed(
                        n,
                        time.perf_counter() - wall,
                        time.process_time() - cpu,
                        machine_busy_s() - busy,
                    )
                await verify(clarion, 2 * n)
            finally:
                await clarion.close()
    return measured


async def verify(clarion: bootstrap.Clarion, n: int) -> None:
    async with clarion.store.engine.connect() as conn:
        routed = await conn.scalar(
            sa.select(sa.func.count()).select_from(events).where(events.c.state == "routed")
        )
        items = await conn.scalar(sa.select(sa.func.count()).select_from(inbox_items))
        sent = await conn.scalar(sa.select(sa.func.count()).select_from(deliveries))
    if (routed, items, sent) != (n, n, n):
        raise SystemExit(f"bench/routing.py: expected {n} of each, got {(routed, items, sent)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=2000, help="events per mode and run")
    parser.add_argument("--batch", type=int, default=50)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--database", default=DEFAULT_DATABASE, help="sqlite or a PostgreSQL URL")
    args = parser.parse_args()
    runs = [
        asyncio.run(one_run(args.database, args.events, args.batch, batched_first=r % 2 == 1))
        for r in range(args.runs)
    ]
    kind = "sqlite" if args.database == "sqlite" else "postgresql"
    print(f"routing {args.events} single-recipient events per mode, {kind}, {args.runs} runs")
    print(f"{'mode':<12} {'events/s':>9} {'CPU µs/event':>13} {'machine µs/event':>17}")
    for name in ("one by one", "batched"):
        label = name if name == "one by one" else f"batches {args.batch}"
        print(
            f"{label:<12} {statistics.median(r[name].per_s for r in runs):>9.0f}"
            f" {statistics.median(r[name].cpu_us for r in runs):>13.0f}"
            f" {statistics.median(r[name].busy_us for r in runs):>17.0f}"
        )
    for figure in ("per_s", "cpu_us", "busy_us"):
        ratios = [
            getattr(r["batched"], figure) / getattr(r["one by one"], figure)
            if figure == "per_s"
            else getattr(r["one by one"], figure) / getattr(r["batched"], figure)
            for r in runs
        ]
        print(
            f"ratio ({figure}, batched better by): median {statistics.median(ratios):.2f}x"
            f" (runs {', '.join(f'{x:.2f}' for x in ratios)})"
        )


if __name__ == "__main__":
    main()
