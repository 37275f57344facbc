"""Tenant templates as a use case: saved a set at a time (every channel and locale of one event
type or category), checked when saved, and previewed with sample data before any real
notification uses them.

A template's key is its event type (``order.shipped``) or ``category:<name>`` for a category's
template (docs/api.md, "Templates"). Rendering goes through `templates.Renderer`, whose sandbox
and limits make both the tenant's sources and the event data safe to render.

Every render sees the same variables, the contract the senders keep too (`variables`)::

    event:  id, type, title, body, data, category, group
    user:   id, locale, attributes
    unsubscribe_url
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from clarion.domain import errors, identifiers
from clarion.domain.templates import (
    EmailTemplate,
    Subject,
    TemplateEntry,
    TemplateKey,
    TemplateSet,
    TemplateSetInfo,
)
from clarion.services.ports import Clock, TemplateStore
from clarion.services.templates import Part, Renderer, choose_template, normalize_locale

EMAIL: Final = "email"
PUSH: Final = "push"
INBOX: Final = "inbox"
CHANNELS: Final = (EMAIL, PUSH, INBOX)
"""What a template can be written for: an email (subject, text, optional HTML), a push
notification and an inbox item (title and body)."""

CATEGORY_PREFIX: Final = "category:"
"""Marks a key as a category's (``category:billing``); any other key is an event type."""

MAX_LOCALES: Final = 100
"""Locales per channel of one set: more than any product ships, and it bounds one PUT's work
(each part is bounded by `templates.Limits.template_chars`)."""

MAX_LOCALE_LENGTH: Final = 35
"""The locale column's width (BCP 47 tags in practice stay far below)."""

PLACEHOLDER_UNSUBSCRIBE_URL: Final = "https://example.invalid/unsubscribe"
"""What a preview links to: ``.invalid`` is reserved (RFC 2606) and never resolves."""


@dataclass(frozen=True, slots=True)
class SavedTemplates:
    """A template set as saved, and whether it was new."""

    templates: TemplateSet
    created: bool


@dataclass(frozen=True, slots=True)
class Preview:
    """A template rendered with sample data.

    Attributes:
        key: the template used (its subject and name tell whether the category's was chosen).
        title: the email subject, or the push / inbox title.
        text: the plain-text body.
        html: the email's HTML body, when it has one.
    """

    key: TemplateKey
    title: str
    text: str
    html: str | None


def parse_key(key: str) -> tuple[Subject, str]:
    """The subject and name a template key stands for.

    Raises:
        errors.InvalidIdentifier: the name is not a valid key.
    """
    subject, name = Subject.EVENT_TYPE, key
    if key.startswith(CATEGORY_PREFIX):
        subject, name = Subject.CATEGORY, key[len(CATEGORY_PREFIX) :]
    if not identifiers.is_valid_key(name):
        raise errors.InvalidIdentifier(
            "a template key is an event type or 'category:<name>', each 1-255 printable "
            "characters without surrounding blanks"
        )
    return subject, name


def key_of(subject: Subject, name: str) -> str:
    """The template key of a subject and name (the inverse of `parse_key`)."""
    return CATEGORY_PREFIX + name if subject is Subject.CATEGORY else name


def variables(
    *,
    event: Mapping[str, Any],
    user: Mapping[str, Any],
    unsubscribe_url: str,
) -> dict[str, Any]:
    """What a template sees: ``event`` (id, type, title, body, data, category, group), ``user``
    (id, locale, attributes) and ``unsubscribe_url``. Other fields of `event` and `user` are
    not passed on."""
    return {
        "event": {name: event.get(name) for name in _EVENT_FIELDS},
        "user": {name: user.get(name) for name in _USER_FIELDS},
        "unsubscribe_url": unsubscribe_url,
    }


_EVENT_FIELDS: Final = ("id", "type", "title", "body", "data", "category", "group")
_USER_FIELDS: Final = ("id", "locale", "attributes")


