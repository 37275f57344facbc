"""Amazon SES: a thin shell over `clarion.wire.email` on pooled HTTP/1.1 (`http1`).

Each message is one SES API v2 ``SendEmail`` with ``Content.Raw`` (`wire.email.render_message`,
so SES sends exactly our headers, ``List-Unsubscribe`` included), signed with Signature Version
4 just before it goes (a request signed long before would be ``RequestExpired``), and classified
by `wire.email.classify_ses_response`. The delivery id rides along as the ``clarion_delivery``
message tag, which SES repeats in the bounce and complaint events of a configuration set.
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
import ssl
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

from clarion.adapters.providers import http1
from clarion.domain import errors
from clarion.domain.outcomes import AuthFailed, Delivered, Outcome, Rejected, RetryLater
from clarion.domain.records import Credential
from clarion.wire import email as wire
from clarion.wire.email import Email

KIND = "ses"
TAG = "clarion_delivery"
"""The message tag carrying the delivery id (SES repeats tags in its events)."""
MAX_REFERENCE_CHARS = 255
THROTTLED_RETRY_SECONDS = 1.0
"""SES sends no ``Retry-After``. Its sending rate is per second, so a throttled message waits
a second (the delivery service backs off further on repeats)."""
QUOTA_RETRY_SECONDS = 3600.0
"""The daily quota is a rolling 24 hours: looking again within minutes only burns requests."""
_THROTTLED = ("TooManyRequestsException", "ThrottlingException", "Throttling", "LimitExceeded")
_TAG_VALUE = re.compile(r"[A-Za-z0-9_-]{1,256}")


def _utcnow() -> datetime:
    return datetime.now(UTC)


class SesMailer:
    """The `Mailer` for ``ses`` credentials: SES API v2 ``SendEmail`` [BOTO] with SigV4
    [AWS-SIG] (protocols.md §5.1).

    Args:
        ssl_context: the CAs to trust (an emulator's certificate in tests).
        endpoint_url: where SES is instead of ``https://email.<region>.amazonaws.com``.
        connect_timeout, request_timeout: as for every HTTP transport.
        max_concurrency: requests in flight at once (one per connection: HTTP/1.1).
        now: the clock requests are signed with.
    """

    kind = KIND

    def __init__(
        self,
        *,
        ssl_context: ssl.SSLContext | None = None,
        endpoint_url: str | None = None,
        connect_timeout: float = 10.0,
        request_timeout: float = 30.0,
        max_concurrency: int = 128,
        now: Callable[[], datetime] = _utcnow,
    ) -> None:
        self._endpoint = endpoint_url.rstrip("/") if endpoint_url else None
        self._now = now
        self._http = http1.Http1Pool(
            ssl_context=ssl_context,
            connect_timeout=connect_timeout,
            request_timeout=request_timeout,
            connections_per_origin=max_concurrency,
            max_connections=max_concurrency,
        )

    async def send(self, credential: Credential, emails: Sequence[Email]) -> list[Outcome]:
        """One outcome per email, in order, sent concurrently; never raises for what SES or
        the network do."""
        info = credential.info
        metadata = info.metadata
        region, key_id = metadata.get("region"), metadata.get("access_key_id")
        configuration_set = metadata.get("configuration_set")
        if (
            metadata.get("kind") != KIND
            or not isinstance(region, str)
            or not isinstance(key_id, str)
            or not (configuration_set is None or isinstance(configuration_set, str))
            or not credential.secret
        ):
            return [AuthFailed("not a usable SES credential", info.id)] * len(emails)
        keys = wire.AwsCredentials(key_id, credential.secret)
        sent = await asyncio.gather(
            *(self._send_one(region, keys, configuration_set, email) for email in emails)
        )
        return [
            dataclasses.replace(o, credential_id=info.id) if isinstance(o, AuthFailed) else o
            for o in sent
        ]

    async def _send_one(
        self,
        region: str,
        keys: wire.AwsCredentials,
        configuration_set: str | None,
        email: Email,
    ) -> Outcome:
        tags = {TAG: email.message_id} if _TAG_VALUE.fullmatch(email.message_id) else None
        try:
            request = wire.ses_send_email_request(
                email,
                region=region,
                credentials=keys,
                now=self._now(),
                configuration_set=configuration_set,
                tags=tags,
                endpoint=self._endpoint,
            )
        except errors.InvalidRequest as exc:
            return Rejected(exc.message)
        # The pool writes Host itself, from the same URL, so the signed value is what goes.
        headers = [(k, v) for k, v in request.headers if k.lower() != "host"]
        try:
            answer = await self._http.post(request.url, headers, request.body)
        except (http1.Refused, http1.PostFailed) as exc:
            return RetryLater(f"SES: {exc}")
        outcome = wire.classify_ses_response(answer.status, answer.headers, answer.body)
        if isinstance(outcome, Delivered) and outcome.reference is not None:
            return Delivered(reference=outcome.reference[:MAX_REFERENCE_CHARS])
        if isinstance(outcome, RetryLater) and outcome.after_seconds is None:
            if "quota" in outcome.reason.lower():
                return dataclasses.replace(outcome, after_seconds=QUOTA_RETRY_SECONDS)
            if answer.status == 429 or any(code in outcome.reason for code in _THROTTLED):
                return dataclasses.replace(outcome, after_seconds=THROTTLED_RETRY_SECONDS)
        return outcome

    async def close(self) -> None:
        """Close every pooled connection."""
        await self._http.aclose()
