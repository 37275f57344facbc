"""Status webhooks over real sockets: registration, signed batches in audit-trail order,
retries with backoff, and the SSRF guard, against a scripted HTTP receiver on 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import hmac
import itertools
import json
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from clarion.adapters.webhooks_http import HttpWebhookSender
from clarion.domain import outcomes
from clarion.domain.statuses import Status
from clarion.settings import Settings, WebhookSettings
from clarion.wire.webhooks import parse_networks
from tests.support import Running, Tenant, running, tenant_client

# ---------------------------------------------------------------------------------------------
# a scripted receiver


@dataclass
class Answer:
    """What the receiver says to one request."""

    status: int = 204
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    hang: bool = False


@dataclass
class Request:
    """One request as the receiver saw it."""

    at: float
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    status: int
    peer: str
    server_name: str | None


class Receiver:
    """A tiny HTTP/1.1 server: records every request, answers from a script, then 204."""

    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        self.requests: list[Request] = []
        self.script: list[Answer] = []
        self._tls = tls
        self._server: asyncio.Server | None = None
        self._server_names: dict[int, str | None] = {}
        self._handlers: set[asyncio.Task[Any]] = set()
        if tls is not None:
            tls.sni_callback = self._on_sni

    def _on_sni(self, sock: ssl.SSLObject, name: str | None, _ctx: ssl.SSLContext) -> None:
        self._server_names[id(sock)] = name

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0, ssl=self._tls)
        return int(self._server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        for handler in list(self._handlers):
            handler.cancel()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        me = asyncio.current_task()
        assert me is not None
        self._handlers.add(me)
        try:
            line = (await reader.readline()).decode()
            method, path, _ = line.split(" ", 2)
            headers: dict[str, str] = {}
            while (raw := (await reader.readline()).decode()) not in ("\r\n", "\n", ""):
                name, _, value = raw.partition(":")
                headers[name.strip().lower()] = value.strip()
            body = await reader.readexactly(int(headers.get("content-length", "0")))
            answer = self.script.pop(0) if self.script else Answer()
            ssl_object = writer.get_extra_info("ssl_object")
            self.requests.append(
                Request(
                    at=time.monotonic(),
                    method=method,
                    path=path,
                    headers=headers,
                    body=body,
                    status=answer.status,
                    peer=writer.get_extra_info("peername")[0],
                    server_name=None
                    if ssl_object is None
                    else self._server_names.get(id(ssl_object)),
                )
            )
            if answer.hang:
                await asyncio.sleep(30)
            extra = "".join(f"{k}: {v}\r\n" for k, v in answer.headers.items())
            writer.write(
                f"HTTP/1.1 {answer.status} Scripted\r\nContent-Length: {len(answer.body)}\r\n"
                f"Connection: close\r\n{extra}\r\n".encode()
            )
            writer.write(answer.body)
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, ValueError):
            pass
        finally:
            self._handlers.discard(me)
            writer.close()
            with contextlib.suppress(ConnectionError, ssl.SSLError, asyncio.CancelledError):
                await writer.wait_closed()

    def delivered(self) -> list[Request]:
        """The requests answered with a 2xx."""
        return [r for r in self.requests if 200 <= r.status < 300]

    def changes(self) -> list[dict[str, Any]]:
        """Every change in the requests answered with a 2xx, in arrival order."""
        return [c for r in self.delivered() for c in json.loads(r.body)["changes"]]


@contextlib.asynccontextmanager
async def receiving(tls: ssl.SSLContext | None = None) -> AsyncIterator[tuple[Receiver, int]]:
    receiver = Receiver(tls)
    port = await receiver.start()
    try:
        yield receiver, port
    finally:
        await receiver.stop()


# ---------------------------------------------------------------------------------------------
# helpers

FAST = {
    "allow_http": True,
    "commit_lag_seconds": 0.2,
    "poll_interval_seconds": 0.05,
    "retry_base_seconds": 0.2,
    "retry_max_seconds": 0.8,
    "connect_timeout_seconds": 1.0,
    "timeout_seconds": 5.0,
}


def _with_webhooks(settings: Settings, **overrides: Any) -> Settings:
    return settings.model_copy(update={"webhooks": WebhookSettings(**{**FAST, **overrides})})


def verify_signature(secret: str, body: bytes, header: str, *, tolerance: int = 300) -> bool:
    """The receiver's check exactly as docs/api.md describes it, written independently."""
    parts = [p.strip().partition("=") for p in header.split(",")]
    timestamp = next(int(v) for k, _, v in parts if k == "t")
    if abs(time.time() - timestamp) > tolerance:
        return False
    expected = hmac.new(
        secret.encode(), str(timestamp).encode() + b"." + body, hashlib.sha256
    ).hexdigest()
    return any(hmac.compare_digest(expected, v) for k, _, v in parts if k == "v1")


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.05)


