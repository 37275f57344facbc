"""Status webhooks, sans I/O: the payload, its signature, and which URLs and addresses are safe.

A producer registers a URL; Clarion POSTs the status changes of its inbox items there in
batches::

    POST <url>
    Content-Type: application/json
    Clarion-Signature: t=1767225600,v1=5f2b...e9

    {"webhook": "orders", "changes": [{"id": 812, "item_id": 40, "notification_id": "...",
      "event_id": "...", "user": "ann", "from": "pending", "to": "sent",
      "at": "2026-01-01T00:00:00.123456Z"}]}

The signature is HMAC-SHA256, keyed with the webhook's secret (its UTF-8 bytes), over
``"<t>." + <the raw body bytes>``, written as lowercase hex after ``v1=``; ``t`` is the time of the
attempt in Unix seconds, so a receiver can refuse replays (`verify`, with a tolerance of
`SIGNATURE_TOLERANCE_SECONDS`). The scheme is that of Stripe's webhooks; a receiver must verify the
raw body before parsing it.

The SSRF guard (OWASP API7; RFC 8620 §8.6 asks the same of push URLs): every address a webhook's
host resolves to must be public (`refusal`), or inside a network the operator allowed; plain
``http`` goes only to such allowed networks. The adapter resolves the name, checks every address
and connects to the one it checked, so a second DNS answer cannot swap in another.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from urllib.parse import urlsplit

from clarion.domain import outcomes
from clarion.domain.records import StatusChange

SIGNATURE_HEADER = "Clarion-Signature"
"""The header that carries ``t=<unix seconds>,v1=<hex HMAC-SHA256>``."""

SIGNATURE_TOLERANCE_SECONDS = 300  # Stripe's default: wide enough for skewed clocks and queues
MAX_URL_LENGTH = 2000  # what every browser and proxy handles; longer is a mistake or an attack
MAX_RETRY_AFTER_SECONDS = 3600.0  # a receiver may slow us down, not park its webhook for days

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class UnsafeUrl(ValueError):
    """A webhook URL Clarion will not call; the message says why."""


@dataclass(frozen=True, slots=True)
class Answer:
    """A receiver's answer read in full (up to the adapter's cap): enrichment webhooks answer
    with data, where status webhooks only answer with a status."""

    status: int
    body: bytes
    truncated: bool = False
    """The body was longer than the cap, and cut there."""
    retry_after: str | None = None
    """The ``Retry-After`` header, as sent."""


# ---------------------------------------------------------------------------------------------
# payload and signature


def change_json(change: StatusChange) -> dict[str, object]:
    """One status change as the receiver sees it."""
    return {
        "id": change.id,
        "item_id": change.item_id,
        "notification_id": change.notification_id,
        "event_id": change.event_id,
        "user": change.user,
        "from": None if change.source is None else str(change.source),
        "to": str(change.target),
        "at": _iso(change.at),
    }


def payload(webhook: str, changes: Iterable[StatusChange]) -> bytes:
    """The body of one POST: compact UTF-8 JSON, changes in audit-trail order."""
    document = {"webhook": webhook, "changes": [change_json(c) for c in changes]}
    return json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode()


def signature(secret: str, body: bytes, *, timestamp: int) -> str:
    """The ``Clarion-Signature`` value for `body` sent at `timestamp` (Unix seconds)."""
    return f"t={timestamp},v1={_mac(secret, body, timestamp)}"


def verify(
    secret: str,
    body: bytes,
    header: str,
    *,
    now: int,
    tolerance: int = SIGNATURE_TOLERANCE_SECONDS,
) -> bool:
    """Whether `header` signs `body` with `secret` within `tolerance` seconds of `now`.

    What a receiver does: split the header on ``,`` into ``key=value`` pairs, take ``t`` and
    every ``v1``, refuse when ``t`` is further than `tolerance` from its own clock (a replay),
    and compare each ``v1`` in constant time with the HMAC it computes itself.
    """
    timestamp: int | None = None
    candidates: list[str] = []
    for part in header.split(","):
        key, _, value = part.strip().partition("=")
        if key == "t" and value.isdigit():
            timestamp = int(value)
        elif key == "v1":
            candidates.append(value)
    if timestamp is None or not candidates or abs(now - timestamp) > tolerance:
        return False
    expected = _mac(secret, body, timestamp)
    return any(hmac.compare_digest(expected, c) for c in candidates)


def _mac(secret: str, body: bytes, timestamp: int) -> str:
    return hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()


def _iso(at: datetime) -> str:
    return at.astimezone(UTC).isoformat().replace("+00:00", "Z")


# ---------------------------------------------------------------------------------------------
# responses and retries


def parse_retry_after(value: str | None, *, now: datetime) -> float | None:
    """Seconds a ``Retry-After`` header asks for (delta-seconds or HTTP-date, RFC 9110 §10.2.3),
    or None when absent or unreadable."""
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max((when - now).total_seconds(), 0.0)


def classify(status: int, *, retry_after: float | None) -> outcomes.Outcome:
    """What a receiver's answer means: 2xx delivered the batch, anything else is retried.

    Redirects are not followed (the new target was never vetted), so a 3xx is a failure too.
    """
    if 200 <= status < 300:
        return outcomes.Delivered()
    if 300 <= status < 400:
        return outcomes.RetryLater(f"HTTP {status}: redirects are not followed")
    return outcomes.RetryLater(f"HTTP {status}", retry_after)


def retry_delay(
    failures: int, *, base: float, cap: float, hint: float | None, jitter: float
) -> float:
    """Seconds to wait after the `failures`-th failure in a row.

    Exponential from `base`, capped at `cap`, with "equal jitter" (`jitter` in [0, 1) keeps
    between half and all of it) so that webhooks failing together do not retry together; never
    sooner than the receiver's Retry-After (`hint`, itself capped at an hour). Webhooks never give
    up: the cursor waits, so nothing is dropped while a receiver is down.
    """
    delay = min(cap, base * 2.0 ** max(failures - 1, 0)) * (0.5 + jitter / 2)
    if hint is not None:
        delay = max(delay, min(hint, MAX_RETRY_AFTER_SECONDS))
    return delay


# ---------------------------------------------------------------------------------------------
# the SSRF guard

_V4 = ipaddress.IPv4Network
_V6 = ipaddress.IPv6Network
_REFUSED: tuple[tuple[IPNetwork, str], ...] = (
    (_V4("0.0.0.0/8"), "unspecified"),
    (_V4("127.0.0.0/8"), "loopback"),
    (_V4("10.0.0.0/8"), "private (RFC 1918)"),
    (_V4("172.16.0.0/12"), "private (RFC 1918)"),
    (_V4("192.168.0.0/16"), "private (RFC 1918)"),
    (_V4("169.254.0.0/16"), "link-local (cloud metadata lives here)"),
    (_V4("100.64.0.0/10"), "shared address space (CGNAT, RFC 6598)"),
    (_V4("192.0.0.0/24"), "IETF protocol assignments"),
    (_V4("198.18.0.0/15"), "benchmarking"),
    (_V4("224.0.0.0/4"), "multicast"),
    (_V4("240.0.0.0/4"), "reserved"),
    (_V6("::/128"), "unspecified"),
    (_V6("::1/128"), "loopback"),
    (_V6("::/96"), "IPv4-compatible (deprecated)"),
    (_V6("fc00::/7"), "unique-local (RFC 4193)"),
    (_V6("fe80::/10"), "link-local"),
    (_V6("fec0::/10"), "site-local (deprecated)"),
    (_V6("ff00::/8"), "multicast"),
    (_V6("64:ff9b:1::/48"), "local-use NAT64"),
    (_V6("100::/64"), "discard-only"),
    (_V6("2001::/32"), "Teredo tunnel"),
)
_NAT64 = _V6("64:ff9b::/96")


def refusal(address: IPAddress, allowed: Sequence[IPNetwork] = ()) -> str | None:
    """Why Clarion will not connect to `address`, or None when it may.

    Refused: loopback, private (RFC 1918), link-local (169.254.169.254, the cloud metadata
    service), CGNAT, unique-local, multicast, unspecified, reserved, and any other address that
    is not globally reachable, including IPv4 addresses wrapped in IPv6 (mapped, NAT64, 6to4).
    `allowed` networks, set by the operator, are let through whatever they contain.
    """
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if is_allowed(address, allowed):
        return None
    for network, reason in _REFUSED:
        if network.version == address.version and address in network:
            return reason
    if isinstance(address, ipaddress.IPv6Address):
        inner, wrapper = _embedded_ipv4(address)
        if inner is not None:
            why = refusal(inner, allowed)
            return None if why is None else f"{why}, wrapped in {wrapper}"
    if not address.is_global:
        return "not a public address"
    return None


def is_allowed(address: IPAddress, allowed: Sequence[IPNetwork]) -> bool:
    """Whether `address` is inside one of the operator's `allowed` networks."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return any(n.version == address.version and address in n for n in allowed)


