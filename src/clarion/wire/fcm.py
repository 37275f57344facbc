"""FCM HTTP v1, sans I/O: the service-account OAuth flow, the message, and what an answer means.

Everything here follows docs/research protocols sheet §2 (FCM HTTP v1), itself drawn from
firebase-admin-python [FA], Google's service-account OAuth guide [G-SA] and Firebase's error
reference [F-ERR][F-EC]. The adapter (``adapters/providers/fcm``) owns the HTTP/2 client, the clock
and the cached access token; it hands this module values and gets values back.

The flow, per project:

1. `parse_service_account` reads the service-account JSON once.
2. `sign_assertion` makes an RS256 JWT; `token_request_body` is the form POSTed to its
   ``token_uri``; `classify_token_response` turns the answer into an `AccessToken` (or a
   failure). `AccessToken.needs_refresh` says when to do it again.
3. `build_request` makes ``POST /v1/projects/{id}/messages:send`` for one `Message`.
4. `classify_response` says what the answer means: an `outcomes.Outcome`, or
   `RefreshAccessToken` when a plain 401 says our access token went stale: the adapter gets a
   new one and sends again once, passing ``retried_with_new_token=True``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from enum import StrEnum
from typing import Any, Final
from urllib.parse import urlencode, urlsplit

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from clarion.domain import errors, outcomes

HOST: Final = "fcm.googleapis.com"
SEND_PATH: Final = "/v1/projects/{project_id}/messages:send"
"""The one send method left: legacy HTTP, XMPP and ``/batch`` are shut down [F-DEPR]."""

SCOPE: Final = "https://www.googleapis.com/auth/firebase.messaging"
"""The narrowest OAuth scope that can send [G-SA]."""
GRANT_TYPE: Final = "urn:ietf:params:oauth:grant-type:jwt-bearer"
"""The token request's ``grant_type`` [G-SA]."""
TOKEN_REQUEST_CONTENT_TYPE: Final = "application/x-www-form-urlencoded"  # noqa: S105 (not a secret)
ASSERTION_LIFETIME: Final = timedelta(seconds=3600)
"""``exp`` - ``iat`` of the assertion: Google's maximum, one hour [G-SA]."""
TOKEN_REFRESH_MARGIN: Final = timedelta(minutes=5)
# Google's tokens live 3599 s; refreshing five minutes early keeps a token from expiring
# between the check and the request, under clock skew, on a send queued behind others.

MAX_PAYLOAD_BYTES: Final = 4096
"""The payload limit for a message to a token [F-ERR] (see `payload_size` for what counts)."""
MAX_TOPIC_PAYLOAD_BYTES: Final = 2048
"""The payload limit for a message to a topic [F-ERR]; Clarion applies it to conditions too,
since a condition is a message to topics."""
MAX_APNS_PAYLOAD_BYTES: Final = 4096
"""The ``apns.payload`` FCM hands to APNs as is: APNs's own limit on its compact JSON."""
MAX_TTL: Final = timedelta(seconds=2_419_200)
"""``android.ttl`` runs from 0 to four weeks [F-ERR]."""

QUOTA_RETRY_SECONDS: Final = 60.0
# Firebase: retry QUOTA_EXCEEDED "with exponential backoff and a minimum initial delay of 1
# minute" [F-ERR]; used when the 429 carries no Retry-After.
MAX_REASON_CHARS: Final = 200
"""How much of FCM's error message a reason keeps."""

FCM_ERROR_TYPE: Final = "type.googleapis.com/google.firebase.fcm.v1.FcmError"
APNS_ERROR_TYPE: Final = "type.googleapis.com/google.firebase.fcm.v1.ApnsError"

RESERVED_DATA_KEYS: Final = frozenset({"from", "gcm"})
"""Data keys FCM uses itself, besides any starting with ``google`` [F-ERR]."""

_PROJECT_ID = re.compile(r"[a-z0-9][a-z0-9.:-]{0,99}")
_TOPIC = re.compile(r"[A-Za-z0-9\-_.~%]{1,900}")
_ANALYTICS_LABEL = re.compile(r"[A-Za-z0-9\-_.~%]{1,50}")
_WEBPUSH_TOPIC = re.compile(r"[A-Za-z0-9_-]{1,32}")
_WEBPUSH_URGENCIES: Final = frozenset({"very-low", "low", "normal", "high"})
_INVALID_TOKEN_MESSAGE = re.compile(r"registration token is not a valid", re.IGNORECASE)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


