"""The composition root: the one place that builds adapters and hands them to services."""

from __future__ import annotations

import base64
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from clarion.adapters.bus.memory import MemoryBus
from clarion.adapters.providers.apns import ApnsTransport
from clarion.adapters.sealing import Sealer, load_or_create_key
from clarion.adapters.storage import engines, migrating
from clarion.adapters.storage.credentials import SqlCredentials
from clarion.adapters.storage.sql import SqlStore
from clarion.adapters.storage.statistics import SqlStatistics
from clarion.adapters.storage.webhooks import SqlWebhooks
from clarion.adapters.vault import Vault
from clarion.adapters.webhooks_http import HttpWebhookSender
from clarion.domain.channels import REALTIME, Channel
from clarion.services.accepting import Accepting
from clarion.services.acknowledging import Acknowledging
from clarion.services.callbacks import Callbacks
from clarion.services.clocks import SystemClock
from clarion.services.credentials import Credentials
from clarion.services.delivering import Delivering
from clarion.services.devices import Devices
from clarion.services.directory import Directory
from clarion.services.inboxes import Inboxes
from clarion.services.ports import Bus, Clock, Transport
from clarion.services.realtime import Realtime
from clarion.services.relaying import Relay
from clarion.services.reporting import Reporting
from clarion.services.routing import Routing
from clarion.services.statistics import ProducerStatistics
from clarion.services.subscriptions import Subscriptions
from clarion.services.tenancy import Tenancy
from clarion.services.tokens import UserTokens
from clarion.settings import Settings
from clarion.wire.webhooks import parse_networks


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
    transports: dict[Channel, Transport] = field(default_factory=dict)
    closers: list[Callable[[], Awaitable[None]]] = field(default_factory=list)

    async def close(self) -> None:
        """Close provider connections, then release the database pool."""
        for closer in self.closers:
            await closer()
        await self.store.close()


def sealer_for(settings: Settings) -> Sealer:
    """The sealer for tenant secrets, from the configured key or the key file."""
    if settings.secret_key:
        return Sealer(base64.b64decode(settings.secret_key))
    return Sealer(load_or_create_key(settings.secret_key_file))


def build(settings: Settings, *, clock: Clock | None = None, bus: Bus | None = None) -> Clarion:
    """Wire Clarion for `settings`. Nothing connects until first used."""
    clock = clock or SystemClock()
    store = SqlStore(
        engines.create_engine(
            settings.resolved_database_url, pool_size=settings.database_pool_size
        ),
        sealer_for(settings),
    )
    credentials = Credentials(SqlCredentials(store.engine, Vault(sealer_for(settings))), clock)
    # Provider transports (APNs, FCM, WNS, Web Push, email) are wired here as they arrive.
    transports: dict[Channel, Transport] = {}
    closers: list[Callable[[], Awaitable[None]]] = []
    if settings.apns.enabled:
        apns = _apns(settings, credentials)
        transports[Channel.APNS] = apns
        closers.append(apns.close)
    bus = bus or MemoryBus()
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
        ),
        routing=Routing(store, bus, clock),
        relay=relay,
        realtime=Realtime(store, tokens, clock, page=settings.gateway.backlog_page),
        acknowledging=acknowledging,
        inboxes=Inboxes(store, bus, clock, acknowledging),
        subscriptions=Subscriptions(store, clock),
        devices=Devices(store, clock),
        reporting=Reporting(store),
        statistics=ProducerStatistics(SqlStatistics(store.engine), clock),
        delivering=Delivering(store, clock, transports),
        callbacks=_callbacks(settings, store, clock),
        credentials=credentials,
        transports=transports,
        closers=closers,
    )


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
