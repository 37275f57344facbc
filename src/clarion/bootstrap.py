"""The composition root: the one place that builds adapters and hands them to services."""

from __future__ import annotations

import base64
import contextlib
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from clarion.adapters.bus import open_bus
from clarion.adapters.providers.apns import ApnsTransport
from clarion.adapters.providers.fcm import FcmTransport
from clarion.adapters.providers.sendgrid import SendGridMailer
from clarion.adapters.providers.ses import SesMailer
from clarion.adapters.providers.smtp import SmtpMailer
from clarion.adapters.providers.sns import HttpSnsClient
from clarion.adapters.providers.webpush import WebPushTransport
from clarion.adapters.providers.wns import WnsTransport
from clarion.adapters.sealing import Sealer, load_or_create_key
from clarion.adapters.storage import engines, migrating
from clarion.adapters.storage.backlog import SqlBacklog
from clarion.adapters.storage.credentials import SqlCredentials
from clarion.adapters.storage.rules import SqlRules
from clarion.adapters.storage.sql import SqlStore
from clarion.adapters.storage.statistics import SqlStatistics
from clarion.adapters.storage.templates import SqlTemplates
from clarion.adapters.storage.topics import SqlTopicSends
from clarion.adapters.storage.webhooks import SqlWebhooks
from clarion.adapters.vault import Vault
from clarion.adapters.webhooks_http import HttpWebhookSender
from clarion.domain.channels import PUSH, REALTIME, Channel
from clarion.services.accepting import Accepting, Backlog
from clarion.services.acknowledging import Acknowledging
from clarion.services.broadcasting import Broadcasting
from clarion.services.callbacks import Callbacks
from clarion.services.clocks import SystemClock
from clarion.services.credentials import Credentials
from clarion.services.deadletters import DeadLetters
from clarion.services.delivering import Delivering
from clarion.services.devices import Devices
from clarion.services.digesting import Digesting
from clarion.services.directory import Directory
from clarion.services.enriching import TIMEOUT_SECONDS as ENRICHMENT_TIMEOUT, Enriching
from clarion.services.escalating import Escalating
from clarion.services.expiring import Expiring
from clarion.services.inboxes import Inboxes
from clarion.services.mailing import EmailTransport, Mailing
from clarion.services.pausing import PausingTransport
from clarion.services.ports import Bus, Clock, Mailer, Transport
from clarion.services.pushing import PushingTransport
from clarion.services.realtime import Realtime
from clarion.services.relaying import Relay
from clarion.services.reporting import Reporting
from clarion.services.routing import Routing
from clarion.services.ruling import Ruling
from clarion.services.statistics import ProducerStatistics
from clarion.services.subscriptions import Subscriptions
from clarion.services.suppressing import Suppressing
from clarion.services.templating import Templates
from clarion.services.tenancy import Tenancy
from clarion.services.tokens import UserTokens
from clarion.services.unsubscribing import Unsubscribing, derive_secret
from clarion.settings import Settings
from clarion.wire.webhooks import parse_networks
from clarion.wire.webpush import Urgency


@dataclass
class Clarion:
    """Every service, wired to its adapters. Built once per process by `build`."""

    settings: Settings
    store: SqlStore
    bus: Bus
    clock: Clock
    tenancy: Tenancy
    directory: Directory
    tokens: UserTokens
    accepting: Accepting
    routing: Routing
    relay: Relay
    realtime: Realtime
    acknowledging: Acknowledging
    reporting: Reporting
    statistics: ProducerStatistics
    inboxes: Inboxes
    subscriptions: Subscriptions
    devices: Devices
    delivering: Delivering
    callbacks: Callbacks
    credentials: Credentials
    deadletters: DeadLetters
    unsubscribing: Unsubscribing
    suppressing: Suppressing
    templates: Templates
    mailing: Mailing
    ruling: Ruling
    transports: dict[Channel, Transport] = field(default_factory=dict)
    closers: list[Callable[[], Awaitable[None]]] = field(default_factory=list)
    # Sends to FCM topics (groups mapped to topics); None while FCM is off.
    broadcasting: Broadcasting | None = None
    # Moves undelivered work of expired notifications to `expired` (always built by `build`).
    expiring: Expiring | None = None
    # Fires rules' resends and email follow-ups when they come due (always built by `build`).
    escalating: Escalating | None = None
    digesting: Digesting | None = None
    # Enrichment webhooks and context before rendering (always built by `build`).
    enriching: Enriching | None = None

    async def close(self) -> None:
        """Close provider connections, then release the database pool."""
        for closer in self.closers:
            await closer()
        await self.store.close()


