"""WNS: a thin shell over `clarion.wire.wns` on pooled HTTP/1.1 (`http1`).

An access token (OAuth client credentials: the Package SID and secret from the vault) is
fetched per credential, cached until `wire.wns.AccessToken.refresh_at`, and fetched once for
everyone waiting (single flight). A 401 on a notification drops that token (if nobody has
replaced it yet), fetches a new one and sends the notification once more; a second 401 is
`AuthFailed`, which pauses the credential. Channel URIs are POSTed to only when their host is
under ``notify.windows.com`` (or one the operator names for an emulator).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import ssl
from collections.abc import Awaitable, Callable, Collection, Sequence
from datetime import UTC, datetime

from clarion.adapters.providers import http1
from clarion.domain import errors
from clarion.domain.channels import Channel
from clarion.domain.outcomes import AuthFailed, Delivered, Outcome, Rejected, RetryLater
from clarion.domain.records import Claimed, Credential, CredentialInfo
from clarion.wire import wns

log = logging.getLogger(__name__)

PROVIDER = "wns"
ACTIVE = "active"
PAUSED_RETRY_SECONDS = 300.0
"""How long a paused credential's deliveries wait between looks (as for APNs)."""
MAX_REFERENCE_CHARS = 255

CredentialLoader = Callable[[str, str, str | None], Awaitable[Credential | None]]
"""Loads the opened credential for (tenant, provider, app id); `services.credentials` fits."""

TokenResult = wns.AccessToken | AuthFailed | RetryLater


def _utcnow() -> datetime:
    return datetime.now(UTC)


def notification_for(claimed: Claimed, channel_uri: str) -> wns.Notification:
    """A toast (title, body; the app receives ``{"id", "data"}`` as launch arguments) when the
    item has a title or body, else a raw notification carrying the item as JSON."""
    item = claimed.item
    if item.title is not None or item.body is not None:
        launch = json.dumps(
            {"id": item.notification_id, "data": item.data},
            separators=(",", ":"),
            ensure_ascii=False,
        )
        payload = wns.toast_xml(item.title or "", item.body, launch=launch)
        return wns.Notification(channel_uri, wns.NotificationType.TOAST, payload)
    document = {"id": item.notification_id, "type": item.type, "data": item.data}
    raw = json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode()
    return wns.Notification(channel_uri, wns.NotificationType.RAW, raw)


def paused(info: CredentialInfo) -> RetryLater:
    """The outcome of every notification on a paused credential: wait, sending nothing."""
    why = info.paused_reason or "no reason recorded"
    return RetryLater(f"the WNS credential is paused: {why}", PAUSED_RETRY_SECONDS)


class AccessTokens:
    """WNS access tokens per credential version, fetched once for all who wait."""

    def __init__(
        self,
        http: http1.Http1Pool,
        token_url: str,
        now: Callable[[], datetime],
    ) -> None:
        self._http = http
        self._url = token_url
        self._now = now
        self._tokens: dict[tuple[str, datetime], wns.AccessToken] = {}
        self._flights: dict[tuple[str, datetime], asyncio.Future[TokenResult]] = {}
        self.fetches = 0

    async def get(self, credential: Credential) -> TokenResult:
        """The current token, fetched when there is none or it is due for refresh."""
        info = credential.info
        key = (info.id, info.updated_at)
        token = self._tokens.get(key)
        if token is not None and not token.needs_refresh(self._now()):
            return token
        flight = self._flights.get(key)
        if flight is None:
            flight = asyncio.get_running_loop().create_future()
            self._flights[key] = flight
            try:
                result = await self._fetch(credential)
            except BaseException:
                flight.cancel()  # _fetch returns values; only cancellation gets here
                raise
            finally:
                self._flights.pop(key, None)
            if isinstance(result, wns.AccessToken):
                for stale in [k for k in self._tokens if k[0] == info.id]:
                    del self._tokens[stale]
                self._tokens[key] = result
            flight.set_result(result)
            return result
        return await asyncio.shield(flight)

    def refused(self, credential: Credential, value: str) -> None:
        """WNS answered 401 to `value`: forget it, unless another request replaced it already."""
        key = (credential.info.id, credential.info.updated_at)
        token = self._tokens.get(key)
        if token is not None and token.value == value:
            del self._tokens[key]

    async def _fetch(self, credential: Credential) -> TokenResult:
        self.fetches += 1
        package_sid = credential.info.metadata.get("package_sid")
        try:
            body = wns.token_request_body(str(package_sid or ""), credential.secret)
        except errors.InvalidRequest as exc:
            return AuthFailed(f"the WNS credential is unusable: {exc.message}", credential.info.id)
        try:
            answer = await self._http.post(
                self._url, [("Content-Type", wns.TOKEN_REQUEST_CONTENT_TYPE)], body
            )
        except (http1.Refused, http1.PostFailed) as exc:
            return RetryLater(f"WNS token endpoint: {exc}")
        result = wns.classify_token_response(
            answer.status, answer.headers, answer.body, now=self._now()
        )
        if isinstance(result, AuthFailed):
            log.warning(
                "WNS refused the credential",
                extra={"tenant": credential.info.tenant_id, "credential": credential.info.id},
            )
            return dataclasses.replace(result, credential_id=credential.info.id)
        return result


