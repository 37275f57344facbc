"""Enrichment: group attributes and the tenant's webhook reach the template context, answers
are cached per event and user, and a failing webhook follows the rule's policy."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta

import pytest

from clarion.domain import errors
from clarion.domain.channels import Channel
from clarion.domain.notifications import InboxItem
from clarion.domain.outcomes import Delivered, Outcome, Rejected, RetryLater
from clarion.domain.records import (
    Claimed,
    EnrichmentSource,
    EnrichmentWebhook,
    TenantSettings,
)
from clarion.domain.rules import StoredRule, rule_from_json
from clarion.domain.statuses import Status
from clarion.domain.templates import EmailTemplate, Subject, TemplateKey
from clarion.services.enriching import Enriching, parse_answer
from clarion.services.mailing import template_variables
from clarion.services.pushing import PushingTransport
from clarion.wire import webhooks as wire

NOW = datetime(2026, 11, 21, 9, 0, tzinfo=UTC)
SECRET = "s" * 32


def claimed(user: str, *, event: str = "e1", notification: str = "n1") -> Claimed:
    item = InboxItem(
        id=hash((user, event)) % 10_000,
        notification_id=notification,
        event_id=event,
        user=user,
        status=Status.PENDING,
        type="order.shipped",
        title="t",
        body="b",
        data={},
        category=None,
        group="team",
        created_at=NOW,
    )
    return Claimed(
        id=item.id,
        fence=1,
        tenant_id="t1",
        channel="apns",
        endpoint="1",
        attempts=1,
        item=item,
        attributes={"plan": "pro", "shared": "user"},
    )


class Clock:
    def __init__(self) -> None:
        self.at = NOW

    def now(self) -> datetime:
        return self.at


class Store:
    def __init__(self, *, rule_key: str | None = "r", webhook: bool = True) -> None:
        self.rule_key = rule_key
        self.webhook = (
            EnrichmentWebhook("https://hooks.example.com/enrich", SECRET) if webhook else None
        )
        self.saved: list[EnrichmentWebhook | None] = []

    async def enrichment_webhook(self, tenant_id: str) -> EnrichmentWebhook | None:
        return self.webhook

    async def put_enrichment_webhook(
        self, tenant_id: str, webhook: EnrichmentWebhook | None
    ) -> bool:
        self.saved.append(webhook)
        return tenant_id == "t1"

    async def enrichment_sources(
        self, tenant_id: str, notification_ids: Sequence[str]
    ) -> dict[str, EnrichmentSource]:
        attributes = {"team_name": "Ops", "shared": "group"}
        return {n: EnrichmentSource(self.rule_key, attributes) for n in notification_ids}


class Rules:
    def __init__(self, enrichment: Mapping[str, object] | None) -> None:
        raw: dict[str, object] = {"key": "r", "event_type": "order.*"}
        if enrichment is not None:
            raw["enrichment"] = dict(enrichment)
        self.rules = [StoredRule(rule_from_json(raw), NOW, NOW)]

    async def list_rules(self, tenant_id: str) -> list[StoredRule]:
        return self.rules


class Fetcher:
    """Answers like a tenant's webhook; `hang` never answers."""

    def __init__(self, answer: object = None, *, status: int = 200, hang: bool = False) -> None:
        self.answer = answer
        self.status = status
        self.hang = hang
        self.requests: list[tuple[str, bytes, Mapping[str, str]]] = []

    async def fetch(
        self, url: str, body: bytes, headers: Mapping[str, str]
    ) -> wire.Answer | RetryLater:
        self.requests.append((url, body, headers))
        if self.hang:
            await asyncio.Event().wait()
        if isinstance(self.answer, RetryLater):
            return self.answer
        raw = self.answer if isinstance(self.answer, bytes) else json.dumps(self.answer).encode()
        return wire.Answer(self.status, raw)


ANSWER = {"event": {"carrier": "DHL", "shared": "event"}, "users": {"ann": {"shared": "ann"}}}


