"""``clarion``: run the service, migrate, and administer tenants and keys."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

from clarion import bootstrap
from clarion.domain import errors
from clarion.entrypoints.cli import dlq, emulate, logs, rules
from clarion.settings import Settings

T = TypeVar("T")

app = typer.Typer(help="Clarion: a self-hosted notification service.", no_args_is_help=True)
tenant_app = typer.Typer(help="Tenants.", no_args_is_help=True)
key_app = typer.Typer(help="API keys.", no_args_is_help=True)
config_app = typer.Typer(help="Configuration.", no_args_is_help=True)
app.add_typer(tenant_app, name="tenant")
app.add_typer(key_app, name="key")
app.add_typer(config_app, name="config")
app.add_typer(emulate.app, name="emulate")
app.add_typer(dlq.app, name="dlq")
app.add_typer(rules.app, name="rules")

out = Console()
err = Console(stderr=True)

DataDir = Annotated[
    Path | None, typer.Option("--data-dir", help="Where the SQLite database and key file live.")
]


def _settings(**overrides: Any) -> Settings:
    try:
        return Settings(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as exc:
        err.print(f"[red]invalid configuration[/red]\n{exc}")
        raise typer.Exit(2) from exc


def _run(settings: Settings, work: Callable[[bootstrap.Clarion], Awaitable[T]]) -> T:
    async def main() -> T:
        clarion = bootstrap.build(settings)
        try:
            return await work(clarion)
        finally:
            await clarion.close()

    try:
        return asyncio.run(main())
    except errors.ClarionError as exc:
        err.print(f"[red]{exc.code}[/red]: {exc.message}")
        raise typer.Exit(1) from exc


def _logging(settings: Settings) -> None:
    logs.configure(settings.log_level, json=settings.log_format == "json")


Port = Annotated[int | None, typer.Option(help="HTTP port (CLARION_PORT).")]
Host = Annotated[str | None, typer.Option(help="Address to listen on (CLARION_HOST).")]
Migrate = Annotated[
    bool, typer.Option("--migrate", help="Migrate the schema first (one process at a time).")
]


def _run_roles(settings: Settings, *, api: bool, worker: bool, migrate: bool) -> None:
    from clarion.entrypoints.server import serve as run

    _logging(settings)
    if migrate:
        asyncio.run(bootstrap.migrate(settings))

    async def main() -> None:
        await run(bootstrap.build(settings), api=api, worker=worker)

    asyncio.run(main())


@app.command()
def serve(
    port: Port = None,
    host: Host = None,
    data_dir: DataDir = None,
    no_migrate: Annotated[
        bool, typer.Option("--no-migrate", help="Do not migrate the schema first.")
    ] = False,
) -> None:
    """Run the API, the WebSocket gateway and the worker in one process."""
    settings = _settings(port=port, host=host, data_dir=data_dir)
    _run_roles(settings, api=True, worker=True, migrate=not no_migrate)


@app.command()
def api(
    port: Port = None, host: Host = None, data_dir: DataDir = None, migrate: Migrate = False
) -> None:
    """Run the HTTP API and the WebSocket gateway only; run any number of them.

    Run `clarion migrate` once before starting new versions.
    """
    settings = _settings(port=port, host=host, data_dir=data_dir)
    _run_roles(settings, api=True, worker=False, migrate=migrate)


@app.command()
def worker(data_dir: DataDir = None, migrate: Migrate = False) -> None:
    """Run the worker only (outbox relay, routing, delivery, status webhooks); no HTTP. Run
    any number of them.

    Run `clarion migrate` once before starting new versions.
    """
    settings = _settings(data_dir=data_dir)
    _run_roles(settings, api=False, worker=True, migrate=migrate)


@app.command()
def migrate(data_dir: DataDir = None) -> None:
    """Bring the database schema up to date."""
    settings = _settings(data_dir=data_dir)
    asyncio.run(bootstrap.migrate(settings))
    out.print("schema is up to date")


@tenant_app.command("create")
def tenant_create(
    name: str,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    data_dir: DataDir = None,
) -> None:
    """Create a tenant; prints its id, an API key and the user-token secret, once."""
    settings = _settings(data_dir=data_dir)
    asyncio.run(bootstrap.migrate(settings))
    created = _run(settings, lambda c: c.tenancy.create_tenant(name))
    result = {
        "tenant_id": created.tenant_id,
        "api_key": created.api_key,
        "user_token_secret": created.user_token_secret,
    }
    if as_json:
        print(json.dumps(result))
        return
    out.print(f"tenant_id          {created.tenant_id}")
    out.print(f"api_key            {created.api_key}")
    out.print(f"user_token_secret  {created.user_token_secret}")
    out.print("[yellow]These secrets are shown once; store them now.[/yellow]")


@key_app.command("create")
def key_create(
    tenant: Annotated[str, typer.Option(help="The tenant id.")],
    name: Annotated[str, typer.Option(help="A label for the key.")] = "unnamed",
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    data_dir: DataDir = None,
) -> None:
    """Create an API key for a tenant; the key is shown once."""
    settings = _settings(data_dir=data_dir)
    created = _run(settings, lambda c: c.tenancy.create_key(tenant, name))
    if as_json:
        print(
            json.dumps(
                {"id": created.id, "tenant_id": created.tenant_id, "api_key": created.api_key}
            )
        )
        return
    out.print(f"id       {created.id}")
    out.print(f"api_key  {created.api_key}")


@key_app.command("list")
def key_list(
    tenant: Annotated[str, typer.Option(help="The tenant id.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    data_dir: DataDir = None,
) -> None:
    """List a tenant's API keys (never their secrets)."""
    settings = _settings(data_dir=data_dir)
    keys = _run(settings, lambda c: c.tenancy.list_keys(tenant))
    if as_json:
        print(
            json.dumps(
                [
                    {
                        "id": k.id,
                        "name": k.name,
                        "created_at": k.created_at.isoformat(),
                        "revoked_at": k.revoked_at and k.revoked_at.isoformat(),
                    }
                    for k in keys
                ]
            )
        )
        return
    table = Table("id", "name", "created", "revoked")
    for k in keys:
        table.add_row(
            k.id, k.name, k.created_at.isoformat(), k.revoked_at.isoformat() if k.revoked_at else ""
        )
    out.print(table)


