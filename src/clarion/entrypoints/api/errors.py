"""The API's one error catalogue, and the handlers that make every failure speak it.

Every error leaves as ``{"error": {"code": ..., "message": ..., "docs": ...}}`` with a stable
code and status. Codes come from the `ClarionError` classes plus the few the HTTP layer itself
raises (no such route, wrong method). Nothing escapes as a bare 500 page.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from clarion.domain import errors

log = logging.getLogger(__name__)

DOCS = "docs/api.md#"  # every code has an anchor of its own name in the API reference

RETRY_AFTER_SECONDS = 5
"""`Retry-After` of a 503 that knows no better: a database restart or failover takes seconds,
and clients that come back every 5 s neither hammer it nor wait long once it is back."""


@dataclass(frozen=True, slots=True)
class CatalogueEntry:
    """One error the API can answer with."""

    code: str
    status: int
    message: str


def _catalogue() -> dict[str, CatalogueEntry]:
    entries: dict[str, CatalogueEntry] = {}
    pending: list[type[errors.ClarionError]] = [errors.ClarionError]
    while pending:
        cls = pending.pop()
        doc = (cls.__doc__ or cls.code).strip().splitlines()[0]
        entries[cls.code] = CatalogueEntry(cls.code, cls.status, doc)
        pending.extend(cls.__subclasses__())
    for code, status, message in (
        ("route_not_found", 404, "No such route."),
        ("method_not_allowed", 405, "This route does not take that method."),
        ("unsupported_media_type", 415, "The request body must be application/json."),
        ("http_error", 400, "The HTTP request could not be handled as sent."),
    ):
        entries[code] = CatalogueEntry(code, status, message)
    return dict(sorted(entries.items()))


CATALOGUE = _catalogue()
"""Every code the API can send, for docs/api.md and `clarion errors`."""


def error_body(code: str, message: str, details: Any = None) -> dict[str, Any]:
    """The JSON body of an error answer."""
    body: dict[str, Any] = {"code": code, "message": message, "docs": DOCS + code}
    if details:
        body["details"] = details
    return {"error": body}


def retry_after(seconds: float) -> str:
    """A `Retry-After` value: whole seconds, rounded up, at least 1 (RFC 9110 §10.2.3)."""
    return str(max(1, math.ceil(seconds)))


def respond(error: errors.ClarionError, headers: Mapping[str, str] | None = None) -> JSONResponse:
    """The answer for a Clarion error, with `headers` added.

    401s carry `WWW-Authenticate`; 429s and 503s carry `Retry-After`, from the error when it
    knows (`retry_after`), else `RETRY_AFTER_SECONDS`.
    """
    sent = dict(headers or {})
    if error.status == 401:
        sent["WWW-Authenticate"] = "Bearer"
    if error.status in (429, 503):
        wait = getattr(error, "retry_after", None)
        sent.setdefault("Retry-After", retry_after(wait if wait else RETRY_AFTER_SECONDS))
    return JSONResponse(
        error_body(error.code, error.message, error.details or None),
        status_code=error.status,
        headers=sent or None,
    )


def install(app: FastAPI) -> None:
    """Make every failure of `app` answer from the catalogue."""

    @app.exception_handler(errors.ClarionError)
    async def _clarion(_: Request, exc: errors.ClarionError) -> JSONResponse:
        return respond(exc)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        problems = exc.errors()
        if any(p.get("type") == "json_invalid" for p in problems):
            return respond(errors.MalformedJson())
        details = [
            {
                "field": ".".join(str(part) for part in p.get("loc", ())),
                "problem": p.get("msg", "invalid"),
            }
            for p in problems
        ]
        return respond(errors.InvalidRequest("the request is not valid", fields=details))

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        # FastAPI raises a bare 400 when the body cannot be parsed at all (e.g. JSON nested so
        # deep that the parser gives up).
        code = {
            400: "malformed_json",
            404: "route_not_found",
            405: "method_not_allowed",
            415: "unsupported_media_type",
        }
        entry = CATALOGUE.get(code.get(exc.status_code, ""))
        if entry is None:
            return JSONResponse(
                error_body("http_error", str(exc.detail)), status_code=exc.status_code
            )
        return JSONResponse(
            error_body(entry.code, entry.message), status_code=entry.status, headers=exc.headers
        )

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error", exc_info=exc)
        return JSONResponse(error_body("internal", "Something went wrong inside Clarion."), 500)
