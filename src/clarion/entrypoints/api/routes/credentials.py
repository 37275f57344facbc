"""Tenants store the provider credentials Clarion pushes with. Write-only: no answer ever holds
a secret, only what describes it (docs/api.md, "Provider credentials")."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Response
from pydantic import BaseModel, Field

from clarion.entrypoints.api import schemas
from clarion.entrypoints.api.dependencies import App, Tenant
from clarion.services.credentials import APNS, EMAIL, FCM, NAME_PATTERN, WEBPUSH, WNS
from clarion.services.ports import CredentialInfo

router = APIRouter(prefix="/v1", tags=["credentials"])

Name = Annotated[str, Path(min_length=1, max_length=64, pattern=NAME_PATTERN)]
Pem = Annotated[schemas.Text, Field(min_length=1, max_length=20_000)]
AppleId = Annotated[schemas.Text, Field(min_length=1, max_length=64)]
Topic = Annotated[schemas.Text, Field(min_length=1, max_length=255)]
AppId = Annotated[schemas.Text, Field(max_length=255)]


class ApnsTokenIn(schemas.Input):
    """Token auth: the .p8 key from Apple, its key id and the team id."""

    auth: Literal["token"]
    key_id: AppleId
    team_id: AppleId
    topic: Topic
    environment: Literal["sandbox", "production"]
    private_key: Pem
    app_id: AppId | None = None


class ApnsCertificateIn(schemas.Input):
    """Certificate auth: the push certificate and its private key, both PEM, unencrypted."""

    auth: Literal["certificate"]
    certificate: Pem
    private_key: Pem
    topic: Topic
    environment: Literal["sandbox", "production"]
    app_id: AppId | None = None


ApnsIn = Annotated[ApnsTokenIn | ApnsCertificateIn, Field(discriminator="auth")]


class CredentialOut(BaseModel):
    """A provider credential as stored; never its secret."""

    id: str
    provider: str
    name: str
    app_id: str | None
    environment: str | None
    metadata: dict[str, Any]
    status: str
    paused_reason: str | None
    created_at: datetime
    updated_at: datetime

    @classmethod
    def of(cls, info: CredentialInfo) -> CredentialOut:
        """From the stored credential."""
        return cls(
            id=info.id,
            provider=info.provider,
            name=info.name,
            app_id=info.app_id,
            environment=info.environment,
            metadata=info.metadata,
            status=info.status,
            paused_reason=info.paused_reason,
            created_at=info.created_at,
            updated_at=info.updated_at,
        )


class CredentialList(BaseModel):
    """The tenant's provider credentials."""

    credentials: list[CredentialOut]


@router.put(
    "/credentials/apns/{name}",
    response_model=CredentialOut,
    responses={201: {"model": CredentialOut}},
)
async def put_apns_credential(
    name: Name, body: ApnsIn, app: App, tenant: Tenant, response: Response
) -> CredentialOut:
    """Create (201) or replace (200) an APNs credential. The answer describes it; the key is
    never returned by any route."""
    saved = await app.credentials.put_apns(
        tenant,
        name,
        auth=body.auth,
        topic=body.topic,
        environment=body.environment,
        private_key=body.private_key,
        key_id=body.key_id if isinstance(body, ApnsTokenIn) else None,
        team_id=body.team_id if isinstance(body, ApnsTokenIn) else None,
        certificate=body.certificate if isinstance(body, ApnsCertificateIn) else None,
        app_id=body.app_id,
    )
    response.status_code = 201 if saved.created else 200
    return CredentialOut.of(saved.credential)


@router.get("/credentials", response_model=CredentialList)
async def list_credentials(app: App, tenant: Tenant) -> CredentialList:
    """The tenant's provider credentials, without their secrets."""
    return CredentialList(
        credentials=[CredentialOut.of(c) for c in await app.credentials.list_credentials(tenant)]
    )


@router.get("/credentials/apns/{name}", response_model=CredentialOut)
async def get_apns_credential(name: Name, app: App, tenant: Tenant) -> CredentialOut:
    """One APNs credential, without its secret."""
    return CredentialOut.of(await app.credentials.get(tenant, APNS, name))


