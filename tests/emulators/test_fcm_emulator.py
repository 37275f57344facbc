"""The FCM emulator answers like Google documents, over real sockets (TLS with ALPN h2 or
http/1.1, cleartext h2c or HTTP/1.1), driven by httpx with assertions signed by plain PyJWT, and
by a third-party client (firebase-admin)."""

from __future__ import annotations

import asyncio
import ssl
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from clarion.emulators.fcm import FcmEmulator

PROJECT = "demo-project"
EMAIL = f"sender@{PROJECT}.iam.gserviceaccount.com"
KID = "k1"
SCOPE = "https://www.googleapis.com/auth/firebase.messaging"
AUDIENCE = "https://oauth2.googleapis.com/token"
GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"
TOKEN = "fcm-token-0123456789:APA91b-abc_def"
START = 1_750_000_000.0
KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
OTHER_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)


class FakeClock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def public_pem(key: rsa.RSAPrivateKey) -> str:
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


def assertion(
    key: rsa.RSAPrivateKey = KEY,
    *,
    iat: float = START,
    lifetime: int = 3600,
    iss: str = EMAIL,
    aud: str = AUDIENCE,
    scope: str | None = SCOPE,
    kid: str | None = KID,
) -> str:
    claims: dict[str, Any] = {"iss": iss, "aud": aud, "iat": int(iat), "exp": int(iat) + lifetime}
    if scope is not None:
        claims["scope"] = scope
    headers = {"kid": kid} if kid else {}
    return jwt.encode(claims, key, algorithm="RS256", headers=headers)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(params=["tls", "h2c"])
async def emulator(request: pytest.FixtureRequest, clock: FakeClock) -> AsyncIterator[FcmEmulator]:
    emu = FcmEmulator(tls=request.param == "tls", clock=clock)
    emu.register_account(EMAIL, public_pem(KEY), PROJECT, KID)
    await emu.start()
    yield emu
    await emu.stop()


def client(emulator: FcmEmulator, *, http2: bool = True) -> httpx.AsyncClient:
    """An HTTP/2 client (prior knowledge on cleartext), or an HTTP/1.1 one."""
    verify: ssl.SSLContext | bool = False
    if emulator.tls:
        assert emulator.certificate_pem is not None
        verify = ssl.create_default_context(cadata=emulator.certificate_pem.decode())
    cleartext = not emulator.tls
    return httpx.AsyncClient(
        base_url=emulator.base_url,
        http1=not (http2 and cleartext),
        http2=http2,
        verify=verify,
        timeout=10,
    )


async def access_token(http: httpx.AsyncClient, signed: str | None = None) -> str:
    answer = await http.post(
        "/token", data={"grant_type": GRANT, "assertion": signed or assertion()}
    )
    assert answer.status_code == 200, answer.text
    return str(answer.json()["access_token"])


async def send(
    http: httpx.AsyncClient,
    token: str | None,
    message: dict[str, Any] | None = None,
    *,
    project: str = PROJECT,
    **extra: Any,
) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    body = {"message": message if message is not None else {"token": TOKEN}, **extra}
    return await http.post(f"/v1/projects/{project}/messages:send", json=body, headers=headers)


def error_of(answer: httpx.Response) -> tuple[int, str, str | None]:
    """(HTTP status, google.rpc status, FCM errorCode or None)."""
    error = answer.json()["error"]
    codes = [
        d["errorCode"]
        for d in error.get("details", [])
        if d["@type"] == "type.googleapis.com/google.firebase.fcm.v1.FcmError"
    ]
    assert error["code"] == answer.status_code
    return answer.status_code, error["status"], codes[0] if codes else None


# -- the OAuth token endpoint -----------------------------------------------------------------


