"""Web Push: a thin shell over `clarion.wire.webpush` on pooled HTTP/1.1 (`http1`).

Per delivery: the subscription (endpoint, ``p256dh``, ``auth``) comes from the device row; the
item becomes a JSON payload, encrypted for that subscription (RFC 8291, a fresh ephemeral key
and salt each time); the VAPID token (RFC 8292) for the endpoint's origin is signed once per
(credential, origin) and reused until an hour before it expires. Before any connection the
endpoint's host is resolved and every address checked (`http1.GuardedBackend`): endpoints come
from browsers, so one naming a private or loopback address is refused (`Rejected`, nothing
sent) unless the operator allows that network.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import ssl
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec

from clarion.adapters.providers import http1
from clarion.domain import errors
from clarion.domain.channels import Channel
from clarion.domain.outcomes import AuthFailed, Delivered, Outcome, Rejected, RetryLater
from clarion.domain.records import Claimed, Credential, CredentialInfo
from clarion.wire import webhooks, webpush

log = logging.getLogger(__name__)

PROVIDER = "webpush"
ACTIVE = "active"
PAUSED_RETRY_SECONDS = 300.0
"""How long a paused credential's deliveries wait between looks (as for APNs): only the
tenant's fix (a new VAPID key) un-pauses it."""
VAPID_RENEW_BEFORE = timedelta(hours=1)
"""A cached VAPID token is replaced this long before its ``exp``: one queued behind a slow
batch never reaches the push service expired."""
MAX_REFERENCE_CHARS = 255
"""The registry's reference column."""

CredentialLoader = Callable[[str, str, str | None], Awaitable[Credential | None]]
"""Loads the opened credential for (tenant, provider, app id); `services.credentials` fits."""


def _utcnow() -> datetime:
    return datetime.now(UTC)


def payload_for(claimed: Claimed) -> bytes:
    """What the service worker's ``push`` event reads (``event.data.json()``): the
    notification's id, type, title, body, data, category and group; absent fields left out."""
    item = claimed.item
    document: dict[str, Any] = {"id": item.notification_id, "type": item.type}
    for name, value in (
        ("title", item.title),
        ("body", item.body),
        ("category", item.category),
        ("group", item.group),
    ):
        if value is not None:
            document[name] = value
    if item.data:
        document["data"] = item.data
    extras = claimed.push
    if extras is not None:
        for name, extra in (
            ("badge", extras.badge),
            ("sound", extras.sound),
            ("collapse_id", extras.collapse_id),
            ("thread_id", extras.thread_id),
            ("link", extras.link),
        ):
            if extra is not None:
                document[name] = extra
    return json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode()


def paused(info: CredentialInfo) -> RetryLater:
    """The outcome of every push on a paused credential: wait, sending nothing."""
    why = info.paused_reason or "no reason recorded"
    return RetryLater(f"the Web Push credential is paused: {why}", PAUSED_RETRY_SECONDS)


@dataclasses.dataclass(frozen=True, slots=True)
class _Signer:
    key: ec.EllipticCurvePrivateKey
    subject: str


