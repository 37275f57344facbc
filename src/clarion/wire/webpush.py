"""Web Push, sans I/O: encrypt the message, sign the VAPID token, build the request, classify
the answer.

Four RFCs make up the protocol (docs/research protocols sheet §4):

- RFC 8030 (Generic Event Delivery Using HTTP Push): the ``POST`` to the subscription's endpoint
  and its ``TTL``, ``Urgency`` and ``Topic`` headers (§5.2-5.4), the 201 answer, 404 for an
  expired subscription (§7.3) and no 413 for bodies of 4096 bytes or less (§7.2).
- RFC 8291 (Message Encryption for Web Push): ECDH on P-256 with the subscription's ``p256dh``
  key, the ``auth`` secret mixed in by HKDF (§3.3-3.4), one record only (§4).
- RFC 8188 (Encrypted Content-Encoding for HTTP, ``aes128gcm``): the body is a header (salt,
  record size, key id) followed by AES-128-GCM records, each ending in a padding delimiter.
- RFC 8292 (VAPID): an ES256 JWT for the endpoint's origin in ``Authorization: vapid t=, k=``.

The adapter owns the HTTP client, the clock, the VAPID key and the check that an endpoint does
not resolve to a private address; it hands this module values and gets values back. Random
salts and ephemeral keys come from the OS (`os.urandom` through ``cryptography``); tests inject
both to reproduce RFC 8291 Appendix A.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import os
import re
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from enum import StrEnum
from typing import Any, Final
from urllib.parse import urlsplit

import jwt
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from clarion.domain import errors, outcomes

# --- sizes [RFC8291 §4][RFC8188 §2] ------------------------------------------------------------

PUBLIC_KEY_BYTES: Final = 65
"""An uncompressed P-256 point: 0x04, then X and Y of 32 bytes each [RFC8291 §4]."""
AUTH_SECRET_BYTES: Final = 16
"""The subscription's ``auth`` secret: "a hard-to-guess sequence of 16 octets" [RFC8291 §3.2]."""
SALT_BYTES: Final = 16
"""The RFC 8188 header's salt [RFC8188 §2.1]."""
TAG_BYTES: Final = 16
"""AEAD_AES_128_GCM's expansion [RFC8188 §2]."""
HEADER_BYTES: Final = SALT_BYTES + 4 + 1 + PUBLIC_KEY_BYTES
"""salt(16) || rs(uint32) || idlen(1) || keyid(65): 86 bytes [RFC8291 §4]."""
RECORD_SIZE: Final = 4096
"""The ``rs`` we write, as RFC 8291's example does. One record always fits in it: the largest
record (3993 + 1 + 16 = 4010 bytes) is smaller, as §4 requires."""
MIN_RECORD_SIZE: Final = 18
"""The smallest ``rs`` RFC 8188 allows: a tag, a delimiter and one byte [RFC8188 §2]."""
MAX_BODY_BYTES: Final = 4096
"""The largest body a push service must take: it "MUST NOT return a 413" for 4096 bytes or less
[RFC8030 §7.2]. It counts the whole encrypted body (the 86-byte header included), not the
ciphertext record alone [RFC8291 §4]."""
MAX_PLAINTEXT_BYTES: Final = MAX_BODY_BYTES - HEADER_BYTES - 1 - TAG_BYTES
"""3993: the body limit less the header, the padding delimiter and the tag [RFC8291 §4]."""

_LAST_RECORD_DELIMITER: Final = b"\x02"
_KEY_INFO: Final = b"WebPush: info\x00"
_CEK_INFO: Final = b"Content-Encoding: aes128gcm\x00"
_NONCE_INFO: Final = b"Content-Encoding: nonce\x00"

# --- request headers [RFC8030 §5] ----------------------------------------------------------------

