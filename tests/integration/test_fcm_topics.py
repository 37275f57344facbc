"""FCM topic sends end to end: a running Clarion (API and worker) with FCM enabled, against the
FCM emulator over TLS, on SQLite and PostgreSQL. Groups mapped to an FCM topic get one send
to the topic instead of one send per member's Android device."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from clarion.domain import retrying
from clarion.emulators.fcm import FcmEmulator
from clarion.settings import FcmSettings, Settings
from tests.support import Running, Tenant, running, tenant_client

GOOGLE_TOKEN_URI = "https://oauth2.googleapis.com/token"
ANDROID_APP = "com.example.android"


def fcm_token() -> str:
    return f"{secrets.token_urlsafe(11)}:APA91b{secrets.token_urlsafe(100)}"


@pytest.fixture
async def service() -> AsyncIterator[FcmEmulator]:
    emu = FcmEmulator(tls=True)
    await emu.start()
    yield emu
    await emu.stop()


@pytest.fixture
async def server(
    settings: Settings,
    service: FcmEmulator,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> AsyncIterator[Running]:
    monkeypatch.setattr(retrying, "BASE_DELAY_SECONDS", 0.1)
    monkeypatch.setattr(retrying, "MAX_DELAY_SECONDS", 0.2)
    assert service.certificate_pem is not None
    ca = tmp_path / "fcm-emulator.pem"
    ca.write_bytes(service.certificate_pem)
    configured = settings.model_copy(
        update={
            "fcm": FcmSettings(
                enabled=True, base_url=service.base_url, token_url=service.token_url, ca_file=ca
            )
        }
    )
    async with running(configured) as srv:
        yield srv


@pytest.fixture
async def tenant(server: Running, service: FcmEmulator) -> AsyncIterator[Tenant]:
    async with tenant_client(server) as t:
        account = service.create_service_account(
            f"clarion-{secrets.token_hex(4)}", token_uri=GOOGLE_TOKEN_URI
        )
        await server.clarion.credentials.put_fcm(t.id, "main", service_account=account)
        yield t


async def _android(server: Running, tenant: Tenant, users: list[str]) -> dict[str, str]:
    tokens = {user: fcm_token() for user in users}
    for user, token in tokens.items():
        await server.clarion.devices.register(
            tenant.id, user, provider="fcm", token=token, app_id=ANDROID_APP, keys={}
        )
    return tokens


async def _group(tenant: Tenant, key: str, members: list[str], **fields: Any) -> dict[str, Any]:
    response = await tenant.http.put(f"/v1/groups/{key}", json=fields)
    assert response.status_code in (200, 201), response.text
    for user in members:
        added = await tenant.http.put(f"/v1/groups/{key}/members/{user}")
        assert added.status_code in (200, 201), added.text
    body: dict[str, Any] = response.json()
    return body


async def _event(tenant: Tenant, title: str, **recipients: list[str]) -> str:
    response = await tenant.http.post(
        "/v1/events",
        json={
            "type": "news",
            "recipients": recipients,
            "title": title,
            "body": "b",
            "data": {"article": "42"},
            "channels": ["fcm"],
        },
    )
    assert response.status_code == 202, response.text
    event_id: str = response.json()["id"]
    return event_id


async def _report_when(
    tenant: Tenant, event_id: str, done: Callable[[dict[str, Any]], bool]
) -> dict[str, Any]:
    deadline = time.monotonic() + 30
    report: dict[str, Any] = {}
    while time.monotonic() < deadline:
        response = await tenant.http.get(f"/v1/events/{event_id}")
        assert response.status_code == 200, response.text
        report = response.json()
        if done(report):
            return report
        await asyncio.sleep(0.1)
    raise AssertionError(f"the event never settled: {report}")


def _fcm_settled(expected_fcm: int, topics: int) -> Callable[[dict[str, Any]], bool]:
    def done(report: dict[str, Any]) -> bool:
        fcm = report["channels"].get("fcm", {"total": 0, "by_status": {}})
        sent = fcm["by_status"].get("sent", 0)
        return (
            report["state"] == "routed"
            and fcm["total"] == expected_fcm
            and sent == expected_fcm
            and len(report["topics"]) == topics
            and all(t["status"] == "sent" for t in report["topics"])
        )

    return done


def _to_tokens(service: FcmEmulator, tokens: set[str]) -> list[dict[str, Any]]:
    return [r for r in service.received if r["token"] in tokens]


def _to_topic(service: FcmEmulator, topic: str) -> list[dict[str, Any]]:
    return [r for r in service.received if r["topic"] == topic]


async def test_a_group_mapped_to_a_topic_gets_one_topic_send_instead_of_one_per_device(
    server: Running, tenant: Tenant, service: FcmEmulator
) -> None:
    topic = f"fans-{secrets.token_hex(4)}"
    members = [f"fan{n}" for n in range(50)]
    member_tokens = await _android(server, tenant, members)
    solo_token = (await _android(server, tenant, ["solo"]))["solo"]
    group = await _group(tenant, "fans", members, name="Fans", fcm_topic=topic)
    assert group["fcm_topic"] == topic
    shown = (await tenant.http.get("/v1/groups/fans")).json()
    assert (shown["fcm_topic"], shown["members"]) == (topic, 50)

    event_id = await _event(tenant, "kick-off", groups=["fans"], users=["solo"])
    report = await _report_when(tenant, event_id, _fcm_settled(expected_fcm=1, topics=1))

    [to_topic] = _to_topic(service, topic)
    assert to_topic["message"] == {
        "topic": topic,
        "notification": {"title": "kick-off", "body": "b"},
        "data": {"article": "42"},
    }
    assert _to_tokens(service, set(member_tokens.values())) == []
    [to_solo] = _to_tokens(service, {solo_token})
    assert to_solo["message"]["notification"]["title"] == "kick-off"
    [sent] = report["topics"]
    assert sent["topic"] == topic
    assert sent["group"] == "fans"
    assert sent["channel"] == "fcm"
    assert sent["status"] == "sent"
    assert sent["attempts"] == 1
    assert sent["reference"] == to_topic["name"]
    assert sent["reference"].startswith("projects/")
    assert sent["error"] is None
    # Every member still has the notification in their inbox.
    assert report["recipients"]["total"] == 51


async def test_a_503_on_the_topic_is_retried_and_ends_sent(
    server: Running, tenant: Tenant, service: FcmEmulator
) -> None:
    topic = f"alerts-{secrets.token_hex(4)}"
    await _android(server, tenant, ["a", "b"])
    await _group(tenant, "alerts", ["a", "b"], fcm_topic=topic)
    service.script("UNAVAILABLE", target=topic, count=1)
    event_id = await _event(tenant, "storm", groups=["alerts"])
    report = await _report_when(tenant, event_id, _fcm_settled(expected_fcm=0, topics=1))
    attempts = [a for a in service.attempts if a["target"] == topic]
    assert [a["status"] for a in attempts] == [503, 200]
    [shown] = report["topics"]
    assert shown["attempts"] == 2
    assert shown["reference"] == _to_topic(service, topic)[0]["name"]


async def test_unmapping_the_group_returns_to_per_device_sends(
    server: Running, tenant: Tenant, service: FcmEmulator
) -> None:
    topic = f"club-{secrets.token_hex(4)}"
    members = [f"m{n}" for n in range(5)]
    tokens = await _android(server, tenant, members)
    await _group(tenant, "club", members, fcm_topic=topic)
    first = await _event(tenant, "mapped", groups=["club"])
    await _report_when(tenant, first, _fcm_settled(expected_fcm=0, topics=1))

    unmapped = await _group(tenant, "club", [], fcm_topic=None)
    assert unmapped["fcm_topic"] is None
    second = await _event(tenant, "unmapped", groups=["club"])
    report = await _report_when(tenant, second, _fcm_settled(expected_fcm=5, topics=0))
    assert report["topics"] == []
    assert len(_to_topic(service, topic)) == 1
    received = _to_tokens(service, set(tokens.values()))
    assert sorted(r["token"] for r in received) == sorted(tokens.values())
    assert {r["message"]["notification"]["title"] for r in received} == {"unmapped"}


async def test_a_community_mapped_to_a_topic_covers_its_groups_members(
    server: Running, tenant: Tenant, service: FcmEmulator
) -> None:
    topic = f"town-{secrets.token_hex(4)}"
    tokens = await _android(server, tenant, ["mayor", "ann", "bob", "out"])
    await _group(tenant, "town", ["mayor"], kind="community", fcm_topic=topic)
    await _group(tenant, "red", ["ann", "bob"], community="town")
    await _group(tenant, "other", ["out"])
    event_id = await _event(tenant, "fair", communities=["town"], groups=["other"])
    await _report_when(tenant, event_id, _fcm_settled(expected_fcm=1, topics=1))
    assert len(_to_topic(service, topic)) == 1
    [only] = _to_tokens(service, set(tokens.values()))
    assert only["token"] == tokens["out"]


@pytest.mark.parametrize(
    "topic",
    ["", "has space", "slash/es", "ünïcode", "x" * 901, 42, "/topics/news"],
)
async def test_a_topic_name_fcm_would_refuse_gets_422(sqlite_server: Running, topic: Any) -> None:
    async with tenant_client(sqlite_server) as t:
        response = await t.http.put("/v1/groups/fans", json={"fcm_topic": topic})
        assert response.status_code == 422, response.text
        error = response.json()["error"]
        assert error["code"] == "invalid_request"
        assert "body.fcm_topic" in [f["field"] for f in error["details"]["fields"]]
        assert (await t.http.get("/v1/groups/fans")).status_code == 404


async def test_every_name_fcm_allows_is_kept(sqlite_server: Running) -> None:
    async with tenant_client(sqlite_server) as t:
        name = "Az09-_.~%" + "x" * 891
        response = await t.http.put(
            "/v1/groups/town", json={"kind": "community", "fcm_topic": name}
        )
        assert response.status_code == 201, response.text
        assert response.json()["fcm_topic"] == name
        # A PUT replaces the group: leaving the topic out removes the mapping, as null does.
        response = await t.http.put("/v1/groups/town", json={"kind": "community"})
        assert (response.status_code, response.json()["fcm_topic"]) == (200, None)


async def test_a_topic_send_needs_the_default_credential_and_the_topic_payload_limit(
    server: Running, service: FcmEmulator
) -> None:
    async with tenant_client(server) as t:
        account = service.create_service_account(
            f"clarion-{secrets.token_hex(4)}", token_uri=GOOGLE_TOKEN_URI
        )
        # Only a credential for one app: device sends have one, topic sends do not.
        await server.clarion.credentials.put_fcm(
            t.id, "android", service_account=account, app_id=ANDROID_APP
        )
        topic = f"no-default-{secrets.token_hex(4)}"
        await _group(t, "fans", [], fcm_topic=topic)
        event_id = await _event(t, "nobody hears", groups=["fans"])
        report = await _report_when(
            t, event_id, lambda r: any(x["status"] == "failed" for x in r["topics"])
        )
        [failed] = report["topics"]
        assert failed["error"].startswith("no default FCM credential")

        await server.clarion.credentials.put_fcm(t.id, "main", service_account=account)
        big = await t.http.post(
            "/v1/events",
            json={
                "type": "news",
                "recipients": {"groups": ["fans"]},
                "title": "big",
                "data": {"blob": "x" * 3000},  # under a token's 4096, over a topic's 2048
                "channels": ["fcm"],
            },
        )
        assert big.status_code == 202, big.text
        report = await _report_when(
            t, big.json()["id"], lambda r: any(x["status"] == "failed" for x in r["topics"])
        )
        [too_big] = report["topics"]
        assert "takes at most 2048" in too_big["error"]
        assert _to_topic(service, topic) == []
