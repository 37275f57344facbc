"""What the provider benchmarks share: the emulator in a pinned child process, and CPU readings."""

from __future__ import annotations

import contextlib
import dataclasses
import http.client
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any, TypeVar

Record = TypeVar("Record")

CLIENT_CPU = 0
EMULATOR_CPU = 1
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def pin_client() -> None:
    """Keep this process on CLIENT_CPU, off the emulator's, where the platform allows."""
    with contextlib.suppress(AttributeError, OSError):
        os.sched_setaffinity(0, {CLIENT_CPU})


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of process `pid`, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def port_of(line: str) -> int:
    """The port in a ``label: scheme://host:port/...`` line the emulator prints."""
    return int(line.rsplit(":", 1)[1].split("/", 1)[0])


class EmulatorProcess:
    """``clarion emulate <provider>`` in a child process (pinned to EMULATOR_CPU with taskset
    when it exists); what it prints up to its control API line is kept in `said`."""

    control_timeout = 120.0
    received_path = "/control/received"

    def __init__(self, provider: str, options: list[str]) -> None:
        command = [sys.executable, "-m", "clarion", "emulate", provider, *options]
        self.pinned = shutil.which("taskset") is not None
        if self.pinned:
            command = ["taskset", "-c", str(EMULATOR_CPU), *command]
        self.process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
        )
        self.control_port = 0
        self.said: list[str] = []
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.said.append(line)
            if line.startswith("control API:"):
                self.control_port = port_of(line)
                break
        if not self.control_port:
            self.failed()

    def line(self, label: str) -> str:
        """The line the emulator printed starting with `label` ("" when there was none)."""
        return next((line for line in self.said if line.startswith(label)), "")

    def failed(self) -> None:
        self.stop()
        raise RuntimeError("the emulator did not start")

    def control(self, method: str, path: str, body: Any = None) -> Any:
        connection = http.client.HTTPConnection(
            "127.0.0.1", self.control_port, timeout=self.control_timeout
        )
        try:
            data = json.dumps(body).encode() if body is not None else None
            connection.request(method, path, body=data, headers={"connection": "close"})
            response = connection.getresponse()
            answer = json.loads(response.read())
            if response.status >= 300:
                raise RuntimeError(f"{method} {path}: {response.status} {answer}")
            return answer
        finally:
            connection.close()

    def cleared(self) -> int:
        """Forget what was received (and every attempt); how many were received."""
        count = int(self.control("DELETE", self.received_path)["cleared"])
        self.control("DELETE", "/control/attempts")
        return count

    def cpu_s(self) -> float:
        return process_cpu_s(self.process.pid)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def median_of(records: list[Record]) -> Record:
    """One record of the dataclass type of `records` whose every numeric field is the median
    of theirs (the values known: None where none is); fields equal in all of them (the run's
    settings) and fields that are not numbers are taken from the first."""
    first = records[0]
    merged: dict[str, Any] = {}
    for f in dataclasses.fields(first):  # type: ignore[arg-type]
        values = [getattr(r, f.name) for r in records]
        known = [v for v in values if v is not None]
        numeric = all(isinstance(v, int | float) and not isinstance(v, bool) for v in known)
        if all(v == values[0] for v in values) or not numeric:
            merged[f.name] = values[0]
        else:
            merged[f.name] = statistics.median(known) if known else None
    return dataclasses.replace(first, **merged)  # type: ignore[type-var]