def sealer_for(settings: Settings) -> Sealer:
    """The sealer for tenant secrets, from the configured key or the key file."""
    return Sealer(_sealing_key(settings))


def build(settings: Settings, *, clock: Clock | None = None, bus: Bus | None = None) -> Clarion:
    """Wire Clarion for `settings`. Nothing connects until first used."""
    clock = clock or SystemClock()
    store = SqlStore(
        engines.create_engine(
            settings.resolved_database_url,
            pool_size=settings.database_pool_size,
            connect_timeout=settings.database_connect_timeout_seconds,
            pool_timeout=settings.database_pool_timeout_seconds,
            statement_timeout=settings.database_statement_timeout_seconds,
        ),
        sealer_for(settings),
    )
    vault = SqlCredentials(store.engine, Vault(sealer_for(settings)))
    credentials = Credentials(vault, clock)
    # Provider transports (APNs, FCM, WNS, Web Push, email) are wired here as they arrive.
    transports: dict[Channel, Transport] = {}
    closers: list[Callable[[], Awaitable[None]]] = []
    broadcasting: Broadcasting | None = None
    if settings.apns.enabled:
        apns = _apns(settings, credentials)
        transports[Channel.APNS] = apns
        closers.append(apns.close)
    if settings.fcm.enabled:
        fcm = _fcm(settings, credentials)
        transports[Channel.FCM] = fcm
        broadcasting = Broadcasting(
            SqlTopicSends(store.engine), clock, {Channel.FCM: fcm}, credentials=credentials
        )
        closers.append(fcm.close)
    if settings.webpush.enabled:
        webpush = _webpush(settings, credentials, clock)
        transports[Channel.WEBPUSH] = webpush
        closers.append(webpush.close)
    if settings.wns.enabled:
        wns = _wns(settings, credentials, clock)
        transports[Channel.WNS] = wns
        closers.append(wns.close)
    template_store = SqlTemplates(store.engine)
    unsubscribing = _unsubscribing(settings, store, clock)
    enriching = _enriching(settings, store, clock, closers)
    if settings.email.enabled:
        email = _email(
            settings, store, template_store, credentials, unsubscribing, clock, enriching
        )
        transports[Channel.EMAIL] = email
        closers.append(email.close)
    if bus is None:
        bus = _bus(settings)
        closers.append(bus.close)
    tokens = UserTokens(
        store,
        clock,
        issuer=settings.tokens.issuer,
        audience=settings.tokens.audience,
        default_ttl=settings.tokens.default_ttl_seconds,
        max_ttl=settings.tokens.max_ttl_seconds,
        leeway=settings.tokens.leeway_seconds,
    )
    relay = Relay(
        store,
        bus,
        clock,
        batch=settings.worker.relay_batch,
        interval=settings.worker.relay_interval_seconds,
        redeliver_after=settings.worker.redeliver_after_seconds,
    )
    acknowledging = Acknowledging(store, bus, clock)
    ruling = Ruling(SqlRules(store.engine), store, clock, channels=REALTIME | frozenset(transports))
    return Clarion(
        settings=settings,
        store=store,
        bus=bus,
        clock=clock,
        tenancy=Tenancy(store, clock),
        directory=Directory(store, clock),
        tokens=tokens,
        accepting=Accepting(
            store,
            clock,
            max_recipients=settings.api.max_recipients_per_event,
            channels=REALTIME | frozenset(transports),
            on_accepted=relay.wake,
            backlog=Backlog(
                SqlBacklog(store.engine, clock.now).unpublished,
                limit=settings.limits.max_unpublished_events,
            ),
        ),
        routing=Routing(store, bus, clock, ruling, templates=template_store),
        relay=relay,
        realtime=Realtime(store, tokens, clock, page=settings.gateway.backlog_page),
        acknowledging=acknowledging,
        inboxes=Inboxes(store, bus, clock, acknowledging),
        subscriptions=Subscriptions(store, clock),
        devices=Devices(store, clock),
        reporting=Reporting(store),
        statistics=ProducerStatistics(SqlStatistics(store.engine), clock),
        delivering=Delivering(
            store,
            clock,
            # A credential a provider refuses is paused, whichever provider refused it.
            # Push content (templates, badge, sound, ...) is rendered before the provider.
            {
                channel: PausingTransport(
                    PushingTransport(
                        t, store=store, templates=template_store, clock=clock, enricher=enriching
                    )
                    if channel in PUSH
                    else t,
                    credentials,
                )
                for channel, t in transports.items()
            },
            batch=settings.worker.delivery_batch,
            concurrency=settings.worker.delivery_concurrency,
            lease_seconds=settings.worker.delivery_lease_seconds,
        ),
        callbacks=_callbacks(settings, store, clock),
        credentials=credentials,
        deadletters=DeadLetters(bus),
        unsubscribing=unsubscribing,
        suppressing=_suppressing(settings, store, vault, clock, closers),
        templates=Templates(template_store, clock),
        mailing=Mailing(store, credentials, clock),
        ruling=ruling,
        transports=transports,
        closers=closers,
        broadcasting=broadcasting,
        expiring=Expiring(store, clock),
        escalating=Escalating(store, clock),
        digesting=Digesting(store, clock),
        enriching=enriching,
    )