# --- service account and OAuth [G-SA] ----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ServiceAccount:
    """The parts of a Google service-account key file the OAuth flow uses [G-SA].

    Attributes:
        project_id: the Firebase project messages are sent in.
        client_email: the assertion's ``iss``.
        private_key: the RSA key, PEM (never shown in a repr).
        private_key_id: the assertion header's ``kid``, when the file has one.
        token_uri: where to exchange the assertion; also its ``aud``. A test file pointing at
            the emulator redirects auth without code changes.
    """

    project_id: str
    client_email: str
    private_key: str = field(repr=False)
    token_uri: str
    private_key_id: str | None = None


def parse_service_account(
    document: str | bytes | Mapping[str, Any], *, allow_http: bool = False
) -> ServiceAccount:
    """A `ServiceAccount` from the JSON key file Google issues.

    Args:
        document: the file's text, or the object already parsed.
        allow_http: accept an ``http://`` ``token_uri`` (a local emulator); otherwise the
            signed assertion, good for an hour, only ever goes over TLS.

    Raises:
        errors.InvalidRequest: not JSON; ``type`` is not ``service_account``; ``project_id``,
            ``client_email``, ``private_key`` or ``token_uri`` is missing or malformed; the
            key is not an RSA private key in PEM.
    """
    raw: Any = document
    if isinstance(document, str | bytes):
        try:
            raw = json.loads(document)
        except (ValueError, RecursionError) as exc:
            raise errors.InvalidRequest("the service account file is not JSON") from exc
    if not isinstance(raw, Mapping):
        raise errors.InvalidRequest("the service account file must be a JSON object")
    if raw.get("type") != "service_account":
        raise errors.InvalidRequest("the file's type must be 'service_account'")
    strings = {}
    for name in ("project_id", "client_email", "private_key", "token_uri"):
        value = raw.get(name)
        if not isinstance(value, str) or not value:
            raise errors.InvalidRequest(f"the service account file lacks {name}")
        strings[name] = value
    project_id = _project_id(strings["project_id"])
    email = strings["client_email"]
    if "@" not in email or not email.isprintable() or " " in email:
        raise errors.InvalidRequest("the service account's client_email is not an address")
    token_uri = strings["token_uri"]
    _check_token_uri(token_uri, allow_http=allow_http)
    _rsa_key(strings["private_key"])
    key_id = raw.get("private_key_id")
    if key_id is not None and (not isinstance(key_id, str) or not key_id.isprintable()):
        raise errors.InvalidRequest("the service account's private_key_id must be a string")
    return ServiceAccount(
        project_id=project_id,
        client_email=email,
        private_key=strings["private_key"],
        token_uri=token_uri,
        private_key_id=key_id or None,
    )


def assertion_claims(account: ServiceAccount, *, now: datetime) -> dict[str, str | int]:
    """The claims of the OAuth assertion [G-SA]: ``iss`` = the client email, ``scope`` =
    `SCOPE`, ``aud`` = the ``token_uri``, ``iat`` = `now`, ``exp`` = ``iat`` + 3600.

    Raises:
        errors.InvalidRequest: `now` is naive.
    """
    issued = _epoch_seconds(now)
    return {
        "iss": account.client_email,
        "scope": SCOPE,
        "aud": account.token_uri,
        "iat": issued,
        "exp": issued + ASSERTION_LIFETIME // timedelta(seconds=1),
    }


def sign_assertion(account: ServiceAccount, *, now: datetime) -> str:
    """The assertion, RS256-signed with the account's key; header ``{"alg": "RS256",
    "typ": "JWT", "kid": <private_key_id>}`` [G-SA].

    Raises:
        errors.InvalidRequest: `now` is naive, or the key is not an RSA PEM key.
    """
    headers: dict[str, Any] = {"typ": "JWT"}
    if account.private_key_id:
        headers["kid"] = account.private_key_id
    claims = assertion_claims(account, now=now)
    return jwt.encode(claims, _rsa_key(account.private_key), algorithm="RS256", headers=headers)


def token_request_body(assertion: str) -> bytes:
    """The form body POSTed to ``token_uri`` (``Content-Type:`` `TOKEN_REQUEST_CONTENT_TYPE`):
    ``grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer&assertion=<jwt>`` [G-SA]."""
    return urlencode({"grant_type": GRANT_TYPE, "assertion": assertion}).encode("ascii")


