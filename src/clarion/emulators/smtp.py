"""A local SMTP relay on aiosmtpd: it records every message it accepts (parsed), speaks STARTTLS
(RFC 3207) with a generated certificate or implicit TLS (RFC 8314), takes AUTH PLAIN and LOGIN
(RFC 4954) when users are registered, requires either when told to, and answers scripted 4xx or
5xx replies per recipient (``451`` once, ``550 5.1.1`` always, ...) at RCPT or after DATA.

A JSON control API on a second port lists messages and scripts replies. Written from RFC 5321,
3207, 4954 and 3463 as summarised in protocols.md §5.3; docs/emulators.md has the control API.
"""

from __future__ import annotations

import asyncio
import contextlib
import email
import email.policy
import itertools
import secrets
import ssl
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from clarion.emulators.common import (
    Emulator,
    certificate_pair,
    check_certificate_files,
    load_cert_chain,
)
from clarion.emulators.http1 import ControlError, HttpServer, Request, Response, json_body

Clock = Callable[[], float]


def system_clock() -> float:
    return time.time()  # noqa: TID251 - the emulator's own wall clock; tests inject theirs


MAX_MESSAGE_BYTES = 40 * 1024 * 1024  # SIZE advertised in EHLO (SES's raw limit)
STAGES = ("rcpt", "data")


@dataclass
class ScriptedReply:
    """A reply forced for one recipient (every one when None) at RCPT or after DATA; `remaining`
    None means always."""

    code: int
    text: str
    recipient: str | None = None
    stage: str = "rcpt"
    remaining: int | None = None
    id: int = 0