def enriching(
    fetcher: Fetcher,
    *,
    enrichment: Mapping[str, object] | None = None,
    store: Store | None = None,
    clock: Clock | None = None,
) -> Enriching:
    return Enriching(
        store or Store(),
        Rules(enrichment),
        fetcher,
        clock or Clock(),
        timeout=0.05,
    )


async def test_the_webhooks_answer_becomes_enrichment_event_part_overlaid_by_the_users() -> None:
    fetcher = Fetcher(ANSWER)
    found = await enriching(fetcher, enrichment={"webhook": True}).context(
        "t1", [claimed("ann"), claimed("bob")]
    )
    assert found == [
        {"enrichment": {"carrier": "DHL", "shared": "ann"}},
        {"enrichment": {"carrier": "DHL", "shared": "event"}},
    ]
    [(url, body, headers)] = fetcher.requests
    assert url == "https://hooks.example.com/enrich"
    assert json.loads(body) == {
        "event_id": "e1",
        "type": "order.shipped",
        "tenant": "t1",
        "recipients": ["ann", "bob"],
    }
    assert wire.verify(SECRET, body, headers[wire.SIGNATURE_HEADER], now=int(NOW.timestamp()))


async def test_answers_are_cached_per_event_and_user_until_they_age_out() -> None:
    fetcher, clock = Fetcher(ANSWER), Clock()
    service = enriching(fetcher, enrichment={"webhook": True}, clock=clock)
    await service.context("t1", [claimed("ann")])
    await service.context("t1", [claimed("ann")])
    assert len(fetcher.requests) == 1
    await service.context("t1", [claimed("ann"), claimed("cy")])
    assert json.loads(fetcher.requests[-1][1])["recipients"] == ["cy"]
    clock.at = NOW + timedelta(minutes=10)
    await service.context("t1", [claimed("ann")])
    assert len(fetcher.requests) == 3


async def test_attributes_give_the_group_and_the_merged_attributes_without_a_request() -> None:
    fetcher = Fetcher(ANSWER)
    [found] = await enriching(fetcher, enrichment={"attributes": True}).context(
        "t1", [claimed("ann")]
    )
    assert found == {
        "group": {"team_name": "Ops", "shared": "group"},
        "attributes": {"team_name": "Ops", "shared": "user", "plan": "pro"},
    }
    assert fetcher.requests == []


async def test_a_notification_without_an_enriching_rule_gets_nothing() -> None:
    fetcher = Fetcher(ANSWER)
    assert await enriching(fetcher).context("t1", [claimed("ann")]) == [{}]
    other = enriching(fetcher, enrichment={"webhook": True}, store=Store(rule_key="gone"))
    assert await other.context("t1", [claimed("ann")]) == [{}]
    assert fetcher.requests == []


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        ("send", {"enrichment": {}}),
        ("retry", RetryLater("enrichment failed: timeout")),
        ("fail", Rejected("enrichment failed: timeout")),
    ],
)
async def test_a_webhook_that_times_out_follows_the_rules_policy(
    policy: str, expected: object
) -> None:
    service = enriching(Fetcher(hang=True), enrichment={"webhook": True, "on_failure": policy})
    assert await service.context("t1", [claimed("ann")]) == [expected]


@pytest.mark.parametrize(
    ("fetcher", "reason"),
    [
        (Fetcher(ANSWER, status=500), "HTTP 500"),
        (Fetcher(b"<html>"), "the answer is not JSON"),
        (Fetcher([1, 2]), "the answer is not a JSON object"),
        (Fetcher({"users": {"ann": 3}}), "'users' is not an object of objects"),
        (Fetcher(RetryLater("refused: 10.0.0.1 is private")), "refused: 10.0.0.1 is private"),
    ],
)
async def test_a_failing_webhook_is_rejected_with_its_reason(fetcher: Fetcher, reason: str) -> None:
    service = enriching(fetcher, enrichment={"webhook": True, "on_failure": "fail"})
    assert await service.context("t1", [claimed("ann")]) == [
        Rejected(f"enrichment failed: {reason}")
    ]


