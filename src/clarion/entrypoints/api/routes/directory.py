"""Producers describe their users, groups, communities and memberships."""

from __future__ import annotations

from fastapi import APIRouter, Response

from clarion.entrypoints.api import schemas
from clarion.entrypoints.api.dependencies import App, GroupKey, Tenant, UserKey
from clarion.services.ports import GroupRecord, UserFields, UserRecord

router = APIRouter(prefix="/v1", tags=["directory"])


def _user(record: UserRecord) -> schemas.UserOut:
    return schemas.UserOut(
        id=record.external_id,
        email=record.email,
        email_status=record.email_status,
        locale=record.locale,
        timezone=record.timezone,
        attributes=record.attributes,
        created_at=record.created_at,
        updated_at=record.updated_at,
        quiet_hours=schemas.QuietHoursOut.of(record.quiet_hours),
    )


def _group(record: GroupRecord) -> schemas.GroupOut:
    return schemas.GroupOut(
        key=record.key,
        kind=record.kind,
        name=record.name,
        community=record.community,
        fcm_topic=record.fcm_topic,
        attributes=record.attributes,
        members=record.member_count,
        created_at=record.created_at,
        updated_at=record.updated_at,
    )


@router.put(
    "/users/{user}", response_model=schemas.UserOut, responses={201: {"model": schemas.UserOut}}
)
async def put_user(
    user: UserKey, body: schemas.UserIn, app: App, tenant: Tenant, response: Response
) -> schemas.UserOut:
    """Create (201) or replace (200) a user."""
    record, created = await app.directory.put_user(
        tenant,
        user,
        UserFields(
            email=body.email,
            locale=body.locale,
            timezone=body.timezone,
            attributes=body.attributes,
            quiet_hours=None if body.quiet_hours is None else body.quiet_hours.window(),
        ),
    )
    response.status_code = 201 if created else 200
    return _user(record)


@router.get("/users/{user}", response_model=schemas.UserOut)
async def get_user(user: UserKey, app: App, tenant: Tenant) -> schemas.UserOut:
    """A user."""
    return _user(await app.directory.get_user(tenant, user))


@router.delete("/users/{user}", status_code=204)
async def delete_user(user: UserKey, app: App, tenant: Tenant) -> Response:
    """Erase a user with their inbox, deliveries, memberships and audit entries."""
    await app.directory.delete_user(tenant, user)
    return Response(status_code=204)


@router.put(
    "/groups/{group}", response_model=schemas.GroupOut, responses={201: {"model": schemas.GroupOut}}
)
async def put_group(
    group: GroupKey, body: schemas.GroupIn, app: App, tenant: Tenant, response: Response
) -> schemas.GroupOut:
    """Create (201) or update (200) a group or community. A group may name its community."""
    record, created = await app.directory.put_group(
        tenant,
        group,
        kind=body.kind,
        name=body.name,
        community=body.community,
        attributes=body.attributes,
        fcm_topic=body.fcm_topic,
    )
    response.status_code = 201 if created else 200
    return _group(record)


@router.get("/groups/{group}", response_model=schemas.GroupOut)
async def get_group(group: GroupKey, app: App, tenant: Tenant) -> schemas.GroupOut:
    """A group or community, with its direct member count."""
    return _group(await app.directory.get_group(tenant, group))


@router.put(
    "/groups/{group}/members/{user}",
    response_model=schemas.MembershipOut,
    responses={201: {"model": schemas.MembershipOut}},
)
async def put_member(
    group: GroupKey, user: UserKey, app: App, tenant: Tenant, response: Response
) -> schemas.MembershipOut:
    """Add a user to a group (201), creating the user if unknown; 200 if already a member."""
    created = await app.directory.put_member(tenant, group, user)
    response.status_code = 201 if created else 200
    return schemas.MembershipOut(group=group, user=user, created=created)


@router.delete("/groups/{group}/members/{user}", status_code=204)
async def delete_member(group: GroupKey, user: UserKey, app: App, tenant: Tenant) -> Response:
    """Remove a user from a group."""
    await app.directory.delete_member(tenant, group, user)
    return Response(status_code=204)
