from __future__ import annotations

from clarion.entrypoints.cli.main import app

app()
