"""Bounces and complaints reported by mail providers: the addresses they name stop receiving
email (``email_status`` ``bounced`` or ``complained``), which routing already honours.

Two feeds, each addressed to one tenant's URL and trusted only once its signature verifies
(`wire.mail_events`): Amazon SNS messages from the topic named in the tenant's SES credential
(``sns_topic_arn``), and SendGrid's signed Event Webhook, checked with the key in the tenant's
SendGrid credential (``event_webhook_public_key``). Unsigned SendGrid posts are refused: anyone
who learns the URL could otherwise switch off a tenant's email to any address.

Nothing is written before the checks pass, and a replayed message only repeats an idempotent
update.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Final

from clarion.domain import errors
from clarion.services.ports import Clock, CredentialInfo, CredentialStore, SnsClient, Store
from clarion.wire import mail_events as wire

log = logging.getLogger(__name__)

EMAIL_PROVIDER: Final = "email"
CERTIFICATE_CACHE_SIZE: Final = 64
"""SNS signs with one certificate per region at a time and rotates it rarely; a few dozen URLs
cover every region a server's tenants use, and the bound keeps forged URLs from growing it."""


@dataclass(frozen=True, slots=True)
class Handled:
    """What a provider's post led to.

    Attributes:
        action: ``suppressed`` (a notification, perhaps naming no address of ours),
            ``confirmed`` (an SNS subscription), ``ignored`` (an unsubscribe confirmation).
        bounced, complained: users whose status changed.
    """

    action: str
    bounced: int = 0
    complained: int = 0


class Suppressing:
    """Takes bounce and complaint events and suppresses the addresses they name.

    Args:
        extra_url_prefixes: https URL prefixes, besides SNS's own hosts, that SigningCertURL and
            SubscribeURL may point at (an emulator's).
        sendgrid_max_age: how far a SendGrid signature's timestamp may be from now.
    """

    def __init__(
        self,
        store: Store,
        credentials: CredentialStore,
        sns: SnsClient,
        clock: Clock,
        *,
        extra_url_prefixes: Sequence[str] = (),
        sendgrid_max_age: timedelta = timedelta(minutes=10),
    ) -> None:
        self._store = store
        self._credentials = credentials
        self._sns = sns
        self._clock = clock
        self._prefixes = tuple(extra_url_prefixes)
        self._max_age = sendgrid_max_age
        self._certificates: OrderedDict[str, bytes] = OrderedDict()

    async def from_sns(self, tenant_id: str, type_header: str | None, body: bytes) -> Handled:
        """Handle an SNS HTTP(S) message posted for `tenant_id`.

        Raises:
            errors.MalformedJson, errors.InvalidRequest: not an SNS message.
            errors.UnknownEventSource: the tenant (if it exists) has no SES credential with an
                ``sns_topic_arn``.
            errors.UnknownTopic: the message's topic is not one of those.
            errors.InvalidSignature: a certificate URL off SNS's hosts, a certificate that
                cannot be had, or a signature that does not verify.
            errors.Unavailable: SNS could not be reached for the certificate or confirmation.
        """
        message = wire.parse_sns(body, type_header)
        topics = {
            str(info.metadata["sns_topic_arn"])
            for info in await self._email_credentials(tenant_id, "ses")
            if isinstance(info.metadata.get("sns_topic_arn"), str)
        }
        if not topics:
            raise errors.UnknownEventSource()
        if message.topic_arn not in topics:
            raise errors.UnknownTopic()
        certificate = await self._certificate(message.signing_cert_url)
        wire.verify_sns(message, certificate, self._clock.now())
        if message.type is wire.SnsType.SUBSCRIPTION_CONFIRMATION:
            url = message.subscribe_url or ""
            if not wire.sns_url_allowed(url, self._prefixes):
                raise errors.InvalidRequest("'SubscribeURL' is not on an SNS host")
            if not await self._sns.confirm(url):
                raise errors.Unavailable("SNS did not take the subscription confirmation")
            log.info(
                "SNS subscription confirmed", extra={"tenant": tenant_id, "action": "confirmed"}
            )
            return Handled("confirmed")
        if message.type is wire.SnsType.UNSUBSCRIBE_CONFIRMATION:
            return Handled("ignored")
        return await self._suppress(tenant_id, wire.parse_ses_event(message.message))

    async def from_sendgrid(
        self, tenant_id: str, *, signature: str | None, timestamp: str | None, body: bytes
    ) -> Handled:
        """Handle a SendGrid Event Webhook post for `tenant_id`.

        Raises:
            errors.UnknownEventSource: the tenant (if it exists) has no SendGrid credential.
            errors.SignatureRequired: none of its SendGrid credentials holds a verification key.
            errors.InvalidSignature: the post is unsigned, stale, or signed by no such key.
            errors.MalformedJson, errors.InvalidRequest: a signed body that is not a batch.
        """
        found = await self._email_credentials(tenant_id, "sendgrid")
        if not found:
            raise errors.UnknownEventSource()
        keys = []
        for info in found:
            text = info.metadata.get("event_webhook_public_key")
            if isinstance(text, str):
                try:
                    keys.append(wire.load_sendgrid_key(text))
                except errors.InvalidRequest:
                    log.warning(
                        "a SendGrid event webhook key does not load",
                        extra={"tenant": tenant_id, "credential": info.id},
                    )
        if not keys:
            raise errors.SignatureRequired()
        now = self._clock.now()
        last: errors.InvalidSignature | None = None
        for key in keys:
            try:
                wire.verify_sendgrid(
                    key,
                    signature=signature,
                    timestamp=timestamp,
                    body=body,
                    now=now,
                    max_age=self._max_age,
                )
                break
            except errors.InvalidSignature as exc:
                last = exc
        else:
            assert last is not None
            raise last
        return await self._suppress(tenant_id, wire.parse_sendgrid_events(body))

    async def _suppress(self, tenant_id: str, found: wire.Suppressions) -> Handled:
        now = self._clock.now()
        bounced = complained = 0
        if found.bounced:
            bounced = await self._store.mark_addresses(
                tenant_id, wire.address_forms(found.bounced), wire.Suppression.BOUNCED, now
            )
        if found.complained:
            complained = await self._store.mark_addresses(
                tenant_id, wire.address_forms(found.complained), wire.Suppression.COMPLAINED, now
            )
        if bounced or complained:
            log.info(
                "addresses suppressed",
                extra={
                    "tenant": tenant_id,
                    "action": "suppressed",
                    "bounced": bounced,
                    "complained": complained,
                },
            )
        return Handled("suppressed", bounced, complained)

    async def _email_credentials(self, tenant_id: str, kind: str) -> list[CredentialInfo]:
        return [
            info
            for info in await self._credentials.list_credentials(tenant_id)
            if info.provider == EMAIL_PROVIDER and info.metadata.get("kind") == kind
        ]

    async def _certificate(self, url: str) -> bytes:
        if not wire.certificate_url_allowed(url, self._prefixes):
            raise errors.InvalidSignature("'SigningCertURL' is not an SNS certificate URL")
        cached = self._certificates.get(url)
        if cached is not None:
            self._certificates.move_to_end(url)
            return cached
        pem = await self._sns.certificate(url)
        if pem is None or len(pem) > wire.MAX_CERTIFICATE_BYTES:
            raise errors.InvalidSignature("no signing certificate at 'SigningCertURL'")
        self._certificates[url] = pem
        while len(self._certificates) > CERTIFICATE_CACHE_SIZE:
            self._certificates.popitem(last=False)
        return pem