async def _register(t: Tenant, name: str, url: str, **body: Any) -> dict[str, Any]:
    response = await t.http.put(f"/v1/webhooks/{name}", json={"url": url, **body})
    assert response.status_code == 201, response.text
    return dict(response.json())


async def _routed_items(t: Tenant, users: list[str]) -> tuple[str, dict[str, int]]:
    """Send an event to `users`; its id and each user's inbox item id once routed."""
    accepted = await t.http.post("/v1/events", json={"type": "t", "recipients": {"users": users}})
    assert accepted.status_code == 202, accepted.text
    event_id = str(accepted.json()["id"])

    async def routed() -> bool:
        return bool((await t.http.get(f"/v1/events/{event_id}")).json()["state"] == "routed")

    await eventually(routed)
    items = {}
    for user in users:
        report = await t.http.get(f"/v1/events/{event_id}/recipients/{user}")
        items[user] = int(report.json()["item_id"])
    return event_id, items


async def _webhook(t: Tenant, name: str) -> dict[str, Any]:
    response = await t.http.get(f"/v1/webhooks/{name}")
    assert response.status_code == 200, response.text
    return dict(response.json())


async def _error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code
    return dict(error)


# ---------------------------------------------------------------------------------------------
# registration


async def test_a_webhook_is_registered_listed_updated_and_deleted_by_its_tenant_only(
    server: Running, tenant: Tenant
) -> None:
    created = await _register(tenant, "orders", "https://hooks.example.com/clarion")
    secret = created["secret"]
    assert isinstance(secret, str)
    assert len(secret) >= 32
    assert created["enabled"] is True
    assert created["failures"] == 0
    assert created["last_error"] is None

    listed = await tenant.http.get("/v1/webhooks")
    assert listed.status_code == 200
    assert [w["name"] for w in listed.json()["webhooks"]] == ["orders"]
    assert "secret" not in listed.json()["webhooks"][0]
    assert secret not in listed.text
    assert secret not in (await tenant.http.get("/v1/webhooks/orders")).text

    # An update keeps the secret unless one is given; the secret is never shown again.
    updated = await tenant.http.put(
        "/v1/webhooks/orders", json={"url": "https://hooks.example.com/v2", "enabled": False}
    )
    assert updated.status_code == 200
    assert updated.json()["secret"] is None
    assert updated.json()["url"] == "https://hooks.example.com/v2"
    assert updated.json()["enabled"] is False
    own = await tenant.http.put(
        "/v1/webhooks/orders",
        json={"url": "https://hooks.example.com/v2", "secret": "my-own-secret-of-some-length"},
    )
    assert own.status_code == 200
    assert own.json()["secret"] is None

    async with tenant_client(server) as other:
        assert (await other.http.get("/v1/webhooks")).json() == {"webhooks": []}
        await _error(await other.http.get("/v1/webhooks/orders"), 404, "not_found")
        await _error(await other.http.delete("/v1/webhooks/orders"), 404, "not_found")
        # The same name is the other tenant's own webhook, not a clash.
        theirs = await _register(other, "orders", "https://other.example.com/hook")
        assert theirs["url"] == "https://other.example.com/hook"

    assert (await _webhook(tenant, "orders"))["url"] == "https://hooks.example.com/v2"
    assert (await tenant.http.delete("/v1/webhooks/orders")).status_code == 204
    await _error(await tenant.http.delete("/v1/webhooks/orders"), 404, "not_found")
    assert (await tenant.http.get("/v1/webhooks")).json() == {"webhooks": []}


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("https://169.254.169.254/latest/meta-data/", "link-local"),
        ("https://10.1.2.3/hook", "private"),
        ("https://127.0.0.1/hook", "loopback"),
        ("https://[::ffff:10.0.0.1]/hook", "private"),
        ("https://100.64.0.1/hook", "CGNAT"),
        ("http://hooks.example.com/hook", "https"),
        ("ftp://hooks.example.com/hook", "https"),
        ("https://user:password@hooks.example.com/hook", "credentials"),
        ("not a url", "blanks"),
    ],
)
async def test_a_url_clarion_will_not_call_is_refused_at_registration(
    sqlite_server: Running, url: str, problem: str
) -> None:
    async with tenant_client(sqlite_server) as t:
        error = await _error(
            await t.http.put("/v1/webhooks/h", json={"url": url}), 422, "invalid_request"
        )
        assert problem in error["message"]
        assert error["details"]["fields"][0]["field"] == "body.url"
        assert (await t.http.get("/v1/webhooks")).json() == {"webhooks": []}


