"""What a provider said about one delivery, as a value.

Every provider module classifies its responses into exactly one of these; `services.delivering`
decides what to do with them (mark sent, retry later, retire the endpoint, fail). Provider results
are never exceptions.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Delivered:
    """The provider accepted the message; `reference` is its id for it (apns-id, FCM name, ...)."""

    reference: str | None = None


@dataclass(frozen=True, slots=True)
class RetryLater:
    """A transient failure: try again, not before `after_seconds` when the provider said so."""

    reason: str
    after_seconds: float | None = None


@dataclass(frozen=True, slots=True)
class TokenInvalid:
    """The endpoint is gone for good (APNs 410, FCM UNREGISTERED, Web Push 404/410): retire it."""

    reason: str


@dataclass(frozen=True, slots=True)
class Rejected:
    """The provider refused this message for good (bad payload, too large): fail, do not retry."""

    reason: str


@dataclass(frozen=True, slots=True)
class AuthFailed:
    """Our credential was refused: pause sends on it and alert; the message itself is fine.

    `credential_id` names the credential the provider refused (the transport knows which one it
    used); without it there is nothing to pause and the delivery is only retried.
    """

    reason: str
    credential_id: str | None = None


Outcome = Delivered | RetryLater | TokenInvalid | Rejected | AuthFailed
