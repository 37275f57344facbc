"""The rule store, on every backend: rules saved, replaced, read, listed in order, deleted, a
set applied at once (with and without replacing), each tenant's own; and the routing store's
view of an event's recipients with their attributes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from clarion import bootstrap
from clarion.adapters.storage.rules import SqlRules
from clarion.domain.notifications import EventSpec, Recipients
from clarion.domain.records import UserFields
from clarion.domain.rules import Rule, rule_from_json
from clarion.services.ports import RuleStore

T0 = datetime(2026, 1, 1, tzinfo=UTC)
T1 = T0 + timedelta(minutes=5)


def _store(app: bootstrap.Clarion) -> RuleStore:
    store: RuleStore = SqlRules(app.store.engine)  # fits the port (checked by mypy)
    return store


async def _tenant(app: bootstrap.Clarion) -> str:
    return (await app.tenancy.create_tenant("t")).tenant_id


def _rule(key: str, event_type: str = "order.*", **fields: object) -> Rule:
    return rule_from_json({"key": key, "event_type": event_type, **fields})


async def test_a_rule_is_saved_read_back_whole_and_replaced_keeping_its_creation_time(
    clarion: bootstrap.Clarion,
) -> None:
    store, tenant = _store(clarion), await _tenant(clarion)
    rule = _rule(
        "orders",
        condition='event.data.total >= 100 and user.attributes.tier in ["gold"]',
        channels=["push", "websocket"],
        template="order",
        priority="critical",
        ttl=3600,
        enrichment={"attributes": True},
        digest={"window": 1800, "key": "event.data.thread", "channels": ["email"]},
        order=5,
    )
    saved, created = await store.put_rule(tenant, rule, T0)
    assert created
    assert saved.rule.to_json() == rule.to_json()
    assert (saved.created_at, saved.updated_at) == (T0, T0)

    changed = _rule("orders", "order.created", channels=["email"])
    replaced, created = await store.put_rule(tenant, changed, T1)
    assert not created
    assert replaced.rule.to_json() == changed.to_json()
    assert (replaced.created_at, replaced.updated_at) == (T0, T1)
    found = await store.get_rule(tenant, "orders")
    assert found is not None
    assert found.rule.to_json() == changed.to_json()


async def test_rules_are_listed_by_order_then_key_and_deleted(clarion: bootstrap.Clarion) -> None:
    store, tenant = _store(clarion), await _tenant(clarion)
    for key, order in (("b", 1), ("a", 1), ("z", -3)):
        await store.put_rule(tenant, _rule(key, order=order), T0)
    assert [s.rule.key for s in await store.list_rules(tenant)] == ["z", "a", "b"]
    assert await store.delete_rule(tenant, "a")
    assert not await store.delete_rule(tenant, "a")
    assert await store.get_rule(tenant, "a") is None
    assert [s.rule.key for s in await store.list_rules(tenant)] == ["z", "b"]


async def test_applying_a_set_saves_all_and_replace_deletes_the_rest(
    clarion: bootstrap.Clarion,
) -> None:
    store, tenant = _store(clarion), await _tenant(clarion)
    await store.put_rule(tenant, _rule("old"), T0)
    await store.put_rule(tenant, _rule("kept", "kept.*"), T0)

    merged = await store.apply_rules(tenant, [_rule("new"), _rule("kept", "x")], T1, replace=False)
    assert (merged.created, merged.updated, merged.deleted) == (("new",), ("kept",), ())
    assert {s.rule.key for s in await store.list_rules(tenant)} == {"old", "kept", "new"}

    replaced = await store.apply_rules(tenant, [_rule("new", "y")], T1, replace=True)
    assert (replaced.created, replaced.updated, replaced.deleted) == ((), ("new",), ("kept", "old"))
    [only] = await store.list_rules(tenant)
    assert (only.rule.key, only.rule.event_type) == ("new", "y")

    emptied = await store.apply_rules(tenant, [], T1, replace=True)
    assert emptied.deleted == ("new",)
    assert await store.list_rules(tenant) == []


async def test_each_tenant_sees_only_its_own_rules(clarion: bootstrap.Clarion) -> None:
    store = _store(clarion)
    mine, theirs = await _tenant(clarion), await _tenant(clarion)
    await store.put_rule(mine, _rule("same", "mine"), T0)
    await store.put_rule(theirs, _rule("same", "theirs"), T0)
    await store.apply_rules(theirs, [_rule("other")], T0, replace=True)
    found = await store.get_rule(mine, "same")
    assert found is not None
    assert found.rule.event_type == "mine"
    assert not await store.delete_rule(theirs, "same")
    assert [s.rule.key for s in await store.list_rules(mine)] == ["same"]
    assert [s.rule.key for s in await store.list_rules(theirs)] == ["other"]


async def test_the_audience_comes_with_each_users_attributes(clarion: bootstrap.Clarion) -> None:
    tenant = await _tenant(clarion)
    other = await _tenant(clarion)
    directory = clarion.directory
    await directory.put_user(tenant, "ann", UserFields(attributes={"tier": "gold"}))
    await directory.put_user(tenant, "bob", UserFields())
    await directory.put_user(other, "ann", UserFields(attributes={"tier": "other tenant"}))
    await directory.put_group(
        tenant, "team", kind="group", name=None, community=None, attributes={}
    )
    for member in ("bob", "cy"):
        await directory.put_member(tenant, "team", member)
    spec = EventSpec(type="x", recipients=Recipients(users=("ann", "nobody"), groups=("team",)))
    found = dict(await clarion.store.audience_attributes(tenant, spec))
    assert found == {"ann": {"tier": "gold"}, "bob": {}, "cy": {}}
