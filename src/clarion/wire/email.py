"""Email, sans I/O: the MIME message, what an SMTP reply means, and the SES v2 and SendGrid v3
requests and answers.

Everything here follows the protocols sheet §5: RFC 5321 (SMTP replies), RFC 3463 (enhanced
status codes), RFC 5322 and RFC 2047 (the message and its headers), RFC 2369 and RFC 8058
(``List-Unsubscribe`` and one-click ``List-Unsubscribe-Post``), Amazon SES API v2 ``SendEmail``
[BOTO] with Signature Version 4 [AWS-SIG], and SendGrid's v3 Mail Send [SG][SG-ERR][SG-RL]. The
adapters (``adapters/providers/smtp``, ``ses``, ``sendgrid``) own the sockets, the clock and the
credentials; they hand this module values and get values back.

One delivery is one message to one recipient: each carries its own signed unsubscribe link, so
messages are never batched into one SMTP transaction or one SendGrid personalization list.

**Addresses.** Domains may be internationalised: they are turned into A-labels (IDNA 2008, the
`idna` package) everywhere. A non-ASCII *local part* needs SMTPUTF8 (RFC 6531) end to end, which
SES does not offer and Python's `email` package cannot write; such addresses are refused with
`errors.InvalidRequest` rather than sent half-encoded.

**Bounces.** A definitive "this mailbox does not exist" from the recipient's server is reported
as `outcomes.TokenInvalid` with a reason starting ``bounced:`` (`BOUNCE_PREFIX`). `TokenInvalid`
already means "this endpoint is gone for good, retire it", which is exactly what a hard bounce
says about an email address; reusing it keeps the delivery service's one retirement path (no new
outcome type for every caller to learn), and the prefix lets the registry and the email channel
tell a bounce apart and *suppress* the address (status ``bounced``) rather than delete it, so
that an operator can lift the suppression.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
import secrets
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email import policy as email_policy
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime
from enum import StrEnum
from typing import Any, Final
from urllib.parse import quote, urlsplit

import idna

from clarion.domain import errors, outcomes

BOUNCE_PREFIX: Final = "bounced: "
"""How a `TokenInvalid` reason for a hard bounce starts (see the module docstring)."""
MAX_REASON_CHARS: Final = 200
MAX_ADDRESS_OCTETS: Final = 254
"""RFC 5321 §4.5.3.1.3 allows a 256-octet path including the angle brackets."""
MAX_LOCAL_PART_OCTETS: Final = 64
"""RFC 5321 §4.5.3.1.1."""
MAX_SUBJECT_CHARS: Final = 998
"""RFC 5322 §2.1.1's line limit; a subject this long is a template bug, not a design."""
MAX_UNSUBSCRIBE_URI_CHARS: Final = 900
"""``List-Unsubscribe`` is written one URI per line; a line holds at most 998 octets (RFC 5322
§2.1.1), less the header name and brackets."""
SES_MAX_MESSAGE_BYTES: Final = 40 * 1024 * 1024
"""SES takes at most 40 MB after MIME encoding [SES-Q]."""
SENDGRID_MAX_BODY_BYTES: Final = 30 * 1024 * 1024
"""SendGrid's total message size limit, 30 MB [SG]."""

_ATEXT = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+")
_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")
_ENHANCED = re.compile(r"^([245])\.(\d{1,3})\.(\d{1,3})(?=\s|$)")
_TAG_TEXT = re.compile(r"[A-Za-z0-9_-]{1,256}")
_REGION = re.compile(r"[a-z]{2}(-[a-z0-9]+)+-\d+")
_TOKEN_CHARS = re.compile(r"[\x21-\x7e]+")


# --- addresses ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Mailbox:
    """An address with an optional display name (RFC 5322 §3.4).

    Attributes:
        address: ``local@domain``, as `normalize_address` returns it (A-label domain).
        name: the display name, any Unicode text without line breaks; written with RFC 2047
            encoded words when it is not ASCII.
    """

    address: str
    name: str | None = None

    @classmethod
    def of(cls, address: str, name: str | None = None) -> Mailbox:
        """A mailbox whose address is normalised and whose name is checked.

        Raises:
            errors.InvalidRequest: see `normalize_address`; a name with a control character.
        """
        if name is not None:
            _check_header_text(name, "display name")
        return cls(normalize_address(address), name or None)


def normalize_address(address: str) -> str:
    """`address` as Clarion sends it: ``local@domain``, the domain lower-cased and in A-labels.

    The local part must be an ASCII dot-atom (RFC 5322 §3.4.1): quoted local parts, comments and
    non-ASCII local parts (which would need SMTPUTF8, RFC 6531) are refused.

    Raises:
        errors.InvalidRequest: saying which rule the address breaks.
    """
    if not isinstance(address, str) or not address:
        raise errors.InvalidRequest("an email address must not be empty")
    if any(ch in address for ch in "\r\n\0") or any(ch.isspace() for ch in address):
        raise errors.InvalidRequest("an email address must not hold blanks or line breaks")
    local, at, domain = address.rpartition("@")
    if not at or not local or not domain:
        raise errors.InvalidRequest("an email address is local-part@domain")
    if not local.isascii():
        raise errors.InvalidRequest(
            "addresses with a non-ASCII local part need SMTPUTF8 (RFC 6531), "
            "which Clarion does not send"
        )
    if len(local) > MAX_LOCAL_PART_OCTETS:
        raise errors.InvalidRequest(
            f"the local part of an email address is at most {MAX_LOCAL_PART_OCTETS} octets"
        )
    if not all(_ATEXT.fullmatch(atom) for atom in local.split(".")):
        raise errors.InvalidRequest(
            "the local part of an email address must be a dot-atom (no quotes, no comments)"
        )
    ascii_domain = _ascii_domain(domain)
    result = f"{local}@{ascii_domain}"
    if len(result) > MAX_ADDRESS_OCTETS:
        raise errors.InvalidRequest(f"an email address is at most {MAX_ADDRESS_OCTETS} octets")
    return result


