"""Signed one-click unsubscribe tokens (RFC 8058), sans I/O.

Every email carries ``List-Unsubscribe: <https://.../unsubscribe/<token>>, <mailto:...>``; a
POST to the URL (no login, no cookie) unsubscribes the user from that category's emails. The
token is the only credential, so it must say whom and what it is for, and no one may make or
alter one:

``u1.<payload>.<tag>``, both parts base64url without padding, where

- payload = the fields (tenant id, user id, category, channel, issued-at in whole seconds since
  the epoch), each as a 2-byte big-endian length then its UTF-8 bytes; length prefixes make the
  encoding injective, so no two field tuples share bytes (``("ab", "c")`` vs ``("a", "bc")``);
- tag = HMAC-SHA256(key, ``"clarion-unsubscribe-v1\\0" || payload``), truncated to 16 bytes
  (128 bits: forgery stays a 2^-128 guess per try, and the URL stays short);
- key = the *tenant key*: HMAC-SHA256(server secret, ``"unsubscribe\\0" || tenant id``), so one
  tenant's keys tell nothing about another's, and rotating the server secret rotates them all.

Changing any field (another user, category, tenant or time) changes the tag; verification
recomputes it and compares in constant time (`hmac.compare_digest`) against every key still
accepted (the current one first, then those being rotated out). A token is not single-use:
repeating the POST only repeats an idempotent unsubscribe, and mail clients and scanners may
fetch the URL more than once. Expiry is optional (`verify` takes `max_age`): links in old
emails keep working by default, as mailbox providers expect.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Final
from urllib.parse import quote

from clarion.domain import errors

TOKEN_PREFIX: Final = "u1"  # noqa: S105 (a format version, not a secret)
TAG_BYTES: Final = 16
CHANNEL_EMAIL: Final = "email"
MAX_FIELD_BYTES: Final = 255
"""Ids and category names are short; the bound keeps a hostile token from costing much."""
MAX_TOKEN_CHARS: Final = 1024
FUTURE_SKEW: Final = timedelta(minutes=5)
"""A token issued this far ahead of the verifier's clock is still taken (clocks differ)."""
MIN_SECRET_BYTES: Final = 32

_DOMAIN: Final = b"clarion-unsubscribe-v1\0"
_UNKNOWN: Final = "this unsubscribe link is not valid"


@dataclass(frozen=True, slots=True)
class UnsubscribeClaim:
    """What a valid token says: unsubscribe `user` of `tenant` from `category` on `channel`."""

    tenant: str
    user: str
    category: str
    channel: str
    issued_at: datetime


def tenant_key(server_secret: bytes, tenant: str) -> bytes:
    """The key tokens of `tenant` are signed with, derived from the server's secret.

    Raises:
        errors.InvalidRequest: a secret shorter than 32 bytes.
    """
    if len(server_secret) < MIN_SECRET_BYTES:
        raise errors.InvalidRequest(
            f"the unsubscribe secret must be at least {MIN_SECRET_BYTES} bytes"
        )
    return hmac.new(server_secret, b"unsubscribe\0" + tenant.encode(), hashlib.sha256).digest()


def issue(
    key: bytes,
    *,
    tenant: str,
    user: str,
    category: str,
    now: datetime,
    channel: str = CHANNEL_EMAIL,
) -> str:
    """A token for unsubscribing `user` of `tenant` from `category` on `channel`, signed with
    `key` (`tenant_key`).

    Raises:
        errors.InvalidRequest: an empty or over-long field, or a naive `now`.
    """
    if now.tzinfo is None:
        raise errors.InvalidRequest("the issue time must be timezone-aware")
    payload = _payload(tenant, user, category, channel, int(now.timestamp()))
    return f"{TOKEN_PREFIX}.{_b64(payload)}.{_b64(_tag(key, payload))}"