@dataclass(frozen=True, slots=True)
class AccessToken:
    """An OAuth access token and when to replace it.

    Attributes:
        value: the bearer token (never shown in a repr).
        expires_at: when Google stops taking it.
        refresh_at: when to fetch the next one: `TOKEN_REFRESH_MARGIN` before expiry, or
            halfway through the token's life when that is shorter.
    """

    value: str = field(repr=False)
    expires_at: datetime
    refresh_at: datetime

    def needs_refresh(self, now: datetime) -> bool:
        """Whether to fetch a new token before the next send."""
        return now >= self.refresh_at


def classify_token_response(
    status: int,
    headers: Mapping[str, str] | Iterable[tuple[str, str]],
    body: bytes,
    *,
    now: datetime,
) -> AccessToken | outcomes.AuthFailed | outcomes.RetryLater:
    """What the token endpoint's answer means [G-SA].

    - 200 with ``access_token`` and a positive ``expires_in`` (and ``token_type`` Bearer, when
      present): an `AccessToken` issued at `now`.
    - 400/401/403 (``invalid_grant``, ``invalid_client``, ...): `AuthFailed`: the service
      account is disabled, deleted, or its key revoked; retrying will not help.
    - 429 and 5xx: `RetryLater`, honouring ``Retry-After``.
    - A 200 that cannot be read, or any other status: `RetryLater`.
    """
    found = _headers(headers)
    raw = _json_object(body)
    if status == 200:
        token = _read_access_token(raw, now)
        return token or outcomes.RetryLater("the token endpoint's answer is unreadable")
    error = raw.get("error") if raw is not None else None
    description = raw.get("error_description") if raw is not None else None
    label = f"OAuth HTTP {status}"
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
    if isinstance(lifetime, bool) or not isinstance(lifetime, int) or lifetime <= 0:
        return None
    if kind is not None and (not isinstance(kind, str) or kind.lower() != "bearer"):
        return None
    life = timedelta(seconds=lifetime)
    early = max(life - TOKEN_REFRESH_MARGIN, life / 2)
    return AccessToken(value=value, expires_at=now + life, refresh_at=now + early)


def _rsa_key(pem: str) -> rsa.RSAPrivateKey:
    try:
        key = load_pem_private_key(pem.encode(), password=None)
    except (ValueError, TypeError) as exc:
        raise errors.InvalidRequest("the service account's private_key is not a PEM key") from exc
    if not isinstance(key, rsa.RSAPrivateKey):
        raise errors.InvalidRequest("the service account's private_key must be an RSA key")
    return key


def _check_token_uri(uri: str, *, allow_http: bool) -> None:
    try:
        parts = urlsplit(uri)
    except ValueError as exc:
        raise errors.InvalidRequest("the service account's token_uri is not a URL") from exc
    schemes = ("https", "http") if allow_http else ("https",)
    if parts.scheme not in schemes or not parts.hostname or "@" in parts.netloc:
        raise errors.InvalidRequest("the service account's token_uri must be an https:// URL")


def _project_id(project_id: str) -> str:
    if not _PROJECT_ID.fullmatch(project_id):
        raise errors.InvalidRequest("the project id must be a Google Cloud project id")
    return project_id


# --- messages [FA][F-ERR] ----------------------------------------------------------------------


class AndroidPriority(StrEnum):
    """``android.priority`` [FA]."""

    NORMAL = "normal"
    HIGH = "high"


@dataclass(frozen=True, slots=True)
class Notification:
    """``message.notification``: what every platform shows [FA]."""

    title: str | None = None
    body: str | None = None
    image: str | None = None


@dataclass(frozen=True, slots=True)
class AndroidNotification:
    """``android.notification``: Android's overrides of the notification [FA].

    `extra` carries further AndroidNotification fields (``body_loc_key``,
    ``notification_priority``, ``visibility``, ...) as FCM names them; it may not repeat a
    field set here.
    """

    title: str | None = None
    body: str | None = None
    image: str | None = None
    icon: str | None = None
    color: str | None = None
    sound: str | None = None
    tag: str | None = None
    click_action: str | None = None
    channel_id: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class AndroidConfig:
    """``message.android`` [FA].

    Attributes:
        priority: ``normal`` or ``high`` (wakes a dozing device).
        ttl: how long FCM keeps the message for an offline device, 0 to 4 weeks; sent as
            ``"<seconds>s"`` (or ``"<seconds>.<nanos>s"``).
        collapse_key: later messages with this key replace this one while undelivered.
        restricted_package_name: deliver only to this app package.
        data: replaces ``message.data`` on Android; string values only.
        notification: overrides of ``message.notification``.
    """

    priority: AndroidPriority | None = None
    ttl: timedelta | None = None
    collapse_key: str | None = None
    restricted_package_name: str | None = None
    data: Mapping[str, str] = field(default_factory=dict)
    notification: AndroidNotification | None = None


