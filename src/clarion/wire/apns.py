"""APNs, sans I/O: build the HTTP/2 request, mint the provider token, classify the answer.

Everything here follows docs/research protocols sheet §1 (APNs), itself drawn from Apple's
"Sending notification requests to APNs" [AP-send], "Handling notification responses from APNs"
[AP-resp] and "Establishing a token-based connection to APNs" [AP-tok]. The adapter
(``adapters/providers/apns``) owns the connections, the clock and the signing key; it hands this
module values and gets values back.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import Enum, IntEnum, StrEnum
from typing import Any, Final, Literal
from uuid import UUID

import jwt
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from clarion.domain import errors, outcomes

PRODUCTION_HOST: Final = "api.push.apple.com"
SANDBOX_HOST: Final = "api.sandbox.push.apple.com"
PORT: Final = 443
"""APNs also listens on 2197 [AP-send]; 443 is the one every network lets through."""

MAX_PAYLOAD_BYTES: Final = 4096
"""Largest body APNs takes, uncompressed JSON [AP-send]."""
MAX_VOIP_PAYLOAD_BYTES: Final = 5120
"""Largest body for a VoIP push [AP-send]."""
MAX_COLLAPSE_ID_BYTES: Final = 64
"""Longest ``apns-collapse-id`` [AP-send]."""

TOKEN_MIN_AGE: Final = timedelta(minutes=20)
"""APNs answers 429 TooManyProviderTokenUpdates to a new token sooner than this [AP-tok]."""
TOKEN_MAX_AGE: Final = timedelta(minutes=60)
"""An ``iat`` older than this gets 403 ExpiredProviderToken [AP-tok]."""
TOKEN_REFRESH_AGE: Final = timedelta(minutes=50)
# Apple: reuse a token "as close to 1 h as possible" [AP-f2]; 50 min (apns2-go's 3000 s) keeps
# ten minutes for clock skew between us and Apple and for requests already in flight.

# 500/503 without Retry-After: no floor of our own, so the retry schedule's capped exponential
# backoff with jitter applies (2 s, 4 s, ... up to 10 minutes). Apple suggests waiting 15 minutes
# before retrying a payload that got a 5xx [AP-resp]; taken literally, every push caught in a
# one-minute blip would arrive a quarter of an hour late. The backoff reaches Apple's pace after
# nine attempts, so a long outage is not hammered, and a Retry-After, when sent, always wins.
TOO_MANY_REQUESTS_RETRY_SECONDS: Final = 60.0
# Apple gives no figure for 429; a minute lets the per-token rate limit (or a fresh connection,
# after TooManyProviderTokenUpdates) recover without holding the message for long.

NEVER_INDEXED: Final = frozenset({":path", "authorization"})
"""Headers to send as HPACK literals never indexed [AP-send]; ``h2`` does so for
``authorization`` by itself but needs ``NeverIndexedHeaderTuple`` for ``:path`` [H2]."""

RENEW_TOKEN_REASONS: Final = frozenset({"ExpiredProviderToken"})
"""Reasons after which the adapter mints a new provider token (within the 20-minute rule)."""
RECONNECT_REASONS: Final = frozenset(
    {"IdleTimeout", "Shutdown", "TooManyProviderTokenUpdates", "UnrelatedKeyIdInToken"}
)
"""Reasons (in a response or a GOAWAY) after which the adapter opens a new connection [AP-resp]."""

_HEX_TOKEN = re.compile(r"(?:[0-9a-fA-F]{2})+")
_KEY_OR_TEAM_ID = re.compile(r"[0-9A-Za-z]{10}")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class Environment(StrEnum):
    """Which APNs to talk to: a device token belongs to exactly one [AP-send]."""

    PRODUCTION = "production"
    SANDBOX = "sandbox"

    @property
    def host(self) -> str:
        """The host name of this environment's provider API."""
        return PRODUCTION_HOST if self is Environment.PRODUCTION else SANDBOX_HOST


