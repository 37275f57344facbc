"""A scaled-out Clarion made of real processes, for the scale-out tests: `clarion api` and
`clarion worker` subprocesses sharing one PostgreSQL database and one bus (Redis Streams or NATS
JetStream), which a test can kill -9 and start again.

Each process logs to `<directory>/<name>.log` (every start of a name appends to its file), which
a failing test shows. The shared Redis and NATS servers are used under a prefix of the test's
own, removed afterwards; private servers (to restart) come from `tests.contract.test_bus`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import sqlalchemy as sa
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from clarion import bootstrap
from clarion.adapters.storage.tables import BigId, UtcDateTime, devices, memberships, users
from clarion.settings import Settings
from tests.conftest import SECRET_KEY, _empty
from tests.contract.test_bus import NATS_URL, REDIS_URL, _check_nats, _check_redis, _forget

CLARION = [sys.executable, "-m", "clarion"]
START_TIMEOUT = 60.0  # a loaded two-core machine takes a few seconds to import and start
POOL_SIZE = 4  # per process: five processes stay well inside PostgreSQL's 100 connections

TEAM = "TEAM123456"
KID = "KEY1234567"
TOPIC = "com.example.app"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def token_of(n: int) -> str:
    """The APNs device token of the n-th user made by `populate` (user ids count from 1)."""
    return f"{n:064x}"


@contextlib.asynccontextmanager
async def shared_bus(kind: str) -> AsyncIterator[tuple[str, str]]:
    """The machine's Redis or NATS (the test fails under CI without it, else is skipped), and a
    prefix of this test's own; the prefix's keys and streams are removed afterwards."""
    if kind == "redis":
        await _check_redis(REDIS_URL)
        url = REDIS_URL
    else:
        await _check_nats(NATS_URL)
        url = NATS_URL
    prefix = f"scaleout-{uuid.uuid4().hex[:10]}"
    try:
        yield url, prefix
    finally:
        with contextlib.suppress(Exception):
            await _forget(kind, url, prefix)


def environment(
    directory: Path, *, database_url: str, bus: str, bus_url: str, prefix: str, **extra: str
) -> dict[str, str]:
    """What an operator sets for every process of one deployment. `extra` are further
    `CLARION_*` variables, named without the prefix (`WORKER__CONCURRENCY="2"`)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLARION_")}
    env.update(
        {
            "CLARION_DATA_DIR": str(directory / "var"),
            "CLARION_DATABASE_URL": database_url,
            "CLARION_SECRET_KEY": SECRET_KEY,
            "CLARION_BUS": bus,
            "CLARION_BUS_URL": bus_url,
            "CLARION_STREAMS__PREFIX": prefix,
            "CLARION_DATABASE_POOL_SIZE": str(POOL_SIZE),
            "CLARION_WORKER__DRAIN_SECONDS": "2",
        }
    )
    env.update({f"CLARION_{name}": value for name, value in extra.items()})
    return env


@dataclass
class Process:
    """One `clarion api` or `clarion worker` process, which may be killed and started again."""

    name: str
    role: str
    env: dict[str, str]
    log: Path
    port: int | None = None
    process: asyncio.subprocess.Process | None = None
    starts: int = 0

    @property
    def base_url(self) -> str:
        assert self.port is not None
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        assert self.port is not None
        return f"ws://127.0.0.1:{self.port}/v1/ws"

    async def start(self) -> None:
        """Start it and wait until it serves (api: `/readyz` answers 200; worker: it logged
        `started`)."""
        env = dict(self.env)
        if self.port is not None:
            env["CLARION_PORT"] = str(self.port)
        offset = self.log.stat().st_size if self.log.exists() else 0
        with self.log.open("ab") as out:
            self.process = await asyncio.create_subprocess_exec(
                *CLARION, self.role, env=env, stdout=out, stderr=asyncio.subprocess.STDOUT
            )
        self.starts += 1
        deadline = time.monotonic() + START_TIMEOUT
        async with httpx.AsyncClient(timeout=1) as http:
            while True:
                if self.process.returncode is not None:
                    raise AssertionError(f"{self.name} exited at start:\n{self.tail()}")
                if time.monotonic() > deadline:
                    raise AssertionError(f"{self.name} did not start:\n{self.tail()}")
                if self.role == "api":
                    with contextlib.suppress(httpx.TransportError):
                        if (await http.get(f"{self.base_url}/readyz")).status_code == 200:
                            return
                elif b'"action": "started"' in self.log.read_bytes()[offset:]:
                    return
                await asyncio.sleep(0.1)

    async def kill(self) -> None:
        """kill -9: no draining, no goodbye to the bus or the database."""
        if self.process is not None and self.process.returncode is None:
            self.process.send_signal(signal.SIGKILL)
            await self.process.wait()
        self.process = None

    async def terminate(self, grace: float = 10.0) -> int | None:
        """SIGTERM, then SIGKILL after `grace`; the exit status."""
        if self.process is None or self.process.returncode is not None:
            return None if self.process is None else self.process.returncode
        self.process.send_signal(signal.SIGTERM)
        try:
            return await asyncio.wait_for(self.process.wait(), grace)
        except TimeoutError:
            await self.kill()
            return None

    def tail(self, lines: int = 40) -> str:
        if not self.log.exists():
            return "(no log)"
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


