"""Clarion's errors: one root, each class a stable code, an HTTP status and a default message.

The tree::

    ClarionError
    ├── InvalidRequest (400/422)   the caller sent something we will not take
    │   ├── MalformedJson, BodyTooLarge, UnknownGroup, UnknownCommunity, TooManyRecipients,
    │   │   NoRecipients, IdempotencyKeyReused, InvalidIdentifier, InvalidFrame, TemplateFailed,
    │   │   InvalidRule
    ├── Unauthorized (401)         no credential, or one we do not accept
    │   ├── InvalidApiKey, InvalidUserToken, InvalidSignature, SignatureRequired
    ├── NotFound (404)             missing, or not yours (the two are never told apart)
    │   ├── UnknownUnsubscribeLink, UnknownEventSource, UnknownTopic
    ├── Conflict (409)             the request clashes with the state it found
    ├── RateLimited (429)          the tenant is over its rate limit; retry after a while
    └── Unavailable (503)          not now: the database is unreachable; retry after a while
        └── Overloaded             accepted work waits too long to be handed on

The docstring of each class is its default message. The API's catalogue (entrypoints/api/errors.py)
is built from these classes, so a code means the same thing everywhere it appears.
"""

from __future__ import annotations

from typing import Any, ClassVar


class ClarionError(Exception):
    """Something went wrong inside Clarion."""

    code: ClassVar[str] = "internal"
    status: ClassVar[int] = 500

    def __init__(self, message: str | None = None, **details: Any) -> None:
        self.message = message or (self.__doc__ or self.code).strip().splitlines()[0]
        self.details = details
        super().__init__(self.message)


class InvalidRequest(ClarionError):
    """The request is not valid."""

    code = "invalid_request"
    status = 422


class MalformedJson(InvalidRequest):
    """The request body is not valid JSON."""

    code = "malformed_json"
    status = 400


class BodyTooLarge(InvalidRequest):
    """The request body is larger than this server accepts."""

    code = "body_too_large"
    status = 413


class UnknownGroup(InvalidRequest):
    """The event names a group that does not exist."""

    code = "unknown_group"


class UnknownCommunity(InvalidRequest):
    """The event names a community that does not exist."""

    code = "unknown_community"


class NoRecipients(InvalidRequest):
    """The event names no recipient."""

    code = "no_recipients"


class TooManyRecipients(InvalidRequest):
    """The event names more recipients than one request may carry."""

    code = "too_many_recipients"


class UnknownChannel(InvalidRequest):
    """The event asks for a channel this server has no transport for."""

    code = "unknown_channel"


class TemplateFailed(InvalidRequest):
    """The template cannot be saved or rendered as sent.

    Invalid syntax, an undefined value, something the sandbox refuses, or a limit crossed.
    """

    code = "template_error"


class InvalidRule(InvalidRequest):
    """The routing rule or rules file is not valid.

    The message starts with the field at fault (``rules[2].condition: ...``), and so does
    ``details.field``; an expression's error also carries ``details.column``.
    """

    code = "invalid_rule"


class IdempotencyKeyReused(InvalidRequest):
    """This Idempotency-Key was used before with a different request body."""

    code = "idempotency_key_reused"


class InvalidIdentifier(InvalidRequest):
    """An identifier in the path is empty, too long or holds control characters."""

    code = "invalid_identifier"


class InvalidFrame(InvalidRequest):
    """The WebSocket frame is not one the gateway understands."""

    code = "invalid_frame"
    status = 400


class Unauthorized(ClarionError):
    """Authentication is required."""

    code = "unauthorized"
    status = 401


class InvalidApiKey(Unauthorized):
    """The API key is unknown, malformed or revoked."""

    code = "invalid_api_key"


class InvalidUserToken(Unauthorized):
    """The user token is invalid, expired or not meant for this server."""

    code = "invalid_user_token"


class InvalidSignature(Unauthorized):
    """The request's signature is missing, stale or does not verify."""

    code = "invalid_signature"


class SignatureRequired(Unauthorized):
    """Unsigned events are refused: register the provider's signing key first."""

    code = "signature_required"


class NotFound(ClarionError):
    """No such resource."""

    code = "not_found"
    status = 404


class UnknownUnsubscribeLink(NotFound):
    """This unsubscribe link is not valid."""

    code = "unknown_unsubscribe_link"


class UnknownEventSource(NotFound):
    """No mail provider of this tenant sends events here."""

    code = "unknown_event_source"


class UnknownTopic(NotFound):
    """The notification comes from an SNS topic this tenant did not register."""

    code = "unknown_topic"


class Conflict(ClarionError):
    """The request conflicts with the current state."""

    code = "conflict"
    status = 409


class GroupKindMismatch(Conflict):
    """A group cannot change kind, and only a group can join, and only a community."""

    code = "group_kind_mismatch"


class AlreadySent(Conflict):
    """The event was already routed: it can no longer be cancelled."""

    code = "already_sent"


class Unavailable(ClarionError):
    """The service cannot take this request now; try again later."""

    code = "unavailable"
    status = 503


class Overloaded(Unavailable):
    """The service has more accepted work waiting than it takes on; try again later."""

    code = "overloaded"


class RateLimited(ClarionError):
    """This tenant sends faster than its rate limit allows; try again later."""

    code = "rate_limited"
    status = 429

    def __init__(
        self, message: str | None = None, *, retry_after: float = 1.0, **details: Any
    ) -> None:
        super().__init__(message, **details)
        self.retry_after = retry_after  # seconds until the request would be let through
