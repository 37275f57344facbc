"""Provider credentials: tenants store the keys Clarion pushes with; provider clients load them.

Credentials are write-only: what goes in is checked (a key that parses, ids of the right shape,
a certificate that matches its key and is in date), sealed at rest by the store, and only ever
described afterwards. A provider client loads the one that serves a device's app, and pauses a
credential the provider refuses (APNs 403 on the key) until the tenant replaces it.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
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
from clarion.wire import email as wire_email, fcm, webpush

log = logging.getLogger(__name__)

APNS = "apns"
FCM = "fcm"
WEBPUSH = "webpush"
WNS = "wns"
EMAIL = "email"
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

EMAIL_KINDS = ("smtp", "ses", "sendgrid")
SMTP_SECURITY = ("starttls", "tls", "none")
"""``starttls``: STARTTLS is required (RFC 3207), never an opportunistic upgrade that an attacker
can strip; ``tls``: implicit TLS from the first byte (RFC 8314, port 465); ``none``: plain text,
only when the tenant says so, and then without AUTH (the password would travel in clear)."""
MAX_SMTP_USERNAME_LENGTH = 255
MAX_SMTP_PASSWORD_LENGTH = 500
SMTP_HOST_LABEL_PATTERN = r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$"
AWS_ACCESS_KEY_ID_PATTERN = r"^[A-Z0-9]{16,128}$"
"""AWS access key ids: upper-case letters and digits (``AKIA…`` long-term, ``ASIA…`` STS)."""
AWS_SECRET_PATTERN = r"^[A-Za-z0-9/+=]{16,128}$"  # noqa: S105 (a pattern)
AWS_REGION_PATTERN = r"^[a-z]{2}(-[a-z0-9]+)+-[0-9]+$"
SES_CONFIGURATION_SET_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"
SNS_TOPIC_ARN_PATTERN = (
    r"^arn:aws[a-z-]*:sns:([a-z]{2}(-[a-z0-9]+)+-[0-9]+):[0-9]{12}:[A-Za-z0-9_-]{1,256}(\.fifo)?$"
)
SENDGRID_KEY_PATTERN = r"^SG\.[A-Za-z0-9_-]{1,100}\.[A-Za-z0-9_-]{1,100}$"
"""SendGrid API keys read ``SG.<id>.<secret>`` (base64url parts)."""
SENDGRID_REGIONS = ("global", "eu")
"""``eu``: a subuser with EU data residency, sent through ``api.eu.sendgrid.com``."""


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

    async def put_email(
        self,
        tenant_id: str,
        name: str,
        *,
        kind: str,
        host: str | None = None,
        port: int | None = None,
        security: str | None = None,
        username: str | None = None,
        password: str | None = None,
        region: str | None = None,
        access_key_id: str | None = None,
        secret_access_key: str | None = None,
        configuration_set: str | None = None,
        sns_topic_arn: str | None = None,
        api_key: str | None = None,
        event_webhook_public_key: str | None = None,
    ) -> SavedCredential:
        """Create or replace the tenant's email credential `name` (protocols.md §5):

        - ``smtp``: a relay's `host`, `port` and `security` (`SMTP_SECURITY`), and optionally
          a `username` and `password` for AUTH (RFC 4954), both or neither, never with
          ``none``. The password is sealed; the rest is metadata.
        - ``ses``: an AWS `region`, `access_key_id` and `secret_access_key` (sealed) for SES
          v2 ``SendEmail``; optionally a `configuration_set` (where SES publishes bounce and
          complaint events) and the `sns_topic_arn` those events arrive from (the SES bounce
          webhook accepts notifications from this topic only).
        - ``sendgrid``: an `api_key` (sealed), optionally the `region` (`SENDGRID_REGIONS`)
          and the Event Webhook's `event_webhook_public_key` (EC P-256, PEM or base64 DER),
          kept as PEM for the event webhook's ECDSA check.

        Raises:
            errors.InvalidRequest: naming the first field that cannot work.
        """
        _check_name(name)
        _check(kind in EMAIL_KINDS, "body.kind", "must be smtp, ses or sendgrid")
        given = {
            "host": host,
            "port": port,
            "security": security,
            "username": username,
            "password": password,
            "region": region,
            "access_key_id": access_key_id,
            "secret_access_key": secret_access_key,
            "configuration_set": configuration_set,
            "sns_topic_arn": sns_topic_arn,
            "api_key": api_key,
            "event_webhook_public_key": event_webhook_public_key,
        }
        allowed = {
            "smtp": {"host", "port", "security", "username", "password"},
            "ses": {
                "region",
                "access_key_id",
                "secret_access_key",
                "configuration_set",
                "sns_topic_arn",
            },
            "sendgrid": {"api_key", "region", "event_webhook_public_key"},
        }[kind]
        for field, value in given.items():
            _check(value is None or field in allowed, f"body.{field}", f"not a {kind} field")
        metadata: JsonObject
        if kind == "smtp":
            metadata, secret = _smtp(host, port, security, username, password)
        elif kind == "ses":
            metadata, secret = _ses(
                region, access_key_id, secret_access_key, configuration_set, sns_topic_arn
            )
        else:
            metadata, secret = _sendgrid(api_key, region, event_webhook_public_key)
        info, created = await self._store.put_credential(
            tenant_id,
            EMAIL,
            name,
            app_id=None,
            environment=None,
            metadata=metadata,
            secret=secret,
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

    async def load_named(self, tenant_id: str, provider: str, name: str) -> Credential | None:
        """The tenant's credential `name` for `provider`, opened (paused or not), or None."""
        return await self._store.load_named_credential(tenant_id, provider, name)

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