@pytest.mark.parametrize("http2", [True, False], ids=["http2", "http1"])
async def test_a_signed_assertion_buys_an_access_token_that_sends(
    emulator: FcmEmulator, http2: bool
) -> None:
    async with client(emulator, http2=http2) as http:
        answer = await http.post("/token", data={"grant_type": GRANT, "assertion": assertion()})
        assert answer.status_code == 200
        granted = answer.json()
        assert granted["token_type"] == "Bearer"
        assert granted["expires_in"] == 3599
        sent = await send(http, granted["access_token"], {"token": TOKEN, "data": {"k": "v"}})
    assert sent.status_code == 200, sent.text
    name = sent.json()["name"]
    assert name.startswith(f"projects/{PROJECT}/messages/0:")
    [received] = emulator.received
    assert received["name"] == name
    assert received["token"] == TOKEN
    assert received["message"] == {"token": TOKEN, "data": {"k": "v"}}
    assert received["client_email"] == EMAIL
    assert received["http_version"].startswith("HTTP/2" if http2 else "HTTP/1.1")


@pytest.mark.parametrize(
    ("signed", "error", "description"),
    [
        (lambda: assertion(OTHER_KEY), "invalid_grant", "Invalid JWT Signature."),
        (lambda: assertion(kid="unknown"), "invalid_grant", "Invalid JWT Signature."),
        (lambda: assertion(iss="nobody@x.iam.gserviceaccount.com"), "invalid_grant", "account"),
        (lambda: assertion(aud="https://example.com/token"), "invalid_grant", "audience"),
        (lambda: assertion(lifetime=3601), "invalid_grant", "short-lived"),
        (lambda: assertion(iat=START - 7200), "invalid_grant", "short-lived"),
        (lambda: assertion(iat=START + 3600), "invalid_grant", "short-lived"),
        (lambda: assertion(scope=None), "invalid_scope", "scope"),
        (lambda: "not-a-jwt", "invalid_grant", "JWT"),
    ],
    ids=[
        "other-key",
        "unknown-kid",
        "unknown-account",
        "wrong-audience",
        "over-an-hour",
        "expired",
        "from-the-future",
        "no-scope",
        "garbage",
    ],
)
async def test_the_token_endpoint_refuses_a_bad_assertion(
    emulator: FcmEmulator, signed: Any, error: str, description: str
) -> None:
    async with client(emulator) as http:
        answer = await http.post("/token", data={"grant_type": GRANT, "assertion": signed()})
    assert answer.status_code == 400
    assert answer.json()["error"] == error
    assert description in answer.json()["error_description"]
    assert emulator.token_requests[-1]["status"] == 400


async def test_an_assertion_without_kid_is_tried_against_every_key_of_the_account(
    emulator: FcmEmulator,
) -> None:
    async with client(emulator) as http:
        await access_token(http, assertion(kid=None))


async def test_the_token_endpoint_takes_only_the_jwt_bearer_grant(emulator: FcmEmulator) -> None:
    async with client(emulator) as http:
        answer = await http.post(
            "/token", data={"grant_type": "client_credentials", "assertion": assertion()}
        )
    assert (answer.status_code, answer.json()["error"]) == (400, "unsupported_grant_type")


async def test_a_token_endpoint_outage_is_scripted(emulator: FcmEmulator) -> None:
    emulator.script_token_endpoint(503, "temporarily_unavailable", retry_after=7, count=1)
    async with client(emulator) as http:
        down = await http.post("/token", data={"grant_type": GRANT, "assertion": assertion()})
        assert (down.status_code, down.headers["retry-after"]) == (503, "7")
        await access_token(http)


# -- bearer tokens and projects -----------------------------------------------------------------


async def test_a_send_without_a_token_is_unauthenticated_without_an_fcm_error(
    emulator: FcmEmulator,
) -> None:
    async with client(emulator) as http:
        answer = await send(http, None)
    assert error_of(answer) == (401, "UNAUTHENTICATED", None)
    assert "missing required authentication credential" in answer.json()["error"]["message"]
    assert answer.headers["www-authenticate"].startswith("Bearer")


