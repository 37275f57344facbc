"""One settings tree, a section per component, read from ``CLARION_*`` variables.

Nested sections use a double underscore: ``CLARION_GATEWAY__HEARTBEAT_SECONDS=15``. A few
everyday settings have short names too (``CLARION_DATABASE_URL``, ``CLARION_BUS``,
``CLARION_PORT``, ``CLARION_DATA_DIR``). Settings are built by the CLI and bootstrap only,
never at import time.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_PORT = 8080
DEFAULT_HOST = "127.0.0.1"  # listen on loopback unless told otherwise: no accidental exposure
DEFAULT_DATA_DIR = Path("var")  # relative to where clarion runs, as `make serve` expects


class ApiSettings(BaseModel):
    """The HTTP API."""

    # 1 MiB holds an event with the largest push payload (4 KiB) many times over, plus a long
    # recipient list, while keeping a hostile client from making us buffer much.
    max_body_bytes: int = Field(1_048_576, ge=1024)
    # Keys named in one event (users + groups + communities). Larger audiences go through groups,
    # which routing expands in the database.
    max_recipients_per_event: int = Field(10_000, ge=1, le=30_000)


class TokenSettings(BaseModel):
    """User tokens (JWT) handed to apps."""

    issuer: str = "clarion"
    audience: str = "clarion:user"
    # An hour keeps a stolen token's value short while sparing apps constant refreshes.
    default_ttl_seconds: int = Field(3600, ge=60)
    max_ttl_seconds: int = Field(86_400, ge=60)
    # Clock skew tolerated between Clarion and whoever checks the token; RFC 8725 practice.
    leeway_seconds: int = Field(30, ge=0, le=60)


class GatewaySettings(BaseModel):
    """The WebSocket gateway."""

    # Under the 30-60 s idle cut of common load balancers and NATs, so connections stay open.
    heartbeat_seconds: float = Field(25.0, gt=0)
    # Three missed heartbeats: long enough for a phone waking from doze, short enough to free
    # the slots of clients that vanished without a close.
    idle_timeout_seconds: float = Field(75.0, gt=0)
    auth_timeout_seconds: float = Field(10.0, gt=0)
    # Client frames are small receipts; 64 KiB bounds what one client can make us parse.
    max_frame_bytes: int = Field(65_536, ge=1024)
    # A client this many frames behind is too slow to keep; it reconnects with its cursor.
    send_queue_frames: int = Field(1000, ge=10)
    backlog_page: int = Field(500, ge=1)
    # Origins allowed to open a socket from a browser; empty means any (tokens are not
    # cookies, so a foreign page cannot ride a user's session).
    allowed_origins: list[str] = Field(default_factory=list)


class WorkerSettings(BaseModel):
    """Routing, relaying, and delivering through transports."""

    concurrency: int = Field(4, ge=1)
    # Events a router takes off the bus together and routes in one transaction: a batch costs
    # about the statements of one event, so a busy stream of small events is routed ~10x
    # faster than one by one. A router waits at most `routing_linger_seconds` to fill one.
    routing_batch: int = Field(50, ge=1, le=500)
    routing_linger_seconds: float = Field(0.005, ge=0, le=1.0)
    relay_interval_seconds: float = Field(0.5, gt=0)
    relay_batch: int = Field(500, ge=1)
    # An accepted event still unrouted after this long is handed to the bus again (a lost
    # message or a crashed router); routing is idempotent, so a duplicate does no harm.
    redeliver_after_seconds: float = Field(30.0, gt=0)
    drain_seconds: float = Field(10.0, ge=0)
    # Deliveries claimed (leased) per transaction. Each claim and each completion is one write
    # transaction (one fsync on SQLite), so larger batches amortise it; 500 keeps a batch
    # under APNs' 1,000 streams per connection and its transaction to a few milliseconds.
    delivery_batch: int = Field(500, ge=1, le=10_000)
    # Batches of one channel in flight at once: the next is claimed and sent while earlier
    # ones wait for the provider's answers or are being recorded.
    delivery_concurrency: int = Field(4, ge=1, le=64)
    # How long a worker owns the deliveries it claimed. Longer than any provider call's timeout
    # (30 s), so a live sender keeps its lease; a crashed worker's deliveries go out again
    # after this long, so it is also how long a crash delays them.
    delivery_lease_seconds: float = Field(60.0, ge=35.0, le=3600.0)


class LimitsSettings(BaseModel):
    """Backpressure on POST /v1/events: per-tenant rate limits and a service-wide bound.

    The rate limits are token buckets kept in each API process: behind N `clarion api`
    processes a tenant gets up to N times these rates. 0 means unlimited.
    """

    # Off by default: the right rate depends on the deployment; turn it on per installation.
    requests_per_second: float = Field(0.0, ge=0)
    # Requests a tenant may send at once after being idle; 0: one second's worth (at least 1).
    requests_burst: int = Field(0, ge=0)
    # Recipient keys (users + groups + communities named) per second; a group counts once.
    recipients_per_second: float = Field(0.0, ge=0)
    # 0: one second's worth (at least 1). An event naming more keys than the burst is let
    # through when the bucket is full, and the tenant then waits until the debt is paid.
    recipients_burst: int = Field(0, ge=0)
    # Accepted events not yet handed to the bus (unpublished outbox rows) beyond which new
    # events get 503 `overloaded`: the workers are far behind, or none is running. 100,000 is
    # minutes of work for one worker, yet bounded; 0 disables the check.
    max_unpublished_events: int = Field(100_000, ge=0)


class WebhookSettings(BaseModel):
    """Status webhooks: the callbacks that tell producers what became of their notifications."""

    # CIDRs the operator vouches for, let through the SSRF guard (a receiver on the same private
    # network, or 127.0.0.1/32 in tests). Empty: only public addresses are ever called.
    allowed_networks: list[str] = Field(default_factory=list)
    # Plain http exposes the payload and lets anyone on the path answer for the receiver, so even
    # when allowed it goes only to the allowed networks above.
    allow_http: bool = False
    # Changes per POST: a burst of receipts becomes a few requests, and a body stays ~30 KiB.
    batch_size: int = Field(100, ge=1, le=1000)
    # Short, so that a receiver that does not answer holds a dispatch slot for seconds, not minutes.
    connect_timeout_seconds: float = Field(3.0, gt=0)
    # For the whole request, resolution to last byte; a trickling receiver cannot stretch it.
    timeout_seconds: float = Field(10.0, gt=0)
    # The answer's body is ignored; at most this much is read (a hostile receiver cannot make
    # Clarion buffer a gigabyte).
    max_response_bytes: int = Field(16_384, ge=0)
    # Commit-lag guard: only audit entries older than this are sent. PostgreSQL hands out ids
    # before commit, so a lower id may become visible after a higher one; waiting this long
    # before moving the cursor past an id lets such a transaction commit instead of being
    # skipped. Status changes commit in milliseconds; 2 s is a wide margin.
    commit_lag_seconds: float = Field(2.0, ge=0)
    # How often due webhooks are looked for; with the lag guard, a change arrives in ~3 s.
    poll_interval_seconds: float = Field(1.0, gt=0)
    # Backoff after failures: doubling from the base to the cap (the cap matches deliveries').
    retry_base_seconds: float = Field(2.0, gt=0)
    retry_max_seconds: float = Field(600.0, gt=0)
    # Webhooks posted to at once, so that one slow receiver never delays another tenant's.
    concurrency: int = Field(8, ge=1)
    # Bounds the work one tenant can ask of the dispatcher.
    max_per_tenant: int = Field(10, ge=1)

    @field_validator("allowed_networks")
    @classmethod
    def _cidrs(cls, value: list[str]) -> list[str]:
        for cidr in value:
            try:
                ipaddress.ip_network(cidr.strip(), strict=False)
            except ValueError as exc:
                raise ValueError(f"{cidr!r} is not a CIDR network such as 10.0.0.0/8") from exc
        return value


class ApnsSettings(BaseModel):
    """The APNs transport (adapters/providers/apns)."""

    # Off until an operator has APNs credentials to push with; events naming "apns" are refused
    # while it is off.
    enabled: bool = False
    # Where to connect instead of Apple (an emulator); None: api[.sandbox].push.apple.com, chosen
    # by each credential's environment.
    host: str | None = None
    # 443 passes every firewall; APNs also listens on 2197.
    port: int = Field(443, ge=1, le=65535)
    # A PEM bundle to trust instead of the system's CAs (an emulator's self-signed certificate).
    ca_file: Path | None = None
    # TCP + TLS + the server's first SETTINGS; Apple answers in well under a second.
    connect_timeout_seconds: float = Field(10.0, gt=0)
    # One request, from waiting for a stream to the end of the answer; under the delivery
    # lease (60 s) so a slow answer becomes a retry, never a duplicate from another worker.
    request_timeout_seconds: float = Field(30.0, gt=0)
    # Our own ceiling on streams per connection; the server's SETTINGS_MAX_CONCURRENT_STREAMS
    # (1 before the first valid token, then about 1000) rules when lower.
    max_concurrent_streams: int = Field(1000, ge=1)
    # Backoff between failed connects to one APNs endpoint, doubling from base to cap: a dead
    # network is not hammered, and a recovered one is found again within a minute.
    reconnect_base_seconds: float = Field(1.0, gt=0)
    reconnect_max_seconds: float = Field(60.0, gt=0)
    # Apple asks for a PING on connections idle for long; we ping after this many idle seconds
    # (NATs and load balancers drop idle flows sooner than an hour).
    ping_interval_seconds: float = Field(600.0, gt=0)


class FcmSettings(BaseModel):
    """The FCM transport (adapters/providers/fcm): HTTP v1 over HTTP/2."""

    # Off until an operator has a service account to send with; events naming "fcm" are
    # refused while it is off.
    enabled: bool = False
    # Where to send instead of https://fcm.googleapis.com (an emulator); `http://` speaks
    # HTTP/2 with prior knowledge (h2c). None: Google.
    base_url: str | None = None
    # Where to fetch OAuth access tokens instead of each service account's token_uri (an
    # emulator). None: the account's token_uri, which the vault only takes on Google's hosts.
    token_url: str | None = None
    # A PEM bundle to trust instead of the system's CAs (an emulator's self-signed certificate).
    ca_file: Path | None = None
    # TCP + TLS; Google answers in well under a second.
    connect_timeout_seconds: float = Field(10.0, gt=0)
    # One send, from waiting for a stream to the end of the answer; under the delivery lease
    # (60 s) so that a slow answer becomes a retry, never a duplicate from another worker.
    request_timeout_seconds: float = Field(30.0, gt=0)
    # Sends in flight at once per process. Throughput comes from multiplexing, not batches;
    # bounding it keeps a burst from tripping FCM's per-project quota all at once.
    concurrency: int = Field(500, ge=1, le=10_000)
    # HTTP/2 connections the sends are spread over, and streams on each (capped by FCM's own
    # SETTINGS_MAX_CONCURRENT_STREAMS): a client's cost per stream grows with the streams open
    # on its connection, so 500 in flight go faster as 5 x 100 than as 1 x 500.
    connections: int = Field(5, ge=1, le=64)
    streams_per_connection: int = Field(100, ge=1, le=1000)


class WebPushSettings(BaseModel):
    """The Web Push transport (adapters/providers/webpush): RFC 8030/8291/8292 over HTTP/1.1."""

    # Off until an operator wants browser pushes; events naming "webpush" are refused while off.
    enabled: bool = False
    # CIDRs let through the SSRF guard: endpoints come from browsers (anyone), so by default one
    # that resolves to a loopback, private or link-local address is never called. Tests and a
    # local emulator need 127.0.0.1/32 here.
    allowed_networks: list[str] = Field(default_factory=list)
    # A PEM bundle to trust instead of the system's CAs (an emulator's self-signed certificate).
    ca_file: Path | None = None
    # TCP + TLS; push services answer in well under a second.
    connect_timeout_seconds: float = Field(10.0, gt=0)
    # One request, from waiting for a connection to the end of the answer; under the delivery
    # lease (60 s) so a slow answer becomes a retry, never a duplicate from another worker.
    request_timeout_seconds: float = Field(30.0, gt=0)
    # HTTP/1.1 carries one request per connection at a time: this bounds requests in flight to
    # one push service (FCM, Mozilla, Apple each are one origin) and, below, overall.
    connections_per_origin: int = Field(64, ge=1, le=1000)
    max_connections: int = Field(512, ge=1, le=10_000)
    # RFC 8030 TTL: how long the push service keeps a message for an offline browser. Four
    # weeks (FCM's maximum); 0 ("now or never") only when an operator asks for it.
    ttl_seconds: int = Field(2_419_200, ge=0, le=2**31 - 1)
    urgency: Literal["very-low", "low", "normal", "high"] = "normal"

    @field_validator("allowed_networks")
    @classmethod
    def _cidrs(cls, value: list[str]) -> list[str]:
        for cidr in value:
            try:
                ipaddress.ip_network(cidr.strip(), strict=False)
            except ValueError as exc:
                raise ValueError(f"{cidr!r} is not a CIDR network such as 10.0.0.0/8") from exc
        return value


class WnsSettings(BaseModel):
    """The WNS transport (adapters/providers/wns): OAuth client credentials, then HTTP/1.1."""

    # Off until an operator has WNS credentials; events naming "wns" are refused while off.
    enabled: bool = False
    # The legacy Live token endpoint (Package SID + secret); an emulator's URL in tests.
    token_url: str = "https://login.live.com/accesstoken.srf"  # noqa: S105 (a URL)
    # Channel URIs come from apps; only hosts under notify.windows.com are POSTed to, plus these
    # exact names (an emulator's host in tests).
    channel_hosts: list[str] = Field(default_factory=list)
    # A PEM bundle to trust instead of the system's CAs (an emulator's self-signed certificate).
    ca_file: Path | None = None
    connect_timeout_seconds: float = Field(10.0, gt=0)
    # Under the delivery lease (60 s), as for APNs.
    request_timeout_seconds: float = Field(30.0, gt=0)
    # WNS speaks HTTP/1.1 without pipelining: one request per connection at a time.
    connections_per_origin: int = Field(64, ge=1, le=1000)
    max_connections: int = Field(512, ge=1, le=10_000)


class EmailSettings(BaseModel):
    """The email channel (adapters/providers/smtp, ses, sendgrid) and the links mail carries."""

    # Off until an operator has a mail provider; events naming "email" are refused while off.
    enabled: bool = False
    # This server's https base as mail recipients reach it (https://notify.example.com): the
    # one-click unsubscribe links in every email point under it. Required when enabled.
    public_url: str | None = None
    # An address whose mail the operator reads, for the List-Unsubscribe mailto target; unset:
    # the https link alone (RFC 8058 needs only that).
    unsubscribe_mailto: str | None = None
    # A PEM bundle to trust instead of the system's CAs (an emulator's self-signed certificate).
    ca_file: Path | None = None
    # TCP + TLS (+ the SMTP greeting and EHLO); mail providers answer in well under a second.
    connect_timeout_seconds: float = Field(10.0, gt=0)
    # One send, under the delivery lease (60 s), so a slow answer becomes a retry, never a
    # duplicate from another worker.
    request_timeout_seconds: float = Field(30.0, gt=0)
    # CIDRs a tenant's SMTP host may resolve into. The host comes from the tenant, so by default
    # one resolving to a loopback, private or link-local address is never connected to (SSRF);
    # an operator's own relay on 10.0.0.25 needs 10.0.0.25/32 here, tests 127.0.0.1/32.
    smtp_allowed_networks: list[str] = Field(default_factory=list)
    # Connections per tenant relay (per credential): relays limit concurrent sessions per client
    # (often 5-10) and answer 421 above it; messages queue for a free connection instead.
    smtp_connections_per_host: int = Field(4, ge=1, le=100)
    # The name our EHLO gives; None: this machine's FQDN. Some relays check that it resolves.
    smtp_helo_name: str | None = None
    # Where SES v2 is instead of https://email.<region>.amazonaws.com (an emulator). None: AWS.
    ses_endpoint_url: str | None = None
    # Where SendGrid is instead of https://api.sendgrid.com (or api.eu.sendgrid.com for EU
    # credentials): an emulator. None: SendGrid.
    sendgrid_base_url: str | None = None
    # Sends in flight at once per mailer (SMTP transactions, SES or SendGrid requests) in this
    # process: a burst queues here rather than tripping the provider's rate limits all at once.
    max_concurrency: int = Field(128, ge=1, le=10_000)
    # SNS bounce feed (POST /v1/mail-events/ses/...): https URL prefixes, each ending in "/"
    # (https://127.0.0.1:8443/), that a SigningCertURL or SubscribeURL may point at besides
    # sns.<region>.amazonaws.com: an emulator's. Empty in production, where only SNS may sign.
    sns_allowed_url_prefixes: list[str] = Field(default_factory=list)
    # A PEM bundle to trust instead of the system's CAs when fetching SNS certificates (an
    # emulator's self-signed certificate); AWS's hosts need the system's.
    sns_ca_file: Path | None = None
    # SendGrid's signed event posts: how far the signature's timestamp may be from our clock.
    # SendGrid signs each attempt as it sends it, so this only has to cover clock skew and
    # transit; a longer window lets a captured post be replayed for longer.
    sendgrid_signature_max_age_seconds: float = Field(600.0, gt=0, le=86_400)

    @field_validator("smtp_allowed_networks")
    @classmethod
    def _smtp_cidrs(cls, value: list[str]) -> list[str]:
        for cidr in value:
            try:
                ipaddress.ip_network(cidr.strip(), strict=False)
            except ValueError as exc:
                raise ValueError(f"{cidr!r} is not a CIDR network such as 10.0.0.0/8") from exc
        return value


class AdminSettings(BaseModel):
    """The operators' API (/v1/admin: dead letters)."""

    # The bearer token operators send to /v1/admin. Unset: those routes answer 404, as if they
    # did not exist. At least 32 characters, so that it cannot be guessed; compared in constant
    # time. Generate one with `python3 -c 'import secrets; print(secrets.token_urlsafe(32))'`.
    token: SecretStr | None = Field(None, min_length=32, max_length=512)


