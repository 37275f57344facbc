"""Provider credentials over HTTP: stored, described, deleted; never shown; checked on the way in;
and each tenant's own."""

from __future__ import annotations

import base64
import datetime as dt
import json
from typing import Any

import httpx
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes
from cryptography.x509.oid import NameOID

from tests.support import Running, Tenant, tenant_client

PATH = "/v1/credentials/apns/main"


def _pem(key: Any) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


def _p8() -> str:
    return _pem(ec.generate_private_key(ec.SECP256R1()))


def _certificate(key: CertificateIssuerPrivateKeyTypes, *, days: int, ago: int = 1) -> str:
    now = dt.datetime.now(dt.UTC)
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.USER_ID, "com.example.app"),
            x509.NameAttribute(NameOID.COMMON_NAME, "Apple Push Services: com.example.app"),
        ]
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=ago))
        .not_valid_after(now + dt.timedelta(days=days))
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def _token_body(pem: str, **changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "auth": "token",
        "key_id": "ABC123DEFG",
        "team_id": "TEAM123456",
        "topic": "com.example.app",
        "environment": "production",
        "private_key": pem,
    }
    return {**body, **changes}


def _certificate_body(certificate: str, pem: str) -> dict[str, Any]:
    return {
        "auth": "certificate",
        "certificate": certificate,
        "private_key": pem,
        "topic": "com.example.app",
        "environment": "sandbox",
    }


def _leaks(response: httpx.Response, pem: str) -> list[str]:
    lines = [line for line in pem.strip().splitlines() if line.strip()]
    return [line for line in lines if line in response.text]


async def test_credentials_are_stored_described_and_deleted(tenant: Tenant) -> None:
    pem = _p8()
    responses = []
    created = await tenant.http.put(PATH, json=_token_body(pem, app_id="com.example.app"))
    responses.append(created)
    assert created.status_code == 201, created.text
    described = created.json()
    assert described["name"] == "main"
    assert described["provider"] == "apns"
    assert described["app_id"] == "com.example.app"
    assert described["environment"] == "production"
    assert described["status"] == "active"
    assert described["metadata"] == {
        "auth": "token",
        "key_id": "ABC123DEFG",
        "team_id": "TEAM123456",
        "topic": "com.example.app",
    }
    replaced = await tenant.http.put(PATH, json=_token_body(pem, environment="sandbox"))
    responses.append(replaced)
    assert replaced.status_code == 200, replaced.text
    assert replaced.json()["id"] == described["id"]
    assert replaced.json()["app_id"] is None
    one = await tenant.http.get(PATH)
    listed = await tenant.http.get("/v1/credentials")
    responses += [one, listed]
    assert one.status_code == 200
    assert one.json()["environment"] == "sandbox"
    assert [c["name"] for c in listed.json()["credentials"]] == ["main"]
    for response in responses:
        assert _leaks(response, pem) == [], response.text
    deleted = await tenant.http.delete(PATH)
    assert deleted.status_code == 204
    assert (await tenant.http.get(PATH)).status_code == 404
    assert (await tenant.http.delete(PATH)).status_code == 404
    assert (await tenant.http.get("/v1/credentials")).json() == {"credentials": []}


async def test_a_certificate_credential_is_described_by_its_subject_and_expiry(
    tenant: Tenant,
) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = _pem(key)
    response = await tenant.http.put(PATH, json=_certificate_body(_certificate(key, days=30), pem))
    assert response.status_code == 201, response.text
    metadata = response.json()["metadata"]
    assert metadata["auth"] == "certificate"
    assert "com.example.app" in metadata["certificate_subject"]
    expires = dt.datetime.fromisoformat(metadata["certificate_expires_at"])
    assert dt.timedelta(days=29) < expires - dt.datetime.now(dt.UTC) <= dt.timedelta(days=30)
    assert _leaks(response, pem) == []
    assert _leaks(await tenant.http.get("/v1/credentials"), pem) == []


