"""The gate every HTTP request passes before the app: JSON bodies only, and a size cap enforced
before any of the body is parsed or buffered beyond it."""

from __future__ import annotations

import json

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from clarion.domain import errors
from clarion.entrypoints.api.errors import error_body

FOREIGN_BODY_PATHS = ("/v1/unsubscribe/", "/v1/mail-events/")
"""Routes whose bodies others format: mail clients POST a form for one-click unsubscribe (RFC
8058) and SNS posts JSON as ``text/plain``. The size cap still applies to them."""


class BodyLimit:
    """Answers 413 ``body_too_large`` over `max_bytes` (declared or streamed) and 415
    ``unsupported_media_type`` for a body that is not JSON."""

    def __init__(self, app: ASGIApp, *, max_bytes: int) -> None:
        self._app = app
        self._max = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        content_type = b""
        for name, value in scope["headers"]:
            if name == b"content-type":
                content_type = value.split(b";")[0].strip().lower()
            elif name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = self._max + 1
                if declared > self._max:
                    await self._too_large(send)
                    return
        # Read the body here, up to the cap, and hand it on whole: an error raised from inside
        # the app's read would be turned into a 500 by the framework before reaching us.
        chunks: list[bytes] = []
        seen = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                await self._app(scope, _replay([], message, receive), send)
                return
            chunk = message.get("body", b"")
            seen += len(chunk)
            if seen > self._max:
                await self._too_large(send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        json_only = not scope["path"].startswith(FOREIGN_BODY_PATHS)
        if (
            body
            and json_only
            and not (content_type == b"application/json" or content_type.endswith(b"+json"))
        ):
            await self._refuse(
                send, 415, "unsupported_media_type", "send the body as application/json"
            )
            return
        await self._app(scope, _replay([body], None, receive), send)

    async def _too_large(self, send: Send) -> None:
        error = errors.BodyTooLarge(f"request bodies are limited to {self._max} bytes")
        await self._refuse(send, error.status, error.code, error.message)

    async def _refuse(self, send: Send, status: int, code: str, message: str) -> None:
        body = json.dumps(error_body(code, message)).encode()
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


def _replay(chunks: list[bytes], first: Message | None, receive: Receive) -> Receive:
    """A receive that gives the buffered body once, then waits on the real one (disconnects)."""
    pending: list[Message] = (
        [first] if first is not None else [{"type": "http.request", "body": b"".join(chunks)}]
    )

    async def replayed() -> Message:
        if pending:
            return pending.pop()
        return await receive()

    return replayed