@dataclass
class Deployment:
    """The processes of one deployment."""

    directory: Path
    env: dict[str, str]
    processes: list[Process] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)

    def add(self, role: str, name: str, **extra: str) -> Process:
        env = dict(self.env)
        env.update({f"CLARION_{k}": v for k, v in extra.items()})
        process = Process(
            name,
            role,
            env,
            self.directory / f"{name}.log",
            port=free_port() if role == "api" else None,
        )
        self.processes.append(process)
        return process

    @property
    def apis(self) -> list[Process]:
        return [p for p in self.processes if p.role == "api"]

    @property
    def workers(self) -> list[Process]:
        return [p for p in self.processes if p.role == "worker"]

    async def start(self) -> None:
        await asyncio.gather(*(p.start() for p in self.processes))

    async def close(self) -> None:
        await asyncio.gather(*(p.kill() for p in self.processes))

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.tail()}" for p in self.processes)


@contextlib.asynccontextmanager
async def deployed(directory: Path, env: dict[str, str]) -> AsyncIterator[Deployment]:
    """A deployment whose processes are all killed when the block ends."""
    deployment = Deployment(directory, env)
    try:
        yield deployment
    finally:
        await deployment.close()


# -- the database ------------------------------------------------------------------------------


@dataclass
class Tenant:
    id: str
    api_key: str


def settings_for(database_url: str, directory: Path) -> Settings:
    return Settings(data_dir=directory / "var", database_url=database_url, secret_key=SECRET_KEY)


async def fresh_tenant(database_url: str, directory: Path) -> Tenant:
    """Empty the session's database, then make one tenant."""
    await _empty(database_url)
    clarion = bootstrap.build(settings_for(database_url, directory))
    try:
        created = await clarion.tenancy.create_tenant("scale-out")
    finally:
        await clarion.close()
    return Tenant(created.tenant_id, created.api_key)


def apns_key() -> tuple[str, str]:
    """A fresh P-256 signing key: its private PEM (for Clarion) and public PEM (the emulator)."""
    key = ec.generate_private_key(ec.SECP256R1())
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    public = (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    return private, public


async def populate(
    database_url: str, directory: Path, tenant: Tenant, *, group: str, count: int, key_pem: str
) -> None:
    """The tenant's APNs credential, and a group of `count` users, each with one iOS device
    whose token is `token_of(user id)`; written set-based, as bench/apns_pipeline.py does."""
    clarion = bootstrap.build(settings_for(database_url, directory))
    try:
        await clarion.credentials.put_apns(
            tenant.id,
            "main",
            auth="token",
            topic=TOPIC,
            environment="sandbox",
            private_key=key_pem,
            key_id=KID,
            team_id=TEAM,
        )
        made, _ = await clarion.directory.put_group(
            tenant.id, group, kind="group", name=None, community=None, attributes={}
        )
        engine = clarion.store.engine
        now = datetime.now(UTC)
        mine = users.c.tenant_id == tenant.id
        async with engine.begin() as conn:
            await conn.execute(
                users.insert().from_select(
                    ["tenant_id", "external_id", "attributes", "created_at", "updated_at"],
                    sa.select(
                        sa.literal(tenant.id),
                        sa.literal("user-") + sa.cast(sa.column("n"), sa.String),
                        sa.literal({}, users.c.attributes.type),
                        sa.literal(now, UtcDateTime),
                        sa.literal(now, UtcDateTime),
                    ).select_from(sa.func.generate_series(1, count).alias("n")),
                )
            )
            await conn.execute(
                memberships.insert().from_select(
                    ["group_id", "user_id", "created_at"],
                    sa.select(
                        sa.literal(made.id, BigId), users.c.id, sa.literal(now, UtcDateTime)
                    ).where(mine),
                )
            )
            token = sa.func.lpad(sa.func.to_hex(users.c.id), 64, "0")
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
                        sa.literal(tenant.id),
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
            made_devices = sa.select(sa.func.count()).where(devices.c.tenant_id == tenant.id)
            assert await conn.scalar(made_devices) == count
    finally:
        await clarion.close()


async def query(database_url: str, statement: str, *args: Any) -> list[Any]:
    """Rows of one read on the deployment's database."""
    conn = await asyncpg.connect(database_url, timeout=10)
    try:
        return list(await conn.fetch(statement, *args))
    finally:
        await conn.close()