def _smtp(
    host: str | None,
    port: int | None,
    security: str | None,
    username: str | None,
    password: str | None,
) -> tuple[JsonObject, str]:
    _check(host is not None, "body.host", "an SMTP credential needs the relay's host")
    assert host is not None
    _check(_is_host(host), "body.host", "must be a host name (xn-- for IDNs) or an IP address")
    _check(
        isinstance(port, int) and not isinstance(port, bool) and 0 < port < 65536,
        "body.port",
        "must be a TCP port, 1-65535 (587 for STARTTLS, 465 for implicit TLS)",
    )
    _check(security in SMTP_SECURITY, "body.security", "must be starttls, tls or none")
    _check(
        (username is None) == (password is None),
        "body.password" if username is not None else "body.username",
        "username and password go together (AUTH), or neither is given",
    )
    if username is not None and password is not None:
        _check(
            security != "none",
            "body.security",
            "AUTH needs starttls or tls: Clarion never sends a password in clear",
        )
        _check(
            0 < len(username) <= MAX_SMTP_USERNAME_LENGTH
            and username.isprintable()
            and username.strip() == username,
            "body.username",
            f"a username is 1-{MAX_SMTP_USERNAME_LENGTH} printable characters",
        )
        _check(
            0 < len(password) <= MAX_SMTP_PASSWORD_LENGTH and password.isprintable(),
            "body.password",
            f"a password is 1-{MAX_SMTP_PASSWORD_LENGTH} printable characters",
        )
    metadata: JsonObject = {
        "kind": "smtp",
        "host": host.lower().rstrip("."),
        "port": port,
        "security": security,
        "username": username,
    }
    return metadata, password or ""


def _ses(
    region: str | None,
    access_key_id: str | None,
    secret_access_key: str | None,
    configuration_set: str | None,
    sns_topic_arn: str | None,
) -> tuple[JsonObject, str]:
    _check(
        region is not None and re.fullmatch(AWS_REGION_PATTERN, region),
        "body.region",
        "must be an AWS region such as eu-west-1",
    )
    assert region is not None
    wire_email.ses_endpoint(region)  # the same rule the sender applies
    _check(
        access_key_id is not None and re.fullmatch(AWS_ACCESS_KEY_ID_PATTERN, access_key_id),
        "body.access_key_id",
        "an access key id is 16-128 upper-case letters or digits (AKIA…)",
    )
    _check(
        secret_access_key is not None and re.fullmatch(AWS_SECRET_PATTERN, secret_access_key),
        "body.secret_access_key",
        "a secret access key is 16-128 letters, digits, '/', '+' or '='",
    )
    if configuration_set is not None:
        _check(
            re.fullmatch(SES_CONFIGURATION_SET_PATTERN, configuration_set),
            "body.configuration_set",
            "a configuration set name is 1-64 letters, digits, '_' or '-'",
        )
    if sns_topic_arn is not None:
        found = re.fullmatch(SNS_TOPIC_ARN_PATTERN, sns_topic_arn)
        _check(
            found,
            "body.sns_topic_arn",
            "must be an SNS topic ARN such as arn:aws:sns:eu-west-1:123456789012:ses-events",
        )
        assert found is not None
        _check(
            found.group(1) == region,
            "body.sns_topic_arn",
            f"the topic must be in the credential's region ({region}), as SES requires",
        )
    metadata: JsonObject = {
        "kind": "ses",
        "region": region,
        "access_key_id": access_key_id,
        "configuration_set": configuration_set,
        "sns_topic_arn": sns_topic_arn,
    }
    return metadata, secret_access_key or ""


def _sendgrid(
    api_key: str | None, region: str | None, public_key: str | None
) -> tuple[JsonObject, str]:
    _check(
        api_key is not None and len(api_key) <= 200 and re.fullmatch(SENDGRID_KEY_PATTERN, api_key),
        "body.api_key",
        "a SendGrid API key reads SG.<id>.<secret>",
    )
    region = region or SENDGRID_REGIONS[0]
    _check(region in SENDGRID_REGIONS, "body.region", "must be global or eu")
    pem = None if public_key is None else _event_webhook_key(public_key)
    metadata: JsonObject = {
        "kind": "sendgrid",
        "region": region,
        "event_webhook_public_key": pem,
    }
    return metadata, api_key or ""


def _event_webhook_key(text: str) -> str:
    """The SendGrid Event Webhook's verification key as PEM (SubjectPublicKeyInfo): the
    dashboard shows it as base64 DER without the PEM armour; both are taken."""
    problem = "must be an EC P-256 public key, PEM or base64 DER (the Event Webhook's key)"
    stripped = text.strip()
    try:
        if stripped.startswith("-----BEGIN"):
            key = serialization.load_pem_public_key(stripped.encode())
        else:
            der = base64.b64decode("".join(stripped.split()), validate=True)
            key = serialization.load_der_public_key(der)
    except (ValueError, UnsupportedAlgorithm, binascii.Error):
        raise _invalid("body.event_webhook_public_key", problem) from None
    _check(
        isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1),
        "body.event_webhook_public_key",
        problem,
    )
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()


def _is_host(host: str) -> bool:
    if not host or len(host) > 253 or not host.isascii():
        return False
    try:
        ipaddress.ip_address(host)
    except ValueError:
        pass
    else:
        return True
    labels = host.rstrip(".").split(".")
    if re.fullmatch(r"[0-9]+", labels[-1]):
        return False  # a numeric last label is an address in a form we do not take
    return all(re.fullmatch(SMTP_HOST_LABEL_PATTERN, label) for label in labels)