async def test_an_expired_or_revoked_access_token_is_refused_with_a_plain_401(
    emulator: FcmEmulator, clock: FakeClock
) -> None:
    async with client(emulator) as http:
        token = await access_token(http)
        assert (await send(http, token)).status_code == 200
        clock.advance(3599)
        expired = await send(http, token)
        assert error_of(expired) == (401, "UNAUTHENTICATED", None)
        assert "invalid authentication credentials" in expired.json()["error"]["message"]
        fresh = await access_token(http, assertion(iat=clock.now))
        assert (await send(http, fresh)).status_code == 200
        assert emulator.revoke_access_tokens() == 2
        assert error_of(await send(http, fresh)) == (401, "UNAUTHENTICATED", None)


async def test_an_account_sends_only_in_its_own_project(emulator: FcmEmulator) -> None:
    async with client(emulator) as http:
        token = await access_token(http)
        answer = await send(http, token, project="another-project")
    assert error_of(answer) == (403, "PERMISSION_DENIED", None)
    assert "cloudmessaging.messages.create" in answer.json()["error"]["message"]
    assert emulator.received == []


async def test_a_token_without_a_messaging_scope_is_refused(emulator: FcmEmulator) -> None:
    async with client(emulator) as http:
        token = await access_token(
            http, assertion(scope="https://www.googleapis.com/auth/userinfo.email")
        )
        answer = await send(http, token)
    assert error_of(answer) == (403, "PERMISSION_DENIED", None)


async def test_a_deleted_account_can_neither_get_nor_use_tokens(emulator: FcmEmulator) -> None:
    async with client(emulator) as http:
        token = await access_token(http)
        assert emulator.delete_account(EMAIL)
        assert (await send(http, token)).status_code == 401
        refused = await http.post("/token", data={"grant_type": GRANT, "assertion": assertion()})
    assert refused.json()["error"] == "invalid_grant"


async def test_only_the_send_path_exists(emulator: FcmEmulator) -> None:
    async with client(emulator) as http:
        token = await access_token(http)
        headers = {"Authorization": f"Bearer {token}"}
        wrong = await http.post(f"/v1/projects/{PROJECT}/messages:batch", json={}, headers=headers)
        legacy = await http.post("/fcm/send", json={}, headers=headers)
        get = await http.get(f"/v1/projects/{PROJECT}/messages:send", headers=headers)
    assert wrong.status_code == legacy.status_code == 404
    assert get.status_code == 405


# -- messages -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("message", "expected", "words"),
    [
        ({"token": TOKEN, "data": {"n": 1}}, (400, "INVALID_ARGUMENT", None), "TYPE_STRING"),
        (
            {"token": TOKEN, "data": {"from": "x"}},
            (400, "INVALID_ARGUMENT", "INVALID_ARGUMENT"),
            "from",
        ),
        (
            {"token": TOKEN, "data": {"google.x": "x"}},
            (400, "INVALID_ARGUMENT", "INVALID_ARGUMENT"),
            "google.x",
        ),
        ({"token": TOKEN, "topic": "news"}, (400, "INVALID_ARGUMENT", "INVALID_ARGUMENT"), "one"),
        ({"data": {"k": "v"}}, (400, "INVALID_ARGUMENT", "INVALID_ARGUMENT"), "one"),
        ({"token": "not a token!"}, (400, "INVALID_ARGUMENT", "INVALID_ARGUMENT"), "not a valid"),
        ({"topic": "/topics/news"}, (400, "INVALID_ARGUMENT", "INVALID_ARGUMENT"), "topic"),
        ({"token": TOKEN, "android": {"ttl": "3600"}}, (400, "INVALID_ARGUMENT", None), "ttl"),
        ({"token": TOKEN, "android": {"ttl": "2419201s"}}, (400, "INVALID_ARGUMENT", None), "ttl"),
        (
            {"token": TOKEN, "android": {"priority": "urgent"}},
            (400, "INVALID_ARGUMENT", None),
            "priority",
        ),
        ({"token": TOKEN, "colour": "red"}, (400, "INVALID_ARGUMENT", None), "Unknown name"),
        ({"token": TOKEN, "notification": {"title": 3}}, (400, "INVALID_ARGUMENT", None), "title"),
        (
            {"token": TOKEN, "data": {"k": "x" * 4096}},
            (400, "INVALID_ARGUMENT", "INVALID_ARGUMENT"),
            "too big",
        ),
        (
            {"topic": "news", "data": {"k": "x" * 2048}},
            (400, "INVALID_ARGUMENT", "INVALID_ARGUMENT"),
            "too big",
        ),
        (
            {
                "condition": "'a' in topics && ('b' in topics || 'c' in topics) && 'd' in topics "
                "&& 'e' in topics && 'f' in topics"
            },
            (400, "INVALID_ARGUMENT", "INVALID_ARGUMENT"),
            "condition",
        ),
    ],
    ids=[
        "non-string-data",
        "reserved-from",
        "reserved-google",
        "two-targets",
        "no-target",
        "malformed-token",
        "topic-with-prefix",
        "ttl-without-unit",
        "ttl-over-four-weeks",
        "unknown-priority",
        "unknown-field",
        "non-string-title",
        "oversize-to-a-token",
        "oversize-to-a-topic",
        "six-topic-condition",
    ],
)
async def test_a_message_fcm_would_refuse_is_refused(
    emulator: FcmEmulator,
    message: dict[str, Any],
    expected: tuple[int, str, str | None],
    words: str,
) -> None:
    async with client(emulator) as http:
        token = await access_token(http)
        answer = await send(http, token, message)
    assert error_of(answer) == expected, answer.text
    assert words in answer.text
    assert emulator.received == []
    assert emulator.attempts[-1]["status"] == 400