def _ascii_domain(domain: str) -> str:
    domain = domain.rstrip(".")
    if domain.startswith("[") or not domain:
        raise errors.InvalidRequest("an email domain must be a host name (no address literals)")
    if not domain.isascii():
        try:
            domain = idna.encode(domain, uts46=True).decode("ascii")
        except idna.IDNAError as exc:
            raise errors.InvalidRequest(f"the email domain is not a valid IDN: {exc}") from None
    domain = domain.lower()
    labels = domain.split(".")
    if len(labels) < 2 or not all(_LABEL.fullmatch(label) for label in labels):
        raise errors.InvalidRequest("an email domain is two or more DNS labels")
    return domain


# --- the message [RFC 5322, RFC 2045-2047, RFC 2369, RFC 8058] ---------------------------------


@dataclass(frozen=True, slots=True)
class Unsubscribe:
    """The ``List-Unsubscribe`` targets of a message (RFC 2369 §3.2, RFC 8058 §3.1).

    Attributes:
        url: the one-click ``https`` URL (RFC 8058 requires https); a POST with the body
            ``List-Unsubscribe=One-Click`` to it unsubscribes.
        mailto: a ``mailto:`` URI for clients that only mail; optional.
    """

    url: str
    mailto: str | None = None


@dataclass(frozen=True, slots=True)
class Email:
    """One message to one recipient.

    Attributes:
        sender: ``From``.
        to: ``To``: exactly one recipient (see the module docstring).
        subject: one line of text (any Unicode; encoded words as needed).
        text: the plain-text body; always present (RFC 8058 readers, accessibility, spam
            scoring).
        html: the HTML body, sent as the second alternative of ``multipart/alternative``.
        message_id: the unique left part of ``Message-ID`` (the delivery id): the header
            reads ``<message_id@sender's domain>``.
        date: ``Date``; timezone-aware.
        unsubscribe: the ``List-Unsubscribe`` targets; None only for transactional mail
            that is not subscribable (a password reset, say).
        reply_to: ``Reply-To``.
        headers: extra ``X-`` headers (``X-Clarion-Delivery``, ...), ASCII only.
    """

    sender: Mailbox
    to: Mailbox
    subject: str
    text: str
    date: datetime
    message_id: str
    html: str | None = None
    unsubscribe: Unsubscribe | None = None
    reply_to: Mailbox | None = None
    headers: Mapping[str, str] = field(default_factory=dict)


_VERBATIM_HEADERS: Final = frozenset({"list-unsubscribe", "list-unsubscribe-post"})


class _MailPolicy(email_policy.EmailPolicy):
    """`email.policy.SMTP`, except that ``List-Unsubscribe`` headers are written as given.

    The stock folder turns a long URI (a signed token is long) into RFC 2047 encoded words,
    which no mail client reads back as a URI. These values are checked to be ASCII with no
    line breaks, and each URI is put on its own line, so they never need more folding.
    """

    def fold(self, name: str, value: Any) -> str:
        if name.lower() in _VERBATIM_HEADERS:
            return _fold_verbatim(name, str(value), self.linesep)
        folded: str = super().fold(name, value)
        return folded

    def fold_binary(self, name: str, value: Any) -> bytes:
        if name.lower() in _VERBATIM_HEADERS:
            return _fold_verbatim(name, str(value), self.linesep).encode("ascii")
        folded: bytes = super().fold_binary(name, value)
        return folded


def _fold_verbatim(name: str, value: str, linesep: str) -> str:
    return f"{name}: " + f",{linesep} ".join(part.strip() for part in value.split(",")) + linesep


MAIL_POLICY: Final = _MailPolicy(linesep="\r\n", cte_type="7bit")
"""Lines end in CRLF (RFC 5322 §2.1); bodies are 7-bit (quoted-printable or base64 when they
are not ASCII), so no 8BITMIME is needed from any relay."""