@dataclass(frozen=True, slots=True)
class ApnsConfig:
    """``message.apns``: passed to APNs for Apple devices [FA].

    Attributes:
        headers: ``apns-*`` request headers (``apns-priority``, ``apns-expiration``, ...).
        payload: the APNs JSON payload (``{"aps": {...}, ...}``), at most 4096 bytes.
    """

    headers: Mapping[str, str] = field(default_factory=dict)
    payload: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class WebpushConfig:
    """``message.webpush``: for browsers [FA].

    Attributes:
        headers: Web Push headers (``TTL``, ``Urgency``, ``Topic``) [RFC8030 §5].
        data: replaces ``message.data`` for browsers; string values only.
        notification: Web Notification options (``title``, ``body``, ``icon``, ...) as JSON.
        link: the https URL to open on click (``fcm_options.link``).
    """

    headers: Mapping[str, str] = field(default_factory=dict)
    data: Mapping[str, str] = field(default_factory=dict)
    notification: Mapping[str, Any] = field(default_factory=dict)
    link: str | None = None


@dataclass(frozen=True, slots=True)
class Message:
    """One FCM message, to exactly one target: a `token`, a `topic` or a `condition` [FA].

    ``data`` values must be strings: FCM answers INVALID_ARGUMENT to anything else [F-EC], and
    Clarion refuses them here rather than stringify, since ``True`` could become ``"True"``
    or ``"true"`` and a number ``"1.0"`` or ``"1"``: the producer, who knows what the app
    parses, decides (JSON-encoding a nested value is one choice).
    """

    token: str | None = None
    topic: str | None = None
    condition: str | None = None
    notification: Notification | None = None
    data: Mapping[str, str] = field(default_factory=dict)
    android: AndroidConfig | None = None
    apns: ApnsConfig | None = None
    webpush: WebpushConfig | None = None
    analytics_label: str | None = None


@dataclass(frozen=True, slots=True)
class Request:
    """An HTTP request for FCM.

    Attributes:
        url: ``https://fcm.googleapis.com/v1/projects/<id>/messages:send``.
        headers: ``(name, value)`` pairs, ``Authorization`` included.
        body: compact UTF-8 JSON ``{"message": {...}}``.
    """

    url: str
    headers: tuple[tuple[str, str], ...]
    body: bytes

    @property
    def method(self) -> str:
        """Always POST [FA]."""
        return "POST"


def send_url(project_id: str, *, base: str = f"https://{HOST}") -> str:
    """The ``messages:send`` URL for `project_id`; `base` points elsewhere (the emulator).

    Raises:
        errors.InvalidRequest: `project_id` is not a project id.
    """
    return base.rstrip("/") + SEND_PATH.format(project_id=_project_id(project_id))


def message_json(message: Message) -> dict[str, Any]:
    """The ``message`` object of the send request [FA].

    Raises:
        errors.InvalidRequest: not exactly one target, a malformed token, topic or label, a
            non-string or reserved data key or value, an Android TTL out of range, an
            ``extra`` that repeats a field, an APNs header not named ``apns-*``, a Web Push
            header FCM would refuse, or a non-https link.
    """
    m = message
    targets = [name for name in ("token", "topic", "condition") if getattr(m, name) is not None]
    if len(targets) != 1:
        raise errors.InvalidRequest("a message needs exactly one of token, topic or condition")
    out: dict[str, Any] = {}
    if m.token is not None:
        if not m.token or not m.token.isascii() or not m.token.isprintable() or " " in m.token:
            raise errors.InvalidRequest("the registration token must be printable ASCII")
        out["token"] = m.token
    if m.topic is not None:
        out["topic"] = _topic(m.topic)
    if m.condition is not None:
        if not m.condition.strip() or not m.condition.isprintable():
            raise errors.InvalidRequest("the condition must be a printable expression")
        out["condition"] = m.condition
    if m.notification is not None:
        notification = _texts(
            ("title", m.notification.title),
            ("body", m.notification.body),
            ("image", m.notification.image),
        )
        if notification:
            out["notification"] = notification
    if m.data:
        out["data"] = _data(m.data, "data")
    if m.android is not None:
        android = _android(m.android)
        if android:
            out["android"] = android
    if m.apns is not None:
        apns = _apns(m.apns)
        if apns:
            out["apns"] = apns
    if m.webpush is not None:
        webpush = _webpush(m.webpush)
        if webpush:
            out["webpush"] = webpush
    if m.analytics_label is not None:
        if not _ANALYTICS_LABEL.fullmatch(m.analytics_label):
            raise errors.InvalidRequest("the analytics label must match [A-Za-z0-9-_.~%]{1,50}")
        out["fcm_options"] = {"analytics_label": m.analytics_label}
    return out