def verify(
    token: str,
    keys: Sequence[bytes],
    *,
    now: datetime,
    tenant: str | None = None,
    max_age: timedelta | None = None,
) -> UnsubscribeClaim:
    """What `token` claims, when one of `keys` signed it.

    `tenant`, when given (the URL names it, or the key was chosen for it), must be the token's.
    `max_age`, when given, bounds how old the token may be.

    Raises:
        errors.NotFound: malformed, signed by none of `keys`, for another tenant, expired, or
            issued in the future: like any object that is missing or not yours (404), and the
            message never says which, so it teaches a forger nothing.
    """
    if not keys:
        raise errors.NotFound(_UNKNOWN)
    if not isinstance(token, str) or len(token) > MAX_TOKEN_CHARS or not token.isascii():
        raise errors.NotFound(_UNKNOWN)
    prefix, _, rest = token.partition(".")
    encoded_payload, _, encoded_tag = rest.partition(".")
    if prefix != TOKEN_PREFIX:
        raise errors.NotFound(_UNKNOWN)
    payload, tag = _unb64(encoded_payload), _unb64(encoded_tag)
    if payload is None or tag is None or len(tag) != TAG_BYTES:
        raise errors.NotFound(_UNKNOWN)
    matched = False
    for key in keys:  # every key is tried, so timing does not tell which one matched
        matched |= hmac.compare_digest(_tag(key, payload), tag)
    if not matched:
        raise errors.NotFound(_UNKNOWN)
    fields = _fields(payload)
    if fields is None:
        raise errors.NotFound(_UNKNOWN)
    claimed_tenant, user, category, channel, issued = fields
    if tenant is not None and not hmac.compare_digest(claimed_tenant.encode(), tenant.encode()):
        raise errors.NotFound(_UNKNOWN)
    issued_at = datetime.fromtimestamp(issued, UTC)
    if issued_at > now + FUTURE_SKEW:
        raise errors.NotFound(_UNKNOWN)
    if max_age is not None and now - issued_at > max_age:
        raise errors.NotFound(_UNKNOWN)
    return UnsubscribeClaim(claimed_tenant, user, category, channel, issued_at)


def claimed_tenant(token: str) -> str | None:
    """The tenant `token` *says* it is for, unverified, or None when it is malformed: what
    picks the key (`tenant_key`) to `verify` it with, and nothing more."""
    if not isinstance(token, str) or len(token) > MAX_TOKEN_CHARS or not token.isascii():
        return None
    prefix, _, rest = token.partition(".")
    payload = _unb64(rest.partition(".")[0])
    if prefix != TOKEN_PREFIX or payload is None:
        return None
    fields = _fields(payload)
    return fields[0] if fields is not None else None


def one_click_url(base_url: str, token: str) -> str:
    """``<base_url>/<token>``: the https URL for ``List-Unsubscribe`` (RFC 8058 §3.1).

    Raises:
        errors.InvalidRequest: `base_url` is not https.
    """
    if not base_url.startswith("https://"):
        raise errors.InvalidRequest("the one-click unsubscribe URL must be https (RFC 8058)")
    return f"{base_url.rstrip('/')}/{token}"


def mailto_uri(address: str, token: str) -> str:
    """``mailto:<address>?subject=unsubscribe%20<token>`` (RFC 2369 §3.2, RFC 6068): whoever
    reads that mailbox unsubscribes the sender with the token from the subject."""
    if any(ch in address for ch in "?<>,\r\n ") or "@" not in address:
        raise errors.InvalidRequest("the unsubscribe mailbox must be a plain address")
    return f"mailto:{address}?subject={quote('unsubscribe ' + token, safe='')}"


def token_from_subject(subject: str) -> str | None:
    """The token a ``mailto`` unsubscribe carries in its subject, or None."""
    words = subject.split()
    if len(words) >= 2 and words[-2].lower() == "unsubscribe":
        return words[-1]
    return None


def _payload(tenant: str, user: str, category: str, channel: str, issued: int) -> bytes:
    if issued < 0:
        raise errors.InvalidRequest("the issue time must be after 1970")
    out = bytearray()
    for name, value in (
        ("tenant", tenant),
        ("user", user),
        ("category", category),
        ("channel", channel),
        ("issued-at", str(issued)),
    ):
        data = value.encode()
        if not data or len(data) > MAX_FIELD_BYTES:
            raise errors.InvalidRequest(f"the {name} must be 1 to {MAX_FIELD_BYTES} bytes")
        out += len(data).to_bytes(2, "big") + data
    return bytes(out)


def _fields(payload: bytes) -> tuple[str, str, str, str, int] | None:
    values: list[str] = []
    at = 0
    try:
        while at < len(payload):
            size = int.from_bytes(payload[at : at + 2], "big")
            chunk = payload[at + 2 : at + 2 + size]
            if len(chunk) != size or size == 0:
                return None
            values.append(chunk.decode())
            at += 2 + size
    except UnicodeDecodeError:
        return None
    if len(values) != 5 or not values[4].isascii() or not values[4].isdigit():
        return None
    return values[0], values[1], values[2], values[3], int(values[4])


def _tag(key: bytes, payload: bytes) -> bytes:
    return hmac.new(key, _DOMAIN + payload, hashlib.sha256).digest()[:TAG_BYTES]


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes | None:
    if not text or any(ch not in _B64_ALPHABET for ch in text):
        return None
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        return None


_B64_ALPHABET: Final = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
