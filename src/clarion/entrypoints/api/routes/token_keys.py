"""Tenants register public keys for user tokens they sign themselves (ES256 or RS256)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Response

from clarion.entrypoints.api import schemas
from clarion.entrypoints.api.dependencies import App, Tenant
from clarion.services.ports import TokenKey

router = APIRouter(prefix="/v1/token-keys", tags=["tokens"])

KeyName = Annotated[str, Path(pattern=r"^[A-Za-z0-9._-]{1,64}$")]


def _out(tenant: str, key: TokenKey) -> schemas.TokenKeyOut:
    return schemas.TokenKeyOut(
        name=key.kid,
        kid=f"{tenant}:{key.kid}",
        algorithm=key.algorithm,
        public_key=key.public_key,
        created_at=key.created_at,
    )


@router.get("", response_model=list[schemas.TokenKeyOut])
async def list_keys(app: App, tenant: Tenant) -> list[schemas.TokenKeyOut]:
    """The tenant's registered token keys."""
    return [_out(tenant, k) for k in await app.tokens.keys(tenant)]


@router.put(
    "/{name}", response_model=schemas.TokenKeyOut, responses={201: {"model": schemas.TokenKeyOut}}
)
async def put_key(
    name: KeyName, body: schemas.TokenKeyIn, app: App, tenant: Tenant, response: Response
) -> schemas.TokenKeyOut:
    """Register (201) or replace (200) a public key; its algorithm is pinned for its tokens."""
    created = await app.tokens.register_key(
        tenant, name, algorithm=body.algorithm, public_key=body.public_key
    )
    response.status_code = 201 if created else 200
    return _out(tenant, await app.tokens.key(tenant, name))


@router.delete("/{name}", status_code=204)
async def delete_key(name: KeyName, app: App, tenant: Tenant) -> Response:
    """Forget a key; tokens it signed stop working at once."""
    await app.tokens.forget_key(tenant, name)
    return Response(status_code=204)