@router.delete("/credentials/apns/{name}", status_code=204)
async def delete_apns_credential(name: Name, app: App, tenant: Tenant) -> Response:
    """Delete an APNs credential and its secret."""
    await app.credentials.delete(tenant, APNS, name)
    return Response(status_code=204)


# --- FCM (a Google service account) -------------------------------------------------------------


class FcmIn(schemas.Input):
    """The service-account key file from the Firebase console, as a JSON object or as the
    file's text."""

    service_account: dict[str, Any] | Annotated[str, Field(min_length=1, max_length=20_000)]
    app_id: AppId | None = None


@router.put(
    "/credentials/fcm/{name}",
    response_model=CredentialOut,
    responses={201: {"model": CredentialOut}},
)
async def put_fcm_credential(
    name: Name, body: FcmIn, app: App, tenant: Tenant, response: Response
) -> CredentialOut:
    """Create (201) or replace (200) an FCM credential. The answer describes the account
    (project, client email, token URI, key id); its private key is never returned."""
    saved = await app.credentials.put_fcm(
        tenant, name, service_account=body.service_account, app_id=body.app_id
    )
    response.status_code = 201 if saved.created else 200
    return CredentialOut.of(saved.credential)


@router.get("/credentials/fcm/{name}", response_model=CredentialOut)
async def get_fcm_credential(name: Name, app: App, tenant: Tenant) -> CredentialOut:
    """One FCM credential, without its private key."""
    return CredentialOut.of(await app.credentials.get(tenant, FCM, name))


@router.delete("/credentials/fcm/{name}", status_code=204)
async def delete_fcm_credential(name: Name, app: App, tenant: Tenant) -> Response:
    """Delete an FCM credential and its private key."""
    await app.credentials.delete(tenant, FCM, name)
    return Response(status_code=204)


# --- Web Push (VAPID) ---------------------------------------------------------------------------


class WebPushIn(schemas.Input):
    """A VAPID key pair and its contact; without `private_key`, Clarion generates the pair."""

    subject: Annotated[schemas.Text, Field(min_length=1, max_length=255)]
    private_key: Pem | None = None
    app_id: AppId | None = None


@router.put(
    "/credentials/webpush/{name}",
    response_model=CredentialOut,
    responses={201: {"model": CredentialOut}},
)
async def put_webpush_credential(
    name: Name, body: WebPushIn, app: App, tenant: Tenant, response: Response
) -> CredentialOut:
    """Create (201) or replace (200) a Web Push (VAPID) credential. The answer shows the public
    key (`metadata.public_key`, the site's applicationServerKey), never the private key."""
    saved = await app.credentials.put_webpush(
        tenant, name, subject=body.subject, private_key=body.private_key, app_id=body.app_id
    )
    response.status_code = 201 if saved.created else 200
    return CredentialOut.of(saved.credential)


@router.get("/credentials/webpush/{name}", response_model=CredentialOut)
async def get_webpush_credential(name: Name, app: App, tenant: Tenant) -> CredentialOut:
    """One Web Push credential, without its private key."""
    return CredentialOut.of(await app.credentials.get(tenant, WEBPUSH, name))


@router.delete("/credentials/webpush/{name}", status_code=204)
async def delete_webpush_credential(name: Name, app: App, tenant: Tenant) -> Response:
    """Delete a Web Push credential and its key."""
    await app.credentials.delete(tenant, WEBPUSH, name)
    return Response(status_code=204)


# --- WNS ----------------------------------------------------------------------------------------


class WnsIn(schemas.Input):
    """The app's Package SID and client secret (Partner Center)."""

    package_sid: Annotated[schemas.Text, Field(min_length=1, max_length=255)]
    client_secret: Annotated[schemas.Text, Field(min_length=1, max_length=500)]
    app_id: AppId | None = None


@router.put(
    "/credentials/wns/{name}",
    response_model=CredentialOut,
    responses={201: {"model": CredentialOut}},
)
async def put_wns_credential(
    name: Name, body: WnsIn, app: App, tenant: Tenant, response: Response
) -> CredentialOut:
    """Create (201) or replace (200) a WNS credential. The secret is never returned."""
    saved = await app.credentials.put_wns(
        tenant,
        name,
        package_sid=body.package_sid,
        client_secret=body.client_secret,
        app_id=body.app_id,
    )
    response.status_code = 201 if saved.created else 200
    return CredentialOut.of(saved.credential)


