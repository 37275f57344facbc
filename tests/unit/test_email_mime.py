"""wire/email's own MIME writer: what it writes reads back through the standard library's
parser as what was given (headers decoded, bodies decoded), it keeps to the line rules of RFC
5322, 2045 and 2047, and it agrees with the `email` package's rendering (`build_message`)."""

from __future__ import annotations

import email
import re
from datetime import UTC, datetime, timedelta, timezone
from email import policy
from email.header import decode_header, make_header

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from clarion.domain import errors
from clarion.wire import email as wire

NOW = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
URL = "https://clarion.example.com/v1/unsubscribe/u1." + "A" * 200 + ".tag"
MAILTO = "mailto:unsubscribe@clarion.example.com?subject=unsubscribe%20u1.abc"


def an_email(**changes: object) -> wire.Email:
    values: dict[str, object] = {
        "sender": wire.Mailbox.of("noreply@example.com", "Clärion Alerts"),
        "to": wire.Mailbox.of("bob@exämple.org", "Bob"),
        "subject": "Your order shipped — ünïcode",
        "text": "Hello Bob,\nyour order shipped.",
        "html": "<p>Hello <b>Bob</b></p>",
        "date": NOW,
        "message_id": "dlv-123",
        "unsubscribe": wire.Unsubscribe(URL, MAILTO),
        "reply_to": wire.Mailbox.of("help@example.com", "Help desk"),
        "headers": {"X-Clarion-Delivery": "dlv-123"},
    }
    values.update(changes)
    return wire.Email(**values)  # type: ignore[arg-type]


def parsed(raw: bytes) -> email.message.EmailMessage:
    message = email.message_from_bytes(raw, policy=policy.default)
    assert isinstance(message, email.message.EmailMessage)
    return message


