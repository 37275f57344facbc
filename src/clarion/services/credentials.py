"""Provider credentials: tenants store the keys Clarion pushes with; provider clients load them.

Credentials are write-only: what goes in is checked (a key that parses, ids of the right shape,
a certificate that matches its key and is in date), sealed at rest by the store, and only ever
described afterwards. A provider client loads the one that serves a device's app, and pauses a
credential the provider refuses (APNs 403 on the key) until the tenant replaces it.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes

from clarion.domain import errors, identifiers
from clarion.domain.notifications import JsonObject
from clarion.services.ports import Clock, Credential, CredentialInfo, CredentialStore
from clarion.wire import fcm, webpush

log = logging.getLogger(__name__)

APNS = "apns"
FCM = "fcm"
WEBPUSH = "webpush"
WNS = "wns"
PROVIDERS = (APNS, "fcm", "wns", "webpush", "email")

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
"""Credential names: short, URL-safe, and fit the column (64)."""

APPLE_ID_PATTERN = r"^[A-Z0-9]{10}$"
"""APNs key ids (the JWT `kid`) and team ids (`iss`) are 10 characters (protocols.md §1)."""

TOPIC_PATTERN = r"^[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)+$"
"""A bundle id (reverse DNS: letters, digits, '-' and '.'), optionally with a push-type
suffix such as `.voip`; this is what `apns-topic` carries."""

ENVIRONMENTS = ("sandbox", "production")

PACKAGE_SID_PATTERN = r"^ms-app://[Ss]-1-15-2(-[0-9]{1,10}){4,12}$"
"""A Windows app's Package SID, the WNS ``client_id`` (protocols.md §3)."""
MAX_CLIENT_SECRET_LENGTH = 500
MAX_TOPIC_LENGTH = 255

GOOGLE_TOKEN_HOSTS = ("accounts.google.com", ".googleapis.com")
"""Where a stored service account may send its signed assertion: Google's token endpoints
(``oauth2.googleapis.com``, and private ones under ``googleapis.com``). Any other host would have
Clarion post an hour-long grant, and read the answer, wherever a tenant points it; an emulator is
reached through the operator's ``fcm.token_url`` setting instead."""


@dataclass(frozen=True, slots=True)
class SavedCredential:
    """A credential as saved, and whether it was new."""

    credential: CredentialInfo
    created: bool


