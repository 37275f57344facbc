"""Tenant templates as values: what a template is for, its key, and its sources.

They live here, below services and adapters, because both speak them: the template store hands
back `TemplateKey` → `EmailTemplate` maps that `services.templates.choose_template` searches.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum


class Subject(StrEnum):
    """What a template is for: one event type, or a whole category of them."""

    EVENT_TYPE = "event_type"
    CATEGORY = "category"


@dataclass(frozen=True, slots=True)
class TemplateKey:
    """A template's key within its tenant (the store scopes templates by tenant, like every
    other row, so the tenant is not part of the key).

    Attributes:
        subject: whether `name` is an event type or a category.
        name: the event type (``order.shipped``) or category (``billing``).
        channel: ``email``, ``push``, ``inbox``, ...
        locale: a BCP 47 tag as `normalize_locale` writes it (``pt-BR``, ``de``).
    """

    subject: Subject
    name: str
    channel: str
    locale: str


@dataclass(frozen=True, slots=True)
class EmailTemplate:
    """An email template's sources: the subject, the plain text, and the optional HTML.

    Push and inbox templates use the same shape: `subject` is their title, `text` their body,
    and `html` is None.
    """

    subject: str
    text: str
    html: str | None = None


@dataclass(frozen=True, slots=True)
class TemplateEntry:
    """One channel and locale of a template set, as stored.

    Attributes:
        channel: ``email``, ``push`` or ``inbox``.
        locale: normalised BCP 47.
        title: the email subject, or the push / inbox title.
        text: the plain-text body.
        html: the email's HTML body; None for other channels or a text-only email.
    """

    channel: str
    locale: str
    title: str
    text: str
    html: str | None = None


@dataclass(frozen=True, slots=True)
class TemplateSet:
    """Every channel and locale a tenant wrote for one event type or category.

    Attributes:
        subject: whether `name` is an event type or a category.
        name: the event type or category.
        entries: by channel, then locale.
        created_at: when the set was first saved.
        updated_at: when it was last replaced.
    """

    subject: Subject
    name: str
    entries: tuple[TemplateEntry, ...]
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class TemplateSetInfo:
    """A template set as listed: which channels and locales it has, without its sources.

    Attributes:
        subject: whether `name` is an event type or a category.
        name: the event type or category.
        channels: channel → its locales, both sorted.
        created_at: when the set was first saved.
        updated_at: when it was last replaced.
    """

    subject: Subject
    name: str
    channels: dict[str, tuple[str, ...]]
    created_at: datetime
    updated_at: datetime
