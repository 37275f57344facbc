"""SendGrid: a thin shell over `clarion.wire.email` on pooled HTTP/1.1 (`http1`).

Each message is one v3 Mail Send (`wire.email.sendgrid_request`: one personalization, since each
message carries its own unsubscribe link), classified by `wire.email.classify_sendgrid_response`.
The delivery id rides along in ``custom_args`` as ``clarion_delivery``, which SendGrid echoes in
every Event Webhook event for the message.
"""

from __future__ import annotations

import asyncio
import dataclasses
import ssl
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

from clarion.adapters.providers import http1
from clarion.domain import errors
from clarion.domain.outcomes import AuthFailed, Delivered, Outcome, Rejected, RetryLater
from clarion.domain.records import Credential
from clarion.wire import email as wire
from clarion.wire.email import Email

KIND = "sendgrid"
CUSTOM_ARG = "clarion_delivery"
"""The custom argument carrying the delivery id (echoed in Event Webhook events)."""
PATH = "/v3/mail/send"
MAX_REFERENCE_CHARS = 255


def _utcnow() -> datetime:
    return datetime.now(UTC)


class SendGridMailer:
    """The `Mailer` for ``sendgrid`` credentials: v3 Mail Send [SG][SG-ERR][SG-RL]
    (protocols.md §5.2).

    Args:
        ssl_context: the CAs to trust (an emulator's certificate in tests).
        base_url: where SendGrid is (``https://host:port``) instead of ``api.sendgrid.com``,
            or ``api.eu.sendgrid.com`` for credentials of region ``eu``: an emulator.
        connect_timeout, request_timeout: as for every HTTP transport.
        max_concurrency: requests in flight at once (one per connection: HTTP/1.1).
        now: the clock ``X-RateLimit-Reset`` is measured from.
    """

    kind = KIND

    def __init__(
        self,
        *,
        ssl_context: ssl.SSLContext | None = None,
        base_url: str | None = None,
        connect_timeout: float = 10.0,
        request_timeout: float = 30.0,
        max_concurrency: int = 128,
        now: Callable[[], datetime] = _utcnow,
    ) -> None:
        self._url = base_url.rstrip("/") + PATH if base_url else None
        self._now = now
        self._http = http1.Http1Pool(
            ssl_context=ssl_context,
            connect_timeout=connect_timeout,
            request_timeout=request_timeout,
            connections_per_origin=max_concurrency,
            max_connections=max_concurrency,
        )

    async def send(self, credential: Credential, emails: Sequence[Email]) -> list[Outcome]:
        """One outcome per email, in order, sent concurrently; never raises for what SendGrid
        or the network do."""
        info = credential.info
        if info.metadata.get("kind") != KIND or not credential.secret:
            return [AuthFailed("not a usable SendGrid credential", info.id)] * len(emails)
        url = self._url or (
            wire.SENDGRID_EU_URL if info.metadata.get("region") == "eu" else wire.SENDGRID_URL
        )
        sent = await asyncio.gather(
            *(self._send_one(url, credential.secret, email) for email in emails)
        )
        return [
            dataclasses.replace(o, credential_id=info.id) if isinstance(o, AuthFailed) else o
            for o in sent
        ]

    async def _send_one(self, url: str, api_key: str, email: Email) -> Outcome:
        try:
            request = wire.sendgrid_request(
                email, api_key=api_key, custom_args={CUSTOM_ARG: email.message_id}, url=url
            )
        except errors.InvalidRequest as exc:
            return Rejected(exc.message)
        try:
            answer = await self._http.post(request.url, request.headers, request.body)
        except (http1.Refused, http1.PostFailed) as exc:
            return RetryLater(f"SendGrid: {exc}")
        outcome = wire.classify_sendgrid_response(
            answer.status, answer.headers, answer.body, now=self._now()
        )
        if isinstance(outcome, Delivered) and outcome.reference is not None:
            return Delivered(reference=outcome.reference[:MAX_REFERENCE_CHARS])
        return outcome

    async def close(self) -> None:
        """Close every pooled connection."""
        await self._http.aclose()