@key_app.command("revoke")
def key_revoke(key_id: str, data_dir: DataDir = None) -> None:
    """Revoke an API key; it stops working with the next request."""
    settings = _settings(data_dir=data_dir)
    _run(settings, lambda c: c.tenancy.revoke_key(key_id))
    out.print(f"revoked {key_id}")


@config_app.command("check")
def config_check(data_dir: DataDir = None) -> None:
    """Validate the configuration and explain where each setting comes from."""
    settings = _settings(data_dir=data_dir)
    problems = []
    url = settings.resolved_database_url
    out.print(f"database      {_redact(url)}")
    bus = settings.bus if not settings.bus_url else f"{settings.bus} {_redact(settings.bus_url)}"
    out.print(f"bus           {bus}")
    out.print(f"listen        http://{settings.host}:{settings.port}")
    out.print(f"data dir      {settings.data_dir}")
    out.print(
        "sealing key   "
        + ("CLARION_SECRET_KEY" if settings.secret_key else str(settings.secret_key_file))
    )
    if settings.gateway.idle_timeout_seconds <= settings.gateway.heartbeat_seconds:
        problems.append("gateway.idle_timeout_seconds must exceed gateway.heartbeat_seconds")
    if settings.tokens.default_ttl_seconds > settings.tokens.max_ttl_seconds:
        problems.append("tokens.default_ttl_seconds exceeds tokens.max_ttl_seconds")
    if settings.webhooks.retry_base_seconds > settings.webhooks.retry_max_seconds:
        problems.append("webhooks.retry_base_seconds exceeds webhooks.retry_max_seconds")
    if settings.secret_key:
        import base64
        import binascii

        try:
            if len(base64.b64decode(settings.secret_key, validate=True)) != 32:
                problems.append("CLARION_SECRET_KEY must be base64 of 32 bytes")
        except binascii.Error:
            problems.append("CLARION_SECRET_KEY is not base64")
    for problem in problems:
        err.print(f"[red]problem[/red]: {problem}")
    if problems:
        raise typer.Exit(1)
    out.print("[green]configuration is valid[/green]")


def _redact(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)