DEFAULT_TTL_SECONDS: Final = 2_419_200
# Four weeks: the longest FCM (the largest push service) keeps a message. A push service that
# keeps messages for less shortens the TTL and says so [RFC8030 §5.2]. Never 0 by default:
# pywebpush's default TTL of 0 means an offline device never sees the message [PWP].
MAX_TTL_SECONDS: Final = 2**31 - 1
"""An upper bound that no push service stores for, but that every HTTP stack parses."""
MAX_TOPIC_LENGTH: Final = 32
"""``Topic``: at most 32 characters of the base64url alphabet [RFC8030 §5.4]."""

# --- VAPID [RFC8292] -----------------------------------------------------------------------------

VAPID_MAX_LIFETIME: Final = timedelta(hours=24)
"""``exp`` "MUST NOT be more than 24 hours from the time of the request" [RFC8292 §2]."""
VAPID_DEFAULT_LIFETIME: Final = timedelta(hours=12)
# Half the limit, as the protocols sheet advises: a push service whose clock runs ahead of ours
# by up to 12 hours still takes the token, and one token per origin serves 12 hours of sends.

_TOPIC = re.compile(r"[A-Za-z0-9_-]{1,32}")
_KEY_MISMATCH = re.compile(r"does not correspond|mismatch", re.IGNORECASE)
_B64URL = re.compile(r"[A-Za-z0-9_-]*={0,2}")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class Urgency(StrEnum):
    """The ``Urgency`` header's values [RFC8030 §5.3]."""

    VERY_LOW = "very-low"
    LOW = "low"
    NORMAL = "normal"
    HIGH = "high"


# --- base64url -----------------------------------------------------------------------------------


