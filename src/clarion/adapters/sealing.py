"""Secrets at rest: AES-256-GCM with the owner's ids bound as associated data.

A sealed value copied onto another tenant's row does not open there, because the tenant id is
part of what the tag authenticates. The key comes from settings or a key file and never enters
the database.
"""

from __future__ import annotations

import base64
import binascii
import os
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

_VERSION = "v1"
_NONCE_BYTES = 12  # the size GCM is specified for (NIST SP 800-38D)


class SealError(Exception):
    """A sealed value could not be opened: wrong key, wrong owner, or tampered."""


class Sealer:
    """Seals and opens short secrets with one 256-bit key."""

    def __init__(self, key: bytes) -> None:
        if len(key) != 32:
            raise ValueError("the sealing key must be 32 bytes")
        self._aead = AESGCM(key)

    def seal(self, plaintext: str, *, owner: str) -> str:
        """`plaintext` encrypted and bound to `owner`, as printable text."""
        nonce = os.urandom(_NONCE_BYTES)
        sealed = self._aead.encrypt(nonce, plaintext.encode(), owner.encode())
        return f"{_VERSION}:{base64.b64encode(nonce + sealed).decode()}"

    def open(self, sealed: str, *, owner: str) -> str:
        """The plaintext of `sealed`, which must have been sealed for `owner`."""
        version, _, body = sealed.partition(":")
        if version != _VERSION:
            raise SealError(f"unknown sealing version {version!r}")
        try:
            raw = base64.b64decode(body, validate=True)
            plain = self._aead.decrypt(raw[:_NONCE_BYTES], raw[_NONCE_BYTES:], owner.encode())
        except (binascii.Error, InvalidTag, ValueError) as exc:
            raise SealError("sealed value does not open with this key and owner") from exc
        return plain.decode()


def load_or_create_key(path: Path) -> bytes:
    """The key in `path` (base64), created with owner-only permissions on first use."""
    if path.exists():
        key = base64.b64decode(path.read_text().strip())
        if len(key) != 32:
            raise ValueError(f"{path} does not hold a 32-byte base64 key")
        return key
    path.parent.mkdir(parents=True, exist_ok=True)
    key = AESGCM.generate_key(bit_length=256)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(base64.b64encode(key).decode() + "\n")
    return key
