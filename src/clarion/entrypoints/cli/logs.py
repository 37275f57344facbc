"""Logging: one JSON object per line on stderr, with secrets redacted at the choke point.

Every record, ours and the libraries', passes through one formatter. Fields named like a
secret are replaced by a short fingerprint, and CR/LF are stripped from strings so that no
value can forge a log line (CWE-117).
"""

from __future__ import annotations

import hashlib
import logging
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

SECRET_FIELDS = frozenset(
    {"token", "api_key", "secret", "password", "authorization", "email", "user_token_secret"}
)


def redact(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Hide secrets and neutralise line breaks in every field of a log event."""
    event.pop("color_message", None)  # uvicorn's ANSI-coloured duplicate of the message
    for key, value in list(event.items()):
        if key in SECRET_FIELDS and value is not None:
            digest = hashlib.sha256(str(value).encode()).hexdigest()[:8]
            event[key] = f"redacted:{digest}"
        elif isinstance(value, str) and ("\n" in value or "\r" in value):
            event[key] = value.replace("\r", "\\r").replace("\n", "\\n")
    return event


def configure(level: str, *, json: bool = True) -> None:
    """Send every logger's records through the redacting formatter, at `level`."""
    renderer: Any = (
        structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer(colors=False)
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[
            structlog.stdlib.add_log_level,
            structlog.stdlib.add_logger_name,
            structlog.stdlib.ExtraAdder(),
            structlog.processors.TimeStamper(fmt="iso", utc=True),
        ],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            redact,
            renderer,
        ],
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