class StreamSettings(BaseModel):
    """How the bus hands out work (docs/bus.md); the same for every backend."""

    # A message taken and not acknowledged within this long goes to another consumer. Above the
    # routers' patience with an unreachable database (45 s), so a router that is waiting it out
    # keeps its message.
    visibility_timeout_seconds: float = Field(60.0, ge=50.0)
    # Handed out this many times without success: moved to `<stream>.dead` (see `clarion dlq`).
    max_deliveries: int = Field(5, ge=1)
    # Publishes of the same event id within this window are stored once.
    dedupe_window_seconds: float = Field(120.0, gt=0)
    # Bound on a stream's length (backpressure); None: the backend's default.
    max_length: int | None = Field(None, ge=1)
    # Names of streams, groups and keys start with this, so several deployments can share a
    # broker.
    prefix: str = Field("clarion", pattern=r"^[A-Za-z0-9_-]{1,32}$")


class Settings(BaseSettings):
    """Everything Clarion can be told."""

    model_config = SettingsConfigDict(
        env_prefix="CLARION_",
        env_nested_delimiter="__",
        extra="forbid",
        env_file=None,
        # Errors name the setting, never its value: values may be secrets (the admin token,
        # the sealing key, a database URL's password).
        hide_input_in_errors=True,
    )

    data_dir: Path = DEFAULT_DATA_DIR
    database_url: str | None = None
    # The bus between API and workers: "memory" (in-process: one process only), "redis" (Redis
    # Streams) or "nats" (NATS JetStream), the last two with `bus_url`. See docs/bus.md.
    bus: Literal["memory", "redis", "nats"] = "memory"
    # redis://[:password@]host:6379/0 (rediss:// for TLS) or nats://[user:password@]host:4222.
    bus_url: str | None = None
    host: str = DEFAULT_HOST
    port: int = Field(DEFAULT_PORT, ge=0, le=65535)
    # The key sealing tenant secrets, base64 of 32 bytes; by default kept in data_dir.
    secret_key: str | None = None
    database_pool_size: int = Field(10, ge=1)
    # PostgreSQL: time allowed to open a connection. Short, so that a database that is down
    # turns into 503 `unavailable` within seconds instead of a request that hangs.
    database_connect_timeout_seconds: float = Field(3.0, gt=0)
    # PostgreSQL: time a transaction waits for a pooled connection when all are busy.
    database_pool_timeout_seconds: float = Field(5.0, gt=0)
    # PostgreSQL: the longest one statement may take (client side, so it also bounds a silent
    # network). Above the largest fan-out statement; 0 means no limit.
    database_statement_timeout_seconds: float = Field(60.0, ge=0)
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    # JSON lines for log shippers; "console" reads better in a terminal during development.
    log_format: Literal["json", "console"] = "json"
    # Off by default: request paths carry user ids, which are often email addresses.
    access_log: bool = False

    streams: StreamSettings = StreamSettings()
    api: ApiSettings = ApiSettings()
    tokens: TokenSettings = TokenSettings()
    gateway: GatewaySettings = GatewaySettings()
    worker: WorkerSettings = WorkerSettings()
    webhooks: WebhookSettings = WebhookSettings()
    apns: ApnsSettings = ApnsSettings()
    webpush: WebPushSettings = WebPushSettings()
    wns: WnsSettings = WnsSettings()
    fcm: FcmSettings = FcmSettings()
    email: EmailSettings = EmailSettings()
    limits: LimitsSettings = LimitsSettings()
    admin: AdminSettings = AdminSettings()

    @field_validator("database_url")
    @classmethod
    def _known_database(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("sqlite", "postgresql", "postgres")):
            raise ValueError("database_url must be a sqlite:/// or postgresql:// URL")
        return value

    @model_validator(mode="after")
    def _bus_has_url(self) -> Settings:
        if self.bus != "memory" and not self.bus_url:
            raise ValueError(f"bus {self.bus!r} needs bus_url (CLARION_BUS_URL)")
        return self

    @property
    def resolved_database_url(self) -> str:
        """The database to use: the configured one, or SQLite in the data directory."""
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'clarion.db').resolve()}"

    @property
    def secret_key_file(self) -> Path:
        """Where the sealing key lives when not given in settings."""
        return self.data_dir / "secret.key"