@router.get("/credentials/wns/{name}", response_model=CredentialOut)
async def get_wns_credential(name: Name, app: App, tenant: Tenant) -> CredentialOut:
    """One WNS credential, without its secret."""
    return CredentialOut.of(await app.credentials.get(tenant, WNS, name))


@router.delete("/credentials/wns/{name}", status_code=204)
async def delete_wns_credential(name: Name, app: App, tenant: Tenant) -> Response:
    """Delete a WNS credential and its secret."""
    await app.credentials.delete(tenant, WNS, name)
    return Response(status_code=204)


# --- Email (SMTP, Amazon SES, SendGrid) ---------------------------------------------------------

Secret = Annotated[schemas.Text, Field(min_length=1, max_length=500)]
ShortText = Annotated[schemas.Text, Field(min_length=1, max_length=255)]


class SmtpIn(schemas.Input):
    """An SMTP relay: STARTTLS required, implicit TLS, or (only when chosen) plain text; AUTH
    when a username and password are given."""

    kind: Literal["smtp"]
    host: ShortText
    port: int
    security: Literal["starttls", "tls", "none"]
    username: ShortText | None = None
    password: Secret | None = None


class SesIn(schemas.Input):
    """Amazon SES API v2 with an IAM access key."""

    kind: Literal["ses"]
    region: Annotated[schemas.Text, Field(min_length=1, max_length=64)]
    access_key_id: Annotated[schemas.Text, Field(min_length=1, max_length=128)]
    secret_access_key: Annotated[schemas.Text, Field(min_length=1, max_length=128)]
    configuration_set: Annotated[schemas.Text, Field(min_length=1, max_length=64)] | None = None
    sns_topic_arn: Annotated[schemas.Text, Field(min_length=1, max_length=512)] | None = None


class SendGridIn(schemas.Input):
    """SendGrid v3 with an API key; the Event Webhook's public key for signed events."""

    kind: Literal["sendgrid"]
    api_key: Annotated[schemas.Text, Field(min_length=1, max_length=200)]
    region: Literal["global", "eu"] = "global"
    event_webhook_public_key: (
        Annotated[schemas.Text, Field(min_length=1, max_length=5_000)] | None
    ) = None


EmailIn = Annotated[SmtpIn | SesIn | SendGridIn, Field(discriminator="kind")]


@router.put(
    "/credentials/email/{name}",
    response_model=CredentialOut,
    responses={201: {"model": CredentialOut}},
)
async def put_email_credential(
    name: Name, body: EmailIn, app: App, tenant: Tenant, response: Response
) -> CredentialOut:
    """Create (201) or replace (200) an email credential (`kind`: smtp, ses or sendgrid). The
    password, secret access key or API key is never returned."""
    if isinstance(body, SmtpIn):
        saved = await app.credentials.put_email(
            tenant,
            name,
            kind=body.kind,
            host=body.host,
            port=body.port,
            security=body.security,
            username=body.username,
            password=body.password,
        )
    elif isinstance(body, SesIn):
        saved = await app.credentials.put_email(
            tenant,
            name,
            kind=body.kind,
            region=body.region,
            access_key_id=body.access_key_id,
            secret_access_key=body.secret_access_key,
            configuration_set=body.configuration_set,
            sns_topic_arn=body.sns_topic_arn,
        )
    else:
        saved = await app.credentials.put_email(
            tenant,
            name,
            kind=body.kind,
            api_key=body.api_key,
            region=body.region,
            event_webhook_public_key=body.event_webhook_public_key,
        )
    response.status_code = 201 if saved.created else 200
    return CredentialOut.of(saved.credential)


@router.get("/credentials/email/{name}", response_model=CredentialOut)
async def get_email_credential(name: Name, app: App, tenant: Tenant) -> CredentialOut:
    """One email credential, without its secret."""
    return CredentialOut.of(await app.credentials.get(tenant, EMAIL, name))


@router.delete("/credentials/email/{name}", status_code=204)
async def delete_email_credential(name: Name, app: App, tenant: Tenant) -> Response:
    """Delete an email credential and its secret."""
    await app.credentials.delete(tenant, EMAIL, name)
    return Response(status_code=204)
