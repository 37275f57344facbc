"""A local Amazon SES API v2: ``POST /v2/email/outbound-emails`` (``SendEmail``) over HTTPS.

It verifies Signature Version 4 against registered access keys (recomputed here from AWS's
published algorithm, independently of ``clarion.wire``), refuses requests more than 15 minutes
off, validates the body (``FromEmailAddress``, ``Destination``, exactly one of ``Content.Simple``,
``Raw`` or ``Template``, base64 raw MIME up to 40 MB), throttles above a configured rate, and
answers like SES: ``200 {"MessageId": ...}``, or an error status with
``x-amzn-ErrorType: <Code>`` and ``{"message": ...}``. Written from protocols.md §5.1.

It also plays Amazon SNS for SES's bounce and complaint notifications, written from AWS's
documentation alone ("Use Amazon SNS with HTTP/S endpoints", "Verifying the signatures of
Amazon SNS messages", "Amazon SES notification contents"): an HTTP(S) endpoint subscribed to a
topic gets a signed ``SubscriptionConfirmation`` and is confirmed when it GETs the
``SubscribeURL``; after a successful ``SendEmail`` to a recipient scripted to bounce or
complain, every confirmed endpoint of the topic gets a ``Notification`` whose ``Message`` is
SES's JSON. Messages are signed with SignatureVersion 2 (SHA256withRSA) by the emulator's own
RSA key, whose self-signed certificate is served from this server at ``SigningCertURL``.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import email
import email.policy
import hashlib
import hmac
import itertools
import json
import re
import secrets
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlencode

import httpx
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID

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


PATH = "/v2/email/outbound-emails"
MAX_MESSAGE_BYTES = 40 * 1024 * 1024
MAX_SKEW_SECONDS = 15 * 60
MAX_RECIPIENTS = 50
AUTHORIZATION = re.compile(
    r"^AWS4-HMAC-SHA256 Credential=(?P<key>[^/,\s]+)/(?P<date>\d{8})/(?P<region>[a-z0-9-]+)"
    r"/(?P<service>[a-z0-9-]+)/aws4_request,\s*SignedHeaders=(?P<signed>[a-z0-9;-]+),"
    r"\s*Signature=(?P<signature>[0-9a-f]{64})$"
)
ADDRESS = re.compile(r"^(?:[^<>]*<)?[^@\s<>]+@[A-Za-z0-9.-]+\.[A-Za-z0-9-]+>?$")
TAG = re.compile(r"^[A-Za-z0-9_-]{1,256}$")
CONTENT_KINDS = ("Simple", "Raw", "Template")
TOPIC_ARN = re.compile(r"^arn:aws:sns:[a-z0-9-]+:\d{12}:[A-Za-z0-9_-]{1,256}$")
FEEDBACK_KINDS = ("Permanent", "Transient", "Complaint")
SNS_NOTIFICATION_FIELDS = ("Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type")
SNS_CONFIRMATION_FIELDS = (
    "Message",
    "MessageId",
    "SubscribeURL",
    "Timestamp",
    "Token",
    "TopicArn",
    "Type",
)


@dataclass
class ScriptedError:
    """An error forced for one recipient (every request when None)."""

    status: int
    code: str
    message: str
    recipient: str | None = None
    remaining: int | None = None
    id: int = 0


@dataclass
class SnsSubscription:
    """An HTTP(S) endpoint subscribed to a topic."""

    topic_arn: str
    endpoint: str
    token: str
    arn: str
    confirmed: bool = False


@dataclass
class ScriptedFeedback:
    """What a recipient's mailbox does after SES accepts a message to it."""

    recipient: str
    kind: str  # Permanent | Transient (bounce types) | Complaint
    topic_arn: str | None = None


class AwsError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