class PushType(StrEnum):
    """The ``apns-push-type`` values [AP-send]."""

    ALERT = "alert"
    BACKGROUND = "background"
    VOIP = "voip"
    COMPLICATION = "complication"
    FILEPROVIDER = "fileprovider"
    MDM = "mdm"
    LOCATION = "location"
    LIVEACTIVITY = "liveactivity"
    PUSHTOTALK = "pushtotalk"
    WIDGETS = "widgets"
    CONTROLS = "controls"


TOPIC_SUFFIXES: Final[Mapping[PushType, str]] = {
    PushType.VOIP: ".voip",
    PushType.COMPLICATION: ".complication",
    PushType.FILEPROVIDER: ".pushkit.fileprovider",
    PushType.LOCATION: ".location-query",
    PushType.LIVEACTIVITY: ".push-type.liveactivity",
    PushType.PUSHTOTALK: ".voip-ptt",
    PushType.WIDGETS: ".push-type.widgets",
    PushType.CONTROLS: ".push-type.controls",
}
"""What ``apns-topic`` appends to the bundle ID per push type [AP-send]. ``alert`` and
``background`` use the bare bundle ID; ``mdm`` uses the topic from the MDM certificate as is."""

TOKEN_AUTH_ONLY: Final = frozenset({PushType.LOCATION, PushType.LIVEACTIVITY})
"""Push types APNs takes only with token (JWT) authentication [AP-send]."""


class Priority(IntEnum):
    """The ``apns-priority`` values [AP-send]."""

    IMMEDIATE = 10
    """Deliver now (the default)."""
    CONSIDER_POWER = 5
    """Deliver when it suits the device's power; the only one allowed for ``background``."""
    PRIORITIZE_POWER = 1
    """Deliver with power first; never wakes the device."""


class Expiration(Enum):
    """Special values of ``apns-expiration``."""

    ONCE = 0
    """``apns-expiration: 0``: try once, do not store [AP-send]."""


@dataclass(frozen=True, slots=True)
class Notification:
    """One push to one device, as APNs takes it [AP-send].

    Attributes:
        device_token: the device token in hex (any even length: Apple says not to assume one).
        topic: the app's bundle ID; `build_request` appends the push type's suffix
            (`TOPIC_SUFFIXES`), so pass ``com.example.app``, never ``com.example.app.voip``.
            For ``mdm`` it is the topic from the MDM certificate, sent as is.
        push_type: ``apns-push-type``, sent with every push.
        priority: ``apns-priority``; None means 5 for ``background`` and 10 otherwise.
        expiration: when APNs stops trying (a timezone-aware datetime), `Expiration.ONCE`
            to try once without storing, or None for APNs's own storage policy.
        collapse_id: ``apns-collapse-id``, at most 64 bytes of UTF-8.
        apns_id: ``apns-id``; the caller generates it (APNs makes one up when absent).
        title, subtitle, body: the ``aps.alert`` dictionary.
        badge, sound, thread_id, category: the ``aps`` keys of those names.
        mutable_content, content_available: ``aps`` flags, sent as 1 when set;
            ``content-available`` is always set for ``background``.
        aps_extra: further ``aps`` keys (``interruption-level``, ``content-state``, a
            localized ``alert`` dictionary, ...); it may not repeat a key the fields above set.
        custom_data: top-level keys beside ``aps``.
    """

    device_token: str
    topic: str
    push_type: PushType = PushType.ALERT
    priority: Priority | None = None
    expiration: datetime | Literal[Expiration.ONCE] | None = None
    collapse_id: str | None = None
    apns_id: UUID | None = None
    title: str | None = None
    subtitle: str | None = None
    body: str | None = None
    badge: int | None = None
    sound: str | None = None
    thread_id: str | None = None
    category: str | None = None
    mutable_content: bool = False
    content_available: bool = False
    aps_extra: Mapping[str, Any] = field(default_factory=dict)
    custom_data: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Request:
    """An HTTP/2 request for APNs, ready for ``h2``.

    Attributes:
        host, port: where to connect [AP-send].
        path: ``/3/device/<token>``.
        headers: pseudo-headers first, then the ``apns-*`` headers, as ``h2`` wants them.
        body: compact UTF-8 JSON.
        never_indexed: header names to send as HPACK literals never indexed [AP-send].
    """

    host: str
    port: int
    path: str
    headers: tuple[tuple[str, str], ...]
    body: bytes
    never_indexed: frozenset[str] = NEVER_INDEXED

    @property
    def method(self) -> str:
        """Always POST [AP-send]."""
        return "POST"


