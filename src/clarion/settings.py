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

from pydantic import BaseModel, Field, field_validator
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
    """Routing and relaying."""

    concurrency: int = Field(4, ge=1)
    relay_interval_seconds: float = Field(0.5, gt=0)
    relay_batch: int = Field(500, ge=1)
    # An accepted event still unrouted after this long is handed to the bus again (a lost
    # message or a crashed router); routing is idempotent, so a duplicate does no harm.
    redeliver_after_seconds: float = Field(30.0, gt=0)
    drain_seconds: float = Field(10.0, ge=0)


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


class Settings(BaseSettings):
    """Everything Clarion can be told."""

    model_config = SettingsConfigDict(
        env_prefix="CLARION_", env_nested_delimiter="__", extra="forbid", env_file=None
    )

    data_dir: Path = DEFAULT_DATA_DIR
    database_url: str | None = None
    bus: Literal["memory"] = "memory"
    host: str = DEFAULT_HOST
    port: int = Field(DEFAULT_PORT, ge=0, le=65535)
    # The key sealing tenant secrets, base64 of 32 bytes; by default kept in data_dir.
    secret_key: str | None = None
    database_pool_size: int = Field(10, ge=1)
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    # JSON lines for log shippers; "console" reads better in a terminal during development.
    log_format: Literal["json", "console"] = "json"
    # Off by default: request paths carry user ids, which are often email addresses.
    access_log: bool = False

    api: ApiSettings = ApiSettings()
    tokens: TokenSettings = TokenSettings()
    gateway: GatewaySettings = GatewaySettings()
    worker: WorkerSettings = WorkerSettings()
    webhooks: WebhookSettings = WebhookSettings()
    apns: ApnsSettings = ApnsSettings()

    @field_validator("database_url")
    @classmethod
    def _known_database(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("sqlite", "postgresql", "postgres")):
            raise ValueError("database_url must be a sqlite:/// or postgresql:// URL")
        return value

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
