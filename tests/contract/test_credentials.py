"""The credentials vault, on every backend: secrets sealed per tenant and per credential, and the
choice of credential a provider client loads."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from clarion import bootstrap
from clarion.adapters.storage import tables
from clarion.adapters.vault import VaultError
from clarion.domain.records import Credential


def _p8() -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


async def _tenant(app: bootstrap.Clarion) -> str:
    return (await app.tenancy.create_tenant("t")).tenant_id


async def _put(
    app: bootstrap.Clarion, tenant: str, name: str, *, app_id: str | None = None
) -> tuple[str, str]:
    pem = _p8()
    saved = await app.credentials.put_apns(
        tenant,
        name,
        auth="token",
        key_id="ABC123DEFG",
        team_id="TEAM123456",
        topic="com.example.app",
        environment="sandbox",
        private_key=pem,
        app_id=app_id,
    )
    return saved.credential.id, pem


async def _row(app: bootstrap.Clarion, credential_id: str) -> sa.Row[tuple[str, str]]:
    c = tables.credentials.c
    async with app.store.engine.connect() as conn:
        return (
            await conn.execute(
                sa.select(c.sealed_secret, c.wrapped_key).where(c.id == credential_id)
            )
        ).one()


async def _copy(app: bootstrap.Clarion, source: str, target: str) -> None:
    row = await _row(app, source)
    async with app.store.engine.begin() as conn:
        await conn.execute(
            tables.credentials.update()
            .where(tables.credentials.c.id == target)
            .values(sealed_secret=row.sealed_secret, wrapped_key=row.wrapped_key)
        )


async def _loaded(app: bootstrap.Clarion, tenant: str, app_id: str | None) -> Credential:
    credential = await app.credentials.load(tenant, "apns", app_id)
    assert credential is not None
    return credential


async def test_a_stored_credential_loads_with_its_secret_and_metadata(
    clarion: bootstrap.Clarion,
) -> None:
    tenant = await _tenant(clarion)
    credential_id, pem = await _put(clarion, tenant, "main")
    credential = await _loaded(clarion, tenant, None)
    assert credential.secret.strip() == pem.strip()
    assert credential.info.id == credential_id
    assert credential.info.metadata == {
        "auth": "token",
        "key_id": "ABC123DEFG",
        "team_id": "TEAM123456",
        "topic": "com.example.app",
    }
    assert credential.info.environment == "sandbox"
    assert pem not in repr(credential)


async def test_replacing_a_credential_keeps_its_id_and_seals_the_new_secret(
    clarion: bootstrap.Clarion,
) -> None:
    tenant = await _tenant(clarion)
    first_id, _ = await _put(clarion, tenant, "main")
    before = await _row(clarion, first_id)
    second_id, pem = await _put(clarion, tenant, "main")
    after = await _row(clarion, second_id)
    assert second_id == first_id
    assert after.wrapped_key != before.wrapped_key
    assert (await _loaded(clarion, tenant, None)).secret.strip() == pem.strip()


async def test_the_sealed_columns_never_contain_the_pem(clarion: bootstrap.Clarion) -> None:
    tenant = await _tenant(clarion)
    credential_id, pem = await _put(clarion, tenant, "main")
    row = await _row(clarion, credential_id)
    stored = row.sealed_secret + row.wrapped_key
    for line in pem.strip().splitlines():
        assert line not in stored
    assert "PRIVATE KEY" not in stored


async def test_a_secret_copied_onto_another_credentials_row_does_not_open(
    clarion: bootstrap.Clarion,
) -> None:
    tenant = await _tenant(clarion)
    source, _ = await _put(clarion, tenant, "one", app_id="app.one")
    target, _ = await _put(clarion, tenant, "two", app_id="app.two")
    await _copy(clarion, source, target)
    assert (await _loaded(clarion, tenant, "app.one")).info.id == source
    with pytest.raises(VaultError):
        await clarion.credentials.load(tenant, "apns", "app.two")


async def test_a_secret_copied_onto_another_tenants_row_does_not_open(
    clarion: bootstrap.Clarion,
) -> None:
    victim, thief = await _tenant(clarion), await _tenant(clarion)
    source, _ = await _put(clarion, victim, "main")
    target, _ = await _put(clarion, thief, "main")
    await _copy(clarion, source, target)
    with pytest.raises(VaultError):
        await clarion.credentials.load(thief, "apns", None)


async def test_the_credential_naming_the_app_is_preferred_to_the_default(
    clarion: bootstrap.Clarion,
) -> None:
    tenant = await _tenant(clarion)
    default, _ = await _put(clarion, tenant, "default")
    special, _ = await _put(clarion, tenant, "special", app_id="com.example.special")
    assert (await _loaded(clarion, tenant, "com.example.special")).info.id == special
    assert (await _loaded(clarion, tenant, "com.example.other")).info.id == default
    assert (await _loaded(clarion, tenant, None)).info.id == default


async def test_without_a_default_only_the_named_app_gets_a_credential(
    clarion: bootstrap.Clarion,
) -> None:
    tenant = await _tenant(clarion)
    await _put(clarion, tenant, "special", app_id="com.example.special")
    assert await clarion.credentials.load(tenant, "apns", "com.example.other") is None
    assert await clarion.credentials.load(tenant, "apns", None) is None
    assert await clarion.credentials.load(tenant, "fcm", "com.example.special") is None


async def test_a_paused_credential_still_loads_with_its_status_and_reason(
    clarion: bootstrap.Clarion,
) -> None:
    tenant = await _tenant(clarion)
    default, _ = await _put(clarion, tenant, "default")
    assert await clarion.credentials.pause(tenant, default, "InvalidProviderToken")
    for app_id in (None, "com.example.any"):
        credential = await _loaded(clarion, tenant, app_id)
        assert credential.info.id == default
        assert (credential.info.status, credential.info.paused_reason) == (
            "paused",
            "InvalidProviderToken",
        )


async def test_the_apps_own_credential_is_loaded_even_when_paused(
    clarion: bootstrap.Clarion,
) -> None:
    tenant = await _tenant(clarion)
    default, _ = await _put(clarion, tenant, "default")
    special, _ = await _put(clarion, tenant, "special", app_id="com.example.special")
    assert await clarion.credentials.pause(tenant, special, "BadCertificate")
    # The default would push under another topic; the app's deliveries wait for its own.
    assert (await _loaded(clarion, tenant, "com.example.special")).info.id == special
    assert (await _loaded(clarion, tenant, "com.example.other")).info.id == default


async def test_an_active_credential_is_preferred_to_a_paused_one_serving_the_same_app(
    clarion: bootstrap.Clarion,
) -> None:
    tenant = await _tenant(clarion)
    old_default, _ = await _put(clarion, tenant, "old-default")
    old_special, _ = await _put(clarion, tenant, "old", app_id="com.example.special")
    new_special, _ = await _put(clarion, tenant, "new", app_id="com.example.special")
    new_default, _ = await _put(clarion, tenant, "new-default")
    assert (await _loaded(clarion, tenant, "com.example.special")).info.id == new_special
    assert (await _loaded(clarion, tenant, None)).info.id == new_default
    assert await clarion.credentials.pause(tenant, new_special, "Forbidden")
    assert await clarion.credentials.pause(tenant, new_default, "Forbidden")
    assert (await _loaded(clarion, tenant, "com.example.special")).info.id == old_special
    assert (await _loaded(clarion, tenant, None)).info.id == old_default


async def test_replacing_a_paused_credential_makes_it_active_again(
    clarion: bootstrap.Clarion,
) -> None:
    tenant = await _tenant(clarion)
    special, _ = await _put(clarion, tenant, "special", app_id="com.example.special")
    assert await clarion.credentials.pause(tenant, special, "InvalidProviderToken")
    paused = await _loaded(clarion, tenant, "com.example.special")
    _, pem = await _put(clarion, tenant, "special", app_id="com.example.special")
    replaced = await _loaded(clarion, tenant, "com.example.special")
    assert replaced.info.id == special
    assert (replaced.info.status, replaced.info.paused_reason) == ("active", None)
    assert replaced.info.updated_at > paused.info.updated_at
    assert replaced.secret.strip() == pem.strip()


async def test_no_credential_is_loaded_for_another_provider_even_when_paused(
    clarion: bootstrap.Clarion,
) -> None:
    tenant = await _tenant(clarion)
    default, _ = await _put(clarion, tenant, "default")
    assert await clarion.credentials.pause(tenant, default, "Forbidden")
    assert await clarion.credentials.load(tenant, "fcm", None) is None


async def test_a_credential_is_paused_only_by_its_own_tenant(clarion: bootstrap.Clarion) -> None:
    victim, other = await _tenant(clarion), await _tenant(clarion)
    credential_id, _ = await _put(clarion, victim, "main")
    assert not await clarion.credentials.pause(other, credential_id, "Forbidden")
    assert (await _loaded(clarion, victim, None)).info.status == "active"