def build_message(email: Email) -> EmailMessage:
    """The MIME message for `email` as the standard library's `EmailMessage`: the same headers
    and parts `render_message` writes, built the slow, general way. The SES simple form and
    SendGrid call it for its checks; the tests use it as a reference for `render_message`.

    Raises:
        errors.InvalidRequest: as `render_message`.
    """
    subject = _checked_message(email)
    message = EmailMessage(policy=MAIL_POLICY)
    message["From"] = _address_header(email.sender)
    message["To"] = _address_header(email.to)
    if email.reply_to is not None:
        message["Reply-To"] = _address_header(email.reply_to)
    message["Subject"] = subject
    message["Date"] = format_datetime(email.date.astimezone(UTC))
    domain = normalize_address(email.sender.address).rpartition("@")[2]
    message["Message-ID"] = f"<{email.message_id}@{domain}>"
    if email.unsubscribe is not None:
        message["List-Unsubscribe"] = list_unsubscribe(email.unsubscribe)
        message["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
    for name, value in email.headers.items():
        message[name] = value
    message.set_content(_body(email.text, "text"))
    if email.html is not None:
        message.add_alternative(_body(email.html, "HTML"), subtype="html")
    return message


def render_message(email: Email) -> bytes:
    """The bytes SMTP's DATA or SES's ``Content.Raw`` carries for `email` (RFC 5322, RFC
    2045-2047, RFC 2369, RFC 8058): ``From``, ``To``, optional ``Reply-To``, ``Subject``,
    ``Date``, ``Message-ID``, ``List-Unsubscribe`` (the https URL, then the mailto, one per
    line, never encoded) and ``List-Unsubscribe-Post: List-Unsubscribe=One-Click`` (RFC 8058
    §3.1), the extra headers, ``MIME-Version``, then a ``text/plain`` body or
    ``multipart/alternative`` of text then HTML (RFC 2046 §5.1.4: the preferred form last).

    Written directly rather than through the `email` package (which costs about 70 times
    more: docs/benchmarks.md). Every line ends in CRLF and the message is 7-bit: non-ASCII
    display names and subjects become UTF-8 encoded words (RFC 2047 §4-5: Q or B, whichever is
    shorter, each at most 75 characters, never splitting a character), header lines are folded
    at blanks to at most 78 characters where the text allows and never past 998 (RFC 5322
    §2.1.1, §2.2.3), bodies are UTF-8 in quoted-printable (base64 when that is shorter) with
    lines of at most 76 characters (RFC 2045 §6.7-6.8), their line breaks (CR, LF or CRLF)
    written as CRLF. The multipart boundary starts with ``=_``, which neither encoding can
    produce (RFC 2045 §6.7 rule 1: ``=`` is followed by two hex digits or a line break), and
    is random besides.

    Header injection is impossible: a CR, LF or other control character in a header value is
    refused.

    Raises:
        errors.InvalidRequest: a line break or control character in a header value, an empty
            subject, an unsubscribe target that is not an https URL or mailto URI, a naive date,
            an extra header that is not an ``X-`` name, a NUL or a lone surrogate in a body.
    """
    subject = _checked_message(email)
    sender = normalize_address(email.sender.address)
    lines = [
        _mailbox_field("From", sender, email.sender.name),
        _mailbox_field("To", normalize_address(email.to.address), email.to.name),
    ]
    if email.reply_to is not None:
        lines.append(
            _mailbox_field(
                "Reply-To", normalize_address(email.reply_to.address), email.reply_to.name
            )
        )
    lines.append(_unstructured_field("Subject", subject))
    lines.append(f"Date: {_rfc5322_date(email.date)}\r\n")
    lines.append(f"Message-ID: <{email.message_id}@{sender.rpartition('@')[2]}>\r\n")
    if email.unsubscribe is not None:
        lines.append(_fold_verbatim("List-Unsubscribe", list_unsubscribe(email.unsubscribe), _CRLF))
        lines.append("List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n")
    for name, value in email.headers.items():
        lines.append(_unstructured_field(name, value))
    lines.append("MIME-Version: 1.0\r\n")
    text = _encoded_body(email.text, "text", "plain")
    if email.html is None:
        return "".join(lines).encode("ascii") + text
    html = _encoded_body(email.html, "HTML", "html")
    boundary = "=_" + secrets.token_hex(16)
    lines.append(f'Content-Type: multipart/alternative;\r\n boundary="{boundary}"\r\n\r\n')
    delimiter = f"--{boundary}\r\n".encode("ascii")
    return b"".join(
        (
            "".join(lines).encode("ascii"),
            delimiter,
            text,
            b"\r\n",
            delimiter,
            html,
            f"\r\n--{boundary}--\r\n".encode("ascii"),
        )
    )


def _checked_message(email: Email) -> str:
    """The checks every way out shares; the subject, stripped."""
    subject = email.subject.strip()
    if not subject:
        raise errors.InvalidRequest("an email needs a subject")
    _check_header_text(subject, "subject")
    if len(subject) > MAX_SUBJECT_CHARS:
        raise errors.InvalidRequest(f"the subject is over {MAX_SUBJECT_CHARS} characters")
    if email.date.tzinfo is None:
        raise errors.InvalidRequest("the Date must be timezone-aware")
    if not _TOKEN_CHARS.fullmatch(email.message_id) or any(c in email.message_id for c in "<>@"):
        raise errors.InvalidRequest("the message id must be printable ASCII without <, > or @")
    for name, value in email.headers.items():
        if not _EXTRA_HEADER.fullmatch(name):
            raise errors.InvalidRequest(f"extra header {name!r} must be an X- name")
        if not value.isascii() or not value.isprintable():
            raise errors.InvalidRequest(f"extra header {name} must be printable ASCII")
    return subject


_CRLF: Final = "\r\n"
_EXTRA_HEADER: Final = re.compile(r"X-[A-Za-z0-9-]{1,70}")
_FOLD_AT: Final = 78
"""RFC 5322 §2.1.1: lines SHOULD be at most 78 characters..."""
_MAX_LINE: Final = 998
"""...and MUST be at most 998."""
_MAX_ENCODED_WORD: Final = 75
"""RFC 2047 §2, the encoded word's own limit."""
_ENCODED_WORD_OVERHEAD: Final = len("=?utf-8?q?") + len("?=")
_MIN_FIRST_WORD: Final = _ENCODED_WORD_OVERHEAD + 12
"""After a long header name, the first encoded word still carries something (the line then
goes past 78, which only the 998 limit forbids)."""
_PHRASE: Final = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?: [A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*")
"""Atoms separated by single blanks (RFC 5322 §3.2.3, §3.2.5): a display name written as is."""
_QUOTABLE: Final = re.compile(r"[ -~]+")
"""Printable ASCII: a display name written as a quoted string (RFC 5322 §3.2.4), which keeps
its blanks as they are (the `email` package collapses runs of them in encoded words)."""
_Q_SAFE: Final = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789!*+-/"
"""What the Q encoding may leave as is in any header, phrases included (RFC 2047 §5 (3))."""
_Q_TABLE: Final = tuple(
    chr(b) if b in _Q_SAFE else "_" if b == 0x20 else f"={b:02X}" for b in range(256)
)
_Q_COST: Final = tuple(len(q) for q in _Q_TABLE)
_DAYS: Final = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS: Final = (
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"
)  # fmt: skip
_QP_LINE: Final = 76
"""RFC 2045 §6.7 (5) and §6.8: encoded body lines are at most 76 characters."""


def _rfc5322_date(when: datetime) -> str:
    """RFC 5322 §3.3, in UTC: ``Fri, 01 May 2026 12:00:00 +0000``."""
    t = when.astimezone(UTC)
    return (
        f"{_DAYS[t.weekday()]}, {t.day:02d} {_MONTHS[t.month - 1]} {t.year:04d} "
        f"{t.hour:02d}:{t.minute:02d}:{t.second:02d} +0000"
    )


def _mailbox_field(name: str, address: str, display: str | None) -> str:
    """``Name: display <address>`` (RFC 5322 §3.4): the display name as atoms, a quoted string
    or encoded words (RFC 2047 §5 (3)), whichever its characters allow."""
    if not display:
        return f"{name}: {address}{_CRLF}"
    _check_header_text(display, "display name")
    head = f"{name}: "
    if "=?" not in display and _PHRASE.fullmatch(display):
        folded = _fold_blanks(head, display)
    elif "=?" not in display and _QUOTABLE.fullmatch(display):
        escaped = display.replace("\\", "\\\\").replace('"', '\\"')
        folded = _fold_blanks(head, f'"{escaped}"')
    else:
        folded = None
    if folded is None:
        folded = head + f"{_CRLF} ".join(_encoded_words(display, _FOLD_AT - len(head)))
    last = len(folded) - folded.rfind("\n") - 1
    angle = f"<{address}>"
    if last + 1 + len(angle) > _FOLD_AT:
        return f"{folded}{_CRLF} {angle}{_CRLF}"
    return f"{folded} {angle}{_CRLF}"


def _unstructured_field(name: str, value: str) -> str:
    """``Name: value`` for unstructured text (RFC 5322 §3.2.5, §3.6.5): ASCII folded at its
    blanks, otherwise encoded words. An ``X-`` value (machine-read) keeps a word too long for
    78 characters as it is up to 998; a subject becomes encoded words then."""
    if value.isascii() and "=?" not in value:
        if len(name) + 2 + len(value) <= _FOLD_AT:
            return f"{name}: {value}{_CRLF}"
        limit = _MAX_LINE if name.startswith("X-") else _FOLD_AT
        folded = _fold_blanks(f"{name}: ", value, limit)
        if folded is not None:
            return folded + _CRLF
    return f"{name}: " + f"{_CRLF} ".join(_encoded_words(value, _FOLD_AT - len(name) - 2)) + _CRLF


def _fold_blanks(head: str, value: str, limit: int = _FOLD_AT) -> str | None:
    """`head` + `value`, a line break put before a blank wherever the line would pass 78
    characters (RFC 5322 §2.2.3: unfolding removes only the CRLF, so the text is unchanged);
    None when a line would still pass `limit`."""
    line = head
    lines: list[str] = []
    for i, word in enumerate(value.split(" ")):
        if i == 0:
            line += word
        elif word and len(line) + 1 + len(word) > _FOLD_AT and line.strip():
            lines.append(line)
            line = " " + word
        else:
            line += " " + word
        if len(line) > limit:
            return None
    lines.append(line)
    return _CRLF.join(lines)


def _encoded_words(text: str, first_room: int) -> list[str]:
    """`text` as UTF-8 encoded words (RFC 2047 §4, §5): the first at most `first_room`
    characters (at least `_MIN_FIRST_WORD`), the others at most 75; each holds whole
    characters (§5: an encoded word never splits one). Q when it is no longer than B."""
    data = text.encode()
    unsafe = len(data.translate(None, _Q_SAFE)) - data.count(b" ")
    use_q = len(data) + 2 * unsafe <= (len(data) + 2) // 3 * 4
    room = min(max(first_room, _MIN_FIRST_WORD), _MAX_ENCODED_WORD) - _ENCODED_WORD_OVERHEAD
    if (len(data) + 2 * unsafe if use_q else len(data)) <= (room if use_q else room // 4 * 3):
        chunks = [data]
    else:
        chunks = []
        start = used = position = 0
        for char in text:
            raw = char.encode()
            cost = sum(_Q_COST[b] for b in raw) if use_q else len(raw)
            if used and used + cost > (room if use_q else room // 4 * 3):
                chunks.append(data[start:position])
                start, used = position, 0
                room = _MAX_ENCODED_WORD - _ENCODED_WORD_OVERHEAD
            used += cost
            position += len(raw)
        chunks.append(data[start:])
    if use_q:
        return ["=?utf-8?q?" + "".join([_Q_TABLE[b] for b in chunk]) + "?=" for chunk in chunks]
    return [
        "=?utf-8?b?" + binascii.b2a_base64(chunk, newline=False).decode("ascii") + "?="
        for chunk in chunks
    ]


def _encoded_body(value: str, what: str, subtype: str) -> bytes:
    """A ``text/<subtype>`` part, headers included: UTF-8, quoted-printable or (when shorter)
    base64, lines ending in CRLF; bare CR and LF become CRLF (RFC 5322 §2.3), and the body ends
    in a line break."""
    if "\0" in value:
        raise errors.InvalidRequest(f"the {what} body holds a NUL character")
    text = value.replace("\r\n", "\n").replace("\r", "\n")
    if not text.endswith("\n"):
        text += "\n"
    try:
        data = text.replace("\n", _CRLF).encode()
    except UnicodeEncodeError:
        raise errors.InvalidRequest(f"the {what} body is not valid Unicode text") from None
    encoded = binascii.b2a_qp(data, istext=True)
    if len(encoded) <= len(data) * 4 // 3 + 64:
        cte = "quoted-printable"
    else:
        cte = "base64"
        step = _QP_LINE // 4 * 3
        encoded = b"".join(
            binascii.b2a_base64(data[i : i + step], newline=False) + b"\r\n"
            for i in range(0, len(data), step)
        )
    head = (
        f'Content-Type: text/{subtype}; charset="utf-8"\r\nContent-Transfer-Encoding: {cte}\r\n\r\n'
    )
    return head.encode("ascii") + encoded


def list_unsubscribe(target: Unsubscribe) -> str:
    """The ``List-Unsubscribe`` value: ``<https://...>, <mailto:...>`` (RFC 2369 §3.2).

    Raises:
        errors.InvalidRequest: the URL is not https, a URI holds blanks, angle brackets,
            commas or non-ASCII, or is longer than `MAX_UNSUBSCRIBE_URI_CHARS`.
    """
    uris = [_checked_uri(target.url, "https")]
    if target.mailto is not None:
        uris.append(_checked_uri(target.mailto, "mailto"))
    return ", ".join(f"<{uri}>" for uri in uris)


def _checked_uri(uri: str, scheme: str) -> str:
    if (
        not uri
        or len(uri) > MAX_UNSUBSCRIBE_URI_CHARS
        or not _TOKEN_CHARS.fullmatch(uri)
        or any(ch in uri for ch in "<>,")
    ):
        raise errors.InvalidRequest(
            f"an unsubscribe URI is printable ASCII without blanks, <, > or commas, "
            f"at most {MAX_UNSUBSCRIBE_URI_CHARS} characters"
        )
    parts = urlsplit(uri)
    if parts.scheme.lower() != scheme or (scheme == "https" and not parts.hostname):
        raise errors.InvalidRequest(f"the unsubscribe URI must be a {scheme}: URI (RFC 8058)")
    return uri


def _address_header(mailbox: Mailbox) -> Address:
    address = normalize_address(mailbox.address)
    if mailbox.name is not None:
        _check_header_text(mailbox.name, "display name")
    return Address(display_name=mailbox.name or "", addr_spec=address)


def _check_header_text(value: str, what: str) -> None:
    if any(ch in value for ch in "\r\n") or not value.isprintable():
        raise errors.InvalidRequest(f"the {what} must be one line without control characters")


def _body(value: str, what: str) -> str:
    if "\0" in value:
        raise errors.InvalidRequest(f"the {what} body holds a NUL character")
    # Bodies end in a line break (RFC 5322 §2.3); bare CR and LF become CRLF on the wire.
    return value if value.endswith("\n") else value + "\n"


# --- SMTP replies [RFC 5321 §4.2, RFC 3463] ----------------------------------------------------


class SmtpStage(StrEnum):
    """Which command a reply answers: the same code means different things at each."""

    CONNECT = "connect"
    EHLO = "ehlo"
    STARTTLS = "starttls"
    AUTH = "auth"
    MAIL = "mail"
    RCPT = "rcpt"
    DATA = "data"


@dataclass(frozen=True, slots=True)
class SmtpReply:
    """A reply's code, its RFC 3463 enhanced code when the text starts with one, and its
    text."""

    code: int
    enhanced: tuple[int, int, int] | None
    text: str

    @classmethod
    def parse(cls, code: int, text: str) -> SmtpReply:
        text = _clip(text)
        found = _ENHANCED.match(text)
        enhanced = None
        if found is not None and found.group(1) == str(code)[0]:
            enhanced = (int(found.group(1)), int(found.group(2)), int(found.group(3)))
        return cls(code, enhanced, text)

    def __str__(self) -> str:
        return f"{self.code} {self.text}".strip()


_BOUNCE_CODES: Final = frozenset({550, 551, 553})
"""RCPT replies that say the mailbox is unknown, not local, or its name is not allowed
(RFC 5321 §4.2.3), in the absence of an enhanced code saying otherwise."""
_AUTH_CODES: Final = frozenset({530, 534, 535, 538})
"""Authentication required, mechanism too weak, credentials invalid, encryption required
(RFC 4954 §6)."""


def classify_smtp_reply(code: int, text: str, *, stage: SmtpStage) -> outcomes.Outcome | None:
    """What a final SMTP reply means for the delivery; None when the transaction goes on.

    - 2xx and 3xx: None, except the reply to the end of DATA, which is `Delivered` (its text,
      usually a queue id, as the reference).
    - 4xx: `RetryLater` (RFC 5321 §4.2.1: transient); 421 included (the server closes).
    - At RCPT, a hard bounce: enhanced code ``5.1.x`` (bad mailbox, domain, syntax, moved, null
      MX) or ``5.2.1`` (mailbox disabled), or, without an enhanced code, 550, 551 or 553:
      `TokenInvalid` with reason ``bounced: <reply>``: suppress the address. A 550 whose
      enhanced code is another class (``5.7.1`` policy, spam) is `Rejected`, not a bounce:
      the address is fine, this message was refused.
    - At RCPT, 552 (or ``5.2.2`` mailbox full): `RetryLater`: RFC 5321 §4.5.3.1.10 asks
      clients to treat 552 there as temporary, and RFC 3463 calls a full mailbox a persistent
      transient failure.
    - Authentication refused or required (530, 534, 535, 538, or ``5.7.8``), and any 5xx
      before MAIL (greeting, EHLO, STARTTLS, AUTH): `AuthFailed`: the relay refuses *us*;
      pause the credential and alert, every message would fail alike.
    - Other 5xx: `Rejected` (500-504 mean a client bug; 552/554 at DATA a refused message).
    - Any other code: `RetryLater` ("unexpected").
    """
    reply = SmtpReply.parse(code, text)
    label = f"SMTP {reply}"
    if 200 <= code < 400:
        if stage is SmtpStage.DATA and code < 300:
            return outcomes.Delivered(reference=reply.text or None)
        return None
    if 400 <= code < 500:
        return outcomes.RetryLater(label)
    if not 500 <= code < 600:
        return outcomes.RetryLater(f"unexpected {label}")
    if code in _AUTH_CODES or reply.enhanced == (5, 7, 8):
        return outcomes.AuthFailed(label)
    if stage in (SmtpStage.CONNECT, SmtpStage.EHLO, SmtpStage.STARTTLS, SmtpStage.AUTH):
        return outcomes.AuthFailed(label)
    if stage is SmtpStage.RCPT:
        if reply.enhanced is not None:
            subject, detail = reply.enhanced[1], reply.enhanced[2]
            if subject == 1 or (subject, detail) == (2, 1):
                return outcomes.TokenInvalid(BOUNCE_PREFIX + label)
            if (subject, detail) == (2, 2):
                return outcomes.RetryLater(label)
        elif code in _BOUNCE_CODES:
            return outcomes.TokenInvalid(BOUNCE_PREFIX + label)
        if code == 552:
            return outcomes.RetryLater(label)
    return outcomes.Rejected(label)


def is_bounce(outcome: outcomes.Outcome) -> bool:
    """Whether `outcome` is a hard bounce: suppress the address (see the module docstring)."""
    return isinstance(outcome, outcomes.TokenInvalid) and outcome.reason.startswith(BOUNCE_PREFIX)


# --- HTTP requests -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HttpRequest:
    """An HTTP request for SES or SendGrid. `headers` are ``(name, value)`` pairs; the client
    adds ``Content-Length`` from `body` and must send ``Host`` as given (SigV4 signs it)."""

    method: str
    url: str
    headers: tuple[tuple[str, str], ...]
    body: bytes = field(repr=False)

    def header(self, name: str) -> str | None:
        wanted = name.lower()
        for key, value in self.headers:
            if key.lower() == wanted:
                return value
        return None


# --- Signature Version 4 [AWS-SIG] -------------------------------------------------------------

SIGV4_ALGORITHM: Final = "AWS4-HMAC-SHA256"


@dataclass(frozen=True, slots=True)
class AwsCredentials:
    """An access key, its secret (never shown in a repr), and the STS session token that goes
    with temporary keys."""

    access_key_id: str
    secret_access_key: str = field(repr=False)
    session_token: str | None = field(default=None, repr=False)


def sigv4_signing_key(secret: str, date: str, region: str, service: str) -> bytes:
    """``HMAC("AWS4" + secret, date) -> region -> service -> "aws4_request"`` [AWS-SIG]."""
    key = _hmac(("AWS4" + secret).encode(), date)
    for part in (region, service, "aws4_request"):
        key = _hmac(key, part)
    return key


def sigv4_canonical_request(
    method: str,
    path: str,
    query: Sequence[tuple[str, str]],
    headers: Iterable[tuple[str, str]],
    payload_sha256: str,
) -> tuple[str, str]:
    """The canonical request and its signed-headers list [AWS-SIG].

    The URI is each path segment percent-encoded (RFC 3986 unreserved characters kept; a ``%``
    already there is encoded again, as every service but S3 wants); the query sorted by
    encoded name then value; headers lower-cased, values trimmed with inner runs of blanks
    made one space, repeated headers joined with commas, sorted by name.
    """
    uri = "/".join(quote(segment, safe="-_.~") for segment in (path or "/").split("/"))
    encoded = sorted((quote(k, safe="-_.~"), quote(v, safe="-_.~")) for k, v in query)
    canonical_query = "&".join(f"{k}={v}" for k, v in encoded)
    merged: dict[str, list[str]] = {}
    for name, value in headers:
        merged.setdefault(name.strip().lower(), []).append(" ".join(value.split()))
    names = sorted(merged)
    canonical_headers = "".join(f"{name}:{','.join(merged[name])}\n" for name in names)
    signed = ";".join(names)
    text = "\n".join(
        [method.upper(), uri, canonical_query, canonical_headers, signed, payload_sha256]
    )
    return text, signed


def sigv4_string_to_sign(amz_date: str, scope: str, canonical_request: str) -> str:
    """``AWS4-HMAC-SHA256 \\n <x-amz-date> \\n <scope> \\n hex(sha256(canonical))`` [AWS-SIG]."""
    digest = hashlib.sha256(canonical_request.encode()).hexdigest()
    return f"{SIGV4_ALGORITHM}\n{amz_date}\n{scope}\n{digest}"


def sigv4_sign(
    request: HttpRequest,
    credentials: AwsCredentials,
    *,
    region: str,
    service: str,
    now: datetime,
) -> HttpRequest:
    """`request` with ``X-Amz-Date``, ``X-Amz-Security-Token`` (temporary credentials) and
    ``Authorization: AWS4-HMAC-SHA256 Credential=<key id>/<date>/<region>/<service>/aws4_request,
    SignedHeaders=..., Signature=<hex>`` added [AWS-SIG]. Every header of `request` (``Host``
    included, which is added from the URL when absent) is signed.

    Raises:
        errors.InvalidRequest: a naive `now`, or a request already signed.
    """
    if now.tzinfo is None:
        raise errors.InvalidRequest("the signing time must be timezone-aware")
    if request.header("authorization") is not None:
        raise errors.InvalidRequest("the request is already signed")
    when = now.astimezone(UTC)
    amz_date, date = when.strftime("%Y%m%dT%H%M%SZ"), when.strftime("%Y%m%d")
    parts = urlsplit(request.url)
    headers = list(request.headers)
    if request.header("host") is None:
        headers.insert(0, ("Host", parts.netloc))
    headers.append(("X-Amz-Date", amz_date))
    if credentials.session_token:
        headers.append(("X-Amz-Security-Token", credentials.session_token))
    query = [
        (name, value) for name, _, value in (p.partition("=") for p in parts.query.split("&") if p)
    ]
    canonical, signed = sigv4_canonical_request(
        request.method, parts.path, query, headers, hashlib.sha256(request.body).hexdigest()
    )
    scope = f"{date}/{region}/{service}/aws4_request"
    to_sign = sigv4_string_to_sign(amz_date, scope, canonical)
    key = sigv4_signing_key(credentials.secret_access_key, date, region, service)
    signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    headers.append(
        (
            "Authorization",
            f"{SIGV4_ALGORITHM} Credential={credentials.access_key_id}/{scope}, "
            f"SignedHeaders={signed}, Signature={signature}",
        )
    )
    return HttpRequest(request.method, request.url, tuple(headers), request.body)


def _hmac(key: bytes, text: str) -> bytes:
    return hmac.new(key, text.encode(), hashlib.sha256).digest()


# --- Amazon SES v2 SendEmail [BOTO] ------------------------------------------------------------

SES_SERVICE: Final = "ses"
SES_PATH: Final = "/v2/email/outbound-emails"


def ses_endpoint(region: str) -> str:
    """``https://email.<region>.amazonaws.com`` [BOTO].

    Raises:
        errors.InvalidRequest: `region` is not a region name.
    """
    if not _REGION.fullmatch(region):
        raise errors.InvalidRequest(f"{region!r} is not an AWS region name")
    return f"https://email.{region}.amazonaws.com"


def ses_send_email_request(
    email: Email,
    *,
    region: str,
    credentials: AwsCredentials,
    now: datetime,
    raw: bool = True,
    configuration_set: str | None = None,
    tags: Mapping[str, str] | None = None,
    endpoint: str | None = None,
) -> HttpRequest:
    """A signed ``POST /v2/email/outbound-emails`` that sends `email` [BOTO].

    With `raw` (the default) the body carries ``Content.Raw.Data``: `render_message` in base64,
    so SES sends exactly the headers built here (``List-Unsubscribe`` included). Otherwise
    ``Content.Simple`` with ``Subject``, ``Body.Text``/``Body.Html`` (UTF-8) and the
    unsubscribe and extra headers in ``Headers``. `tags` become ``EmailTags`` (names and
    values: letters, digits, ``_`` and ``-``); `endpoint` replaces `ses_endpoint` (an
    emulator).

    Raises:
        errors.InvalidRequest: the message is refused by `build_message`, is over 40 MB, a
            tag or the configuration set name is invalid.
    """
    body: dict[str, Any] = {
        "FromEmailAddress": str(_address_header(email.sender)),
        "Destination": {"ToAddresses": [str(_address_header(email.to))]},
    }
    if raw:
        message = render_message(email)
        if len(message) > SES_MAX_MESSAGE_BYTES:
            raise errors.InvalidRequest("the message is over SES's 40 MB")
        body["Content"] = {"Raw": {"Data": base64.b64encode(message).decode("ascii")}}
    else:
        build_message(email)  # the same checks as the raw form
        simple: dict[str, Any] = {
            "Subject": {"Data": email.subject.strip(), "Charset": "UTF-8"},
            "Body": {"Text": {"Data": email.text, "Charset": "UTF-8"}},
        }
        if email.html is not None:
            simple["Body"]["Html"] = {"Data": email.html, "Charset": "UTF-8"}
        headers = _list_headers(email)
        if headers:
            simple["Headers"] = [{"Name": k, "Value": v} for k, v in headers.items()]
        body["Content"] = {"Simple": simple}
        if email.reply_to is not None:
            body["ReplyToAddresses"] = [str(_address_header(email.reply_to))]
    if configuration_set is not None:
        if not _TAG_TEXT.fullmatch(configuration_set):
            raise errors.InvalidRequest("the configuration set name is letters, digits, _ or -")
        body["ConfigurationSetName"] = configuration_set
    if tags:
        for name, value in tags.items():
            if not _TAG_TEXT.fullmatch(name) or not _TAG_TEXT.fullmatch(value):
                raise errors.InvalidRequest("SES tag names and values are letters, digits, _, -")
        body["EmailTags"] = [{"Name": k, "Value": v} for k, v in tags.items()]
    base = (endpoint or ses_endpoint(region)).rstrip("/")
    request = HttpRequest(
        "POST",
        base + SES_PATH,
        (("Host", urlsplit(base).netloc), ("Content-Type", "application/json")),
        json.dumps(body, separators=(",", ":")).encode(),
    )
    return sigv4_sign(request, credentials, region=region, service=SES_SERVICE, now=now)


_SES_RETRY: Final = frozenset(
    {
        "TooManyRequestsException",
        "ThrottlingException",
        "Throttling",
        "LimitExceededException",
        "InternalFailure",
        "InternalServerError",
        "ServiceUnavailable",
    }
)
_SES_AUTH: Final = frozenset(
    {
        "MailFromDomainNotVerifiedException",
        "AccountSuspendedException",
        "SendingPausedException",
        "NotFoundException",
        "InvalidClientTokenId",
        "UnrecognizedClientException",
        "IncompleteSignature",
        "SignatureDoesNotMatch",
        "ExpiredTokenException",
        "ExpiredToken",
        "AccessDeniedException",
        "MissingAuthenticationToken",
        "RequestExpired",
    }
)
_SES_REJECT: Final = frozenset({"MessageRejected", "BadRequestException"})


def classify_ses_response(
    status: int, headers: Mapping[str, str] | Iterable[tuple[str, str]], body: bytes
) -> outcomes.Outcome:
    """What a ``SendEmail`` answer means [BOTO][SES-Q][AWS-ERR].

    The error code is ``x-amzn-ErrorType`` up to its first ``:`` (else the body's ``code`` or
    ``__type`` after ``#``); the reason quotes it and the body's ``message``.

    - 200 with ``MessageId``: `Delivered`, referenced by it.
    - ``TooManyRequestsException``, ``ThrottlingException``, ``LimitExceededException`` (sending
      rate or daily quota), any 429 and 5xx: `RetryLater`.
    - ``MessageRejected`` (the content, e.g. a virus) and ``BadRequestException``: `Rejected`.
    - ``MailFromDomainNotVerifiedException``, ``AccountSuspendedException``,
      ``SendingPausedException``, ``NotFoundException`` (the configuration set), the signature
      and key errors, and ``RequestExpired`` (our clock is more than 15 minutes off, since
      requests are signed just before they go): `AuthFailed`: the account or its setup is at
      fault; pause the credential and alert.
    - Other 401/403: `AuthFailed`; other 4xx: `Rejected`; anything else: `RetryLater`.
    """
    found = _headers(headers)
    raw = _json_object(body)
    if status == 200:
        message_id = raw.get("MessageId") if raw is not None else None
        if isinstance(message_id, str) and message_id:
            return outcomes.Delivered(reference=message_id)
        return outcomes.RetryLater("SES answered 200 without a MessageId")
    code = found.get("x-amzn-errortype", "").split(":", 1)[0].strip()
    if not code and raw is not None:
        given = raw.get("code") or raw.get("__type") or ""
        code = str(given).rpartition("#")[2]
    message = raw.get("message") or raw.get("Message") if raw is not None else None
    label = f"SES HTTP {status}"
    if code:
        label += f" {_clip(code)}"
    if isinstance(message, str) and message:
        label += f": {_clip(message)}"
    if code in _SES_RETRY or status == 429 or 500 <= status < 600:
        return outcomes.RetryLater(label, _retry_after(found.get("retry-after")))
    if code in _SES_REJECT:
        return outcomes.Rejected(label)
    if code in _SES_AUTH or status in (401, 403):
        return outcomes.AuthFailed(label)
    if 400 <= status < 500:
        return outcomes.Rejected(label)
    return outcomes.RetryLater(f"unexpected {label}")


# --- SendGrid v3 Mail Send [SG] ----------------------------------------------------------------

SENDGRID_URL: Final = "https://api.sendgrid.com/v3/mail/send"
SENDGRID_EU_URL: Final = "https://api.eu.sendgrid.com/v3/mail/send"


def sendgrid_request(
    email: Email,
    *,
    api_key: str,
    custom_args: Mapping[str, str] | None = None,
    categories: Sequence[str] = (),
    url: str = SENDGRID_URL,
) -> HttpRequest:
    """``POST /v3/mail/send`` for `email` [SG]: one personalization with the recipient,
    ``from``, ``reply_to``, ``subject``, ``content`` (``text/plain`` before ``text/html``, as
    SendGrid requires), ``headers`` (``List-Unsubscribe``, ``List-Unsubscribe-Post``, the extra
    ones; SendGrid writes the rest), ``custom_args`` (the delivery id, echoed in its event
    webhook) and ``categories``.

    Raises:
        errors.InvalidRequest: the message is refused by `build_message`; the key is not a
            header value; a custom argument is not a string; over 10 categories.
    """
    if not api_key or not _TOKEN_CHARS.fullmatch(api_key):
        raise errors.InvalidRequest("the SendGrid API key must be a non-empty header value")
    build_message(email)  # the same checks as every other way out
    personalization: dict[str, Any] = {"to": [_sendgrid_mailbox(email.to)]}
    payload: dict[str, Any] = {
        "personalizations": [personalization],
        "from": _sendgrid_mailbox(email.sender),
        "subject": email.subject.strip(),
        "content": [{"type": "text/plain", "value": email.text}],
    }
    if email.html is not None:
        payload["content"].append({"type": "text/html", "value": email.html})
    if email.reply_to is not None:
        payload["reply_to"] = _sendgrid_mailbox(email.reply_to)
    headers = _list_headers(email)
    if headers:
        payload["headers"] = headers
    if custom_args:
        if not all(isinstance(v, str) for v in custom_args.values()):
            raise errors.InvalidRequest("SendGrid custom_args values must be strings")
        payload["custom_args"] = dict(custom_args)
    if categories:
        if len(categories) > 10:
            raise errors.InvalidRequest("SendGrid takes at most 10 categories")
        payload["categories"] = list(categories)
    body = json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()
    if len(body) > SENDGRID_MAX_BODY_BYTES:
        raise errors.InvalidRequest("the message is over SendGrid's 30 MB")
    return HttpRequest(
        "POST",
        url,
        (("Authorization", f"Bearer {api_key}"), ("Content-Type", "application/json")),
        body,
    )


def classify_sendgrid_response(
    status: int,
    headers: Mapping[str, str] | Iterable[tuple[str, str]],
    body: bytes,
    *,
    now: datetime,
) -> outcomes.Outcome:
    """What a Mail Send answer means [SG][SG-ERR][SG-RL].

    - 202 (200 tolerated): `Delivered`, referenced by ``X-Message-Id``.
    - 429: `RetryLater` until ``X-RateLimit-Reset`` (epoch seconds; measured from `now`).
    - 401, 403 (bad key, unverified sender, a temporary block): `AuthFailed`.
    - 400, 413 and other 4xx: `Rejected`, quoting the first ``errors[].message`` and ``field``.
    - 5xx and anything else: `RetryLater`.
    """
    found = _headers(headers)
    if status in (200, 202):
        return outcomes.Delivered(reference=found.get("x-message-id") or None)
    label = f"SendGrid HTTP {status}"
    raw = _json_object(body)
    problems = raw.get("errors") if raw is not None else None
    if isinstance(problems, list) and problems and isinstance(problems[0], dict):
        first = problems[0]
        if isinstance(first.get("message"), str):
            label += f": {_clip(first['message'])}"
        if isinstance(first.get("field"), str) and first["field"]:
            label += f" (field {_clip(first['field'])})"
    if status == 429:
        return outcomes.RetryLater(label, _rate_limit_reset(found.get("x-ratelimit-reset"), now))
    if status in (401, 403):
        return outcomes.AuthFailed(label)
    if 400 <= status < 500:
        return outcomes.Rejected(label)
    return outcomes.RetryLater(label, _retry_after(found.get("retry-after")))


def _sendgrid_mailbox(mailbox: Mailbox) -> dict[str, str]:
    value = {"email": normalize_address(mailbox.address)}
    if mailbox.name:
        value["name"] = mailbox.name
    return value


def _list_headers(email: Email) -> dict[str, str]:
    headers: dict[str, str] = {}
    if email.unsubscribe is not None:
        headers["List-Unsubscribe"] = list_unsubscribe(email.unsubscribe)
        headers["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
    headers.update(email.headers)
    return headers


def _rate_limit_reset(value: str | None, now: datetime) -> float | None:
    if value is None or not value.strip().isdigit():
        return None
    return max(float(int(value.strip())) - now.timestamp(), 0.0)


def _retry_after(value: str | None) -> float | None:
    if value is None or not value.strip().isdigit():
        return None
    return float(int(value.strip()))


def _clip(text: str | None) -> str:
    clean = "".join(ch if ch.isprintable() else " " for ch in text or "").strip()
    return clean if len(clean) <= MAX_REASON_CHARS else clean[: MAX_REASON_CHARS - 1] + "…"


def _headers(headers: Mapping[str, str] | Iterable[tuple[str, str]]) -> dict[str, str]:
    items = headers.items() if isinstance(headers, Mapping) else headers
    return {name.lower(): value for name, value in items}


def _json_object(data: bytes) -> dict[str, Any] | None:
    try:
        raw = json.loads(data)
    except (ValueError, RecursionError):
        return None
    return raw if isinstance(raw, dict) else None