async def test_what_fcm_takes_is_taken(emulator: FcmEmulator) -> None:
    full = {
        "token": TOKEN,
        "notification": {"title": "t", "body": "b"},
        "data": {"k": "x" * 4000},
        "android": {"ttl": "3600.5s", "priority": "high", "collapse_key": "c"},
        "apns": {"headers": {"apns-priority": "10"}, "payload": {"aps": {"badge": 1}}},
        "fcm_options": {"analytics_label": "campaign_1"},
    }
    async with client(emulator) as http:
        token = await access_token(http)
        answers = [
            await send(http, token, full),
            await send(http, token, {"topic": "news", "data": {"k": "v"}}),
            await send(
                http, token, {"condition": "'a' in topics && ('b' in topics || 'c' in topics)"}
            ),
        ]
    assert [a.status_code for a in answers] == [200, 200, 200], [a.text for a in answers]
    assert [r["topic"] for r in emulator.received] == [None, "news", None]


async def test_a_dry_run_is_checked_but_not_sent(emulator: FcmEmulator) -> None:
    async with client(emulator) as http:
        token = await access_token(http)
        answer = await send(http, token, validate_only=True)
    assert answer.json() == {"name": f"projects/{PROJECT}/messages/fake_message_id"}
    assert emulator.received == []


# -- tokens, quotas, scripts, latency -----------------------------------------------------------


async def test_registered_tokens_belong_to_their_project_and_gone_ones_are_unregistered(
    clock: FakeClock,
) -> None:
    emulator = FcmEmulator(tls=False, clock=clock, registered_only=True)
    emulator.register_account(EMAIL, public_pem(KEY), PROJECT, KID)
    emulator.register_tokens(PROJECT, ["mine-000000000000000000"])
    emulator.register_tokens("other-project", ["theirs-0000000000000000"])
    await emulator.start()
    try:
        async with client(emulator) as http:
            token = await access_token(http)
            mine = await send(http, token, {"token": "mine-000000000000000000"})
            theirs = await send(http, token, {"token": "theirs-0000000000000000"})
            unknown = await send(http, token, {"token": "never-seen-00000000000"})
            emulator.unregister_tokens(["mine-000000000000000000"])
            gone = await send(http, token, {"token": "mine-000000000000000000"})
    finally:
        await emulator.stop()
    assert mine.status_code == 200
    assert error_of(theirs) == (403, "PERMISSION_DENIED", "SENDER_ID_MISMATCH")
    assert error_of(unknown) == (404, "NOT_FOUND", "UNREGISTERED")
    assert error_of(gone) == (404, "NOT_FOUND", "UNREGISTERED")


