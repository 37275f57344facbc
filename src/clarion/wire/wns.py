"""WNS, sans I/O: the access-token request, the notification request, what an answer means.

Everything here follows docs/research protocols sheet §3 (WNS), itself drawn from Microsoft's
"Push notification service request and response headers" [W-HDR], "WNS notification
priorities" [W-PRI] and the Windows App SDK push quickstart [W-SDK]. The adapter
(``adapters/providers/wns``) owns the HTTP/1.1 client, the clock and the cached access token;
it hands this module values and gets values back.

The flow, per app:

1. `token_request_body` is the client-credentials form POSTed to the token URL (the legacy
   Live endpoint `LEGACY_TOKEN_URL`, or Entra's `entra_token_url`); `classify_token_response`
   turns the answer into an `AccessToken` (or a failure).
2. `build_request` makes the ``POST <channel URI>`` for one `Notification`; `toast_xml` and
   `badge_xml` build the common XML bodies with every text escaped.
3. `classify_response` reads the status and the ``X-WNS-*`` headers: an `outcomes.Outcome`, or
   `RefreshAccessToken` when a 401 says our token went stale (refresh, send once more with
   ``retried_with_new_token=True``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from enum import IntEnum, StrEnum
from typing import Any, Final
from urllib.parse import urlencode, urlsplit

from clarion.domain import errors, outcomes

LEGACY_TOKEN_URL: Final = "https://login.live.com/accesstoken.srf"  # noqa: S105 (a URL)
"""The token endpoint for Store apps, with the Package SID as ``client_id`` [W-HDR]."""
LEGACY_SCOPE: Final = "notify.windows.com"
"""The ``scope`` the legacy endpoint wants [W-HDR]."""
ENTRA_SCOPE: Final = "https://wns.windows.com/.default"
"""The ``scope`` for Windows App SDK apps, with the Azure app id as ``client_id`` [W-SDK]."""
TOKEN_REQUEST_CONTENT_TYPE: Final = "application/x-www-form-urlencoded"  # noqa: S105 (not a secret)
TOKEN_REFRESH_MARGIN: Final = timedelta(minutes=5)
# Tokens live a day (86400 s, Entra 86399 s); five minutes early keeps a token from expiring
# between the check and a request queued behind others, and absorbs clock skew.

CHANNEL_HOST_SUFFIX: Final = "notify.windows.com"
"""Channel URIs come from clients; Clarion POSTs only to hosts under this domain (protocols
sheet §3, e.g. ``https://dm3p.notify.windows.com/?token=...``), or to hosts the operator
names for an emulator."""
MAX_CHANNEL_URI_CHARS: Final = 2048
"""A bound on what a client may register: real channel URIs are a few hundred characters."""
MAX_PAYLOAD_BYTES: Final = 5000
"""WNS answers 413 above 5000 bytes [W-HDR]."""
MAX_TAG_CHARS: Final = 16
"""``X-WNS-Tag`` and ``X-WNS-Group``: "an alphanumeric string of no more than 16 characters"
[W-HDR]."""
MAX_REASON_CHARS: Final = 200
"""How much of ``X-WNS-Error-Description`` a reason keeps."""

BADGE_GLYPHS: Final = frozenset(
    {
        "none",
        "activity",
        "alarm",
        "alert",
        "attention",
        "available",
        "away",
        "busy",
        "error",
        "newMessage",
        "paused",
        "playing",
        "unavailable",
    }
)
"""The glyphs a badge may show instead of a number."""

_TAG = re.compile(r"[A-Za-z0-9]{1,16}")
# XML 1.0 §2.2: the characters a document may hold; anything else cannot even be escaped.
_NOT_XML_CHAR = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


class NotificationType(StrEnum):
    """``X-WNS-Type`` [W-HDR]."""

    TOAST = "wns/toast"
    TILE = "wns/tile"
    BADGE = "wns/badge"
    RAW = "wns/raw"

    @property
    def content_type(self) -> str:
        """``text/xml`` for toast, tile and badge; ``application/octet-stream`` for raw."""
        return "application/octet-stream" if self is NotificationType.RAW else "text/xml"


class CachePolicy(StrEnum):
    """``X-WNS-Cache-Policy``: whether WNS keeps the notification for an offline device
    (tile, badge and raw) [W-HDR]."""

    CACHE = "cache"
    NO_CACHE = "no-cache"


class Priority(IntEnum):
    """``X-WNS-PRIORITY`` [W-PRI]; WNS defaults to 1 for toast, 2 for tile and badge, 3 for raw."""

    HIGH = 1
    MEDIUM = 2
    LOW = 3
    VERY_LOW = 4


# --- access token [W-HDR][W-SDK] ---------------------------------------------------------------


def entra_token_url(tenant: str) -> str:
    """The Entra (Windows App SDK) token endpoint of `tenant` [W-SDK].

    Raises:
        errors.InvalidRequest: `tenant` is not a tenant id or domain.
    """
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9.-]{0,252}", tenant):
        raise errors.InvalidRequest("the Entra tenant must be a tenant id or domain")
    return f"https://login.microsoftonline.com/{tenant}/oauth2/v2.0/token"


def token_request_body(client_id: str, client_secret: str, *, scope: str = LEGACY_SCOPE) -> bytes:
    """The client-credentials form (``Content-Type:`` `TOKEN_REQUEST_CONTENT_TYPE`):
    ``grant_type=client_credentials``, ``client_id`` (the Package SID, or the Azure app id for
    Entra), ``client_secret``, ``scope`` (`LEGACY_SCOPE` or `ENTRA_SCOPE`), URL-encoded
    [W-HDR][W-SDK].

    Raises:
        errors.InvalidRequest: an empty id, secret or scope.
    """
    if not client_id or not client_secret or not scope:
        raise errors.InvalidRequest("the WNS client id, secret and scope must not be empty")
    form = {
        "grant_type": "client_credentials",
        "client_id": client_id,
        "client_secret": client_secret,
        "scope": scope,
    }
    return urlencode(form).encode("ascii")


@dataclass(frozen=True, slots=True)
class AccessToken:
    """A WNS access token and when to replace it.

    Attributes:
        value: the bearer token (never shown in a repr).
        expires_at: when WNS stops taking it.
        refresh_at: when to fetch the next one: `TOKEN_REFRESH_MARGIN` before expiry, or
            halfway through its life when that is shorter.
    """

    value: str = field(repr=False)
    expires_at: datetime
    refresh_at: datetime

    def needs_refresh(self, now: datetime) -> bool:
        """Whether to fetch a new token before the next send."""
        return now >= self.refresh_at


DEFAULT_TOKEN_LIFETIME: Final = timedelta(hours=24)
"""Assumed when a token answer has no ``expires_in``: the legacy endpoint documents only
``access_token`` and ``token_type`` as parameters, though its example sends 86400 [W-HDR]."""


def classify_token_response(
    status: int,
    headers: Mapping[str, str] | Iterable[tuple[str, str]],
    body: bytes,
    *,
    now: datetime,
) -> AccessToken | outcomes.AuthFailed | outcomes.RetryLater:
    """What the token endpoint's answer means [W-HDR][W-SDK].

    - 200 with ``access_token`` (``token_type`` bearer when present; ``expires_in`` positive
      when present, else `DEFAULT_TOKEN_LIFETIME`): an `AccessToken` issued at `now`.
    - 400 (the legacy endpoint's only failure: "The authentication failed"), 401, 403:
      `AuthFailed`: the Package SID or secret is wrong.
    - 429 and 5xx: `RetryLater`, honouring ``Retry-After``.
    - A 200 that cannot be read, or any other status: `RetryLater`.
    """
    found = _headers(headers)
    raw = _json_object(body)
    if status == 200:
        token = _read_access_token(raw, now)
        return token or outcomes.RetryLater("the WNS token endpoint's answer is unreadable")
    label = f"OAuth HTTP {status}"
    error = raw.get("error") if raw is not None else None
    description = raw.get("error_description") if raw is not None else None
    if isinstance(error, str) and error:
        label += f" {_clip(error)}"
    if isinstance(description, str) and description:
        label += f": {_clip(description)}"
    if status in (400, 401, 403):
        return outcomes.AuthFailed(label)
    return outcomes.RetryLater(label, parse_retry_after(found.get("retry-after"), now=now))


def _read_access_token(raw: dict[str, Any] | None, now: datetime) -> AccessToken | None:
    if raw is None:
        return None
    value, lifetime, kind = raw.get("access_token"), raw.get("expires_in"), raw.get("token_type")
    if not isinstance(value, str) or not value or not value.isprintable():
        return None
    if kind is not None and (not isinstance(kind, str) or kind.lower() != "bearer"):
        return None
    if lifetime is None:
        life = DEFAULT_TOKEN_LIFETIME
    elif isinstance(lifetime, bool) or not isinstance(lifetime, int) or lifetime <= 0:
        return None
    else:
        life = timedelta(seconds=lifetime)
    early = max(life - TOKEN_REFRESH_MARGIN, life / 2)
    return AccessToken(value=value, expires_at=now + life, refresh_at=now + early)


# --- channel URIs ------------------------------------------------------------------------------


def validate_channel_uri(
    uri: str, *, extra_hosts: Collection[str] = (), allow_http: bool = False
) -> str:
    """`uri`, unchanged, when Clarion may POST to it as a WNS channel.

    A channel URI is an absolute ``https`` URL with a host under ``notify.windows.com``
    (protocols sheet §3), no user information and no fragment. `extra_hosts` (exact names) and
    `allow_http` admit a local emulator and are for the operator's configuration only.

    Raises:
        errors.InvalidRequest: saying which rule the URI breaks.
    """
    if not uri or len(uri) > MAX_CHANNEL_URI_CHARS or not uri.isascii():
        raise errors.InvalidRequest(
            f"the channel URI must be an ASCII URL of at most {MAX_CHANNEL_URI_CHARS} characters"
        )
    if any(ch.isspace() or not ch.isprintable() for ch in uri):
        raise errors.InvalidRequest("the channel URI holds blanks or control characters")
    try:
        parts = urlsplit(uri)
        parts.port  # noqa: B018 (raises ValueError for a malformed port)
    except ValueError as exc:
        raise errors.InvalidRequest(f"the channel URI cannot be parsed: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme != "https" and not (allow_http and scheme == "http"):
        raise errors.InvalidRequest("the channel URI must be an https:// URL")
    if "@" in parts.netloc:
        raise errors.InvalidRequest("the channel URI must not carry user information")
    if parts.fragment:
        raise errors.InvalidRequest("the channel URI must not have a #fragment")
    host = (parts.hostname or "").lower().rstrip(".")
    extra = {name.lower() for name in extra_hosts}
    if not host.endswith("." + CHANNEL_HOST_SUFFIX) and host not in extra:
        raise errors.InvalidRequest(f"the channel URI's host must be under {CHANNEL_HOST_SUFFIX}")
    return uri


# --- payloads ----------------------------------------------------------------------------------


def toast_xml(title: str, body: str | None = None, *, launch: str | None = None) -> bytes:
    """A ``ToastGeneric`` toast: the title, then the body, as ``<text>`` elements; `launch`
    (the arguments the app receives on click) as the ``launch`` attribute. Every value is
    XML-escaped; UTF-8 without a declaration::

        <toast launch="..."><visual><binding template="ToastGeneric">
        <text>title</text><text>body</text></binding></visual></toast>

    Raises:
        errors.InvalidRequest: a value holds a character XML 1.0 cannot carry (NUL and most
            control characters, lone surrogates).
    """
    texts = f"<text>{_xml_text(title, 'title')}</text>"
    if body is not None:
        texts += f"<text>{_xml_text(body, 'body')}</text>"
    attribute = "" if launch is None else f' launch="{_xml_attribute(launch, "launch")}"'
    return (
        f'<toast{attribute}><visual><binding template="ToastGeneric">{texts}'
        f"</binding></visual></toast>"
    ).encode()


def badge_xml(value: int | str) -> bytes:
    """A badge: a number (0 clears it; WNS shows 99+ above 99) or one of `BADGE_GLYPHS`::

        <badge value="3"/>

    Raises:
        errors.InvalidRequest: a negative number or an unknown glyph.
    """
    if isinstance(value, bool):
        raise errors.InvalidRequest("a badge value is a number or a glyph name")
    if isinstance(value, int):
        if value < 0:
            raise errors.InvalidRequest("a badge number must not be negative")
        return f'<badge value="{value}"/>'.encode()
    if value not in BADGE_GLYPHS:
        raise errors.InvalidRequest(f"unknown badge glyph {value!r}")
    return f'<badge value="{value}"/>'.encode()


def _xml_text(value: str, name: str) -> str:
    _check_xml_chars(value, name)
    # CR goes as a reference: a parser turns a literal one into LF (XML 1.0 §2.11).
    return (
        value.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("\r", "&#13;")
    )


def _xml_attribute(value: str, name: str) -> str:
    # Tabs and line feeds go as references too: a parser turns literal ones into spaces in an
    # attribute value (XML 1.0 §3.3.3).
    return (
        _xml_text(value, name)
        .replace('"', "&quot;")
        .replace("'", "&apos;")
        .replace("\t", "&#9;")
        .replace("\n", "&#10;")
    )


def _check_xml_chars(value: str, name: str) -> None:
    bad = _NOT_XML_CHAR.search(value)
    if bad is not None:
        raise errors.InvalidRequest(
            f"the toast {name} holds U+{ord(bad.group()):04X}, which XML cannot carry"
        )


# --- requests [W-HDR] --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Notification:
    """One notification to one channel [W-HDR].

    Attributes:
        channel_uri: where to POST (see `validate_channel_uri`).
        type: ``X-WNS-Type``; sets the ``Content-Type``.
        payload: the body: XML for toast, tile and badge (`toast_xml`, `badge_xml`), any bytes
            for raw; at most 5000 bytes.
        cache_policy: ``X-WNS-Cache-Policy``.
        ttl: ``X-WNS-TTL``, seconds from when WNS receives it; None: no expiry.
        tag: ``X-WNS-Tag``: replaces the queued tile (or toast) with the same tag.
        group: ``X-WNS-Group``: with `tag`, keeps toasts of different groups apart.
        priority: ``X-WNS-PRIORITY``; None leaves WNS's default for the type.
        request_for_status: ``X-WNS-RequestForStatus: true``, so the answer says whether the
            device is connected; on by default.
    """

    channel_uri: str
    type: NotificationType
    payload: bytes
    cache_policy: CachePolicy | None = None
    ttl: int | None = None
    tag: str | None = None
    group: str | None = None
    priority: Priority | None = None
    request_for_status: bool = True


@dataclass(frozen=True, slots=True)
class Request:
    """An HTTP/1.1 request for WNS (no chunking, no ``Expect: 100-continue`` [W-HDR]).

    Attributes:
        url: the channel URI.
        headers: ``(name, value)`` pairs, ``Authorization`` included; the client adds
            ``Content-Length`` (required) from `body`.
        body: the payload.
    """

    url: str
    headers: tuple[tuple[str, str], ...]
    body: bytes

    @property
    def method(self) -> str:
        """Always POST [W-HDR]."""
        return "POST"


def build_request(
    notification: Notification,
    *,
    access_token: str,
    extra_hosts: Collection[str] = (),
    allow_http: bool = False,
) -> Request:
    """The request that sends `notification` [W-HDR].

    Headers, in order: ``Authorization: Bearer``, ``Content-Type``, ``X-WNS-Type``, then the
    optional ``X-WNS-*`` headers that are set.

    Raises:
        errors.InvalidRequest: the channel URI is refused (`validate_channel_uri`), the access
            token is unusable, the payload is empty, over 5000 bytes or (for XML types) not
            UTF-8, the TTL is not a positive whole number, a tag or group is not 1 to 16
            letters and digits.
    """
    n = notification
    validate_channel_uri(n.channel_uri, extra_hosts=extra_hosts, allow_http=allow_http)
    if not access_token or not access_token.isprintable() or " " in access_token:
        raise errors.InvalidRequest("the access token must be a non-empty header value")
    try:
        kind = NotificationType(n.type)
    except ValueError as exc:
        raise errors.InvalidRequest("the type must be wns/toast, tile, badge or raw") from exc
    if not n.payload:
        raise errors.InvalidRequest("a WNS notification needs a payload")
    if len(n.payload) > MAX_PAYLOAD_BYTES:
        raise errors.InvalidRequest(
            f"the WNS payload is {len(n.payload)} bytes; WNS takes at most {MAX_PAYLOAD_BYTES}",
            size=len(n.payload),
            limit=MAX_PAYLOAD_BYTES,
        )
    if kind is not NotificationType.RAW:
        try:
            n.payload.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise errors.InvalidRequest(f"a {kind} payload must be UTF-8 XML") from exc
    headers: list[tuple[str, str]] = [
        ("Authorization", f"Bearer {access_token}"),
        ("Content-Type", kind.content_type),
        ("X-WNS-Type", str(kind)),
    ]
    if n.cache_policy is not None:
        try:
            headers.append(("X-WNS-Cache-Policy", str(CachePolicy(n.cache_policy))))
        except ValueError as exc:
            raise errors.InvalidRequest("the cache policy must be cache or no-cache") from exc
    if n.ttl is not None:
        if isinstance(n.ttl, bool) or not isinstance(n.ttl, int) or n.ttl <= 0:
            raise errors.InvalidRequest("the WNS TTL must be a positive number of seconds")
        headers.append(("X-WNS-TTL", str(n.ttl)))
    for name, value in (("X-WNS-Tag", n.tag), ("X-WNS-Group", n.group)):
        if value is None:
            continue
        if not _TAG.fullmatch(value):
            raise errors.InvalidRequest(
                f"{name} must be 1 to {MAX_TAG_CHARS} letters and digits [W-HDR]"
            )
        headers.append((name, value))
    if n.priority is not None:
        try:
            headers.append(("X-WNS-PRIORITY", str(int(Priority(n.priority)))))
        except ValueError as exc:
            raise errors.InvalidRequest("the WNS priority must be 1 to 4") from exc
    if n.request_for_status:
        headers.append(("X-WNS-RequestForStatus", "true"))
    return Request(url=n.channel_uri, headers=tuple(headers), body=n.payload)


# --- responses [W-HDR] -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RefreshAccessToken:
    """WNS refused our access token (401: "The OAuth ticket may be invalid"): fetch a new one
    and send this notification again, once [W-HDR]. Not an outcome: the delivery has not been
    decided yet."""

    reason: str


Classification = outcomes.Outcome | RefreshAccessToken
"""What `classify_response` returns: an outcome, or "refresh the token and resend once"."""


def classify_response(
    status: int,
    headers: Mapping[str, str] | Iterable[tuple[str, str]],
    body: bytes,
    *,
    now: datetime,
    retried_with_new_token: bool = False,
) -> Classification:
    """What a WNS answer means for the delivery, from the status and the ``X-WNS-Status``,
    ``X-WNS-Error-Description``, ``X-WNS-Msg-ID``, ``X-WNS-DeviceConnectionStatus`` and
    ``X-WNS-CONTINUE-AFTER`` headers [W-HDR]. The body is unused: WNS puts what it says in
    headers.

    - 200 ``received`` (or no ``X-WNS-Status``): `Delivered`, referenced by ``X-WNS-Msg-ID``.
      A 200 does not mean the device has it [W-HDR].
    - 200 ``dropped``: `Rejected` with a reason starting ``dropped``: WNS discarded it
      (an error, the client refuses these notifications, or a toast to an offline device);
      the drop is recorded as such and the channel kept.
    - 200 ``channelthrottled``, and 406 (the sender is throttled): `RetryLater`, after
      ``X-WNS-CONTINUE-AFTER`` (or ``Retry-After``) seconds when given. WNS documents no 429,
      but one (from a proxy, say) is treated as throttling too.
    - 401: `RefreshAccessToken`; `AuthFailed` when the request already used a token fetched
      after such a 401 (`retried_with_new_token`).
    - 403 (the token's app is not the channel's app): `AuthFailed`.
    - 404 (channel unknown) and 410 (channel expired): `TokenInvalid`.
    - 400, 405, 413 and other 4xx: `Rejected`. 5xx: `RetryLater`. Anything else: `RetryLater`.

    Reasons read ``HTTP <status>`` (or ``dropped``/``channelthrottled``) followed by WNS's
    ``X-WNS-Error-Description`` when it sent one.
    """
    found = _headers(headers)
    description = _clip(found.get("x-wns-error-description"))
    wns_status = found.get("x-wns-status", "").strip().lower()
    wait = _continue_after(found.get("x-wns-continue-after"))
    if wait is None:
        wait = parse_retry_after(found.get("retry-after"), now=now)
    if status == 200:
        if wns_status == "dropped":
            device = found.get("x-wns-deviceconnectionstatus", "").strip().lower()
            label = f"dropped (device {_clip(device)})" if device else "dropped"
            return outcomes.Rejected(_with(label, description))
        if wns_status == "channelthrottled":
            return outcomes.RetryLater(_with("channelthrottled", description), wait)
        return outcomes.Delivered(reference=found.get("x-wns-msg-id") or None)
    label = _with(f"HTTP {status}", description)
    if status == 401:
        if retried_with_new_token:
            return outcomes.AuthFailed(f"{label} (with a freshly fetched access token)")
        return RefreshAccessToken(label)
    if status == 403:
        return outcomes.AuthFailed(label)
    if status in (404, 410):
        return outcomes.TokenInvalid(label)
    if status in (406, 429) or 500 <= status < 600:
        return outcomes.RetryLater(label, wait)
    if 400 <= status < 500:
        return outcomes.Rejected(label)
    return outcomes.RetryLater(f"unexpected {label}", wait)


def parse_retry_after(value: str | None, *, now: datetime) -> float | None:
    """Seconds a ``Retry-After`` asks for: delta-seconds or an HTTP-date (RFC 9110 §10.2.3),
    measured from `now`; None when absent or unreadable. A date in the past gives 0."""
    if value is None:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():
        return float(int(value))
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max((when - now).total_seconds(), 0.0)


def _continue_after(value: str | None) -> float | None:
    # X-WNS-CONTINUE-AFTER: "an integer representing the number of seconds to wait" [W-HDR].
    if value is None:
        return None
    value = value.strip()
    return float(int(value)) if value.isascii() and value.isdigit() else None


def _with(label: str, description: str) -> str:
    return f"{label}: {description}" if description else label


def _clip(text: str | None) -> str:
    clean = "".join(ch if ch.isprintable() else " " for ch in text or "").strip()
    return clean if len(clean) <= MAX_REASON_CHARS else clean[: MAX_REASON_CHARS - 1] + "…"


def _headers(headers: Mapping[str, str] | Iterable[tuple[str, str]]) -> dict[str, str]:
    items = headers.items() if isinstance(headers, Mapping) else headers
    return {name.lower(): value for name, value in items}


def _json_object(data: bytes) -> dict[str, Any] | None:
    try:
        raw = json.loads(data)
    except (ValueError, RecursionError):
        return None
    return raw if isinstance(raw, dict) else None