def payload(notification: Notification) -> dict[str, Any]:
    """The JSON object APNs receives for `notification` [AP-send].

    Raises:
        errors.InvalidRequest: a custom key named ``aps``, an ``aps_extra`` key that repeats a
            field, a negative badge, or alert keys on a ``background`` push.
    """
    n = notification
    if "aps" in n.custom_data:
        raise errors.InvalidRequest("custom data may not use the key 'aps'")
    alert = {
        key: value
        for key, value in (("title", n.title), ("subtitle", n.subtitle), ("body", n.body))
        if value is not None
    }
    aps: dict[str, Any] = {}
    if alert:
        aps["alert"] = alert
    if n.badge is not None:
        if n.badge < 0 or isinstance(n.badge, bool):
            raise errors.InvalidRequest("badge must be a non-negative integer")
        aps["badge"] = n.badge
    if n.sound is not None:
        aps["sound"] = n.sound
    if n.thread_id is not None:
        aps["thread-id"] = n.thread_id
    if n.category is not None:
        aps["category"] = n.category
    if n.content_available or n.push_type is PushType.BACKGROUND:
        aps["content-available"] = 1
    if n.mutable_content:
        aps["mutable-content"] = 1
    repeated = sorted(set(aps) & set(n.aps_extra))
    if repeated:
        raise errors.InvalidRequest(f"aps_extra repeats {', '.join(repeated)}")
    aps.update(n.aps_extra)
    if n.push_type is PushType.BACKGROUND and {"alert", "sound", "badge"} & set(aps):
        # A background update carries no alert, sound or badge [AP-send, background updates].
        raise errors.InvalidRequest("a background push may not carry an alert, sound or badge")
    body: dict[str, Any] = {"aps": aps} if aps else {}
    body.update(n.custom_data)
    return body


def encode_payload(notification: Notification) -> bytes:
    """`payload` as compact UTF-8 JSON, within APNs's size limit [AP-send].

    Raises:
        errors.InvalidRequest: `payload` refused it, it is not JSON (a non-finite number, an
            object JSON has no form for), or it is over 4096 bytes (5120 for ``voip``).
    """
    try:
        body = json.dumps(
            payload(notification), separators=(",", ":"), ensure_ascii=False, allow_nan=False
        ).encode()
    except (TypeError, ValueError, RecursionError) as exc:
        raise errors.InvalidRequest(f"the APNs payload is not JSON: {exc}") from exc
    limit = max_payload_bytes(notification.push_type)
    if len(body) > limit:
        raise errors.InvalidRequest(
            f"the APNs payload is {len(body)} bytes; a {notification.push_type} push "
            f"takes at most {limit}",
            size=len(body),
            limit=limit,
        )
    return body


def max_payload_bytes(push_type: PushType) -> int:
    """The body size limit for `push_type`: 5120 bytes for VoIP, 4096 otherwise [AP-send]."""
    return MAX_VOIP_PAYLOAD_BYTES if push_type is PushType.VOIP else MAX_PAYLOAD_BYTES


