"""Push content: templates per locale, the badge and the push options reach the provider's
claims, and the wire builders map them onto APNs, FCM and Web Push fields."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime

from clarion.adapters.providers.apns import notification_for
from clarion.adapters.providers.fcm import message_for
from clarion.adapters.providers.webpush import payload_for
from clarion.domain.channels import Channel
from clarion.domain.notifications import EventSpec, InboxItem, Recipients
from clarion.domain.outcomes import Delivered, Outcome, Rejected
from clarion.domain.records import Claimed, PushExtras, TenantSettings
from clarion.domain.statuses import Status
from clarion.domain.templates import EmailTemplate, Subject, TemplateKey
from clarion.services.pushing import PushingTransport

NOW = datetime(2026, 11, 21, 9, 0, tzinfo=UTC)


def claimed(n: int, *, locale: str | None = None, push: dict[str, object] | None = None) -> Claimed:
    item = InboxItem(
        id=n,
        notification_id=f"n{n}",
        event_id="e1",
        user=f"u{n}",
        status=Status.PENDING,
        type="news",
        title="own title",
        body="own body",
        data={"n": str(n)},
        category=None,
        group="g",
        created_at=NOW,
        push=push or {},
    )
    return Claimed(
        id=n,
        fence=1,
        tenant_id="t1",
        channel="apns",
        endpoint=str(n),
        attempts=1,
        item=item,
        address=f"{n:064x}",
        locale=locale,
    )


class Recording:
    channel = Channel.APNS

    def __init__(self) -> None:
        self.sent: list[Claimed] = []

    async def send(self, batch: Sequence[Claimed]) -> Sequence[Outcome]:
        self.sent += batch
        return [Delivered(str(c.id)) for c in batch]


class Store:
    def __init__(self) -> None:
        self.counted: list[list[str]] = []

    async def tenant_settings(self, tenant_id: str) -> TenantSettings | None:
        return TenantSettings(default_locale="en", email=None)

    async def unread_totals(self, tenant_id: str, external_ids: Sequence[str]) -> dict[str, int]:
        self.counted.append(list(external_ids))
        return dict.fromkeys(external_ids, 7)


class Templates:
    def __init__(self, found: Mapping[TemplateKey, EmailTemplate]) -> None:
        self.found = found

    async def templates_for(
        self, tenant_id: str, channel: str, *, event_type: str, category: str | None
    ) -> Mapping[TemplateKey, EmailTemplate]:
        assert channel == "push"
        return self.found


class Clock:
    def now(self) -> datetime:
        return NOW


def key(locale: str) -> TemplateKey:
    return TemplateKey(Subject.EVENT_TYPE, "news", "push", locale)


TEMPLATES = {
    key("en"): EmailTemplate("Hello {{ user.id }}", "n={{ event.data.n }}"),
    key("de"): EmailTemplate("Hallo {{ user.id }}", "n={{ event.data.n }}"),
}


def transport(
    templates: Mapping[TemplateKey, EmailTemplate],
) -> tuple[PushingTransport, Recording, Store]:
    inner, store = Recording(), Store()
    return (
        PushingTransport(inner, store=store, templates=Templates(templates), clock=Clock()),
        inner,
        store,
    )


async def test_templates_render_in_each_users_locale_falling_back_to_the_tenants() -> None:
    pushing, inner, store = transport(TEMPLATES)
    results = await pushing.send([claimed(1, locale="de-CH"), claimed(2, locale="fr"), claimed(3)])
    assert results == [Delivered("1"), Delivered("2"), Delivered("3")]
    titles = [(c.item.title, c.item.body) for c in inner.sent]
    assert titles == [("Hallo u1", "n=1"), ("Hello u2", "n=2"), ("Hello u3", "n=3")]
    assert all(c.push == PushExtras() for c in inner.sent)
    assert store.counted == []  # no badge asked for: no count


async def test_without_a_template_the_notifications_own_text_goes_out() -> None:
    pushing, inner, _ = transport({})
    await pushing.send([claimed(1, locale="de")])
    assert (inner.sent[0].item.title, inner.sent[0].item.body) == ("own title", "own body")


async def test_a_template_that_cannot_render_is_rejected_and_the_rest_go_out() -> None:
    broken = {key("de"): EmailTemplate("Hi", "{{ event.data.missing }}")} | {
        key("en"): TEMPLATES[key("en")]
    }
    pushing, inner, _ = transport(broken)
    results = await pushing.send([claimed(1, locale="de"), claimed(2, locale="en")])
    assert isinstance(results[0], Rejected)
    assert "missing" in results[0].reason
    assert results[1] == Delivered("2")
    assert [c.id for c in inner.sent] == [2]


async def test_the_badge_is_counted_once_per_batch_and_the_options_pass_through() -> None:
    options = {"badge": True, "sound": "ping", "collapse_id": "c", "thread_id": "t", "link": "x:"}
    pushing, inner, store = transport({})
    await pushing.send([claimed(1, push=options), claimed(2, push=options), claimed(3)])
    assert store.counted == [["u1", "u2"]]
    assert inner.sent[0].push == PushExtras(7, "ping", "c", "t", "x:")
    assert inner.sent[2].push == PushExtras()


EXTRAS = PushExtras(badge=3, sound="ping", collapse_id="c-1", thread_id="th", link="app://x")


def test_apns_carries_the_extras() -> None:
    note = notification_for(dataclasses.replace(claimed(1), push=EXTRAS), "com.example")
    assert (note.badge, note.sound, note.collapse_id, note.thread_id) == (3, "ping", "c-1", "th")
    assert note.custom_data["link"] == "app://x"
    plain = notification_for(claimed(1), "com.example")
    assert (plain.badge, plain.sound, plain.thread_id) == (None, None, "g")


def test_fcm_carries_the_extras() -> None:
    message = message_for(dataclasses.replace(claimed(1), push=EXTRAS), NOW)
    assert message.android is not None
    assert message.android.notification is not None
    assert message.android.notification.sound == "ping"
    assert message.android.notification.tag == "c-1"
    assert message.apns is not None
    assert message.apns.headers == {"apns-collapse-id": "c-1"}
    assert message.apns.payload == {"aps": {"badge": 3, "sound": "ping", "thread-id": "th"}}
    assert message.data["link"] == "app://x"
    plain = message_for(claimed(1), NOW)
    assert plain.apns is None
    assert plain.android is None


def test_web_push_carries_the_extras() -> None:
    document = json.loads(payload_for(dataclasses.replace(claimed(1), push=EXTRAS)))
    assert {k: document[k] for k in ("badge", "sound", "collapse_id", "thread_id", "link")} == {
        "badge": 3,
        "sound": "ping",
        "collapse_id": "c-1",
        "thread_id": "th",
        "link": "app://x",
    }
    assert "badge" not in json.loads(payload_for(claimed(1)))


def test_priority_and_push_options_round_trip_and_leave_old_fingerprints_alone() -> None:
    plain = EventSpec(type="t", recipients=Recipients(users=("u",)))
    assert "priority" not in plain.to_json()
    assert "push" not in plain.to_json()
    rich = dataclasses.replace(plain, priority="critical", push={"sound": "ping", "badge": True})
    assert EventSpec.from_json(json.loads(json.dumps(rich.to_json()))) == rich
    assert rich.fingerprint() != plain.fingerprint()
