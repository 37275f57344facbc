"""``clarion rules``: apply a tenant's routing rules from a file, and list them.

A rules file is JSON (``{"rules": [...]}`` or a bare list) or TOML (``[[rules]]`` tables),
told apart by its suffix (docs/api.md, "Rules files"). Applying saves every rule of the file in
one transaction, or none when one is not valid; ``--replace`` also deletes the tenant's rules
the file does not hold.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from clarion import bootstrap
from clarion.domain import errors
from clarion.domain.rules import RuleChanges, StoredRule

app = typer.Typer(help="Routing rules.", no_args_is_help=True)

out = Console()
err = Console(stderr=True)

DataDir = Annotated[
    Path | None, typer.Option("--data-dir", help="Where the SQLite database and key file live.")
]
TenantOption = Annotated[str, typer.Option("--tenant", help="The tenant id.")]
AsJson = Annotated[bool, typer.Option("--json", help="Print JSON.")]

FORMATS = {".json": "json", ".toml": "toml"}


@app.command("apply")
def apply(
    file: Annotated[Path, typer.Argument(help="A rules file: .json or .toml.")],
    tenant: TenantOption,
    replace: Annotated[
        bool, typer.Option("--replace", help="Also delete the tenant's rules the file lacks.")
    ] = False,
    as_json: AsJson = False,
    data_dir: DataDir = None,
) -> None:
    """Save every rule of FILE for the tenant, all or none."""
    from clarion.entrypoints.cli.main import _run, _settings

    kind = FORMATS.get(file.suffix.lower())
    if kind is None:
        err.print(f"[red]invalid_rule[/red]: {file.name}: name a .json or .toml file")
        raise typer.Exit(2)
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        err.print(f"[red]cannot read {file}[/red]: {exc}")
        raise typer.Exit(2) from exc
    settings = _settings(data_dir=data_dir)

    async def work(clarion: bootstrap.Clarion) -> RuleChanges:
        await _known_tenant(clarion, tenant)
        return await clarion.ruling.apply_file(tenant, text, kind, replace=replace)

    changes = _run(settings, work)
    result = {
        "created": list(changes.created),
        "updated": list(changes.updated),
        "deleted": list(changes.deleted),
    }
    if as_json:
        print(json.dumps(result))
        return
    for what, keys in result.items():
        if keys:
            out.print(f"{what:8} {', '.join(keys)}")
    out.print(f"applied {len(result['created']) + len(result['updated'])} rules from {file.name}")


@app.command("list")
def list_rules(tenant: TenantOption, as_json: AsJson = False, data_dir: DataDir = None) -> None:
    """List the tenant's rules in the order routing tries them."""
    from clarion.entrypoints.cli.main import _run, _settings

    settings = _settings(data_dir=data_dir)

    async def work(clarion: bootstrap.Clarion) -> list[StoredRule]:
        await _known_tenant(clarion, tenant)
        return await clarion.ruling.list_rules(tenant)

    found = _run(settings, work)
    if as_json:
        print(json.dumps([s.rule.to_json() for s in found]))
        return
    table = Table("order", "key", "event type", "condition", "channels", "priority")
    for stored in found:
        rule = stored.rule
        table.add_row(
            str(rule.order),
            rule.key,
            rule.event_type,
            "" if rule.condition is None else rule.condition.source,
            "(default)" if rule.channels is None else ", ".join(rule.channels),
            str(rule.priority),
        )
    out.print(table)


async def _known_tenant(clarion: bootstrap.Clarion, tenant: str) -> None:
    # Rules of a tenant that does not exist would be refused by the database's foreign key;
    # saying so is kinder than an integrity error.
    if await clarion.store.tenant_secret(tenant) is None:
        raise errors.NotFound(f"no tenant {tenant}")