class Credentials:
    """Stores, describes, loads and pauses the tenants' provider credentials."""

    def __init__(self, store: CredentialStore, clock: Clock) -> None:
        self._store = store
        self._clock = clock

    async def put_apns(
        self,
        tenant_id: str,
        name: str,
        *,
        auth: str,
        topic: str,
        environment: str,
        private_key: str,
        key_id: str | None = None,
        team_id: str | None = None,
        certificate: str | None = None,
        app_id: str | None = None,
    ) -> SavedCredential:
        """Create or replace the tenant's APNs credential `name`: token auth (a .p8 key with
        its key and team ids) or certificate auth (a certificate and its private key).

        Raises:
            errors.InvalidRequest: a bad name, id, topic or environment; a key that is not an
                EC P-256 private key (token auth); a certificate that does not parse, does not
                match the key, or is not in date (certificate auth).
        """
        _check(
            re.fullmatch(NAME_PATTERN, name),
            "path.name",
            "a name is 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit",
        )
        _check(environment in ENVIRONMENTS, "body.environment", "must be sandbox or production")
        _check(
            len(topic) <= MAX_TOPIC_LENGTH and re.fullmatch(TOPIC_PATTERN, topic),
            "body.topic",
            "must be a bundle id such as com.example.app",
        )
        if app_id is not None:
            _check(identifiers.is_valid_key(app_id), "body.app_id", "not a valid app id")
        key = _private_key(private_key)
        metadata: JsonObject
        if auth == "token":
            for field, value, what in (
                ("key_id", key_id, "key id"),
                ("team_id", team_id, "team id"),
            ):
                _check(
                    value is not None and re.fullmatch(APPLE_ID_PATTERN, value),
                    f"body.{field}",
                    f"an APNs {what} is 10 upper-case letters or digits",
                )
            _check(
                isinstance(key, ec.EllipticCurvePrivateKey) and isinstance(key.curve, ec.SECP256R1),
                "body.private_key",
                "token auth needs an EC P-256 private key (the .p8 file from Apple)",
            )
            metadata = {"auth": "token", "key_id": key_id, "team_id": team_id, "topic": topic}
            secret = private_key.strip() + "\n"
        elif auth == "certificate":
            cert = _certificate(certificate, key, now=self._clock.now())
            metadata = {
                "auth": "certificate",
                "topic": topic,
                "certificate_subject": cert.subject.rfc4514_string(),
                "certificate_expires_at": cert.not_valid_after_utc.isoformat(),
            }
            secret = (certificate or "").strip() + "\n" + private_key.strip() + "\n"
        else:
            raise _invalid("body.auth", "must be token or certificate")
        info, created = await self._store.put_credential(
            tenant_id,
            APNS,
            name,
            app_id=app_id,
            environment=environment,
            metadata=metadata,
            secret=secret,
            now=self._clock.now(),
        )
        return SavedCredential(credential=info, created=created)

    async def put_webpush(
        self,
        tenant_id: str,
        name: str,
        *,
        subject: str,
        private_key: str | None = None,
        app_id: str | None = None,
    ) -> SavedCredential:
        """Create or replace the tenant's Web Push (VAPID) credential `name`: a P-256 key pair
        (the given private key, PEM or raw base64url, or a new one when None) and the ``sub``
        contact [RFC8292]. The metadata shows the public key, base64url: the site's
        ``applicationServerKey``.

        Raises:
            errors.InvalidRequest: a bad name or app id, a subject that is not a ``mailto:`` or
                ``https:`` URI, a key that is not a P-256 private key.
        """
        _check_name(name)
        if app_id is not None:
            _check(identifiers.is_valid_key(app_id), "body.app_id", "not a valid app id")
        try:
            webpush.check_subject(subject)
        except errors.InvalidRequest:
            raise _invalid(
                "body.subject", "must be a mailto: address or an https: URL (RFC 8292)"
            ) from None
        if private_key is None:
            key = ec.generate_private_key(ec.SECP256R1())
        else:
            try:
                key = webpush.load_vapid_key(private_key)
            except errors.InvalidRequest:
                raise _invalid(
                    "body.private_key", "a VAPID key is an EC P-256 private key (PEM or base64url)"
                ) from None
        secret = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode()
        metadata: JsonObject = {
            "subject": subject,
            "public_key": webpush.vapid_public_key(key),
            "generated": private_key is None,
        }
        info, created = await self._store.put_credential(
            tenant_id,
            WEBPUSH,
            name,
            app_id=app_id,
            environment=None,
            metadata=metadata,
            secret=secret,
            now=self._clock.now(),
        )
        return SavedCredential(credential=info, created=created)

    async def put_wns(
        self,
        tenant_id: str,
        name: str,
        *,
        package_sid: str,
        client_secret: str,
        app_id: str | None = None,
    ) -> SavedCredential:
        """Create or replace the tenant's WNS credential `name`: the app's Package SID and
        client secret, exchanged for access tokens (OAuth client credentials) [W-HDR].

        Raises:
            errors.InvalidRequest: a bad name, app id, Package SID or secret.
        """
        _check_name(name)
        if app_id is not None:
            _check(identifiers.is_valid_key(app_id), "body.app_id", "not a valid app id")
        _check(
            re.fullmatch(PACKAGE_SID_PATTERN, package_sid),
            "body.package_sid",
            "a Package SID reads ms-app://S-1-15-2-… (from the Partner Center)",
        )
        _check(
            0 < len(client_secret) <= MAX_CLIENT_SECRET_LENGTH
            and client_secret.isprintable()
            and client_secret.strip() == client_secret,
            "body.client_secret",
            f"a client secret is 1-{MAX_CLIENT_SECRET_LENGTH} printable characters",
        )
        info, created = await self._store.put_credential(
            tenant_id,
            WNS,
            name,
            app_id=app_id,
            environment=None,
            metadata={"package_sid": package_sid},
            secret=client_secret,
            now=self._clock.now(),
        )
        return SavedCredential(credential=info, created=created)

    async def put_fcm(
        self,
        tenant_id: str,
        name: str,
        *,
        service_account: str | Mapping[str, Any],
        app_id: str | None = None,
    ) -> SavedCredential:
        """Create or replace the tenant's FCM credential `name`: a Google service-account key
        file (protocols.md §2). Its private key is sealed; `project_id`, `client_email`,
        `token_uri` and `private_key_id` are kept as metadata.

        Raises:
            errors.InvalidRequest: a bad name or app id; a file `wire.fcm` refuses (not a
                service account, a missing field, a key that is not an RSA private key); a
                `token_uri` off Google's hosts.
        """
        _check_name(name)
        if app_id is not None:
            _check(identifiers.is_valid_key(app_id), "body.app_id", "not a valid app id")
        try:
            account = fcm.parse_service_account(service_account)
        except errors.InvalidRequest as exc:
            raise _invalid("body.service_account", exc.message) from None
        host = (urlsplit(account.token_uri).hostname or "").lower()
        _check(
            host == GOOGLE_TOKEN_HOSTS[0] or host.endswith(GOOGLE_TOKEN_HOSTS[1]),
            "body.service_account",
            "token_uri must be Google's token endpoint (https://oauth2.googleapis.com/token)",
        )
        metadata: JsonObject = {
            "project_id": account.project_id,
            "client_email": account.client_email,
            "token_uri": account.token_uri,
            "private_key_id": account.private_key_id,
        }
        info, created = await self._store.put_credential(
            tenant_id,
            FCM,
            name,
            app_id=app_id,
            environment=None,
            metadata=metadata,
            secret=account.private_key.strip() + "\n",
            now=self._clock.now(),
        )
        return SavedCredential(credential=info, created=created)

    async def list_credentials(self, tenant_id: str) -> list[CredentialInfo]:
        """The tenant's credentials, described, never their secrets."""
        return await self._store.list_credentials(tenant_id)

    async def get(self, tenant_id: str, provider: str, name: str) -> CredentialInfo:
        """One of the tenant's credentials, described.

        Raises:
            errors.NotFound: the tenant has no such credential.
        """
        info = await self._store.get_credential(tenant_id, provider, name)
        if info is None:
            raise errors.NotFound("no such credential")
        return info

    async def delete(self, tenant_id: str, provider: str, name: str) -> None:
        """Forget a credential and its secret.

        Raises:
            errors.NotFound: the tenant has no such credential.
        """
        if not await self._store.delete_credential(tenant_id, provider, name):
            raise errors.NotFound("no such credential")

    async def load(self, tenant_id: str, provider: str, app_id: str | None) -> Credential | None:
        """The opened credential a provider client uses for devices of `app_id`: the active
        one naming that app, else the tenant's active default; None when there is neither."""
        return await self._store.load_credential(tenant_id, provider, app_id)

    async def pause(self, tenant_id: str, credential_id: str, reason: str) -> bool:
        """Stop using a credential the provider refused (an APNs 403 on the key) until the
        tenant replaces it; False when it is gone."""
        paused = await self._store.pause_credential(
            tenant_id, credential_id, reason=reason, now=self._clock.now()
        )
        if paused:
            log.warning(
                "provider credential paused",
                extra={
                    "action": "credential_paused",
                    "tenant": tenant_id,
                    "credential": credential_id,
                    "reason": reason,
                },
            )
        return paused