def build_request(
    notification: Notification, *, environment: Environment, authorization: str | None
) -> Request:
    """The request that sends `notification` [AP-send].

    Args:
        notification: what to send.
        environment: production or sandbox; the device token belongs to one of them.
        authorization: the provider token (a signed JWT) for token authentication, or None
            with certificate authentication (the TLS client certificate then authenticates).

    Raises:
        errors.InvalidRequest: the token is not hex, the topic or collapse id is unusable,
            the priority breaks the push type's rule, the push type needs token
            authentication, the expiration is naive or before 1970, or the body is refused
            (see `encode_payload`).
    """
    n = notification
    if not _HEX_TOKEN.fullmatch(n.device_token):
        raise errors.InvalidRequest("the device token must be a non-empty even-length hex string")
    if not n.topic or not n.topic.isascii() or not _is_header_value(n.topic) or " " in n.topic:
        raise errors.InvalidRequest("the topic must be a bundle ID")
    if authorization is None and n.push_type in TOKEN_AUTH_ONLY:
        raise errors.InvalidRequest(f"APNs takes {n.push_type} pushes only with token auth")
    if authorization is not None and (not authorization or not _is_header_value(authorization)):
        raise errors.InvalidRequest("the provider token must be a non-empty header value")
    priority = _priority(n)
    headers: list[tuple[str, str]] = [
        (":method", "POST"),
        (":scheme", "https"),
        (":authority", environment.host),
        (":path", f"/3/device/{n.device_token}"),
    ]
    if authorization is not None:
        headers.append(("authorization", f"bearer {authorization}"))
    headers += [
        ("apns-topic", n.topic + TOPIC_SUFFIXES.get(n.push_type, "")),
        ("apns-push-type", str(n.push_type)),
        ("apns-priority", str(int(priority))),
    ]
    if n.expiration is not None:
        headers.append(("apns-expiration", str(_expiration_seconds(n.expiration))))
    if n.collapse_id is not None:
        size = len(n.collapse_id.encode())
        if not n.collapse_id or size > MAX_COLLAPSE_ID_BYTES or not _is_header_value(n.collapse_id):
            raise errors.InvalidRequest(
                f"the collapse id must be 1 to {MAX_COLLAPSE_ID_BYTES} bytes without control "
                f"characters (it is {size})"
            )
        headers.append(("apns-collapse-id", n.collapse_id))
    if n.apns_id is not None:
        headers.append(("apns-id", str(n.apns_id)))
    return Request(
        host=environment.host,
        port=PORT,
        path=f"/3/device/{n.device_token}",
        headers=tuple(headers),
        body=encode_payload(n),
    )


def _priority(n: Notification) -> Priority:
    if n.push_type is PushType.BACKGROUND:
        if n.priority not in (None, Priority.CONSIDER_POWER):
            # "background" with 10 "is an error" [AP-send].
            raise errors.InvalidRequest("a background push must use priority 5")
        return Priority.CONSIDER_POWER
    if n.priority is None:
        return Priority.IMMEDIATE
    try:
        return Priority(n.priority)
    except ValueError as exc:
        raise errors.InvalidRequest("the priority must be 10, 5 or 1") from exc


def _expiration_seconds(expiration: datetime | Literal[Expiration.ONCE]) -> int:
    if expiration is Expiration.ONCE:
        return 0
    seconds = _epoch_seconds(expiration, "expiration")
    if seconds <= 0:
        raise errors.InvalidRequest("the expiration must be after 1970 (use Expiration.ONCE)")
    return seconds


def _epoch_seconds(at: datetime, name: str) -> int:
    if at.tzinfo is None or at.utcoffset() is None:
        raise errors.InvalidRequest(f"the {name} must be timezone-aware")
    return (at - _EPOCH) // timedelta(seconds=1)


def _is_header_value(value: str) -> bool:
    # No control characters: CR, LF and NUL would end or corrupt the header.
    return value.isprintable()


# --- provider token (JWT) [AP-tok] -------------------------------------------------------------


def provider_token_header(key_id: str) -> dict[str, str]:
    """The JOSE header of a provider token: ``{"alg": "ES256", "kid": <key id>}`` [AP-tok].

    Raises:
        errors.InvalidRequest: `key_id` is not a 10-character Key ID.
    """
    if not _KEY_OR_TEAM_ID.fullmatch(key_id):
        raise errors.InvalidRequest("the APNs key id must be the 10-character Key ID")
    return {"alg": "ES256", "kid": key_id}


def provider_token_claims(team_id: str, issued_at: datetime) -> dict[str, str | int]:
    """The claims of a provider token: ``{"iss": <team id>, "iat": <unix seconds>}`` [AP-tok].

    Raises:
        errors.InvalidRequest: `team_id` is not a 10-character Team ID, or `issued_at` is naive.
    """
    if not _KEY_OR_TEAM_ID.fullmatch(team_id):
        raise errors.InvalidRequest("the APNs team id must be the 10-character Team ID")
    return {"iss": team_id, "iat": _epoch_seconds(issued_at, "issue time")}