class Templates:
    """Saves, describes, deletes and previews the tenants' templates."""

    def __init__(self, store: TemplateStore, clock: Clock, renderer: Renderer | None = None):
        self._store = store
        self._clock = clock
        self._renderer = renderer or Renderer()

    async def put(
        self, tenant_id: str, key: str, entries: Sequence[TemplateEntry]
    ) -> SavedTemplates:
        """Replace every template of `key` with `entries` (a PUT of the whole set); locales are
        normalised (``pt_br`` -> ``pt-BR``).

        Raises:
            errors.InvalidIdentifier: `key` is not a valid template key.
            errors.InvalidRequest: no entry; an unknown channel; an unreadable or repeated
                locale; too many locales; HTML for a channel other than email.
            errors.TemplateFailed: a part does not compile or is too long (the message and
                details name the channel, locale, part and line).
        """
        subject, name = parse_key(key)
        checked = self._normalised(entries)
        await asyncio.to_thread(self._check_all, checked)
        saved, created = await self._store.put_template_set(
            tenant_id, subject, name, checked, self._clock.now()
        )
        return SavedTemplates(saved, created)

    async def get(self, tenant_id: str, key: str) -> TemplateSet:
        """The set saved for `key`.

        Raises:
            errors.NotFound: the tenant has no template of that key.
        """
        subject, name = parse_key(key)
        found = await self._store.get_template_set(tenant_id, subject, name)
        if found is None:
            raise errors.NotFound("no such template")
        return found

    async def list_templates(self, tenant_id: str) -> list[TemplateSetInfo]:
        """The tenant's template sets, with their channels and locales."""
        return await self._store.list_template_sets(tenant_id)

    async def delete(self, tenant_id: str, key: str) -> None:
        """Forget every template of `key`.

        Raises:
            errors.NotFound: the tenant has no template of that key.
        """
        subject, name = parse_key(key)
        if not await self._store.delete_template_set(tenant_id, subject, name):
            raise errors.NotFound("no such template")

    async def preview(
        self,
        tenant_id: str,
        key: str,
        channel: str,
        locale: str | None,
        sample: Mapping[str, Any],
    ) -> Preview:
        """Render the saved template a recipient reading `locale` would get, with `sample`
        (the `variables` contract; what it leaves out is filled with placeholders).

        The template is chosen as for a real notification (`templates.choose_template`, with
        the tenant's default locale). For an event type's key, a category given in the
        sample's ``event.category`` is searched too, as a send would; a category's key
        searches that category's templates alone.

        Raises:
            errors.InvalidIdentifier: `key` is not a valid template key.
            errors.InvalidRequest: an unknown channel or unreadable locale.
            errors.NotFound: no template of `key` and `channel` fits the locale or the
                tenant's default.
            errors.TemplateFailed: rendering failed (an undefined value, something the
                sandbox refuses, a limit).
        """
        subject, name = parse_key(key)
        _check_channel(channel, "body.channel")
        wanted = _locale(locale, "body.locale") if locale is not None else None
        given = sample.get("event")
        event: Mapping[str, Any] = given if isinstance(given, Mapping) else {}
        if subject is Subject.EVENT_TYPE:
            event_type, category = name, event.get("category")
            candidates = await self._store.templates_for(
                tenant_id,
                channel,
                event_type=name,
                category=category if isinstance(category, str) else None,
            )
        else:
            event_type, category = str(event.get("type") or "example.event"), name
            candidates = {
                k: t
                for k, t in (
                    await self._store.templates_for(
                        tenant_id, channel, event_type=event_type, category=name
                    )
                ).items()
                if k.subject is Subject.CATEGORY
            }
        chosen = choose_template(
            candidates,
            event_type=event_type,
            category=category if isinstance(category, str) else None,
            channel=channel,
            user_locale=wanted,
            tenant_default_locale=await self._store.default_locale(tenant_id),
        )
        if chosen is None:
            raise errors.NotFound(f"no {channel} template of this key for this locale")
        found, template = chosen
        placeholders = _placeholders(event_type, category if isinstance(category, str) else None)
        return await self._render(
            found, template, _filled(sample, placeholders, wanted or found.locale)
        )

    async def preview_source(
        self,
        channel: str,
        template: EmailTemplate,
        sample: Mapping[str, Any],
        *,
        locale: str | None = None,
        key: str | None = None,
    ) -> Preview:
        """Render a template given inline (not saved) with `sample`, as `preview` would.

        Raises:
            errors.InvalidIdentifier: `key` is given and is not a valid template key.
            errors.InvalidRequest: an unknown channel or unreadable locale; HTML outside email.
            errors.TemplateFailed: the template does not compile or render.
        """
        _check_channel(channel, "body.channel")
        subject, name = parse_key(key) if key is not None else (Subject.EVENT_TYPE, "")
        tag = _locale(locale, "body.locale") if locale is not None else "en"
        if template.html is not None and channel != EMAIL:
            raise _invalid("body.template.html", "only email templates have an HTML part")
        where = TemplateKey(subject, name, channel, tag)
        placeholders = _placeholders(
            name if subject is Subject.EVENT_TYPE and name else None,
            name if subject is Subject.CATEGORY else None,
        )
        await asyncio.to_thread(
            self._check, TemplateEntry(channel, tag, template.subject, template.text, template.html)
        )
        return await self._render(where, template, _filled(sample, placeholders, tag))

    # -----------------------------------------------------------------------------------------

    def _normalised(self, entries: Sequence[TemplateEntry]) -> list[TemplateEntry]:
        if not entries:
            raise _invalid("body.channels", "write at least one template")
        out: list[TemplateEntry] = []
        seen: set[tuple[str, str]] = set()
        per_channel: dict[str, int] = {}
        for entry in entries:
            _check_channel(entry.channel, "body.channels")
            where = f"body.channels.{entry.channel}.{entry.locale}"
            locale = _locale(entry.locale, where)
            if (entry.channel, locale) in seen:
                raise _invalid(where, f"the locale {locale} is given twice")
            seen.add((entry.channel, locale))
            per_channel[entry.channel] = per_channel.get(entry.channel, 0) + 1
            if per_channel[entry.channel] > MAX_LOCALES:
                raise _invalid(
                    f"body.channels.{entry.channel}", f"at most {MAX_LOCALES} locales per channel"
                )
            if entry.html is not None and entry.channel != EMAIL:
                raise _invalid(where, "only email templates have an HTML part")
            out.append(TemplateEntry(entry.channel, locale, entry.title, entry.text, entry.html))
        return out

    def _check_all(self, entries: Sequence[TemplateEntry]) -> None:
        for entry in entries:
            self._check(entry)

    def _check(self, entry: TemplateEntry) -> None:
        names = _PART_NAMES[entry.channel == EMAIL]
        parts: list[tuple[str, str, Part]] = [
            (names[0], entry.title, Part.LINE),
            (names[1], entry.text, Part.TEXT),
        ]
        if entry.html is not None:
            parts.append(("html", entry.html, Part.HTML))
        for name, source, part in parts:
            if part is Part.LINE and not source.strip():
                raise errors.TemplateFailed(
                    f"{entry.channel}.{entry.locale}.{name}: must not be empty",
                    channel=entry.channel,
                    locale=entry.locale,
                    part=name,
                )
            try:
                self._renderer.check(source, part)
            except errors.InvalidRequest as exc:
                raise _failed(exc, entry.channel, entry.locale, name) from None

    async def _render(
        self, key: TemplateKey, template: EmailTemplate, filled: Mapping[str, Any]
    ) -> Preview:
        return await asyncio.to_thread(self._render_now, key, template, filled)

    def _render_now(
        self, key: TemplateKey, template: EmailTemplate, filled: Mapping[str, Any]
    ) -> Preview:
        names = _PART_NAMES[key.channel == EMAIL]
        parts: list[tuple[str, str | None, Part]] = [
            (names[0], template.subject, Part.LINE),
            (names[1], template.text, Part.TEXT),
            ("html", template.html, Part.HTML),
        ]
        out: list[str | None] = []
        for name, source, part in parts:
            if source is None:
                out.append(None)
                continue
            try:
                out.append(self._renderer.render(source, part, filled))
            except errors.InvalidRequest as exc:
                raise _failed(exc, key.channel, key.locale, name) from None
        title, text, html = out
        if not title:
            raise errors.TemplateFailed(
                f"{key.channel}.{key.locale}.{names[0]}: renders empty",
                channel=key.channel,
                locale=key.locale,
                part=names[0],
            )
        return Preview(key, title, text or "", html)