def payload_size(message: Message) -> int:
    """The bytes FCM's payload limit counts for `message`, as Clarion reckons them.

    Firebase counts "the total size of the payload data included in a message ... both the
    keys and the values" [F-ERR] without saying more. Clarion counts, in UTF-8 bytes:

    - every key and every value of every ``data`` map (``data``, ``android.data``,
      ``webpush.data``);
    - the name and value of every text field set in ``notification`` and
      ``android.notification`` (``title``, ``body``, ``image``, ...; ``extra`` as compact
      JSON);
    - ``webpush.notification`` as compact JSON.

    Overrides count beside what they override, so the figure is an upper bound of what any one
    platform receives. ``apns.payload`` is not counted here: FCM passes it to APNs, which
    limits it on its own (`MAX_APNS_PAYLOAD_BYTES`).
    """
    m = message
    size = 0
    maps = [m.data]
    if m.android is not None:
        maps.append(m.android.data)
    if m.webpush is not None:
        maps.append(m.webpush.data)
        if m.webpush.notification:
            size += len(_compact(m.webpush.notification))
    for data in maps:
        size += sum(len(str(k).encode()) + len(str(v).encode()) for k, v in data.items())
    texts: list[tuple[str, str | None]] = []
    if m.notification is not None:
        n = m.notification
        texts += [("title", n.title), ("body", n.body), ("image", n.image)]
    if m.android is not None and m.android.notification is not None:
        texts += list(_android_notification_texts(m.android.notification))
        if m.android.notification.extra:
            size += len(_compact(m.android.notification.extra))
    size += sum(len(name.encode()) + len(value.encode()) for name, value in texts if value)
    return size


def max_payload_bytes(message: Message) -> int:
    """4096 for a message to a token, 2048 to a topic or condition [F-ERR]."""
    return MAX_PAYLOAD_BYTES if message.token is not None else MAX_TOPIC_PAYLOAD_BYTES


def encode_body(message: Message, *, validate_only: bool = False) -> bytes:
    """The request body ``{"message": {...}}`` (and ``"validate_only": true`` when asked: FCM
    checks the message without sending it), compact UTF-8 JSON [FA].

    Raises:
        errors.InvalidRequest: `message_json` refused the message, a value is not JSON, or
            the payload is over `max_payload_bytes` (see `payload_size`).
    """
    document: dict[str, Any] = {"message": message_json(message)}
    if validate_only:
        document["validate_only"] = True
    size, limit = payload_size(message), max_payload_bytes(message)
    if size > limit:
        raise errors.InvalidRequest(
            f"the FCM payload is {size} bytes; a message to a "
            f"{'token' if message.token is not None else 'topic'} takes at most {limit}",
            size=size,
            limit=limit,
        )
    return _compact(document)


def build_request(
    message: Message,
    *,
    project_id: str,
    access_token: str,
    validate_only: bool = False,
    base: str = f"https://{HOST}",
) -> Request:
    """The request that sends `message` in `project_id` [FA].

    Raises:
        errors.InvalidRequest: the project id or access token is unusable, or the body is
            refused (see `encode_body`).
    """
    if not access_token or not access_token.isprintable() or " " in access_token:
        raise errors.InvalidRequest("the access token must be a non-empty header value")
    return Request(
        url=send_url(project_id, base=base),
        headers=(
            ("Authorization", f"Bearer {access_token}"),
            ("Content-Type", "application/json; charset=UTF-8"),
        ),
        body=encode_body(message, validate_only=validate_only),
    )