@pytest.mark.parametrize(
    ("name", "body"),
    [
        ("has space", {"url": "https://example.com/"}),
        ("-leading-dash", {"url": "https://example.com/"}),
        ("x" * 65, {"url": "https://example.com/"}),
        ("ok", {"url": "https://example.com/", "secret": "short"}),
        ("ok", {"url": "https://example.com/", "secret": "has a blank in it, sadly"}),
        ("ok", {"url": "https://example.com/", "tenant_id": "someone-else"}),
        ("ok", {}),
    ],
)
async def test_a_bad_name_secret_or_field_is_refused(
    sqlite_server: Running, name: str, body: dict[str, Any]
) -> None:
    async with tenant_client(sqlite_server) as t:
        await _error(await t.http.put(f"/v1/webhooks/{name}", json=body), 422, "invalid_request")


async def test_a_tenant_has_a_bounded_number_of_webhooks(sqlite_settings: Settings) -> None:
    async with (
        running(_with_webhooks(sqlite_settings, max_per_tenant=2)) as srv,
        tenant_client(srv) as t,
    ):
        await _register(t, "a", "https://example.com/a")
        await _register(t, "b", "https://example.com/b")
        await _error(
            await t.http.put("/v1/webhooks/c", json={"url": "https://example.com/c"}),
            409,
            "conflict",
        )
        # Updating one that exists is still fine.
        assert (
            await t.http.put("/v1/webhooks/a", json={"url": "https://example.com/a2"})
        ).status_code == 200


async def test_allowed_networks_and_http_let_an_operators_receiver_register(
    sqlite_settings: Settings,
) -> None:
    settings = _with_webhooks(sqlite_settings, allowed_networks=["10.0.0.0/8"])
    async with running(settings) as srv, tenant_client(srv) as t:
        await _register(t, "internal", "http://10.1.2.3:8080/hook")
        await _error(
            await t.http.put("/v1/webhooks/public", json={"url": "http://93.184.216.34/hook"}),
            422,
            "invalid_request",
        )


# ---------------------------------------------------------------------------------------------
# dispatch


