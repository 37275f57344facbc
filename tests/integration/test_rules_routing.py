"""Routing rules at work, through a running server: a rules file with the issue's three rules
(and one for gold customers) applied with the real `clarion rules apply`, then events that get
exactly the deliveries the rules say, and `/v1/rules/test` explaining what happened."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from clarion.adapters.storage import tables
from clarion.settings import ApnsSettings, EmailSettings, Settings
from tests.support import Running, Tenant, running, tenant_client

RULES = """
[[rules]]
key = "gold-orders"
event_type = "order.shipped"
condition = 'user.attributes.tier == "gold"'
channels = ["push", "email"]
template = "order-gold"
order = -1

[[rules]]
key = "orders"
event_type = "order.*"
channels = ["push", "websocket"]
ttl = 3600

[[rules]]
key = "security"
event_type = "security.*"
channels = ["websocket", "push", "email", "fcm", "wns", "webpush"]
priority = "critical"

[[rules]]
key = "comments"
event_type = "comment.*"
channels = ["websocket"]
digest = { window = 1800, channels = ["email"] }
"""

APNS_TOKEN = "ab" * 32


@pytest.fixture
async def srv(settings: Settings) -> Any:
    # APNs and email on, with no credential: deliveries are created (and later fail), which is
    # all routing decides.
    configured = settings.model_copy(
        update={
            "apns": ApnsSettings(enabled=True),
            "email": EmailSettings(enabled=True, public_url="https://clarion.example"),
        }
    )
    async with running(configured) as running_server:
        yield running_server


def _apply(
    srv: Running, tenant_id: str, path: Path, *extra: str
) -> subprocess.CompletedProcess[str]:
    settings = srv.clarion.settings
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLARION_")}
    env["CLARION_DATA_DIR"] = str(settings.data_dir)
    env["CLARION_SECRET_KEY"] = settings.secret_key or ""
    if settings.database_url:
        env["CLARION_DATABASE_URL"] = settings.database_url
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "clarion",
            "rules",
            "apply",
            str(path),
            "--tenant",
            tenant_id,
            *extra,
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


async def _setup(srv: Running, tenant: Tenant, tmp_path: Path) -> None:
    http = tenant.http
    users = {
        "ann": {"email": "ann@example.com", "attributes": {"tier": "gold"}},
        "bob": {"email": "bob@example.com", "attributes": {"tier": "silver"}},
        "cy": {"email": "cy@example.com"},
    }
    for user, body in users.items():
        assert (await http.put(f"/v1/users/{user}", json=body)).status_code in (200, 201)
    for n, user in enumerate(("ann", "bob")):
        token = f"{n}{APNS_TOKEN[1:]}"
        put = await http.put(f"/v1/users/{user}/devices/{token}", json={"provider": "apns"})
        assert put.status_code in (200, 201), put.text
    path = tmp_path / "rules.toml"
    path.write_text(RULES)
    applied = await asyncio.to_thread(_apply, srv, tenant.id, path)
    assert applied.returncode == 0, applied.stderr
    assert "applied 4 rules" in applied.stdout


async def _send(tenant: Tenant, body: dict[str, Any]) -> dict[str, Any]:
    body = {"recipients": {"users": ["ann", "bob", "cy"]}, **body}
    accepted = await tenant.http.post("/v1/events", json=body)
    assert accepted.status_code == 202, accepted.text
    event_id = accepted.json()["id"]
    for _ in range(200):
        report: dict[str, Any] = (await tenant.http.get(f"/v1/events/{event_id}")).json()
        if report["state"] == "routed":
            return report
        await asyncio.sleep(0.05)
    raise AssertionError(f"event {event_id} was not routed")


async def _sent(srv: Running, report: dict[str, Any]) -> dict[str, set[str]]:
    """Each recipient's channels, from the deliveries routing wrote."""
    d, u = tables.deliveries, tables.users
    async with srv.clarion.store.engine.connect() as conn:
        rows = await conn.execute(
            sa.select(u.c.external_id, d.c.channel)
            .join(u, u.c.id == d.c.user_id)
            .where(d.c.notification_id == report["notification"]["id"])
        )
        found: dict[str, set[str]] = {}
        for row in rows:
            found.setdefault(row.external_id, set()).add(row.channel)
    return found


async def _expiries(srv: Running, report: dict[str, Any]) -> set[float | None]:
    """Seconds from routing to expiry of the report's items and deliveries (None: never)."""
    notification_id = report["notification"]["id"]
    found: set[float | None] = set()
    async with srv.clarion.store.engine.connect() as conn:
        for table in (tables.inbox_items, tables.deliveries):
            rows = await conn.execute(
                sa.select(table.c.created_at, table.c.expires_at).where(
                    table.c.notification_id == notification_id
                )
            )
            found |= {None if e is None else round((e - c).total_seconds()) * 1.0 for c, e in rows}
    return found


