"""A tenant's settings over HTTP: the default locale and the email sender, checked on the way in
and each tenant's own."""

from __future__ import annotations

from typing import Any

from tests.support import Running, Tenant, tenant_client


def _smtp(**changes: Any) -> dict[str, Any]:
    body = {"kind": "smtp", "host": "smtp.example.com", "port": 587, "security": "starttls"}
    return {**body, **changes}


async def test_a_new_tenant_speaks_english_and_sends_no_email(tenant: Tenant) -> None:
    answer = await tenant.http.get("/v1/settings")
    assert answer.status_code == 200, answer.text
    assert answer.json() == {
        "default_locale": "en",
        "email": None,
        "quiet_hours": None,
        "default_timezone": None,
        "enrichment": None,
    }


async def test_settings_are_replaced_as_a_whole_and_read_back_normalised(tenant: Tenant) -> None:
    for name in ("main", "backup"):
        stored = await tenant.http.put(f"/v1/credentials/email/{name}", json=_smtp())
        assert stored.status_code == 201, stored.text
    body = {
        "default_locale": "pt_br",
        "email": {
            "provider": "main",
            "fallback": "backup",
            "sender": "News@Bücher.Example",
            "sender_name": "Bücher News",
            "reply_to": "help@example.com",
        },
    }
    saved = await tenant.http.put("/v1/settings", json=body)
    assert saved.status_code == 200, saved.text
    expected = {
        "default_locale": "pt-BR",
        "email": {
            "provider": "main",
            "fallback": "backup",
            "sender": "News@xn--bcher-kva.example",
            "sender_name": "Bücher News",
            "reply_to": "help@example.com",
        },
        "quiet_hours": None,
        "default_timezone": None,
        "enrichment": None,
    }
    assert saved.json() == expected
    assert (await tenant.http.get("/v1/settings")).json() == expected
    cleared = await tenant.http.put("/v1/settings", json={"default_locale": "de"})
    assert cleared.json() == {
        "default_locale": "de",
        "email": None,
        "quiet_hours": None,
        "default_timezone": None,
        "enrichment": None,
    }


async def test_settings_that_cannot_work_are_refused_and_nothing_changes(tenant: Tenant) -> None:
    assert (await tenant.http.put("/v1/credentials/email/main", json=_smtp())).status_code == 201
    good = {"provider": "main", "sender": "news@example.com"}
    assert (await tenant.http.put("/v1/settings", json={"email": good})).status_code == 200
    refused = [
        ({"default_locale": "not a locale"}, "default_locale"),
        ({"email": {**good, "provider": "nope"}}, "email.provider"),
        ({"email": {**good, "fallback": "main"}}, "email.fallback"),
        ({"email": {**good, "fallback": "other"}}, "email.fallback"),
        ({"email": {**good, "sender": "no-at-sign"}}, "email.sender"),
        ({"email": {**good, "sender": "a b@example.com"}}, "email.sender"),
        ({"email": {**good, "reply_to": "x@@y"}}, "email.reply_to"),
        ({"email": {**good, "sender_name": "Evil\r\nBcc: x@example.com"}}, "email.sender"),
        ({"email": {**good, "unknown": 1}}, "email.unknown"),
    ]
    for body, field in refused:
        answer = await tenant.http.put("/v1/settings", json=body)
        assert answer.status_code == 422, (body, answer.text)
        error = answer.json()["error"]
        assert error["code"] in ("invalid_request", "validation_failed"), answer.text
        assert field.split(".")[-1] in answer.text, (field, answer.text)
    after = (await tenant.http.get("/v1/settings")).json()
    assert after["email"]["provider"] == "main"
    assert after["email"]["sender"] == "news@example.com"


async def test_one_tenant_never_sees_another_s_settings(server: Running, tenant: Tenant) -> None:
    assert (await tenant.http.put("/v1/credentials/email/main", json=_smtp())).status_code == 201
    body = {"email": {"provider": "main", "sender": "news@example.com"}}
    assert (await tenant.http.put("/v1/settings", json=body)).status_code == 200
    async with tenant_client(server) as other:
        assert (await other.http.get("/v1/settings")).json()["email"] is None
        # Its own credential store has no "main": the name does not reach across tenants.
        refused = await other.http.put("/v1/settings", json=body)
        assert refused.status_code == 422
