"""Provider credentials at rest: envelope encryption.

Each credential's secret (an APNs .p8 key, a certificate and its key, ...) is encrypted with
AES-256-GCM under a data key of its own, drawn at random every time the secret is written. The
data key is then wrapped by the key-encryption key, the server's sealing key (settings or the
key file, `adapters/sealing.py`), which never enters the database. Both layers authenticate the
same associated data, the tenant id and the credential id, so a sealed secret or a wrapped key
copied onto another tenant's or another credential's row does not open there.

Rotating the key-encryption key means re-wrapping every data key (not re-encrypting the
secrets); that is not built yet.
"""

from __future__ import annotations

import base64
import binascii
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from clarion.adapters.sealing import Sealer, SealError

_VERSION = "v1"
_NONCE_BYTES = 12  # the size GCM is specified for (NIST SP 800-38D)
_DATA_KEY_BITS = 256


class VaultError(SealError):
    """A credential's secret could not be opened: wrong key, wrong row, or tampered."""


def binding(tenant_id: str, credential_id: str) -> str:
    """The associated data both layers authenticate: this tenant, this credential."""
    return f"clarion:credential:{tenant_id}:{credential_id}"


class Vault:
    """Seals credential secrets under per-credential data keys wrapped by one sealer's key."""

    def __init__(self, kek: Sealer) -> None:
        self._kek = kek

    def seal(self, secret: str, *, tenant_id: str, credential_id: str) -> tuple[str, str]:
        """`secret` encrypted under a fresh data key, and that key wrapped: (sealed, wrapped)."""
        aad = binding(tenant_id, credential_id)
        data_key = AESGCM.generate_key(bit_length=_DATA_KEY_BITS)
        nonce = os.urandom(_NONCE_BYTES)
        sealed = AESGCM(data_key).encrypt(nonce, secret.encode(), aad.encode())
        wrapped = self._kek.seal(base64.b64encode(data_key).decode(), owner=aad)
        return f"{_VERSION}:{base64.b64encode(nonce + sealed).decode()}", wrapped

    def open(self, sealed: str, wrapped: str, *, tenant_id: str, credential_id: str) -> str:
        """The secret, which must have been sealed for this tenant and credential.

        Raises:
            VaultError: it was not, or the key-encryption key is not the one that wrapped it.
        """
        aad = binding(tenant_id, credential_id)
        try:
            data_key = base64.b64decode(self._kek.open(wrapped, owner=aad), validate=True)
        except (SealError, binascii.Error, ValueError) as exc:
            raise VaultError("the data key does not unwrap for this credential") from exc
        version, _, body = sealed.partition(":")
        if version != _VERSION:
            raise VaultError(f"unknown vault version {version!r}")
        try:
            raw = base64.b64decode(body, validate=True)
            plain = AESGCM(data_key).decrypt(raw[:_NONCE_BYTES], raw[_NONCE_BYTES:], aad.encode())
        except (binascii.Error, InvalidTag, ValueError) as exc:
            raise VaultError("the secret does not open for this credential") from exc
        return plain.decode()
