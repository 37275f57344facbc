"""The template store, on every backend: sets saved and replaced whole, listed, deleted, each
tenant's own; and the map a sender chooses a template from."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa

from clarion import bootstrap
from clarion.adapters.storage import tables
from clarion.adapters.storage.templates import SqlTemplates
from clarion.domain.templates import EmailTemplate, Subject, TemplateEntry, TemplateKey
from clarion.services.ports import TemplateStore

T0 = datetime(2026, 1, 1, tzinfo=UTC)
EVENT = Subject.EVENT_TYPE
CATEGORY = Subject.CATEGORY


def _store(app: bootstrap.Clarion) -> TemplateStore:
    store: TemplateStore = SqlTemplates(app.store.engine)  # fits the port (checked by mypy)
    return store


async def _tenant(app: bootstrap.Clarion) -> str:
    return (await app.tenancy.create_tenant("t")).tenant_id


def _email(locale: str, word: str, html: str | None = None) -> TemplateEntry:
    return TemplateEntry("email", locale, f"{word} {{{{ event.title }}}}", f"{word} text", html)


async def test_a_new_set_is_created_and_read_back_whole(clarion: bootstrap.Clarion) -> None:
    store, tenant = _store(clarion), await _tenant(clarion)
    entries = [
        _email("en", "Hello", "<p>Hello</p>"),
        _email("de", "Hallo"),
        TemplateEntry("push", "en", "Hi", "Body"),
    ]
    saved, created = await store.put_template_set(tenant, EVENT, "order.shipped", entries, T0)
    assert created
    assert saved.subject is EVENT
    assert saved.name == "order.shipped"
    assert saved.created_at == T0
    assert saved.updated_at == T0
    assert set(saved.entries) == set(entries)
    found = await store.get_template_set(tenant, EVENT, "order.shipped")
    assert found is not None
    assert set(found.entries) == set(entries)
    [email_de] = [e for e in found.entries if e.channel == "email" and e.locale == "de"]
    assert email_de.html is None


async def test_a_put_replaces_every_row_of_the_set_and_keeps_its_creation_time(
    clarion: bootstrap.Clarion,
) -> None:
    store, tenant = _store(clarion), await _tenant(clarion)
    await store.put_template_set(
        tenant, EVENT, "a", [_email("en", "One"), _email("de", "Eins")], T0
    )
    later = T0 + timedelta(hours=1)
    saved, created = await store.put_template_set(tenant, EVENT, "a", [_email("fr", "Un")], later)
    assert not created
    assert [(e.channel, e.locale) for e in saved.entries] == [("email", "fr")]
    assert saved.created_at == T0
    assert saved.updated_at == later
    found = await store.get_template_set(tenant, EVENT, "a")
    assert found is not None
    assert [e.locale for e in found.entries] == ["fr"]


async def test_an_event_type_and_a_category_of_one_name_are_separate_sets(
    clarion: bootstrap.Clarion,
) -> None:
    store, tenant = _store(clarion), await _tenant(clarion)
    await store.put_template_set(tenant, EVENT, "billing", [_email("en", "E")], T0)
    await store.put_template_set(tenant, CATEGORY, "billing", [_email("en", "C")], T0)
    assert await store.delete_template_set(tenant, EVENT, "billing")
    assert await store.get_template_set(tenant, EVENT, "billing") is None
    kept = await store.get_template_set(tenant, CATEGORY, "billing")
    assert kept is not None
    assert kept.entries[0].title.startswith("C")


async def test_the_list_names_each_set_with_its_channels_and_locales(
    clarion: bootstrap.Clarion,
) -> None:
    store, tenant = _store(clarion), await _tenant(clarion)
    await store.put_template_set(
        tenant,
        EVENT,
        "order.shipped",
        [_email("en", "x"), _email("de", "y"), TemplateEntry("inbox", "en", "t", "b")],
        T0,
    )
    await store.put_template_set(
        tenant, CATEGORY, "billing", [_email("en", "z")], T0 + timedelta(minutes=5)
    )
    listed = await store.list_template_sets(tenant)
    assert [(i.subject, i.name) for i in listed] == [
        (CATEGORY, "billing"),
        (EVENT, "order.shipped"),
    ]
    assert listed[0].channels == {"email": ("en",)}
    assert listed[0].updated_at == T0 + timedelta(minutes=5)
    assert listed[1].channels == {"email": ("de", "en"), "inbox": ("en",)}


async def test_deleting_an_unknown_set_says_so(clarion: bootstrap.Clarion) -> None:
    store, tenant = _store(clarion), await _tenant(clarion)
    assert not await store.delete_template_set(tenant, EVENT, "nothing")
    assert await store.get_template_set(tenant, EVENT, "nothing") is None


async def test_another_tenant_neither_sees_nor_touches_the_set(
    clarion: bootstrap.Clarion,
) -> None:
    store = _store(clarion)
    owner, other = await _tenant(clarion), await _tenant(clarion)
    await store.put_template_set(owner, EVENT, "a", [_email("en", "Mine")], T0)
    assert await store.get_template_set(other, EVENT, "a") is None
    assert await store.list_template_sets(other) == []
    assert await store.templates_for(other, "email", event_type="a", category=None) == {}
    assert not await store.delete_template_set(other, EVENT, "a")
    _, created = await store.put_template_set(other, EVENT, "a", [_email("en", "Theirs")], T0)
    assert created
    mine = await store.get_template_set(owner, EVENT, "a")
    assert mine is not None
    assert mine.entries[0].title.startswith("Mine")


async def test_templates_for_gives_every_locale_of_the_event_type_and_its_category(
    clarion: bootstrap.Clarion,
) -> None:
    store, tenant = _store(clarion), await _tenant(clarion)
    await store.put_template_set(
        tenant,
        EVENT,
        "order.shipped",
        [
            _email("en", "E-en", "<b>en</b>"),
            _email("de", "E-de"),
            TemplateEntry("push", "en", "P", "B"),
        ],
        T0,
    )
    await store.put_template_set(tenant, CATEGORY, "orders", [_email("pt-BR", "C-pt")], T0)
    await store.put_template_set(tenant, CATEGORY, "other", [_email("fr", "C-fr")], T0)
    await store.put_template_set(tenant, EVENT, "order.paid", [_email("it", "P-it")], T0)
    found = await store.templates_for(
        tenant, "email", event_type="order.shipped", category="orders"
    )
    assert found == {
        TemplateKey(EVENT, "order.shipped", "email", "en"): EmailTemplate(
            "E-en {{ event.title }}", "E-en text", "<b>en</b>"
        ),
        TemplateKey(EVENT, "order.shipped", "email", "de"): EmailTemplate(
            "E-de {{ event.title }}", "E-de text", None
        ),
        TemplateKey(CATEGORY, "orders", "email", "pt-BR"): EmailTemplate(
            "C-pt {{ event.title }}", "C-pt text", None
        ),
    }
    without_category = await store.templates_for(
        tenant, "email", event_type="order.shipped", category=None
    )
    assert set(without_category) == {
        TemplateKey(EVENT, "order.shipped", "email", "en"),
        TemplateKey(EVENT, "order.shipped", "email", "de"),
    }
    push = await store.templates_for(tenant, "push", event_type="order.shipped", category=None)
    assert push == {TemplateKey(EVENT, "order.shipped", "push", "en"): EmailTemplate("P", "B")}


async def test_the_default_locale_is_the_tenants_and_en_for_an_unknown_tenant(
    clarion: bootstrap.Clarion,
) -> None:
    store, tenant = _store(clarion), await _tenant(clarion)
    assert await store.default_locale(tenant) == "en"
    async with clarion.store.engine.begin() as conn:
        await conn.execute(
            sa.update(tables.tenants)
            .where(tables.tenants.c.id == tenant)
            .values(default_locale="de")
        )
    assert await store.default_locale(tenant) == "de"
    assert await store.default_locale("no-such-tenant") == "en"


async def test_concurrent_puts_of_one_set_leave_exactly_one_of_them(
    clarion: bootstrap.Clarion,
) -> None:
    store, tenant = _store(clarion), await _tenant(clarion)
    results = await asyncio.gather(
        *(
            store.put_template_set(
                tenant, EVENT, "race", [_email("en", f"v{i}"), _email("de", f"v{i}")], T0
            )
            for i in range(5)
        )
    )
    assert sum(created for _, created in results) == 1
    found = await store.get_template_set(tenant, EVENT, "race")
    assert found is not None
    assert len(found.entries) == 2
    # Both rows come from the same PUT: never a mix of two.
    assert len({e.title for e in found.entries}) == 1
