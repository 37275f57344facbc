"""What routes receive: the wired services and the caller's tenant."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Header, Path, Request

from clarion.bootstrap import Clarion
from clarion.domain import errors, identifiers
from clarion.services.tokens import Principal


def clarion(request: Request) -> Clarion:
    """The services of this process."""
    app: Clarion = request.app.state.clarion
    return app


App = Annotated[Clarion, Depends(clarion)]


def _bearer(authorization: str | None, what: str, placeholder: str) -> str:
    scheme, _, credential = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not credential.strip():
        raise errors.Unauthorized(f"send the {what} as 'Authorization: Bearer <{placeholder}>'")
    return credential.strip()


async def tenant(
    app: App,
    authorization: Annotated[str | None, Header(include_in_schema=False)] = None,
) -> str:
    """The tenant whose API key authorises this request (never taken from the request body)."""
    return await app.tenancy.authenticate(_bearer(authorization, "API key", "key"))


Tenant = Annotated[str, Depends(tenant)]


async def principal(
    app: App,
    authorization: Annotated[str | None, Header(include_in_schema=False)] = None,
) -> Principal:
    """The user whose token authorises this request; everything it reaches is theirs."""
    return await app.tokens.authenticate(_bearer(authorization, "user token", "token"))


Me = Annotated[Principal, Depends(principal)]


def _checked(name: str, value: str) -> str:
    if not identifiers.is_valid_key(value):
        raise errors.InvalidIdentifier(f"'{name}' is not a valid key")
    return value


def user_key(user: Annotated[str, Path(max_length=1000)]) -> str:
    """The user named in the path, checked."""
    return _checked("user", user)


def group_key(group: Annotated[str, Path(max_length=1000)]) -> str:
    """The group named in the path, checked."""
    return _checked("group", group)


UserKey = Annotated[str, Depends(user_key)]
GroupKey = Annotated[str, Depends(group_key)]


def device_token(token: Annotated[str, Path(max_length=2000)]) -> str:
    """The device token in the path (URL-encoded when it is a URL)."""
    return token


DeviceToken = Annotated[str, Depends(device_token)]
