"""Templates over HTTP: saved and replaced a set at a time, listed, deleted; checked when saved;
previewed per locale with the tenant's default as fallback, data escaped and the sandbox shut;
and each tenant's own."""

from __future__ import annotations

from typing import Any

import httpx
import sqlalchemy as sa

from clarion.adapters.storage import tables
from tests.support import Running, Tenant, tenant_client

PATH = "/v1/templates/order.shipped"

EMAIL_EN = {
    "subject": "Order {{ event.data.order }} shipped",
    "text": "Hi {{ user.attributes.name | default('there') }}, {{ event.title }}.\n"
    "Unsubscribe: {{ unsubscribe_url }}",
    "html": "<p>Hi {{ event.data.name }}</p><a href='{{ unsubscribe_url }}'>unsubscribe</a>",
}
EMAIL_DE = {"subject": "Bestellung {{ event.data.order }} versandt", "text": "Hallo."}
PUSH_EN = {"title": "Shipped: {{ event.data.order }}", "body": "{{ event.body }}"}


def _document(**channels: Any) -> dict[str, Any]:
    return {"channels": channels}


def _error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error: dict[str, Any] = response.json()["error"]
    assert error["code"] == code, error
    assert error["docs"] == f"docs/api.md#{code}"
    return error


async def _default_locale(srv: Running, tenant_id: str, locale: str) -> None:
    async with srv.clarion.store.engine.begin() as conn:
        await conn.execute(
            sa.update(tables.tenants)
            .where(tables.tenants.c.id == tenant_id)
            .values(default_locale=locale)
        )


async def test_a_template_set_is_stored_read_listed_and_deleted(tenant: Tenant) -> None:
    http = tenant.http
    body = _document(email={"en": EMAIL_EN, "de_de": EMAIL_DE}, push={"EN": PUSH_EN})
    created = await http.put(PATH, json=body)
    assert created.status_code == 201, created.text
    saved = created.json()
    assert saved["key"] == "order.shipped"
    assert saved["subject"] == "event_type"
    assert saved["name"] == "order.shipped"
    # Locales come back normalised; a text-only email has no HTML.
    assert saved["channels"]["email"] == {"en": EMAIL_EN, "de-DE": {**EMAIL_DE, "html": None}}
    assert saved["channels"]["push"] == {"en": PUSH_EN}
    assert saved["channels"]["inbox"] == {}
    assert (await http.get(PATH)).json() == saved

    category = await http.put(
        "/v1/templates/category:billing", json=_document(inbox={"fr": PUSH_EN})
    )
    assert category.status_code == 201, category.text
    assert category.json()["subject"] == "category"
    assert category.json()["name"] == "billing"

    listed = (await http.get("/v1/templates")).json()["templates"]
    assert [(t["key"], t["channels"]) for t in listed] == [
        ("category:billing", {"inbox": ["fr"]}),
        ("order.shipped", {"email": ["de-DE", "en"], "push": ["en"]}),
    ]

    assert (await http.delete(PATH)).status_code == 204
    _error(await http.get(PATH), 404, "not_found")
    _error(await http.delete(PATH), 404, "not_found")
    assert [t["key"] for t in (await http.get("/v1/templates")).json()["templates"]] == [
        "category:billing"
    ]


async def test_a_put_replaces_the_whole_set(tenant: Tenant) -> None:
    http = tenant.http
    first = await http.put(PATH, json=_document(email={"en": EMAIL_EN, "de": EMAIL_DE}))
    assert first.status_code == 201
    second = await http.put(PATH, json=_document(push={"en": PUSH_EN}))
    assert second.status_code == 200, second.text
    stored = (await http.get(PATH)).json()
    assert stored["channels"] == {"email": {}, "push": {"en": PUSH_EN}, "inbox": {}}
    assert stored["created_at"] == first.json()["created_at"]


