"""``clarion dlq``: the bus's dead letters (list, show, replay, drop), for operators.

Each command connects to the bus the settings name (`CLARION_BUS`, `CLARION_BUS_URL`). The
in-process bus keeps its dead letters inside the `clarion serve` process, out of this
command's reach: there, use the admin API (`/v1/admin/dlq`).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from clarion import bootstrap
from clarion.domain import errors
from clarion.services.deadletters import MAX_PAGE, STREAMS, DeadLetters
from clarion.services.ports import DeadLetter
from clarion.settings import Settings

T = TypeVar("T")

app = typer.Typer(help="Dead letters: messages the bus gave up on.", no_args_is_help=True)

out = Console()
err = Console(stderr=True)

DataDir = Annotated[
    Path | None, typer.Option("--data-dir", help="Where the SQLite database and key file live.")
]
StreamOption = Annotated[
    str, typer.Option("--stream", help=f"The stream whose dead letters: {', '.join(STREAMS)}.")
]
StreamArgument = Annotated[str, typer.Argument(help=f"The stream: {', '.join(STREAMS)}.")]
LetterId = Annotated[str, typer.Argument(help="The dead letter's id, as `clarion dlq list` shows.")]
AsJson = Annotated[bool, typer.Option("--json", help="Print JSON.")]


def _settings(data_dir: Path | None) -> Settings:
    from clarion.entrypoints.cli.main import _settings as settings_from

    settings = settings_from(data_dir=data_dir)
    if settings.bus == "memory":
        err.print(
            "[red]the in-process bus keeps its dead letters inside the `clarion serve` "
            "process[/red]: use the admin API (GET /v1/admin/dlq), or set CLARION_BUS and "
            "CLARION_BUS_URL to the shared bus"
        )
        raise typer.Exit(1)
    return settings


def _run(settings: Settings, work: Callable[[DeadLetters], Awaitable[T]]) -> T:
    async def main() -> T:
        async with bootstrap.deadletters_only(settings) as deadletters:
            return await work(deadletters)

    try:
        return asyncio.run(main())
    except errors.ClarionError as exc:
        err.print(f"[red]{exc.code}[/red]: {exc.message}")
        raise typer.Exit(1) from exc


def _as_dict(letter: DeadLetter) -> dict[str, Any]:
    return {
        "id": letter.id,
        "stream": letter.stream,
        "group": letter.group,
        "deliveries": letter.deliveries,
        "reason": letter.reason,
        "dead_at": letter.dead_at.isoformat() if letter.dead_at else None,
        "payload": letter.payload,
    }


@app.command("list")
def list_letters(
    stream: StreamOption = STREAMS[0],
    after: Annotated[
        str | None, typer.Option(help="Start after this letter (the last id of a page).")
    ] = None,
    limit: Annotated[int, typer.Option(min=1, max=MAX_PAGE, help="Most letters shown.")] = 50,
    as_json: AsJson = False,
    data_dir: DataDir = None,
) -> None:
    """List a stream's dead letters, oldest first."""
    settings = _settings(data_dir)
    letters = _run(settings, lambda d: d.page(stream, after=after, limit=limit))
    if as_json:
        print(json.dumps([_as_dict(letter) for letter in letters]))
        return
    table = Table("id", "reason", "deliveries", "group", "dead at", "payload")
    for letter in letters:
        payload = json.dumps(letter.payload, ensure_ascii=False)
        table.add_row(
            letter.id,
            letter.reason,
            str(letter.deliveries),
            letter.group,
            letter.dead_at.isoformat(timespec="seconds") if letter.dead_at else "",
            payload if len(payload) <= 60 else payload[:59] + "…",
        )
    out.print(table)
    if len(letters) == limit:
        out.print(f"more: clarion dlq list --stream {stream} --after {letters[-1].id}")


@app.command("show")
def show(
    stream: StreamArgument, letter_id: LetterId, as_json: AsJson = False, data_dir: DataDir = None
) -> None:
    """Show one dead letter, with its whole payload."""
    settings = _settings(data_dir)
    letter = _run(settings, lambda d: d.show(stream, letter_id))
    if as_json:
        print(json.dumps(_as_dict(letter)))
        return
    for name, value in _as_dict(letter).items():
        if name != "payload":
            out.print(f"{name:<11} {value}")
    out.print("payload")
    out.print_json(json.dumps(letter.payload))


@app.command("replay")
def replay(stream: StreamArgument, letter_id: LetterId, data_dir: DataDir = None) -> None:
    """Publish a dead letter's payload to its stream again and forget it: processed once more."""
    settings = _settings(data_dir)
    letter = _run(settings, lambda d: d.replay(stream, letter_id))
    out.print(f"replayed {letter.id} to {letter.stream}")


@app.command("drop")
def drop(stream: StreamArgument, letter_id: LetterId, data_dir: DataDir = None) -> None:
    """Forget a dead letter without replaying it."""
    settings = _settings(data_dir)
    _run(settings, lambda d: d.drop(stream, letter_id))
    out.print(f"dropped {letter_id}")
