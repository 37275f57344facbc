"""Provider credentials over HTTP: stored, described, deleted; never shown; checked on the way in;
and each tenant's own."""

from __future__ import annotations

import datetime as dt
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
