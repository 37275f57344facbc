"""Amazon SNS, as far as its HTTP(S) subscribers reach back to it: the signing certificate at a
message's ``SigningCertURL`` and the ``SubscribeURL`` that confirms a subscription.

Both URLs come from unauthenticated requests, so the caller checks them against SNS's hosts
first (`wire.mail_events.sns_url_allowed`); here nothing follows a redirect, every answer is
read up to a small cap, and every exchange has a deadline.
"""

from __future__ import annotations

import ssl

import httpx

from clarion.domain import errors

MAX_RESPONSE_BYTES = 64 * 1024
"""A certificate is about 2 KB and a confirmation answer under 1 KB."""


class HttpSnsClient:
    """Fits `ports.SnsClient` with one pooled httpx client."""

    def __init__(
        self,
        *,
        ssl_context: ssl.SSLContext,
        connect_timeout: float = 5.0,
        timeout: float = 10.0,
    ) -> None:
        self._ssl = ssl_context
        self._timeout = httpx.Timeout(timeout, connect=connect_timeout)
        self._client: httpx.AsyncClient | None = None

    async def certificate(self, url: str) -> bytes | None:
        status, body = await self._get(url)
        if status != 200 or body is None or b"-----BEGIN CERTIFICATE-----" not in body:
            return None
        return body

    async def confirm(self, url: str) -> bool:
        status, _ = await self._get(url)
        return status == 200

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def _get(self, url: str) -> tuple[int, bytes | None]:
        if self._client is None:
            self._client = httpx.AsyncClient(
                verify=self._ssl, timeout=self._timeout, follow_redirects=False, trust_env=False
            )
        try:
            async with self._client.stream("GET", url) as response:
                body = bytearray()
                async for chunk in response.aiter_bytes():
                    body += chunk
                    if len(body) > MAX_RESPONSE_BYTES:
                        return response.status_code, None
                return response.status_code, bytes(body)
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            raise errors.Unavailable(
                f"Amazon SNS cannot be reached: {type(exc).__name__}"
            ) from None