_PART_NAMES: Final = {True: ("subject", "text"), False: ("title", "body")}
"""What the API calls a template's parts: an email's subject and text, a push or inbox item's
title and body."""


def _placeholders(event_type: str | None, category: str | None) -> dict[str, Any]:
    """A made-up event of `event_type` (when known) in `category`."""
    return {
        "id": "00000000-0000-0000-0000-000000000000",
        "type": event_type or "example.event",
        "title": "Example title",
        "body": "Example body",
        "data": {},
        "category": category,
        "group": None,
    }


def _filled(sample: Mapping[str, Any], event: Mapping[str, Any], locale: str) -> dict[str, Any]:
    """`sample` in the `variables` shape, what it leaves out taken from the placeholder
    `event` and a made-up user reading `locale`."""
    filled = dict(event)
    user: dict[str, Any] = {"id": "example-user", "locale": locale, "attributes": {}}
    given_event = sample.get("event")
    if isinstance(given_event, Mapping):
        filled.update(given_event)
    given_user = sample.get("user")
    if isinstance(given_user, Mapping):
        user.update(given_user)
    url = sample.get("unsubscribe_url")
    return variables(
        event=filled,
        user=user,
        unsubscribe_url=url if isinstance(url, str) else PLACEHOLDER_UNSUBSCRIBE_URL,
    )


def _failed(
    exc: errors.InvalidRequest, channel: str, locale: str, part: str
) -> errors.TemplateFailed:
    reason = exc.message
    prefix = f"template {exc.details.get('part')}: "
    if reason.startswith(prefix):
        reason = reason[len(prefix) :]
    details: dict[str, Any] = {"channel": channel, "locale": locale, "part": part}
    if exc.details.get("line") is not None:
        details["line"] = exc.details["line"]
    return errors.TemplateFailed(f"{channel}.{locale}.{part}: {reason}", **details)


def _check_channel(channel: str, field: str) -> None:
    if channel not in CHANNELS:
        raise _invalid(field, f"templates are written for {', '.join(CHANNELS)}")


def _locale(tag: str, field: str) -> str:
    normal = normalize_locale(tag)
    # ASCII only: `normalize_locale` reads region digits with `\d`, which takes any script's.
    if normal is None or not normal.isascii() or len(normal) > MAX_LOCALE_LENGTH:
        raise _invalid(field, "not a language tag such as 'en', 'de' or 'pt-BR'")
    return normal


def _invalid(field: str, problem: str) -> errors.InvalidRequest:
    return errors.InvalidRequest(
        f"{field}: {problem}", fields=[{"field": field, "problem": problem}]
    )