class WebPushTransport:
    """The `Transport` for `Channel.WEBPUSH`."""

    channel = Channel.WEBPUSH

    def __init__(
        self,
        load_credential: CredentialLoader,
        *,
        ssl_context: ssl.SSLContext | None = None,
        allowed_networks: Sequence[webhooks.IPNetwork] = (),
        connect_timeout: float = 10.0,
        request_timeout: float = 30.0,
        connections_per_origin: int = 64,
        max_connections: int = 512,
        ttl: int = webpush.DEFAULT_TTL_SECONDS,
        urgency: webpush.Urgency = webpush.Urgency.NORMAL,
        now: Callable[[], datetime] = _utcnow,
    ) -> None:
        self._load = load_credential
        self._allowed = tuple(allowed_networks)
        self._ttl = ttl
        self._urgency = webpush.Urgency(urgency)
        self._now = now
        self._http = http1.Http1Pool(
            ssl_context=ssl_context,
            connect_timeout=connect_timeout,
            request_timeout=request_timeout,
            connections_per_origin=connections_per_origin,
            max_connections=max_connections,
            allowed_networks=self._allowed,
        )
        self._signers: dict[tuple[str, datetime], _Signer] = {}
        self._tokens: dict[tuple[str, datetime, str], tuple[str, datetime]] = {}

    async def send(self, batch: Sequence[Claimed]) -> list[Outcome]:
        """One outcome per delivery, in order; never raises for what push services or the
        network do."""
        results: list[Outcome] = [RetryLater("not sent")] * len(batch)
        groups: dict[tuple[str, str | None], list[int]] = {}
        for index, claimed in enumerate(batch):
            groups.setdefault((claimed.tenant_id, claimed.app_id), []).append(index)

        async def send_group(tenant_id: str, app_id: str | None, indexes: list[int]) -> None:
            try:
                credential = await self._load(tenant_id, PROVIDER, app_id)
            except Exception:
                log.exception(
                    "Web Push credential could not be opened", extra={"tenant": tenant_id}
                )
                for i in indexes:
                    results[i] = RetryLater("the Web Push credential could not be opened")
                return
            if credential is None:
                for i in indexes:
                    results[i] = Rejected("no Web Push (VAPID) credential for this app")
                return
            if credential.info.status != ACTIVE:
                held = paused(credential.info)
                for i in indexes:
                    results[i] = held
                return
            try:
                signer = self._signer(credential)
            except errors.InvalidRequest as exc:
                for i in indexes:
                    results[i] = AuthFailed(
                        f"the VAPID credential is unusable: {exc.message}", credential.info.id
                    )
                return
            sent = await asyncio.gather(
                *(self._send_one(credential.info, signer, batch[i]) for i in indexes)
            )
            for i, outcome in zip(indexes, sent, strict=True):
                results[i] = outcome

        await asyncio.gather(*(send_group(t, a, ix) for (t, a), ix in groups.items()))
        return results

    def _signer(self, credential: Credential) -> _Signer:
        info = credential.info
        key = (info.id, info.updated_at)
        signer = self._signers.get(key)
        if signer is None:
            subject = info.metadata.get("subject")
            if not isinstance(subject, str):
                raise errors.InvalidRequest("no VAPID subject")
            webpush.check_subject(subject)
            signer = _Signer(webpush.load_vapid_key(credential.secret), subject)
            for stale in [k for k in self._signers if k[0] == info.id]:
                del self._signers[stale]
            for stale_token in [k for k in self._tokens if k[0] == info.id and k[1] != key[1]]:
                del self._tokens[stale_token]
            self._signers[key] = signer
        return signer

    def authorization(self, info: CredentialInfo, signer: _Signer, endpoint: str) -> str:
        """The ``Authorization: vapid`` value for `endpoint`'s origin, cached per credential
        and origin until `VAPID_RENEW_BEFORE` its expiry."""
        origin = webpush.endpoint_origin(endpoint)
        key = (info.id, info.updated_at, origin)
        now = self._now()
        cached = self._tokens.get(key)
        if cached is not None and now < cached[1]:
            return cached[0]
        token = webpush.sign_vapid(signer.key, endpoint, subject=signer.subject, now=now)
        value = webpush.vapid_authorization(token, signer.key)
        renew_at = now + webpush.VAPID_DEFAULT_LIFETIME - VAPID_RENEW_BEFORE
        self._tokens[key] = (value, renew_at)
        return value

    def _ttl_for(self, claimed: Claimed) -> int:
        """The ``TTL`` header: the configured one, or less when the notification expires
        sooner (the push service drops it for an offline browser then) [RFC8030 §5.2]."""
        expires_at = claimed.item.expires_at
        if expires_at is None:
            return self._ttl
        left = int((expires_at - self._now()).total_seconds())
        return max(0, min(self._ttl, left))

    async def _send_one(self, info: CredentialInfo, signer: _Signer, claimed: Claimed) -> Outcome:
        keys = claimed.keys
        p256dh, auth = keys.get("p256dh"), keys.get("auth")
        if not claimed.address or not isinstance(p256dh, str) or not isinstance(auth, str):
            return Rejected("the device is not a Web Push subscription (endpoint, p256dh, auth)")
        try:
            subscription = webpush.Subscription.parse(claimed.address, p256dh, auth)
            request = webpush.build_request(
                webpush.Message(
                    subscription=subscription,
                    payload=payload_for(claimed),
                    ttl=self._ttl_for(claimed),
                    urgency=self._urgency,
                ),
                authorization=self.authorization(info, signer, subscription.endpoint),
            )
        except errors.InvalidRequest as exc:
            return Rejected(exc.message)
        try:
            answer = await self._http.post(request.url, request.headers, request.body)
        except http1.Refused as exc:
            return Rejected(f"refused endpoint: {exc}")
        except http1.PostFailed as exc:
            return RetryLater(f"Web Push: {exc.reason}")
        outcome = webpush.classify_response(
            answer.status, answer.headers, answer.body, now=self._now()
        )
        if isinstance(outcome, AuthFailed):
            return dataclasses.replace(outcome, credential_id=info.id)
        if isinstance(outcome, Delivered) and outcome.reference is not None:
            return Delivered(reference=outcome.reference[-MAX_REFERENCE_CHARS:])
        return outcome

    async def close(self) -> None:
        """Close every pooled connection."""
        await self._http.aclose()