async def test_status_changes_arrive_signed_batched_and_in_audit_trail_order(
    settings: Settings,
) -> None:
    settings = _with_webhooks(settings, allowed_networks=["127.0.0.1/32"], batch_size=2)
    async with (
        receiving() as (receiver, port),
        running(settings) as srv,
        tenant_client(srv) as t,
    ):
        secret = (await _register(t, "orders", f"http://127.0.0.1:{port}/hook?x=1"))["secret"]
        event_id, items = await _routed_items(t, ["ann", "bob"])
        app = srv.clarion
        assert sorted(await app.realtime.mark_sent(t.id, list(items.values()))) == sorted(
            items.values()
        )
        ann = await app.directory.ensure_user(t.id, "ann")
        bob = await app.directory.ensure_user(t.id, "bob")
        await app.acknowledging.report(t.id, ann, items["ann"], Status.RECEIVED, channel=None)
        await app.acknowledging.report(t.id, ann, items["ann"], Status.READ, channel=None)
        await app.acknowledging.report(t.id, bob, items["bob"], Status.READ, channel=None)

        async def all_arrived() -> bool:
            return len(receiver.changes()) >= 5

        await eventually(all_arrived)
        await asyncio.sleep(0.5)  # and nothing more comes

        changes = receiver.changes()
        assert len(changes) == 5
        ids = [c["id"] for c in changes]
        assert ids == sorted(ids)
        assert len(set(ids)) == len(ids)
        by_user = {
            user: [(c["from"], c["to"]) for c in changes if c["user"] == user]
            for user in ("ann", "bob")
        }
        assert by_user == {
            "ann": [("pending", "sent"), ("sent", "received"), ("received", "read")],
            "bob": [("pending", "sent"), ("sent", "read")],
        }
        # Both items were sent in one transaction, before any receipt.
        assert {c["user"] for c in changes[:2]} == {"ann", "bob"}
        for change in changes:
            assert change["event_id"] == event_id
            assert change["item_id"] == items[change["user"]]
            assert change["notification_id"]
            assert dt.datetime.fromisoformat(change["at"]).tzinfo is not None

        assert len(receiver.requests) >= 3
        for request in receiver.requests:
            assert request.method == "POST"
            assert request.path == "/hook?x=1"
            assert request.headers["content-type"] == "application/json"
            assert request.headers["host"] == f"127.0.0.1:{port}"
            assert verify_signature(secret, request.body, request.headers["clarion-signature"])
            assert not verify_signature(
                "another-secret", request.body, request.headers["clarion-signature"]
            )
            document = json.loads(request.body)
            assert document["webhook"] == "orders"
            assert 1 <= len(document["changes"]) <= 2

        hook = await _webhook(t, "orders")
        assert hook["cursor"] >= ids[-1]
        assert hook["failures"] == 0


async def test_a_failing_receiver_gets_retries_with_backoff_and_loses_nothing(
    settings: Settings,
) -> None:
    settings = _with_webhooks(settings, allowed_networks=["127.0.0.1/32"], batch_size=2)
    async with (
        receiving() as (receiver, port),
        running(settings) as srv,
        tenant_client(srv) as t,
    ):
        receiver.script = [
            Answer(500),
            Answer(503),
            Answer(502),
            Answer(429, {"Retry-After": "1"}),
        ]
        # A name, resolved and pinned: the request still says whom it is for.
        secret = (await _register(t, "orders", f"http://localhost:{port}/hook"))["secret"]
        _, items = await _routed_items(t, ["ann", "bob", "cid"])
        app = srv.clarion
        await app.realtime.mark_sent(t.id, list(items.values()))

        async def failing() -> bool:
            hook = await _webhook(t, "orders")
            return bool(hook["failures"] >= 2 and hook["last_error"])

        await eventually(failing)
        assert "HTTP 50" in (await _webhook(t, "orders"))["last_error"]
        for user, item in items.items():
            uid = await app.directory.ensure_user(t.id, user)
            await app.acknowledging.report(t.id, uid, item, Status.READ, channel=None)

        async def recovered() -> bool:
            hook = await _webhook(t, "orders")
            return len(receiver.changes()) >= 6 and hook["failures"] == 0

        await eventually(recovered)
        await asyncio.sleep(0.5)

        attempts = receiver.requests
        assert [r.status for r in attempts[:4]] == [500, 503, 502, 429]
        # Backoff: equal jitter keeps at least half of 0.2 s, 0.4 s, 0.8 s; the 429 asked for 1 s.
        gaps = [b.at - a.at for a, b in itertools.pairwise(attempts[:5])]
        assert gaps[0] >= 0.09
        assert gaps[1] >= 0.19
        assert gaps[2] >= 0.39
        assert gaps[3] >= 0.95
        # A failed batch is sent again from where it stood: the first delivered batch starts
        # with the change the failed attempts carried.
        first_failed = json.loads(attempts[0].body)["changes"][0]["id"]
        assert json.loads(receiver.delivered()[0].body)["changes"][0]["id"] == first_failed

        changes = receiver.changes()
        ids = [c["id"] for c in changes]
        assert ids == sorted(ids)
        assert len(set(ids)) == len(ids) == 6
        everything = {c["id"] for r in attempts for c in json.loads(r.body)["changes"]}
        assert everything == set(ids)
        assert sorted((c["user"], c["to"]) for c in changes) == sorted(
            (u, s) for u in items for s in ("sent", "read")
        )
        for request in attempts:
            assert request.headers["host"] == f"localhost:{port}"
            assert request.peer == "127.0.0.1"
            assert verify_signature(secret, request.body, request.headers["clarion-signature"])
        hook = await _webhook(t, "orders")
        assert hook["last_error"] is None
        assert hook["next_attempt_at"] is None