async def _refused(tenant: Tenant, body: dict[str, Any], field: str, words: str) -> None:
    response = await tenant.http.put(PATH, json=body)
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "invalid_request"
    assert words in error["message"], error["message"]
    assert field in {f["field"] for f in error["details"]["fields"]}, error
    if "private_key" in body:
        assert _leaks(response, body["private_key"]) == []
    assert (await tenant.http.get(PATH)).status_code == 404


async def test_credentials_that_cannot_work_are_refused_with_the_reason(tenant: Tenant) -> None:
    p8 = _p8()
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    garbled = p8.replace(p8.splitlines()[2], "A" * 64)
    await _refused(tenant, _token_body("not a key"), "body.private_key", "not a PEM private key")
    await _refused(tenant, _token_body(garbled), "body.private_key", "not a PEM private key")
    await _refused(tenant, _token_body(_pem(rsa_key)), "body.private_key", "P-256")
    p384 = _pem(ec.generate_private_key(ec.SECP384R1()))
    await _refused(tenant, _token_body(p384), "body.private_key", "P-256")
    await _refused(tenant, _token_body(p8, key_id="ABC123"), "body.key_id", "10")
    await _refused(tenant, _token_body(p8, team_id="TEAM1234567"), "body.team_id", "10")
    await _refused(tenant, _token_body(p8, topic="not a topic"), "body.topic", "bundle id")
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    await _refused(
        tenant,
        _certificate_body(_certificate(rsa_key, days=30), _pem(other)),
        "body.private_key",
        "does not match",
    )
    await _refused(
        tenant,
        _certificate_body(_certificate(rsa_key, days=-1, ago=30), _pem(rsa_key)),
        "body.certificate",
        "expired",
    )
    await _refused(
        tenant,
        _certificate_body("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n", p8),
        "body.certificate",
        "not a PEM X.509 certificate",
    )
    missing = _token_body(p8)
    del missing["key_id"]
    response = await tenant.http.put(PATH, json=missing)
    assert response.status_code == 422
    assert _leaks(response, p8) == []
    response = await tenant.http.put(PATH, json=_token_body(p8, auth="password"))
    assert response.status_code == 422
    assert _leaks(response, p8) == []


async def test_another_tenants_credentials_are_not_found(sqlite_server: Running) -> None:
    async with tenant_client(sqlite_server) as victim, tenant_client(sqlite_server) as thief:
        pem = _p8()
        assert (await victim.http.put(PATH, json=_token_body(pem))).status_code == 201
        assert (await thief.http.get(PATH)).status_code == 404
        assert (await thief.http.delete(PATH)).status_code == 404
        assert (await thief.http.get("/v1/credentials")).json() == {"credentials": []}
        # The thief's namesake is its own; the victim's stays as it was.
        mine = await thief.http.put(PATH, json=_token_body(_p8(), team_id="THIEF12345"))
        assert mine.status_code == 201
        kept = (await victim.http.get(PATH)).json()
        assert kept["metadata"]["team_id"] == "TEAM123456"
        assert kept["id"] != mine.json()["id"]
        loaded = await sqlite_server.clarion.credentials.load(victim.id, "apns", None)
        assert loaded is not None
        assert loaded.secret.strip() == pem.strip()


# --- Web Push (VAPID) and WNS ------------------------------------------------------------------

WEBPUSH = "/v1/credentials/webpush/site"
WNS = "/v1/credentials/wns/app"
SID = "ms-app://s-1-15-2-2972962901-2322836549-3722629029-1345238579"


def _b64url_point(key: ec.EllipticCurvePrivateKey) -> str:
    raw = key.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


