"""One-click unsubscribe over a real socket: POST unsubscribes, GET only asks, and only links
this server signed for that very user and tenant work."""

from __future__ import annotations

from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import httpx
import pytest

from clarion.settings import Settings
from tests.support import Running, Tenant, running, tenant_client

PUBLIC = "https://notify.example"
ONE_CLICK = {"List-Unsubscribe": "One-Click"}


@pytest.fixture
async def srv(settings: Settings) -> AsyncIterator[Running]:
    email = settings.email.model_copy(
        update={"public_url": PUBLIC, "unsubscribe_mailto": "unsubscribe@notify.example"}
    )
    async with running(settings.model_copy(update={"email": email})) as server:
        yield server


def _path(srv: Running, tenant: Tenant, user: str, category: str | None) -> str:
    link = srv.clarion.unsubscribing.link(tenant.id, user, category)
    assert link.url.startswith(f"{PUBLIC}/v1/unsubscribe/u1.")
    assert link.mailto is not None
    assert link.mailto.startswith("mailto:unsubscribe@")
    return urlsplit(link.url).path


async def _email_status(srv: Running, tenant: Tenant, user: str) -> str:
    record = await srv.clarion.store.get_user(tenant.id, user)
    assert record is not None
    return record.email_status


async def _email_switch(srv: Running, tenant: Tenant, user: str, category: str) -> bool | None:
    record = await srv.clarion.store.get_user(tenant.id, user)
    assert record is not None
    stored = await srv.clarion.store.preferences(tenant.id, record.id)
    return stored["category"].get(category, {}).get("email")


async def test_a_one_click_post_opts_the_user_out_of_the_category(srv: Running) -> None:
    async with tenant_client(srv) as tenant, httpx.AsyncClient(base_url=srv.base_url) as anon:
        await tenant.http.put("/v1/users/ann", json={"email": "ann@example.com"})
        path = _path(srv, tenant, "ann", "billing")
        answer = await anon.post(path, data=ONE_CLICK)
        assert answer.status_code == 200, answer.text
        assert answer.headers["content-type"].startswith("text/plain")
        assert "billing" in answer.text
        assert answer.headers["cache-control"] == "no-store"
        assert await _email_switch(srv, tenant, "ann", "billing") is False
        assert await _email_status(srv, tenant, "ann") == "subscribed"
        again = await anon.post(path, data=ONE_CLICK)
        assert again.status_code == 200
        assert await _email_switch(srv, tenant, "ann", "billing") is False


async def test_multipart_one_click_is_taken_too(srv: Running) -> None:
    async with tenant_client(srv) as tenant, httpx.AsyncClient(base_url=srv.base_url) as anon:
        await tenant.http.put("/v1/users/ann", json={"email": "ann@example.com"})
        path = _path(srv, tenant, "ann", "news")
        answer = await anon.post(path, files={"List-Unsubscribe": (None, "One-Click")})
        assert answer.status_code == 200, answer.text
        assert await _email_switch(srv, tenant, "ann", "news") is False


async def test_a_link_without_category_unsubscribes_from_all_email(srv: Running) -> None:
    async with tenant_client(srv) as tenant, httpx.AsyncClient(base_url=srv.base_url) as anon:
        await tenant.http.put("/v1/users/ann", json={"email": "ann@example.com"})
        path = _path(srv, tenant, "ann", None)
        assert (await anon.post(path, data=ONE_CLICK)).status_code == 200
        assert await _email_status(srv, tenant, "ann") == "unsubscribed"
        assert (await anon.post(path, data=ONE_CLICK)).status_code == 200
        assert await _email_status(srv, tenant, "ann") == "unsubscribed"


async def test_the_other_switches_of_the_category_are_kept(srv: Running) -> None:
    async with tenant_client(srv) as tenant, httpx.AsyncClient(base_url=srv.base_url) as anon:
        await tenant.http.put("/v1/users/ann", json={"email": "ann@example.com"})
        record = await srv.clarion.store.get_user(tenant.id, "ann")
        assert record is not None
        await srv.clarion.store.put_preferences(
            tenant.id, record.id, "category", "billing", {"apns": False}, record.updated_at
        )
        assert (await anon.post(_path(srv, tenant, "ann", "billing"))).status_code == 200
        stored = await srv.clarion.store.preferences(tenant.id, record.id)
        assert stored["category"]["billing"] == {"apns": False, "email": False}