async def test_a_project_over_its_quota_gets_429_with_retry_after_until_it_refills(
    emulator: FcmEmulator, clock: FakeClock
) -> None:
    emulator.set_quota(PROJECT, 60)  # one a second
    async with client(emulator) as http:
        token = await access_token(http)
        statuses = [(await send(http, token)).status_code for _ in range(60)]
        over = await send(http, token)
        clock.advance(1)
        again = await send(http, token)
    assert statuses == [200] * 60
    assert error_of(over) == (429, "RESOURCE_EXHAUSTED", "QUOTA_EXCEEDED")
    assert over.headers["retry-after"] == "1"
    assert again.status_code == 200


async def test_scripted_outcomes_answer_per_token_for_a_count_or_a_window(
    emulator: FcmEmulator, clock: FakeClock
) -> None:
    emulator.script("UNREGISTERED", target="dead-00000000000000000000")
    emulator.script("INTERNAL", count=1)
    emulator.script("UNAVAILABLE", target="busy-00000000000000000000", retry_after=30, seconds=60)
    async with client(emulator) as http:
        token = await access_token(http)
        first = await send(http, token, {"token": "live-00000000000000000000"})
        second = await send(http, token, {"token": "live-00000000000000000000"})
        dead = await send(http, token, {"token": "dead-00000000000000000000"})
        busy = await send(http, token, {"token": "busy-00000000000000000000"})
        clock.advance(61)
        recovered = await send(http, token, {"token": "busy-00000000000000000000"})
    assert error_of(first) == (500, "INTERNAL", "INTERNAL")
    assert second.status_code == 200
    assert error_of(dead) == (404, "NOT_FOUND", "UNREGISTERED")
    assert error_of(busy) == (503, "UNAVAILABLE", "UNAVAILABLE")
    assert busy.headers["retry-after"] == "30"
    assert recovered.status_code == 200
    assert [a["error_code"] for a in emulator.attempts] == [
        "INTERNAL",
        None,
        "UNREGISTERED",
        "UNAVAILABLE",
        None,
    ]


async def test_latency_delays_answers_that_still_overlap_on_one_http2_connection(
    emulator: FcmEmulator,
) -> None:
    emulator.latency_ms = 300
    async with client(emulator) as http:
        token = await access_token(http)
        started = time.monotonic()
        answers = await asyncio.gather(*(send(http, token) for _ in range(20)))
        elapsed = time.monotonic() - started
    assert [a.status_code for a in answers] == [200] * 20
    assert 0.3 <= elapsed < 2
    assert len({r["http_version"] for r in emulator.received}) == 1  # one connection


async def test_the_control_api_registers_scripts_and_reports(emulator: FcmEmulator) -> None:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{emulator.control_port}") as ctl:
        created = await ctl.post("/control/service-accounts", json={"project_id": "p2"})
        assert created.status_code == 201
        account = created.json()
        assert account["token_uri"] == emulator.token_url
        scripted = await ctl.post(
            "/control/outcomes",
            json={"error_code": "QUOTA_EXCEEDED", "target": TOKEN, "retry_after": 5, "count": 1},
        )
        assert scripted.status_code == 201
        assert scripted.json()["status"] == 429
        assert (await ctl.post("/control/outcomes", json={"error_code": "NOPE"})).status_code == 400
        quota = await ctl.post("/control/quota", json={"project_id": "p2", "per_minute": 100})
        assert quota.json() == {"project_id": "p2", "per_minute": 100}
        key = serialization.load_pem_private_key(account["private_key"].encode(), None)
        assert isinstance(key, rsa.RSAPrivateKey)
        async with client(emulator) as http:
            token = await access_token(
                http,
                assertion(key, iss=account["client_email"], kid=account["private_key_id"]),
            )
            limited = await send(http, token, project="p2")
            sent = await send(http, token, project="p2")
        assert error_of(limited) == (429, "RESOURCE_EXHAUSTED", "QUOTA_EXCEEDED")
        assert limited.headers["retry-after"] == "5"
        assert sent.status_code == 200
        received = (await ctl.get("/control/received")).json()
        assert [r["name"] for r in received] == [sent.json()["name"]]
        attempts = (await ctl.get("/control/attempts")).json()
        assert [a["status"] for a in attempts] == [429, 200]
        assert len((await ctl.get("/control/token-requests")).json()) == 1
        assert (await ctl.post("/control/access-tokens/revoke")).json() == {"revoked": 1}
        assert (await ctl.post("/control/reset")).status_code == 200
        assert (await ctl.get("/control/received")).json() == []
        assert (await ctl.get("/control/nothing")).status_code == 404