async def test_a_preview_renders_the_users_locale_else_the_tenants_default(
    server: Running, tenant: Tenant
) -> None:
    http = tenant.http
    await http.put(PATH, json=_document(email={"en": EMAIL_EN, "de": EMAIL_DE}))
    sample = {"event": {"data": {"order": "A-1", "name": "Ann"}, "title": "On its way"}}

    german = await http.post(
        f"{PATH}/preview", json={"channel": "email", "locale": "de-AT", "sample": sample}
    )
    assert german.status_code == 200, german.text
    assert german.json() == {
        "channel": "email",
        "locale": "de",
        "template": "order.shipped",
        "subject": "Bestellung A-1 versandt",
        "text": "Hallo.",
    }

    # No French template: the tenant's default (en) is used, and placeholders fill the rest.
    french = (
        await http.post(
            f"{PATH}/preview", json={"channel": "email", "locale": "fr", "sample": sample}
        )
    ).json()
    assert french["locale"] == "en"
    assert french["subject"] == "Order A-1 shipped"
    assert "Hi there, On its way." in french["text"]
    assert "https://example.invalid/unsubscribe" in french["text"]

    await _default_locale(server, tenant.id, "de")
    fallback = (
        await http.post(
            f"{PATH}/preview", json={"channel": "email", "locale": "fr", "sample": sample}
        )
    ).json()
    assert fallback["locale"] == "de"
    assert fallback["subject"] == "Bestellung A-1 versandt"
    assert (await http.post(f"{PATH}/preview", json={"channel": "email", "sample": sample})).json()[
        "locale"
    ] == "de"

    # A channel without any template, or an unknown key, is not found.
    _error(await http.post(f"{PATH}/preview", json={"channel": "push"}), 404, "not_found")
    _error(
        await http.post("/v1/templates/nothing/preview", json={"channel": "email"}),
        404,
        "not_found",
    )


async def test_a_preview_falls_back_to_the_category_template_like_a_send(tenant: Tenant) -> None:
    http = tenant.http
    await http.put(PATH, json=_document(email={"en": EMAIL_EN}))
    await http.put(
        "/v1/templates/category:orders",
        json=_document(email={"pt-BR": {"subject": "Pedido {{ event.type }}", "text": "."}}),
    )
    preview = (
        await http.post(
            f"{PATH}/preview",
            json={
                "channel": "email",
                "locale": "pt_BR",
                "sample": {"event": {"category": "orders"}},
            },
        )
    ).json()
    # Readable beats specific: the category's Portuguese template, not the event type's English.
    assert preview["template"] == "category:orders"
    assert preview["locale"] == "pt-BR"
    assert preview["subject"] == "Pedido order.shipped"
    category = (
        await http.post(
            "/v1/templates/category:orders/preview",
            json={"channel": "email", "locale": "pt-BR"},
        )
    ).json()
    assert category["template"] == "category:orders"
    assert category["subject"] == "Pedido example.event"


async def test_event_data_is_escaped_in_html_and_sanitised_when_trusted(tenant: Tenant) -> None:
    http = tenant.http
    html = "<p>{{ event.data.name }}</p><div>{{ event.data.bio | trusted_html }}</div>"
    await http.put(PATH, json=_document(email={"en": {"subject": "S", "text": "T", "html": html}}))
    evil = "<script>alert(1)</script>"
    preview = (
        await http.post(
            f"{PATH}/preview",
            json={
                "channel": "email",
                "sample": {
                    "event": {
                        "data": {"name": evil, "bio": '<b onclick="x()">bold</b><script>x</script>'}
                    }
                },
            },
        )
    ).json()
    assert "<script>" not in preview["html"]
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in preview["html"]
    assert "<b>bold</b>" in preview["html"]
    assert "onclick" not in preview["html"]