def _texts(*pairs: tuple[str, str | None]) -> dict[str, str]:
    out = {}
    for name, value in pairs:
        if value is None:
            continue
        if not isinstance(value, str):
            raise errors.InvalidRequest(f"the notification {name} must be a string")
        out[name] = value
    return out


def _data(data: Mapping[str, str], where: str) -> dict[str, str]:
    out = {}
    for key, value in data.items():
        if not isinstance(key, str) or not key:
            raise errors.InvalidRequest(f"{where} keys must be non-empty strings")
        if not isinstance(value, str):
            raise errors.InvalidRequest(
                f"{where}[{key!r}] must be a string (FCM takes string values only); "
                "encode it first, e.g. as JSON"
            )
        if key in RESERVED_DATA_KEYS or key.lower().startswith("google"):
            raise errors.InvalidRequest(
                f"{where}[{key!r}]: FCM reserves 'from', 'gcm' and keys starting with 'google'"
            )
        out[key] = value
    return out


def _topic(topic: str) -> str:
    name = topic.removeprefix("/topics/")
    if not _TOPIC.fullmatch(name):
        raise errors.InvalidRequest("the topic must match [A-Za-z0-9-_.~%]+")
    return name


def _android_notification_texts(n: AndroidNotification) -> Iterable[tuple[str, str | None]]:
    return (
        ("title", n.title),
        ("body", n.body),
        ("image", n.image),
        ("icon", n.icon),
        ("color", n.color),
        ("sound", n.sound),
        ("tag", n.tag),
        ("click_action", n.click_action),
        ("channel_id", n.channel_id),
    )


def _android(config: AndroidConfig) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if config.collapse_key is not None:
        if not config.collapse_key:
            raise errors.InvalidRequest("the collapse key must not be empty")
        out["collapse_key"] = config.collapse_key
    if config.priority is not None:
        try:
            out["priority"] = str(AndroidPriority(config.priority))
        except ValueError as exc:
            raise errors.InvalidRequest("the Android priority must be normal or high") from exc
    if config.ttl is not None:
        out["ttl"] = format_ttl(config.ttl)
    if config.restricted_package_name is not None:
        out["restricted_package_name"] = config.restricted_package_name
    if config.data:
        out["data"] = _data(config.data, "android.data")
    if config.notification is not None:
        notification: dict[str, Any] = _texts(*_android_notification_texts(config.notification))
        if config.notification.color is not None and not re.fullmatch(
            r"#[0-9A-Fa-f]{6}", config.notification.color
        ):
            raise errors.InvalidRequest("the Android notification color must be #rrggbb")
        repeated = sorted(set(notification) & set(config.notification.extra))
        if repeated:
            raise errors.InvalidRequest(f"android.notification extra repeats {', '.join(repeated)}")
        notification.update(config.notification.extra)
        if notification:
            out["notification"] = notification
    return out


def format_ttl(ttl: timedelta) -> str:
    """``android.ttl`` as FCM takes it: ``"<seconds>s"``, or ``"<seconds>.<9 digits>s"`` for a
    fraction (a protobuf Duration) [FA].

    Raises:
        errors.InvalidRequest: `ttl` is negative or longer than four weeks.
    """
    if ttl < timedelta(0) or ttl > MAX_TTL:
        raise errors.InvalidRequest("the Android TTL must be from 0 to 2419200 seconds (4 weeks)")
    seconds = ttl // timedelta(seconds=1)
    nanos = (ttl - timedelta(seconds=seconds)) // timedelta(microseconds=1) * 1000
    return f"{seconds}.{nanos:09d}s" if nanos else f"{seconds}s"


def _apns(config: ApnsConfig) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if config.headers:
        headers = {}
        for name, value in config.headers.items():
            if not name.lower().startswith("apns-") or not _is_header_value(name):
                raise errors.InvalidRequest(f"APNs header {name!r} must be named apns-*")
            if not isinstance(value, str) or not _is_header_value(value):
                raise errors.InvalidRequest(f"APNs header {name!r} must be a printable string")
            headers[name] = value
        out["headers"] = headers
    if config.payload:
        size = len(_compact(config.payload))
        if size > MAX_APNS_PAYLOAD_BYTES:
            raise errors.InvalidRequest(
                f"the apns payload is {size} bytes; APNs takes at most {MAX_APNS_PAYLOAD_BYTES}",
                size=size,
                limit=MAX_APNS_PAYLOAD_BYTES,
            )
        out["payload"] = dict(config.payload)
    return out


