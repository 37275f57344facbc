"""A local WNS: the OAuth token endpoints (legacy Live ``/accesstoken.srf`` and the Entra
``/{tenant}/oauth2/v2.0/token``) and channel URIs on one HTTP/1.1 port (TLS by default), a
JSON control API on another.

Written from Microsoft's "Push notification service request and response headers" as
summarised in protocols.md §3. docs/emulators.md lists what is checked, the control API and the
known deviations.
"""

from __future__ import annotations

import asyncio
import itertools
import re
import secrets
import time
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from clarion.emulators.http1 import (
    ControlError,
    HttpEmulator,
    Request,
    Response,
    http_origin,
    json_body,
)

Clock = Callable[[], float]


def system_clock() -> float:
    return time.time()  # noqa: TID251 - the emulator's own wall clock; tests inject theirs


TOKEN_LIFETIME_SECONDS = 86_400  # [W-HDR] the legacy endpoint's example; Entra says 86399
MAX_PAYLOAD_BYTES = 5000  # [W-HDR]
LEGACY_SCOPE = "notify.windows.com"
ENTRA_SCOPE = "https://wns.windows.com/.default"
TYPES = {
    "wns/toast": ("text/xml", "toast"),
    "wns/tile": ("text/xml", "tile"),
    "wns/badge": ("text/xml", "badge"),
    "wns/raw": ("application/octet-stream", None),
}
ENTRA_PATH = re.compile(r"^/(?P<tenant>[A-Za-z0-9.-]+)/oauth2/v2\.0/token$")
TAG = re.compile(r"^[A-Za-z0-9]{1,16}$")
WNS_STATUSES = {"dropped", "channelthrottled"}


@dataclass
class App:
    client_id: str
    secret: str


@dataclass
class Channel:
    id: str
    client_id: str
    state: str = "active"  # active | expired (410) | unknown (404)
    device: str = "connected"  # X-WNS-DeviceConnectionStatus


@dataclass
class ScriptedOutcome:
    """An answer forced for one channel (every one when None): an HTTP status, or 200 with an
    ``X-WNS-Status`` of ``dropped`` or ``channelthrottled``."""

    status: int
    wns_status: str | None = None
    description: str = ""
    continue_after: int | None = None
    channel: str | None = None
    remaining: int | None = None
    until: float | None = None
    id: int = 0


class Rejection(Exception):
    def __init__(self, status: int, description: str, headers: list[tuple[str, str]] | None = None):
        super().__init__(description)
        self.status = status
        self.description = description
        self.headers = headers or []