def _invalid(field: str, problem: str) -> errors.InvalidRequest:
    return errors.InvalidRequest(
        f"{field.removeprefix('body.').removeprefix('path.')}: {problem}",
        fields=[{"field": field, "problem": problem}],
    )


def _check_name(name: str) -> None:
    _check(
        re.fullmatch(NAME_PATTERN, name),
        "path.name",
        "a name is 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit",
    )


def _check(condition: object, field: str, problem: str) -> None:
    if not condition:
        raise _invalid(field, problem)


def _private_key(pem: str) -> PrivateKeyTypes:
    try:
        return serialization.load_pem_private_key(pem.encode(), password=None)
    except TypeError:
        raise _invalid("body.private_key", "the key is encrypted; give it unencrypted") from None
    except (ValueError, UnsupportedAlgorithm):  # UnicodeError is a ValueError
        raise _invalid("body.private_key", "not a PEM private key") from None


def _certificate(pem: str | None, key: PrivateKeyTypes, *, now: datetime) -> x509.Certificate:
    if pem is None:
        raise _invalid("body.certificate", "certificate auth needs the certificate")
    try:
        cert = x509.load_pem_x509_certificate(pem.encode())
        public = cert.public_key()
    except (ValueError, UnsupportedAlgorithm):
        raise _invalid("body.certificate", "not a PEM X.509 certificate") from None
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    der = serialization.Encoding.DER
    if public.public_bytes(der, spki) != key.public_key().public_bytes(der, spki):
        raise _invalid("body.private_key", "the private key does not match the certificate")
    if cert.not_valid_after_utc <= now:
        raise _invalid(
            "body.certificate", f"the certificate expired at {cert.not_valid_after_utc.isoformat()}"
        )
    if cert.not_valid_before_utc > now:
        raise _invalid(
            "body.certificate",
            f"the certificate is not valid before {cert.not_valid_before_utc.isoformat()}",
        )
    return cert
