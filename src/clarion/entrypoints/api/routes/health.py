"""Liveness and readiness, for load balancers and orchestrators."""

from __future__ import annotations

import asyncio
import logging

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from clarion.entrypoints.api.dependencies import App
from clarion.entrypoints.api.errors import RETRY_AFTER_SECONDS, retry_after

log = logging.getLogger(__name__)

router = APIRouter(tags=["health"])

READY_TIMEOUT_SECONDS = 4.0
"""`/readyz` answers within this long even when the database does not (a silent network would
otherwise hold it for the statement timeout); under the 5 s of a typical probe timeout."""


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process is up."""
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(app: App) -> JSONResponse:
    """The process can reach its database."""
    try:
        await asyncio.wait_for(app.store.ping(), READY_TIMEOUT_SECONDS)
    except Exception as exc:
        log.debug("not ready", extra={"action": "not_ready", "error": repr(exc)})
        return JSONResponse(
            {"status": "unavailable", "database": "unreachable"},
            503,
            headers={"Retry-After": retry_after(RETRY_AFTER_SECONDS)},
        )
    return JSONResponse({"status": "ok"})
