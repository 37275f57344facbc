"""``/v1/ws``: the socket an app keeps open to receive its user's notifications live.

The token arrives in the first frame or the ``Sec-WebSocket-Protocol`` header, never the URL
(URLs end up in logs). After ``ready`` the server sends what the user missed, then new
notifications as they are routed; the client sends receipts. Close codes: 4401 bad token,
4408 auth or idle timeout, 4429 too slow to keep up, 1009 frame too large, 1008 origin refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, WebSocket
from starlette.websockets import WebSocketDisconnect, WebSocketState

from clarion.bootstrap import Clarion
from clarion.domain import errors
from clarion.domain.channels import Channel
from clarion.entrypoints.gateway.hub import Hub, Session
from clarion.settings import GatewaySettings
from clarion.wire import realtime as frames

log = logging.getLogger(__name__)

router = APIRouter()

CLOSE_UNAUTHORIZED = 4401
CLOSE_TIMEOUT = 4408
CLOSE_TOO_SLOW = 4429
CLOSE_TOO_LARGE = 1009
CLOSE_POLICY = 1008


@router.websocket("/v1/ws")
async def gateway(websocket: WebSocket) -> None:
    """One client connection, from handshake to close."""
    app: Clarion = websocket.app.state.clarion
    hub: Hub = websocket.app.state.hub
    settings = app.settings.gateway
    origin = websocket.headers.get("origin")
    offered = list(websocket.scope.get("subprotocols", []))
    await websocket.accept(
        subprotocol=frames.SUBPROTOCOL if frames.SUBPROTOCOL in offered else None
    )
    if settings.allowed_origins and origin is not None and origin not in settings.allowed_origins:
        # Accept, then close with a reason: a refused handshake would tell the client nothing.
        await websocket.close(CLOSE_POLICY, "origin not allowed")
        return
    connection = _Connection(websocket, app, hub, settings)
    try:
        await connection.serve(frames.token_from_subprotocols(offered))
    except WebSocketDisconnect:
        pass
    finally:
        await connection.close()


class _Closing(Exception):
    def __init__(self, code: int, reason: str) -> None:
        self.code = code
        self.reason = reason


class _Connection:
    def __init__(
        self, websocket: WebSocket, app: Clarion, hub: Hub, settings: GatewaySettings
    ) -> None:
        self._ws = websocket
        self._app = app
        self._hub = hub
        self._settings = settings
        self._session: Session | None = None
        self._expires_at = datetime.max.replace(tzinfo=UTC)
        self._tasks: list[asyncio.Task[None]] = []

    async def serve(self, token: str | None) -> None:
        try:
            since = None
            if token is None:
                token, since = await self._await_auth()
            try:
                principal = await self._app.realtime.identify(token)
            except errors.InvalidUserToken as exc:
                await self._send(frames.error_frame(exc))
                raise _Closing(CLOSE_UNAUTHORIZED, exc.code) from exc
            session = Session(
                principal.tenant_id,
                principal.user_id,
                principal.user,
                capacity=self._settings.send_queue_frames,
            )
            self._session = session
            self._expires_at = principal.expires_at
            session.offer(
                frames.ready_frame(
                    user=principal.user,
                    heartbeat_seconds=self._settings.heartbeat_seconds,
                    idle_timeout_seconds=self._settings.idle_timeout_seconds,
                )
            )
            self._hub.add(session)
            self._tasks = [
                asyncio.create_task(self._write(session)),
                asyncio.create_task(self._beat(session)),
            ]
            await self._send_missed(session, since)
            await self._read(session)
        except _Closing as closing:
            await self._close(closing.code, closing.reason)

    async def _await_auth(self) -> tuple[str, str | None]:
        try:
            text = await asyncio.wait_for(self._receive(), self._settings.auth_timeout_seconds)
        except TimeoutError as exc:
            raise _Closing(CLOSE_TIMEOUT, "no auth frame in time") from exc
        try:
            frame = frames.parse_frame(text)
        except errors.InvalidFrame as exc:
            await self._send(frames.error_frame(exc))
            raise _Closing(CLOSE_UNAUTHORIZED, "expected an auth frame") from exc
        if not isinstance(frame, frames.Auth) or not frame.token:
            error = errors.Unauthorized("the first frame must be {'type': 'auth', 'token': ...}")
            await self._send(frames.error_frame(error))
            raise _Closing(CLOSE_UNAUTHORIZED, "expected an auth frame")
        return frame.token, frame.since

    async def _send_missed(
        self, session: Session, since: str | None, *, again: bool = False
    ) -> None:
        async for page in self._app.realtime.missed(session.tenant_id, session.user_id, since):
            for entry in page:
                session.offer(frames.notification_frame(entry.item), entry.item.id, again=again)

    async def _read(self, session: Session) -> None:
        while True:
            receive = asyncio.ensure_future(self._receive())
            overflow = asyncio.ensure_future(session.overflowed.wait())
            # A socket lives no longer than the token that opened it; the app reconnects with
            # a fresh token and its cursor.
            token_left = (self._expires_at - self._app.clock.now()).total_seconds()
            done, _ = await asyncio.wait(
                {receive, overflow},
                timeout=max(0.0, min(self._settings.idle_timeout_seconds, token_left)),
                return_when=asyncio.FIRST_COMPLETED,
            )
            overflow.cancel()
            if overflow in done:
                receive.cancel()
                raise _Closing(CLOSE_TOO_SLOW, "client too slow; reconnect with your cursor")
            if receive not in done:
                receive.cancel()
                if self._app.clock.now() >= self._expires_at:
                    await self._send(
                        frames.error_frame(errors.InvalidUserToken("token has expired"))
                    )
                    raise _Closing(CLOSE_UNAUTHORIZED, "token expired")
                raise _Closing(CLOSE_TIMEOUT, "idle timeout")
            await self._handle(session, receive.result())

    async def _handle(self, session: Session, text: str) -> None:
        try:
            frame = frames.parse_frame(text)
            if isinstance(frame, frames.Receipt):
                # Record what went out first, so the trail reads sent -> received -> read.
                await self._hub.flush()
                moved = await self._app.acknowledging.report(
                    session.tenant_id,
                    session.user_id,
                    frame.item_id,
                    frame.status,
                    channel=Channel.WEBSOCKET,
                )
                session.offer(frames.ack_frame(moved.item_id, moved.status))
            elif isinstance(frame, frames.Resume):
                await self._send_missed(session, frame.since, again=True)
            elif isinstance(frame, frames.Auth):
                raise errors.InvalidFrame("already authenticated")
        except errors.ClarionError as exc:
            if exc.status >= 500:
                raise
            session.offer(frames.error_frame(exc))
        except Exception:
            # One bad frame must not take the connection down; the client hears why.
            log.exception("frame handling failed", extra={"tenant": session.tenant_id})
            session.offer(frames.error_frame(errors.ClarionError()))

    async def _receive(self) -> str:
        message = await self._ws.receive()
        if message["type"] == "websocket.disconnect":
            raise WebSocketDisconnect(message.get("code", 1000))
        text = message.get("text")
        if text is None:
            data = message.get("bytes") or b""
            if len(data) > self._settings.max_frame_bytes:
                raise _Closing(CLOSE_TOO_LARGE, "frame too large")
            try:
                text = data.decode()
            except UnicodeDecodeError as exc:
                raise _Closing(CLOSE_POLICY, "frames are UTF-8 JSON text") from exc
        if len(text) > self._settings.max_frame_bytes:
            raise _Closing(CLOSE_TOO_LARGE, "frame too large")
        return text

    async def _write(self, session: Session) -> None:
        while True:
            frame, item_id = await session.queue.get()
            await self._send(frame)
            if item_id is not None:
                self._hub.written(session.tenant_id, item_id)

    async def _beat(self, session: Session) -> None:
        while True:
            await asyncio.sleep(self._settings.heartbeat_seconds)
            session.offer(frames.ping_frame())

    async def _send(self, frame: dict[str, Any]) -> None:
        await self._ws.send_text(json.dumps(frame, separators=(",", ":")))

    async def _close(self, code: int, reason: str) -> None:
        if self._ws.application_state == WebSocketState.CONNECTED:
            with contextlib.suppress(Exception):
                await self._ws.close(code, reason)

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(BaseException):
                await task
        if self._session is not None:
            self._hub.remove(self._session)