def sign_provider_token(
    private_key_pem: str | bytes, key_id: str, team_id: str, issued_at: datetime
) -> str:
    """A provider token signed with the ``.p8`` P-256 key, ES256 [AP-tok].

    The header carries only ``alg`` and ``kid``, as Apple shows it.

    Raises:
        errors.InvalidRequest: the key is not a PEM P-256 private key, or an id is malformed.
    """
    header = provider_token_header(key_id)
    claims = provider_token_claims(team_id, issued_at)
    pem = private_key_pem.encode() if isinstance(private_key_pem, str) else private_key_pem
    try:
        key = load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as exc:
        raise errors.InvalidRequest("the APNs signing key is not a PEM private key") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP256R1):
        raise errors.InvalidRequest("the APNs signing key must be a P-256 (ES256) key")
    return jwt.encode(claims, key, algorithm="ES256", headers={**header, "typ": None})


def needs_refresh(issued_at: datetime, now: datetime, *, expired_by_apns: bool = False) -> bool:
    """Whether to mint a new provider token now [AP-tok].

    APNs wants a token refreshed no more than once per 20 minutes and no less than once per
    60. A token is refreshed at 50 minutes (`TOKEN_REFRESH_AGE`); after APNs answered
    ``ExpiredProviderToken`` (`expired_by_apns`), as soon as it is 20 minutes old: never
    sooner, or APNs answers ``TooManyProviderTokenUpdates`` and the connection is unusable.
    A token issued "in the future" (the clock went back) is kept.
    """
    age = now - issued_at
    if expired_by_apns:
        return age >= TOKEN_MIN_AGE
    return age >= TOKEN_REFRESH_AGE


# --- responses [AP-resp] -------------------------------------------------------------------


_REJECTED_400: Final = frozenset(
    {
        "BadCollapseId",
        "BadExpirationDate",
        "BadMessageId",
        "BadPriority",
        "BadTopic",
        "DuplicateHeaders",
        "InvalidPushType",
        "MissingDeviceToken",
        "MissingTopic",
        "PayloadEmpty",
        "TopicDisallowed",
    }
)
_AUTH_FAILED_403: Final = frozenset(
    {
        "InvalidProviderToken",
        "MissingProviderToken",
        "BadCertificate",
        "BadCertificateEnvironment",
        "Forbidden",
        "UnrelatedKeyIdInToken",
        "BadEnvironmentKeyIdInToken",
    }
)
_EXPLANATIONS: Final[Mapping[str, str]] = {
    "DeviceTokenNotForTopic": "the token belongs to another app or topic; token kept",
    "BadCertificateEnvironment": "the certificate is for the other environment "
    "(sandbox/production mismatch)",
    "BadEnvironmentKeyIdInToken": "the key is not enabled for this environment "
    "(sandbox/production mismatch)",
    "UnrelatedKeyIdInToken": "the key is not of this connection's team; open a new connection",
}


def parse_reason(body: bytes) -> str | None:
    """The ``reason`` of an APNs error body (or GOAWAY debug data), if it has one [AP-resp]."""
    raw = _json_object(body)
    reason = raw.get("reason") if raw is not None else None
    return reason if isinstance(reason, str) and reason else None


def parse_goaway_reason(debug_data: bytes) -> str | None:
    """Why APNs closed the connection: GOAWAY debug data is JSON ``{"reason": ...}``
    (``Shutdown``, ``IdleTimeout``, ``BadCertificateEnvironment``, ...) [AP-send][AP-resp].

    Returns None for empty or unreadable debug data.
    """
    return parse_reason(debug_data)


