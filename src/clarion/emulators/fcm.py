"""A local FCM HTTP v1 service with its OAuth token endpoint, on one port, and a plain HTTP/1.1
JSON control API on another.

The service port speaks HTTP/2 and HTTP/1.1 on the same socket, as Google's front ends do: over
TLS the client's ALPN choice (``h2`` or ``http/1.1``) decides; in cleartext, a connection that
opens with the HTTP/2 preface is HTTP/2 (prior knowledge, "h2c"), any other HTTP/1.1. It serves:

- ``POST /token``: Google's OAuth 2.0 token endpoint for service accounts: an RS256 JWT
  assertion, verified against the public keys registered for its ``iss``, exchanged for an
  access token that expires;
- ``POST /v1/projects/{project}/messages:send``: FCM's one send method, checking the bearer
  token, the project, the message, the quota, and answering ``{"name": ...}`` or Google's error
  JSON (``google.rpc.Status`` with ``details[].errorCode``).

Written from Google's documentation (the service-account OAuth guide, the FCM v1 REST reference,
its ErrorCode table, "Throttling and quotas"), as summarised in research/protocols.md §2; it
imports nothing from Clarion's client side. docs/emulators.md lists what is checked and the known
deviations.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import math
import re
import secrets
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import jwt
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from clarion.emulators.common import (
    Emulator,
    bound_port,
    check_certificate_files,
    load_cert_chain,
    self_signed_certificate,
)

Clock = Callable[[], float]
"""Seconds since the UNIX epoch; injectable so tests can expire tokens and end windows."""


def system_clock() -> float:
    return time.time()  # noqa: TID251 - the emulator's own wall clock; tests inject theirs


TOKEN_PATH = "/token"  # noqa: S105 (a path, not a secret)
SEND_PATH = re.compile(r"^/v1/projects/(?P<project>[^/?]+)/messages:send$")
GRANT_TYPE = "urn:ietf:params:oauth:grant-type:jwt-bearer"
# [G-SA] "aud ... When making an access token request this value is always
# https://oauth2.googleapis.com/token"; the two older token URIs are still honoured by Google.
GOOGLE_AUDIENCES = frozenset(
    {
        "https://oauth2.googleapis.com/token",
        "https://www.googleapis.com/oauth2/v4/token",
        "https://accounts.google.com/o/oauth2/token",
    }
)
# Scopes that may call messages:send (FCM v1 reference, "Authorization scopes").
SEND_SCOPES = frozenset(
    {
        "https://www.googleapis.com/auth/firebase.messaging",
        "https://www.googleapis.com/auth/cloud-platform",
    }
)
ASSERTION_MAX_SECONDS = 3600  # [G-SA] exp at most one hour after iat
CLOCK_SKEW_SECONDS = 300  # an assertion issued this far in the future is still taken
ACCESS_TOKEN_SECONDS = 3599  # what Google's token endpoint hands out
PAYLOAD_LIMIT = 4096  # [F-ERR] bytes of payload for a message to a token
TOPIC_PAYLOAD_LIMIT = 2048  # [F-ERR] ... and to a topic (or a condition: topics)
MAX_TTL_SECONDS = 2_419_200  # [F-ERR] android.ttl, four weeks
REQUEST_LIMIT = 1_048_576  # Google's request size limit for this API
DEFAULT_QUOTA_PER_MINUTE = 600_000  # [F-QUOTA] messages per minute per project
MAX_CONDITION_TOPICS = 5  # [FCM v1 reference, Message.condition]

TOKEN = re.compile(r"^[A-Za-z0-9_\-:.]{1,4096}$")
TOPIC = re.compile(r"^[A-Za-z0-9\-_.~%]{1,900}$")
CONDITION_TOPIC = re.compile(r"'([A-Za-z0-9\-_.~%]+)' in topics")
CONDITION = re.compile(r"^[\s()!&|]*('[A-Za-z0-9\-_.~%]+' in topics[\s()!&|]*)+$")
TTL = re.compile(r"^(\d+)(\.\d{1,9})?s$")
ANALYTICS_LABEL = re.compile(r"^[a-zA-Z0-9\-_.~%]{1,50}$")
PRIORITIES = frozenset({"normal", "high", "NORMAL", "HIGH"})

FCM_ERROR = "type.googleapis.com/google.firebase.fcm.v1.FcmError"
BAD_REQUEST = "type.googleapis.com/google.rpc.BadRequest"
ERROR_INFO = "type.googleapis.com/google.rpc.ErrorInfo"

# [F-ERR] FCM's errorCode → (HTTP status, google.rpc status, message).
ERROR_CODES: dict[str, tuple[int, str, str]] = {
    "UNSPECIFIED_ERROR": (400, "INVALID_ARGUMENT", "No more information is available."),
    "INVALID_ARGUMENT": (400, "INVALID_ARGUMENT", "Request contains an invalid argument."),
    "UNREGISTERED": (404, "NOT_FOUND", "Requested entity was not found."),
    "SENDER_ID_MISMATCH": (403, "PERMISSION_DENIED", "SenderId mismatch"),
    "QUOTA_EXCEEDED": (429, "RESOURCE_EXHAUSTED", "Quota exceeded for sending messages."),
    "UNAVAILABLE": (503, "UNAVAILABLE", "The service is currently unavailable."),
    "INTERNAL": (500, "INTERNAL", "Internal error encountered."),
    "THIRD_PARTY_AUTH_ERROR": (401, "UNAUTHENTICATED", "Auth error from APNS or Web Push Service"),
}
RPC_STATUSES = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    405: "METHOD_NOT_ALLOWED",
    413: "INVALID_ARGUMENT",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    503: "UNAVAILABLE",
}
MISSING_CREDENTIAL = (
    "Request is missing required authentication credential. Expected OAuth 2 access token, "
    "login cookie or other valid authentication credential. See "
    "https://developers.google.com/identity/sign-in/web/devconsole-project."
)
INVALID_CREDENTIAL = (
    "Request had invalid authentication credentials. Expected OAuth 2 access token, login "
    "cookie or other valid authentication credential. See "
    "https://developers.google.com/identity/sign-in/web/devconsole-project."
)
SHORT_LIVED = (
    "Invalid JWT: Token must be a short-lived token (60 minutes) and in a reasonable timeframe. "
    "Check your iat and exp values in the JWT claim."
)
MESSAGE_FIELDS = frozenset(
    {
        "name",
        "data",
        "notification",
        "android",
        "webpush",
        "apns",
        "fcm_options",
        "token",
        "topic",
        "condition",
        "fid",
    }
)
H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
_PHRASES = {
    200: "OK",
    201: "Created",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    411: "Length Required",
    413: "Payload Too Large",
    429: "Too Many Requests",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    http_version: str


@dataclass
class Response:
    status: int
    body: bytes = b""
    headers: list[tuple[str, str]] = field(default_factory=list)


@dataclass
class ServiceAccountKey:
    client_email: str
    project_id: str
    keys: dict[str, rsa.RSAPublicKey]  # private_key_id → public key ("" when none was given)


@dataclass
class AccessTokenGrant:
    client_email: str
    project_id: str
    scopes: frozenset[str]
    expires_at: float


@dataclass
class ScriptedOutcome:
    """An answer forced for one target (a token or a topic; every one when `target` is None),
    persistent until cleared unless bounded by `remaining` requests or an `until` clock time."""

    error_code: str
    status: int
    message: str
    target: str | None = None
    retry_after: int | None = None
    remaining: int | None = None
    until: float | None = None
    id: int = 0


@dataclass
class TokenEndpointOutcome:
    """An answer forced on the OAuth token endpoint (an outage of Google's auth)."""

    status: int
    error: str
    description: str
    retry_after: int | None = None
    remaining: int | None = None
    until: float | None = None
    id: int = 0


@dataclass
class Bucket:
    per_minute: int
    level: float
    updated: float


class ControlError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class _Rejected(Exception):
    """Validation failed: the answer to send."""

    def __init__(self, response: Response) -> None:
        super().__init__(response.status)
        self.response = response


class FcmEmulator(Emulator):
    """Run with ``await start()`` / ``await stop()`` (or ``run(stop)``); ports are read back from
    ``port`` and ``control_port`` (pass 0 for ephemeral ones)."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        control_port: int = 0,
        tls: bool = True,
        cert_file: Path | None = None,
        key_file: Path | None = None,
        clock: Clock = system_clock,
        quota_per_minute: int = DEFAULT_QUOTA_PER_MINUTE,
        registered_only: bool = False,
    ) -> None:
        check_certificate_files(cert_file, key_file)
        self.host = host
        self.tls = tls
        self.latency_ms = 0.0
        self.registered_only = registered_only
        self.quota_per_minute = quota_per_minute
        self.received: list[dict[str, Any]] = []
        self.attempts: list[dict[str, Any]] = []
        self.token_requests: list[dict[str, Any]] = []
        self._requested_port = port
        self._requested_control_port = control_port
        self._cert_file = cert_file
        self._key_file = key_file
        self._clock = clock
        self._certificate_pem: bytes | None = None
        self._accounts: dict[str, ServiceAccountKey] = {}
        self._grants: dict[str, AccessTokenGrant] = {}
        self._tokens: dict[str, str | None] = {}  # registration token → project (None: gone)
        self._buckets: dict[str, Bucket] = {}
        self._outcomes: list[ScriptedOutcome] = []
        self._token_outcomes: list[TokenEndpointOutcome] = []
        self._ids = itertools.count(1)
        self._message_ids = itertools.count(1)
        self._connection_ids = itertools.count(1)
        self._writers: set[asyncio.StreamWriter] = set()
        self._server: asyncio.Server | None = None
        self._control_server: asyncio.Server | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        context = self._ssl_context() if self.tls else None
        self._server = await asyncio.start_server(
            self._serve, self.host, self._requested_port, ssl=context
        )
        self._control_server = await asyncio.start_server(
            self._serve_control, self.host, self._requested_control_port
        )

    async def stop(self) -> None:
        for server in (self._server, self._control_server):
            if server is not None:
                server.close()
        for writer in list(self._writers):
            writer.close()
        for server in (self._server, self._control_server):
            if server is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(server.wait_closed(), 2)

    @property
    def port(self) -> int:
        return bound_port(self._server)

    @property
    def control_port(self) -> int:
        return bound_port(self._control_server)

    @property
    def base_url(self) -> str:
        """Where FCM is: ``https://host:port`` (or ``http://`` without TLS)."""
        scheme = "https" if self.tls else "http"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{host}:{self.port}"

    @property
    def token_url(self) -> str:
        """The OAuth token endpoint, for a service account's ``token_uri``."""
        return self.base_url + TOKEN_PATH

    # -- programmatic control (the control API calls these) ----------------------------------

    def register_account(
        self, client_email: str, public_key_pem: str, project_id: str, key_id: str | None = None
    ) -> None:
        """Let `client_email` (a service account of `project_id`) sign assertions with this RSA
        key; a private key PEM or a certificate is accepted too, its public half is kept.
        Several keys may be registered for one account (as Google keeps up to ten)."""
        key = _rsa_public_key(public_key_pem)
        account = self._accounts.get(client_email)
        if account is None or account.project_id != project_id:
            account = self._accounts[client_email] = ServiceAccountKey(client_email, project_id, {})
        account.keys[key_id or ""] = key

    def delete_account(self, client_email: str) -> bool:
        """Forget an account (as when it is deleted in the console): its assertions are
        refused and the access tokens it holds stop working."""
        self._grants = {k: g for k, g in self._grants.items() if g.client_email != client_email}
        return self._accounts.pop(client_email, None) is not None

    def accounts(self) -> list[dict[str, Any]]:
        return [
            {
                "client_email": a.client_email,
                "project_id": a.project_id,
                "key_ids": [k for k in a.keys if k],
            }
            for a in self._accounts.values()
        ]

    def create_service_account(
        self, project_id: str, *, token_uri: str | None = None, client_email: str | None = None
    ) -> dict[str, Any]:
        """A new service account of `project_id`, registered here, as the JSON key file Google
        hands out (private key included). Its ``token_uri`` is this emulator's token endpoint
        once started (Google's otherwise), unless one is given."""
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        key_id = secrets.token_hex(20)
        email = (
            client_email or f"clarion-{secrets.token_hex(4)}@{project_id}.iam.gserviceaccount.com"
        )
        private = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode()
        self.register_account(email, private, project_id, key_id)
        if token_uri is None:
            token_uri = self.token_url if self._server is not None else min(GOOGLE_AUDIENCES)
        return {
            "type": "service_account",
            "project_id": project_id,
            "private_key_id": key_id,
            "private_key": private,
            "client_email": email,
            "client_id": str(secrets.randbelow(10**21)),
            "auth_uri": "https://accounts.google.com/o/oauth2/auth",
            "token_uri": token_uri,
            "auth_provider_x509_cert_url": "https://www.googleapis.com/oauth2/v1/certs",
            "client_x509_cert_url": "https://www.googleapis.com/robot/v1/metadata/x509/"
            + email.replace("@", "%40"),
            "universe_domain": "googleapis.com",
        }

    def register_tokens(self, project_id: str, tokens: list[str]) -> None:
        """These registration tokens belong to apps of `project_id`: another project sending to
        them gets SENDER_ID_MISMATCH. With `registered_only`, tokens never registered get
        UNREGISTERED."""
        for token in tokens:
            self._tokens[token] = project_id

    def unregister_tokens(self, tokens: list[str]) -> None:
        """These tokens are gone (the app was uninstalled): UNREGISTERED from now on."""
        for token in tokens:
            self._tokens[token] = None

    def script(
        self,
        error_code: str,
        *,
        target: str | None = None,
        status: int | None = None,
        message: str | None = None,
        retry_after: int | None = None,
        count: int | None = None,
        seconds: float | None = None,
    ) -> ScriptedOutcome:
        """Answer sends to `target` (a registration token or a topic name; every send when
        None) with FCM's `error_code`: for the next `count` sends, for `seconds` from now, or
        until cleared. The HTTP status and message follow the error code unless given;
        `retry_after` adds a ``Retry-After`` header. An `error_code` of ``"UNAUTHENTICATED"``
        is a plain 401 without FcmError (the access token refused)."""
        default = ERROR_CODES.get(error_code)
        if default is None and status is None:
            if error_code != "UNAUTHENTICATED":
                raise ValueError(f"unknown FCM error code {error_code!r}; give a status")
            default = (401, "UNAUTHENTICATED", INVALID_CREDENTIAL)
        outcome = ScriptedOutcome(
            error_code=error_code,
            status=status if status is not None else default[0] if default else 500,
            message=message or (default[2] if default else error_code),
            target=target,
            retry_after=retry_after,
            remaining=count,
            until=None if seconds is None else self._clock() + seconds,
            id=next(self._ids),
        )
        self._outcomes.append(outcome)
        return outcome

    def clear_outcomes(self, target: str | None = None) -> int:
        kept = [o for o in self._outcomes if target is not None and o.target != target]
        cleared = len(self._outcomes) - len(kept)
        self._outcomes = kept
        return cleared

    def script_token_endpoint(
        self,
        status: int,
        error: str,
        description: str = "",
        *,
        retry_after: int | None = None,
        count: int | None = None,
        seconds: float | None = None,
    ) -> TokenEndpointOutcome:
        """Answer token requests with `status` and ``{"error", "error_description"}``."""
        outcome = TokenEndpointOutcome(
            status=status,
            error=error,
            description=description,
            retry_after=retry_after,
            remaining=count,
            until=None if seconds is None else self._clock() + seconds,
            id=next(self._ids),
        )
        self._token_outcomes.append(outcome)
        return outcome

    def set_quota(self, project_id: str, per_minute: int) -> None:
        """Messages per minute `project_id` may send (a bucket that refills continuously);
        beyond it, 429 QUOTA_EXCEEDED with Retry-After."""
        self._buckets[project_id] = Bucket(per_minute, float(per_minute), self._clock())

    def revoke_access_tokens(self) -> int:
        """Every access token handed out stops working (401, no FcmError), as when Google
        rotates them early; clients must fetch new ones."""
        revoked = len(self._grants)
        self._grants.clear()
        return revoked

    def reset(self) -> None:
        """Forget received messages, attempts, token requests, scripted outcomes, quotas and
        latency; keep accounts, registered tokens and access tokens."""
        self.received.clear()
        self.attempts.clear()
        self.token_requests.clear()
        self._outcomes.clear()
        self._token_outcomes.clear()
        self._buckets.clear()
        self.latency_ms = 0.0

    # -- TLS ----------------------------------------------------------------------------------

    def _ssl_context(self) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.set_alpn_protocols(["h2", "http/1.1"])
        if self._cert_file is not None and self._key_file is not None:
            context.load_cert_chain(self._cert_file, self._key_file)
            self._certificate_pem = self._cert_file.read_bytes()
            return context
        certificate, key = self_signed_certificate(self.host, "Clarion FCM emulator")
        load_cert_chain(context, certificate, key)
        self._certificate_pem = certificate
        return context

    # -- the service port: HTTP/2 or HTTP/1.1 --------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            ssl_object = writer.get_extra_info("ssl_object")
            alpn = ssl_object.selected_alpn_protocol() if ssl_object is not None else None
            first = b""
            if alpn is None:
                # Cleartext (or TLS without ALPN): the HTTP/2 preface says which protocol.
                while len(first) < len(H2_PREFACE) and H2_PREFACE.startswith(first):
                    chunk = await reader.read(65536)
                    if not chunk:
                        return
                    first += chunk
            if alpn == "h2" or (alpn is None and first.startswith(H2_PREFACE)):
                await self._serve_h2(reader, writer, first)
            else:
                await _serve_http1(reader, writer, first, self._answer)
        except (ConnectionError, ssl.SSLError, OSError, asyncio.IncompleteReadError):
            pass
        finally:
            self._writers.discard(writer)
            writer.close()

    async def _serve_h2(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, first: bytes
    ) -> None:
        config = h2.config.H2Configuration(client_side=False, header_encoding="utf-8")
        conn = h2.connection.H2Connection(config=config)
        conn.initiate_connection()
        writer.write(conn.data_to_send())
        streams: dict[int, tuple[list[tuple[str, str]], bytearray]] = {}
        tasks: set[asyncio.Task[None]] = set()
        connection_id = next(self._connection_ids)

        async def respond(stream_id: int, request: Request) -> None:
            response = await self._answer(request)
            headers = [
                (":status", str(response.status)),
                *response.headers,
                ("content-length", str(len(response.body))),
            ]
            try:
                conn.send_headers(stream_id, headers, end_stream=not response.body)
                if response.body:
                    conn.send_data(stream_id, response.body, end_stream=True)
            except (h2.exceptions.ProtocolError, h2.exceptions.FlowControlError):
                return
            writer.write(conn.data_to_send())

        data = first
        try:
            while True:
                if data:
                    try:
                        events = conn.receive_data(data)
                    except h2.exceptions.ProtocolError:
                        writer.write(conn.data_to_send())
                        return
                    for event in events:
                        if isinstance(event, h2.events.RequestReceived):
                            assert event.stream_id is not None
                            headers = [(str(k), str(v)) for k, v in event.headers or []]
                            streams[event.stream_id] = (headers, bytearray())
                        elif isinstance(event, h2.events.DataReceived):
                            assert event.stream_id is not None
                            held = streams.get(event.stream_id)
                            if held is not None and len(held[1]) <= REQUEST_LIMIT:
                                held[1].extend(event.data or b"")
                            with contextlib.suppress(h2.exceptions.ProtocolError):
                                conn.acknowledge_received_data(
                                    event.flow_controlled_length or 0, event.stream_id
                                )
                        elif isinstance(event, h2.events.StreamEnded):
                            assert event.stream_id is not None
                            got = streams.pop(event.stream_id, None)
                            if got is not None:
                                pseudo = dict(got[0])
                                request = Request(
                                    method=pseudo.get(":method", ""),
                                    path=pseudo.get(":path", ""),
                                    headers={k.lower(): v for k, v in got[0] if k[0] != ":"},
                                    body=bytes(got[1]),
                                    http_version=f"HTTP/2 ({connection_id})",
                                )
                                task = asyncio.create_task(respond(event.stream_id, request))
                                tasks.add(task)
                                task.add_done_callback(tasks.discard)
                        elif isinstance(event, h2.events.StreamReset):
                            streams.pop(event.stream_id or 0, None)
                        elif isinstance(event, h2.events.ConnectionTerminated):
                            return
                    writer.write(conn.data_to_send())
                    await writer.drain()
                data = await reader.read(65536)
                if not data:
                    return
        finally:
            for task in tasks:
                task.cancel()

    async def _answer(self, request: Request) -> Response:
        if request.path.split("?")[0] == TOKEN_PATH:
            return self._token_endpoint(request)
        response = self._send_endpoint(request)
        if self.latency_ms:
            await asyncio.sleep(self.latency_ms / 1000)
        return response

    # -- POST /token: Google's OAuth 2.0 token endpoint [G-SA] ---------------------------------

    def _token_endpoint(self, request: Request) -> Response:
        now = self._clock()
        record: dict[str, Any] = {
            "client_email": None,
            "status": 200,
            "error": None,
            "time": now,
            "http_version": request.http_version,
        }
        self.token_requests.append(record)

        def fail(status: int, error: str, description: str) -> Response:
            record.update(status=status, error=f"{error}: {description}")
            body = json.dumps({"error": error, "error_description": description}).encode()
            return Response(status, body, [("content-type", "application/json; charset=utf-8")])

        if request.method != "POST":
            return fail(405, "invalid_request", "the token endpoint takes POST")
        form = parse_qs(request.body.decode("utf-8", "replace"), keep_blank_values=True)
        scripted = self._token_scripted(now)
        if scripted is not None:
            response = fail(scripted.status, scripted.error, scripted.description)
            if scripted.retry_after is not None:
                response.headers.append(("retry-after", str(scripted.retry_after)))
            return response
        grant_type = (form.get("grant_type") or [""])[0]
        if grant_type != GRANT_TYPE:
            return fail(400, "unsupported_grant_type", f"Invalid grant_type: {grant_type}")
        assertion = (form.get("assertion") or [""])[0]
        if not assertion:
            return fail(400, "invalid_request", "Missing required parameter: assertion")
        try:
            header = jwt.get_unverified_header(assertion)
            unverified = jwt.decode(assertion, options={"verify_signature": False})
        except jwt.InvalidTokenError:
            return fail(400, "invalid_grant", "Invalid JWT: the assertion is not a JWT")
        issuer = unverified.get("iss")
        record["client_email"] = issuer
        if header.get("alg") != "RS256":
            return fail(400, "invalid_grant", "Invalid JWT Signature.")
        account = self._accounts.get(issuer) if isinstance(issuer, str) else None
        if account is None:
            return fail(400, "invalid_grant", "Invalid grant: account not found")
        kid = header.get("kid")
        if isinstance(kid, str) and kid:
            candidates = [account.keys[kid]] if kid in account.keys else []
        else:
            candidates = list(account.keys.values())
        claims: dict[str, Any] | None = None
        for key in candidates:
            try:
                claims = jwt.decode(
                    assertion,
                    key,
                    algorithms=["RS256"],
                    options={
                        "verify_exp": False,
                        "verify_nbf": False,
                        "verify_iat": False,
                        "verify_aud": False,
                        "verify_iss": False,
                    },
                )
                break
            except jwt.InvalidTokenError:
                continue
        if claims is None:
            return fail(400, "invalid_grant", "Invalid JWT Signature.")
        audience = claims.get("aud")
        if audience not in GOOGLE_AUDIENCES and audience != self.token_url:
            return fail(400, "invalid_grant", "Invalid JWT: Failed audience check.")
        issued, expires = claims.get("iat"), claims.get("exp")
        if (
            not isinstance(issued, int)
            or not isinstance(expires, int)
            or isinstance(issued, bool)
            or isinstance(expires, bool)
            or expires - issued > ASSERTION_MAX_SECONDS
            or expires <= now
            or issued > now + CLOCK_SKEW_SECONDS
        ):
            return fail(400, "invalid_grant", SHORT_LIVED)
        scope = claims.get("scope")
        scopes = frozenset(scope.split()) if isinstance(scope, str) else frozenset()
        if not scopes:
            return fail(400, "invalid_scope", "Invalid OAuth scope or ID token audience provided.")
        value = "ya29.emulated-" + secrets.token_urlsafe(48)
        self._grants[value] = AccessTokenGrant(
            client_email=account.client_email,
            project_id=account.project_id,
            scopes=scopes,
            expires_at=now + ACCESS_TOKEN_SECONDS,
        )
        body = json.dumps(
            {"access_token": value, "expires_in": ACCESS_TOKEN_SECONDS, "token_type": "Bearer"}
        ).encode()
        return Response(200, body, [("content-type", "application/json; charset=utf-8")])

    def _token_scripted(self, now: float) -> TokenEndpointOutcome | None:
        self._token_outcomes = [
            o
            for o in self._token_outcomes
            if (o.remaining is None or o.remaining > 0) and (o.until is None or o.until > now)
        ]
        if not self._token_outcomes:
            return None
        outcome = self._token_outcomes[-1]
        if outcome.remaining is not None:
            outcome.remaining -= 1
        return outcome

    # -- POST /v1/projects/{project}/messages:send [FA][F-ERR] ---------------------------------

    def _send_endpoint(self, request: Request) -> Response:
        now = self._clock()
        path = request.path.split("?")[0]
        match = SEND_PATH.match(path)
        project = match.group("project") if match else None
        attempt: dict[str, Any] = {
            "project": project,
            "method": request.method,
            "path": request.path,
            "target": _target_of(request.body),
            "status": 200,
            "error_code": None,
            "client_email": None,
            "time": now,
            "http_version": request.http_version,
        }
        self.attempts.append(attempt)
        try:
            grant = self._authorize(request, match, project)
            attempt["client_email"] = grant.client_email
            assert project is not None
            self._spend_quota(project, now)
            message, validate_only = self._validate(request.body)
            scripted = self._scripted(message, now)
            if scripted is not None:
                raise _Rejected(_scripted_response(scripted))
            self._check_registration(message.get("token"), project)
        except _Rejected as rejected:
            attempt["status"] = rejected.response.status
            attempt["error_code"] = _error_code_of(rejected.response)
            return rejected.response
        if validate_only:
            name = f"projects/{project}/messages/fake_message_id"
        else:
            name = f"projects/{project}/messages/0:{int(now * 1e6)}%{next(self._message_ids):016x}"
            self.received.append(
                {
                    "project": project,
                    "name": name,
                    "token": message.get("token"),
                    "topic": message.get("topic"),
                    "condition": message.get("condition"),
                    "message": message,
                    "client_email": grant.client_email,
                    "headers": {
                        k: v
                        for k, v in request.headers.items()
                        if k.startswith(("x-goog", "x-firebase", "user-agent"))
                    },
                    "time": now,
                    "http_version": request.http_version,
                }
            )
        body = json.dumps({"name": name}).encode()
        return Response(200, body, [("content-type", "application/json; charset=UTF-8")])

    def _authorize(
        self, request: Request, match: re.Match[str] | None, project: str | None
    ) -> AccessTokenGrant:
        if match is None or project is None:
            raise _Rejected(_error(404, "Requested entity was not found."))
        if request.method != "POST":
            raise _Rejected(_error(405, f"Method {request.method} is not allowed here."))
        authorization = request.headers.get("authorization", "")
        scheme, _, value = authorization.partition(" ")
        if not authorization or scheme.lower() != "bearer" or not value.strip():
            raise _Rejected(_unauthenticated(MISSING_CREDENTIAL))
        grant = self._grants.get(value.strip())
        if grant is None or grant.expires_at <= self._clock():
            raise _Rejected(_unauthenticated(INVALID_CREDENTIAL))
        if not grant.scopes & SEND_SCOPES:
            raise _Rejected(
                _error(
                    403,
                    "Request had insufficient authentication scopes.",
                    details=[
                        {
                            "@type": ERROR_INFO,
                            "reason": "ACCESS_TOKEN_SCOPE_INSUFFICIENT",
                            "domain": "googleapis.com",
                        }
                    ],
                )
            )
        if grant.project_id != project:
            raise _Rejected(
                _error(
                    403,
                    "Permission 'cloudmessaging.messages.create' denied on resource "
                    f"'//cloudresourcemanager.googleapis.com/projects/{project}' "
                    "(or it may not exist).",
                    details=[
                        {
                            "@type": ERROR_INFO,
                            "reason": "IAM_PERMISSION_DENIED",
                            "domain": "cloudresourcemanager.googleapis.com",
                        }
                    ],
                )
            )
        return grant

    def _spend_quota(self, project: str, now: float) -> None:
        bucket = self._buckets.get(project)
        if bucket is None:
            bucket = self._buckets[project] = Bucket(
                self.quota_per_minute, float(self.quota_per_minute), now
            )
        rate = bucket.per_minute / 60.0
        bucket.level = min(float(bucket.per_minute), bucket.level + (now - bucket.updated) * rate)
        bucket.updated = now
        if bucket.level < 1.0:
            wait = max(1, math.ceil((1.0 - bucket.level) / rate)) if rate > 0 else 60
            raise _Rejected(_fcm_error("QUOTA_EXCEEDED", retry_after=wait))
        bucket.level -= 1.0

    def _scripted(self, message: dict[str, Any], now: float) -> ScriptedOutcome | None:
        self._outcomes = [
            o
            for o in self._outcomes
            if (o.remaining is None or o.remaining > 0) and (o.until is None or o.until > now)
        ]
        targets = {message.get("token"), message.get("topic")} - {None}
        own = [o for o in self._outcomes if o.target is not None and o.target in targets]
        candidates = own or [o for o in self._outcomes if o.target is None]
        if not candidates:
            return None
        outcome = candidates[-1]  # the latest script wins
        if outcome.remaining is not None:
            outcome.remaining -= 1
        return outcome

    def _check_registration(self, token: str | None, project: str) -> None:
        if token is None:
            return
        if token in self._tokens:
            owner = self._tokens[token]
            if owner is None:
                raise _Rejected(_fcm_error("UNREGISTERED"))
            if owner != project:
                raise _Rejected(_fcm_error("SENDER_ID_MISMATCH"))
        elif self.registered_only:
            raise _Rejected(_fcm_error("UNREGISTERED"))

    def _validate(self, body: bytes) -> tuple[dict[str, Any], bool]:
        """The message, and whether it is a dry run; `_Rejected` as FCM would answer."""
        if len(body) > REQUEST_LIMIT:
            raise _Rejected(
                _error(400, f"Request payload size exceeds the limit: {REQUEST_LIMIT} bytes.")
            )
        try:
            document = json.loads(body)
        except (ValueError, RecursionError):
            raise _Rejected(
                _bad_request("Invalid JSON payload received.", "", "not JSON")
            ) from None
        if not isinstance(document, dict):
            raise _Rejected(_bad_request("Invalid JSON payload received.", "", "not an object"))
        for name in document:
            if name not in ("message", "validate_only"):
                raise _Rejected(_unknown_field(name, ""))
        validate_only = document.get("validate_only", False)
        if not isinstance(validate_only, bool):
            raise _Rejected(_type_error("validate_only", "TYPE_BOOL", validate_only))
        message = document.get("message")
        if not isinstance(message, dict):
            raise _Rejected(_fcm_error("INVALID_ARGUMENT", "Message is required."))
        for name in message:
            if name not in MESSAGE_FIELDS:
                raise _Rejected(_unknown_field(name, "message"))
        targets = [t for t in ("token", "topic", "condition") if message.get(t) is not None]
        for name in targets:
            if not isinstance(message[name], str):
                raise _Rejected(_type_error(f"message.{name}", "TYPE_STRING", message[name]))
        if len(targets) != 1:
            raise _Rejected(
                _fcm_error(
                    "INVALID_ARGUMENT",
                    "Exactly one of message.token, message.topic or message.condition "
                    "must be specified.",
                )
            )
        limit = PAYLOAD_LIMIT
        if "token" in targets and not TOKEN.match(message["token"]):
            raise _Rejected(
                _fcm_error(
                    "INVALID_ARGUMENT",
                    "The registration token is not a valid FCM registration token",
                )
            )
        if "topic" in targets:
            limit = TOPIC_PAYLOAD_LIMIT
            if not TOPIC.match(message["topic"]):
                raise _Rejected(_fcm_error("INVALID_ARGUMENT", "Invalid topic name."))
        if "condition" in targets:
            limit = TOPIC_PAYLOAD_LIMIT
            condition = message["condition"]
            topics = CONDITION_TOPIC.findall(condition)
            if not CONDITION.match(condition) or not 0 < len(topics) <= MAX_CONDITION_TOPICS:
                raise _Rejected(_fcm_error("INVALID_ARGUMENT", "Invalid condition expression."))
        size = 0
        size += _string_map(message, "data", "message.data")
        size += _strings(
            message, "notification", "message.notification", ("title", "body", "image")
        )
        android = message.get("android")
        if android is not None:
            if not isinstance(android, dict):
                raise _Rejected(_type_error("message.android", "TYPE_MESSAGE", android))
            size += _string_map(android, "data", "message.android.data")
            notification = android.get("notification")
            if isinstance(notification, dict):
                size += sum(len(v.encode()) for v in notification.values() if isinstance(v, str))
            ttl = android.get("ttl")
            if ttl is not None:
                found = TTL.match(ttl) if isinstance(ttl, str) else None
                if found is None or int(found.group(1)) > MAX_TTL_SECONDS:
                    raise _Rejected(
                        _bad_request(
                            "Invalid value at 'message.android.ttl' "
                            "(type.googleapis.com/google.protobuf.Duration)",
                            "message.android.ttl",
                            "a duration of 0 to 2419200 seconds, written '<seconds>s'",
                        )
                    )
            priority = android.get("priority")
            if priority is not None and priority not in PRIORITIES:
                raise _Rejected(
                    _bad_request(
                        "Invalid value at 'message.android.priority' "
                        "(type.googleapis.com/google.firebase.fcm.v1.AndroidMessagePriority)",
                        "message.android.priority",
                        "NORMAL or HIGH",
                    )
                )
        webpush = message.get("webpush")
        if webpush is not None:
            if not isinstance(webpush, dict):
                raise _Rejected(_type_error("message.webpush", "TYPE_MESSAGE", webpush))
            size += _string_map(webpush, "data", "message.webpush.data")
            _string_map(webpush, "headers", "message.webpush.headers")
            link = (webpush.get("fcm_options") or {}).get("link")
            if link is not None and not (isinstance(link, str) and link.startswith("https://")):
                raise _Rejected(_fcm_error("INVALID_ARGUMENT", "The link must be an https URL."))
        apns = message.get("apns")
        if apns is not None:
            if not isinstance(apns, dict):
                raise _Rejected(_type_error("message.apns", "TYPE_MESSAGE", apns))
            _string_map(apns, "headers", "message.apns.headers")
        label = (message.get("fcm_options") or {}).get("analytics_label")
        if label is not None and not (isinstance(label, str) and ANALYTICS_LABEL.match(label)):
            raise _Rejected(_fcm_error("INVALID_ARGUMENT", "Invalid analytics label."))
        if size > limit:
            raise _Rejected(
                _fcm_error(
                    "INVALID_ARGUMENT",
                    f"Message is too big: {size} bytes of payload, at most {limit}.",
                )
            )
        return message, validate_only

    # -- the HTTP/1.1 control port -----------------------------------------------------------

    async def _serve_control(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        async def answer(request: Request) -> Response:
            try:
                status, result = self._control(
                    request.method, request.path.split("?")[0], request.body
                )
            except ControlError as exc:
                status, result = exc.status, {"error": exc.message}
            body = json.dumps(result).encode()
            return Response(status, body, [("content-type", "application/json")])

        try:
            await _serve_http1(reader, writer, b"", answer)
        except (ConnectionError, OSError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    def _control(self, method: str, path: str, body: bytes) -> tuple[int, Any]:
        def payload() -> dict[str, Any]:
            try:
                value = json.loads(body or b"{}")
            except ValueError as exc:
                raise ControlError(400, "the body is not JSON") from exc
            if not isinstance(value, dict):
                raise ControlError(400, "the body is not a JSON object")
            return value

        route = (method, path)
        logs = {
            "/control/received": self.received,
            "/control/attempts": self.attempts,
            "/control/token-requests": self.token_requests,
        }
        if path in logs and method == "GET":
            return 200, logs[path]
        if path in logs and method == "DELETE":
            cleared = len(logs[path])
            logs[path].clear()
            return 200, {"cleared": cleared}
        if route == ("POST", "/control/accounts"):
            given = payload()
            try:
                self.register_account(
                    str(given["client_email"]),
                    str(given["public_key"]),
                    str(given["project_id"]),
                    given.get("key_id"),
                )
            except (KeyError, ValueError, TypeError) as exc:
                raise ControlError(
                    400, f"need client_email, project_id and an RSA public_key: {exc}"
                ) from exc
            return 201, {"client_email": given["client_email"], "project_id": given["project_id"]}
        if route == ("GET", "/control/accounts"):
            return 200, self.accounts()
        if method == "DELETE" and path.startswith("/control/accounts/"):
            email = path.removeprefix("/control/accounts/")
            if not self.delete_account(email):
                raise ControlError(404, "no such account")
            return 200, {"deleted": email}
        if route == ("POST", "/control/service-accounts"):
            given = payload()
            project = given.get("project_id")
            if not isinstance(project, str) or not project:
                raise ControlError(400, "project_id is the Firebase project's id")
            token_uri = given.get("token_uri")
            if token_uri is not None and not isinstance(token_uri, str):
                raise ControlError(400, "token_uri is a URL")
            return 201, self.create_service_account(project, token_uri=token_uri)
        if route == ("POST", "/control/tokens"):
            given = payload()
            project, tokens = given.get("project_id"), given.get("tokens")
            if not isinstance(project, str) or not isinstance(tokens, list):
                raise ControlError(400, "need project_id and a list of tokens")
            self.register_tokens(project, [str(t) for t in tokens])
            return 201, {"registered": len(tokens)}
        if method == "DELETE" and path.startswith("/control/tokens/"):
            self.unregister_tokens([path.removeprefix("/control/tokens/")])
            return 200, {"unregistered": 1}
        if route == ("POST", "/control/outcomes"):
            return 201, self._script_from(payload())
        if route == ("GET", "/control/outcomes"):
            return 200, [asdict(o) for o in self._outcomes]
        if route == ("DELETE", "/control/outcomes"):
            return 200, {"cleared": self.clear_outcomes()}
        if route == ("POST", "/control/token-endpoint/outcomes"):
            given = payload()
            status, error = given.get("status"), given.get("error")
            if not isinstance(status, int) or not 400 <= status <= 599:
                raise ControlError(400, "status is an HTTP error status (400-599)")
            if not isinstance(error, str) or not error:
                raise ControlError(400, "error is the OAuth error (invalid_grant, ...)")
            outcome = self.script_token_endpoint(
                status,
                error,
                str(given.get("description", "")),
                retry_after=_optional_int(given, "retry_after"),
                count=_optional_int(given, "count"),
                seconds=_optional_number(given, "seconds"),
            )
            return 201, asdict(outcome)
        if route == ("DELETE", "/control/token-endpoint/outcomes"):
            cleared = len(self._token_outcomes)
            self._token_outcomes.clear()
            return 200, {"cleared": cleared}
        if route == ("POST", "/control/quota"):
            given = payload()
            project, per_minute = given.get("project_id"), given.get("per_minute")
            if not isinstance(project, str) or not isinstance(per_minute, int) or per_minute < 0:
                raise ControlError(400, "need project_id and per_minute >= 0")
            self.set_quota(project, per_minute)
            return 200, {"project_id": project, "per_minute": per_minute}
        if route == ("GET", "/control/quota"):
            now = self._clock()
            return 200, {
                "default_per_minute": self.quota_per_minute,
                "projects": {
                    p: {"per_minute": b.per_minute, "available": b.level, "updated": b.updated}
                    for p, b in self._buckets.items()
                },
                "time": now,
            }
        if route == ("POST", "/control/latency"):
            ms = payload().get("ms")
            if not isinstance(ms, int | float) or ms < 0:
                raise ControlError(400, "ms is a number of milliseconds >= 0")
            self.latency_ms = float(ms)
            return 200, {"ms": self.latency_ms}
        if route == ("GET", "/control/latency"):
            return 200, {"ms": self.latency_ms}
        if route == ("POST", "/control/access-tokens/revoke"):
            return 200, {"revoked": self.revoke_access_tokens()}
        if route == ("POST", "/control/reset"):
            self.reset()
            return 200, {"reset": True}
        raise ControlError(404, f"no route {method} {path}")

    def _script_from(self, given: dict[str, Any]) -> dict[str, Any]:
        error_code, target = given.get("error_code"), given.get("target", given.get("token"))
        status, message = given.get("status"), given.get("message")
        if not isinstance(error_code, str) or not error_code:
            raise ControlError(400, "error_code is FCM's errorCode (UNREGISTERED, ...)")
        if target is not None and not isinstance(target, str):
            raise ControlError(400, "target is a registration token or a topic")
        if status is not None and (not isinstance(status, int) or not 400 <= status <= 599):
            raise ControlError(400, "status is an HTTP error status (400-599)")
        if message is not None and not isinstance(message, str):
            raise ControlError(400, "message is a string")
        try:
            outcome = self.script(
                error_code,
                target=target,
                status=status,
                message=message,
                retry_after=_optional_int(given, "retry_after"),
                count=_optional_int(given, "count"),
                seconds=_optional_number(given, "seconds"),
            )
        except ValueError as exc:
            raise ControlError(400, str(exc)) from exc
        return asdict(outcome)


# --- HTTP/1.1 -------------------------------------------------------------------------------------


async def _serve_http1(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    first: bytes,
    answer: Callable[[Request], Awaitable[Response]],
) -> None:
    """Serve HTTP/1.1 requests one after another on a keep-alive connection: Content-Length
    or chunked bodies; `first` is what was already read off the socket."""
    buffer = bytearray(first)

    async def line() -> bytes:
        while b"\r\n" not in buffer:
            if len(buffer) > 65536:
                raise ValueError("header line too long")
            chunk = await reader.read(65536)
            if not chunk:
                raise asyncio.IncompleteReadError(bytes(buffer), None)
            buffer.extend(chunk)
        end = buffer.index(b"\r\n")
        got = bytes(buffer[:end])
        del buffer[: end + 2]
        return got

    async def exactly(n: int) -> bytes:
        while len(buffer) < n:
            chunk = await reader.read(max(65536, n - len(buffer)))
            if not chunk:
                raise asyncio.IncompleteReadError(bytes(buffer), n)
            buffer.extend(chunk)
        got = bytes(buffer[:n])
        del buffer[:n]
        return got

    while True:
        try:
            request_line = await line()
        except asyncio.IncompleteReadError:
            return
        if not request_line.strip():
            continue
        try:
            method, target, version = request_line.decode("latin-1").split(" ", 2)
        except ValueError:
            return
        headers: dict[str, str] = {}
        while header := await line():
            name, _, value = header.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        if headers.get("transfer-encoding", "").lower() == "chunked":
            chunks = bytearray()
            while True:
                size = int((await line()).split(b";")[0], 16)
                if size == 0:
                    while await line():
                        pass
                    break
                chunks.extend(await exactly(size))
                await line()
                if len(chunks) > REQUEST_LIMIT * 2:
                    return
            body = bytes(chunks)
        else:
            length = int(headers.get("content-length", "0") or "0")
            if length > REQUEST_LIMIT * 2:
                return
            body = await exactly(length) if length else b""
        response = await answer(Request(method, target, headers, body, version.strip()))
        close = headers.get("connection", "").lower() == "close" or version.strip() == "HTTP/1.0"
        head = [f"HTTP/1.1 {response.status} {_PHRASES.get(response.status, 'Error')}"]
        head += [f"{k}: {v}" for k, v in response.headers]
        head.append(f"content-length: {len(response.body)}")
        if close:
            head.append("connection: close")
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + response.body)
        await writer.drain()
        if close:
            return


# --- answers ------------------------------------------------------------------------------------


def _error(
    status: int,
    message: str,
    *,
    details: list[dict[str, Any]] | None = None,
    headers: list[tuple[str, str]] | None = None,
) -> Response:
    """Google's error body: a google.rpc.Status [F-EC]."""
    error: dict[str, Any] = {
        "code": status,
        "message": message,
        "status": RPC_STATUSES.get(status, "UNKNOWN"),
    }
    if details:
        error["details"] = details
    body = json.dumps({"error": error}, indent=2).encode()
    return Response(
        status, body, [("content-type", "application/json; charset=UTF-8"), *(headers or [])]
    )


def _fcm_error(
    code: str, message: str | None = None, *, retry_after: int | None = None
) -> Response:
    status, _, default = ERROR_CODES[code]
    return _error(
        status,
        message or default,
        details=[{"@type": FCM_ERROR, "errorCode": code}],
        headers=[("retry-after", str(retry_after))] if retry_after is not None else None,
    )


def _scripted_response(outcome: ScriptedOutcome) -> Response:
    headers = [("retry-after", str(outcome.retry_after))] if outcome.retry_after else []
    if outcome.error_code == "UNAUTHENTICATED":
        response = _unauthenticated(outcome.message)
        response.headers += headers
        return response
    return _error(
        outcome.status,
        outcome.message,
        details=[{"@type": FCM_ERROR, "errorCode": outcome.error_code}],
        headers=headers,
    )


def _unauthenticated(message: str) -> Response:
    return _error(
        401,
        message,
        headers=[("www-authenticate", 'Bearer realm="https://accounts.google.com/"')],
    )


def _bad_request(message: str, field_name: str, description: str) -> Response:
    return _error(
        400,
        message,
        details=[
            {
                "@type": BAD_REQUEST,
                "fieldViolations": [{"field": field_name, "description": description}],
            }
        ],
    )


def _unknown_field(name: str, where: str) -> Response:
    at = f" at '{where}'" if where else ""
    return _bad_request(
        f'Invalid JSON payload received. Unknown name "{name}"{at}: Cannot find field.',
        f"{where}.{name}" if where else name,
        f'Invalid JSON payload received. Unknown name "{name}"{at}: Cannot find field.',
    )


def _type_error(where: str, kind: str, value: Any) -> Response:
    shown = json.dumps(value)[:40]
    message = f"Invalid value at '{where}' ({kind}), {shown}"
    return _bad_request(message, where, message)


def _string_map(holder: dict[str, Any], name: str, where: str) -> int:
    """Bytes of keys and values of a string→string map (FCM counts both [F-ERR]); a value of
    another type is refused as the JSON→proto mapping refuses it."""
    value = holder.get(name)
    if value is None:
        return 0
    if not isinstance(value, dict):
        raise _Rejected(_type_error(where, "TYPE_MESSAGE", value))
    size = 0
    for index, (key, item) in enumerate(value.items()):
        if not isinstance(item, str):
            raise _Rejected(_type_error(f"{where}[{index}].value", "TYPE_STRING", item))
        if name == "data" and (key in ("from", "gcm") or key.lower().startswith("google")):
            raise _Rejected(_fcm_error("INVALID_ARGUMENT", f"Invalid data payload key: {key}"))
        size += len(key.encode()) + len(item.encode())
    return size


def _strings(holder: dict[str, Any], name: str, where: str, fields: tuple[str, ...]) -> int:
    value = holder.get(name)
    if value is None:
        return 0
    if not isinstance(value, dict):
        raise _Rejected(_type_error(where, "TYPE_MESSAGE", value))
    size = 0
    for key, item in value.items():
        if key not in fields:
            raise _Rejected(_unknown_field(key, where))
        if not isinstance(item, str):
            raise _Rejected(_type_error(f"{where}.{key}", "TYPE_STRING", item))
        size += len(item.encode())
    return size


def _target_of(body: bytes) -> str | None:
    """The token, topic or condition a send names, read leniently for the attempts log (also
    when the request is refused before its message is checked)."""
    try:
        message = json.loads(body).get("message")
        found = message.get("token") or message.get("topic") or message.get("condition")
    except (ValueError, AttributeError, RecursionError):
        return None
    return found if isinstance(found, str) else None


def _error_code_of(response: Response) -> str | None:
    try:
        error = json.loads(response.body)["error"]
    except (ValueError, KeyError, TypeError):
        return None
    for detail in error.get("details", []):
        if detail.get("@type") == FCM_ERROR:
            return str(detail.get("errorCode"))
    return str(error.get("status"))


def _optional_int(given: dict[str, Any], name: str) -> int | None:
    value = given.get(name)
    if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
        raise ControlError(400, f"{name} is a positive integer")
    return value


def _optional_number(given: dict[str, Any], name: str) -> float | None:
    value = given.get(name)
    if value is not None and (not isinstance(value, int | float) or value <= 0):
        raise ControlError(400, f"{name} is a positive number")
    return None if value is None else float(value)


def _rsa_public_key(pem: str) -> rsa.RSAPublicKey:
    data = pem.encode()
    loaded: Any
    try:
        loaded = serialization.load_pem_public_key(data)
    except ValueError:
        try:
            loaded = serialization.load_pem_private_key(data, password=None).public_key()
        except ValueError:
            loaded = x509.load_pem_x509_certificate(data).public_key()
    if not isinstance(loaded, rsa.RSAPublicKey):
        raise ValueError("a service account's key is an RSA key")
    return loaded
