"""Producers manage their users' push endpoints."""

from __future__ import annotations

from fastapi import APIRouter, Response

from clarion.entrypoints.api import schemas
from clarion.entrypoints.api.dependencies import App, DeviceToken, Tenant, UserKey
from clarion.services.devices import masked
from clarion.services.ports import Device

router = APIRouter(prefix="/v1/users", tags=["devices"])


def device_out(device: Device) -> schemas.DeviceOut:
    """A device as the API shows it: never the whole token."""
    return schemas.DeviceOut(
        id=device.id,
        provider=device.provider,
        token=masked(device.token),
        app_id=device.app_id,
        status=device.status,
        created_at=device.created_at,
        updated_at=device.updated_at,
        retired_at=device.retired_at,
        retired_reason=device.retired_reason,
    )


@router.get("/{user}/devices", response_model=list[schemas.DeviceOut])
async def list_devices(user: UserKey, app: App, tenant: Tenant) -> list[schemas.DeviceOut]:
    """A user's push endpoints, tokens masked."""
    await app.directory.get_user(tenant, user)
    return [device_out(d) for d in await app.devices.of(tenant, user)]


@router.put(
    "/{user}/devices/{token:path}",
    response_model=schemas.DeviceOut,
    responses={201: {"model": schemas.DeviceOut}},
)
async def put_device(
    user: UserKey,
    token: DeviceToken,
    body: schemas.DeviceIn,
    app: App,
    tenant: Tenant,
    response: Response,
) -> schemas.DeviceOut:
    """Register a push token for a user (created if unknown); moves it from another user."""
    device, created = await app.devices.register(
        tenant, user, provider=body.provider, token=token, app_id=body.app_id, keys=dict(body.keys)
    )
    response.status_code = 201 if created else 200
    return device_out(device)


@router.delete("/{user}/devices/{token:path}", status_code=204)
async def delete_device(user: UserKey, token: DeviceToken, app: App, tenant: Tenant) -> Response:
    """Unregister a user's push token."""
    await app.devices.unregister(tenant, user, token)
    return Response(status_code=204)