async def test_a_broken_template_is_refused_naming_the_channel_locale_part_and_line(
    tenant: Tenant,
) -> None:
    http = tenant.http
    broken = {"subject": "S", "text": "ok", "html": "<p>\n<p>\n{% if x %}never closed"}
    error = _error(
        await http.put(PATH, json=_document(email={"en": EMAIL_EN, "de": broken})),
        422,
        "template_error",
    )
    assert error["message"].startswith("email.de.html: ")
    assert error["details"] == {"channel": "email", "locale": "de", "part": "html", "line": 3}
    _error(await http.get(PATH), 404, "not_found")  # nothing was saved

    bad_title = {"title": "{{ event.title", "body": "b"}
    error = _error(
        await http.put(PATH, json=_document(push={"en": bad_title})), 422, "template_error"
    )
    assert error["details"]["part"] == "title"
    assert error["details"]["line"] == 1


async def test_what_cannot_be_a_template_is_refused(tenant: Tenant) -> None:
    http = tenant.http
    cases: list[tuple[str, Any, str]] = [
        (PATH, _document(), "invalid_request"),  # nothing at all
        (PATH, _document(email={"xx-!!": EMAIL_DE}), "invalid_request"),  # no language tag
        (PATH, _document(email={"en-\u0663\u0663\u0663": EMAIL_DE}), "invalid_request"),
        (PATH, _document(email={"de": EMAIL_DE, "DE": EMAIL_DE}), "invalid_request"),  # twice
        (PATH, _document(sms={"en": PUSH_EN}), "invalid_request"),  # unknown channel
        (PATH, _document(email={"en": {"text": "no subject"}}), "invalid_request"),
        (PATH, _document(push={"en": {**PUSH_EN, "html": "<p>"}}), "invalid_request"),
        (PATH, _document(email={"en": {"subject": " ", "text": "t"}}), "template_error"),
        (PATH, _document(email={"en": {"subject": "S", "text": "x" * 70_000}}), "invalid_request"),
        ("/v1/templates/category:", _document(email={"en": EMAIL_DE}), "invalid_identifier"),
        ("/v1/templates/%20padded", _document(email={"en": EMAIL_DE}), "invalid_identifier"),
        ("/v1/templates/a%01b", _document(email={"en": EMAIL_DE}), "invalid_identifier"),
    ]
    for path, body, code in cases:
        response = await http.put(path, json=body)
        assert response.status_code == 422, (path, body, response.text)
        assert response.json()["error"]["code"] == code, (path, body, response.text)
    assert (await http.get("/v1/templates")).json() == {"templates": []}


async def test_a_sandbox_escape_is_refused_at_preview(tenant: Tenant) -> None:
    http = tenant.http
    attempts = [
        "{{ ''.__class__ }}",
        "{{ ''.__class__.__mro__[1].__subclasses__() }}",
        "{{ event.data.__class__ }}",
        "{{ cycler.__init__.__globals__ }}",
        "{{ '{0:9999999}'.format(1) }}",
        "{% for i in range(10**9) %}x{% endfor %}",
    ]
    for attempt in attempts:
        # Saving only compiles the template, and these compile: the sandbox refuses them when
        # they run, with the same code a send's failure is reported with.
        body = _document(email={"en": {"subject": "S", "text": attempt}})
        assert (await http.put(PATH, json=body)).status_code in (200, 201)
        error = _error(
            await http.post(f"{PATH}/preview", json={"channel": "email"}), 422, "template_error"
        )
        assert error["details"]["part"] == "text", attempt
        assert "class 'str'" not in error["message"]
        inline = await http.post(
            "/v1/templates/preview",
            json={"channel": "email", "template": {"subject": "S", "text": attempt}},
        )
        _error(inline, 422, "template_error")


async def test_an_undefined_variable_is_a_template_error_at_preview(tenant: Tenant) -> None:
    http = tenant.http
    await http.put(
        PATH, json=_document(email={"en": {"subject": "{{ event.data.nope }}", "text": ""}})
    )
    error = _error(
        await http.post(f"{PATH}/preview", json={"channel": "email"}), 422, "template_error"
    )
    assert error["details"] == {"channel": "email", "locale": "en", "part": "subject"}
    assert "nope" in error["message"]