async def test_a_name_resolving_to_loopback_is_refused_at_dispatch(settings: Settings) -> None:
    settings = _with_webhooks(settings)  # nothing allowed: loopback is off limits
    async with (
        receiving() as (receiver, port),
        running(settings) as srv,
        tenant_client(srv) as t,
    ):
        # Registration cannot know what a name resolves to; dispatch checks before each POST.
        await _register(t, "sneaky", f"http://localhost:{port}/hook")
        _, items = await _routed_items(t, ["ann"])
        await srv.clarion.realtime.mark_sent(t.id, list(items.values()))

        async def refused() -> bool:
            hook = await _webhook(t, "sneaky")
            return bool(hook["failures"] >= 2)

        await eventually(refused)
        hook = await _webhook(t, "sneaky")
        assert "localhost resolves to 127.0.0.1" in hook["last_error"]
        assert "loopback" in hook["last_error"]
        assert hook["next_attempt_at"] is not None
        assert receiver.requests == []


async def test_a_disabled_webhook_waits_and_catches_up_when_enabled(
    sqlite_settings: Settings,
) -> None:
    settings = _with_webhooks(sqlite_settings, allowed_networks=["127.0.0.1/32"])
    async with (
        receiving() as (receiver, port),
        running(settings) as srv,
        tenant_client(srv) as t,
    ):
        url = f"http://127.0.0.1:{port}/hook"
        await _register(t, "later", url, enabled=False)
        _, items = await _routed_items(t, ["ann"])
        await srv.clarion.realtime.mark_sent(t.id, list(items.values()))
        await asyncio.sleep(0.6)
        assert receiver.requests == []
        enabled = await t.http.put("/v1/webhooks/later", json={"url": url, "enabled": True})
        assert enabled.status_code == 200

        async def arrived() -> bool:
            return len(receiver.changes()) == 1

        await eventually(arrived)
        assert receiver.changes()[0]["to"] == "sent"


async def test_a_new_webhook_does_not_replay_earlier_history(sqlite_settings: Settings) -> None:
    settings = _with_webhooks(sqlite_settings, allowed_networks=["127.0.0.1/32"])
    async with (
        receiving() as (receiver, port),
        running(settings) as srv,
        tenant_client(srv) as t,
    ):
        _, before = await _routed_items(t, ["ann"])
        await srv.clarion.realtime.mark_sent(t.id, list(before.values()))
        await _register(t, "fresh", f"http://127.0.0.1:{port}/hook")
        _, after = await _routed_items(t, ["bob"])
        await srv.clarion.realtime.mark_sent(t.id, list(after.values()))

        async def arrived() -> bool:
            return len(receiver.changes()) >= 1

        await eventually(arrived)
        await asyncio.sleep(0.4)
        assert [c["user"] for c in receiver.changes()] == ["bob"]


# ---------------------------------------------------------------------------------------------
# the sender on its own: pinning, TLS, redirects, timeouts, size cap


def _sender(**overrides: Any) -> HttpWebhookSender:
    options: dict[str, Any] = {
        "now": lambda: dt.datetime.now(dt.UTC),
        "allowed_networks": parse_networks(["127.0.0.1/32"]),
        "allow_http": True,
        "connect_timeout": 1.0,
        "timeout": 2.0,
        "max_response_bytes": 1024,
    }
    return HttpWebhookSender(**{**options, **overrides})