class WnsTransport:
    """The `Transport` for `Channel.WNS`."""

    channel = Channel.WNS

    def __init__(
        self,
        load_credential: CredentialLoader,
        *,
        token_url: str = wns.LEGACY_TOKEN_URL,
        channel_hosts: Collection[str] = (),
        ssl_context: ssl.SSLContext | None = None,
        connect_timeout: float = 10.0,
        request_timeout: float = 30.0,
        connections_per_origin: int = 64,
        max_connections: int = 512,
        now: Callable[[], datetime] = _utcnow,
    ) -> None:
        self._load = load_credential
        self._hosts = tuple(channel_hosts)
        self._now = now
        self._http = http1.Http1Pool(
            ssl_context=ssl_context,
            connect_timeout=connect_timeout,
            request_timeout=request_timeout,
            connections_per_origin=connections_per_origin,
            max_connections=max_connections,
        )
        self.tokens = AccessTokens(self._http, token_url, now)

    async def send(self, batch: Sequence[Claimed]) -> list[Outcome]:
        """One outcome per delivery, in order; never raises for what WNS or the network do."""
        results: list[Outcome] = [RetryLater("not sent")] * len(batch)
        groups: dict[tuple[str, str | None], list[int]] = {}
        for index, claimed in enumerate(batch):
            groups.setdefault((claimed.tenant_id, claimed.app_id), []).append(index)

        async def send_group(tenant_id: str, app_id: str | None, indexes: list[int]) -> None:
            try:
                credential = await self._load(tenant_id, PROVIDER, app_id)
            except Exception:
                log.exception("WNS credential could not be opened", extra={"tenant": tenant_id})
                for i in indexes:
                    results[i] = RetryLater("the WNS credential could not be opened")
                return
            if credential is None:
                for i in indexes:
                    results[i] = Rejected("no WNS credential for this app")
                return
            if credential.info.status != ACTIVE:
                held = paused(credential.info)
                for i in indexes:
                    results[i] = held
                return
            sent = await asyncio.gather(*(self._send_one(credential, batch[i]) for i in indexes))
            for i, outcome in zip(indexes, sent, strict=True):
                results[i] = outcome

        await asyncio.gather(*(send_group(t, a, ix) for (t, a), ix in groups.items()))
        return results

    async def _send_one(self, credential: Credential, claimed: Claimed) -> Outcome:
        if not claimed.address:
            return Rejected("the device has no WNS channel URI")
        try:
            notification = notification_for(claimed, claimed.address)
            wns.validate_channel_uri(notification.channel_uri, extra_hosts=self._hosts)
        except errors.InvalidRequest as exc:
            return Rejected(exc.message)
        retried = False
        while True:
            token = await self.tokens.get(credential)
            if not isinstance(token, wns.AccessToken):
                return token
            try:
                request = wns.build_request(
                    notification, access_token=token.value, extra_hosts=self._hosts
                )
            except errors.InvalidRequest as exc:
                return Rejected(exc.message)
            try:
                answer = await self._http.post(request.url, request.headers, request.body)
            except http1.Refused as exc:
                return Rejected(f"refused channel URI: {exc}")
            except http1.PostFailed as exc:
                return RetryLater(f"WNS: {exc.reason}")
            outcome = wns.classify_response(
                answer.status,
                answer.headers,
                answer.body,
                now=self._now(),
                retried_with_new_token=retried,
            )
            if isinstance(outcome, wns.RefreshAccessToken):
                self.tokens.refused(credential, token.value)
                retried = True
                continue
            if isinstance(outcome, AuthFailed):
                return dataclasses.replace(outcome, credential_id=credential.info.id)
            if isinstance(outcome, Delivered) and outcome.reference is not None:
                return Delivered(reference=outcome.reference[:MAX_REFERENCE_CHARS])
            return outcome

    async def close(self) -> None:
        """Close every pooled connection."""
        await self._http.aclose()