def _embedded_ipv4(address: ipaddress.IPv6Address) -> tuple[ipaddress.IPv4Address | None, str]:
    if address.sixtofour is not None:
        return address.sixtofour, "6to4"
    if address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF), "NAT64"
    return None, ""


def parse_networks(cidrs: Iterable[str]) -> tuple[IPNetwork, ...]:
    """The operator's allowed networks from CIDR text (``127.0.0.1/32``, ``fd00::/8``)."""
    return tuple(ipaddress.ip_network(c.strip(), strict=False) for c in cidrs)


@dataclass(frozen=True, slots=True)
class Target:
    """Where a webhook URL points: what to resolve, where to connect, what to call the host."""

    scheme: str
    host: str
    """The host name (lowercase), or the literal address without brackets."""
    port: int
    literal: IPAddress | None
    """The address when the URL names one instead of a host name."""

    @property
    def host_header(self) -> str:
        """The ``Host`` header for the request (RFC 9110 §7.2): the name, and the port when
        it is not the scheme's default."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.scheme == "https" else 80
        return host if self.port == default else f"{host}:{self.port}"


_HOST_NAME = re.compile(r"^(?=.{1,253}$)([a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?\.?)+$")
_NUMERIC_LABEL = re.compile(r"^(0x[0-9a-f]*|[0-9]+)$")


def parse_url(url: str, *, allow_http: bool, allowed: Sequence[IPNetwork] = ()) -> Target:
    """The target of a webhook URL, or `UnsafeUrl` saying why Clarion will not call it.

    What can be told from the URL alone is checked here: ``https`` (``http`` only when the
    operator allows it, and then only to allowed networks), no credentials, no fragment, a
    well-formed host name, and a literal address that passes `refusal`. Host names are checked
    when they are resolved, before every request.
    """
    if len(url) > MAX_URL_LENGTH:
        raise UnsafeUrl(f"the URL is longer than {MAX_URL_LENGTH} characters")
    if any(ch.isspace() or not ch.isprintable() for ch in url):
        raise UnsafeUrl("the URL holds blanks or control characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise UnsafeUrl(f"the URL cannot be parsed: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme not in ("https", "http"):
        raise UnsafeUrl("the URL must be https://")
    if scheme == "http" and not allow_http:
        raise UnsafeUrl("the URL must be https:// (plain http is not allowed on this server)")
    if parts.username is not None or parts.password is not None:
        raise UnsafeUrl("the URL must not carry credentials; the signature authenticates us")
    if parts.fragment:
        raise UnsafeUrl("the URL must not have a #fragment")
    host = (parts.hostname or "").lower()
    if not host:
        raise UnsafeUrl("the URL names no host")
    literal: IPAddress | None
    try:
        literal = ipaddress.ip_address(host)
    except ValueError:
        literal = None
    if literal is None:
        if not host.isascii() or not _HOST_NAME.match(host):
            raise UnsafeUrl("the host is not a valid name (write internationalised names as xn--)")
        if _NUMERIC_LABEL.match(host.rstrip(".").rsplit(".", 1)[-1]):
            raise UnsafeUrl("the host looks like a numeric address in a form that is not allowed")
    else:
        why = refusal(literal, allowed)
        if why is not None:
            raise UnsafeUrl(f"the address {literal} is not allowed: {why}")
        if scheme == "http" and not is_allowed(literal, allowed):
            raise UnsafeUrl("plain http is allowed only to the operator's allowed networks")
    default_port = 443 if scheme == "https" else 80
    return Target(scheme=scheme, host=host, port=port or default_port, literal=literal)


def vet_addresses(
    target: Target, addresses: Sequence[IPAddress], allowed: Sequence[IPNetwork]
) -> str | None:
    """Why the resolved `addresses` of `target` may not be called, or None when all may.

    Every address must pass, not just the one used: a name that resolves to a public and a
    private address at once is an attack on exactly this check.
    """
    if not addresses:
        return f"{target.host} resolves to no address"
    for address in addresses:
        why = refusal(address, allowed)
        if why is not None:
            return f"{target.host} resolves to {address}, which is not allowed: {why}"
    if target.scheme == "http" and not all(is_allowed(a, allowed) for a in addresses):
        return "plain http is allowed only to the operator's allowed networks"
    return None