async def test_the_rules_file_decides_every_events_deliveries(srv: Running, tmp_path: Path) -> None:
    async with tenant_client(srv) as tenant:
        await _setup(srv, tenant, tmp_path)

        order = await _send(tenant, {"type": "order.created"})
        assert await _sent(srv, order) == {
            "ann": {"websocket", "apns"},
            "bob": {"websocket", "apns"},
            "cy": {"websocket"},  # no device
        }
        assert order["notification"]["rule"] == "orders"
        assert order["notification"]["ttl"] == 3600
        assert order["notification"]["priority"] == "normal"
        # The rule's TTL expires what is still undelivered an hour after routing.
        assert await _expiries(srv, order) == {3600.0}

        security = await _send(tenant, {"type": "security.alert"})
        assert await _sent(srv, security) == {
            "ann": {"websocket", "apns", "email"},
            "bob": {"websocket", "apns", "email"},
            "cy": {"websocket", "email"},
        }
        assert set(security["channels"]) == {"websocket", "apns", "email"}
        assert (security["notification"]["rule"], security["notification"]["priority"]) == (
            "security",
            "critical",
        )

        comment = await _send(tenant, {"type": "comment.created"})
        assert await _sent(srv, comment) == {u: {"websocket"} for u in ("ann", "bob", "cy")}
        assert await _expiries(srv, comment) == {None}
        assert comment["notification"]["rule"] == "comments"

        # An event that names its channels keeps them; the rule still decides the rest.
        named = await _send(tenant, {"type": "security.alert", "channels": ["email"]})
        assert await _sent(srv, named) == {u: {"websocket", "email"} for u in ("ann", "bob", "cy")}
        assert named["notification"]["priority"] == "critical"

        unmatched = await _send(tenant, {"type": "invoice.paid"})
        assert await _sent(srv, unmatched) == {u: {"websocket"} for u in ("ann", "bob", "cy")}
        assert unmatched["notification"]["rule"] is None

        # The /v1/rules/test explanation matches what happened.
        for report, expected in ((order, "orders"), (security, "security"), (comment, "comments")):
            explained = (
                await tenant.http.post(
                    "/v1/rules/test",
                    json={"event": {"type": report["type"]}, "user": {"id": "ann"}},
                )
            ).json()
            assert explained["matched"] == expected
            assert set(explained["channels"]) == (await _sent(srv, report))["ann"]
        comment_test = (
            await tenant.http.post("/v1/rules/test", json={"event": {"type": "comment.created"}})
        ).json()
        assert comment_test["digest"] == {"window": 1800, "key": None, "channels": ["email"]}


async def test_a_condition_on_user_attributes_routes_each_recipient_by_their_own(
    srv: Running, tmp_path: Path
) -> None:
    async with tenant_client(srv) as tenant:
        await _setup(srv, tenant, tmp_path)
        shipped = await _send(tenant, {"type": "order.shipped"})
        assert await _sent(srv, shipped) == {
            "ann": {"websocket", "apns", "email"},  # gold: gold-orders
            "bob": {"websocket", "apns"},  # orders
            "cy": {"websocket"},  # orders, but no device
        }
        # The notification carries the earliest rule that matched anyone.
        assert shipped["notification"]["rule"] == "gold-orders"
        assert shipped["notification"]["template"] == "order-gold"
        for user, rule in (("ann", "gold-orders"), ("bob", "orders"), ("cy", "orders")):
            explained = (
                await tenant.http.post(
                    "/v1/rules/test",
                    json={"event": {"type": "order.shipped"}, "user": {"id": user}},
                )
            ).json()
            assert explained["matched"] == rule
            assert set(explained["channels"]) <= {"websocket", "apns", "email"}
            assert set(explained["channels"]) >= (await _sent(srv, shipped))[user]


async def test_applying_again_with_replace_leaves_only_the_files_rules(
    srv: Running, tmp_path: Path
) -> None:
    async with tenant_client(srv) as tenant:
        await _setup(srv, tenant, tmp_path)
        path = tmp_path / "one.json"
        path.write_text('{"rules": [{"key": "orders", "event_type": "order.*"}]}')
        applied = await asyncio.to_thread(_apply, srv, tenant.id, path, "--replace", "--json")
        assert applied.returncode == 0, applied.stderr
        assert '"deleted": ["comments", "gold-orders", "security"]' in applied.stdout
        listed = (await tenant.http.get("/v1/rules")).json()["rules"]
        assert [r["key"] for r in listed] == ["orders"]

        bad = tmp_path / "bad.json"
        bad.write_text('{"rules": [{"key": "x", "event_type": "a", "channels": ["sms"]}]}')
        refused = await asyncio.to_thread(_apply, srv, tenant.id, bad)
        assert refused.returncode == 1
        assert "invalid_rule" in refused.stderr
        assert "rules[0].channels[0]" in refused.stderr
        assert [r["key"] for r in (await tenant.http.get("/v1/rules")).json()["rules"]] == [
            "orders"
        ]
