"""`clarion dlq` as an operator runs it, against the machine's Redis and NATS: list, show,
replay (the message is processed once more) and drop."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from clarion.adapters.bus import open_bus
from clarion.domain.notifications import INGEST_STREAM
from tests.e2e.deployment import shared_bus

CLARION = [sys.executable, "-m", "clarion"]


def _env(tmp_path: Path, **variables: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLARION_")}
    env["CLARION_DATA_DIR"] = str(tmp_path / "var")
    env["COLUMNS"] = "200"  # Rich's tables wrap to the terminal, 80 columns without one
    env.update({f"CLARION_{k}": v for k, v in variables.items()})
    return env


async def _dlq(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(
        subprocess.run,
        [*CLARION, "dlq", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize("kind", ["redis", "nats"])
async def test_dead_letters_are_listed_shown_replayed_and_dropped(
    kind: str, tmp_path: Path
) -> None:
    async with shared_bus(kind) as (url, prefix):
        bus = open_bus(kind, url, prefix=prefix)
        try:
            messages = bus.consume(INGEST_STREAM, "ingesters").__aiter__()
            for n in range(3):
                await bus.publish(INGEST_STREAM, {"n": n, "idempotency_key": f"k{n}"})
                envelope = await asyncio.wait_for(anext(messages), 15)
                await envelope.reject(f"unknown_group {n}")
            env = _env(tmp_path, BUS=kind, BUS_URL=url, STREAMS__PREFIX=prefix)

            listed = await _dlq(env, "list", "--stream", "ingest", "--json")
            assert listed.returncode == 0, listed.stderr
            letters: list[dict[str, Any]] = json.loads(listed.stdout)
            assert [x["payload"]["n"] for x in letters] == [0, 1, 2]
            assert {x["group"] for x in letters} == {"ingesters"}
            assert [x["reason"] for x in letters] == [f"unknown_group {n}" for n in range(3)]

            paged = await _dlq(env, "list", "--stream", "ingest", "--limit", "2")
            assert paged.returncode == 0, paged.stderr
            assert f"--after {letters[1]['id']}" in paged.stdout
            assert "unknown_group 0" in paged.stdout
            rest = await _dlq(
                env, "list", "--stream", "ingest", "--after", letters[1]["id"], "--json"
            )
            assert [x["id"] for x in json.loads(rest.stdout)] == [letters[2]["id"]]

            shown = await _dlq(env, "show", "ingest", letters[1]["id"], "--json")
            assert json.loads(shown.stdout) == letters[1]
            human = await _dlq(env, "show", "ingest", letters[1]["id"])
            assert '"idempotency_key": "k1"' in human.stdout

            replayed = await _dlq(env, "replay", "ingest", letters[1]["id"])
            assert replayed.returncode == 0, replayed.stderr
            again = await asyncio.wait_for(anext(messages), 15)
            assert (again.payload, again.deliveries) == ({"n": 1, "idempotency_key": "k1"}, 1)
            await again.ack()

            dropped = await _dlq(env, "drop", "ingest", letters[0]["id"])
            assert dropped.returncode == 0, dropped.stderr
            left = json.loads((await _dlq(env, "list", "--stream", "ingest", "--json")).stdout)
            assert [x["id"] for x in left] == [letters[2]["id"]]

            for command in ("show", "replay", "drop"):
                gone = await _dlq(env, command, "ingest", letters[1]["id"])
                assert gone.returncode == 1
                assert "not_found" in gone.stderr
            # Replayed once, and only once: the next message is a new one.
            await bus.publish(INGEST_STREAM, {"n": "next"})
            assert (await asyncio.wait_for(anext(messages), 15)).payload == {"n": "next"}

            wrong = await _dlq(env, "list", "--stream", "nonsense")
            assert wrong.returncode == 1
            assert "invalid_request" in wrong.stderr
        finally:
            await bus.close()


async def test_the_in_process_bus_has_no_dead_letters_to_reach(tmp_path: Path) -> None:
    listed = await _dlq(_env(tmp_path), "list")
    assert listed.returncode == 1
    assert "/v1/admin/dlq" in listed.stderr
    assert not (tmp_path / "var").exists()  # it touched neither a database nor a key file