async def test_a_vapid_key_pair_is_generated_and_only_its_public_key_shown(
    server: Running, tenant: Tenant
) -> None:
    created = await tenant.http.put(WEBPUSH, json={"subject": "mailto:ops@example.com"})
    assert created.status_code == 201, created.text
    described = created.json()
    assert described["provider"] == "webpush"
    metadata = described["metadata"]
    assert metadata["subject"] == "mailto:ops@example.com"
    assert metadata["generated"] is True
    assert len(base64.urlsafe_b64decode(metadata["public_key"] + "=")) == 65
    loaded = await server.clarion.credentials.load(tenant.id, "webpush", None)
    assert loaded is not None
    key = serialization.load_pem_private_key(loaded.secret.encode(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    assert _b64url_point(key) == metadata["public_key"]
    for response in (
        created,
        await tenant.http.get(WEBPUSH),
        await tenant.http.get("/v1/credentials"),
    ):
        assert _leaks(response, loaded.secret) == [], response.text
    assert (await tenant.http.delete(WEBPUSH)).status_code == 204
    assert (await tenant.http.get(WEBPUSH)).status_code == 404


async def test_a_given_vapid_key_is_kept_in_pem_or_raw_form(tenant: Tenant) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    pem = _pem(key)
    response = await tenant.http.put(
        WEBPUSH, json={"subject": "https://example.com/contact", "private_key": pem}
    )
    assert response.status_code == 201, response.text
    assert response.json()["metadata"]["public_key"] == _b64url_point(key)
    assert response.json()["metadata"]["generated"] is False
    assert _leaks(response, pem) == []
    raw = base64.urlsafe_b64encode(key.private_numbers().private_value.to_bytes(32, "big"))
    again = await tenant.http.put(
        WEBPUSH,
        json={"subject": "mailto:a@example.com", "private_key": raw.rstrip(b"=").decode()},
    )
    assert again.status_code == 200
    assert again.json()["metadata"]["public_key"] == _b64url_point(key)


async def test_webpush_and_wns_credentials_that_cannot_work_are_refused(tenant: Tenant) -> None:
    cases = [
        (WEBPUSH, {"subject": "ops@example.com"}, "body.subject"),
        (
            WEBPUSH,
            {"subject": "mailto:a@b.c", "private_key": _pem(rsa.generate_private_key(65537, 2048))},
            "body.private_key",
        ),
        (
            WEBPUSH,
            {
                "subject": "mailto:a@b.c",
                "private_key": _pem(ec.generate_private_key(ec.SECP384R1())),
            },
            "body.private_key",
        ),
        (WNS, {"package_sid": "S-1-15-2-1", "client_secret": "x"}, "body.package_sid"),
        (WNS, {"package_sid": SID, "client_secret": " padded "}, "body.client_secret"),
    ]
    for path, body, field in cases:
        response = await tenant.http.put(path, json=body)
        assert response.status_code == 422, (body, response.text)
        assert response.json()["error"]["details"]["fields"][0]["field"] == field


async def test_a_wns_credential_is_stored_write_only(server: Running, tenant: Tenant) -> None:
    secret = "Vex8L9WOFZuj95euaLrvSH7XyoDhLJc7"
    created = await tenant.http.put(
        WNS, json={"package_sid": SID, "client_secret": secret, "app_id": "com.example.win"}
    )
    assert created.status_code == 201, created.text
    assert created.json()["metadata"] == {"package_sid": SID}
    assert created.json()["app_id"] == "com.example.win"
    listed = await tenant.http.get("/v1/credentials")
    for response in (created, listed, await tenant.http.get(WNS)):
        assert secret not in response.text
    loaded = await server.clarion.credentials.load(tenant.id, "wns", "com.example.win")
    assert loaded is not None
    assert loaded.secret == secret
    assert (await tenant.http.delete(WNS)).status_code == 204


# --- FCM (a Google service account) -------------------------------------------------------------

FCM = "/v1/credentials/fcm/android"


def _service_account(**changes: Any) -> dict[str, Any]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    account: dict[str, Any] = {
        "type": "service_account",
        "project_id": "demo-project",
        "private_key_id": "0123456789abcdef0123456789abcdef01234567",
        "private_key": _pem(key),
        "client_email": "clarion@demo-project.iam.gserviceaccount.com",
        "client_id": "123456789012345678901",
        "auth_uri": "https://accounts.google.com/o/oauth2/auth",
        "token_uri": "https://oauth2.googleapis.com/token",
        "auth_provider_x509_cert_url": "https://www.googleapis.com/oauth2/v1/certs",
        "universe_domain": "googleapis.com",
    }
    return {**account, **changes}


async def test_a_service_account_is_stored_sealed_and_described_by_its_project(
    server: Running, tenant: Tenant
) -> None:
    account = _service_account()
    created = await tenant.http.put(FCM, json={"service_account": account})
    assert created.status_code == 201, created.text
    described = created.json()
    assert (described["provider"], described["name"], described["app_id"]) == (
        "fcm",
        "android",
        None,
    )
    assert described["metadata"] == {
        "project_id": "demo-project",
        "client_email": "clarion@demo-project.iam.gserviceaccount.com",
        "token_uri": "https://oauth2.googleapis.com/token",
        "private_key_id": "0123456789abcdef0123456789abcdef01234567",
    }
    # The key file's text is taken as well as its object; replacing keeps the id.
    other = _service_account(project_id="other-project")
    replaced = await tenant.http.put(
        FCM, json={"service_account": json.dumps(other), "app_id": "com.example.android"}
    )
    assert replaced.status_code == 200, replaced.text
    assert replaced.json()["id"] == described["id"]
    assert replaced.json()["app_id"] == "com.example.android"
    assert replaced.json()["metadata"]["project_id"] == "other-project"
    loaded = await server.clarion.credentials.load(tenant.id, "fcm", "com.example.android")
    assert loaded is not None
    assert loaded.secret.strip() == other["private_key"].strip()
    for response in (
        created,
        replaced,
        await tenant.http.get(FCM),
        await tenant.http.get("/v1/credentials"),
    ):
        assert _leaks(response, account["private_key"]) == [], response.text
        assert _leaks(response, other["private_key"]) == [], response.text
    assert (await tenant.http.delete(FCM)).status_code == 204
    assert (await tenant.http.get(FCM)).status_code == 404
    assert (await tenant.http.delete(FCM)).status_code == 404


async def test_each_app_gets_its_own_service_account_else_the_default(
    server: Running, tenant: Tenant
) -> None:
    default = _service_account(project_id="default-project")
    own = _service_account(project_id="own-project")
    assert (
        await tenant.http.put("/v1/credentials/fcm/default", json={"service_account": default})
    ).status_code == 201
    assert (
        await tenant.http.put(
            "/v1/credentials/fcm/own",
            json={"service_account": own, "app_id": "com.example.own"},
        )
    ).status_code == 201
    credentials = server.clarion.credentials
    for app_id, project in (
        ("com.example.own", "own-project"),
        ("com.example.other", "default-project"),
        (None, "default-project"),
    ):
        loaded = await credentials.load(tenant.id, "fcm", app_id)
        assert loaded is not None
        assert loaded.info.metadata["project_id"] == project


async def test_service_accounts_that_cannot_work_are_refused_with_the_reason(
    tenant: Tenant,
) -> None:
    ec_key = _pem(ec.generate_private_key(ec.SECP256R1()))
    for account, words in (
        (_service_account(type="authorized_user"), "service_account"),
        (_service_account(private_key="not a key"), "PEM"),
        (_service_account(private_key=ec_key), "RSA"),
        (_service_account(client_email="nobody"), "client_email"),
        (_service_account(project_id="Not A Project"), "project id"),
        (_service_account(token_uri="http://oauth2.googleapis.com/token"), "https"),
        (_service_account(token_uri="https://attacker.example/token"), "Google's token endpoint"),
        ({k: v for k, v in _service_account().items() if k != "private_key"}, "private_key"),
    ):
        response = await tenant.http.put(FCM, json={"service_account": account})
        assert response.status_code == 422, response.text
        error = response.json()["error"]
        assert error["code"] == "invalid_request"
        assert words in error["message"], error["message"]
        assert {f["field"] for f in error["details"]["fields"]} == {"body.service_account"}
        if isinstance(account.get("private_key"), str):
            assert _leaks(response, account["private_key"]) == []
    garbage = await tenant.http.put(FCM, json={"service_account": "{not json"})
    assert garbage.status_code == 422
    assert (await tenant.http.get(FCM)).status_code == 404


# --- Email (SMTP, SES, SendGrid) ----------------------------------------------------------------

EMAIL = "/v1/credentials/email/mail"
SMTP_PASSWORD = "relay-password-123"
AWS_SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
SG_API_KEY = "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"


def _smtp(**changes: Any) -> dict[str, Any]:
    body = {
        "kind": "smtp",
        "host": "smtp.example.com",
        "port": 587,
        "security": "starttls",
        "username": "clarion",
        "password": SMTP_PASSWORD,
    }
    return {k: v for k, v in {**body, **changes}.items() if v is not None}


def _ses(**changes: Any) -> dict[str, Any]:
    body = {
        "kind": "ses",
        "region": "eu-west-1",
        "access_key_id": "AKIAIOSFODNN7EXAMPLE",
        "secret_access_key": AWS_SECRET,
        "configuration_set": "clarion-events",
        "sns_topic_arn": "arn:aws:sns:eu-west-1:123456789012:ses-events",
    }
    return {k: v for k, v in {**body, **changes}.items() if v is not None}


def _sendgrid(**changes: Any) -> dict[str, Any]:
    body = {"kind": "sendgrid", "api_key": SG_API_KEY}
    return {k: v for k, v in {**body, **changes}.items() if v is not None}


def _spki(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey, encoding: str) -> str:
    der = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    if encoding == "der":
        return base64.b64encode(der).decode()
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


async def test_an_smtp_credential_is_stored_write_only(server: Running, tenant: Tenant) -> None:
    created = await tenant.http.put(EMAIL, json=_smtp(host="SMTP.Example.com"))
    assert created.status_code == 201, created.text
    described = created.json()
    assert (described["provider"], described["name"]) == ("email", "mail")
    assert described["metadata"] == {
        "kind": "smtp",
        "host": "smtp.example.com",
        "port": 587,
        "security": "starttls",
        "username": "clarion",
    }
    relay = await tenant.http.put(
        EMAIL, json=_smtp(security="tls", port=465, username=None, password=None)
    )
    assert relay.status_code == 200, relay.text
    assert relay.json()["id"] == described["id"]
    assert relay.json()["metadata"]["username"] is None
    again = await tenant.http.put(EMAIL, json=_smtp())
    loaded = await server.clarion.credentials.load(tenant.id, "email", None)
    assert loaded is not None
    assert loaded.secret == SMTP_PASSWORD
    for response in (
        created,
        again,
        await tenant.http.get(EMAIL),
        await tenant.http.get("/v1/credentials"),
    ):
        assert SMTP_PASSWORD not in response.text
    assert (await tenant.http.delete(EMAIL)).status_code == 204
    assert (await tenant.http.get(EMAIL)).status_code == 404
    assert (await tenant.http.delete(EMAIL)).status_code == 404


async def test_ses_and_sendgrid_credentials_are_stored_write_only(
    server: Running, tenant: Tenant
) -> None:
    ses = await tenant.http.put("/v1/credentials/email/ses", json=_ses())
    assert ses.status_code == 201, ses.text
    assert ses.json()["metadata"] == {
        "kind": "ses",
        "region": "eu-west-1",
        "access_key_id": "AKIAIOSFODNN7EXAMPLE",
        "configuration_set": "clarion-events",
        "sns_topic_arn": "arn:aws:sns:eu-west-1:123456789012:ses-events",
    }
    key = ec.generate_private_key(ec.SECP256R1())
    for encoding in ("der", "pem"):
        sendgrid = await tenant.http.put(
            "/v1/credentials/email/sendgrid",
            json=_sendgrid(event_webhook_public_key=_spki(key, encoding), region="eu"),
        )
        assert sendgrid.status_code in (200, 201), sendgrid.text
        metadata = sendgrid.json()["metadata"]
        assert metadata["kind"] == "sendgrid"
        assert metadata["region"] == "eu"
        # Kept as PEM whatever form it came in, for the event webhook's signature check.
        assert metadata["event_webhook_public_key"] == _spki(key, "pem")
    listed = await tenant.http.get("/v1/credentials")
    assert [c["name"] for c in listed.json()["credentials"]] == ["sendgrid", "ses"]
    for response in (ses, sendgrid, listed):
        assert AWS_SECRET not in response.text
        assert SG_API_KEY not in response.text
        assert SG_API_KEY.split(".")[2] not in response.text
    store = server.clarion.credentials
    assert (await store.get(tenant.id, "email", "ses")).metadata["kind"] == "ses"
    plain = await tenant.http.put("/v1/credentials/email/sendgrid", json=_sendgrid())
    assert plain.json()["metadata"] == {
        "kind": "sendgrid",
        "region": "global",
        "event_webhook_public_key": None,
    }


async def test_email_credentials_that_cannot_work_are_refused_naming_the_field(
    tenant: Tenant,
) -> None:
    p384 = ec.generate_private_key(ec.SECP384R1())
    cases: list[tuple[dict[str, Any], str, str]] = [
        (_smtp(host="smtp example.com"), "body.host", "host name"),
        (_smtp(host="-bad-.example.com"), "body.host", "host name"),
        (_smtp(host="1.2.3.4.5"), "body.host", "host name"),
        (_smtp(host="smtp.exämple.com"), "body.host", "xn--"),
        (_smtp(port=0), "body.port", "1-65535"),
        (_smtp(port=70000), "body.port", "1-65535"),
        (_smtp(password=None), "body.password", "together"),
        (_smtp(username=None), "body.username", "together"),
        (_smtp(security="none"), "body.security", "never sends a password in clear"),
        (_smtp(username=" padded"), "body.username", "printable"),
        (_ses(region="mars-1"), "body.region", "AWS region"),
        (_ses(access_key_id="akia-lower"), "body.access_key_id", "access key id"),
        (_ses(secret_access_key="short"), "body.secret_access_key", "secret access key"),
        (_ses(configuration_set="has space"), "body.configuration_set", "configuration set"),
        (_ses(sns_topic_arn="arn:aws:sqs:eu-west-1:1:q"), "body.sns_topic_arn", "SNS topic"),
        (
            _ses(sns_topic_arn="arn:aws:sns:us-east-1:123456789012:ses-events"),
            "body.sns_topic_arn",
            "region",
        ),
        (_sendgrid(api_key="not-a-sendgrid-key"), "body.api_key", "SG."),
        (
            _sendgrid(event_webhook_public_key="bm90IGEga2V5"),
            "body.event_webhook_public_key",
            "P-256",
        ),
        (
            _sendgrid(event_webhook_public_key=_spki(p384, "pem")),
            "body.event_webhook_public_key",
            "P-256",
        ),
        (
            _sendgrid(event_webhook_public_key=_spki(rsa.generate_private_key(65537, 2048), "der")),
            "body.event_webhook_public_key",
            "P-256",
        ),
    ]
    for body, field, words in cases:
        response = await tenant.http.put(EMAIL, json=body)
        assert response.status_code == 422, (body, response.text)
        error = response.json()["error"]
        assert error["code"] == "invalid_request"
        assert words in error["message"], (body, error["message"])
        assert error["details"]["fields"][0]["field"] == field, (body, error)
        for secret in (SMTP_PASSWORD, AWS_SECRET, SG_API_KEY):
            assert secret not in response.text
    # Shapes pydantic refuses: an unknown kind, a field of another kind, a missing field.
    for body in (
        {"kind": "mailgun", "api_key": "x"},
        {**_sendgrid(), "host": "smtp.example.com"},
        {"kind": "ses", "region": "eu-west-1"},
        _smtp(security="opportunistic"),
    ):
        response = await tenant.http.put(EMAIL, json=body)
        assert response.status_code == 422, (body, response.text)
        assert response.json()["error"]["code"] == "invalid_request"
        assert SG_API_KEY not in response.text
        assert SMTP_PASSWORD not in response.text
    assert (await tenant.http.get(EMAIL)).status_code == 404
