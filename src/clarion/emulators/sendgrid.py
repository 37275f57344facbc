"""A local SendGrid v3 Mail Send: ``POST /v3/mail/send`` over HTTPS.

It takes ``Authorization: Bearer <key>`` for registered keys (401 otherwise; 403 for a sender
that is not verified when any are), validates the body as SendGrid documents (personalizations
with 1 to 1000 recipients in all, each address once, ``from``, a subject, ``content`` with
``text/plain`` before ``text/html``, headers, custom args, categories), answers ``202`` with an
empty body and ``X-Message-Id``, errors as ``{"errors": [{"message", "field", "help"}]}``, and
``429`` with ``X-RateLimit-Limit``/``-Remaining``/``-Reset`` above a configured rate. Written
from protocols.md §5.2.

It also plays the signed Event Webhook, written from SendGrid's documentation alone ("Event
Webhook Reference", "Getting Started with the Event Webhook Security Features"): once told the
webhook URL, it POSTs, after each accepted message, a JSON array of events (``processed`` for
every recipient, plus a scripted ``bounce``, ``dropped`` or ``spamreport`` for a recipient),
signed with its own ECDSA P-256 key: ``X-Twilio-Email-Event-Webhook-Signature`` is the base64
DER signature (SHA-256) of ``X-Twilio-Email-Event-Webhook-Timestamp`` followed by the body. The
control API shows the public key as base64 DER, as SendGrid's settings page does.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import math
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from clarion.emulators.http1 import (
    ControlError,
    HttpEmulator,
    Request,
    Response,
    json_body,
)

Clock = Callable[[], float]


def system_clock() -> float:
    return time.time()  # noqa: TID251 - the emulator's own wall clock; tests inject theirs


PATH = "/v3/mail/send"
MAX_BODY_BYTES = 30 * 1024 * 1024
MAX_PERSONALIZATIONS = 1000
MAX_RECIPIENTS = 1000
MAX_CATEGORIES = 10
EMAIL = re.compile(r"^[^@\s<>]+@[A-Za-z0-9.-]+\.[A-Za-z0-9-]+$")
RESERVED_HEADERS = {
    "x-sg-id",
    "x-sg-eid",
    "received",
    "dkim-signature",
    "content-type",
    "content-transfer-encoding",
    "to",
    "from",
    "subject",
    "reply-to",
    "cc",
    "bcc",
}


@dataclass
class ScriptedError:
    status: int
    message: str
    field: str | None = None
    recipient: str | None = None
    remaining: int | None = None
    id: int = 0


EVENT_KINDS = ("bounce", "blocked", "dropped", "spamreport")
DROP_REASONS = ("Bounced Address", "Spam Reporting Address", "Unsubscribed Address", "Invalid")


@dataclass
class ScriptedEvent:
    """What happens to a recipient after SendGrid accepts a message to it."""

    recipient: str
    event: str  # bounce | blocked (a bounce of type blocked) | dropped | spamreport
    reason: str | None = None


class Problem(Exception):
    def __init__(self, status: int, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.field = field


class SendGridEmulator(HttpEmulator):
    """Run with ``await start()`` / ``await stop()`` (or ``run(stop)``).

    Args:
        rate_limit: requests per `rate_window` seconds before 429; None: unlimited.
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        control_port: int = 0,
        tls: bool = True,
        rate_limit: int | None = None,
        rate_window: float = 1.0,
        cert_file: Path | None = None,
        key_file: Path | None = None,
        clock: Clock = system_clock,
    ) -> None:
        self.host = host
        self.tls = tls
        self.rate_limit = rate_limit
        self.rate_window = rate_window
        self.latency_ms = 0.0
        self.sent: list[dict[str, Any]] = []
        self.attempts: list[dict[str, Any]] = []
        self._clock = clock
        self._keys: set[str] = set()
        self._senders: set[str] = set()
        self._errors: list[ScriptedError] = []
        self._window: tuple[float, int] = (0.0, 0)
        self._ids = itertools.count(1)
        self.webhook_url: str | None = None
        self.events: dict[str, ScriptedEvent] = {}
        self.posted: list[dict[str, Any]] = []
        self._posting: set[asyncio.Task[None]] = set()
        self._event_key = ec.generate_private_key(ec.SECP256R1())
        self._listen(
            self._serve,
            self._serve_control,
            host=host,
            port=port,
            control_port=control_port,
            tls=tls,
            cert_file=cert_file,
            key_file=key_file,
            cert_host=host,
        )

    @property
    def url(self) -> str:
        scheme = "https" if self.tls else "http"
        return f"{scheme}://{self.host}:{self.port}{PATH}"

    # -- programmatic control --------------------------------------------------------------------

    def add_key(self, api_key: str) -> None:
        self._keys.add(api_key)

    def verify_sender(self, address: str) -> None:
        """Allow this sender; with none verified, any sender goes."""
        self._senders.add(address.lower())

    def script(
        self,
        status: int,
        message: str = "scripted",
        *,
        field: str | None = None,
        recipient: str | None = None,
        count: int | None = None,
    ) -> ScriptedError:
        error = ScriptedError(
            status,
            message,
            field,
            recipient.lower() if recipient else None,
            count,
            next(self._ids),
        )
        self._errors.append(error)
        return error

    @property
    def event_public_key(self) -> str:
        """The Event Webhook's verification key, base64 DER, as the settings page shows it."""
        der = self._event_key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return base64.b64encode(der).decode()

    def script_event(self, recipient: str, event: str, reason: str | None = None) -> ScriptedEvent:
        scripted = ScriptedEvent(recipient.lower(), event, reason)
        self.events[scripted.recipient] = scripted
        return scripted

    async def settle(self) -> None:
        """Wait until every event batch being posted has been answered (or failed)."""
        while self._posting:
            await asyncio.gather(*list(self._posting), return_exceptions=True)

    def reset(self) -> None:
        self.events.clear()
        self.posted.clear()
        self.sent.clear()
        self.attempts.clear()
        self._errors.clear()
        self._window = (0.0, 0)
        self.latency_ms = 0.0

    # -- the service -----------------------------------------------------------------------------

    async def _serve(self, request: Request) -> Response:
        if self.latency_ms > 0:
            await asyncio.sleep(self.latency_ms / 1000)
        now = self._clock()
        headers = self._rate_headers(now)
        try:
            response = self._send(request, now, headers)
        except Problem as problem:
            response = Response.of_json(
                problem.status,
                {"errors": [{"message": problem.message, "field": problem.field, "help": None}]},
                headers,
            )
        self.attempts.append({"status": response.status, "time": now})
        return response

    def _rate_headers(self, now: float) -> list[tuple[str, str]]:
        if self.rate_limit is None:
            return []
        start, used = self._window
        if now >= start + self.rate_window:
            start, used = now, 0
        used += 1
        self._window = (start, used)
        reset = math.ceil(start + self.rate_window)
        return [
            ("x-ratelimit-limit", str(self.rate_limit)),
            ("x-ratelimit-remaining", str(max(self.rate_limit - used, 0))),
            ("x-ratelimit-reset", str(reset)),
        ]

    def _send(self, request: Request, now: float, headers: list[tuple[str, str]]) -> Response:
        if request.path != PATH:
            raise Problem(404, f"no route {request.path}")
        if request.method != "POST":
            raise Problem(405, "mail/send takes POST")
        scheme, _, key = (request.header("authorization") or "").partition(" ")
        if scheme.lower() != "bearer" or key not in self._keys:
            raise Problem(401, "The provided authorization grant is invalid, expired, or revoked")
        if self.rate_limit is not None and self._window[1] > self.rate_limit:
            raise Problem(429, "too many requests")
        if request.size > MAX_BODY_BYTES:
            raise Problem(413, "The JSON payload you have included in your request is too large.")
        body = self._validate(request)
        recipients = [
            r["email"].lower()
            for p in body["personalizations"]
            for kind in ("to", "cc", "bcc")
            for r in p.get(kind, [])
        ]
        scripted = self._scripted(recipients)
        if scripted is not None:
            raise Problem(scripted.status, scripted.message, scripted.field)
        message_id = secrets.token_urlsafe(16)
        self.sent.append({"message_id": message_id, "body": body, "time": now})
        if self.webhook_url is not None:
            batch = self._events_for(recipients, message_id, now)
            task = asyncio.get_running_loop().create_task(self._post_events(batch, now))
            self._posting.add(task)
            task.add_done_callback(self._posting.discard)
        return Response(202, [("x-message-id", message_id), *headers])

    # -- the Event Webhook -----------------------------------------------------------------------

    def _events_for(
        self, recipients: list[str], message_id: str, now: float
    ) -> list[dict[str, Any]]:
        batch = []
        for recipient in recipients:
            base = {
                "email": recipient,
                "timestamp": int(now),
                "smtp-id": f"<{message_id}@ismtpd0001p1las1.sendgrid.net>",
                "sg_event_id": secrets.token_urlsafe(16),
                "sg_message_id": f"{message_id}.filterdrecv-1-2-3",
                "category": [],
            }
            batch.append({**base, "event": "processed"})
            scripted = self.events.get(recipient)
            if scripted is None:
                continue
            event: dict[str, Any] = {**base, "sg_event_id": secrets.token_urlsafe(16)}
            if scripted.event in ("bounce", "blocked"):
                blocked = scripted.event == "blocked"
                event |= {
                    "event": "bounce",
                    "type": scripted.event,
                    "status": "5.7.1" if blocked else "5.1.1",
                    "reason": scripted.reason
                    or (
                        "550 5.7.1 Service unavailable; client host blocked"
                        if blocked
                        else "550 5.1.1 The email account that you tried to reach does not exist."
                    ),
                }
            elif scripted.event == "dropped":
                event |= {"event": "dropped", "reason": scripted.reason or "Bounced Address"}
            else:
                event |= {"event": "spamreport"}
            batch.append(event)
        return batch

    async def _post_events(self, batch: list[dict[str, Any]], now: float) -> None:
        url = self.webhook_url
        if url is None:
            return
        body = json.dumps(batch).encode()
        timestamp = str(int(now))
        signature = self._event_key.sign(timestamp.encode() + body, ec.ECDSA(hashes.SHA256()))
        headers = {
            "content-type": "application/json",
            "user-agent": "SendGrid Event API",
            "x-twilio-email-event-webhook-signature": base64.b64encode(signature).decode(),
            "x-twilio-email-event-webhook-timestamp": timestamp,
        }
        record: dict[str, Any] = {"url": url, "events": batch}
        try:
            async with httpx.AsyncClient(timeout=15, trust_env=False) as client:
                answer = await client.post(url, content=body, headers=headers)
            record["status"] = answer.status_code
        except httpx.HTTPError as exc:
            record["error"] = repr(exc)
        self.posted.append(record)

    def _validate(self, request: Request) -> dict[str, Any]:
        content_type = (request.header("content-type") or "").split(";")[0].strip().lower()
        if content_type != "application/json":
            raise Problem(400, "Content-Type should be application/json.")
        try:
            body = json_body(request)
        except ControlError:
            raise Problem(400, "Bad Request", None) from None
        personalizations = body.get("personalizations")
        if not isinstance(personalizations, list) or not personalizations:
            raise Problem(
                400,
                "The personalizations field is required and must have at least one "
                "personalization.",
                "personalizations",
            )
        if len(personalizations) > MAX_PERSONALIZATIONS:
            raise Problem(
                400,
                "You may not have more than 1000 personalizations per API request.",
                "personalizations",
            )
        total = 0
        for i, p in enumerate(personalizations):
            if not isinstance(p, dict):
                raise Problem(400, "a personalization is an object", f"personalizations.{i}")
            seen: set[str] = set()
            for kind in ("to", "cc", "bcc"):
                people = p.get(kind, [])
                if not isinstance(people, list):
                    raise Problem(400, f"{kind} is an array", f"personalizations.{i}.{kind}")
                for j, person in enumerate(people):
                    self._check_email(person, f"personalizations.{i}.{kind}.{j}.email")
                    address = person["email"].lower()
                    if address in seen:
                        raise Problem(
                            400,
                            "Each email address in the personalization block should be unique "
                            "between to, cc, and bcc.",
                            f"personalizations.{i}.{kind}",
                        )
                    seen.add(address)
                    total += 1
            if not p.get("to"):
                raise Problem(
                    400,
                    "The to array is required for all personalization objects, and must have "
                    "at least one email object with a valid email address.",
                    f"personalizations.{i}.to",
                )
            self._check_strings(p.get("custom_args"), f"personalizations.{i}.custom_args")
            self._check_headers(p.get("headers"), f"personalizations.{i}.headers")
        if total > MAX_RECIPIENTS:
            raise Problem(400, "Too many recipients: at most 1000 in all.", "personalizations")
        self._check_email(body.get("from"), "from.email")
        sender = body["from"]["email"].lower()
        if self._senders and sender not in self._senders:
            raise Problem(
                403,
                "The from address does not match a verified Sender Identity. Mail cannot be "
                "sent until this error is resolved.",
                "from",
            )
        if "reply_to" in body:
            self._check_email(body["reply_to"], "reply_to.email")
        subjects = [p.get("subject") for p in personalizations]
        if (
            not isinstance(body.get("subject"), str)
            and not all(isinstance(s, str) and s for s in subjects)
            and body.get("template_id") is None
        ):
            raise Problem(
                400,
                "The subject is required. You can get around this requirement if you use a "
                "template with a subject defined or if every personalization has a subject "
                "defined.",
                "subject",
            )
        content = body.get("content")
        if body.get("template_id") is None:
            if not isinstance(content, list) or not content:
                raise Problem(
                    400,
                    "Unless a valid template_id is provided, the content parameter is required.",
                    "content",
                )
            types: list[str] = []
            for i, part in enumerate(content):
                if (
                    not isinstance(part, dict)
                    or not isinstance(part.get("type"), str)
                    or not isinstance(part.get("value"), str)
                    or not part["value"]
                ):
                    raise Problem(400, "content needs type and a non-empty value", f"content.{i}")
                types.append(part["type"].lower())
            if "text/plain" in types and types[0] != "text/plain":
                raise Problem(
                    400,
                    "If present, text/plain content must be first, followed by text/html.",
                    "content",
                )
        self._check_headers(body.get("headers"), "headers")
        self._check_strings(body.get("custom_args"), "custom_args")
        categories = body.get("categories", [])
        if (
            not isinstance(categories, list)
            or len(categories) > MAX_CATEGORIES
            or not all(isinstance(c, str) and 0 < len(c) <= 255 for c in categories)
        ):
            raise Problem(
                400, "categories: at most 10 strings of 1 to 255 characters", "categories"
            )
        return body

    def _check_email(self, value: Any, field: str) -> None:
        if (
            not isinstance(value, dict)
            or not isinstance(value.get("email"), str)
            or not EMAIL.match(value["email"])
        ):
            raise Problem(
                400,
                "Does not contain a valid address.",
                field,
            )

    def _check_strings(self, value: Any, field: str) -> None:
        if value is None:
            return
        if not isinstance(value, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in value.items()
        ):
            raise Problem(400, "Values must be strings.", field)

    def _check_headers(self, value: Any, field: str) -> None:
        self._check_strings(value, field)
        for name, header in (value or {}).items():
            if name.lower() in RESERVED_HEADERS:
                raise Problem(400, f"The header {name} is reserved.", field)
            if "\r" in header or "\n" in header or "\r" in name or "\n" in name:
                raise Problem(400, "Header values must not hold line breaks.", field)

    def _scripted(self, recipients: list[str]) -> ScriptedError | None:
        self._errors = [e for e in self._errors if e.remaining is None or e.remaining > 0]
        wanted = set(recipients)
        candidates = [e for e in self._errors if e.recipient in wanted] or [
            e for e in self._errors if e.recipient is None
        ]
        if not candidates:
            return None
        error = candidates[-1]
        if error.remaining is not None:
            error.remaining -= 1
        return error

    # -- the control API -------------------------------------------------------------------------

    async def _serve_control(self, request: Request) -> Response:
        try:
            status, answer = self._control_route(request)
        except ControlError as exc:
            status, answer = exc.status, {"error": exc.message}
        return Response.of_json(status, answer)

    def _control_route(self, request: Request) -> tuple[int, Any]:
        route = (request.method, request.path)
        if route == ("POST", "/control/keys"):
            key = json_body(request).get("api_key")
            if not isinstance(key, str) or not key:
                raise ControlError(400, "need api_key")
            self.add_key(key)
            return 201, {"added": True}
        if route == ("POST", "/control/senders"):
            address = json_body(request).get("email")
            if not isinstance(address, str) or not address:
                raise ControlError(400, "need email")
            self.verify_sender(address)
            return 201, {"email": address}
        if route == ("GET", "/control/sent"):
            return 200, self.sent
        if route == ("DELETE", "/control/sent"):
            cleared = len(self.sent)
            self.sent.clear()
            return 200, {"cleared": cleared}
        if route == ("GET", "/control/attempts"):
            return 200, self.attempts
        if route == ("POST", "/control/errors"):
            given = json_body(request)
            status, message = given.get("status"), given.get("message", "scripted")
            field, recipient, count = given.get("field"), given.get("recipient"), given.get("count")
            if not isinstance(status, int) or not 400 <= status <= 599:
                raise ControlError(400, "status is 400-599")
            if not isinstance(message, str):
                raise ControlError(400, "message is a string")
            if count is not None and (not isinstance(count, int) or count < 1):
                raise ControlError(400, "count is a positive integer")
            return 201, asdict(
                self.script(
                    status,
                    message,
                    field=field if isinstance(field, str) else None,
                    recipient=recipient if isinstance(recipient, str) else None,
                    count=count,
                )
            )
        if route == ("GET", "/control/errors"):
            return 200, [asdict(e) for e in self._errors]
        if route == ("DELETE", "/control/errors"):
            cleared = len(self._errors)
            self._errors.clear()
            return 200, {"cleared": cleared}
        if route == ("POST", "/control/rate"):
            given = json_body(request)
            limit, window = given.get("limit"), given.get("window", 1.0)
            if limit is not None and (not isinstance(limit, int) or limit < 1):
                raise ControlError(400, "limit is a positive integer or null")
            if not isinstance(window, int | float) or window <= 0:
                raise ControlError(400, "window is a positive number of seconds")
            self.rate_limit, self.rate_window = limit, float(window)
            self._window = (0.0, 0)
            return 200, {"limit": limit, "window": self.rate_window}
        if route == ("POST", "/control/latency"):
            ms = json_body(request).get("ms")
            if not isinstance(ms, int | float) or isinstance(ms, bool) or ms < 0:
                raise ControlError(400, "ms is a number of milliseconds >= 0")
            self.latency_ms = float(ms)
            return 200, {"ms": self.latency_ms}
        if route == ("GET", "/control/event-webhook"):
            return 200, {
                "url": self.webhook_url,
                "enabled": self.webhook_url is not None,
                "signed": True,
                "public_key": self.event_public_key,
            }
        if route == ("POST", "/control/event-webhook"):
            url = json_body(request).get("url")
            if url is not None and (
                not isinstance(url, str) or not url.startswith(("http://", "https://"))
            ):
                raise ControlError(400, "url is an http(s) URL or null")
            self.webhook_url = url
            return 200, {"url": url, "public_key": self.event_public_key}
        if route == ("POST", "/control/events"):
            given = json_body(request)
            recipient, event, reason = (
                given.get("recipient"),
                given.get("event", "bounce"),
                given.get("reason"),
            )
            if not isinstance(recipient, str) or not EMAIL.match(recipient):
                raise ControlError(400, "recipient is an address")
            if event not in EVENT_KINDS:
                raise ControlError(400, f"event is one of {', '.join(EVENT_KINDS)}")
            if reason is not None and not isinstance(reason, str):
                raise ControlError(400, "reason is a string")
            if event == "dropped" and reason is not None and reason not in DROP_REASONS:
                raise ControlError(400, f"a drop reason is one of {', '.join(DROP_REASONS)}")
            return 201, asdict(self.script_event(recipient, event, reason))
        if route == ("GET", "/control/events"):
            return 200, {
                "scripted": [asdict(e) for e in self.events.values()],
                "posted": self.posted,
            }
        if route == ("POST", "/control/reset"):
            self.reset()
            return 200, {"reset": True}
        raise ControlError(404, f"no route {request.method} {request.path}")