def _email(
    settings: Settings,
    store: SqlStore,
    templates: SqlTemplates,
    credentials: Credentials,
    links: Unsubscribing,
    clock: Clock,
    enriching: Enriching,
) -> EmailTransport:
    conf = settings.email
    if not conf.public_url:
        raise ValueError("email.public_url is required when email is enabled")
    context = ssl.create_default_context(cafile=str(conf.ca_file) if conf.ca_file else None)
    timeouts: dict[str, Any] = {
        "connect_timeout": conf.connect_timeout_seconds,
        "request_timeout": conf.request_timeout_seconds,
        "max_concurrency": conf.max_concurrency,
    }
    mailers: list[Mailer] = [
        SmtpMailer(
            ssl_context=context,
            allowed_networks=parse_networks(conf.smtp_allowed_networks),
            connections_per_host=conf.smtp_connections_per_host,
            helo_name=conf.smtp_helo_name,
            **timeouts,
        ),
        SesMailer(
            ssl_context=context, endpoint_url=conf.ses_endpoint_url, now=clock.now, **timeouts
        ),
        SendGridMailer(
            ssl_context=context, base_url=conf.sendgrid_base_url, now=clock.now, **timeouts
        ),
    ]
    return EmailTransport(
        store=store,
        digests=store,
        enricher=enriching,
        templates=templates,
        credentials=credentials,
        mailers={m.kind: m for m in mailers},
        links=links,
        clock=clock,
    )


def _sealing_key(settings: Settings) -> bytes:
    if settings.secret_key:
        return base64.b64decode(settings.secret_key)
    return load_or_create_key(settings.secret_key_file)


def _unsubscribing(settings: Settings, store: SqlStore, clock: Clock) -> Unsubscribing:
    return Unsubscribing(
        store,
        clock,
        secret=derive_secret(_sealing_key(settings)),
        public_url=settings.email.public_url,
        mailto=settings.email.unsubscribe_mailto,
    )


def _suppressing(
    settings: Settings,
    store: SqlStore,
    vault: SqlCredentials,
    clock: Clock,
    closers: list[Callable[[], Awaitable[None]]],
) -> Suppressing:
    conf = settings.email
    sns = HttpSnsClient(
        ssl_context=ssl.create_default_context(
            cafile=str(conf.sns_ca_file) if conf.sns_ca_file else None
        ),
        connect_timeout=conf.connect_timeout_seconds,
        timeout=conf.request_timeout_seconds,
    )
    closers.append(sns.close)
    return Suppressing(
        store,
        vault,
        sns,
        clock,
        extra_url_prefixes=conf.sns_allowed_url_prefixes,
        sendgrid_max_age=timedelta(seconds=conf.sendgrid_signature_max_age_seconds),
    )


@contextlib.asynccontextmanager
async def deadletters_only(settings: Settings) -> AsyncIterator[DeadLetters]:
    """The dead-letter tooling alone, on the configured bus (for `clarion dlq`): no database,
    no sealing key."""
    bus = _bus(settings)
    try:
        yield DeadLetters(bus)
    finally:
        await bus.close()


def _bus(settings: Settings) -> Bus:
    streams = settings.streams
    options: dict[str, Any] = {
        "visibility_timeout": streams.visibility_timeout_seconds,
        "max_deliveries": streams.max_deliveries,
        "dedupe_window": streams.dedupe_window_seconds,
    }
    if streams.max_length is not None:
        options["max_length"] = streams.max_length
    if settings.bus != "memory":
        options["prefix"] = streams.prefix
    return open_bus(settings.bus, settings.bus_url, **options)


def _apns(settings: Settings, credentials: Credentials) -> ApnsTransport:
    conf = settings.apns
    context = ssl.create_default_context(cafile=str(conf.ca_file) if conf.ca_file else None)
    return ApnsTransport(
        credentials.load,
        host=conf.host,
        port=conf.port,
        ssl_context=context,
        connect_timeout=conf.connect_timeout_seconds,
        request_timeout=conf.request_timeout_seconds,
        max_concurrent_streams=conf.max_concurrent_streams,
        reconnect_base=conf.reconnect_base_seconds,
        reconnect_max=conf.reconnect_max_seconds,
        ping_interval=conf.ping_interval_seconds,
    )


