"""In-app content from the tenant's `inbox` templates, through a running server: rendered at
routing once per recipient locale, read back by each user in their own language."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx

from tests.support import Running, Tenant

TEMPLATES = {
    "channels": {
        "inbox": {
            "en": {
                "title": "Order {{ event.data.order }} shipped",
                "body": "Your {{ event.data.item }} is on its way ({{ user.locale or 'none' }}).",
            },
            "de": {
                "title": "Bestellung {{ event.data.order }} versandt",
                "body": "Ihr {{ event.data.item }} ist unterwegs.",
            },
        }
    }
}


async def _me(srv: Running, t: Tenant, user: str) -> httpx.AsyncClient:
    token = (await t.http.post(f"/v1/users/{user}/tokens")).json()["token"]
    return httpx.AsyncClient(
        base_url=srv.base_url, headers={"Authorization": f"Bearer {token}"}, timeout=10
    )


async def _routed(t: Tenant, event_id: str) -> None:
    for _ in range(300):
        if (await t.http.get(f"/v1/events/{event_id}")).json()["state"] == "routed":
            return
        await asyncio.sleep(0.02)
    raise AssertionError("not routed")


async def _post(t: Tenant, **body: Any) -> str:
    response = await t.http.post("/v1/events", json=body)
    assert response.status_code == 202, response.text
    event_id = str(response.json()["id"])
    await _routed(t, event_id)
    return event_id


async def _inbox(srv: Running, t: Tenant, user: str) -> dict[str, tuple[str, str]]:
    async with await _me(srv, t, user) as me:
        response = await me.get("/v1/me/notifications")
    assert response.status_code == 200, response.text
    return {i["event_id"]: (i["title"], i["body"]) for i in response.json()["items"]}


async def test_inbox_items_are_rendered_in_each_users_locale(
    server: Running, tenant: Tenant
) -> None:
    t = tenant
    saved = await t.http.put("/v1/templates/order.shipped", json=TEMPLATES)
    assert saved.status_code in (200, 201), saved.text
    for user, locale in (("anna", "de-AT"), ("ed", "en")):
        made = await t.http.put(f"/v1/users/{user}", json={"locale": locale})
        assert made.status_code in (200, 201), made.text
    await t.http.put("/v1/users/nolo", json={})
    everyone = ["anna", "ed", "nolo", "newcomer"]  # newcomer is created by routing
    shipped = await _post(
        t,
        type="order.shipped",
        title="raw title",
        body="raw body",
        data={"order": "A-17", "item": "Kaffee & <Tee>"},
        recipients={"users": everyone},
    )
    other = await _post(
        t, type="order.paid", title="paid", body="thanks", recipients={"users": everyone}
    )

    anna = await _inbox(server, t, "anna")
    assert anna[shipped] == ("Bestellung A-17 versandt", "Ihr Kaffee & <Tee> ist unterwegs.")
    assert anna[other] == ("paid", "thanks")
    ed = await _inbox(server, t, "ed")
    assert ed[shipped] == ("Order A-17 shipped", "Your Kaffee & <Tee> is on its way (en).")
    assert ed[other] == ("paid", "thanks")
    for user in ("nolo", "newcomer"):  # no locale: the tenant's default, en
        items = await _inbox(server, t, user)
        assert items[shipped] == (
            "Order A-17 shipped",
            "Your Kaffee & <Tee> is on its way (none).",
        )
        assert items[other] == ("paid", "thanks")


async def test_a_failing_inbox_template_keeps_the_notifications_own_text(
    server: Running, tenant: Tenant
) -> None:
    t = tenant
    broken = {"channels": {"inbox": {"en": {"title": "{{ event.data.missing }}", "body": "x"}}}}
    saved = await t.http.put("/v1/templates/order.shipped", json=broken)
    assert saved.status_code in (200, 201), saved.text
    shipped = await _post(
        t, type="order.shipped", title="own", body="text", recipients={"users": ["ed"]}
    )
    assert (await _inbox(server, t, "ed"))[shipped] == ("own", "text")
