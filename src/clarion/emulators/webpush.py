"""A local Web Push service: it plays the browser's push service (RFC 8030), holds each
subscription's private key, checks VAPID (RFC 8292) and decrypts every message (RFC 8291,
``aes128gcm`` of RFC 8188), so a sender that encrypts wrongly gets a 400 and its test fails.

Written from the RFCs and protocols.md §4 alone: the decryption below derives its keys with
``cryptography``'s HKDF, not with anything Clarion's client uses. docs/emulators.md lists what
is checked, the control API and the known deviations.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import itertools
import json
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import jwt
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from clarion.emulators.http1 import (
    ControlError,
    HttpEmulator,
    Request,
    Response,
    http_origin,
    json_body,
)

Clock = Callable[[], float]
"""Seconds since the UNIX epoch; injectable so tests can expire tokens and end outages."""


def system_clock() -> float:
    return time.time()  # noqa: TID251 - the emulator's own wall clock; tests inject theirs


# [RFC8030 §7.2] a push service "MUST NOT return a 413" for 4096 bytes or less; we refuse more.
MAX_BODY_BYTES = 4096
# [RFC8292 §2] exp "MUST NOT be more than 24 hours from the time of the request".
VAPID_MAX_SECONDS = 24 * 3600
URGENCIES = {"very-low", "low", "normal", "high"}
TOPIC = re.compile(r"^[A-Za-z0-9_-]{1,32}$")
PUSH_PATH = re.compile(r"^/push/(?P<id>[A-Za-z0-9_-]+)$")
DEFAULT_TTL_LIMIT = 2_419_200  # like FCM: longer TTLs are shortened, and the answer says so


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64url(text: str) -> bytes:
    text = text.strip().rstrip("=")
    if not re.fullmatch(r"[A-Za-z0-9_-]*", text):
        raise ValueError("not base64url")
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass
class Subscription:
    id: str
    private_key: ec.EllipticCurvePrivateKey = field(repr=False)
    auth: bytes = field(repr=False)
    application_server_key: str | None = None
    state: str = "active"  # active | expired (404) | unsubscribed (410)
    created: float = 0.0

    @property
    def p256dh(self) -> bytes:
        return self.private_key.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )


@dataclass
class ScriptedOutcome:
    """An answer forced for one subscription (every one when None), until cleared, for the
    next `remaining` requests, or until the clock passes `until`."""

    status: int
    reason: str = ""
    subscription: str | None = None
    retry_after: str | None = None
    remaining: int | None = None
    until: float | None = None
    id: int = 0


class Rejection(Exception):
    def __init__(self, status: int, reason: str, headers: list[tuple[str, str]] | None = None):
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.headers = headers or []


class WebPushEmulator(HttpEmulator):
    """Run with ``await start()`` / ``await stop()`` (or ``run(stop)``); ``port`` and
    ``control_port`` are read back once started (0 picks free ones)."""

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
        self.messages: list[dict[str, Any]] = []
        self.attempts: list[dict[str, Any]] = []
        self._clock = clock
        self._subscriptions: dict[str, Subscription] = {}
        self._outcomes: list[ScriptedOutcome] = []
        self._ids = itertools.count(1)
        self._verified: dict[tuple[str, str], dict[str, Any]] = {}
        self._listen(
            self._serve_push,
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

    # -- programmatic control (the control API calls these) -----------------------------------

    def subscribe(self, application_server_key: str | None = None) -> dict[str, Any]:
        """A new subscription, as ``PushSubscription.toJSON()``: ``endpoint``,
        ``expirationTime`` and ``keys`` (``p256dh``, ``auth``). The emulator keeps the private
        key. With `application_server_key`, only VAPID tokens with that ``k`` are taken."""
        if application_server_key is not None:
            raw = unb64url(application_server_key)
            ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), raw)  # ValueError
            application_server_key = b64url(raw)
        subscription = Subscription(
            id=b64url(secrets.token_bytes(18)),
            private_key=ec.generate_private_key(ec.SECP256R1()),
            auth=secrets.token_bytes(16),
            application_server_key=application_server_key,
            created=self._clock(),
        )
        self._subscriptions[subscription.id] = subscription
        return self._describe(subscription)

    def endpoint_of(self, subscription_id: str) -> str:
        return f"{self.origin}/push/{subscription_id}"

    def unsubscribe(self, subscription_id: str, status: int = 410) -> None:
        """The user unsubscribed (410 Gone) or the subscription expired (404, RFC 8030 §7.3)."""
        subscription = self._subscriptions[subscription_id]
        subscription.state = "expired" if status == 404 else "unsubscribed"

    def script(
        self,
        status: int,
        reason: str = "",
        *,
        subscription: str | None = None,
        retry_after: str | None = None,
        count: int | None = None,
        seconds: float | None = None,
    ) -> ScriptedOutcome:
        outcome = ScriptedOutcome(
            status=status,
            reason=reason,
            subscription=subscription,
            retry_after=retry_after,
            remaining=count,
            until=None if seconds is None else self._clock() + seconds,
            id=next(self._ids),
        )
        self._outcomes.append(outcome)
        return outcome

    def reset(self) -> None:
        """Forget messages, attempts, scripted outcomes and latency; keep subscriptions."""
        self.messages.clear()
        self.attempts.clear()
        self._outcomes.clear()
        self.latency_ms = 0.0

    def _describe(self, subscription: Subscription) -> dict[str, Any]:
        return {
            "endpoint": self.endpoint_of(subscription.id),
            "expirationTime": None,
            "keys": {"p256dh": b64url(subscription.p256dh), "auth": b64url(subscription.auth)},
        }

    # -- the push service ------------------------------------------------------------------------

    async def _serve_push(self, request: Request) -> Response:
        if self.latency_ms > 0:
            await asyncio.sleep(self.latency_ms / 1000)
        now = self._clock()
        match = PUSH_PATH.match(request.path)
        subscription_id = match.group("id") if match else None
        try:
            response = self._push_message(request, subscription_id, now)
            status, reason = response.status, None
        except Rejection as rejection:
            status, reason = rejection.status, rejection.reason
            response = Response(
                rejection.status,
                [("content-type", "text/plain; charset=utf-8"), *rejection.headers],
                rejection.reason.encode(),
            )
        self.attempts.append(
            {
                "subscription": subscription_id,
                "method": request.method,
                "status": status,
                "reason": reason,
                "time": now,
                "connection": request.connection,
            }
        )
        return response

    def _push_message(self, request: Request, subscription_id: str | None, now: float) -> Response:
        if subscription_id is None:
            raise Rejection(404, "no such push resource")
        if request.method != "POST":
            raise Rejection(405, "push messages are POSTed")
        subscription = self._subscriptions.get(subscription_id)
        if subscription is None or subscription.state == "expired":
            raise Rejection(404, "the subscription has expired or never existed")
        if subscription.state == "unsubscribed":
            raise Rejection(410, "push subscription has unsubscribed or expired")
        vapid = self._check_vapid(request, subscription, now)
        ttl = self._check_headers(request)
        if request.size > MAX_BODY_BYTES:
            raise Rejection(413, f"the body is {request.size} bytes; at most 4096 are taken")
        plaintext = self._decrypt(request, subscription)
        scripted = self._scripted(subscription_id, now)
        if scripted is not None:
            headers = [("retry-after", scripted.retry_after)] if scripted.retry_after else []
            raise Rejection(scripted.status, scripted.reason or "scripted", headers)
        message_id = b64url(secrets.token_bytes(12))
        kept_ttl = min(ttl, DEFAULT_TTL_LIMIT)
        self.messages.append(
            {
                "id": message_id,
                "subscription": subscription_id,
                "endpoint": self.endpoint_of(subscription_id),
                "payload": _text(plaintext),
                "json": _json_or_none(_text(plaintext)),
                "payload_base64": None if plaintext is None else b64url(plaintext),
                "ttl": ttl,
                "urgency": request.header("urgency") or "normal",
                "topic": request.header("topic"),
                "vapid": vapid,
                "time": now,
                "connection": request.connection,
            }
        )
        return Response(
            201,
            [("location", f"{self.origin}/m/{message_id}"), ("ttl", str(kept_ttl))],
        )

    def _check_vapid(
        self, request: Request, subscription: Subscription, now: float
    ) -> dict[str, Any]:
        authorization = request.header("authorization")
        if not authorization:
            raise Rejection(401, "missing Authorization header (VAPID)")
        scheme, _, rest = authorization.strip().partition(" ")
        if scheme.lower() != "vapid":
            raise Rejection(401, "the Authorization scheme must be vapid (RFC 8292)")
        params: dict[str, str] = {}
        for part in rest.split(","):
            name, _, value = part.strip().partition("=")
            params[name.strip().lower()] = value.strip()
        token, k = params.get("t"), params.get("k")
        if not token or not k:
            raise Rejection(401, "the vapid credential needs t= and k=")
        cached = self._verified.get((token, k))
        if cached is None:
            try:
                raw = unb64url(k)
            except (ValueError, binascii.Error):
                raise Rejection(403, "k is not base64url") from None
            if len(raw) != 65 or raw[0] != 4:
                raise Rejection(403, "public key must be 65 bytes long")
            try:
                public = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), raw)
                header = jwt.get_unverified_header(token)
                claims = jwt.decode(
                    token,
                    public,
                    algorithms=["ES256"],
                    options={
                        "verify_aud": False,
                        "verify_exp": False,
                        "verify_iat": False,
                        "verify_nbf": False,
                    },
                )
            except (ValueError, jwt.PyJWTError):
                raise Rejection(403, "invalid JWT provided") from None
            if header.get("alg") != "ES256":
                raise Rejection(403, "invalid JWT provided: alg must be ES256")
            cached = dict(claims)
            if len(self._verified) > 10_000:
                self._verified.clear()
            self._verified[(token, k)] = cached
        if subscription.application_server_key not in (None, b64url(unb64url(k))):
            raise Rejection(
                403,
                "VAPID key mismatch: k does not correspond to the applicationServerKey "
                "the subscription was created with",
            )
        if cached.get("aud") != self.origin:
            raise Rejection(403, f"the aud claim must be the origin {self.origin}")
        exp = cached.get("exp")
        if not isinstance(exp, int) or isinstance(exp, bool):
            raise Rejection(403, "the exp claim must be an integer")
        if exp <= now:
            raise Rejection(403, "token has expired")
        if exp - now > VAPID_MAX_SECONDS:
            raise Rejection(
                403, "exp claim MUST NOT be more than 24 hours from the time of the request"
            )
        sub = cached.get("sub")
        if not isinstance(sub, str) or not (
            (sub.startswith("mailto:") and "@" in sub) or sub.startswith("https://")
        ):
            raise Rejection(403, "the sub claim must be a mailto: or https: contact")
        return {"sub": sub, "aud": cached["aud"], "exp": exp, "k": k}

    def _check_headers(self, request: Request) -> int:
        ttl = request.header("ttl")
        if ttl is None:
            raise Rejection(400, "missing TTL header")
        if not ttl.strip().isdigit():
            raise Rejection(400, "TTL must be a non-negative integer")
        urgency = request.header("urgency")
        if urgency is not None and urgency not in URGENCIES:
            raise Rejection(400, "Urgency must be very-low, low, normal or high")
        topic = request.header("topic")
        if topic is not None and not TOPIC.match(topic):
            raise Rejection(400, "Topic must be at most 32 characters of base64url")
        return int(ttl)

    def _decrypt(self, request: Request, subscription: Subscription) -> bytes | None:
        body = request.body
        if not body:
            return None  # a push without data
        encoding = (request.header("content-encoding") or "").lower()
        if encoding != "aes128gcm":
            raise Rejection(400, "Content-Encoding must be aes128gcm (RFC 8291)")
        try:
            return decrypt_aes128gcm(body, subscription.private_key, subscription.auth)
        except ValueError as exc:
            raise Rejection(400, f"the message does not decrypt: {exc}") from None

    def _scripted(self, subscription_id: str, now: float) -> ScriptedOutcome | None:
        self._outcomes = [
            o
            for o in self._outcomes
            if (o.until is None or now < o.until) and (o.remaining is None or o.remaining > 0)
        ]
        candidates = [o for o in self._outcomes if o.subscription == subscription_id] or [
            o for o in self._outcomes if o.subscription is None
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
        if route == ("POST", "/control/subscriptions"):
            given = json_body(request)
            key = given.get("applicationServerKey")
            if key is not None and not isinstance(key, str):
                raise ControlError(400, "applicationServerKey is a base64url P-256 public key")
            try:
                return 201, self.subscribe(key)
            except ValueError as exc:
                raise ControlError(400, f"applicationServerKey: {exc}") from exc
        if route == ("GET", "/control/subscriptions"):
            return 200, [
                {
                    "id": s.id,
                    **self._describe(s),
                    "state": s.state,
                    "applicationServerKey": s.application_server_key,
                }
                for s in self._subscriptions.values()
            ]
        if path.startswith("/control/subscriptions/"):
            subscription_id = path.removeprefix("/control/subscriptions/")
            if subscription_id not in self._subscriptions:
                raise ControlError(404, "no such subscription")
            if method == "DELETE":
                status = json_body(request).get("status", 410)
                if status not in (404, 410):
                    raise ControlError(400, "status is 404 (expired) or 410 (unsubscribed)")
                self.unsubscribe(subscription_id, status)
                return 200, {
                    "id": subscription_id,
                    "state": self._subscriptions[subscription_id].state,
                }
        if route == ("GET", "/control/messages"):
            return 200, self.messages
        if route == ("DELETE", "/control/messages"):
            cleared = len(self.messages)
            self.messages.clear()
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
        status = given.get("status")
        reason = given.get("reason", "")
        subscription = given.get("subscription")
        retry_after, count, seconds = (
            given.get("retry_after"),
            given.get("count"),
            given.get("seconds"),
        )
        if not isinstance(status, int) or not 400 <= status <= 599:
            raise ControlError(400, "status is an HTTP error status (400-599)")
        if not isinstance(reason, str):
            raise ControlError(400, "reason is a string")
        if subscription is not None and subscription not in self._subscriptions:
            raise ControlError(404, "no such subscription")
        if retry_after is not None:
            retry_after = str(retry_after)
        if count is not None and (not isinstance(count, int) or count < 1):
            raise ControlError(400, "count is a positive integer")
        if seconds is not None and (not isinstance(seconds, int | float) or seconds <= 0):
            raise ControlError(400, "seconds is a positive number")
        outcome = self.script(
            status,
            reason,
            subscription=subscription,
            retry_after=retry_after,
            count=count,
            seconds=seconds,
        )
        return asdict(outcome)


def decrypt_aes128gcm(
    body: bytes, receiver: ec.EllipticCurvePrivateKey, auth_secret: bytes
) -> bytes:
    """Decrypt an RFC 8291 message as a user agent does.

    RFC 8188 §2.1 header: salt (16) | rs (uint32) | idlen (1) | keyid (idlen; for Web Push the
    sender's 65-byte public key, RFC 8291 §4). RFC 8291 §3.4: IKM = HKDF(salt=auth_secret,
    ikm=ECDH, info="WebPush: info\\0" | ua_public | as_public, 32); RFC 8188 §2.2-2.3:
    CEK = HKDF(salt, IKM, "Content-Encoding: aes128gcm\\0", 16), NONCE = HKDF(salt, IKM,
    "Content-Encoding: nonce\\0", 12). One record, ending in the delimiter 0x02 then zeros.

    Raises:
        ValueError: saying what is wrong.
    """
    if len(body) < 21:
        raise ValueError("shorter than the aes128gcm header")
    salt, rs, idlen = body[:16], int.from_bytes(body[16:20], "big"), body[20]
    if rs < 18:
        raise ValueError(f"record size {rs} is below 18")
    if idlen != 65:
        raise ValueError("the keyid must be the sender's 65-byte public key")
    sender_raw = body[21:86]
    if len(sender_raw) != 65 or sender_raw[0] != 4:
        raise ValueError("the keyid is not an uncompressed P-256 point")
    try:
        sender = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), sender_raw)
    except ValueError:
        raise ValueError("the keyid is not a point on P-256") from None
    record = body[86:]
    if len(record) > rs:
        raise ValueError("more than one record (Web Push allows one)")
    if len(record) < 17:
        raise ValueError("the record is shorter than its tag")
    ua_public = receiver.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    shared = receiver.exchange(ec.ECDH(), sender)
    ikm = HKDF(
        hashes.SHA256(), 32, auth_secret, b"WebPush: info\x00" + ua_public + sender_raw
    ).derive(shared)
    cek = HKDF(hashes.SHA256(), 16, salt, b"Content-Encoding: aes128gcm\x00").derive(ikm)
    nonce = HKDF(hashes.SHA256(), 12, salt, b"Content-Encoding: nonce\x00").derive(ikm)
    try:
        padded = AESGCM(cek).decrypt(nonce, record, None)
    except InvalidTag:
        raise ValueError("authentication tag mismatch (wrong keys or corrupted)") from None
    end = len(padded)
    while end > 0 and padded[end - 1] == 0:
        end -= 1
    if end == 0 or padded[end - 1] != 2:
        raise ValueError("the last record's padding delimiter is not 0x02")
    return padded[: end - 1]


def _text(data: bytes | None) -> str | None:
    if data is None:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _json_or_none(text: str | None) -> Any:
    if text is None:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return None