async def test_an_inline_template_renders_without_being_saved(tenant: Tenant) -> None:
    http = tenant.http
    response = await http.post(
        "/v1/templates/preview",
        json={
            "channel": "push",
            "key": "category:news",
            "locale": "de",
            "template": {
                "title": "{{ event.category }}:  {{ event.title }}\n",
                "body": "{{ user.locale }} {{ user.id }}",
            },
            "sample": {"event": {"title": "Hi"}, "user": {"id": "ann"}},
        },
    )
    assert response.status_code == 200, response.text
    assert response.json() == {
        "channel": "push",
        "locale": "de",
        "template": "category:news",
        "title": "news: Hi",
        "body": "de ann",
    }
    assert (await http.get("/v1/templates")).json() == {"templates": []}
    email = await http.post(
        "/v1/templates/preview",
        json={
            "channel": "email",
            "template": {
                "subject": "S",
                "text": "{{ event.type }}",
                "html": "<i>{{ event.id }}</i>",
            },
        },
    )
    assert email.json()["text"] == "example.event"
    assert email.json()["html"].startswith("<i>")
    broken = await http.post(
        "/v1/templates/preview",
        json={"channel": "email", "template": {"subject": "S", "text": "{% for %}"}},
    )
    assert _error(broken, 422, "template_error")["details"]["line"] == 1
    mismatched = await http.post(
        "/v1/templates/preview",
        json={"channel": "push", "template": {"subject": "S", "text": "t"}},
    )
    _error(mismatched, 422, "invalid_request")


async def test_event_types_with_slashes_are_keys_too(tenant: Tenant) -> None:
    http = tenant.http
    path = "/v1/templates/shop/order:shipped"
    assert (await http.put(path, json=_document(email={"en": EMAIL_DE}))).status_code == 201
    assert (await http.get(path)).json()["name"] == "shop/order:shipped"
    preview = await http.post(
        f"{path}/preview", json={"channel": "email", "sample": {"event": {"data": {"order": 7}}}}
    )
    assert preview.status_code == 200, preview.text
    assert preview.json()["template"] == "shop/order:shipped"


async def test_another_tenant_cannot_see_or_touch_the_templates(sqlite_server: Running) -> None:
    async with (
        tenant_client(sqlite_server) as owner,
        tenant_client(sqlite_server) as other,
    ):
        secret = {"subject": "S3CRET {{ event.title }}", "text": "t"}
        await owner.http.put(PATH, json=_document(email={"en": secret}))
        _error(await other.http.get(PATH), 404, "not_found")
        _error(await other.http.delete(PATH), 404, "not_found")
        _error(
            await other.http.post(f"{PATH}/preview", json={"channel": "email"}),
            404,
            "not_found",
        )
        listed = await other.http.get("/v1/templates")
        assert listed.json() == {"templates": []}
        assert "S3CRET" not in listed.text
        # The other tenant's PUT makes its own set, leaving the owner's alone.
        assert (await other.http.put(PATH, json=_document(push={"en": PUSH_EN}))).status_code == 201
        assert (await owner.http.get(PATH)).json()["channels"]["email"]["en"]["subject"] == (
            secret["subject"]
        )


async def test_template_routes_need_the_api_key(sqlite_server: Running) -> None:
    async with httpx.AsyncClient(base_url=sqlite_server.base_url) as anonymous:
        for method, path in [
            ("GET", "/v1/templates"),
            ("GET", PATH),
            ("PUT", PATH),
            ("DELETE", PATH),
            ("POST", f"{PATH}/preview"),
            ("POST", "/v1/templates/preview"),
        ]:
            response = await anonymous.request(method, path, json={})
            assert response.status_code == 401, (method, path, response.text)
