"""`clarion api` and `clarion worker` as separate processes, as a scaled-out deployment runs
them: the API serves HTTP and routes nothing, the worker routes and serves no HTTP, several
workers share the work, and SIGTERM drains and exits 0 within the grace period."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

CLARION = [sys.executable, "-m", "clarion"]
DRAIN = 3.0  # CLARION_WORKER__DRAIN_SECONDS for these processes


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _deployment(tmp_path: Path, database_url: str | None) -> dict[str, str]:
    """What an operator sets for every process of one deployment; migrated."""
    env = {
        **os.environ,
        "CLARION_DATA_DIR": str(tmp_path / "var"),
        "CLARION_PORT": str(_free_port()),
        "CLARION_WORKER__DRAIN_SECONDS": str(DRAIN),
    }
    env.pop("CLARION_DATABASE_URL", None)
    if database_url is not None:
        from tests.conftest import SECRET_KEY

        env["CLARION_DATABASE_URL"] = database_url
        env["CLARION_SECRET_KEY"] = SECRET_KEY
    subprocess.run([*CLARION, "migrate"], env=env, check=True, capture_output=True, timeout=60)
    return env


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def environment(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, str]:
    """A deployment on each database in turn."""
    postgres = request.getfixturevalue("postgres_url") if request.param == "postgres" else None
    return _deployment(tmp_path, postgres)


@pytest.fixture
def sqlite_environment(tmp_path: Path) -> dict[str, str]:
    """A deployment on SQLite, for what does not depend on the database."""
    return _deployment(tmp_path, None)


def _base(env: dict[str, str]) -> str:
    return f"http://127.0.0.1:{env['CLARION_PORT']}"


@contextmanager
def _process(env: dict[str, str], role: str, log_name: str) -> Iterator[subprocess.Popen[bytes]]:
    log_path = Path(env["CLARION_DATA_DIR"]).parent / f"{log_name}.log"
    with log_path.open("a") as log:
        process = subprocess.Popen([*CLARION, role], env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            if role == "api":
                _wait_ready(env, process, log_path)
            else:
                _wait_started(process, log_path)
            yield process
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()


def _wait_ready(env: dict[str, str], process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert process.poll() is None, log.read_text()
        try:
            if httpx.get(f"{_base(env)}/readyz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.1)
    raise AssertionError("clarion api did not become ready")


def _wait_started(process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 30
    while '"action": "started"' not in log.read_text():
        assert process.poll() is None, log.read_text()
        assert time.monotonic() < deadline, "the worker did not start"
        time.sleep(0.05)


def _terminate(process: subprocess.Popen[bytes]) -> float:
    """SIGTERM, and how long the process took to exit; it must exit 0."""
    started = time.monotonic()
    process.send_signal(signal.SIGTERM)
    assert process.wait(DRAIN + 10) == 0
    return time.monotonic() - started


def _tenant(env: dict[str, str]) -> dict[str, str]:
    done = subprocess.run(
        [*CLARION, "tenant", "create", "acme", "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    created: dict[str, str] = json.loads(done.stdout)
    return created


def _client(env: dict[str, str], api_key: str) -> httpx.Client:
    return httpx.Client(
        base_url=_base(env), headers={"Authorization": f"Bearer {api_key}"}, timeout=10
    )


def _post(http: httpx.Client, n: int) -> str:
    posted = http.post("/v1/events", json={"type": "t", "recipients": {"users": [f"u{n}"]}})
    assert posted.status_code == 202, posted.text
    event_id: str = posted.json()["id"]
    return event_id


def _reports(http: httpx.Client, ids: list[str]) -> list[dict[str, Any]]:
    return [http.get(f"/v1/events/{event_id}").json() for event_id in ids]


def _wait_routed(http: httpx.Client, ids: list[str], within: float = 30) -> list[dict[str, Any]]:
    deadline = time.monotonic() + within
    while True:
        reports = _reports(http, ids)
        if all(r["state"] == "routed" for r in reports):
            return reports
        assert time.monotonic() < deadline, [r["state"] for r in reports]
        time.sleep(0.1)


def test_the_api_routes_nothing_and_the_worker_serves_no_http(
    environment: dict[str, str],
) -> None:
    env = environment
    tenant = _tenant(env)
    with _process(env, "api", "api") as api, _client(env, tenant["api_key"]) as http:
        ids = [_post(http, n) for n in range(5)]
        time.sleep(1.5)  # several relay intervals: a worker would have routed them by now
        assert {r["state"] for r in _reports(http, ids)} == {"accepted"}

        worker_env = {**env, "CLARION_PORT": str(_free_port())}
        with _process(worker_env, "worker", "worker") as worker:
            reports = _wait_routed(http, ids)
            assert all(r["recipients"]["total"] == 1 for r in reports)
            with pytest.raises(httpx.ConnectError):
                httpx.get(f"{_base(worker_env)}/healthz", timeout=1)
            assert _terminate(worker) < DRAIN + 5
        assert _terminate(api) < DRAIN + 5


def test_several_workers_share_the_work_and_route_each_event_once(
    environment: dict[str, str],
) -> None:
    env = environment
    tenant = _tenant(env)
    with _process(env, "api", "api") as api, _client(env, tenant["api_key"]) as http:
        ids = [_post(http, n % 3) for n in range(30)]
        # Started at once, both hand every unrouted event to their bus at start.
        with _process(env, "worker", "worker-1") as first, _process(env, "worker", "worker-2"):
            more = [_post(http, n % 3) for n in range(30)]
            reports = _wait_routed(http, ids + more)
            assert all(r["recipients"]["total"] == 1 for r in reports)
            for user in ("u0", "u1", "u2"):
                token = http.post(f"/v1/users/{user}/tokens").json()["token"]
                inbox = httpx.get(
                    f"{_base(env)}/v1/me/notifications",
                    params={"limit": 100},
                    headers={"Authorization": f"Bearer {token}"},
                ).json()
                assert len(inbox["items"]) == 20  # one item per event, never two
            assert _terminate(first) < DRAIN + 5
        assert _terminate(api) < DRAIN + 5


def test_sigterm_lets_a_request_in_flight_finish_before_the_api_exits(
    sqlite_environment: dict[str, str],
) -> None:
    env = sqlite_environment
    tenant = _tenant(env)
    with _process(env, "api", "api") as api:
        body = json.dumps({"type": "t", "recipients": {"users": ["ann"]}}).encode()
        with socket.create_connection(("127.0.0.1", int(env["CLARION_PORT"])), 5) as conn:
            conn.sendall(
                b"POST /v1/events HTTP/1.1\r\nHost: clarion\r\n"
                + f"Authorization: Bearer {tenant['api_key']}\r\n".encode()
                + b"Content-Type: application/json\r\n"
                + f"Content-Length: {len(body)}\r\n\r\n".encode()
                + body[:10]
            )
            time.sleep(0.5)
            api.send_signal(signal.SIGTERM)
            time.sleep(0.5)
            # New connections are refused while the one in flight is served to the end.
            with pytest.raises(httpx.ConnectError):
                httpx.get(f"{_base(env)}/healthz", timeout=1)
            conn.sendall(body[10:])
            conn.settimeout(5)
            answer = conn.recv(65_536).decode()
        assert answer.startswith("HTTP/1.1 202"), answer
        assert api.wait(DRAIN + 10) == 0


def test_sigterm_stops_a_busy_worker_within_the_grace_period(
    sqlite_environment: dict[str, str],
) -> None:
    env = sqlite_environment
    tenant = _tenant(env)
    with _process(env, "api", "api") as api, _client(env, tenant["api_key"]) as http:
        with _process(env, "worker", "worker") as worker:
            ids = [_post(http, n) for n in range(50)]
            deadline = time.monotonic() + 10
            while not any(r["state"] == "routed" for r in _reports(http, ids[-5:])):
                assert time.monotonic() < deadline
                ids.append(_post(http, len(ids)))
            took = _terminate(worker)  # while it is routing
            assert took < DRAIN + 5
        # Whatever it had not finished is routed by the next worker: nothing is lost.
        with _process(env, "worker", "worker-next"):
            _wait_routed(http, ids)
        assert _terminate(api) < DRAIN + 5


def test_a_worker_with_its_database_down_keeps_retrying_and_still_stops_on_sigterm(
    tmp_path: Path,
) -> None:
    port = _free_port()  # nothing listens there: the database is "down"
    env = {
        **os.environ,
        "CLARION_DATA_DIR": str(tmp_path / "var"),
        "CLARION_DATABASE_URL": f"postgresql://clarion@127.0.0.1:{port}/clarion",
        "CLARION_SECRET_KEY": "a" * 43 + "=",
        "CLARION_WORKER__DRAIN_SECONDS": str(DRAIN),
    }
    with _process(env, "worker", "worker-down") as worker:
        time.sleep(3)
        assert worker.poll() is None, "the worker gave up instead of retrying"
        assert _terminate(worker) < DRAIN + 5
    log = (tmp_path / "worker-down.log").read_text()
    assert "retrying" in log