def _webpush(config: WebpushConfig) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if config.headers:
        headers = {}
        for name, value in config.headers.items():
            if not isinstance(value, str) or not _is_header_value(value):
                raise errors.InvalidRequest(f"Web Push header {name!r} must be a printable string")
            lowered = name.lower()
            if lowered == "ttl" and not (value.isascii() and value.isdigit()):
                raise errors.InvalidRequest("the Web Push TTL header must be whole seconds")
            if lowered == "urgency" and value not in _WEBPUSH_URGENCIES:
                raise errors.InvalidRequest("the Web Push Urgency must be very-low|low|normal|high")
            if lowered == "topic" and not _WEBPUSH_TOPIC.fullmatch(value):
                raise errors.InvalidRequest("the Web Push Topic must be <= 32 base64url characters")
            headers[name] = value
        out["headers"] = headers
    if config.data:
        out["data"] = _data(config.data, "webpush.data")
    if config.notification:
        out["notification"] = dict(config.notification)
    if config.link is not None:
        parts = urlsplit(config.link)
        if parts.scheme != "https" or not parts.netloc:
            raise errors.InvalidRequest("the Web Push link must be an https:// URL")
        out["fcm_options"] = {"link": config.link}
    return out


def _compact(value: Any) -> bytes:
    try:
        return json.dumps(
            value, separators=(",", ":"), ensure_ascii=False, allow_nan=False
        ).encode()
    except (TypeError, ValueError, RecursionError) as exc:
        raise errors.InvalidRequest(f"the FCM message is not JSON: {exc}") from exc


def _is_header_value(value: str) -> bool:
    return bool(value) and value.isprintable()


# --- responses [F-ERR][F-EC] -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RefreshAccessToken:
    """FCM refused our access token (a plain 401, no FcmError): fetch a new one and send this
    message again, once [PF]. Not an outcome: the delivery has not been decided yet."""

    reason: str


Classification = outcomes.Outcome | RefreshAccessToken
"""What `classify_response` returns: an outcome, or "refresh the token and resend once"."""


@dataclass(frozen=True, slots=True)
class ErrorBody:
    """The readable parts of a google.rpc.Status error body [F-EC].

    Attributes:
        status: ``error.status`` (``NOT_FOUND``, ``UNAUTHENTICATED``, ...).
        message: ``error.message``.
        error_code: ``errorCode`` of the ``FcmError`` detail, the field to key on [FA].
        apns_reason: ``reason`` of an ``ApnsError`` detail, when APNs refused the message.
    """

    status: str | None = None
    message: str | None = None
    error_code: str | None = None
    apns_reason: str | None = None


def parse_error(body: bytes) -> ErrorBody:
    """The parts of an FCM error body, each None when absent or unreadable [F-EC]."""
    raw = _json_object(body)
    error = raw.get("error") if raw is not None else None
    if not isinstance(error, dict):
        return ErrorBody()
    details = error.get("details")
    code = apns_reason = None
    for detail in details if isinstance(details, list) else []:
        if not isinstance(detail, dict):
            continue
        if detail.get("@type") == FCM_ERROR_TYPE and isinstance(detail.get("errorCode"), str):
            code = code or detail["errorCode"]
        if detail.get("@type") == APNS_ERROR_TYPE and isinstance(detail.get("reason"), str):
            apns_reason = apns_reason or detail["reason"]
    status, message = error.get("status"), error.get("message")
    return ErrorBody(
        status=status if isinstance(status, str) and status else None,
        message=message if isinstance(message, str) and message else None,
        error_code=code or None,
        apns_reason=apns_reason or None,
    )


def needs_new_access_token(status: int, body: bytes) -> bool:
    """Whether the answer says our OAuth access token is stale: a 401 without an FcmError
    (``UNAUTHENTICATED``). A 401 with ``THIRD_PARTY_AUTH_ERROR`` is about the APNs or Web Push
    credentials stored in Firebase instead, and a new token would not help [F-ERR][PF]."""
    return status == 401 and parse_error(body).error_code is None


_TOKEN_INVALID_CODES: Final = frozenset({"UNREGISTERED", "SENDER_ID_MISMATCH"})
_RETRY_CODES: Final = frozenset({"QUOTA_EXCEEDED", "UNAVAILABLE", "INTERNAL"})
_AUTH_FAILED_CODES: Final = frozenset({"THIRD_PARTY_AUTH_ERROR", "APNS_AUTH_ERROR"})
_REJECTED_CODES: Final = frozenset({"INVALID_ARGUMENT", "UNSPECIFIED_ERROR"})


