"""The issue's rules scenario end to end, through a running server, the APNs and SMTP emulators
and a clock the test moves forward: a rules file with three rules (orders to push and in-app,
security alerts to every channel as critical, comments in-app at once and in an email digest
every 30 minutes) applied with the real `clarion rules apply`; scripted events get exactly the
deliveries the rules say, three comments within the window become ONE email listing them, and
`/v1/rules/test` explains what actually happened."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import sqlalchemy as sa

from clarion.adapters.storage import tables
from tests.integration.test_email_scenarios import smtp_credential
from tests.integration.test_escalation import (
    TOKENS,
    World,
    _until,
    world,
)
from tests.integration.test_rules_routing import _apply
from tests.support import Running, put_apns_credential, running

__all__ = ["world"]  # the fixture, shared with the escalation scenarios

RULES = """
[[rules]]
key = "orders"
event_type = "order.*"
channels = ["push", "websocket"]

[[rules]]
key = "security"
event_type = "security.*"
channels = ["websocket", "push", "email"]
priority = "critical"

[[rules]]
key = "comments"
event_type = "comment.*"
channels = ["websocket"]
digest = { window = 1800, channels = ["email"] }
"""

USERS = ("a", "b")


async def _set_up(
    srv: Running,
    http: httpx.AsyncClient,
    world: World,
    tmp_path: Path,
    *,
    rules: str = RULES,
    count: int = 3,
) -> None:
    await put_apns_credential(srv.clarion, world.tenant_id, world.key_pem)
    ok = (200, 201)
    answer = await http.put("/v1/credentials/email/smtp", json=smtp_credential(world.relay))
    assert answer.status_code in ok, answer.text
    sender = {"provider": "smtp", "sender": "news@example.com"}
    answer = await http.put("/v1/settings", json={"default_locale": "en", "email": sender})
    assert answer.status_code in ok, answer.text
    for user, token in TOKENS.items():
        answer = await http.put(f"/v1/users/{user}", json={"email": f"{user}@example.com"})
        assert answer.status_code in ok, answer.text
        await srv.clarion.devices.register(
            world.tenant_id, user, provider="apns", token=token, app_id=None, keys={}
        )
    path = tmp_path / "rules.toml"
    path.write_text(rules)
    applied = await asyncio.to_thread(_apply, srv, world.tenant_id, path)
    assert applied.returncode == 0, applied.stderr
    assert f"applied {count} rule" in applied.stdout


async def _send(http: Any, body: dict[str, Any]) -> dict[str, Any]:
    accepted = await http.post("/v1/events", json={"recipients": {"users": list(USERS)}, **body})
    assert accepted.status_code == 202, accepted.text
    event_id = accepted.json()["id"]
    report: dict[str, Any] = await _until(
        lambda: _report(http, event_id), lambda r: r["state"] == "routed"
    )
    return report


async def _report(http: Any, event_id: str) -> dict[str, Any]:
    return dict((await http.get(f"/v1/events/{event_id}")).json())


async def _channels(srv: Running, report: dict[str, Any]) -> dict[str, set[str]]:
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


def _mail(world: World, user: str) -> list[dict[str, Any]]:
    return [m for m in world.relay.messages if f"{user}@example.com" in m["rcpt_to"]]


def _pushes(world: World, user: str) -> int:
    return sum(r["token"] == TOKENS[user] for r in world.apns.received)


async def test_the_issues_three_rules_give_exactly_the_expected_deliveries(
    world: World, tmp_path: Path
) -> None:
    async with running(world.settings, clock=world.clock) as srv:
        created = await srv.clarion.tenancy.create_tenant("scenario")
        world.tenant_id, world.api_key = created.tenant_id, created.api_key
        async with httpx.AsyncClient(
            base_url=srv.base_url, headers={"Authorization": f"Bearer {world.api_key}"}, timeout=10
        ) as http:
            await _set_up(srv, http, world, tmp_path)

            order = await _send(http, {"type": "order.created", "title": "Order placed"})
            assert await _channels(srv, order) == {u: {"websocket", "apns"} for u in USERS}
            await _until(
                lambda: asyncio.sleep(0, [_pushes(world, u) for u in USERS]), [1, 1].__eq__
            )
            assert order["notification"]["rule"] == "orders"

            security = await _send(http, {"type": "security.alert", "title": "New login"})
            assert await _channels(srv, security) == {
                u: {"websocket", "apns", "email"} for u in USERS
            }
            assert security["notification"]["priority"] == "critical"
            await _until(
                lambda: asyncio.sleep(0, [len(_mail(world, u)) for u in USERS]), [1, 1].__eq__
            )
            await _until(
                lambda: asyncio.sleep(0, [_pushes(world, u) for u in USERS]), [2, 2].__eq__
            )

            comments = []
            for n in range(3):
                comment = await _send(http, {"type": "comment.created", "title": f"Comment {n}"})
                assert await _channels(srv, comment) == {u: {"websocket"} for u in USERS}
                comments.append(comment)
                world.clock.advance(600)
            # 30 minutes after the first comment less 10 s: the digest is not due yet.
            world.clock.advance(-10)
            await asyncio.sleep(1.5)
            assert [len(_mail(world, u)) for u in USERS] == [1, 1]
            world.clock.advance(15)
            await _until(
                lambda: asyncio.sleep(0, [len(_mail(world, u)) for u in USERS]), [2, 2].__eq__
            )
            await asyncio.sleep(1.5)  # more polls: nothing more goes out
            for user in USERS:
                security_mail, digest = _mail(world, user)
                assert "New login" in security_mail["subject"]
                assert digest["subject"] == "3 new notifications"
                assert digest["text"].split() == [
                    w for n in range(3) for w in ("-", "Comment", str(n))
                ]
            assert [_pushes(world, u) for u in USERS] == [2, 2]  # comments never pushed

            # The digest email rides on the newest comment, audited as the digest.
            recipient = (await http.get(f"/v1/events/{comments[-1]['id']}/recipients/a")).json()
            email = next(d for d in recipient["deliveries"] if d["channel"] == "email")
            assert email["status"] == "sent"
            assert email["trail"][0]["cause"] == "digest"

            # /v1/rules/test answers the rule and channels that actually happened.
            for report, rule in (
                (order, "orders"),
                (security, "security"),
                (comments[0], "comments"),
            ):
                explained = (
                    await http.post(
                        "/v1/rules/test",
                        json={"event": {"type": report["type"]}, "user": {"id": "a"}},
                    )
                ).json()
                assert explained["matched"] == rule
                assert set(explained["channels"]) == (await _channels(srv, report))["a"]
            explained = (
                await http.post(
                    "/v1/rules/test",
                    json={"event": {"type": "comment.created"}, "user": {"id": "a"}},
                )
            ).json()
            assert explained["digest"] == {"window": 1800, "key": None, "channels": ["email"]}
            assert explained["priority"] == "normal"
            security_test = (
                await http.post("/v1/rules/test", json={"event": {"type": "security.alert"}})
            ).json()
            assert security_test["priority"] == "critical"


KEYED_RULES = """
[[rules]]
key = "comments"
event_type = "comment.*"
channels = ["websocket"]
digest = { window = 600, key = "event.data.thread", channels = ["email"] }
"""

DIGEST_TEMPLATE = {
    "channels": {
        "email": {
            "en": {
                "subject": "{{ digest.count }} comments on {{ event.data.thread }}",
                "text": "{% for e in digest.entries %}{{ e.title }};{% endfor %}",
            }
        }
    }
}


async def test_a_keyed_digest_renders_its_template_and_leaves_out_what_was_read(
    world: World, tmp_path: Path
) -> None:
    async with running(world.settings, clock=world.clock) as srv:
        created = await srv.clarion.tenancy.create_tenant("keyed")
        world.tenant_id, world.api_key = created.tenant_id, created.api_key
        async with httpx.AsyncClient(
            base_url=srv.base_url, headers={"Authorization": f"Bearer {world.api_key}"}, timeout=10
        ) as http:
            await _set_up(srv, http, world, tmp_path, rules=KEYED_RULES, count=1)
            answer = await http.put("/v1/templates/digest:comments", json=DIGEST_TEMPLATE)
            assert answer.status_code in (200, 201), answer.text
            sent = []
            for title, thread in (("x1", "x"), ("y1", "y"), ("x2", "x"), ("x3", "x")):
                sent.append(
                    await _send(
                        http,
                        {"type": "comment.created", "title": title, "data": {"thread": thread}},
                    )
                )
            # a reads "x2" in the app before the digest goes out; b does not.
            token = (await http.post("/v1/users/a/tokens")).json()["token"]
            async with httpx.AsyncClient(
                base_url=srv.base_url, headers={"Authorization": f"Bearer {token}"}, timeout=10
            ) as me:
                items = (await me.get("/v1/me/notifications")).json()["items"]
                x2 = next(i for i in items if i["title"] == "x2")
                assert (await me.post(f"/v1/me/notifications/{x2['id']}/read")).status_code == 200
            world.clock.advance(605)
            await _until(
                lambda: asyncio.sleep(0, [len(_mail(world, u)) for u in USERS]), [2, 2].__eq__
            )
            await asyncio.sleep(1.5)
            by_subject = {
                u: {m["subject"]: m["text"].strip() for m in _mail(world, u)} for u in USERS
            }
            assert by_subject == {
                "a": {"2 comments on x": "x1;x3;", "1 comments on y": "y1;"},
                "b": {"3 comments on x": "x1;x2;x3;", "1 comments on y": "y1;"},
            }