def expected_body(text: str) -> str:
    """What a body reads back as: line breaks as LF (the test's choice), ending in one."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    return text if text.endswith("\n") else text + "\n"


def content(part: email.message.EmailMessage) -> str:
    found = part.get_content()
    assert isinstance(found, str)
    return found.replace("\r\n", "\n")


def blanks(name: str) -> str:
    """How the `email` package reads a display name back: it collapses runs of blanks in
    encoded words, drops those around a quoted string, and puts one between two adjacent
    encoded words (where RFC 2047 §6.2 says to ignore the folding blank). It does all three to
    its own rendering too (`build_message`)."""
    return name.replace(" ", "")


def raw_field(raw: bytes, name: str) -> str:
    """The value of header `name` as written, unfolded (RFC 5322 §2.2.3: CRLF removed)."""
    head = raw.partition(b"\r\n\r\n")[0].decode("ascii")
    for line in re.sub(r"\r\n(?=[ \t])", "", head).split("\r\n"):
        key, _, value = line.partition(": ")
        if key.lower() == name.lower():
            return value
    raise KeyError(name)


def display_name(value: str) -> str:
    """The display name of an unfolded ``name <address>``: a quoted string unescaped, encoded
    words decoded as RFC 2047 §6.2 says (`email.header.decode_header` does), atoms as is."""
    phrase = value.rpartition(" <")[0] if value.endswith(">") else ""
    if phrase.startswith('"'):
        assert phrase.endswith('"')
        return re.sub(r"\\(.)", r"\1", phrase[1:-1])
    return str(make_header(decode_header(phrase)))


def check_lines(raw: bytes) -> None:
    """CRLF only, 7-bit, no line over 998; header lines over 78 only where nothing breaks them:
    a List-Unsubscribe URI or a single ASCII word; encoded body lines at most 76."""
    assert raw.endswith(b"\r\n")
    assert max(raw) < 128
    lines = raw.split(b"\r\n")[:-1]
    for line in lines:
        assert b"\r" not in line
        assert b"\n" not in line
        assert len(line) <= 998
    head, _, rest = raw.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n"):
        if len(line) > 78:
            # A List-Unsubscribe URI, or an X- value's word (kept as is, up to 998).
            assert line.startswith((b"List-Unsubscribe: <", b" <")) or (
                line.startswith((b"X-", b" ")) and b" " not in line.partition(b": ")[2].strip()
            ), line
        assert line.strip(), "a folded header line holds more than blanks"
    for line in rest.split(b"\r\n"):
        assert len(line) <= 76, line


def check_round_trip(given_email: wire.Email, raw: bytes) -> email.message.EmailMessage:
    check_lines(raw)
    message = parsed(raw)
    assert not message.defects, message.defects
    for header, mailbox in (
        ("From", given_email.sender),
        ("To", given_email.to),
        ("Reply-To", given_email.reply_to),
    ):
        if mailbox is None:
            assert header not in message
            continue
        (address,) = message[header].addresses
        assert address.addr_spec == wire.normalize_address(mailbox.address)
        # The `email` package's own reading of a phrase treats blanks loosely (below)...
        assert blanks(address.display_name) == blanks(mailbox.name or "")
        # ...so the exact name is checked with RFC 2047 §6.2 decoding of the raw field.
        assert display_name(raw_field(raw, header)) == (mailbox.name or "")
    assert str(message["Subject"]) == given_email.subject.strip()
    assert message["Date"].datetime == given_email.date
    domain = wire.normalize_address(given_email.sender.address).rpartition("@")[2]
    assert message["Message-ID"] == f"<{given_email.message_id}@{domain}>"
    if given_email.unsubscribe is None:
        assert "List-Unsubscribe" not in message
    else:
        assert message["List-Unsubscribe"] == wire.list_unsubscribe(given_email.unsubscribe)
        assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    for name, value in given_email.headers.items():
        assert message[name].strip() == value.strip()
    assert message["MIME-Version"] == "1.0"
    if given_email.html is None:
        assert message.get_content_type() == "text/plain"
        assert content(message) == expected_body(given_email.text)
        return message
    assert message.get_content_type() == "multipart/alternative"
    boundary = message.get_boundary()
    assert boundary is not None
    text, html = message.iter_parts()
    assert isinstance(text, email.message.EmailMessage)
    assert isinstance(html, email.message.EmailMessage)
    assert not text.defects
    assert not html.defects
    assert text.get_content_type() == "text/plain"
    assert html.get_content_type() == "text/html"
    assert text.get_content_charset() == html.get_content_charset() == "utf-8"
    assert content(text) == expected_body(given_email.text)
    assert content(html) == expected_body(given_email.html)
    # The boundary occurs only as delimiter lines.
    assert raw.count(boundary.encode()) == 4  # the parameter, two delimiters, the close
    return message


# --- fixed vectors ------------------------------------------------------------------------------

ASCII = wire.Email(
    sender=wire.Mailbox.of("noreply@example.com", "Clarion Alerts"),
    to=wire.Mailbox.of("bob@example.org"),
    subject="Your order shipped",
    text="Hello Bob,\nyour order shipped.\n",
    date=datetime(2026, 5, 1, 14, 0, 5, tzinfo=timezone(timedelta(hours=2))),
    message_id="dlv-123",
    unsubscribe=wire.Unsubscribe("https://c.example/u/tok", "mailto:u@c.example"),
    headers={"X-Clarion-Delivery": "dlv-123"},
)

ASCII_BYTES = (
    b"From: Clarion Alerts <noreply@example.com>\r\n"
    b"To: bob@example.org\r\n"
    b"Subject: Your order shipped\r\n"
    b"Date: Fri, 01 May 2026 12:00:05 +0000\r\n"
    b"Message-ID: <dlv-123@example.com>\r\n"
    b"List-Unsubscribe: <https://c.example/u/tok>,\r\n <mailto:u@c.example>\r\n"
    b"List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n"
    b"X-Clarion-Delivery: dlv-123\r\n"
    b"MIME-Version: 1.0\r\n"
    b'Content-Type: text/plain; charset="utf-8"\r\n'
    b"Content-Transfer-Encoding: quoted-printable\r\n"
    b"\r\n"
    b"Hello Bob,\r\n"
    b"your order shipped.\r\n"
)


def test_an_ascii_text_message_is_written_byte_for_byte() -> None:
    raw = wire.render_message(ASCII)
    assert raw == ASCII_BYTES
    check_round_trip(ASCII, raw)


def test_an_ascii_multipart_message_is_written_byte_for_byte_but_for_its_boundary() -> None:
    given = wire.Email(
        sender=ASCII.sender,
        to=ASCII.to,
        subject=ASCII.subject,
        text="a = b\n.\nFrom here\n",
        html='<p class="x">hi</p>',
        date=ASCII.date,
        message_id=ASCII.message_id,
    )
    raw = wire.render_message(given)
    found = re.search(rb'boundary="(=_[0-9a-f]{32})"', raw)
    assert found is not None
    boundary = found.group(1)
    assert raw.replace(boundary, b"BOUNDARY") == (
        b"From: Clarion Alerts <noreply@example.com>\r\n"
        b"To: bob@example.org\r\n"
        b"Subject: Your order shipped\r\n"
        b"Date: Fri, 01 May 2026 12:00:05 +0000\r\n"
        b"Message-ID: <dlv-123@example.com>\r\n"
        b"MIME-Version: 1.0\r\n"
        b"Content-Type: multipart/alternative;\r\n"
        b' boundary="BOUNDARY"\r\n'
        b"\r\n"
        b"--BOUNDARY\r\n"
        b'Content-Type: text/plain; charset="utf-8"\r\n'
        b"Content-Transfer-Encoding: quoted-printable\r\n"
        b"\r\n"
        b"a =3D b\r\n"
        b"=2E\r\n"
        b"From here\r\n"
        b"\r\n"
        b"--BOUNDARY\r\n"
        b'Content-Type: text/html; charset="utf-8"\r\n'
        b"Content-Transfer-Encoding: quoted-printable\r\n"
        b"\r\n"
        b'<p class=3D"x">hi</p>\r\n'
        b"\r\n"
        b"--BOUNDARY--\r\n"
    )
    check_round_trip(given, raw)
    assert wire.render_message(given) != raw  # a new boundary every time


def test_non_ascii_names_and_subjects_are_utf8_encoded_words() -> None:
    raw = wire.render_message(an_email())
    assert b"From: =?utf-8?q?Cl=C3=A4rion_Alerts?= <noreply@example.com>\r\n" in raw
    assert b"Subject: =?utf-8?b?WW91ciBvcmRlciBzaGlwcGVkIOKAlCDDvG7Dr2NvZGU=?=\r\n" in raw
    check_round_trip(an_email(), raw)


def test_a_long_subject_is_folded_into_encoded_words_of_at_most_75_characters() -> None:
    subject = "Grüße aus Köln, " * 30
    raw = wire.render_message(an_email(subject=subject))
    words = re.findall(rb"=\?utf-8\?[qb]\?[^?]*\?=", raw.split(b"\r\n\r\n")[0])
    assert len(words) > 10
    assert all(len(word) <= 75 for word in words)
    check_round_trip(an_email(subject=subject), raw)


def test_a_long_ascii_subject_is_folded_at_blanks_and_reads_back_unchanged() -> None:
    subject = "word  " * 40 + "end"
    raw = wire.render_message(an_email(subject=subject))
    assert b"=?" not in raw.split(b"Subject: ")[1].split(b"\r\nDate")[0]
    check_round_trip(an_email(subject=subject), raw)


@pytest.mark.parametrize(
    "name",
    [
        "Bob",
        "Bob Smith Jr",
        "Smith, Bob",
        'Bob "the builder" O\'Neil',
        "back\\slash",
        "=?utf-8?q?not_really?=",
        " padded ",
        "two  blanks",
        "a" * 100,
        "Zoë 🦊 " * 20,
        "日本語の名前",
    ],
)
def test_display_names_read_back_as_given(name: str) -> None:
    given = an_email(to=wire.Mailbox.of("bob@example.org", name))
    check_round_trip(given, wire.render_message(given))


def test_bodies_in_mostly_non_latin_script_are_base64() -> None:
    given = an_email(text="日本語のテキスト。" * 40, html="<p>" + "日本語" * 100 + "</p>")
    raw = wire.render_message(given)
    assert raw.count(b"Content-Transfer-Encoding: base64") == 2
    check_round_trip(given, raw)


@pytest.mark.parametrize(
    ("field", "value", "what"),
    [
        ("text", "a\0b", "NUL"),
        ("html", "a\0b", "NUL"),
        ("text", "a\ud800b", "Unicode"),
    ],
)
def test_unencodable_bodies_are_refused(field: str, value: str, what: str) -> None:
    with pytest.raises(errors.InvalidRequest, match=what):
        wire.render_message(an_email(**{field: value}))


def test_the_email_package_reads_the_same_message_from_both_renderings() -> None:
    given = an_email(subject="Ünïcode, long " * 12, text="Grüße\n" + "x" * 200, html="<p>é</p>")
    ours = parsed(wire.render_message(given))
    theirs = parsed(wire.build_message(given).as_bytes(policy=wire.MAIL_POLICY))
    for name in ("From", "To", "Reply-To", "Subject", "Date", "Message-ID", "List-Unsubscribe"):
        assert str(ours[name]) == str(theirs[name]), name
    assert [content(p) for p in ours.iter_parts()] == [content(p) for p in theirs.iter_parts()]  # type: ignore[arg-type]


# --- properties ---------------------------------------------------------------------------------

HEADER_TEXT = st.text(
    st.characters(codec="utf-8", categories=["L", "M", "N", "P", "S", "Zs"]), max_size=200
).filter(lambda s: s.isprintable())
BODY_LINE = st.one_of(
    st.text(st.characters(codec="utf-8", exclude_characters="\0"), max_size=120),
    st.sampled_from([".", "..", ".x", "From here", "From ", "=", "=3D", "a=", " ", "\t", "=_"]),
    st.text(st.sampled_from("aé=. 🦊\t"), min_size=70, max_size=400),
)
BODY = st.builds(
    lambda lines, breaks: (
        "".join(line + breaks[i % len(breaks)] for i, line in enumerate(lines)).rstrip("\n")
        if lines
        else ""
    ),
    st.lists(BODY_LINE, max_size=12),
    st.lists(st.sampled_from(["\n", "\r\n", "\r"]), min_size=1, max_size=4),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    subject=HEADER_TEXT.filter(lambda s: s.strip()),
    sender_name=HEADER_TEXT,
    to_name=HEADER_TEXT,
    text=BODY,
    html=st.one_of(st.none(), BODY),
)
def test_any_message_reads_back_as_given_and_keeps_the_line_rules(
    subject: str, sender_name: str, to_name: str, text: str, html: str | None
) -> None:
    given = an_email(
        subject=subject,
        sender=wire.Mailbox.of("noreply@example.com", sender_name),
        to=wire.Mailbox.of("bob@exämple.org", to_name),
        text=text,
        html=html,
    )
    check_round_trip(given, wire.render_message(given))


@settings(max_examples=100, deadline=None)
@given(
    subject=st.text(st.sampled_from("aZ9 =?_.,;:\"'\\<>()[]@é€𝄞"), min_size=1, max_size=998),
    header=st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=1200),
)
def test_long_and_awkward_headers_keep_the_line_rules(subject: str, header: str) -> None:
    if not subject.strip():
        subject += "x"
    given = an_email(subject=subject, headers={"X-Clarion-Note": header})
    check_round_trip(given, wire.render_message(given))
