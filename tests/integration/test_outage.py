"""A database outage under load, for real: Clarion talks to PostgreSQL through a TCP proxy of
our own, which the test cuts (every connection reset, new ones refused) and restores.

While it is cut the API answers 503 `unavailable` with `Retry-After` within 5 s, never a 500
and never a hang; afterwards requests succeed again without a restart, and every event the API
accepted, before, during (an answer lost with its connection) or after the cut, is routed.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from sqlalchemy.engine import make_url

from clarion import bootstrap
from clarion.domain.notifications import EVENTS_STREAM
from clarion.entrypoints.server import serve
from clarion.settings import Settings, WorkerSettings
from tests.conftest import SECRET_KEY
from tests.proxy import TcpProxy, proxied
from tests.support import Tenant, running, tenant_client

pytestmark = pytest.mark.postgres

BOUND = 5.0  # seconds within which every answer must come, cut or not


@dataclass
class Load:
    """A producer posting events with Idempotency-Keys, retrying each until it is accepted,
    and a reader; it records every answer."""

    tenant: Tenant
    accepted: dict[str, str] = field(default_factory=dict)
    answers: list[tuple[str, int, float, httpx.Headers, dict[str, object]]] = field(
        default_factory=list
    )
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def _call(self, what: str, request: httpx.Request) -> httpx.Response:
        loop = asyncio.get_running_loop()
        started = loop.time()
        response = await self.tenant.http.send(request)
        took = loop.time() - started
        body = response.json() if response.content else {}
        self.answers.append((what, response.status_code, took, response.headers, body))
        return response

    async def produce(self) -> None:
        for n in itertools.count():
            if self.stop.is_set():
                return
            key = f"load-{n}"
            event = {"type": "load", "recipients": {"users": [f"u{n % 7}"]}, "title": key}
            while True:  # the same key until accepted: a 503 may hide a commit
                request = self.tenant.http.build_request(
                    "POST", "/v1/events", json=event, headers={"Idempotency-Key": key}
                )
                response = await self._call("post", request)
                if response.status_code == 202:
                    self.accepted[key] = response.json()["id"]
                    break
                await asyncio.sleep(0.1)
            await asyncio.sleep(0.02)

    async def read(self) -> None:
        while not self.stop.is_set():
            if self.accepted:
                event_id = next(iter(self.accepted.values()))
                request = self.tenant.http.build_request("GET", f"/v1/events/{event_id}")
                await self._call("get", request)
            await asyncio.sleep(0.05)


def _through(proxy: TcpProxy, url: str) -> str:
    return make_url(url).set(host="127.0.0.1", port=proxy.port).render_as_string(False)


async def _expect_unavailable(
    http: httpx.AsyncClient, method: str, path: str, **kw: object
) -> None:
    loop = asyncio.get_running_loop()
    started = loop.time()
    response = await http.request(method, path, **kw)  # type: ignore[arg-type]
    assert loop.time() - started < BOUND, f"{method} {path} took too long"
    assert response.status_code == 503, response.text
    assert int(response.headers["Retry-After"]) >= 1
    if path != "/readyz":
        assert response.json()["error"]["code"] == "unavailable"


async def _routed(http: httpx.AsyncClient, ids: list[str], within: float) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    waiting = set(ids)
    while waiting and loop.time() < deadline:
        for event_id in list(waiting):
            report = (await http.get(f"/v1/events/{event_id}")).json()
            if report["state"] == "routed" and report["recipients"]["total"] == 1:
                waiting.discard(event_id)
        if waiting:
            await asyncio.sleep(0.2)
    assert not waiting, f"{len(waiting)} of {len(ids)} accepted events were never routed"


async def _outage(postgres_url: str, tmp_path: Path, cut_for: float) -> None:
    upstream = make_url(postgres_url)
    async with proxied(upstream.host or "127.0.0.1", upstream.port or 5432) as proxy:
        settings = Settings(
            data_dir=tmp_path / "var",
            database_url=_through(proxy, postgres_url),
            secret_key=SECRET_KEY,
            port=0,
            worker=WorkerSettings(redeliver_after_seconds=2.0),
        )
        async with running(settings) as srv, tenant_client(srv) as tenant:
            load = Load(tenant)
            workers = [asyncio.create_task(load.produce()), asyncio.create_task(load.read())]
            await asyncio.sleep(1.0)
            before = len(load.accepted)
            assert before > 0

            await proxy.cut()
            loop = asyncio.get_running_loop()
            cut_at = loop.time()
            event = {"type": "probe", "recipients": {"users": ["p"]}}
            await _expect_unavailable(tenant.http, "POST", "/v1/events", json=event)
            await _expect_unavailable(tenant.http, "GET", "/v1/events/00000000-0000-0000-0000-0")
            await _expect_unavailable(tenant.http, "GET", "/readyz")
            await asyncio.sleep(max(0.0, cut_for - (loop.time() - cut_at)))
            during = len(load.accepted)

            await proxy.restore()
            restored_at = loop.time()
            while len(load.accepted) == during:  # the producer gets through again by itself
                assert loop.time() - restored_at < 10, "the API did not recover"
                await asyncio.sleep(0.05)
            ready = await tenant.http.get("/readyz")
            assert ready.status_code == 200
            await asyncio.sleep(1.0)
            load.stop.set()
            await asyncio.gather(*workers)

            statuses = {status for _, status, _, _, _ in load.answers}
            assert statuses <= {200, 202, 503}, statuses
            assert 503 in statuses
            for what, status, took, headers, body in load.answers:
                assert took < BOUND, (what, status, took)
                if status == 503:
                    assert body["error"]["code"] == "unavailable", body  # type: ignore[index]
                    assert int(headers["Retry-After"]) >= 1

            # Nothing accepted is lost: every key has one event, and every event is routed.
            assert len(load.accepted) > during >= before
            assert len(set(load.accepted.values())) == len(load.accepted)
            await _routed(tenant.http, list(load.accepted.values()), within=30)


async def test_a_short_database_outage_is_a_503_with_retry_after_and_loses_nothing(
    postgres_url: str, tmp_path: Path
) -> None:
    await _outage(postgres_url, tmp_path, cut_for=3.0)


@pytest.mark.slow
async def test_a_twenty_second_database_outage_under_load_loses_nothing(
    postgres_url: str, tmp_path: Path
) -> None:
    await _outage(postgres_url, tmp_path, cut_for=20.0)


@contextlib.asynccontextmanager
async def _role(settings: Settings, *, api: bool) -> AsyncIterator[tuple[bootstrap.Clarion, str]]:
    """`clarion api` (api=True) or `clarion worker` (api=False), in this process."""
    clarion = bootstrap.build(settings)
    stop = asyncio.Event()
    port: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(
        serve(clarion, api=api, worker=not api, stop=stop, on_listening=port.set_result)
    )
    try:
        base_url = f"http://127.0.0.1:{await asyncio.wait_for(port, 10)}" if api else ""
        yield clarion, base_url
    finally:
        stop.set()
        await asyncio.wait_for(task, settings.worker.drain_seconds + 5)


async def test_a_worker_started_during_an_outage_routes_everything_once_the_database_is_back(
    postgres_url: str, tmp_path: Path
) -> None:
    upstream = make_url(postgres_url)
    async with proxied(upstream.host or "127.0.0.1", upstream.port or 5432) as proxy:
        settings = Settings(
            data_dir=tmp_path / "var",
            database_url=_through(proxy, postgres_url),
            secret_key=SECRET_KEY,
            port=0,
            # No sweep during the test: what routes the events held on the bus during the
            # outage is the routers' own patience, not a later redelivery.
            worker=WorkerSettings(redeliver_after_seconds=600.0, drain_seconds=2.0),
        )
        async with _role(settings, api=True) as (api, base_url):
            created = await api.tenancy.create_tenant("outage")
            async with httpx.AsyncClient(
                base_url=base_url, headers={"Authorization": f"Bearer {created.api_key}"}
            ) as http:
                ids = []
                for n in range(20):
                    event = {"type": "t", "recipients": {"users": [f"u{n}"]}}
                    posted = await http.post("/v1/events", json=event)
                    assert posted.status_code == 202
                    ids.append(posted.json()["id"])
                await asyncio.sleep(1.0)
                # An API process routes nothing: no worker runs in it.
                states = {(await http.get(f"/v1/events/{i}")).json()["state"] for i in ids}
                assert states == {"accepted"}

                await proxy.cut()
                async with _role(settings, api=False) as (worker, _):
                    # Messages on the bus when the database went away: the routers take them
                    # and wait for the database instead of failing them.
                    for event_id in ids[:5]:
                        await worker.bus.publish(EVENTS_STREAM, {"event_id": event_id})
                    await asyncio.sleep(2.0)
                    await proxy.restore()
                    await _routed(http, ids, within=30)