def b64url_encode(data: bytes) -> str:
    """base64url without padding, as Web Push writes keys, secrets and JWTs [RFC8291 §3.2]."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str, *, name: str = "value") -> bytes:
    """The bytes of base64url `text`, padded or not (browsers send both).

    Raises:
        errors.InvalidRequest: a character outside the base64url alphabet, or a bad length.
    """
    if not _B64URL.fullmatch(text):
        raise errors.InvalidRequest(f"the {name} is not base64url")
    bare = text.rstrip("=")
    try:
        return base64.urlsafe_b64decode(bare + "=" * (-len(bare) % 4))
    except (binascii.Error, ValueError) as exc:
        raise errors.InvalidRequest(f"the {name} is not base64url") from exc


# --- subscriptions and endpoints -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Subscription:
    """A browser's push subscription (``PushSubscription.toJSON()``).

    Attributes:
        endpoint: the push resource URL to POST to [RFC8030 §5].
        p256dh: the user agent's public key, 65 bytes uncompressed [RFC8291 §3.2].
        auth: the user agent's 16-byte authentication secret [RFC8291 §3.2].
    """

    endpoint: str
    p256dh: bytes
    auth: bytes

    @classmethod
    def parse(cls, endpoint: str, p256dh: str, auth: str) -> Subscription:
        """A subscription from the browser's JSON strings, every part checked.

        Raises:
            errors.InvalidRequest: the endpoint fails `endpoint_origin`, ``p256dh`` is not a
                base64url P-256 point, or ``auth`` is not 16 base64url bytes.
        """
        endpoint_origin(endpoint)
        key = b64url_decode(p256dh, name="p256dh key")
        _public_key(key, "p256dh key")
        secret = b64url_decode(auth, name="auth secret")
        _check_auth_secret(secret)
        return cls(endpoint=endpoint, p256dh=key, auth=secret)


def endpoint_origin(endpoint: str) -> str:
    """The origin of a push endpoint, ``https://host[:port]`` (RFC 6454 §6.1), after checking
    that Clarion may POST to it.

    The endpoint must be an absolute ``https`` URL (push services "MUST use HTTP over TLS"
    [RFC8030 §3]) with an ASCII host, no user information and no fragment. The default port is
    left out of the origin, which is what VAPID's ``aud`` compares [RFC8292 §2]. Whether the host
    resolves to a private or loopback address is the adapter's check, at connection time.

    Raises:
        errors.InvalidRequest: the endpoint is none of the above.
    """
    if not endpoint or len(endpoint) > 2048 or not endpoint.isascii():
        raise errors.InvalidRequest("the push endpoint must be an ASCII URL of at most 2048 chars")
    if any(ch.isspace() or not ch.isprintable() for ch in endpoint):
        raise errors.InvalidRequest("the push endpoint holds blanks or control characters")
    try:
        parts = urlsplit(endpoint)
        port = parts.port
    except ValueError as exc:
        raise errors.InvalidRequest(f"the push endpoint cannot be parsed: {exc}") from None
    if parts.scheme.lower() != "https":
        raise errors.InvalidRequest("the push endpoint must be an https:// URL")
    if "@" in parts.netloc:
        raise errors.InvalidRequest("the push endpoint must not carry user information")
    if parts.fragment:
        raise errors.InvalidRequest("the push endpoint must not have a #fragment")
    host = (parts.hostname or "").lower()
    if not host:
        raise errors.InvalidRequest("the push endpoint names no host")
    shown = f"[{host}]" if ":" in host else host
    return f"https://{shown}" if port in (None, 443) else f"https://{shown}:{port}"


# --- encryption [RFC8291 §3-4, RFC8188] -------------------------------------------------------


def encrypt(
    plaintext: bytes,
    p256dh: bytes,
    auth_secret: bytes,
    *,
    padding: int = 0,
    salt: bytes | None = None,
    sender_key: ec.EllipticCurvePrivateKey | None = None,
) -> bytes:
    """`plaintext` as an ``aes128gcm`` body for the subscription with these keys [RFC8291 §3-4].

    The body is one RFC 8188 record: ``salt || rs || idlen=65 || keyid=as_public || record``,
    where the record is AES-128-GCM over ``plaintext || 0x02 || 0x00 * padding``.

    Args:
        plaintext: the message, at most `MAX_PLAINTEXT_BYTES` less `padding`.
        p256dh: the user agent's public key (65 bytes uncompressed).
        auth_secret: the user agent's 16-byte authentication secret.
        padding: zero bytes to append after the delimiter, to hide the length.
        salt: 16 bytes; random when None (tests inject RFC 8291's).
        sender_key: the application server's ephemeral P-256 key; a new one when None (tests
            inject RFC 8291's). Never the VAPID key: the W3C Push API (§7.2) requires the two
            to differ.

    Raises:
        errors.InvalidRequest: a key or the secret is malformed, the salt is not 16 bytes,
            the padding is negative, or the body would exceed `MAX_BODY_BYTES`.
    """
    if padding < 0 or isinstance(padding, bool):
        raise errors.InvalidRequest("the padding must be a non-negative number of bytes")
    size = HEADER_BYTES + len(plaintext) + 1 + padding + TAG_BYTES
    if size > MAX_BODY_BYTES:
        raise errors.InvalidRequest(
            f"the encrypted Web Push body would be {size} bytes; push services must take only "
            f"{MAX_BODY_BYTES} (at most {MAX_PLAINTEXT_BYTES} bytes of plaintext and padding)",
            size=size,
            limit=MAX_BODY_BYTES,
        )
    ua_key = _public_key(p256dh, "p256dh key")
    _check_auth_secret(auth_secret)
    salt = os.urandom(SALT_BYTES) if salt is None else salt
    if len(salt) != SALT_BYTES:
        raise errors.InvalidRequest(f"the salt must be {SALT_BYTES} bytes")
    if sender_key is None:
        sender_key = ec.generate_private_key(ec.SECP256R1())
    elif not isinstance(sender_key.curve, ec.SECP256R1):
        raise errors.InvalidRequest("the sender key must be a P-256 key")
    as_public = _point(sender_key.public_key())
    ecdh_secret = sender_key.exchange(ec.ECDH(), ua_key)
    cek, nonce = _derive(ecdh_secret, auth_secret, bytes(p256dh), as_public, salt)
    record = AESGCM(cek).encrypt(
        nonce, bytes(plaintext) + _LAST_RECORD_DELIMITER + b"\x00" * padding, None
    )
    header = salt + struct.pack("!IB", RECORD_SIZE, PUBLIC_KEY_BYTES) + as_public
    return header + record


def decrypt(body: bytes, receiver_key: ec.EllipticCurvePrivateKey, auth_secret: bytes) -> bytes:
    """The plaintext of an ``aes128gcm`` Web Push body, as a user agent reads it [RFC8291 §4].

    The inverse of `encrypt`: the key id must be the sender's 65-byte public key, the body one
    record no longer than ``rs``, and the padding delimiter 0x02 ("values other than 0x02 MUST
    cause the message to be discarded") [RFC8291 §4][RFC8188 §2].

    Raises:
        errors.InvalidRequest: the header is malformed, the body holds more than one record,
            the tag does not verify, or the delimiter is wrong.
    """
    _check_auth_secret(auth_secret)
    if len(body) < SALT_BYTES + 5:
        raise errors.InvalidRequest("the aes128gcm body is shorter than its header")
    salt = body[:SALT_BYTES]
    record_size, id_length = struct.unpack_from("!IB", body, SALT_BYTES)
    if record_size < MIN_RECORD_SIZE:
        raise errors.InvalidRequest(f"the record size {record_size} is below {MIN_RECORD_SIZE}")
    if id_length != PUBLIC_KEY_BYTES:
        raise errors.InvalidRequest("the key id must be the sender's 65-byte public key")
    start = SALT_BYTES + 5
    as_public = body[start : start + id_length]
    sender = _public_key(as_public, "sender key")
    record = body[start + id_length :]
    if len(record) < TAG_BYTES + 1:
        raise errors.InvalidRequest("the aes128gcm record is shorter than a tag and a delimiter")
    if len(record) > record_size:
        raise errors.InvalidRequest("a Web Push message must be a single record")
    if not isinstance(receiver_key.curve, ec.SECP256R1):
        raise errors.InvalidRequest("the receiver key must be a P-256 key")
    ua_public = _point(receiver_key.public_key())
    ecdh_secret = receiver_key.exchange(ec.ECDH(), sender)
    cek, nonce = _derive(ecdh_secret, auth_secret, ua_public, as_public, salt)
    try:
        padded = AESGCM(cek).decrypt(nonce, record, None)
    except InvalidTag as exc:
        raise errors.InvalidRequest("the aes128gcm record does not decrypt (bad tag)") from exc
    unpadded = padded.rstrip(b"\x00")
    if unpadded[-1:] != _LAST_RECORD_DELIMITER:
        raise errors.InvalidRequest("the padding delimiter is not 0x02")
    return unpadded[:-1]


def _derive(
    ecdh_secret: bytes, auth_secret: bytes, ua_public: bytes, as_public: bytes, salt: bytes
) -> tuple[bytes, bytes]:
    # RFC 8291 §3.3 (key combining), then RFC 8188 §2.2-2.3 (CEK and nonce). Each HKDF-Expand
    # asks for at most one SHA-256 block, so one HMAC with the counter 0x01 is the whole expand.
    prk_key = _hmac(auth_secret, ecdh_secret)
    ikm = _hmac(prk_key, _KEY_INFO + ua_public + as_public + b"\x01")
    prk = _hmac(salt, ikm)
    cek = _hmac(prk, _CEK_INFO + b"\x01")[:16]
    nonce = _hmac(prk, _NONCE_INFO + b"\x01")[:12]
    return cek, nonce


def _hmac(key: bytes, data: bytes) -> bytes:
    return hmac.new(key, data, hashlib.sha256).digest()


def _public_key(point: bytes, name: str) -> ec.EllipticCurvePublicKey:
    # "MUST verify that the public key they receive is on the P-256 curve" [RFC8291 §7];
    # from_encoded_point refuses a point off the curve.
    if len(point) != PUBLIC_KEY_BYTES or point[0] != 0x04:
        raise errors.InvalidRequest(f"the {name} must be a 65-byte uncompressed P-256 point")
    try:
        return ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), bytes(point))
    except ValueError as exc:
        raise errors.InvalidRequest(f"the {name} is not a point on P-256") from exc


def _point(key: ec.EllipticCurvePublicKey) -> bytes:
    return key.public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )


def _check_auth_secret(secret: bytes) -> None:
    if len(secret) != AUTH_SECRET_BYTES:
        raise errors.InvalidRequest(f"the auth secret must be {AUTH_SECRET_BYTES} bytes")


# --- VAPID [RFC8292] -------------------------------------------------------------------------


def load_vapid_key(data: str | bytes) -> ec.EllipticCurvePrivateKey:
    """A VAPID signing key from PEM (PKCS#8 or SEC1) or from the raw 32-byte private scalar in
    base64url, the form web-push libraries print.

    Raises:
        errors.InvalidRequest: neither form, or not a P-256 key.
    """
    raw = data.encode() if isinstance(data, str) else data
    if raw.lstrip().startswith(b"-----BEGIN"):
        try:
            key = serialization.load_pem_private_key(raw, password=None)
        except (ValueError, TypeError) as exc:
            raise errors.InvalidRequest("the VAPID key is not a readable PEM private key") from exc
        if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(
            key.curve, ec.SECP256R1
        ):
            raise errors.InvalidRequest("the VAPID key must be a P-256 (ES256) key")
        return key
    try:
        scalar = b64url_decode(raw.decode("ascii").strip(), name="VAPID key")
    except UnicodeDecodeError as exc:
        raise errors.InvalidRequest("the VAPID key is neither PEM nor base64url") from exc
    if len(scalar) != 32:
        raise errors.InvalidRequest("a raw VAPID key must be 32 bytes (base64url)")
    try:
        return ec.derive_private_key(int.from_bytes(scalar, "big"), ec.SECP256R1())
    except ValueError as exc:
        raise errors.InvalidRequest("the VAPID key is not a valid P-256 scalar") from exc


def vapid_public_key(key: ec.EllipticCurvePrivateKey) -> str:
    """The ``k`` parameter: the public key, uncompressed, base64url [RFC8292 §3.2]. It is also
    the ``applicationServerKey`` browsers subscribe with."""
    return b64url_encode(_point(key.public_key()))


def vapid_claims(
    endpoint: str,
    *,
    subject: str,
    now: datetime,
    lifetime: timedelta = VAPID_DEFAULT_LIFETIME,
) -> dict[str, str | int]:
    """The claims of a VAPID token for `endpoint` [RFC8292 §2]: ``aud`` = the endpoint's
    origin, ``exp`` = `now` + `lifetime` (Unix seconds), ``sub`` = `subject`.

    Raises:
        errors.InvalidRequest: the endpoint fails `endpoint_origin`; `now` is naive; the
            lifetime is not positive or exceeds 24 hours; the subject is not a ``mailto:`` or
            ``https:`` URI.
    """
    audience = endpoint_origin(endpoint)
    if lifetime <= timedelta(0) or lifetime > VAPID_MAX_LIFETIME:
        raise errors.InvalidRequest("a VAPID token must live more than 0 s and at most 24 hours")
    _check_subject(subject)
    issued = _epoch_seconds(now, "current time")
    return {"aud": audience, "exp": issued + lifetime // timedelta(seconds=1), "sub": subject}


def sign_vapid(
    key: ec.EllipticCurvePrivateKey,
    endpoint: str,
    *,
    subject: str,
    now: datetime,
    lifetime: timedelta = VAPID_DEFAULT_LIFETIME,
) -> str:
    """A VAPID JWT for `endpoint`'s origin, ES256, header ``{"typ": "JWT", "alg": "ES256"}``
    [RFC8292 §2]. One token serves every endpoint of the origin until it expires.

    Raises:
        errors.InvalidRequest: see `vapid_claims`; or the key is not P-256.
    """
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP256R1):
        raise errors.InvalidRequest("the VAPID key must be a P-256 (ES256) key")
    claims = vapid_claims(endpoint, subject=subject, now=now, lifetime=lifetime)
    return jwt.encode(claims, key, algorithm="ES256", headers={"typ": "JWT"})


def vapid_authorization(token: str, key: ec.EllipticCurvePrivateKey) -> str:
    """The ``Authorization`` header value: ``vapid t=<jwt>, k=<public key>`` [RFC8292 §3]."""
    return f"vapid t={token}, k={vapid_public_key(key)}"


@dataclass(frozen=True, slots=True)
class VapidCredential:
    """What a push service reads from ``Authorization: vapid``: the verified claims and ``k``."""

    claims: Mapping[str, Any]
    public_key: str


def verify_vapid(authorization: str, *, endpoint: str, now: datetime) -> VapidCredential:
    """Check an ``Authorization: vapid t=..., k=...`` value as a push service would [RFC8292].

    The signature must verify with ``k`` (ES256); ``aud`` must be `endpoint`'s origin; ``exp``
    must lie after `now` and at most 24 hours after it; ``sub``, when present, must be a
    ``mailto:`` or ``https:`` URI. Clarion uses this in tests; it is the push service's side.

    Raises:
        errors.InvalidRequest: saying which check failed.
    """
    params = _vapid_params(authorization)
    token, k = params.get("t"), params.get("k")
    if not token or not k:
        raise errors.InvalidRequest("the vapid credential needs both t= and k=")
    public = _public_key(b64url_decode(k, name="k parameter"), "k parameter")
    try:
        header = jwt.get_unverified_header(token)
        claims = jwt.decode(
            token,
            public,
            algorithms=["ES256"],
            audience=endpoint_origin(endpoint),
            options={"verify_exp": False, "verify_iat": False, "require": ["aud", "exp"]},
        )
    except jwt.PyJWTError as exc:
        raise errors.InvalidRequest(f"the VAPID token does not verify: {exc}") from exc
    if header.get("alg") != "ES256":
        raise errors.InvalidRequest("the VAPID token must be ES256")
    exp = claims["exp"]
    if not isinstance(exp, int) or isinstance(exp, bool):
        raise errors.InvalidRequest("the VAPID exp claim must be an integer")
    moment = _epoch_seconds(now, "current time")
    if exp <= moment:
        raise errors.InvalidRequest("the VAPID token has expired")
    if exp - moment > VAPID_MAX_LIFETIME // timedelta(seconds=1):
        raise errors.InvalidRequest("the VAPID exp claim is more than 24 hours away")
    if "sub" in claims:
        if not isinstance(claims["sub"], str):
            raise errors.InvalidRequest("the VAPID sub claim must be a string")
        _check_subject(claims["sub"])
    return VapidCredential(claims=claims, public_key=k)


def _vapid_params(authorization: str) -> dict[str, str]:
    scheme, _, rest = authorization.strip().partition(" ")
    if scheme.lower() != "vapid":
        raise errors.InvalidRequest("the Authorization scheme must be vapid")
    params: dict[str, str] = {}
    for part in rest.split(","):
        name, sep, value = part.strip().partition("=")
        if not sep or not name:
            raise errors.InvalidRequest("the vapid credential is not a list of name=value")
        params[name.strip().lower()] = value.strip()
    return params


def check_subject(subject: str) -> None:
    """Check a VAPID ``sub`` claim: a ``mailto:`` URI with an address, or an ``https:`` URL
    [RFC8292 §2.1].

    Raises:
        errors.InvalidRequest: it is neither.
    """
    _check_subject(subject)


def _check_subject(subject: str) -> None:
    # RFC 8292 §2.1: "SHOULD include a contact URI ... either a mailto: or an https: URI";
    # Clarion makes it a must (Apple's push service refuses tokens without one).
    if not isinstance(subject, str) or not subject.isprintable() or " " in subject:
        raise errors.InvalidRequest("the VAPID subject must be a mailto: or https: URI")
    lowered = subject.lower()
    if lowered.startswith("mailto:") and "@" in subject[len("mailto:") :]:
        return
    if lowered.startswith("https://") and urlsplit(subject).hostname:
        return
    raise errors.InvalidRequest("the VAPID subject must be a mailto: or https: URI")


# --- requests [RFC8030 §5] -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Message:
    """One push to one subscription.

    Attributes:
        subscription: where to, and the keys to encrypt for.
        payload: the plaintext (Clarion sends JSON); None sends a push without data, which
            wakes the service worker with an empty ``push`` event.
        ttl: seconds the push service keeps the message for an offline device; sent as
            ``TTL`` on every request [RFC8030 §5.2]. 0 means "deliver now or never" and is
            sent only when asked for.
        urgency: ``Urgency`` [RFC8030 §5.3]; ``normal`` is not sent (it is the default).
        topic: ``Topic``: a later message with the same topic replaces this one while it is
            undelivered [RFC8030 §5.4].
        padding: zero bytes added to the plaintext to hide its length [RFC8188 §2].
    """

    subscription: Subscription
    payload: bytes | None = None
    ttl: int = DEFAULT_TTL_SECONDS
    urgency: Urgency = Urgency.NORMAL
    topic: str | None = None
    padding: int = 0


@dataclass(frozen=True, slots=True)
class Request:
    """An HTTP request for a push service.

    Attributes:
        url: the subscription's endpoint.
        headers: ``(name, value)`` pairs in sending order.
        body: the ``aes128gcm`` body, or empty for a push without data.
    """

    url: str
    headers: tuple[tuple[str, str], ...]
    body: bytes

    @property
    def method(self) -> str:
        """Always POST [RFC8030 §5]."""
        return "POST"


def build_request(
    message: Message,
    *,
    authorization: str,
    salt: bytes | None = None,
    sender_key: ec.EllipticCurvePrivateKey | None = None,
) -> Request:
    """The request that sends `message` [RFC8030 §5][RFC8291][RFC8292].

    Headers: ``TTL`` always; ``Urgency`` unless normal; ``Topic`` when given;
    ``Content-Encoding: aes128gcm`` and ``Content-Type: application/octet-stream`` with a
    payload; ``Authorization`` (the `vapid_authorization` value, which the adapter caches per
    origin and key).

    Args:
        message: what to send.
        authorization: ``vapid t=<jwt>, k=<key>``.
        salt, sender_key: injected by tests only (see `encrypt`).

    Raises:
        errors.InvalidRequest: the endpoint, TTL, urgency, topic or authorization is unusable,
            or the payload is refused by `encrypt`.
    """
    m = message
    endpoint_origin(m.subscription.endpoint)
    if isinstance(m.ttl, bool) or not isinstance(m.ttl, int) or not 0 <= m.ttl <= MAX_TTL_SECONDS:
        raise errors.InvalidRequest(f"the TTL must be whole seconds from 0 to {MAX_TTL_SECONDS}")
    try:
        urgency = Urgency(m.urgency)
    except ValueError as exc:
        raise errors.InvalidRequest("the urgency must be very-low, low, normal or high") from exc
    if not authorization.startswith("vapid ") or not authorization.isprintable():
        raise errors.InvalidRequest("the authorization must be a 'vapid t=..., k=...' value")
    headers: list[tuple[str, str]] = [("TTL", str(m.ttl))]
    if urgency is not Urgency.NORMAL:
        headers.append(("Urgency", str(urgency)))
    if m.topic is not None:
        if not _TOPIC.fullmatch(m.topic):
            raise errors.InvalidRequest(
                f"the topic must be 1 to {MAX_TOPIC_LENGTH} characters of the base64url alphabet"
            )
        headers.append(("Topic", m.topic))
    body = b""
    if m.payload is not None:
        body = encrypt(
            m.payload,
            m.subscription.p256dh,
            m.subscription.auth,
            padding=m.padding,
            salt=salt,
            sender_key=sender_key,
        )
        headers += [
            ("Content-Encoding", "aes128gcm"),
            ("Content-Type", "application/octet-stream"),
        ]
    headers.append(("Authorization", authorization))
    return Request(url=m.subscription.endpoint, headers=tuple(headers), body=body)


# --- responses [RFC8030 §5-8][RFC8292 §4] ----------------------------------------------------

MAX_REASON_CHARS: Final = 200
"""How much of a push service's error text a reason keeps."""


def classify_response(
    status: int,
    headers: Mapping[str, str] | Iterable[tuple[str, str]],
    body: bytes,
    *,
    now: datetime,
) -> outcomes.Outcome:
    """What a push service's answer means for the delivery (protocols sheet §4).

    - 2xx (201 Created; 202 after ``Prefer: respond-async``): `Delivered`, referenced by the
      ``Location`` of the message resource [RFC8030 §5].
    - 404 (expired subscription, RFC 8030 §7.3) and 410 (unsubscribed): `TokenInvalid`.
    - 401/403 (VAPID missing, invalid, or for another key, RFC 8292 §4): `AuthFailed`; but a
      403 saying the key does not match the one the subscription was made with (FCM: "does not
      correspond to the sender ID used to subscribe this user") is `TokenInvalid`: only that
      subscription is unusable.
    - 429 and 5xx: `RetryLater`, honouring ``Retry-After`` (seconds or HTTP-date).
    - 400 (malformed headers), 413 (body too large) and any other 4xx: `Rejected`.

    Reasons read ``HTTP <status>`` plus the service's own words when it sent any: FCM's
    endpoint answers plain text (``invalid JWT provided``), Mozilla's JSON with ``message``.
    """
    found = _headers(headers)
    if 200 <= status < 300:
        location = found.get("location")
        return outcomes.Delivered(reference=location or None)
    label = _reason(status, body)
    if status in (404, 410):
        return outcomes.TokenInvalid(label)
    if status == 403 and _KEY_MISMATCH.search(label):
        # The subscription was made with another applicationServerKey: this subscription can
        # never take our key, but the key itself is fine (protocols sheet §4).
        return outcomes.TokenInvalid(label)
    if status in (401, 403):
        return outcomes.AuthFailed(label)
    if status == 429 or 500 <= status < 600:
        return outcomes.RetryLater(label, parse_retry_after(found.get("retry-after"), now=now))
    if 400 <= status < 500:
        return outcomes.Rejected(label)
    # 1xx and 3xx: redirects are not followed (the new target was never vetted).
    return outcomes.RetryLater(f"unexpected {label}")


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


def _reason(status: int, body: bytes) -> str:
    text = body.decode("utf-8", "replace").strip()
    if text.startswith("{"):
        try:
            document = json.loads(text)
        except (ValueError, RecursionError):
            document = None
        if isinstance(document, dict):
            message = document.get("message") or document.get("error")
            text = message if isinstance(message, str) else ""
    text = "".join(ch if ch.isprintable() else " " for ch in text).strip()
    if len(text) > MAX_REASON_CHARS:
        text = text[: MAX_REASON_CHARS - 1] + "…"
    return f"HTTP {status}: {text}" if text else f"HTTP {status}"


def _headers(headers: Mapping[str, str] | Iterable[tuple[str, str]]) -> dict[str, str]:
    items = headers.items() if isinstance(headers, Mapping) else headers
    return {name.lower(): value for name, value in items}


def _epoch_seconds(at: datetime, name: str) -> int:
    if at.tzinfo is None or at.utcoffset() is None:
        raise errors.InvalidRequest(f"the {name} must be timezone-aware")
    return (at - _EPOCH) // timedelta(seconds=1)