# -- firebase-admin -----------------------------------------------------------------------------


@pytest.fixture
def threaded_emulator(tmp_path: Path) -> Iterator[tuple[FcmEmulator, Path]]:
    """An emulator on its own thread and loop: firebase-admin fetches its access token with
    blocking `requests` calls on the caller's event loop, which an in-loop emulator could never
    answer."""
    emulator = FcmEmulator(tls=True)
    loop = asyncio.new_event_loop()
    ready = threading.Event()

    def serve() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(emulator.start())
        ready.set()
        loop.run_forever()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    assert ready.wait(10)
    assert emulator.certificate_pem is not None
    ca = tmp_path / "emulator.pem"
    ca.write_bytes(emulator.certificate_pem)
    yield emulator, ca
    asyncio.run_coroutine_threadsafe(emulator.stop(), loop).result(10)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)
    loop.close()


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
async def test_firebase_admin_sends_through_the_emulator_and_reads_its_errors(
    threaded_emulator: tuple[FcmEmulator, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    firebase_admin = pytest.importorskip("firebase_admin")
    from firebase_admin import credentials, messaging

    emulator, ca = threaded_emulator
    account = emulator.create_service_account(PROJECT)
    # google-auth (requests) and httpx both read the CA bundle from the environment; the send
    # URL is a class attribute of firebase-admin's messaging service.
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(ca))
    monkeypatch.setenv("SSL_CERT_FILE", str(ca))
    monkeypatch.setattr(
        messaging._MessagingService,
        "FCM_URL",
        emulator.base_url + "/v1/projects/{0}/messages:send",
    )
    emulator.script("UNREGISTERED", target="dead-00000000000000000000")
    emulator.script("QUOTA_EXCEEDED", target="slow-00000000000000000000", retry_after=9)
    app = firebase_admin.initialize_app(
        credentials.Certificate(account), name=f"emulator-{id(emulator)}"
    )
    try:
        messages = [
            messaging.Message(
                token=token,
                notification=messaging.Notification(title="t", body="b"),
                data={"k": "v"},
            )
            for token in (
                "live-00000000000000000000",
                "dead-00000000000000000000",
                "slow-00000000000000000000",
            )
        ]
        batch = await messaging.send_each_async(messages, app=app)
    finally:
        # Its own close() calls asyncio.run(), which cannot run inside a running loop.
        service = messaging._get_messaging_service(app)
        await service._async_client.aclose()
        monkeypatch.setattr(service, "close", lambda: None)
        firebase_admin.delete_app(app)
    live, dead, slow = batch.responses
    assert live.success
    assert live.message_id.startswith(f"projects/{PROJECT}/messages/")
    assert isinstance(dead.exception, messaging.UnregisteredError)
    assert isinstance(slow.exception, messaging.QuotaExceededError)
    [received] = emulator.received
    assert received["http_version"].startswith("HTTP/2")  # send_each_async: httpx, HTTP/2
    assert received["headers"]["x-goog-api-format-version"] == "2"
    assert received["message"]["notification"] == {"title": "t", "body": "b"}
    # google-auth asks for its token over requests (HTTP/1.1), with Google's own audience.
    [fetch] = emulator.token_requests
    assert (fetch["status"], fetch["http_version"]) == (200, "HTTP/1.1")
    assert fetch["client_email"] == account["client_email"]