def _fcm(settings: Settings, credentials: Credentials) -> FcmTransport:
    conf = settings.fcm
    context = ssl.create_default_context(cafile=str(conf.ca_file) if conf.ca_file else None)
    return FcmTransport(
        credentials.load,
        base_url=conf.base_url,
        token_url=conf.token_url,
        ssl_context=context,
        connect_timeout=conf.connect_timeout_seconds,
        request_timeout=conf.request_timeout_seconds,
        concurrency=conf.concurrency,
        connections=conf.connections,
        streams_per_connection=conf.streams_per_connection,
    )


def _webpush(settings: Settings, credentials: Credentials, clock: Clock) -> WebPushTransport:
    conf = settings.webpush
    context = ssl.create_default_context(cafile=str(conf.ca_file) if conf.ca_file else None)
    return WebPushTransport(
        credentials.load,
        ssl_context=context,
        allowed_networks=parse_networks(conf.allowed_networks),
        connect_timeout=conf.connect_timeout_seconds,
        request_timeout=conf.request_timeout_seconds,
        connections_per_origin=conf.connections_per_origin,
        max_connections=conf.max_connections,
        ttl=conf.ttl_seconds,
        urgency=Urgency(conf.urgency),
        now=clock.now,
    )


def _wns(settings: Settings, credentials: Credentials, clock: Clock) -> WnsTransport:
    conf = settings.wns
    context = ssl.create_default_context(cafile=str(conf.ca_file) if conf.ca_file else None)
    return WnsTransport(
        credentials.load,
        token_url=conf.token_url,
        channel_hosts=conf.channel_hosts,
        ssl_context=context,
        connect_timeout=conf.connect_timeout_seconds,
        request_timeout=conf.request_timeout_seconds,
        connections_per_origin=conf.connections_per_origin,
        max_connections=conf.max_connections,
        now=clock.now,
    )


MAX_ENRICHMENT_BYTES = 1_048_576
"""An enrichment answer's cap: a batch of 500 users at 2 KiB each."""


def _enriching(
    settings: Settings,
    store: SqlStore,
    clock: Clock,
    closers: list[Callable[[], Awaitable[None]]],
) -> Enriching:
    hooks = settings.webhooks
    allowed = parse_networks(hooks.allowed_networks)
    fetcher = HttpWebhookSender(
        now=clock.now,
        allowed_networks=allowed,
        allow_http=hooks.allow_http,
        connect_timeout=min(hooks.connect_timeout_seconds, ENRICHMENT_TIMEOUT),
        # Enriching's own 2 s budget ends the exchange first; this is the backstop.
        timeout=ENRICHMENT_TIMEOUT + 1.0,
        max_response_bytes=MAX_ENRICHMENT_BYTES,
    )
    closers.append(fetcher.close)
    return Enriching(
        store,
        SqlRules(store.engine),
        fetcher,
        clock,
        allowed_networks=allowed,
        allow_http=hooks.allow_http,
    )


def _callbacks(settings: Settings, store: SqlStore, clock: Clock) -> Callbacks:
    hooks = settings.webhooks
    allowed = parse_networks(hooks.allowed_networks)
    sender = HttpWebhookSender(
        now=clock.now,
        allowed_networks=allowed,
        allow_http=hooks.allow_http,
        connect_timeout=hooks.connect_timeout_seconds,
        timeout=hooks.timeout_seconds,
        max_response_bytes=hooks.max_response_bytes,
    )
    return Callbacks(
        SqlWebhooks(store.engine, sealer_for(settings)),
        sender,
        clock,
        allowed_networks=allowed,
        allow_http=hooks.allow_http,
        batch=hooks.batch_size,
        commit_lag=hooks.commit_lag_seconds,
        poll_interval=hooks.poll_interval_seconds,
        retry_base=hooks.retry_base_seconds,
        retry_max=hooks.retry_max_seconds,
        timeout=hooks.timeout_seconds,
        concurrency=hooks.concurrency,
        max_per_tenant=hooks.max_per_tenant,
    )


async def migrate(settings: Settings) -> None:
    """Bring the configured database to the newest schema."""
    if engines.dialect_of(engines.normalise_url(settings.resolved_database_url)) == "sqlite":
        settings.data_dir.mkdir(parents=True, exist_ok=True)
    engine = engines.create_engine(settings.resolved_database_url)
    try:
        await migrating.migrate(engine)
    finally:
        await engine.dispose()