class WnsEmulator(HttpEmulator):
    """Run with ``await start()`` / ``await stop()`` (or ``run(stop)``)."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        control_port: int = 0,
        tls: bool = True,
        public_host: str | None = None,
        cert_file: Path | None = None,
        key_file: Path | None = None,
        clock: Clock = system_clock,
    ) -> None:
        self.host = host
        self.tls = tls
        self.public_host = public_host or host
        self.latency_ms = 0.0
        self.received: list[dict[str, Any]] = []
        self.attempts: list[dict[str, Any]] = []
        self.token_requests: list[dict[str, Any]] = []
        self._clock = clock
        self._apps: dict[str, App] = {}
        self._channels: dict[str, Channel] = {}
        self._tokens: dict[str, tuple[str, float]] = {}  # token -> (client_id, expires)
        self._outcomes: list[ScriptedOutcome] = []
        self._ids = itertools.count(1)
        self._listen(
            self._serve,
            self._serve_control,
            host=host,
            port=port,
            control_port=control_port,
            tls=tls,
            cert_file=cert_file,
            key_file=key_file,
            cert_host=self.public_host,
        )

    @property
    def origin(self) -> str:
        return http_origin(self.tls, self.public_host, self.port)

    @property
    def token_url(self) -> str:
        """The legacy token endpoint (Package SID + secret)."""
        return f"{self.origin}/accesstoken.srf"

    # -- programmatic control --------------------------------------------------------------------

    def register_app(self, client_id: str, secret: str) -> None:
        """Issue tokens for this Package SID (or Entra app id) and secret."""
        self._apps[client_id] = App(client_id, secret)

    def open_channel(self, client_id: str) -> dict[str, Any]:
        """A channel URI for the app, as ``CreatePushNotificationChannelForApplicationAsync``
        would hand one to the device: ``https://<host>/?token=<opaque>``."""
        if client_id not in self._apps:
            raise KeyError(client_id)
        channel = Channel(id=secrets.token_urlsafe(24), client_id=client_id)
        self._channels[channel.id] = channel
        return self._describe(channel)

    def channel_uri(self, channel_id: str) -> str:
        return f"{self.origin}/?token={channel_id}"

    def expire_channel(self, channel_id: str, status: int = 410) -> None:
        """The channel expired (410) or is no longer known (404)."""
        self._channels[channel_id].state = "expired" if status == 410 else "unknown"

    def expire_tokens(self) -> int:
        """Every access token issued so far is refused from now on (401)."""
        count = len(self._tokens)
        self._tokens.clear()
        return count

    def script(
        self,
        status: int,
        *,
        wns_status: str | None = None,
        description: str = "",
        continue_after: int | None = None,
        channel: str | None = None,
        count: int | None = None,
        seconds: float | None = None,
    ) -> ScriptedOutcome:
        outcome = ScriptedOutcome(
            status=status,
            wns_status=wns_status,
            description=description,
            continue_after=continue_after,
            channel=channel,
            remaining=count,
            until=None if seconds is None else self._clock() + seconds,
            id=next(self._ids),
        )
        self._outcomes.append(outcome)
        return outcome

    def reset(self) -> None:
        """Forget notifications, attempts, token requests, scripted outcomes and latency."""
        self.received.clear()
        self.attempts.clear()
        self.token_requests.clear()
        self._outcomes.clear()
        self.latency_ms = 0.0

    def _describe(self, channel: Channel) -> dict[str, Any]:
        return {
            "id": channel.id,
            "channel_uri": self.channel_uri(channel.id),
            "client_id": channel.client_id,
            "state": channel.state,
            "device": channel.device,
        }

    # -- the service -----------------------------------------------------------------------------

    async def _serve(self, request: Request) -> Response:
        if self.latency_ms > 0:
            await asyncio.sleep(self.latency_ms / 1000)
        now = self._clock()
        if request.path == "/accesstoken.srf":
            return self._token(request, LEGACY_SCOPE, now)
        if ENTRA_PATH.match(request.path):
            return self._token(request, ENTRA_SCOPE, now)
        tokens = request.query.get("token") or []
        channel_id = tokens[0] if tokens else None
        try:
            response = self._notify(request, channel_id, now)
            status = response.status
            description = None
        except Rejection as rejection:
            status, description = rejection.status, rejection.description
            response = Response(
                rejection.status,
                [
                    ("x-wns-error-description", rejection.description),
                    ("x-wns-debug-trace", "EMULATOR"),
                    ("ms-cv", b64(4)),
                    *rejection.headers,
                ],
            )
        self.attempts.append(
            {
                "channel": channel_id,
                "method": request.method,
                "status": status,
                "wns_status": _header(response, "x-wns-status"),
                "description": description,
                "time": now,
                "connection": request.connection,
            }
        )
        return response

    def _token(self, request: Request, scope: str, now: float) -> Response:
        form = {k: v[0] for k, v in parse_qs(request.body.decode("latin-1")).items() if v}
        self.token_requests.append(
            {"client_id": form.get("client_id"), "scope": form.get("scope"), "time": now}
        )

        def fail(status: int, error: str, description: str) -> Response:
            return Response.of_json(status, {"error": error, "error_description": description})

        if request.method != "POST":
            return fail(405, "invalid_request", "the token endpoint takes POST")
        content_type = (request.header("content-type") or "").split(";")[0].strip().lower()
        if content_type != "application/x-www-form-urlencoded":
            return fail(
                400, "invalid_request", "the body must be application/x-www-form-urlencoded"
            )
        if form.get("grant_type") != "client_credentials":
            return fail(400, "unsupported_grant_type", "grant_type must be client_credentials")
        if form.get("scope") != scope:
            return fail(400, "invalid_scope", f"scope must be {scope}")
        app = self._apps.get(form.get("client_id", ""))
        if app is None or not secrets.compare_digest(app.secret, form.get("client_secret", "")):
            return fail(400, "invalid_client", "The authentication failed")
        token = "EgAb" + secrets.token_urlsafe(48)
        self._tokens[token] = (app.client_id, now + TOKEN_LIFETIME_SECONDS)
        return Response.of_json(
            200,
            {"token_type": "bearer", "access_token": token, "expires_in": TOKEN_LIFETIME_SECONDS},
        )

    def _notify(self, request: Request, channel_id: str | None, now: float) -> Response:
        if request.path != "/" or not channel_id:
            raise Rejection(404, "the channel URI is not valid")
        if request.method != "POST":
            raise Rejection(405, "only POST is supported")
        authorization = request.header("authorization") or ""
        scheme, _, token = authorization.partition(" ")
        issued = self._tokens.get(token) if scheme.lower() == "bearer" else None
        if issued is None:
            raise Rejection(401, "Invalid token: the OAuth ticket is invalid or missing")
        client_id, expires = issued
        if now >= expires:
            raise Rejection(401, "Token expired")
        channel = self._channels.get(channel_id)
        if channel is None or channel.state == "unknown":
            raise Rejection(404, "The channel URI is not valid or is not recognized by WNS")
        if channel.client_id != client_id:
            raise Rejection(403, "The token's app is not the app the channel belongs to")
        if channel.state == "expired":
            raise Rejection(410, "The channel expired")
        kind, payload = self._validate(request)
        scripted = self._scripted(channel.id, now)
        wns_status = "received"
        if scripted is not None:
            extra: list[tuple[str, str]] = []
            if scripted.continue_after is not None:
                extra.append(("x-wns-continue-after", str(scripted.continue_after)))
            if scripted.status != 200:
                raise Rejection(scripted.status, scripted.description or "scripted", extra)
            wns_status = scripted.wns_status or "received"
        msg_id = secrets.token_hex(8).upper()
        headers = [
            ("x-wns-status", wns_status),
            ("x-wns-msg-id", msg_id),
            ("x-wns-debug-trace", "EMULATOR"),
            ("ms-cv", b64(4)),
        ]
        if (request.header("x-wns-requestforstatus") or "").lower() == "true":
            headers.append(("x-wns-deviceconnectionstatus", channel.device))
        if scripted is not None and scripted.description:
            headers.append(("x-wns-error-description", scripted.description))
        if wns_status == "received":
            self.received.append(
                {
                    "channel": channel.id,
                    "client_id": client_id,
                    "type": kind,
                    "content_type": request.header("content-type"),
                    "headers": {k: v for k, v in request.headers if k.startswith("x-wns-")},
                    "payload": payload.decode("utf-8", "replace"),
                    "msg_id": msg_id,
                    "time": now,
                    "connection": request.connection,
                }
            )
        return Response(200, headers)

    def _validate(self, request: Request) -> tuple[str, bytes]:
        names = [k for k, _ in request.headers]
        for name in set(names):
            if name.startswith("x-wns-") and names.count(name) > 1:
                raise Rejection(400, f"the header {name} is repeated")
        kind = request.header("x-wns-type")
        if kind not in TYPES:
            raise Rejection(400, "X-WNS-Type must be wns/toast, wns/tile, wns/badge or wns/raw")
        expected, root = TYPES[kind]
        content_type = (request.header("content-type") or "").split(";")[0].strip().lower()
        if content_type != expected:
            raise Rejection(400, f"the Content-Type of {kind} must be {expected}")
        if request.header("content-length") is None:
            raise Rejection(400, "Content-Length is required (no chunked requests)")
        if request.header("expect") is not None:
            raise Rejection(400, "Expect: 100-continue is not supported")
        if request.size > MAX_PAYLOAD_BYTES:
            raise Rejection(413, f"the payload is {request.size} bytes; at most 5000 are taken")
        if request.size == 0:
            raise Rejection(400, "the notification has no payload")
        cache = request.header("x-wns-cache-policy")
        if cache is not None and cache.lower() not in ("cache", "no-cache"):
            raise Rejection(400, "X-WNS-Cache-Policy must be cache or no-cache")
        ttl = request.header("x-wns-ttl")
        if ttl is not None and not ttl.isdigit():
            raise Rejection(400, "X-WNS-TTL must be a number of seconds")
        for name in ("x-wns-tag", "x-wns-group"):
            value = request.header(name)
            if value is not None and not TAG.match(value):
                raise Rejection(400, f"{name} must be 1 to 16 letters and digits")
        priority = request.header("x-wns-priority")
        if priority is not None and priority not in ("1", "2", "3", "4"):
            raise Rejection(400, "X-WNS-PRIORITY must be 1 to 4")
        status = request.header("x-wns-requestforstatus")
        if status is not None and status.lower() not in ("true", "false"):
            raise Rejection(400, "X-WNS-RequestForStatus must be true or false")
        if root is not None:
            if b"<!DOCTYPE" in request.body.upper() or b"<!ENTITY" in request.body.upper():
                raise Rejection(400, "the XML payload must not declare a DTD")
            try:
                element = ET.fromstring(request.body)  # noqa: S314 - DTDs are refused above
            except ET.ParseError as exc:
                raise Rejection(400, f"the XML payload is not well-formed: {exc}") from None
            if element.tag != root:
                raise Rejection(400, f"a {kind} payload's root element must be <{root}>")
        return kind, request.body

    def _scripted(self, channel_id: str, now: float) -> ScriptedOutcome | None:
        self._outcomes = [
            o
            for o in self._outcomes
            if (o.until is None or now < o.until) and (o.remaining is None or o.remaining > 0)
        ]
        candidates = [o for o in self._outcomes if o.channel == channel_id] or [
            o for o in self._outcomes if o.channel is None
        ]
        if not candidates:
            return None
        outcome = candidates[-1]
        if outcome.remaining is not None:
            outcome.remaining -= 1
        return outcome

    # -- the control API -------------------------------------------------------------------------

    async def _serve_control(self, request: Request) -> Response:
        try:
            status, answer = self._control_route(request)
        except ControlError as exc:
            status, answer = exc.status, {"error": exc.message}
        return Response.of_json(status, answer)

    def _control_route(self, request: Request) -> tuple[int, Any]:
        method, path = request.method, request.path
        route = (method, path)
        if route == ("POST", "/control/apps"):
            given = json_body(request)
            client_id, secret = given.get("client_id"), given.get("client_secret")
            if not isinstance(client_id, str) or not client_id or not isinstance(secret, str):
                raise ControlError(400, "need client_id (the Package SID) and client_secret")
            self.register_app(client_id, secret)
            return 201, {"client_id": client_id}
        if route == ("GET", "/control/apps"):
            return 200, [{"client_id": a.client_id} for a in self._apps.values()]
        if route == ("POST", "/control/channels"):
            client_id = json_body(request).get("client_id")
            if not isinstance(client_id, str) or client_id not in self._apps:
                raise ControlError(400, "client_id must name a registered app")
            return 201, self.open_channel(client_id)
        if route == ("GET", "/control/channels"):
            return 200, [self._describe(c) for c in self._channels.values()]
        if path.startswith("/control/channels/"):
            channel_id = path.removeprefix("/control/channels/")
            channel = self._channels.get(channel_id)
            if channel is None:
                raise ControlError(404, "no such channel")
            if method == "DELETE":
                status = json_body(request).get("status", 410)
                if status not in (404, 410):
                    raise ControlError(400, "status is 410 (expired) or 404 (unknown)")
                self.expire_channel(channel_id, status)
                return 200, self._describe(channel)
            if method == "PATCH":
                device = json_body(request).get("device")
                if device not in ("connected", "disconnected", "tempdisconnected"):
                    raise ControlError(400, "device is connected, disconnected or tempdisconnected")
                channel.device = device
                return 200, self._describe(channel)
        if route == ("POST", "/control/tokens/expire"):
            return 200, {"expired": self.expire_tokens()}
        if route == ("GET", "/control/tokens"):
            return 200, self.token_requests
        if route == ("GET", "/control/received"):
            return 200, self.received
        if route == ("DELETE", "/control/received"):
            cleared = len(self.received)
            self.received.clear()
            return 200, {"cleared": cleared}
        if route == ("GET", "/control/attempts"):
            return 200, self.attempts
        if route == ("DELETE", "/control/attempts"):
            cleared = len(self.attempts)
            self.attempts.clear()
            return 200, {"cleared": cleared}
        if route == ("POST", "/control/outcomes"):
            return 201, self._script_from(json_body(request))
        if route == ("GET", "/control/outcomes"):
            return 200, [asdict(o) for o in self._outcomes]
        if route == ("DELETE", "/control/outcomes"):
            cleared = len(self._outcomes)
            self._outcomes.clear()
            return 200, {"cleared": cleared}
        if route == ("POST", "/control/latency"):
            ms = json_body(request).get("ms")
            if not isinstance(ms, int | float) or isinstance(ms, bool) or ms < 0:
                raise ControlError(400, "ms is a number of milliseconds >= 0")
            self.latency_ms = float(ms)
            return 200, {"ms": self.latency_ms}
        if route == ("GET", "/control/latency"):
            return 200, {"ms": self.latency_ms}
        if route == ("POST", "/control/reset"):
            self.reset()
            return 200, {"reset": True}
        raise ControlError(404, f"no route {method} {path}")

    def _script_from(self, given: dict[str, Any]) -> dict[str, Any]:
        status = given.get("status", 200)
        wns_status = given.get("wns_status")
        description = given.get("description", "")
        continue_after = given.get("continue_after")
        channel = given.get("channel")
        count, seconds = given.get("count"), given.get("seconds")
        if not isinstance(status, int) or not (status == 200 or 400 <= status <= 599):
            raise ControlError(400, "status is 200 (with wns_status) or 400-599")
        if status == 200 and wns_status not in WNS_STATUSES:
            raise ControlError(400, "a scripted 200 needs wns_status dropped or channelthrottled")
        if not isinstance(description, str):
            raise ControlError(400, "description is a string")
        if continue_after is not None and (
            not isinstance(continue_after, int) or continue_after < 0
        ):
            raise ControlError(400, "continue_after is whole seconds")
        if channel is not None and channel not in self._channels:
            raise ControlError(404, "no such channel")
        if count is not None and (not isinstance(count, int) or count < 1):
            raise ControlError(400, "count is a positive integer")
        if seconds is not None and (not isinstance(seconds, int | float) or seconds <= 0):
            raise ControlError(400, "seconds is a positive number")
        return asdict(
            self.script(
                status,
                wns_status=wns_status,
                description=description,
                continue_after=continue_after,
                channel=channel,
                count=count,
                seconds=seconds,
            )
        )


def b64(size: int) -> str:
    return uuid.uuid4().hex[: size * 2]


def _header(response: Response, name: str) -> str | None:
    for key, value in response.headers:
        if key == name:
            return value
    return None