async def test_a_get_shows_a_form_and_unsubscribes_nobody(srv: Running) -> None:
    async with tenant_client(srv) as tenant, httpx.AsyncClient(base_url=srv.base_url) as anon:
        await tenant.http.put("/v1/users/ann", json={"email": "ann@example.com"})
        path = _path(srv, tenant, "ann", "<b>billing</b>")
        page = await anon.get(path, headers={"Accept": "text/html"})
        assert page.status_code == 200
        assert page.headers["content-type"].startswith("text/html")
        assert '<form method="post"' in page.text
        assert 'name="List-Unsubscribe" value="One-Click"' in page.text
        assert "<b>billing</b>" not in page.text  # escaped
        assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
        assert page.headers["referrer-policy"] == "no-referrer"
        assert (await anon.get(path)).status_code == 200
        assert await _email_switch(srv, tenant, "ann", "<b>billing</b>") is None
        assert await _email_status(srv, tenant, "ann") == "subscribed"


async def test_altered_foreign_and_forged_tokens_are_refused(srv: Running) -> None:
    async with (
        tenant_client(srv) as tenant,
        tenant_client(srv) as other,
        httpx.AsyncClient(base_url=srv.base_url) as anon,
    ):
        for t in (tenant, other):
            await t.http.put("/v1/users/ann", json={"email": "ann@example.com"})
            await t.http.put("/v1/users/bob", json={"email": "bob@example.com"})
        path = _path(srv, tenant, "ann", "billing")
        prefix, payload, tag = path.rsplit("/", 1)[1].split(".")
        flipped = tag[:-2] + ("AA" if tag[-2:] != "AA" else "BA")
        bob_payload = _path(srv, tenant, "bob", "billing").rsplit("/", 1)[1].split(".")[1]
        other_tag = _path(srv, other, "ann", "billing").rsplit("/", 1)[1].split(".")[2]
        other_payload = _path(srv, other, "ann", "billing").rsplit("/", 1)[1].split(".")[1]
        refused = [
            f"{prefix}.{payload}.{flipped}",  # altered tag
            f"{prefix}.{bob_payload}.{tag}",  # ann's tag on bob's claim
            f"{prefix}.{other_payload}.{tag}",  # this tenant's tag on another tenant's claim
            f"{prefix}.{payload}.{other_tag}",  # another tenant's tag on this tenant's claim
            "u1.AAAA.AAAAAAAAAAAAAAAAAAAAAA",
            "nonsense",
        ]
        for token in refused:
            for method in ("GET", "POST"):
                answer = await anon.request(method, f"/v1/unsubscribe/{token}", data=ONE_CLICK)
                assert answer.status_code == 404, (token, method, answer.text)
                assert answer.json()["error"]["code"] == "unknown_unsubscribe_link"
        html = await anon.get(f"/v1/unsubscribe/{refused[0]}", headers={"Accept": "text/html"})
        assert html.status_code == 404
        assert html.headers["content-type"].startswith("text/html")
        for t in (tenant, other):
            for user in ("ann", "bob"):
                assert await _email_switch(srv, t, user, "billing") is None
        # The genuine link still works, and only for its own user and tenant.
        assert (await anon.post(path, data=ONE_CLICK)).status_code == 200
        assert await _email_switch(srv, tenant, "ann", "billing") is False
        assert await _email_switch(srv, tenant, "bob", "billing") is None
        assert await _email_switch(srv, other, "ann", "billing") is None


async def test_a_link_for_a_deleted_user_is_refused(srv: Running) -> None:
    async with tenant_client(srv) as tenant, httpx.AsyncClient(base_url=srv.base_url) as anon:
        await tenant.http.put("/v1/users/ann", json={"email": "ann@example.com"})
        path = _path(srv, tenant, "ann", "billing")
        assert (await tenant.http.delete("/v1/users/ann")).status_code in (200, 204)
        assert (await anon.post(path, data=ONE_CLICK)).status_code == 404