async def test_failures_are_not_cached_so_a_retry_asks_again() -> None:
    fetcher = Fetcher(ANSWER, status=503)
    service = enriching(fetcher, enrichment={"webhook": True, "on_failure": "retry"})
    assert isinstance((await service.context("t1", [claimed("ann")]))[0], RetryLater)
    fetcher.status = 200
    assert await service.context("t1", [claimed("ann")]) == [
        {"enrichment": {"carrier": "DHL", "shared": "ann"}}
    ]


async def test_without_a_webhook_setting_the_policy_applies() -> None:
    service = enriching(
        Fetcher(ANSWER),
        enrichment={"webhook": True, "on_failure": "fail"},
        store=Store(webhook=False),
    )
    [found] = await service.context("t1", [claimed("ann")])
    assert isinstance(found, Rejected)
    assert "no enrichment webhook" in found.reason


def test_a_truncated_answer_is_refused() -> None:
    with pytest.raises(Exception, match="too large"):
        parse_answer(wire.Answer(200, b"{}", truncated=True))


def test_checked_refuses_unsafe_urls_and_short_secrets() -> None:
    service = enriching(Fetcher(ANSWER))
    assert service.checked("https://hooks.example.com/e", SECRET).url.endswith("/e")
    with pytest.raises(errors.InvalidRequest, match=r"enrichment\.url"):
        service.checked("http://127.0.0.1/e", SECRET)
    with pytest.raises(errors.InvalidRequest, match=r"enrichment\.secret"):
        service.checked("https://hooks.example.com/e", "short")


def test_templates_see_group_and_enrichment_empty_by_default() -> None:
    variables = template_variables(claimed("ann"), "")
    assert variables["group"] == {}
    assert variables["enrichment"] == {}


# --- through the push transport ----------------------------------------------------------------


class Recording:
    channel = Channel.APNS

    def __init__(self) -> None:
        self.sent: list[Claimed] = []

    async def send(self, batch: Sequence[Claimed]) -> Sequence[Outcome]:
        self.sent += batch
        return [Delivered(str(c.id)) for c in batch]


class PushStore:
    async def tenant_settings(self, tenant_id: str) -> TenantSettings | None:
        return TenantSettings(default_locale="en", email=None)

    async def unread_totals(self, tenant_id: str, external_ids: Sequence[str]) -> dict[str, int]:
        return {}


class Templates:
    async def templates_for(
        self, tenant_id: str, channel: str, *, event_type: str, category: str | None
    ) -> Mapping[TemplateKey, EmailTemplate]:
        key = TemplateKey(Subject.EVENT_TYPE, "order.shipped", "push", "en")
        return {key: EmailTemplate("Via {{ enrichment.carrier }}", "{{ group.team_name }}")}


async def test_the_push_renders_with_the_enrichment_and_a_failed_one_is_not_sent() -> None:
    inner = Recording()
    push = PushingTransport(
        inner,
        store=PushStore(),
        templates=Templates(),
        clock=Clock(),
        enricher=enriching(Fetcher(ANSWER), enrichment={"webhook": True, "attributes": True}),
    )
    assert await push.send([claimed("ann")]) == [Delivered(str(claimed("ann").id))]
    assert (inner.sent[0].item.title, inner.sent[0].item.body) == ("Via DHL", "Ops")

    failing = PushingTransport(
        inner,
        store=PushStore(),
        templates=Templates(),
        clock=Clock(),
        enricher=enriching(Fetcher(hang=True), enrichment={"webhook": True, "on_failure": "fail"}),
    )
    assert (
        await failing.send([claimed("bob"), claimed("cy")])
        == [Rejected("enrichment failed: timeout")] * 2
    )
    assert len(inner.sent) == 1
