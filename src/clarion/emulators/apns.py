"""A local APNs provider API: HTTP/2 (TLS with ALPN ``h2``, or cleartext h2c with prior knowledge)
on one port, a plain HTTP/1.1 JSON control API on another.

Written from Apple's documentation ("Sending notification requests to APNs", "Handling notification
responses from APNs", "Establishing a token-based connection to APNs", "Establishing a
certificate-based connection to APNs"), as summarised in research/protocols.md §1.
docs/emulators.md lists what is validated and the known deviations.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import json
import re
import ssl
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
import jwt
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from clarion.emulators.common import (
    Emulator,
    bound_port,
    check_certificate_files,
    load_cert_chain,
    self_signed_certificate,
)

Clock = Callable[[], float]
"""Seconds since the UNIX epoch; injectable so tests can age tokens and end outage windows."""


def system_clock() -> float:
    return time.time()  # noqa: TID251 - the emulator's own wall clock; tests inject theirs


# [AP-tok] An `iat` older than one hour is rejected with 403 ExpiredProviderToken.
TOKEN_MAX_AGE_SECONDS = 3600
# [AP-tok] A new token on the same connection more often than every 20 minutes gets 429.
TOKEN_MIN_REFRESH_SECONDS = 20 * 60
# [AP-send] "only one stream until you post a request with a valid authentication token".
STREAMS_BEFORE_VALID_TOKEN = 1
# Observed on the real service once a valid token was seen [HC652].
STREAMS_AFTER_VALID_TOKEN = 1000
# [AP-send] Payload limits in bytes.
PAYLOAD_LIMIT = 4096
VOIP_PAYLOAD_LIMIT = 5120
# [AP-send] apns-collapse-id is at most 64 bytes.
COLLAPSE_ID_LIMIT = 64

# [AP-send] push type → the suffix its apns-topic must carry ("" = the bare bundle ID).
PUSH_TYPE_TOPIC_SUFFIXES = {
    "alert": "",
    "background": "",
    "voip": ".voip",
    "complication": ".complication",
    "fileprovider": ".pushkit.fileprovider",
    "location": ".location-query",
    "liveactivity": ".push-type.liveactivity",
    "pushtotalk": ".voip-ptt",
    "widgets": ".push-type.widgets",
    "controls": ".push-type.controls",
    "mdm": "",
}
PRIORITIES = {"10", "5", "1"}
DEFAULT_PRIORITY = "10"

PATH = re.compile(r"^/3/device/(?P<token>[^/?]*)$")
HEX_TOKEN = re.compile(r"^(?:[0-9a-fA-F]{2})+$")
TOPIC = re.compile(r"^[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*$")
APNS_ID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
AUTH_FAILURES = {
    "BadCertificate",
    "BadCertificateEnvironment",
    "MissingProviderToken",
    "InvalidProviderToken",
    "ExpiredProviderToken",
    "UnrelatedKeyIdInToken",
    "TooManyProviderTokenUpdates",
}

# Apple's push-certificate extensions (Apple WWDR CPS): the certificate is for the development
# (sandbox) service, for the production service, and the topics it may push to [AP-send].
SANDBOX_CERTIFICATE_OID = x509.ObjectIdentifier("1.2.840.113635.100.6.3.1")
PRODUCTION_CERTIFICATE_OID = x509.ObjectIdentifier("1.2.840.113635.100.6.3.2")
TOPICS_CERTIFICATE_OID = x509.ObjectIdentifier("1.2.840.113635.100.6.3.6")
# OpenSSL's X509_V_FLAG_NO_CHECK_TIME (the ssl module has no name for it): the handshake checks
# the chain, the emulator's own clock judges the dates, so tests can age a certificate.
_NO_CHECK_TIME = 0x200000
# DER tags of the string types a topic may be written in: UTF8String, PrintableString, IA5String.
_DER_STRINGS = {0x0C, 0x13, 0x16}


@dataclass
class Rejection:
    status: int
    reason: str
    timestamp_ms: int | None = None


@dataclass
class ScriptedOutcome:
    """An answer forced for one token (or every token when `token` is None), persistent until
    cleared unless bounded by `remaining` requests or an `until` clock time."""

    status: int
    reason: str
    token: str | None = None
    remaining: int | None = None
    until: float | None = None
    timestamp_ms: int | None = None
    id: int = 0


@dataclass
class RegisteredKey:
    team_id: str
    key_id: str
    public_key: ec.EllipticCurvePublicKey
    topics: list[str] | None = None


@dataclass(frozen=True)
class ClientCertificate:
    """What a TLS client certificate (chained to a trusted authority) says about its holder."""

    subject: str
    uid: str | None  # the subject's UID (0.9.2342.19200300.100.1.1): the app's bundle ID
    topics: tuple[str, ...]  # the UID, then those of the multi-topic extension
    multi_topic: bool
    environments: frozenset[str]  # "sandbox" and/or "production", from Apple's extensions
    not_before: float
    not_after: float
    problem: str | None = None  # why it is no push certificate at all

    @property
    def default_topic(self) -> str | None:
        """The topic of a push without ``apns-topic``: the subject's UID, unless the certificate
        has several topics (then ``apns-topic`` is required) [AP-resp, MissingTopic]."""
        return None if self.multi_topic else self.uid


@dataclass(frozen=True)
class _Principal:
    """Who a request was authenticated as: the topics allowed (None: any) and the topic used
    when ``apns-topic`` is absent (None: it is required)."""

    auth: str
    topics: tuple[str, ...] | None
    default_topic: str | None = None


@dataclass
class _Stream:
    headers: list[tuple[str, str]]
    body: bytearray = field(default_factory=bytearray)
    size: int = 0


@dataclass
class _Connection:
    id: int
    h2: h2.connection.H2Connection
    writer: asyncio.StreamWriter
    max_streams: int = STREAMS_BEFORE_VALID_TOKEN
    certificate: ClientCertificate | None = None  # the TLS client certificate, if one was sent
    key: tuple[str, str] | None = None  # (team, key id) bound by the first valid token
    token: str | None = None
    token_since: float = 0.0
    unusable: bool = False  # after TooManyProviderTokenUpdates
    streams: dict[int, _Stream] = field(default_factory=dict)
    tasks: set[asyncio.Task[None]] = field(default_factory=set)
    closed: bool = False

    def flush(self) -> None:
        data = self.h2.data_to_send()
        if data and not self.closed:
            self.writer.write(data)


class ControlError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class ApnsEmulator(Emulator):
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
        environment: str = "sandbox",
        clock: Clock = system_clock,
    ) -> None:
        if environment not in {"sandbox", "production"}:
            raise ValueError("environment is 'sandbox' or 'production'")
        check_certificate_files(cert_file, key_file)
        self.host = host
        self.tls = tls
        self.environment = environment
        self.latency_ms = 0.0
        self.received: list[dict[str, Any]] = []
        self.attempts: list[dict[str, Any]] = []
        self._requested_port = port
        self._requested_control_port = control_port
        self._cert_file = cert_file
        self._key_file = key_file
        self._clock = clock
        self._certificate_pem: bytes | None = None
        self._keys: dict[tuple[str, str], RegisteredKey] = {}
        self._authorities: list[x509.Certificate] = []
        self._context: ssl.SSLContext | None = None
        self._outcomes: list[ScriptedOutcome] = []
        self._outcome_ids = itertools.count(1)
        self._connection_ids = itertools.count(1)
        self._connections: dict[int, _Connection] = {}
        self._push_server: asyncio.Server | None = None
        self._control_server: asyncio.Server | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        context = self._context = self._ssl_context() if self.tls else None
        self._push_server = await asyncio.start_server(
            self._serve_push, self.host, self._requested_port, ssl=context
        )
        self._control_server = await asyncio.start_server(
            self._serve_control, self.host, self._requested_control_port
        )

    async def stop(self) -> None:
        for server in (self._push_server, self._control_server):
            if server is not None:
                server.close()
        for connection in list(self._connections.values()):
            self._close(connection)
        for server in (self._push_server, self._control_server):
            if server is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(server.wait_closed(), 2)

    @property
    def port(self) -> int:
        return bound_port(self._push_server)

    @property
    def control_port(self) -> int:
        return bound_port(self._control_server)

    # -- programmatic control (the control API calls these) ----------------------------------

    def register_key(
        self, team_id: str, key_id: str, public_key_pem: str, topics: list[str] | None = None
    ) -> None:
        """Accept ES256 tokens signed by this key for `team_id`; a private key PEM (.p8) is also
        accepted, its public half is kept."""
        data = public_key_pem.encode()
        try:
            loaded: Any = serialization.load_pem_public_key(data)
        except ValueError:
            loaded = serialization.load_pem_private_key(data, password=None).public_key()
        if not isinstance(loaded, ec.EllipticCurvePublicKey) or loaded.curve.name != "secp256r1":
            raise ValueError("the key must be a P-256 (ES256) key")
        self._keys[(team_id, key_id)] = RegisteredKey(team_id, key_id, loaded, topics)

    def trust_certificate_authority(self, pem: str) -> list[dict[str, str]]:
        """Trust client certificates issued by the certificate(s) in `pem` (Apple's WWDR CA, in
        real life): a TLS connection presenting one is certificate-authenticated. Takes effect
        for new connections, before or after `start`; trust cannot be withdrawn."""
        certificates = x509.load_pem_x509_certificates(pem.encode())
        if self._context is not None:
            self._context.load_verify_locations(cadata=pem)
        self._authorities.extend(c for c in certificates if c not in self._authorities)
        return [_describe(c) for c in certificates]

    def certificate_authorities(self) -> list[dict[str, str]]:
        return [_describe(c) for c in self._authorities]

    def script(
        self,
        status: int,
        reason: str,
        *,
        token: str | None = None,
        count: int | None = None,
        seconds: float | None = None,
        timestamp_ms: int | None = None,
    ) -> ScriptedOutcome:
        """Force `status`/`reason` for `token` (every token when None): for the next `count`
        requests, for `seconds` from now, or until cleared when neither is given."""
        outcome = ScriptedOutcome(
            status=status,
            reason=reason,
            token=token,
            remaining=count,
            until=None if seconds is None else self._clock() + seconds,
            timestamp_ms=timestamp_ms,
            id=next(self._outcome_ids),
        )
        self._outcomes.append(outcome)
        return outcome

    def clear_outcomes(self, token: str | None = None) -> int:
        kept = [o for o in self._outcomes if token is not None and o.token != token]
        cleared = len(self._outcomes) - len(kept)
        self._outcomes = kept
        return cleared

    def reset(self) -> None:
        """Forget pushes, attempts, scripted outcomes and latency; keep keys and connections."""
        self.received.clear()
        self.attempts.clear()
        self._outcomes.clear()
        self.latency_ms = 0.0

    async def goaway(self, reason: str, error_code: int = 0) -> int:
        """Answer the streams being delayed by injected latency, then send GOAWAY with debug
        data ``{"reason": ...}`` on every connection and close it. Returns how many were told."""
        connections = [c for c in self._connections.values() if not c.closed]
        debug = json.dumps({"reason": reason}).encode()
        for connection in connections:
            while connection.tasks and not connection.closed:
                await asyncio.gather(*list(connection.tasks), return_exceptions=True)
            with contextlib.suppress(h2.exceptions.ProtocolError):
                connection.h2.close_connection(error_code=error_code, additional_data=debug)
            connection.flush()
            self._close(connection)
        return len(connections)

    def connections(self) -> list[dict[str, Any]]:
        return [
            {
                "id": c.id,
                "max_concurrent_streams": c.max_streams,
                "auth": _auth_of(c, None),
                "team_id": c.key[0] if c.key else None,
                "key_id": c.key[1] if c.key else None,
                "certificate_subject": c.certificate.subject if c.certificate else None,
                "topics": list(c.certificate.topics) if c.certificate else None,
                "unusable": c.unusable,
            }
            for c in self._connections.values()
            if not c.closed
        ]

    # -- TLS ----------------------------------------------------------------------------------

    def _ssl_context(self) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2  # [AP-send] TLS 1.2 or later
        context.set_alpn_protocols(["h2"])
        # Certificate-based auth [AP-send]: a client certificate is asked for, never required
        # (token clients send none). One not chained to a trusted authority fails the handshake.
        context.verify_mode = ssl.CERT_OPTIONAL
        context.verify_flags = ssl.VerifyFlags(context.verify_flags | _NO_CHECK_TIME)
        for authority in self._authorities:
            context.load_verify_locations(
                cadata=authority.public_bytes(serialization.Encoding.PEM).decode()
            )
        if self._cert_file is not None and self._key_file is not None:
            context.load_cert_chain(self._cert_file, self._key_file)
            self._certificate_pem = self._cert_file.read_bytes()
            return context
        certificate, key = self_signed_certificate(self.host)
        load_cert_chain(context, certificate, key)
        self._certificate_pem = certificate
        return context

    # -- the HTTP/2 push port ----------------------------------------------------------------

    async def _serve_push(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        ssl_object = writer.get_extra_info("ssl_object")
        if ssl_object is not None and ssl_object.selected_alpn_protocol() not in (None, "h2"):
            writer.close()
            return
        peer = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
        certificate = _read_certificate(peer) if peer else None
        # [AP-send] limits streams to one until a valid *token*; a good certificate has already
        # authenticated the connection, so it starts at the full limit.
        streams = STREAMS_BEFORE_VALID_TOKEN
        if certificate is not None and self._judge(certificate, self._clock()) is None:
            streams = STREAMS_AFTER_VALID_TOKEN
        config = h2.config.H2Configuration(client_side=False, header_encoding="utf-8")
        conn = h2.connection.H2Connection(config=config)
        conn.local_settings = h2.settings.Settings(
            client=False,
            initial_values={h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: streams},
        )
        conn.initiate_connection()
        connection = _Connection(
            id=next(self._connection_ids),
            h2=conn,
            writer=writer,
            max_streams=streams,
            certificate=certificate,
        )
        self._connections[connection.id] = connection
        connection.flush()
        try:
            while not connection.closed:
                data = await reader.read(65536)
                if not data:
                    break
                try:
                    events = conn.receive_data(data)
                except h2.exceptions.ProtocolError:
                    connection.flush()  # h2 queued a GOAWAY(PROTOCOL_ERROR)
                    break
                for event in events:
                    self._on_event(connection, event)
                connection.flush()
                await writer.drain()
        except (ConnectionError, ssl.SSLError, OSError):
            pass
        finally:
            self._close(connection)

    def _close(self, connection: _Connection) -> None:
        if connection.closed:
            return
        connection.closed = True
        self._connections.pop(connection.id, None)
        for task in connection.tasks:
            task.cancel()
        connection.writer.close()

    def _on_event(self, connection: _Connection, event: h2.events.Event) -> None:
        if isinstance(event, h2.events.RequestReceived):
            assert event.stream_id is not None
            headers = [(str(k), str(v)) for k, v in event.headers or []]
            connection.streams[event.stream_id] = _Stream(headers=headers)
        elif isinstance(event, h2.events.DataReceived):
            assert event.stream_id is not None
            stream = connection.streams.get(event.stream_id)
            data = event.data or b""
            if stream is not None:
                stream.size += len(data)
                if stream.size <= VOIP_PAYLOAD_LIMIT + 1:
                    stream.body.extend(data)
            with contextlib.suppress(h2.exceptions.ProtocolError):
                connection.h2.acknowledge_received_data(
                    event.flow_controlled_length or 0, event.stream_id
                )
        elif isinstance(event, h2.events.StreamEnded):
            assert event.stream_id is not None
            stream = connection.streams.pop(event.stream_id, None)
            if stream is not None:
                self._handle(connection, event.stream_id, stream)
        elif isinstance(event, h2.events.StreamReset):
            connection.streams.pop(event.stream_id or 0, None)
        elif isinstance(event, h2.events.ConnectionTerminated):
            self._close(connection)

    def _handle(self, connection: _Connection, stream_id: int, stream: _Stream) -> None:
        now = self._clock()
        headers = dict(stream.headers)
        method, path = headers.get(":method", ""), headers.get(":path", "")
        match = PATH.match(path)
        token = match.group("token") if match else None
        request_id = headers.get("apns-id")
        apns_id = request_id if request_id and APNS_ID.match(request_id) else str(uuid.uuid4())
        rejection = self._validate(connection, method, match, token, stream, now)
        if rejection is None and token is not None:
            rejection = self._scripted(token, now)
        auth = _auth_of(connection, headers.get("authorization"))
        if rejection is None:
            self.received.append(
                {
                    "token": token,
                    "topic": headers.get("apns-topic") or _default_topic(connection),
                    "push_type": headers.get("apns-push-type", "alert"),
                    "priority": int(headers.get("apns-priority", DEFAULT_PRIORITY)),
                    "expiration": _int_or_none(headers.get("apns-expiration")),
                    "collapse_id": headers.get("apns-collapse-id"),
                    "apns_id": apns_id,
                    "headers": {k: v for k, v in stream.headers if not k.startswith(":")},
                    "payload": json.loads(stream.body),
                    "auth": auth,
                    "time": now,
                    "connection": connection.id,
                    "stream": stream_id,
                }
            )
        self.attempts.append(
            {
                "token": token,
                "method": method,
                "path": path,
                "apns_id": apns_id,
                "status": 200 if rejection is None else rejection.status,
                "reason": None if rejection is None else rejection.reason,
                "auth": auth,
                "time": now,
                "connection": connection.id,
                "stream": stream_id,
            }
        )
        response_headers = [(":status", "200"), ("apns-id", apns_id)]
        body = b""
        if rejection is None:
            if self.environment == "sandbox":
                response_headers.append(("apns-unique-id", str(uuid.uuid4())))
        else:
            answer: dict[str, Any] = {"reason": rejection.reason}
            if rejection.status == 410:
                answer["timestamp"] = (
                    rejection.timestamp_ms
                    if rejection.timestamp_ms is not None
                    else int(now * 1000)
                )
            body = json.dumps(answer).encode()
            response_headers = [
                (":status", str(rejection.status)),
                ("apns-id", apns_id),
                ("content-type", "application/json"),
                ("content-length", str(len(body))),
            ]
        if self.latency_ms <= 0:
            self._respond(connection, stream_id, response_headers, body)
            return
        task = asyncio.get_running_loop().create_task(
            self._respond_later(connection, stream_id, response_headers, body, self.latency_ms)
        )
        connection.tasks.add(task)
        task.add_done_callback(connection.tasks.discard)

    async def _respond_later(
        self,
        connection: _Connection,
        stream_id: int,
        headers: list[tuple[str, str]],
        body: bytes,
        latency_ms: float,
    ) -> None:
        await asyncio.sleep(latency_ms / 1000)
        self._respond(connection, stream_id, headers, body)

    def _respond(
        self, connection: _Connection, stream_id: int, headers: list[tuple[str, str]], body: bytes
    ) -> None:
        if connection.closed:
            return
        try:
            connection.h2.send_headers(stream_id, headers, end_stream=not body)
            if body:
                connection.h2.send_data(stream_id, body, end_stream=True)
        except h2.exceptions.ProtocolError:
            return
        connection.flush()

    # -- validation, in the order a request is judged ----------------------------------------

    def _validate(
        self,
        connection: _Connection,
        method: str,
        match: re.Match[str] | None,
        token: str | None,
        stream: _Stream,
        now: float,
    ) -> Rejection | None:
        if match is None:
            return Rejection(404, "BadPath")
        if method != "POST":
            return Rejection(405, "MethodNotAllowed")
        if not token:
            return Rejection(400, "MissingDeviceToken")
        names = [name for name, _ in stream.headers if not name.startswith(":")]
        if len(names) != len(set(names)):
            return Rejection(400, "DuplicateHeaders")
        headers = dict(stream.headers)

        principal, failure = self._authenticate(connection, headers.get("authorization"), now)
        if failure is not None:
            self._set_max_streams(connection, STREAMS_BEFORE_VALID_TOKEN)
            return Rejection(429 if failure == "TooManyProviderTokenUpdates" else 403, failure)
        self._set_max_streams(connection, STREAMS_AFTER_VALID_TOKEN)
        assert principal is not None

        request_id = headers.get("apns-id")
        if request_id is not None and not APNS_ID.match(request_id):
            return Rejection(400, "BadMessageId")
        push_type = headers.get("apns-push-type", "alert")
        if push_type not in PUSH_TYPE_TOPIC_SUFFIXES:
            return Rejection(400, "InvalidPushType")
        topic = headers.get("apns-topic") or principal.default_topic
        if not topic:
            return Rejection(400, "MissingTopic")
        if not TOPIC.match(topic) or not topic.endswith(PUSH_TYPE_TOPIC_SUFFIXES[push_type]):
            return Rejection(400, "BadTopic")
        if principal.topics is not None and topic not in principal.topics:
            return Rejection(400, "TopicDisallowed")
        priority = headers.get("apns-priority", DEFAULT_PRIORITY)
        if priority not in PRIORITIES or (push_type == "background" and priority == "10"):
            return Rejection(400, "BadPriority")
        expiration = headers.get("apns-expiration")
        if expiration is not None and not expiration.isdigit():
            return Rejection(400, "BadExpirationDate")
        collapse_id = headers.get("apns-collapse-id")
        if collapse_id is not None and len(collapse_id.encode()) > COLLAPSE_ID_LIMIT:
            return Rejection(400, "BadCollapseId")
        if not HEX_TOKEN.match(token):
            return Rejection(400, "BadDeviceToken")

        if stream.size == 0:
            return Rejection(400, "PayloadEmpty")
        limit = VOIP_PAYLOAD_LIMIT if push_type == "voip" else PAYLOAD_LIMIT
        if stream.size > limit:
            return Rejection(413, "PayloadTooLarge")
        try:
            payload = json.loads(stream.body)
        except (UnicodeDecodeError, ValueError):
            payload = None
        if not isinstance(payload, dict):
            # Apple documents no reason for a malformed body; stay within documented reasons.
            return Rejection(400, "PayloadEmpty")
        return None

    def _authenticate(
        self, connection: _Connection, authorization: str | None, now: float
    ) -> tuple[_Principal | None, str | None]:
        certificate = connection.certificate
        if certificate is not None:
            # [AP-send] the authorization header is ignored on a certificate connection.
            failure = self._judge(certificate, now)
            if failure is not None:
                return None, failure
            return _Principal("certificate", certificate.topics, certificate.default_topic), None
        key, failure = self._authenticate_token(connection, authorization, now)
        if key is None:
            return None, failure
        topics = None if key.topics is None else tuple(key.topics)
        return _Principal("token", topics), None

    def _judge(self, certificate: ClientCertificate, now: float) -> str | None:
        """Why a trusted client certificate cannot push here now, or None."""
        if certificate.problem is not None:
            return "BadCertificate"
        if not certificate.not_before <= now <= certificate.not_after:
            return "BadCertificate"
        if self.environment not in certificate.environments:
            return "BadCertificateEnvironment"
        return None

    def _authenticate_token(
        self, connection: _Connection, authorization: str | None, now: float
    ) -> tuple[RegisteredKey | None, str | None]:
        if connection.unusable:
            return None, "TooManyProviderTokenUpdates"
        if not authorization:
            return None, "MissingProviderToken"
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token:
            return None, "InvalidProviderToken"
        try:
            header = jwt.get_unverified_header(token)
            claims = jwt.decode(token, options={"verify_signature": False})
        except jwt.PyJWTError:
            return None, "InvalidProviderToken"
        team_id, key_id, issued_at = claims.get("iss"), header.get("kid"), claims.get("iat")
        registered = self._keys.get((str(team_id), str(key_id)))
        if header.get("alg") != "ES256" or registered is None or not isinstance(issued_at, int):
            return None, "InvalidProviderToken"
        if token != connection.token:  # a token already verified on this connection is trusted
            try:
                jwt.decode(
                    token,
                    registered.public_key,
                    algorithms=["ES256"],
                    options={"verify_exp": False, "verify_iat": False, "verify_nbf": False},
                )
            except jwt.PyJWTError:
                return None, "InvalidProviderToken"
        if now - issued_at > TOKEN_MAX_AGE_SECONDS:
            return None, "ExpiredProviderToken"
        if connection.key is not None and connection.key != (registered.team_id, key_id):
            return None, "UnrelatedKeyIdInToken"
        if token != connection.token:
            if connection.token is not None and now - connection.token_since < (
                TOKEN_MIN_REFRESH_SECONDS
            ):
                connection.unusable = True
                return None, "TooManyProviderTokenUpdates"
            connection.token, connection.token_since = token, now
            connection.key = (registered.team_id, registered.key_id)
        return registered, None

    def _set_max_streams(self, connection: _Connection, value: int) -> None:
        if connection.max_streams == value:
            return
        connection.max_streams = value
        with contextlib.suppress(h2.exceptions.ProtocolError):
            connection.h2.update_settings({h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: value})

    def _scripted(self, token: str, now: float) -> Rejection | None:
        self._outcomes = [
            o
            for o in self._outcomes
            if (o.until is None or now < o.until) and (o.remaining is None or o.remaining > 0)
        ]
        candidates = [o for o in self._outcomes if o.token == token] or [
            o for o in self._outcomes if o.token is None
        ]
        if not candidates:
            return None
        outcome = candidates[-1]  # the latest script wins
        if outcome.remaining is not None:
            outcome.remaining -= 1
        return Rejection(outcome.status, outcome.reason, outcome.timestamp_ms)

    # -- the HTTP/1.1 control port -----------------------------------------------------------

    async def _serve_control(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        try:
            while True:
                line = await reader.readline()
                if not line.strip():
                    break
                method, target, _ = line.decode("latin-1").split(" ", 2)
                headers: dict[str, str] = {}
                while (raw := await reader.readline()) not in (b"\r\n", b"\n", b""):
                    name, _, value = raw.decode("latin-1").partition(":")
                    headers[name.strip().lower()] = value.strip()
                length = int(headers.get("content-length", "0"))
                body = await reader.readexactly(length) if length else b""
                try:
                    status, answer = await self._control(method, target.split("?")[0], body)
                except ControlError as exc:
                    status, answer = exc.status, {"error": exc.message}
                data = json.dumps(answer).encode()
                head = (
                    f"HTTP/1.1 {status} {_PHRASES.get(status, 'OK')}\r\n"
                    f"content-type: application/json\r\ncontent-length: {len(data)}\r\n\r\n"
                )
                writer.write(head.encode() + data)
                await writer.drain()
                if headers.get("connection", "").lower() == "close":
                    break
        except (ValueError, asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def _control(self, method: str, path: str, body: bytes) -> tuple[int, Any]:
        def payload() -> dict[str, Any]:
            try:
                value = json.loads(body or b"{}")
            except ValueError as exc:
                raise ControlError(400, "the body is not JSON") from exc
            if not isinstance(value, dict):
                raise ControlError(400, "the body is not a JSON object")
            return value

        route = (method, path)
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
        if route == ("POST", "/control/keys"):
            given = payload()
            try:
                self.register_key(
                    str(given["team_id"]),
                    str(given["key_id"]),
                    str(given["public_key"]),
                    given.get("topics"),
                )
            except (KeyError, ValueError, TypeError) as exc:
                raise ControlError(
                    400, f"need team_id, key_id and a P-256 public_key: {exc}"
                ) from exc
            return 201, {"team_id": given["team_id"], "key_id": given["key_id"]}
        if route == ("POST", "/control/certificate-authorities"):
            pem = payload().get("certificate")
            if not isinstance(pem, str):
                raise ControlError(400, "certificate is a PEM string")
            try:
                trusted = self.trust_certificate_authority(pem)
            except (ValueError, ssl.SSLError) as exc:
                raise ControlError(400, f"not a PEM X.509 certificate: {exc}") from exc
            return 201, trusted
        if route == ("GET", "/control/certificate-authorities"):
            return 200, self.certificate_authorities()
        if route == ("GET", "/control/keys"):
            return 200, [
                {"team_id": k.team_id, "key_id": k.key_id, "topics": k.topics}
                for k in self._keys.values()
            ]
        if route == ("POST", "/control/outcomes"):
            given = payload()
            token = given.get("token")
            if token is not None and not isinstance(token, str):
                raise ControlError(400, "token is a device token string")
            return 201, self._script_from(given, token)
        if route == ("GET", "/control/outcomes"):
            return 200, [asdict(o) for o in self._outcomes]
        if route == ("DELETE", "/control/outcomes"):
            return 200, {"cleared": self.clear_outcomes()}
        if path.startswith("/control/tokens/") and len(path) > len("/control/tokens/"):
            token = path.removeprefix("/control/tokens/")
            if method == "POST":
                return 201, self._script_from(payload(), token)
            if method == "DELETE":
                return 200, {"cleared": self.clear_outcomes(token)}
        if route == ("POST", "/control/latency"):
            ms = payload().get("ms")
            if not isinstance(ms, int | float) or ms < 0:
                raise ControlError(400, "ms is a number of milliseconds >= 0")
            self.latency_ms = float(ms)
            return 200, {"ms": self.latency_ms}
        if route == ("GET", "/control/latency"):
            return 200, {"ms": self.latency_ms}
        if route == ("POST", "/control/goaway"):
            given = payload()
            error_code = given.get("error_code", 0)
            if not isinstance(error_code, int) or error_code < 0:
                raise ControlError(400, "error_code is an HTTP/2 error code")
            told = await self.goaway(str(given.get("reason", "Shutdown")), error_code)
            return 200, {"connections": told}
        if route == ("GET", "/control/connections"):
            return 200, self.connections()
        if route == ("POST", "/control/reset"):
            self.reset()
            return 200, {"reset": True}
        raise ControlError(404, f"no route {method} {path}")

    def _script_from(self, given: dict[str, Any], token: str | None) -> dict[str, Any]:
        status, reason = given.get("status"), given.get("reason")
        count, seconds, timestamp = given.get("count"), given.get("seconds"), given.get("timestamp")
        if not isinstance(status, int) or not 400 <= status <= 599:
            raise ControlError(400, "status is an HTTP error status (400-599)")
        if not isinstance(reason, str) or not reason:
            raise ControlError(400, "reason is the APNs reason string")
        if count is not None and (not isinstance(count, int) or count < 1):
            raise ControlError(400, "count is a positive integer")
        if seconds is not None and (not isinstance(seconds, int | float) or seconds <= 0):
            raise ControlError(400, "seconds is a positive number")
        if timestamp is not None and not isinstance(timestamp, int):
            raise ControlError(400, "timestamp is milliseconds since the epoch")
        outcome = self.script(
            status, reason, token=token, count=count, seconds=seconds, timestamp_ms=timestamp
        )
        return asdict(outcome)


_PHRASES = {200: "OK", 201: "Created", 400: "Bad Request", 404: "Not Found"}


def _int_or_none(value: str | None) -> int | None:
    return int(value) if value is not None and value.isdigit() else None


def _auth_of(connection: _Connection, authorization: str | None) -> str | None:
    """How a request (or, without `authorization`, a connection) authenticates."""
    if connection.certificate is not None:
        return "certificate"
    if authorization or connection.key is not None:
        return "token"
    return None


def _default_topic(connection: _Connection) -> str | None:
    return connection.certificate.default_topic if connection.certificate else None


def _describe(certificate: x509.Certificate) -> dict[str, str]:
    return {
        "subject": certificate.subject.rfc4514_string(),
        "sha256": hashlib.sha256(certificate.public_bytes(serialization.Encoding.DER)).hexdigest(),
    }


def client_certificate(der: bytes) -> ClientCertificate:
    """Read a client certificate as APNs does: the topic is the subject's UID, more topics may
    be listed in extension 1.2.840.113635.100.6.3.6, and extensions 1.2.840.113635.100.6.3.1
    and .2 mark it for the sandbox and the production service [AP-send]."""
    certificate = x509.load_der_x509_certificate(der)
    not_before = certificate.not_valid_before_utc.timestamp()
    not_after = certificate.not_valid_after_utc.timestamp()
    subject = certificate.subject.rfc4514_string()
    uids = certificate.subject.get_attributes_for_oid(NameOID.USER_ID)
    uid = str(uids[0].value) if uids else None
    oids = {extension.oid for extension in certificate.extensions}
    environments = frozenset(
        name
        for name, oid in (
            ("sandbox", SANDBOX_CERTIFICATE_OID),
            ("production", PRODUCTION_CERTIFICATE_OID),
        )
        if oid in oids
    )
    if not environments and TOPICS_CERTIFICATE_OID in oids:
        # A multi-topic ("universal", Sandbox & Production) certificate: some tools take the
        # topics extension alone as the mark of one, so it is read as serving both.
        environments = frozenset({"sandbox", "production"})
    problem: str | None = None
    extra: list[str] = []
    if TOPICS_CERTIFICATE_OID in oids:
        value = certificate.extensions.get_extension_for_oid(TOPICS_CERTIFICATE_OID).value
        try:
            extra = certificate_topics(value.public_bytes())
        except ValueError:
            problem = "its topics extension is not a DER sequence"
    if uid is None:
        problem = "its subject has no UID (the bundle ID)"
    elif not environments:
        problem = "it is marked for neither the sandbox nor production"
    topics = tuple(dict.fromkeys([uid, *extra] if uid else extra))
    return ClientCertificate(
        subject=subject,
        uid=uid,
        topics=topics,
        multi_topic=TOPICS_CERTIFICATE_OID in oids,
        environments=environments,
        not_before=not_before,
        not_after=not_after,
        problem=problem,
    )


def _read_certificate(der: bytes) -> ClientCertificate:
    try:
        return client_certificate(der)
    except ValueError as exc:  # the handshake accepted it, but `cryptography` cannot read it
        return ClientCertificate(
            subject="",
            uid=None,
            topics=(),
            multi_topic=False,
            environments=frozenset(),
            not_before=0.0,
            not_after=0.0,
            problem=f"unreadable: {exc}",
        )


def certificate_topics(value: bytes) -> list[str]:
    """The topics in the DER value of extension 1.2.840.113635.100.6.3.6: a SEQUENCE of
    strings (the topics), each followed by a SEQUENCE naming its kind (``app``, ``voip``,
    ``complication``...), which is skipped. A value wrapped once more in an OCTET STRING is
    unwrapped.

    Raises:
        ValueError: the value is not such a sequence.
    """
    items = _der_items(value)
    if len(items) == 1 and items[0][0] == 0x04:  # OCTET STRING
        items = _der_items(items[0][1])
    if len(items) != 1 or items[0][0] != 0x30:  # SEQUENCE
        raise ValueError("not a DER SEQUENCE")
    return [
        content.decode("utf-8") for tag, content in _der_items(items[0][1]) if tag in _DER_STRINGS
    ]


def _der_items(data: bytes) -> list[tuple[int, bytes]]:
    """The (tag, content) pairs of consecutive DER elements (single-byte tags)."""
    items: list[tuple[int, bytes]] = []
    at = 0
    while at < len(data):
        if at + 2 > len(data):
            raise ValueError("truncated DER")
        tag, length = data[at], data[at + 1]
        at += 2
        if length & 0x80:
            size = length & 0x7F
            if not 0 < size <= 4 or at + size > len(data):
                raise ValueError("bad DER length")
            length = int.from_bytes(data[at : at + size], "big")
            at += size
        if at + length > len(data):
            raise ValueError("truncated DER")
        items.append((tag, data[at : at + length]))
        at += length
    return items