def classify_response(
    status: int,
    headers: Mapping[str, str] | Iterable[tuple[str, str]],
    body: bytes,
    *,
    now: datetime,
    retried_with_new_token: bool = False,
) -> Classification:
    """What an FCM answer means for the delivery, keyed on ``details[].errorCode`` first and
    on the HTTP status only without one, as firebase-admin does [FA][F-ERR].

    - 200: `Delivered`, referenced by ``name`` (``projects/<id>/messages/<message id>``).
    - ``UNREGISTERED`` (404), ``SENDER_ID_MISMATCH`` (403): `TokenInvalid` (retire the token;
      a mismatched one belongs to another sender and never works with this credential).
    - ``INVALID_ARGUMENT`` (400): `Rejected`, except when FCM's message says the registration
      token is not valid ("The registration token is not a valid FCM registration token"
      [F-EC]): `TokenInvalid`, as the protocols sheet advises.
    - ``UNSPECIFIED_ERROR``: `Rejected` (Firebase gives no action).
    - ``QUOTA_EXCEEDED`` (429): `RetryLater`, after ``Retry-After`` or at least a minute.
    - ``UNAVAILABLE`` (503), ``INTERNAL`` (500): `RetryLater`, after ``Retry-After`` when
      given (FCM: "must honor" it), else the service's backoff.
    - ``THIRD_PARTY_AUTH_ERROR`` (401): `AuthFailed`: the APNs certificate or key, or the Web
      Push credentials, in the Firebase project are wrong.
    - A 401 without FcmError: `RefreshAccessToken`; or `AuthFailed` when the request already
      used a token fetched after such a 401 (`retried_with_new_token`): a fresh token refused
      means the service account cannot send.
    - Without FcmError: 403 `AuthFailed` (PERMISSION_DENIED: the account lacks the role);
      429 and 5xx `RetryLater`; other 4xx `Rejected` (a 404 without UNREGISTERED is not a
      verdict on the token); anything else `RetryLater`.

    Reasons read ``<errorCode or status>: <FCM's message>``, with the APNs reason when FCM
    passes one on.
    """
    found = _headers(headers)
    if status == 200:
        raw = _json_object(body)
        name = raw.get("name") if raw is not None else None
        return outcomes.Delivered(reference=name if isinstance(name, str) and name else None)
    error = parse_error(body)
    label = _label(status, error)
    retry_after = parse_retry_after(found.get("retry-after"), now=now)
    code = error.error_code
    if code in _TOKEN_INVALID_CODES:
        return outcomes.TokenInvalid(label)
    if code == "INVALID_ARGUMENT" and _INVALID_TOKEN_MESSAGE.search(error.message or ""):
        return outcomes.TokenInvalid(label)
    if code in _REJECTED_CODES:
        return outcomes.Rejected(label)
    if code == "QUOTA_EXCEEDED" or (code is None and status == 429):
        return outcomes.RetryLater(
            label, QUOTA_RETRY_SECONDS if retry_after is None else retry_after
        )
    if code in _RETRY_CODES:
        return outcomes.RetryLater(label, retry_after)
    if code in _AUTH_FAILED_CODES:
        return outcomes.AuthFailed(label)
    if status == 401:
        if retried_with_new_token:
            return outcomes.AuthFailed(f"{label} (with a freshly fetched access token)")
        return RefreshAccessToken(label)
    if status == 403:
        return outcomes.AuthFailed(label)
    if 500 <= status < 600:
        return outcomes.RetryLater(label, retry_after)
    if 400 <= status < 500:
        return outcomes.Rejected(label)
    return outcomes.RetryLater(f"unexpected {label}", retry_after)


def _label(status: int, error: ErrorBody) -> str:
    if error.error_code is not None:
        head = _clip(error.error_code)
    elif error.status is not None:
        head = f"HTTP {status} {_clip(error.status)}"
    else:
        head = f"HTTP {status}"
    label = f"{head}: {_clip(error.message)}" if error.message else head
    if error.apns_reason:
        label += f" (APNs {_clip(error.apns_reason)})"
    return label


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


def _epoch_seconds(at: datetime) -> int:
    if at.tzinfo is None or at.utcoffset() is None:
        raise errors.InvalidRequest("the current time must be timezone-aware")
    return (at - _EPOCH) // timedelta(seconds=1)
