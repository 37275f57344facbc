"""Producers mint short-lived user tokens for their apps."""

from __future__ import annotations

from fastapi import APIRouter

from clarion.entrypoints.api import schemas
from clarion.entrypoints.api.dependencies import App, Tenant, UserKey

router = APIRouter(prefix="/v1", tags=["tokens"])


@router.post("/users/{user}/tokens", status_code=201, response_model=schemas.TokenOut)
async def post_token(
    user: UserKey, app: App, tenant: Tenant, body: schemas.TokenIn | None = None
) -> schemas.TokenOut:
    """A user token (JWT) for the user's web or mobile app; the user is created if unknown."""
    await app.directory.ensure_user(tenant, user)
    issued = await app.tokens.issue(tenant, user, None if body is None else body.ttl)
    return schemas.TokenOut(token=issued.token, expires_at=issued.expires_at)
