"""API keys: a typed prefix, a key id, a 256-bit secret and a checksum.

``clk_<key id>_<secret><checksum>``: the prefix and checksum let secret scanners find leaked keys
and let us reject a mistyped key without touching the database. Only a SHA-256 hash of the whole
key is stored; the key id finds the row, the hash is compared in constant time.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import zlib
from dataclasses import dataclass

PREFIX = "clk"
_ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_SHAPE = re.compile(r"^clk_([0-9a-f]{16})_([A-Za-z0-9_-]{43})([0-9A-Za-z]{6})$")


@dataclass(frozen=True, slots=True)
class ParsedKey:
    """A key whose shape and checksum are right; whether it exists is for storage to say."""

    key_id: str
    digest: str


def format_key(key_id: str, secret: bytes) -> str:
    """The printable key for `key_id` (16 hex digits) and a 32-byte `secret`."""
    body = f"{PREFIX}_{key_id}_{base64.urlsafe_b64encode(secret).rstrip(b'=').decode()}"
    return body + _checksum(body)


def parse_key(text: str) -> ParsedKey | None:
    """The key id and digest of `text`, or None when it is not a well-formed Clarion key."""
    match = _SHAPE.match(text)
    if match is None:
        return None
    body = text[:-6]
    if not hmac.compare_digest(_checksum(body), match.group(3)):
        return None
    return ParsedKey(key_id=match.group(1), digest=digest(text))


def digest(key: str) -> str:
    """What storage keeps of a key: its SHA-256, hex."""
    return hashlib.sha256(key.encode()).hexdigest()


def same_digest(a: str, b: str) -> bool:
    """Constant-time comparison of two digests."""
    return hmac.compare_digest(a, b)


def _checksum(body: str) -> str:
    value = zlib.crc32(body.encode())
    out = []
    for _ in range(6):
        value, rest = divmod(value, 62)
        out.append(_ALPHABET[rest])
    return "".join(reversed(out))