def _certificate_for(name: str) -> tuple[bytes, bytes]:
    """A self-signed certificate for `name` and its key, both PEM."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


async def test_tls_goes_to_the_pinned_address_with_the_names_sni_and_certificate(
    tmp_path: Any,
) -> None:
    cert_pem, key_pem = _certificate_for("localhost")
    (tmp_path / "cert.pem").write_bytes(cert_pem)
    (tmp_path / "key.pem").write_bytes(key_pem)
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(tmp_path / "cert.pem", tmp_path / "key.pem")
    trust = ssl.create_default_context(cadata=cert_pem.decode())
    async with receiving(server_tls) as (receiver, port):
        sender = _sender(allow_http=False, verify=trust)
        try:
            outcome = await sender.post(f"https://localhost:{port}/tls", b"{}", {"X-Test": "1"})
            assert outcome == outcomes.Delivered()
            (request,) = receiver.requests
            assert request.server_name == "localhost"
            assert request.headers["host"] == f"localhost:{port}"
            assert request.peer == "127.0.0.1"
            assert request.headers["x-test"] == "1"
            # The certificate names localhost, not the address: verification is on.
            by_address = await sender.post(f"https://127.0.0.1:{port}/tls", b"{}", {})
            assert isinstance(by_address, outcomes.RetryLater)
            assert len(receiver.requests) == 1
        finally:
            await sender.close()


async def test_the_sender_refuses_loopback_unless_allowed() -> None:
    async with receiving() as (receiver, port):
        sender = _sender(allowed_networks=())
        try:
            outcome = await sender.post(f"http://localhost:{port}/", b"{}", {})
            assert isinstance(outcome, outcomes.RetryLater)
            assert "loopback" in outcome.reason
            metadata = await sender.post("http://169.254.169.254/latest/meta-data/", b"{}", {})
            assert isinstance(metadata, outcomes.RetryLater)
            assert "link-local" in metadata.reason
            assert receiver.requests == []
        finally:
            await sender.close()


async def test_the_sender_does_not_follow_redirects() -> None:
    async with receiving() as (receiver, port):
        receiver.script = [Answer(302, {"Location": f"http://127.0.0.1:{port}/elsewhere"})]
        sender = _sender()
        try:
            outcome = await sender.post(f"http://127.0.0.1:{port}/hook", b"{}", {})
            assert outcome == outcomes.RetryLater("HTTP 302: redirects are not followed")
            assert [r.path for r in receiver.requests] == ["/hook"]
        finally:
            await sender.close()


async def test_the_sender_gives_up_on_a_receiver_that_does_not_answer() -> None:
    async with receiving() as (receiver, port):
        receiver.script = [Answer(hang=True)]
        sender = _sender(timeout=0.5)
        try:
            started = time.monotonic()
            outcome = await sender.post(f"http://127.0.0.1:{port}/slow", b"{}", {})
            assert isinstance(outcome, outcomes.RetryLater)
            assert time.monotonic() - started < 2.0
        finally:
            await sender.close()


async def test_the_sender_reads_no_more_of_the_answer_than_its_cap() -> None:
    async with receiving() as (receiver, port):
        receiver.script = [Answer(200, body=b"x" * 20_000_000)]
        sender = _sender(max_response_bytes=1024)
        try:
            started = time.monotonic()
            outcome = await sender.post(f"http://127.0.0.1:{port}/big", b"{}", {})
            assert outcome == outcomes.Delivered()
            assert time.monotonic() - started < 2.0
        finally:
            await sender.close()


async def test_the_sender_answers_a_name_that_does_not_resolve_with_a_retry() -> None:
    sender = _sender(allowed_networks=(), allow_http=False)
    try:
        outcome = await sender.post("https://no-such-host.invalid/hook", b"{}", {})
        assert isinstance(outcome, outcomes.RetryLater)
        assert "does not resolve" in outcome.reason
    finally:
        await sender.close()