def classify_response(
    status: int,
    headers: Mapping[str, str] | Iterable[tuple[str, str]],
    body: bytes,
    *,
    token_registered_at: datetime | None,
) -> outcomes.Outcome:
    """What an APNs answer means for the delivery, per the reason table [AP-resp].

    Reasons read ``<APNs reason>`` or ``<APNs reason>: <why>``; without a readable reason the
    status alone decides, and the reason is ``HTTP <status>``.

    - 200: `Delivered`, referenced by the response's ``apns-id``.
    - 400 ``BadDeviceToken``, 410 (``Unregistered``, ``ExpiredToken``, or no reason):
      `TokenInvalid`, except a 410 whose ``timestamp`` (ms since epoch) is before
      `token_registered_at`: the app registered the token again since, so it is kept and only
      this message is `Rejected` (Apple: never retry these).
    - 400 ``DeviceTokenNotForTopic``: `Rejected` with the mismatch named; the token is kept,
      since the fault is as likely the topic we sent as the token.
    - 400 ``IdleTimeout``: `RetryLater` (reconnect). Other 400s, 404, 405, 413, and any
      other 4xx: `Rejected`.
    - 403 ``ExpiredProviderToken``: `RetryLater` with a new token (see `needs_refresh`);
      every other 403: `AuthFailed`, the credential needs fixing.
    - 429 (``TooManyRequests``, ``TooManyProviderTokenUpdates``): `RetryLater`, after a
      minute unless ``Retry-After`` says otherwise.
    - 5xx: `RetryLater` on the retry backoff unless ``Retry-After`` says otherwise.

    ``Retry-After`` (delta-seconds) is honoured on every `RetryLater`.
    """
    found = _headers(headers)
    if status == 200:
        return outcomes.Delivered(reference=found.get("apns-id"))
    reason = parse_reason(body)
    label = reason or f"HTTP {status}"
    described = f"{label}: {_EXPLANATIONS[label]}" if label in _EXPLANATIONS else label
    retry_after = _retry_after(found.get("retry-after"))
    if status == 410:
        registered = _registered_since(body, token_registered_at)
        if registered:
            return outcomes.Rejected(f"{label}: the token was registered again since; token kept")
        return outcomes.TokenInvalid(label)
    if status == 400 and reason == "BadDeviceToken":
        return outcomes.TokenInvalid(label)
    if status == 400 and reason == "IdleTimeout":
        return outcomes.RetryLater(label, retry_after)
    if status == 403:
        if reason in RENEW_TOKEN_REASONS:
            return outcomes.RetryLater(label, retry_after)
        return outcomes.AuthFailed(described)
    if status == 429:
        return outcomes.RetryLater(label, _or(retry_after, TOO_MANY_REQUESTS_RETRY_SECONDS))
    if 400 <= status < 500:
        return outcomes.Rejected(described)
    if 500 <= status < 600:
        return outcomes.RetryLater(label, retry_after)
    # APNs answers nothing else; at-least-once means an unknown answer is tried again.
    return outcomes.RetryLater(f"unexpected {label}", retry_after)


def _or(value: float | None, default: float) -> float:
    return default if value is None else value


def _headers(headers: Mapping[str, str] | Iterable[tuple[str, str]]) -> dict[str, str]:
    items = headers.items() if isinstance(headers, Mapping) else headers
    return {name.lower(): value for name, value in items}


def _retry_after(value: str | None) -> float | None:
    # Delta-seconds only: an HTTP-date needs a clock, and APNs is not known to send one.
    if value is None:
        return None
    value = value.strip()
    if not value.isascii() or not value.isdigit() or len(value) > 9:
        return None
    return float(int(value))


def _registered_since(body: bytes, registered_at: datetime | None) -> bool:
    if registered_at is None:
        return False
    raw = _json_object(body)
    stamp = raw.get("timestamp") if raw is not None else None
    if not isinstance(stamp, int | float) or isinstance(stamp, bool) or stamp != stamp:
        return False
    if registered_at.tzinfo is None or registered_at.utcoffset() is None:
        raise errors.InvalidRequest("the token registration time must be timezone-aware")
    return (registered_at - _EPOCH) / timedelta(milliseconds=1) > stamp


def _json_object(data: bytes) -> dict[str, Any] | None:
    try:
        raw = json.loads(data)
    except (ValueError, RecursionError):
        return None
    return raw if isinstance(raw, dict) else None
