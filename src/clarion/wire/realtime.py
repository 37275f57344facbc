"""The gateway's frame protocol, sans I/O: parse what a client sends, build what the server sends.

Frames are JSON text objects with a ``type``. Client → server:

- ``{"type": "auth", "token": "<user token>", "since": "<cursor>"}``: the first frame, unless the
  token came in the ``Sec-WebSocket-Protocol`` header as ``clarion.token.<token>``; ``since`` is
  optional and asks for what was routed after that cursor.
- ``{"type": "resume", "since": "<cursor>"}``: ask again for what was routed after the cursor.
- ``{"type": "received" | "read", "id": <item id>}``: a receipt for one inbox item.
- ``{"type": "pong"}``: the answer to a server ``ping``.

Server → client: ``ready``, ``notification``, ``status`` (an item changed elsewhere), ``ack``,
``ping`` and ``error``. See docs/api.md for every field.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from clarion.domain import errors
from clarion.domain.notifications import InboxItem
from clarion.domain.statuses import Status

SUBPROTOCOL = "clarion.v1"
"""The subprotocol the gateway speaks; a client offering it may also offer its token beside it."""

TOKEN_SUBPROTOCOL_PREFIX = "clarion.token."  # noqa: S105 - a prefix, not a secret
"""A client may offer ``clarion.token.<token>`` as a subprotocol instead of an auth frame."""


@dataclass(frozen=True, slots=True)
class Auth:
    """The client's credentials: a user token, and where it left off."""

    token: str | None
    since: str | None


@dataclass(frozen=True, slots=True)
class Resume:
    """Send me everything routed after `since`."""

    since: str | None


@dataclass(frozen=True, slots=True)
class Receipt:
    """The client reports an item `received` or `read`."""

    item_id: int
    status: Status


@dataclass(frozen=True, slots=True)
class Pong:
    """The client is alive."""


ClientFrame = Auth | Resume | Receipt | Pong


def parse_frame(text: str) -> ClientFrame:
    """The frame `text` carries.

    Raises:
        errors.InvalidFrame: not JSON, not an object, an unknown type, or a field of the wrong type.
    """
    try:
        raw = json.loads(text)
    except (ValueError, RecursionError) as exc:
        # RecursionError: a few KB of nested brackets exhaust the parser's stack.
        raise errors.InvalidFrame("frame is not valid JSON") from exc
    if not isinstance(raw, dict):
        raise errors.InvalidFrame("frame must be a JSON object")
    kind = raw.get("type")
    if kind == "auth":
        _only(raw, {"type", "token", "since"})
        return Auth(token=_optional_str(raw, "token"), since=_optional_str(raw, "since"))
    if kind == "resume":
        _only(raw, {"type", "since"})
        return Resume(since=_optional_str(raw, "since"))
    if kind in ("received", "read"):
        _only(raw, {"type", "id"})
        item_id = raw.get("id")
        # ASCII digits only ("²" is a digit to str.isdigit but not to int), and few enough
        # of them that int() neither refuses nor spends time on them.
        if (
            isinstance(item_id, str)
            and item_id.isascii()
            and item_id.isdigit()
            and len(item_id) <= 19
        ):
            item_id = int(item_id)
        if not isinstance(item_id, int) or isinstance(item_id, bool) or item_id <= 0:
            raise errors.InvalidFrame("'id' must be a notification id")
        return Receipt(item_id=item_id, status=Status(kind))
    if kind == "pong":
        _only(raw, {"type"})
        return Pong()
    raise errors.InvalidFrame(f"unknown frame type {kind!r}")


def token_from_subprotocols(offered: list[str]) -> str | None:
    """The user token carried in the offered subprotocols, if any."""
    for name in offered:
        if name.startswith(TOKEN_SUBPROTOCOL_PREFIX):
            return name[len(TOKEN_SUBPROTOCOL_PREFIX) :] or None
    return None


def ready_frame(
    *, user: str, heartbeat_seconds: float, idle_timeout_seconds: float
) -> dict[str, Any]:
    """The answer to a successful auth."""
    return {
        "type": "ready",
        "user": user,
        "heartbeat": heartbeat_seconds,
        "idle_timeout": idle_timeout_seconds,
    }


def notification_frame(item: InboxItem) -> dict[str, Any]:
    """A notification for the client, with the cursor to resume after it."""
    return {
        "type": "notification",
        "id": item.id,
        "notification_id": item.notification_id,
        "event_id": item.event_id,
        "event_type": item.type,
        "title": item.title,
        "body": item.body,
        "data": item.data,
        "category": item.category,
        "group": item.group,
        "status": str(item.status),
        "created_at": item.created_at.isoformat().replace("+00:00", "Z"),
        "cursor": item.cursor,
    }


def status_frame(item_id: int, status: Status) -> dict[str, Any]:
    """An item of this user changed status elsewhere (another session, the HTTP API)."""
    return {"type": "status", "id": item_id, "status": str(status)}


def statuses_frame(item_ids: list[int], status: Status) -> dict[str, Any]:
    """Many items of this user changed status at once (a bulk read elsewhere)."""
    return {"type": "statuses", "ids": item_ids, "status": str(status)}


def ack_frame(item_id: int, status: Status) -> dict[str, Any]:
    """The answer to a receipt: the item's status after it (which may be further along)."""
    return {"type": "ack", "id": item_id, "status": str(status)}


def ping_frame() -> dict[str, Any]:
    """A heartbeat; the client answers with a pong."""
    return {"type": "ping"}


def error_frame(error: errors.ClarionError) -> dict[str, Any]:
    """An error the client should see; the connection stays open unless a close follows."""
    return {"type": "error", "error": {"code": error.code, "message": error.message}}


def _only(raw: dict[str, Any], allowed: set[str]) -> None:
    unknown = sorted(set(raw) - allowed)
    if unknown:
        raise errors.InvalidFrame(f"unknown field(s): {', '.join(unknown)}")


def _optional_str(raw: dict[str, Any], name: str) -> str | None:
    value = raw.get(name)
    if value is None or isinstance(value, str):
        return value
    raise errors.InvalidFrame(f"'{name}' must be a string")