class SmtpEmulator(Emulator):
    """Run with ``await start()`` / ``await stop()`` (or ``run(stop)``).

    Args:
        tls: ``"starttls"`` (offer it; `require_tls` makes MAIL wait for it), ``"implicit"``
            (TLS from the first byte, RFC 8314) or ``"none"``.
        require_tls: with ``starttls``, refuse mail transactions before STARTTLS (530).
        require_auth: refuse MAIL before AUTH (530); users come from `add_user`.
        store_bodies: keep each message whole (raw, parsed headers and bodies); False keeps
            only its envelope, id and size, for runs of many thousands (benchmarks).
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        control_port: int = 0,
        tls: str = "starttls",
        require_tls: bool = False,
        require_auth: bool = False,
        hostname: str = "smtp.emulator.clarion.test",
        cert_file: Path | None = None,
        key_file: Path | None = None,
        clock: Clock = system_clock,
        store_bodies: bool = True,
    ) -> None:
        if tls not in ("starttls", "implicit", "none"):
            raise ValueError("tls is starttls, implicit or none")
        check_certificate_files(cert_file, key_file)
        if require_tls and tls != "starttls":
            raise ValueError("require_tls goes with tls='starttls'")
        self.host = host
        self.tls = tls
        self.require_tls = require_tls
        self.require_auth = require_auth
        self.hostname = hostname
        self.store_bodies = store_bodies
        self.connections = 0
        """SMTP connections accepted so far (how well a client pools its sessions)."""
        self.messages: list[dict[str, Any]] = []
        self.attempts: list[dict[str, Any]] = []
        self._port = port
        self._clock = clock
        self._users: dict[str, str] = {}
        self._replies: list[ScriptedReply] = []
        self._ids = itertools.count(1)
        self._server: asyncio.Server | None = None
        self._certificate_pem: bytes | None = None
        self._context: ssl.SSLContext | None = None
        if tls != "none":
            certificate, key = certificate_pair(cert_file, key_file, host)
            self._certificate_pem = certificate
            self._context = _tls_context(certificate, key)
        self._control = HttpServer(self._serve_control, host=host, port=control_port)

    # -- lifecycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            self._protocol,
            self.host,
            self._port,
            ssl=self._context if self.tls == "implicit" else None,
        )
        await self._control.start()

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)
        await self._control.stop()

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("the server is not started")
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def control_port(self) -> int:
        return self._control.port

    # -- programmatic control --------------------------------------------------------------------

    def add_user(self, username: str, password: str) -> None:
        """Accept AUTH PLAIN/LOGIN with this username and password."""
        self._users[username] = password

    def script(
        self,
        code: int,
        text: str = "",
        *,
        recipient: str | None = None,
        stage: str = "rcpt",
        count: int | None = None,
    ) -> ScriptedReply:
        """Answer `code` `text` for `recipient` (every one when None) at `stage` (``rcpt`` or
        ``data``), `count` times (always when None)."""
        if not 400 <= code <= 599:
            raise ValueError("a scripted reply is 400-599")
        if stage not in STAGES:
            raise ValueError("stage is rcpt or data")
        reply = ScriptedReply(
            code=code,
            text=text or _default_text(code),
            recipient=recipient.lower() if recipient else None,
            stage=stage,
            remaining=count,
            id=next(self._ids),
        )
        self._replies.append(reply)
        return reply

    def reset(self) -> None:
        """Forget messages, attempts and scripted replies."""
        self.messages.clear()
        self.attempts.clear()
        self._replies.clear()
        self.connections = 0

    # -- the SMTP server -------------------------------------------------------------------------

    def _protocol(self) -> SMTP:
        self.connections += 1
        return SMTP(
            _Handler(self),
            hostname=self.hostname,
            ident="Clarion SMTP emulator",
            data_size_limit=MAX_MESSAGE_BYTES,
            tls_context=self._context if self.tls == "starttls" else None,
            require_starttls=self.require_tls,
            auth_required=self.require_auth,
            # AUTH over plain text is refused unless the emulator has no TLS at all.
            auth_require_tls=self.tls != "none",
            authenticator=self._authenticate,
        )

    def _authenticate(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any
    ) -> AuthResult:
        if mechanism not in ("PLAIN", "LOGIN") or not isinstance(data, LoginPassword):
            return AuthResult(success=False, handled=False)
        login = data.login.decode("utf-8", "replace")
        password = data.password.decode("utf-8", "replace")
        expected = self._users.get(login)
        ok = expected is not None and secrets.compare_digest(expected, password)
        return AuthResult(success=ok, handled=False, auth_data=login if ok else None)

    def _scripted(self, recipient: str, stage: str) -> ScriptedReply | None:
        self._replies = [r for r in self._replies if r.remaining is None or r.remaining > 0]
        wanted = recipient.lower()
        candidates = [r for r in self._replies if r.stage == stage and r.recipient == wanted] or [
            r for r in self._replies if r.stage == stage and r.recipient is None
        ]
        if not candidates:
            return None
        reply = candidates[-1]
        if reply.remaining is not None:
            reply.remaining -= 1
        return reply

    def _attempt(self, stage: str, recipient: str | None, answer: str, session: Session) -> None:
        self.attempts.append(
            {
                "stage": stage,
                "recipient": recipient,
                "reply": answer,
                "tls": session.ssl is not None or self.tls == "implicit",
                "user": session.auth_data if session.authenticated else None,
                "time": self._clock(),
            }
        )

    def _record(self, session: Session, envelope: Envelope) -> str:
        raw = envelope.original_content or b""
        if not self.store_bodies:
            brief: dict[str, Any] = {
                "id": secrets.token_hex(8),
                "mail_from": envelope.mail_from,
                "rcpt_to": list(envelope.rcpt_tos),
                "size": len(raw),
                "tls": session.ssl is not None or self.tls == "implicit",
                "time": self._clock(),
            }
            self.messages.append(brief)
            return str(brief["id"])
        parsed = email.message_from_bytes(raw, policy=email.policy.default)
        message: dict[str, Any] = {
            "id": secrets.token_hex(8),
            "mail_from": envelope.mail_from,
            "rcpt_to": list(envelope.rcpt_tos),
            "headers": [[k, str(v)] for k, v in parsed.items()],
            "subject": str(parsed.get("Subject", "")),
            "text": None,
            "html": None,
            "size": len(raw),
            "raw": raw.decode("utf-8", "replace"),
            "tls": session.ssl is not None or self.tls == "implicit",
            "user": session.auth_data if session.authenticated else None,
            "time": self._clock(),
        }
        if isinstance(parsed, EmailMessage):
            for kind in ("plain", "html"):
                part = parsed.get_body(preferencelist=(kind,))
                if part is not None and isinstance(part, EmailMessage):
                    with contextlib.suppress(LookupError, ValueError):
                        message["text" if kind == "plain" else "html"] = part.get_content()
        self.messages.append(message)
        return str(message["id"])

    # -- the control API -------------------------------------------------------------------------

    async def _serve_control(self, request: Request) -> Response:
        try:
            status, answer = self._control_route(request)
        except ControlError as exc:
            status, answer = exc.status, {"error": exc.message}
        return Response.of_json(status, answer)

    def _control_route(self, request: Request) -> tuple[int, Any]:
        route = (request.method, request.path)
        if route == ("GET", "/control/messages"):
            return 200, self.messages
        if route == ("DELETE", "/control/messages"):
            cleared = len(self.messages)
            self.messages.clear()
            return 200, {"cleared": cleared}
        if route == ("GET", "/control/attempts"):
            return 200, self.attempts
        if route == ("GET", "/control/stats"):
            counts = {"messages": len(self.messages), "attempts": len(self.attempts)}
            return 200, {**counts, "connections": self.connections}
        if route == ("POST", "/control/users"):
            given = json_body(request)
            username, password = given.get("username"), given.get("password")
            if not isinstance(username, str) or not username or not isinstance(password, str):
                raise ControlError(400, "need username and password")
            self.add_user(username, password)
            return 201, {"username": username}
        if route == ("POST", "/control/replies"):
            given = json_body(request)
            code, text = given.get("code"), given.get("text", "")
            recipient, stage, count = given.get("recipient"), given.get("stage", "rcpt"), None
            count = given.get("count")
            if not isinstance(code, int) or not 400 <= code <= 599:
                raise ControlError(400, "code is 400-599")
            if not isinstance(text, str) or (
                recipient is not None and not isinstance(recipient, str)
            ):
                raise ControlError(400, "text and recipient are strings")
            if stage not in STAGES:
                raise ControlError(400, "stage is rcpt or data")
            if count is not None and (not isinstance(count, int) or count < 1):
                raise ControlError(400, "count is a positive integer")
            reply = self.script(code, text, recipient=recipient, stage=stage, count=count)
            return 201, asdict(reply)
        if route == ("GET", "/control/replies"):
            return 200, [asdict(r) for r in self._replies]
        if route == ("DELETE", "/control/replies"):
            cleared = len(self._replies)
            self._replies.clear()
            return 200, {"cleared": cleared}
        if route == ("POST", "/control/reset"):
            self.reset()
            return 200, {"reset": True}
        raise ControlError(404, f"no route {request.method} {request.path}")


class _Handler:
    def __init__(self, emulator: SmtpEmulator) -> None:
        self._emulator = emulator

    async def handle_RCPT(  # noqa: N802 - aiosmtpd's hook name
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        reply = self._emulator._scripted(address, "rcpt")
        answer = f"{reply.code} {reply.text}" if reply is not None else "250 2.1.5 OK"
        if reply is None:
            envelope.rcpt_tos.append(address)
            envelope.rcpt_options.extend(options)
        self._emulator._attempt("rcpt", address, answer, session)
        return answer

    async def handle_DATA(  # noqa: N802 - aiosmtpd's hook name
        self, server: SMTP, session: Session, envelope: Envelope
    ) -> str:
        for recipient in envelope.rcpt_tos:
            reply = self._emulator._scripted(recipient, "data")
            if reply is not None:
                answer = f"{reply.code} {reply.text}"
                self._emulator._attempt("data", recipient, answer, session)
                return answer
        message_id = self._emulator._record(session, envelope)
        answer = f"250 2.0.0 OK: queued as {message_id}"
        self._emulator._attempt("data", None, answer, session)
        return answer


def _default_text(code: int) -> str:
    return {
        421: "4.3.2 Service not available, closing transmission channel",
        450: "4.2.1 Mailbox temporarily unavailable",
        451: "4.3.0 Local error in processing, try again later",
        452: "4.2.2 Insufficient system storage",
        550: "5.1.1 Mailbox does not exist",
        551: "5.1.6 User not local",
        552: "5.2.2 Mailbox full",
        553: "5.1.3 Mailbox name not allowed",
        554: "5.7.1 Transaction failed",
    }.get(code, f"{code // 100}.0.0 Scripted reply")


def _tls_context(certificate_pem: bytes, key_pem: bytes) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    load_cert_chain(context, certificate_pem, key_pem)
    return context
