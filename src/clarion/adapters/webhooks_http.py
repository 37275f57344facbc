"""POSTs status-webhook batches over httpx, with the SSRF guard applied to every request.

Before each POST the host name is resolved, every address it resolves to is checked
(`wire.webhooks.vet_addresses`), and the connection goes to a checked address, not to whatever a
second lookup might answer (DNS rebinding). The request keeps the name in ``Host`` and, over TLS,
in SNI and certificate verification. Redirects are never followed, proxies from the environment
are ignored, timeouts are short and the answer's body is read only up to a cap.

Connections are not kept alive: they are keyed by the pinned address, and a pooled TLS
connection verified for one name must not carry a request for another name on the same address.
Webhook batches are few and large, so the handshake per POST costs little.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import ssl
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime

import httpx

from clarion import __version__
from clarion.domain import outcomes
from clarion.wire import webhooks

_USER_AGENT = f"Clarion/{__version__} (status webhooks)"


class HttpWebhookSender:
    """The `WebhookSender` on httpx."""

    def __init__(
        self,
        *,
        now: Callable[[], datetime],
        allowed_networks: Sequence[webhooks.IPNetwork],
        allow_http: bool,
        connect_timeout: float,
        timeout: float,
        max_response_bytes: int,
        verify: ssl.SSLContext | bool = True,
    ) -> None:
        self._now = now
        self._allowed = tuple(allowed_networks)
        self._allow_http = allow_http
        self._connect_timeout = connect_timeout
        self._timeout = timeout
        self._max_response_bytes = max_response_bytes
        self._verify = verify
        self._http: httpx.AsyncClient | None = None
        # httpx logs every request's URL at INFO; a receiver's URL may carry a token in its query.
        logging.getLogger("httpx").setLevel(max(logging.WARNING, logging.getLogger("httpx").level))

    def _client(self) -> httpx.AsyncClient:
        if self._http is None:
            self._http = httpx.AsyncClient(
                timeout=httpx.Timeout(self._timeout, connect=self._connect_timeout),
                follow_redirects=False,
                trust_env=False,  # a proxy would connect to the name itself, unpinned
                limits=httpx.Limits(max_keepalive_connections=0),
                verify=self._verify,
                headers={"User-Agent": _USER_AGENT},
            )
        return self._http

    async def close(self) -> None:
        if self._http is not None:
            http, self._http = self._http, None
            await http.aclose()

    async def post(self, url: str, body: bytes, headers: Mapping[str, str]) -> outcomes.Outcome:
        found = await self._exchange(url, body, headers, read=False)
        if isinstance(found, webhooks.Answer):
            retry_after = webhooks.parse_retry_after(found.retry_after, now=self._now())
            return webhooks.classify(found.status, retry_after=retry_after)
        return found

    async def fetch(
        self, url: str, body: bytes, headers: Mapping[str, str]
    ) -> webhooks.Answer | outcomes.RetryLater:
        """POST like `post`, and return the answer with its body (up to the byte cap)."""
        return await self._exchange(url, body, headers, read=True)

    async def _exchange(
        self, url: str, body: bytes, headers: Mapping[str, str], *, read: bool
    ) -> webhooks.Answer | outcomes.RetryLater:
        try:
            target = webhooks.parse_url(url, allow_http=self._allow_http, allowed=self._allowed)
        except webhooks.UnsafeUrl as exc:
            return outcomes.RetryLater(f"refused: {exc}")
        try:
            async with asyncio.timeout(self._timeout):
                return await self._post(target, url, body, headers, read=read)
        except TimeoutError:
            return outcomes.RetryLater(f"no answer within {self._timeout:g} s")

    async def _post(
        self,
        target: webhooks.Target,
        url: str,
        body: bytes,
        headers: Mapping[str, str],
        *,
        read: bool,
    ) -> webhooks.Answer | outcomes.RetryLater:
        if target.literal is not None:
            addresses: list[webhooks.IPAddress] = [target.literal]
        else:
            try:
                addresses = await self._resolve(target)
            except OSError as exc:
                return outcomes.RetryLater(f"{target.host} does not resolve: {exc}")
        refused = webhooks.vet_addresses(target, addresses, self._allowed)
        if refused is not None:
            return outcomes.RetryLater(f"refused: {refused}")
        extensions = {"sni_hostname": target.host} if target.scheme == "https" else {}
        request_headers = {
            **headers,
            "Host": target.host_header,
            "Content-Type": "application/json",
        }
        failure = "no address to connect to"
        for address in addresses:
            pinned = httpx.URL(url).copy_with(host=str(address))
            try:
                async with self._client().stream(
                    "POST", pinned, content=body, headers=request_headers, extensions=extensions
                ) as response:
                    content, truncated = await self._drain(response, keep=read)
                    return webhooks.Answer(
                        response.status_code,
                        content,
                        truncated=truncated,
                        retry_after=response.headers.get("retry-after"),
                    )
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                # Nothing was sent: the next checked address may answer.
                failure = f"could not connect to {address}: {exc or type(exc).__name__}"
            except httpx.TimeoutException as exc:
                return outcomes.RetryLater(f"timed out: {type(exc).__name__}")
            except httpx.HTTPError as exc:
                # The name only: some messages quote the URL, whose query may hold a token.
                return outcomes.RetryLater(f"HTTP exchange failed: {type(exc).__name__}")
        return outcomes.RetryLater(failure[:300])

    async def _resolve(self, target: webhooks.Target) -> list[webhooks.IPAddress]:
        infos = await asyncio.get_running_loop().getaddrinfo(
            target.host, target.port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
        )
        found: dict[webhooks.IPAddress, None] = {}
        for _family, _type, _proto, _name, sockaddr in infos:
            found[ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])] = None
        return list(found)

    async def _drain(self, response: httpx.Response, *, keep: bool) -> tuple[bytes, bool]:
        # A status webhook's body is ignored: reading a little lets a receiver finish writing.
        seen = 0
        kept: list[bytes] = []
        async for chunk in response.aiter_bytes():
            seen += len(chunk)
            if keep:
                kept.append(chunk)
            if seen > self._max_response_bytes:
                return b"".join(kept)[: self._max_response_bytes], True
        return b"".join(kept), False