class SesEmulator(HttpEmulator):
    """Run with ``await start()`` / ``await stop()`` (or ``run(stop)``).

    Args:
        region: the region requests must be signed for.
        max_send_rate: messages per second before ``TooManyRequestsException`` (429), as the
            SES sending quota behaves; None: unlimited.
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        control_port: int = 0,
        region: str = "us-east-1",
        tls: bool = True,
        max_send_rate: float | None = None,
        cert_file: Path | None = None,
        key_file: Path | None = None,
        clock: Clock = system_clock,
    ) -> None:
        self.host = host
        self.region = region
        self.tls = tls
        self.max_send_rate = max_send_rate
        self.latency_ms = 0.0
        self.sent: list[dict[str, Any]] = []
        self.attempts: list[dict[str, Any]] = []
        self._clock = clock
        self._keys: dict[str, str] = {}
        self._verified: set[str] = set()
        self._errors: list[ScriptedError] = []
        self._recent: deque[float] = deque()
        self._ids = itertools.count(1)
        self.subscriptions: list[SnsSubscription] = []
        self.feedback: dict[str, ScriptedFeedback] = {}
        self.published: list[dict[str, Any]] = []
        self._publishing: set[asyncio.Task[None]] = set()
        self._sns_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.signing_certificate_pem = _signing_certificate(self._sns_key)
        self._cert_path = f"/SimpleNotificationService-{secrets.token_hex(16)}.pem"
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
    def endpoint(self) -> str:
        scheme = "https" if self.tls else "http"
        return f"{scheme}://{self.host}:{self.port}"

    # -- programmatic control --------------------------------------------------------------------

    def add_key(self, access_key_id: str, secret_access_key: str) -> None:
        self._keys[access_key_id] = secret_access_key

    def verify_identity(self, identity: str) -> None:
        """Allow sending from this address or domain; with none verified, any sender goes."""
        self._verified.add(identity.lower())

    def script(
        self,
        status: int,
        code: str,
        message: str = "scripted",
        *,
        recipient: str | None = None,
        count: int | None = None,
    ) -> ScriptedError:
        error = ScriptedError(status, code, message, recipient, count, next(self._ids))
        self._errors.append(error)
        return error

    def reset(self) -> None:
        self.sent.clear()
        self.attempts.clear()
        self._errors.clear()
        self._recent.clear()
        self.latency_ms = 0.0
        self.feedback.clear()
        self.published.clear()

    async def subscribe(self, topic_arn: str, endpoint: str) -> SnsSubscription:
        """Subscribe an HTTP(S) endpoint to `topic_arn`: SNS POSTs it a signed
        ``SubscriptionConfirmation``; it stays pending until the endpoint GETs ``SubscribeURL``."""
        subscription = SnsSubscription(
            topic_arn, endpoint, secrets.token_hex(64), f"{topic_arn}:{uuid.uuid4()}"
        )
        self.subscriptions.append(subscription)
        query = urlencode(
            {
                "Action": "ConfirmSubscription",
                "TopicArn": topic_arn,
                "Token": subscription.token,
            }
        )
        message = {
            "Type": "SubscriptionConfirmation",
            "MessageId": str(uuid.uuid4()),
            "Token": subscription.token,
            "TopicArn": topic_arn,
            "Message": (
                f"You have chosen to subscribe to the topic {topic_arn}.\n"
                "To confirm the subscription, visit the SubscribeURL included in this message."
            ),
            "SubscribeURL": f"{self.endpoint}/?{query}",
            "Timestamp": _sns_time(self._clock()),
        }
        await self._deliver(subscription, message)
        return subscription

    def script_feedback(
        self, recipient: str, kind: str, topic_arn: str | None = None
    ) -> ScriptedFeedback:
        """After the next successful sends to `recipient`, publish a bounce (`kind` Permanent
        or Transient) or a complaint (Complaint) to `topic_arn` (every topic when None)."""
        feedback = ScriptedFeedback(recipient.lower(), kind, topic_arn)
        self.feedback[feedback.recipient] = feedback
        return feedback

    async def settle(self) -> None:
        """Wait until every notification being published has been delivered (or failed)."""
        while self._publishing:
            await asyncio.gather(*list(self._publishing), return_exceptions=True)

    # -- the service -----------------------------------------------------------------------------

    async def _serve(self, request: Request) -> Response:
        if self.latency_ms > 0:
            await asyncio.sleep(self.latency_ms / 1000)
        now = self._clock()
        try:
            response = self._send(request, now)
            code = None
        except AwsError as error:
            code = error.code
            response = Response.of_json(
                error.status,
                {"message": error.message},
                [
                    ("x-amzn-errortype", f"{error.code}:http://internal.amazon.com/coral/"),
                    ("x-amzn-requestid", str(uuid.uuid4())),
                ],
            )
        self.attempts.append({"status": response.status, "error": code, "time": now})
        return response

    def _send(self, request: Request, now: float) -> Response:
        if request.method == "GET" and request.path == self._cert_path:
            return Response(
                200, [("content-type", "application/x-pem-file")], self.signing_certificate_pem
            )
        if request.method == "GET" and request.path == "/":
            return self._confirm_subscription(request)
        if request.path != PATH:
            raise AwsError(404, "NotFoundException", f"no operation at {request.path}")
        if request.method != "POST":
            raise AwsError(405, "MethodNotAllowedException", "SendEmail takes POST")
        key_id = self._authenticate(request, now)
        body = self._validate(request)
        recipients = [
            a
            for field in ("ToAddresses", "CcAddresses", "BccAddresses")
            for a in body["Destination"].get(field, [])
        ]
        scripted = self._scripted(recipients)
        if scripted is not None:
            raise AwsError(scripted.status, scripted.code, scripted.message)
        if self.max_send_rate is not None:
            while self._recent and self._recent[0] <= now - 1.0:
                self._recent.popleft()
            if len(self._recent) >= self.max_send_rate:
                raise AwsError(429, "TooManyRequestsException", "Maximum sending rate exceeded.")
            self._recent.append(now)
        message_id = f"0100{secrets.token_hex(6)}-{uuid.uuid4()}-000000"
        self._publish_feedback(recipients, message_id, body["FromEmailAddress"], now)
        self.sent.append(
            {
                "message_id": message_id,
                "access_key_id": key_id,
                "from": body["FromEmailAddress"],
                "destination": body["Destination"],
                "content": self._describe_content(body["Content"]),
                "configuration_set": body.get("ConfigurationSetName"),
                "tags": body.get("EmailTags", []),
                "time": now,
            }
        )
        return Response.of_json(200, {"MessageId": message_id})

    def _authenticate(self, request: Request, now: float) -> str:
        authorization = request.header("authorization")
        if authorization is None:
            raise AwsError(
                403, "MissingAuthenticationTokenException", "Missing Authentication Token"
            )
        match = AUTHORIZATION.match(authorization)
        if match is None:
            raise AwsError(
                403,
                "IncompleteSignatureException",
                "Authorization header requires Credential, SignedHeaders and Signature",
            )
        secret = self._keys.get(match["key"])
        if secret is None:
            raise AwsError(
                403,
                "UnrecognizedClientException",
                "The security token included in the request is invalid.",
            )
        amz_date = request.header("x-amz-date") or ""
        try:
            signed_at = datetime.strptime(amz_date, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
        except ValueError:
            raise AwsError(
                403, "IncompleteSignatureException", "X-Amz-Date is missing or malformed"
            ) from None
        if abs(signed_at.timestamp() - now) > MAX_SKEW_SECONDS:
            raise AwsError(
                403,
                "InvalidSignatureException",
                "Signature expired: the request time is more than 15 minutes from the server's",
            )
        if match["date"] != amz_date[:8] or match["service"] != "ses":
            raise AwsError(
                403, "InvalidSignatureException", "Credential should be scoped correctly"
            )
        if match["region"] != self.region:
            raise AwsError(
                403,
                "InvalidSignatureException",
                f"Credential should be scoped to a valid region, not '{match['region']}'",
            )
        signed = match["signed"].split(";")
        if "host" not in signed or "x-amz-date" not in signed:
            raise AwsError(403, "InvalidSignatureException", "host and x-amz-date must be signed")
        expected = _signature(request, signed, secret, match["date"], self.region, amz_date)
        if not hmac.compare_digest(expected, match["signature"]):
            raise AwsError(
                403,
                "InvalidSignatureException",
                "The request signature we calculated does not match the signature you provided.",
            )
        return match["key"]

    # -- Amazon SNS ------------------------------------------------------------------------------

    def _confirm_subscription(self, request: Request) -> Response:
        query = {k: v[0] for k, v in request.query.items() if v}
        if query.get("Action") != "ConfirmSubscription":
            raise AwsError(400, "InvalidAction", "only ConfirmSubscription is served here")
        for subscription in self.subscriptions:
            if subscription.topic_arn == query.get("TopicArn") and subscription.token == query.get(
                "Token"
            ):
                subscription.confirmed = True
                body = (
                    '<ConfirmSubscriptionResponse xmlns="http://sns.amazonaws.com/doc/2010-03-31/">'
                    "<ConfirmSubscriptionResult><SubscriptionArn>"
                    f"{subscription.arn}</SubscriptionArn></ConfirmSubscriptionResult>"
                    "</ConfirmSubscriptionResponse>"
                )
                return Response(200, [("content-type", "text/xml")], body.encode())
        raise AwsError(404, "NotFound", "no pending subscription has this token")

    def _publish_feedback(
        self, recipients: list[str], message_id: str, source: str, now: float
    ) -> None:
        for recipient in recipients:
            address = recipient.rpartition("<")[2].rstrip(">")
            feedback = self.feedback.get(address.lower())
            if feedback is None:
                continue
            event = _ses_event(feedback.kind, address, message_id, source, recipients, now)
            for subscription in self.subscriptions:
                if subscription.confirmed and feedback.topic_arn in (None, subscription.topic_arn):
                    message = {
                        "Type": "Notification",
                        "MessageId": str(uuid.uuid4()),
                        "TopicArn": subscription.topic_arn,
                        "Message": json.dumps(event),
                        "Timestamp": _sns_time(now),
                        "UnsubscribeURL": (
                            f"{self.endpoint}/?Action=Unsubscribe"
                            f"&SubscriptionArn={quote(subscription.arn, safe='')}"
                        ),
                    }
                    task = asyncio.get_running_loop().create_task(
                        self._deliver(subscription, message)
                    )
                    self._publishing.add(task)
                    task.add_done_callback(self._publishing.discard)

    async def _deliver(self, subscription: SnsSubscription, message: dict[str, Any]) -> None:
        message["SignatureVersion"] = "2"
        message["SigningCertURL"] = f"{self.endpoint}{self._cert_path}"
        names = (
            SNS_NOTIFICATION_FIELDS
            if message["Type"] == "Notification"
            else SNS_CONFIRMATION_FIELDS
        )
        to_sign = "".join(f"{n}\n{message[n]}\n" for n in names if n in message).encode()
        signature = self._sns_key.sign(to_sign, padding.PKCS1v15(), hashes.SHA256())
        message["Signature"] = base64.b64encode(signature).decode()
        headers = {
            "content-type": "text/plain; charset=UTF-8",
            "user-agent": "Amazon Simple Notification Service Agent",
            "x-amz-sns-message-type": message["Type"],
            "x-amz-sns-message-id": message["MessageId"],
            "x-amz-sns-topic-arn": subscription.topic_arn,
        }
        if message["Type"] == "Notification":
            headers["x-amz-sns-subscription-arn"] = subscription.arn
        record: dict[str, Any] = {"endpoint": subscription.endpoint, "message": message}
        try:
            async with httpx.AsyncClient(timeout=15, trust_env=False) as client:
                answer = await client.post(
                    subscription.endpoint, content=json.dumps(message).encode(), headers=headers
                )
            record["status"] = answer.status_code
        except httpx.HTTPError as exc:
            record["error"] = repr(exc)
        self.published.append(record)

    def _validate(self, request: Request) -> dict[str, Any]:
        if request.size > MAX_MESSAGE_BYTES * 2:
            raise AwsError(413, "BadRequestException", "Request entity too large")
        try:
            body = json_body(request)
        except ControlError:
            raise AwsError(400, "BadRequestException", "the body is not a JSON object") from None
        sender = body.get("FromEmailAddress")
        destination = body.get("Destination")
        content = body.get("Content")
        if not isinstance(content, dict):
            raise AwsError(400, "BadRequestException", "Content is required")
        kinds = [k for k in CONTENT_KINDS if k in content]
        if len(kinds) != 1:
            raise AwsError(
                400, "BadRequestException", "Content must hold one of Simple, Raw or Template"
            )
        if sender is None and kinds != ["Raw"]:
            raise AwsError(400, "BadRequestException", "FromEmailAddress is required")
        if sender is not None and (not isinstance(sender, str) or not ADDRESS.match(sender)):
            raise AwsError(400, "BadRequestException", "FromEmailAddress is not an address")
        if not isinstance(destination, dict):
            raise AwsError(400, "BadRequestException", "Destination is required")
        count = 0
        for field in ("ToAddresses", "CcAddresses", "BccAddresses"):
            addresses = destination.get(field, [])
            if not isinstance(addresses, list) or not all(
                isinstance(a, str) and ADDRESS.match(a) for a in addresses
            ):
                raise AwsError(400, "BadRequestException", f"Destination.{field} is invalid")
            count += len(addresses)
        if count == 0 or count > MAX_RECIPIENTS:
            raise AwsError(
                400, "BadRequestException", f"Destination holds 1 to {MAX_RECIPIENTS} addresses"
            )
        if kinds == ["Raw"]:
            self._validate_raw(content["Raw"])
        elif kinds == ["Simple"]:
            self._validate_simple(content["Simple"])
        for tag in body.get("EmailTags", []):
            if (
                not isinstance(tag, dict)
                or not TAG.match(str(tag.get("Name", "")))
                or not TAG.match(str(tag.get("Value", "")))
            ):
                raise AwsError(400, "BadRequestException", "EmailTags Name and Value are invalid")
        if self._verified and sender is not None:
            address = sender.rpartition("<")[2].rstrip(">").lower()
            domain = address.rpartition("@")[2]
            if address not in self._verified and domain not in self._verified:
                raise AwsError(
                    400,
                    "MessageRejected",
                    f"Email address is not verified. The following identities failed the "
                    f"check in region {self.region.upper()}: {address}",
                )
        return body

    def _validate_raw(self, raw: Any) -> None:
        data = raw.get("Data") if isinstance(raw, dict) else None
        if not isinstance(data, str):
            raise AwsError(400, "BadRequestException", "Content.Raw.Data is required")
        try:
            mime = base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError):
            raise AwsError(400, "BadRequestException", "Content.Raw.Data is not base64") from None
        if len(mime) > MAX_MESSAGE_BYTES:
            raise AwsError(400, "MessageRejected", "Message length is more than 40 MB")
        message = email.message_from_bytes(mime, policy=email.policy.default)
        for required in ("From", "Subject"):
            if message.get(required) is None:
                raise AwsError(400, "MessageRejected", f"the raw message has no {required} header")

    def _validate_simple(self, simple: Any) -> None:
        if not isinstance(simple, dict):
            raise AwsError(400, "BadRequestException", "Content.Simple is invalid")
        subject, body = simple.get("Subject"), simple.get("Body")
        if not isinstance(subject, dict) or not isinstance(subject.get("Data"), str):
            raise AwsError(400, "BadRequestException", "Content.Simple.Subject.Data is required")
        if not isinstance(body, dict) or not any(
            isinstance(body.get(k), dict) and isinstance(body[k].get("Data"), str)
            for k in ("Text", "Html")
        ):
            raise AwsError(400, "BadRequestException", "Content.Simple.Body needs Text or Html")
        for header in simple.get("Headers", []):
            if not isinstance(header, dict) or any(
                not isinstance(header.get(k), str) or "\n" in header[k] or "\r" in header[k]
                for k in ("Name", "Value")
            ):
                raise AwsError(400, "BadRequestException", "Content.Simple.Headers is invalid")

    def _describe_content(self, content: dict[str, Any]) -> dict[str, Any]:
        if "Raw" in content:
            mime = base64.b64decode(content["Raw"]["Data"])
            message = email.message_from_bytes(mime, policy=email.policy.default)
            return {
                "kind": "Raw",
                "subject": str(message.get("Subject", "")),
                "headers": [[k, str(v)] for k, v in message.items()],
                "raw": mime.decode("utf-8", "replace"),
            }
        if "Simple" in content:
            simple = content["Simple"]
            return {"kind": "Simple", **simple}
        return {"kind": "Template", **content["Template"]}

    def _scripted(self, recipients: list[str]) -> ScriptedError | None:
        self._errors = [e for e in self._errors if e.remaining is None or e.remaining > 0]
        wanted = {r.rpartition("<")[2].rstrip(">").lower() for r in recipients}
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
            if (request.method, request.path) == ("POST", "/control/notifications"):
                given = json_body(request)
                topic_arn, endpoint = given.get("topic_arn"), given.get("endpoint")
                if not isinstance(topic_arn, str) or not TOPIC_ARN.match(topic_arn):
                    raise ControlError(400, "topic_arn is an SNS topic ARN")
                if not isinstance(endpoint, str) or not endpoint.startswith(
                    ("http://", "https://")
                ):
                    raise ControlError(400, "endpoint is an http(s) URL")
                subscription = await self.subscribe(topic_arn, endpoint)
                return Response.of_json(201, asdict(subscription))
            status, answer = self._control_route(request)
        except ControlError as exc:
            status, answer = exc.status, {"error": exc.message}
        return Response.of_json(status, answer)

    def _control_route(self, request: Request) -> tuple[int, Any]:
        route = (request.method, request.path)
        if route == ("POST", "/control/keys"):
            given = json_body(request)
            key_id, secret = given.get("access_key_id"), given.get("secret_access_key")
            if not isinstance(key_id, str) or not key_id or not isinstance(secret, str):
                raise ControlError(400, "need access_key_id and secret_access_key")
            self.add_key(key_id, secret)
            return 201, {"access_key_id": key_id}
        if route == ("POST", "/control/identities"):
            identity = json_body(request).get("identity")
            if not isinstance(identity, str) or not identity:
                raise ControlError(400, "need identity (an address or domain)")
            self.verify_identity(identity)
            return 201, {"identity": identity}
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
            status, code = given.get("status"), given.get("code")
            message, recipient, count = (
                given.get("message", "scripted"),
                given.get("recipient"),
                given.get("count"),
            )
            if not isinstance(status, int) or not 400 <= status <= 599:
                raise ControlError(400, "status is 400-599")
            if not isinstance(code, str) or not code or not isinstance(message, str):
                raise ControlError(400, "code and message are strings")
            if count is not None and (not isinstance(count, int) or count < 1):
                raise ControlError(400, "count is a positive integer")
            recipient = recipient.lower() if isinstance(recipient, str) else None
            return 201, asdict(self.script(status, code, message, recipient=recipient, count=count))
        if route == ("GET", "/control/errors"):
            return 200, [asdict(e) for e in self._errors]
        if route == ("DELETE", "/control/errors"):
            cleared = len(self._errors)
            self._errors.clear()
            return 200, {"cleared": cleared}
        if route == ("POST", "/control/rate"):
            rate = json_body(request).get("max_send_rate")
            if rate is not None and (not isinstance(rate, int | float) or rate <= 0):
                raise ControlError(400, "max_send_rate is a positive number or null")
            self.max_send_rate = rate
            return 200, {"max_send_rate": rate}
        if route == ("POST", "/control/latency"):
            ms = json_body(request).get("ms")
            if not isinstance(ms, int | float) or isinstance(ms, bool) or ms < 0:
                raise ControlError(400, "ms is a number of milliseconds >= 0")
            self.latency_ms = float(ms)
            return 200, {"ms": self.latency_ms}
        if route == ("POST", "/control/bounces"):
            given = json_body(request)
            recipient, kind = given.get("recipient"), given.get("type", "Permanent")
            topic_arn = given.get("topic_arn")
            if not isinstance(recipient, str) or not ADDRESS.match(recipient):
                raise ControlError(400, "recipient is an address")
            if kind not in FEEDBACK_KINDS:
                raise ControlError(400, f"type is one of {', '.join(FEEDBACK_KINDS)}")
            if topic_arn is not None and (
                not isinstance(topic_arn, str) or not TOPIC_ARN.match(topic_arn)
            ):
                raise ControlError(400, "topic_arn is an SNS topic ARN or null")
            return 201, asdict(self.script_feedback(recipient, kind, topic_arn))
        if route == ("GET", "/control/bounces"):
            return 200, [asdict(f) for f in self.feedback.values()]
        if route == ("GET", "/control/notifications"):
            return 200, {
                "subscriptions": [asdict(s) for s in self.subscriptions],
                "published": self.published,
                "signing_cert_url": f"{self.endpoint}{self._cert_path}",
            }
        if route == ("POST", "/control/reset"):
            self.reset()
            return 200, {"reset": True}
        raise ControlError(404, f"no route {request.method} {request.path}")


def _signature(
    request: Request, signed: list[str], secret: str, date: str, region: str, amz_date: str
) -> str:
    """The SigV4 signature AWS would compute for `request`: canonical request, string to sign,
    HMAC key chain (docs.aws.amazon.com, "Create a signed AWS API request")."""
    path, _, query = request.target.partition("?")
    # Every service but S3 encodes the (already encoded) path segments once more.
    uri = "/".join(quote(s, safe="-_.~") for s in path.split("/")) or "/"
    pairs = sorted(
        (quote(unquote(k), safe="-_.~"), quote(unquote(v), safe="-_.~"))
        for k, _, v in (p.partition("=") for p in query.split("&") if p)
    )
    canonical_query = "&".join(f"{k}={v}" for k, v in pairs)
    lines = []
    for name in signed:
        values = [" ".join(v.split()) for k, v in request.headers if k == name]
        lines.append(f"{name}:{','.join(values)}\n")
    canonical = "\n".join(
        [
            request.method,
            uri,
            canonical_query,
            "".join(lines),
            ";".join(signed),
            hashlib.sha256(request.body).hexdigest(),
        ]
    )
    scope = f"{date}/{region}/ses/aws4_request"
    to_sign = "\n".join(
        ["AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(canonical.encode()).hexdigest()]
    )
    key = ("AWS4" + secret).encode()
    for part in (date, region, "ses", "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    return hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()


def _sns_time(now: float) -> str:
    """SNS's ``Timestamp``: ISO 8601 UTC with milliseconds (``2012-05-02T00:54:06.655Z``)."""
    moment = datetime.fromtimestamp(now, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def _ses_event(
    kind: str, address: str, message_id: str, source: str, recipients: list[str], now: float
) -> dict[str, Any]:
    """SES's notification JSON for a bounce or complaint ("Amazon SES notification contents")."""
    at = _sns_time(now)
    mail = {
        "timestamp": at,
        "messageId": message_id,
        "source": source,
        "destination": recipients,
    }
    feedback_id = f"0100{secrets.token_hex(8)}-{uuid.uuid4()}-000000"
    if kind == "Complaint":
        return {
            "notificationType": "Complaint",
            "complaint": {
                "complainedRecipients": [{"emailAddress": address}],
                "timestamp": at,
                "feedbackId": feedback_id,
                "userAgent": "Clarion SES emulator",
                "complaintFeedbackType": "abuse",
                "arrivalDate": at,
            },
            "mail": mail,
        }
    permanent = kind == "Permanent"
    return {
        "notificationType": "Bounce",
        "bounce": {
            "bounceType": kind,
            "bounceSubType": "General",
            "bouncedRecipients": [
                {
                    "emailAddress": address,
                    "action": "failed",
                    "status": "5.1.1" if permanent else "4.2.2",
                    "diagnosticCode": (
                        "smtp; 550 5.1.1 user unknown"
                        if permanent
                        else "smtp; 452 4.2.2 mailbox full"
                    ),
                }
            ],
            "timestamp": at,
            "feedbackId": feedback_id,
            "reportingMTA": "dsn; a8-70.smtp-out.amazonses.com",
        },
        "mail": mail,
    }


def _signing_certificate(key: rsa.RSAPrivateKey) -> bytes:
    """A self-signed certificate for the SNS signing key, as SNS publishes its own."""
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sns.amazonaws.com")])
    # The certificate's validity is checked against real time by whoever fetches it.
    now = datetime.now(UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=30))
        .sign(key, hashes.SHA256())
    )
    return certificate.public_bytes(serialization.Encoding.PEM)
