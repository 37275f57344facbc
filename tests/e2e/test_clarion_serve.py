"""`clarion serve` and the CLI as an operator runs them, in separate processes."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets

from clarion import bootstrap
from clarion.domain.notifications import EventSpec, Recipients
from clarion.settings import Settings

CLARION = [sys.executable, "-m", "clarion"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def environment(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, str]:
    """The environment an operator would set, for each database."""
    env = {
        **os.environ,
        "CLARION_DATA_DIR": str(tmp_path / "var"),
        "CLARION_PORT": str(_free_port()),
    }
    env.pop("CLARION_DATABASE_URL", None)
    if request.param == "postgres":
        env["CLARION_DATABASE_URL"] = request.getfixturevalue("postgres_url")
        env["CLARION_SECRET_KEY"] = request.getfixturevalue("postgres_secret_key")
    return env


@pytest.fixture
def postgres_secret_key() -> str:
    from tests.conftest import SECRET_KEY

    return SECRET_KEY


def _cli(env: dict[str, str], *args: str) -> str:
    done = subprocess.run(
        [*CLARION, *args], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


@contextmanager
def _serving(env: dict[str, str]) -> Iterator[subprocess.Popen[bytes]]:
    log_path = Path(env["CLARION_DATA_DIR"]).parent / "serve.log"
    log = log_path.open("a")
    process = subprocess.Popen([*CLARION, "serve"], env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{env['CLARION_PORT']}"
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            assert process.poll() is None, log_path.read_text()
            try:
                if httpx.get(f"{base}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        else:
            raise AssertionError("clarion serve did not become ready")
        yield process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        log.close()


@asynccontextmanager
async def _client(env: dict[str, str], api_key: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{env['CLARION_PORT']}",
        headers={"Authorization": f"Bearer {api_key}"},
        timeout=10,
    ) as http:
        yield http


async def _counts(http: httpx.AsyncClient, event_id: str, want: dict[str, int]) -> dict[str, Any]:
    report: dict[str, Any] = {}
    for _ in range(300):
        report = (await http.get(f"/v1/events/{event_id}")).json()
        if report.get("state") == "routed" and all(
            report["recipients"]["by_status"][k] == v for k, v in want.items()
        ):
            return report
        await asyncio.sleep(0.02)
    raise AssertionError(f"never reached {want}: {report}")


async def test_the_quick_start_scenario_end_to_end(environment: dict[str, str]) -> None:
    env = environment
    with _serving(env) as process:
        tenant = json.loads(_cli(env, "tenant", "create", "acme", "--json"))
        assert set(tenant) == {"tenant_id", "api_key", "user_token_secret"}
        async with _client(env, tenant["api_key"]) as http:
            await http.put("/v1/groups/team", json={})
            for user in ("ann", "bob", "cid"):
                await http.put(f"/v1/groups/team/members/{user}")
            token = (await http.post("/v1/users/ann/tokens")).json()["token"]
            ws_url = f"ws://127.0.0.1:{env['CLARION_PORT']}/v1/ws"
            async with websockets.connect(ws_url) as ws:
                await ws.send(json.dumps({"type": "auth", "token": token}))
                assert json.loads(await ws.recv())["type"] == "ready"
                posted = await http.post(
                    "/v1/events",
                    json={
                        "type": "task.assigned",
                        "recipients": {"groups": ["team"]},
                        "title": "Hi",
                    },
                )
                assert posted.status_code == 202
                event_id = posted.json()["id"]
                frame = json.loads(await asyncio.wait_for(ws.recv(), 1.0))
                assert (frame["type"], frame["event_id"]) == ("notification", event_id)
                report = await _counts(http, event_id, {"sent": 1, "pending": 2})
                assert report["recipients"]["total"] == 3
                await ws.send(json.dumps({"type": "read", "id": frame["id"]}))
                assert json.loads(await ws.recv())["status"] == "read"
            await _counts(http, event_id, {"read": 1, "pending": 2})
            trail = (await http.get(f"/v1/events/{event_id}/recipients/ann")).json()["trail"]
            assert [t["to"] for t in trail] == ["pending", "sent", "read"]
        process.send_signal(signal.SIGTERM)
        assert process.wait(20) == 0


async def test_events_accepted_while_down_or_lost_on_the_bus_are_routed_after_restart(
    environment: dict[str, str],
) -> None:
    env = environment
    _cli(env, "migrate")
    settings = Settings(
        data_dir=Path(env["CLARION_DATA_DIR"]),
        database_url=env.get("CLARION_DATABASE_URL"),
        secret_key=env.get("CLARION_SECRET_KEY"),
    )
    offline = bootstrap.build(settings)
    try:
        tenant = await offline.tenancy.create_tenant("acme")
        spec = EventSpec(type="t", recipients=Recipients(users=("ann",)))
        # One event committed with its outbox entry, as if the process died right after 202...
        unpublished = await offline.accepting.accept(tenant.tenant_id, spec)
        # ...and one handed to the bus, whose in-memory queue then died with the process.
        lost = await offline.accepting.accept(tenant.tenant_id, spec)
        entries = await offline.store.pending_outbox(1000)
        await offline.store.mark_published(
            [e.id for e in entries if e.payload["event_id"] == lost.id], offline.clock.now()
        )
    finally:
        await offline.close()
    with _serving(env):
        async with _client(env, tenant.api_key) as http:
            for event_id in (unpublished.id, lost.id):
                report = await _counts(http, event_id, {"pending": 1})
                assert report["recipients"]["total"] == 1


def test_config_check_explains_and_validates(tmp_path: Path) -> None:
    env = {**os.environ, "CLARION_DATA_DIR": str(tmp_path / "var")}
    env.pop("CLARION_DATABASE_URL", None)
    out = _cli(env, "config", "check")
    assert "configuration is valid" in out
    bad = subprocess.run(
        [*CLARION, "config", "check"],
        env={
            **env,
            "CLARION_GATEWAY__IDLE_TIMEOUT_SECONDS": "1",
            "CLARION_GATEWAY__HEARTBEAT_SECONDS": "5",
        },
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert bad.returncode == 1
    assert "idle_timeout_seconds" in bad.stderr
    wrong = subprocess.run(
        [*CLARION, "config", "check"],
        env={**env, "CLARION_DATABASE_URL": "mysql://x"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert wrong.returncode == 2


def test_keys_are_created_listed_and_revoked_from_the_cli(tmp_path: Path) -> None:
    env = {**os.environ, "CLARION_DATA_DIR": str(tmp_path / "var")}
    env.pop("CLARION_DATABASE_URL", None)
    tenant = json.loads(_cli(env, "tenant", "create", "acme", "--json"))
    key = json.loads(
        _cli(env, "key", "create", "--tenant", tenant["tenant_id"], "--name", "ci", "--json")
    )
    listed = json.loads(_cli(env, "key", "list", "--tenant", tenant["tenant_id"], "--json"))
    assert [k["name"] for k in listed] == ["default", "ci"]
    assert all("api_key" not in k and "digest" not in k for k in listed)
    _cli(env, "key", "revoke", key["id"])
    listed = json.loads(_cli(env, "key", "list", "--tenant", tenant["tenant_id"], "--json"))
    assert [k["revoked_at"] is not None for k in listed] == [False, True]
    missing = subprocess.run(
        [*CLARION, "key", "revoke", "0" * 16], env=env, capture_output=True, text=True, check=False
    )
    assert missing.returncode == 1
    assert "not_found" in missing.stderr
