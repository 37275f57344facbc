"""Bounce and complaint events from mail providers, sans I/O: Amazon SNS messages carrying SES
events, and SendGrid's signed Event Webhook.

**Amazon SNS over HTTP(S)** [SNS-HTTP]. SNS POSTs a JSON document (``Content-Type: text/plain``)
with the header ``x-amz-sns-message-type`` equal to its ``Type``: ``SubscriptionConfirmation``
(GET ``SubscribeURL`` to confirm), ``Notification`` or ``UnsubscribeConfirmation``. Each is
signed [SNS-VERIFY]: the *string to sign* is, for each field of a fixed list present in the
message, in that order, ``name\\n value\\n``:

- Notification: ``Message``, ``MessageId``, ``Subject`` (only when present), ``Timestamp``,
  ``TopicArn``, ``Type``;
- SubscriptionConfirmation and UnsubscribeConfirmation: ``Message``, ``MessageId``,
  ``SubscribeURL``, ``Timestamp``, ``Token``, ``TopicArn``, ``Type``.

``Signature`` is the base64 RSA PKCS#1 v1.5 signature of those bytes, with SHA-1 when
``SignatureVersion`` is ``1`` and SHA-256 when it is ``2``, by the key of the X.509 certificate
at ``SigningCertURL``. That URL (and ``SubscribeURL``) must be https on a host
``sns.<region>.amazonaws.com`` (``.amazonaws.com.cn`` in China) before anything is fetched from
it: otherwise whoever forges the message also chooses the certificate (`sns_url_allowed`).

**SES events** [SES-NOTIF][SES-EVENT]. The SNS ``Message`` is SES's JSON: an identity
notification (``notificationType``) or a configuration-set event (``eventType``), ``Bounce``
with ``bounce.bounceType`` (``Permanent`` | ``Transient`` | ``Undetermined``) and
``bounce.bouncedRecipients[].emailAddress``, or ``Complaint`` with
``complaint.complainedRecipients[].emailAddress``. Only permanent bounces suppress an address:
a transient one (mailbox full, message too large) says nothing lasting about it.

**SendGrid Event Webhook** [SG-EVENTS][SG-SIGNED]. A POST of a JSON array of events (``email``,
``event``, ``timestamp``, ...). With signing on, SendGrid adds
``X-Twilio-Email-Event-Webhook-Signature``: the base64 DER ECDSA P-256 SHA-256 signature of the
``X-Twilio-Email-Event-Webhook-Timestamp`` header's value followed by the raw body; the public
key is shown on the settings page as base64 DER (SubjectPublicKeyInfo). ``bounce`` events whose
``type`` is ``bounce`` (not ``blocked``, which is the sending IP's reputation, not the address)
and ``dropped`` events whose ``reason`` is ``Bounced Address`` mean bounced; ``spamreport`` and
``dropped`` with ``Spam Reporting Address`` mean complained.

[SNS-HTTP] docs.aws.amazon.com/sns/latest/dg/sns-http-https-endpoint-as-subscriber.html
[SNS-VERIFY] docs.aws.amazon.com/sns/latest/dg/sns-verify-signature-of-message.html
[SES-NOTIF] docs.aws.amazon.com/ses/latest/dg/notification-contents.html
[SES-EVENT] docs.aws.amazon.com/ses/latest/dg/event-publishing-retrieving-sns-contents.html
[SG-EVENTS] www.twilio.com/docs/sendgrid/for-developers/tracking-events/event
[SG-SIGNED] www.twilio.com/docs/sendgrid/for-developers/tracking-events/
            getting-started-event-webhook-security-features
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, Final
from urllib.parse import urlsplit

import idna
from cryptography import x509
from cryptography.exceptions import InvalidSignature as CryptoInvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from clarion.domain import errors

MAX_CERTIFICATE_BYTES: Final = 16 * 1024
"""An SNS signing certificate is about 2 KB of PEM; anything much larger is not one."""
MAX_EVENTS: Final = 10_000
"""SendGrid posts batches of at most 768 KB; a few thousand events fill one."""
SENDGRID_SIGNATURE_HEADER: Final = "x-twilio-email-event-webhook-signature"
SENDGRID_TIMESTAMP_HEADER: Final = "x-twilio-email-event-webhook-timestamp"
SNS_TYPE_HEADER: Final = "x-amz-sns-message-type"

_SNS_HOST = re.compile(r"sns\.[a-z]{2}(-[a-z0-9]+)+-\d+\.amazonaws\.com(\.cn)?")
_TOPIC_ARN = re.compile(
    r"arn:aws[a-z-]*:sns:[a-z]{2}(-[a-z0-9]+)+-\d+:\d{12}:[A-Za-z0-9_.-]{1,256}"
)
_NOTIFICATION_FIELDS: Final = ("Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type")
_SUBSCRIPTION_FIELDS: Final = (
    "Message",
    "MessageId",
    "SubscribeURL",
    "Timestamp",
    "Token",
    "TopicArn",
    "Type",
)
_MAX_FIELD_CHARS: Final = 300_000
"""An SNS message is at most 256 KB; its JSON escaping may grow it a little."""


class Suppression(StrEnum):
    """What an event says about an address (the users' ``email_status`` values)."""

    BOUNCED = "bounced"
    COMPLAINED = "complained"


@dataclass(frozen=True, slots=True)
class Suppressions:
    """The addresses a batch of events says to stop mailing, by reason."""

    bounced: frozenset[str] = field(default_factory=frozenset)
    complained: frozenset[str] = field(default_factory=frozenset)

    def __bool__(self) -> bool:
        return bool(self.bounced or self.complained)


# --- Amazon SNS ----------------------------------------------------------------------------------


class SnsType(StrEnum):
    NOTIFICATION = "Notification"
    SUBSCRIPTION_CONFIRMATION = "SubscriptionConfirmation"
    UNSUBSCRIBE_CONFIRMATION = "UnsubscribeConfirmation"


@dataclass(frozen=True, slots=True)
class SnsMessage:
    """An SNS HTTP(S) message, its fields checked for type and presence (not yet its
    signature: see `verify_sns`)."""

    type: SnsType
    fields: Mapping[str, str]
    """Every string field of the message, by its SNS name."""

    @property
    def topic_arn(self) -> str:
        return self.fields["TopicArn"]

    @property
    def message(self) -> str:
        return self.fields["Message"]

    @property
    def signing_cert_url(self) -> str:
        return self.fields["SigningCertURL"]

    @property
    def subscribe_url(self) -> str | None:
        return self.fields.get("SubscribeURL")


def parse_sns(body: bytes, type_header: str | None) -> SnsMessage:
    """The SNS message in `body`, whose ``x-amz-sns-message-type`` header was `type_header`.

    Raises:
        errors.MalformedJson: the body is not a JSON object.
        errors.InvalidRequest: an unknown type, a header that disagrees with it, a missing or
            non-string field, or an unknown signature version.
    """
    try:
        document = json.loads(body)
    except (ValueError, RecursionError):
        raise errors.MalformedJson() from None
    if not isinstance(document, dict):
        raise errors.MalformedJson("the SNS message must be a JSON object")
    try:
        kind = SnsType(str(document.get("Type")))
    except ValueError:
        raise errors.InvalidRequest("'Type' is not an SNS message type") from None
    if type_header is not None and type_header != kind:
        raise errors.InvalidRequest(f"'{SNS_TYPE_HEADER}' disagrees with 'Type'")
    names = _NOTIFICATION_FIELDS if kind is SnsType.NOTIFICATION else _SUBSCRIPTION_FIELDS
    required = [n for n in names if n != "Subject"]
    required += ["Signature", "SignatureVersion", "SigningCertURL"]
    fields: dict[str, str] = {}
    for name, value in document.items():
        if isinstance(value, str) and len(value) <= _MAX_FIELD_CHARS:
            fields[name] = value
    missing = [n for n in required if n not in fields]
    if missing:
        raise errors.InvalidRequest(f"the SNS message lacks {', '.join(missing)}")
    if "Subject" in document and "Subject" not in fields and document["Subject"] is not None:
        raise errors.InvalidRequest("'Subject' must be a string")
    if fields["SignatureVersion"] not in ("1", "2"):
        raise errors.InvalidRequest("'SignatureVersion' must be 1 or 2")
    if not _TOPIC_ARN.fullmatch(fields["TopicArn"]):
        raise errors.InvalidRequest("'TopicArn' is not an SNS topic ARN")
    return SnsMessage(kind, fields)


def sns_string_to_sign(message: SnsMessage) -> bytes:
    """The bytes SNS signed for `message` [SNS-VERIFY]: ``name\\nvalue\\n`` for each field of
    its type's list that the message holds, in the list's order."""
    names = _NOTIFICATION_FIELDS if message.type is SnsType.NOTIFICATION else _SUBSCRIPTION_FIELDS
    return "".join(
        f"{name}\n{message.fields[name]}\n" for name in names if name in message.fields
    ).encode()


def sns_url_allowed(url: str, extra_prefixes: Sequence[str] = ()) -> bool:
    """Whether Clarion may fetch `url` (a ``SigningCertURL`` or ``SubscribeURL``): https on a
    host ``sns.<region>.amazonaws.com[.cn]`` on the default port, or starting with one of the
    operator's `extra_prefixes` (an emulator), which must themselves be https."""
    if not isinstance(url, str) or any(ch.isspace() or ord(ch) < 0x20 for ch in url):
        return False
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return False
    if parts.scheme != "https" or parts.username is not None or parts.password is not None:
        return False
    for prefix in extra_prefixes:
        if prefix.startswith("https://") and prefix.endswith("/") and url.startswith(prefix):
            return True
    host = parts.hostname or ""
    return port in (None, 443) and _SNS_HOST.fullmatch(host) is not None


def certificate_url_allowed(url: str, extra_prefixes: Sequence[str] = ()) -> bool:
    """`sns_url_allowed`, and the path names a ``.pem`` file, as SNS's always do."""
    return sns_url_allowed(url, extra_prefixes) and urlsplit(url).path.endswith(".pem")


def verify_sns(message: SnsMessage, certificate_pem: bytes, now: datetime) -> None:
    """Check `message`'s signature with the RSA key of `certificate_pem` (fetched from its
    ``SigningCertURL``, which the caller checked with `certificate_url_allowed`).

    Raises:
        errors.InvalidSignature: an unreadable, expired or non-RSA certificate, a signature
            that is not base64, or one that does not verify.
    """
    try:
        certificate = x509.load_pem_x509_certificate(certificate_pem)
    except ValueError:
        raise errors.InvalidSignature("the signing certificate cannot be read") from None
    if not certificate.not_valid_before_utc <= now <= certificate.not_valid_after_utc:
        raise errors.InvalidSignature("the signing certificate is not valid now")
    key = certificate.public_key()
    if not isinstance(key, rsa.RSAPublicKey):
        raise errors.InvalidSignature("the signing certificate holds no RSA key")
    signature = _b64decode(message.fields["Signature"])
    if signature is None:
        raise errors.InvalidSignature("'Signature' is not base64")
    algorithm: hashes.HashAlgorithm = (
        hashes.SHA1()  # noqa: S303 - SNS SignatureVersion 1 is SHA1withRSA; topics choose it
        if message.fields["SignatureVersion"] == "1"
        else hashes.SHA256()
    )
    try:
        key.verify(signature, sns_string_to_sign(message), padding.PKCS1v15(), algorithm)
    except CryptoInvalidSignature:
        raise errors.InvalidSignature("the SNS signature does not verify") from None


def parse_ses_event(message: str) -> Suppressions:
    """What the SES event in an SNS ``Message`` says: permanent bounces and complaints; nothing
    for every other event (transient bounces, deliveries, sends, opens, the subscription test
    message) and for anything that is not an SES event at all."""
    try:
        event = json.loads(message)
    except (ValueError, RecursionError):
        return Suppressions()
    if not isinstance(event, dict):
        return Suppressions()
    kind = event.get("eventType", event.get("notificationType"))
    if kind == "Bounce":
        bounce = event.get("bounce")
        if not isinstance(bounce, dict) or bounce.get("bounceType") != "Permanent":
            return Suppressions()
        return Suppressions(bounced=_recipients(bounce.get("bouncedRecipients")))
    if kind == "Complaint":
        complaint = event.get("complaint")
        if not isinstance(complaint, dict):
            return Suppressions()
        if complaint.get("complaintFeedbackType") == "not-spam":
            return Suppressions()  # the recipient says the opposite of a complaint
        return Suppressions(complained=_recipients(complaint.get("complainedRecipients")))
    return Suppressions()


def _recipients(listed: Any) -> frozenset[str]:
    if not isinstance(listed, list):
        return frozenset()
    found = set()
    for entry in listed[:MAX_EVENTS]:
        if isinstance(entry, dict) and isinstance(entry.get("emailAddress"), str):
            address = bare_address(entry["emailAddress"])
            if address is not None:
                found.add(address)
    return frozenset(found)


# --- SendGrid ------------------------------------------------------------------------------------


def load_sendgrid_key(text: str) -> ec.EllipticCurvePublicKey:
    """The Event Webhook's verification key: PEM, or base64 DER as SendGrid shows it.

    Raises:
        errors.InvalidRequest: not an EC P-256 public key.
    """
    data = text.strip()
    try:
        if data.startswith("-----BEGIN"):
            key = serialization.load_pem_public_key(data.encode())
        else:
            der = _b64decode(data)
            if der is None:
                raise ValueError("not base64")
            key = serialization.load_der_public_key(der)
    except (ValueError, TypeError):
        raise errors.InvalidRequest("the event webhook key is not a public key") from None
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp256r1":
        raise errors.InvalidRequest("the event webhook key must be an EC P-256 public key")
    return key


def verify_sendgrid(
    key: ec.EllipticCurvePublicKey,
    *,
    signature: str | None,
    timestamp: str | None,
    body: bytes,
    now: datetime,
    max_age: timedelta,
) -> None:
    """Check a signed Event Webhook post [SG-SIGNED]: `signature` (base64 DER ECDSA) over
    `timestamp` (the header's text, seconds since the epoch) followed by `body`, made no more
    than `max_age` before `now` (nor after it by as much), so a captured post cannot be
    replayed for long.

    Raises:
        errors.InvalidSignature: a header missing or malformed, a stale timestamp, or a
            signature that does not verify.
    """
    if not signature or not timestamp:
        raise errors.InvalidSignature("the event webhook signature headers are missing")
    if not (timestamp.isascii() and timestamp.isdigit() and len(timestamp) <= 12):
        raise errors.InvalidSignature("the event webhook timestamp is not a number")
    if abs(now.timestamp() - int(timestamp)) > max_age.total_seconds():
        raise errors.InvalidSignature("the event webhook timestamp is too far from now")
    raw = _b64decode(signature)
    if raw is None:
        raise errors.InvalidSignature("the event webhook signature is not base64")
    try:
        key.verify(raw, timestamp.encode() + body, ec.ECDSA(hashes.SHA256()))
    except CryptoInvalidSignature:
        raise errors.InvalidSignature("the event webhook signature does not verify") from None


def parse_sendgrid_events(body: bytes) -> Suppressions:
    """The bounced and complained addresses in an Event Webhook batch; every other event (and
    any malformed entry) is passed over.

    Raises:
        errors.MalformedJson: the body is not a JSON array.
        errors.InvalidRequest: more than `MAX_EVENTS` events.
    """
    try:
        events = json.loads(body)
    except (ValueError, RecursionError):
        raise errors.MalformedJson() from None
    if not isinstance(events, list):
        raise errors.MalformedJson("the event webhook body must be a JSON array")
    if len(events) > MAX_EVENTS:
        raise errors.InvalidRequest(f"at most {MAX_EVENTS} events per post")
    bounced: set[str] = set()
    complained: set[str] = set()
    for event in events:
        if not isinstance(event, dict) or not isinstance(event.get("email"), str):
            continue
        address = bare_address(event["email"])
        if address is None:
            continue
        kind, reason = event.get("event"), event.get("reason")
        hard_bounce = kind == "bounce" and event.get("type", "bounce") == "bounce"
        if hard_bounce or (kind == "dropped" and reason == "Bounced Address"):
            bounced.add(address)
        elif kind == "spamreport" or (kind == "dropped" and reason == "Spam Reporting Address"):
            complained.add(address)
    return Suppressions(frozenset(bounced), frozenset(complained))


# --- addresses -----------------------------------------------------------------------------------


def bare_address(text: str) -> str | None:
    """``local@domain`` from `text`, which may read ``Name <local@domain>``; None when it
    holds no plausible address."""
    text = text.strip()
    if text.endswith(">") and "<" in text:
        text = text[text.rindex("<") + 1 : -1].strip()
    local, at, domain = text.rpartition("@")
    if not at or not local or not domain or len(text) > 320:
        return None
    if any(ch.isspace() or ord(ch) < 0x20 for ch in text):
        return None
    return text


def address_forms(addresses: Iterable[str]) -> frozenset[str]:
    """Each address lower-cased as written, with its domain in A-labels and in U-labels, so
    that a stored address matches whichever form a provider reports.

    Local parts are compared without regard to case too: RFC 5321 lets a server tell them
    apart, but no mailbox provider does, and a provider's bounce of ``Ann@x`` is about the same
    mailbox as ``ann@x``.
    """
    forms: set[str] = set()
    for address in addresses:
        local, _, domain = address.rpartition("@")
        forms.add(address.lower())
        for convert in (_to_ascii, _to_unicode):
            converted = convert(domain.rstrip("."))
            if converted is not None:
                forms.add(f"{local}@{converted}".lower())
    return frozenset(forms)


def _to_ascii(domain: str) -> str | None:
    try:
        return idna.encode(domain, uts46=True).decode("ascii")
    except (idna.IDNAError, UnicodeError, ValueError):
        return None


def _to_unicode(domain: str) -> str | None:
    try:
        return idna.decode(domain)
    except (idna.IDNAError, UnicodeError, ValueError):
        return None


def _b64decode(text: str) -> bytes | None:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return None
