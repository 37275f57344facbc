"""WNS, sans I/O: access tokens, channel URIs, toast and badge XML, requests and answers."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs
from xml.etree import ElementTree

import pytest
from hypothesis import given, strategies as st

from clarion.domain import errors, outcomes
from clarion.wire import wns
from clarion.wire.wns import CachePolicy, Notification, NotificationType, Priority

NOW = datetime(2026, 3, 4, 5, 6, 7, tzinfo=UTC)
CHANNEL = "https://dm3p.notify.windows.com/?token=AwYAAAB%2bXyz%3d"


def _parse(xml: bytes) -> ElementTree.Element:
    return ElementTree.fromstring(xml)  # noqa: S314 (our own output, in a test)


# --- access token --------------------------------------------------------------------------------


def test_the_legacy_token_request_is_the_client_credentials_form() -> None:
    body = wns.token_request_body("ms-app://s-1-15-2-1", "s3cret+/=&x")
    assert parse_qs(body.decode(), strict_parsing=True) == {
        "grant_type": ["client_credentials"],
        "client_id": ["ms-app://s-1-15-2-1"],
        "client_secret": ["s3cret+/=&x"],
        "scope": ["notify.windows.com"],
    }
    assert b"s3cret%2B%2F%3D%26x" in body
    assert wns.LEGACY_TOKEN_URL == "https://login.live.com/accesstoken.srf"


def test_the_entra_token_request_uses_the_wns_default_scope_and_the_tenant_url() -> None:
    body = wns.token_request_body("app-id", "secret", scope=wns.ENTRA_SCOPE)
    assert parse_qs(body.decode())["scope"] == ["https://wns.windows.com/.default"]
    assert (
        wns.entra_token_url("contoso.onmicrosoft.com")
        == "https://login.microsoftonline.com/contoso.onmicrosoft.com/oauth2/v2.0/token"
    )


@pytest.mark.parametrize("tenant", ["", "a/b", "../x", "a b"])
def test_a_tenant_that_could_break_the_url_is_refused(tenant: str) -> None:
    with pytest.raises(errors.InvalidRequest, match="tenant"):
        wns.entra_token_url(tenant)


@pytest.mark.parametrize(("client_id", "secret"), [("", "s"), ("id", "")])
def test_an_empty_id_or_secret_is_refused(client_id: str, secret: str) -> None:
    with pytest.raises(errors.InvalidRequest, match="must not be empty"):
        wns.token_request_body(client_id, secret)


def _token_answer(status: int, document: Any, headers: Any = None) -> Any:
    body = document if isinstance(document, bytes) else json.dumps(document).encode()
    return wns.classify_token_response(status, headers or {}, body, now=NOW)


def test_a_token_answer_gives_a_day_long_token_refreshed_five_minutes_early() -> None:
    token = _token_answer(
        200,
        {
            "access_token": "EgAcAQMAAAAALYAAY/c+Huwi3Fv4Ck10UrKNmtxRO6Njk2MgA=",
            "token_type": "bearer",
            "expires_in": 86400,
        },
    )
    assert isinstance(token, wns.AccessToken)
    assert token.value == "EgAcAQMAAAAALYAAY/c+Huwi3Fv4Ck10UrKNmtxRO6Njk2MgA="
    assert token.expires_at == NOW + timedelta(days=1)
    assert token.refresh_at == NOW + timedelta(days=1, minutes=-5)
    assert not token.needs_refresh(token.refresh_at - timedelta(seconds=1))
    assert token.needs_refresh(token.refresh_at)
    assert "EgAc" not in repr(token)


def test_a_token_answer_without_expires_in_is_taken_to_last_a_day() -> None:
    token = _token_answer(200, {"access_token": "t", "token_type": "bearer"})
    assert isinstance(token, wns.AccessToken)
    assert token.expires_at == NOW + wns.DEFAULT_TOKEN_LIFETIME


@pytest.mark.parametrize(
    "document",
    [
        {"token_type": "bearer"},
        {"access_token": "t", "token_type": "mac"},
        {"access_token": "t", "expires_in": -1},
        {"access_token": "t", "expires_in": "86400"},
        b"",
        b"[]",
    ],
)
def test_an_unreadable_token_answer_is_retried(document: Any) -> None:
    assert isinstance(_token_answer(200, document), outcomes.RetryLater)


def test_a_400_from_the_token_endpoint_is_an_auth_failure() -> None:
    outcome = _token_answer(400, {"error": "invalid_client", "error_description": "Invalid SID"})
    assert outcome == outcomes.AuthFailed("OAuth HTTP 400 invalid_client: Invalid SID")


@pytest.mark.parametrize("status", [429, 500, 503])
def test_a_token_endpoint_failure_is_retried(status: int) -> None:
    outcome = _token_answer(status, b"busy", {"Retry-After": "5"})
    assert outcome == outcomes.RetryLater(f"OAuth HTTP {status}", 5.0)


# --- channel URIs --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "uri",
    [
        CHANNEL,
        "https://wns2-by3p.notify.windows.com/w/?token=BQYAAAB",
        "https://DB3.Notify.Windows.com/?token=x",
        "https://db3.notify.windows.com:443/?token=x",
    ],
)
def test_a_channel_under_notify_windows_com_is_taken(uri: str) -> None:
    assert wns.validate_channel_uri(uri) == uri


@pytest.mark.parametrize(
    ("uri", "match"),
    [
        ("http://dm3p.notify.windows.com/?token=x", "https"),
        ("https://notify.windows.com/?token=x", "under notify.windows.com"),
        ("https://dm3p.notify.windows.com.evil.test/?token=x", "under notify.windows.com"),
        ("https://evilnotify.windows.com/?token=x", "under notify.windows.com"),
        ("https://127.0.0.1/?token=x", "under notify.windows.com"),
        ("https://user@dm3p.notify.windows.com/?token=x", "user information"),
        ("https://dm3p.notify.windows.com/?token=x#f", "fragment"),
        ("https://dm3p.notify.windows.com/?token=a b", "blanks"),
        ("https://dm3p.notify.windows.com:99999/", "cannot be parsed"),
        ("https://dm3p.notify.windows.com/?token=" + "a" * 2048, "2048"),
        ("", "ASCII URL"),
    ],
)
def test_a_channel_uri_clarion_will_not_post_to_is_refused(uri: str, match: str) -> None:
    with pytest.raises(errors.InvalidRequest, match=match):
        wns.validate_channel_uri(uri)


def test_an_operator_may_admit_an_emulator_host_and_plain_http() -> None:
    uri = "http://127.0.0.1:8086/channels/abc"
    assert wns.validate_channel_uri(uri, extra_hosts={"127.0.0.1"}, allow_http=True) == uri
    with pytest.raises(errors.InvalidRequest, match="https"):
        wns.validate_channel_uri(uri, extra_hosts={"127.0.0.1"})


# --- payloads ------------------------------------------------------------------------------------


def test_a_toast_is_toast_generic_xml_with_the_title_body_and_launch_args() -> None:
    assert wns.toast_xml("Hi", "there", launch="order=42&view=1") == (
        b'<toast launch="order=42&amp;view=1"><visual><binding template="ToastGeneric">'
        b"<text>Hi</text><text>there</text></binding></visual></toast>"
    )


def test_a_toast_without_body_or_launch_has_only_the_title() -> None:
    assert wns.toast_xml("Hi") == (
        b'<toast><visual><binding template="ToastGeneric"><text>Hi</text>'
        b"</binding></visual></toast>"
    )


def test_markup_in_a_toast_is_escaped_never_interpreted() -> None:
    title = '</text><image src="https://evil.test/x.png"/><text>'
    xml = wns.toast_xml(title, "a & b < c > d ]]> e", launch="\"'><evil/>")
    root = _parse(xml)
    assert [t.text for t in root.iter("text")] == [title, "a & b < c > d ]]> e"]
    assert root.get("launch") == "\"'><evil/>"
    assert root.find(".//image") is None
    assert root.find(".//evil") is None


_xml_text = st.text(
    st.characters(
        blacklist_categories=("Cs",),
        blacklist_characters="".join(chr(c) for c in range(0x20) if c not in (9, 10, 13))
        + "\ufffe\uffff",
    ),
    max_size=200,
)


@given(title=_xml_text, body=_xml_text, launch=_xml_text)
def test_any_xml_text_round_trips_exactly_through_the_toast(
    title: str, body: str, launch: str
) -> None:
    root = _parse(wns.toast_xml(title, body, launch=launch))
    assert [t.text or "" for t in root.iter("text")] == [title, body]
    assert root.get("launch") == launch


@pytest.mark.parametrize("bad", ["\x00", "a\x1bb", "\x08", "\ud800", "\ufffe", "\uffff"])
def test_characters_xml_cannot_carry_are_refused(bad: str) -> None:
    with pytest.raises(errors.InvalidRequest, match="XML cannot carry"):
        wns.toast_xml(bad)
    with pytest.raises(errors.InvalidRequest, match="XML cannot carry"):
        wns.toast_xml("ok", launch=bad)


@pytest.mark.parametrize(
    ("value", "xml"),
    [
        (0, b'<badge value="0"/>'),
        (7, b'<badge value="7"/>'),
        (150, b'<badge value="150"/>'),
        ("alert", b'<badge value="alert"/>'),
        ("newMessage", b'<badge value="newMessage"/>'),
    ],
)
def test_a_badge_is_a_number_or_a_glyph(value: int | str, xml: bytes) -> None:
    assert wns.badge_xml(value) == xml


@pytest.mark.parametrize("value", [-1, True, "bogus", "<x/>"])
def test_a_negative_or_unknown_badge_is_refused(value: Any) -> None:
    with pytest.raises(errors.InvalidRequest, match="badge"):
        wns.badge_xml(value)


# --- requests ------------------------------------------------------------------------------------


def _build(notification: Notification, **kwargs: Any) -> wns.Request:
    return wns.build_request(notification, access_token="EgAcAQ=", **kwargs)


def test_a_toast_request_has_the_bearer_token_type_and_asks_for_status() -> None:
    payload = wns.toast_xml("Hi", "there")
    request = _build(Notification(CHANNEL, NotificationType.TOAST, payload))
    assert request.method == "POST"
    assert request.url == CHANNEL
    assert request.headers == (
        ("Authorization", "Bearer EgAcAQ="),
        ("Content-Type", "text/xml"),
        ("X-WNS-Type", "wns/toast"),
        ("X-WNS-RequestForStatus", "true"),
    )
    assert request.body == payload


def test_every_optional_header_is_sent_when_set() -> None:
    request = _build(
        Notification(
            CHANNEL,
            NotificationType.TILE,
            b"<tile/>",
            cache_policy=CachePolicy.NO_CACHE,
            ttl=3600,
            tag="order42",
            group="orders",
            priority=Priority.LOW,
            request_for_status=False,
        )
    )
    assert request.headers == (
        ("Authorization", "Bearer EgAcAQ="),
        ("Content-Type", "text/xml"),
        ("X-WNS-Type", "wns/tile"),
        ("X-WNS-Cache-Policy", "no-cache"),
        ("X-WNS-TTL", "3600"),
        ("X-WNS-Tag", "order42"),
        ("X-WNS-Group", "orders"),
        ("X-WNS-PRIORITY", "3"),
    )


@pytest.mark.parametrize(
    ("kind", "content_type"),
    [
        (NotificationType.TOAST, "text/xml"),
        (NotificationType.TILE, "text/xml"),
        (NotificationType.BADGE, "text/xml"),
        (NotificationType.RAW, "application/octet-stream"),
    ],
)
def test_the_content_type_follows_the_notification_type(
    kind: NotificationType, content_type: str
) -> None:
    headers = dict(_build(Notification(CHANNEL, kind, b"<badge value='1'/>")).headers)
    assert headers["Content-Type"] == content_type
    assert headers["X-WNS-Type"] == str(kind)


def test_a_raw_payload_may_be_any_bytes() -> None:
    assert _build(Notification(CHANNEL, NotificationType.RAW, b"\xff\x00\xfe")).body == (
        b"\xff\x00\xfe"
    )


def test_a_payload_of_5000_bytes_is_sent_and_one_byte_more_is_refused() -> None:
    assert len(_build(Notification(CHANNEL, NotificationType.RAW, b"x" * 5000)).body) == 5000
    with pytest.raises(errors.InvalidRequest, match="5001 bytes") as refused:
        _build(Notification(CHANNEL, NotificationType.RAW, b"x" * 5001))
    assert refused.value.details == {"size": 5001, "limit": 5000}


@pytest.mark.parametrize(
    ("notification", "match"),
    [
        (Notification(CHANNEL, NotificationType.TOAST, b""), "needs a payload"),
        (Notification(CHANNEL, NotificationType.TOAST, b"<toast>\xff</toast>"), "UTF-8"),
        (Notification(CHANNEL, "wns/popup", b"x"), "type"),  # type: ignore[arg-type]
        (Notification(CHANNEL, NotificationType.RAW, b"x", ttl=0), "TTL"),
        (Notification(CHANNEL, NotificationType.RAW, b"x", ttl=-5), "TTL"),
        (Notification(CHANNEL, NotificationType.RAW, b"x", ttl=True), "TTL"),
        (Notification(CHANNEL, NotificationType.TILE, b"x", tag="a" * 17), "X-WNS-Tag"),
        (Notification(CHANNEL, NotificationType.TILE, b"x", tag="order-42"), "X-WNS-Tag"),
        (Notification(CHANNEL, NotificationType.TILE, b"x", tag=""), "X-WNS-Tag"),
        (Notification(CHANNEL, NotificationType.TOAST, b"x", group="a\r\nb"), "X-WNS-Group"),
        (Notification(CHANNEL, NotificationType.RAW, b"x", priority=5), "priority"),  # type: ignore[arg-type]
        (Notification(CHANNEL, NotificationType.RAW, b"x", cache_policy="keep"), "cache"),  # type: ignore[arg-type]
        (Notification("https://evil.test/", NotificationType.RAW, b"x"), "notify.windows.com"),
    ],
)
def test_a_notification_wns_would_refuse_is_refused_here(
    notification: Notification, match: str
) -> None:
    with pytest.raises(errors.InvalidRequest, match=match):
        _build(notification)


def test_a_tag_of_16_letters_and_digits_is_sent() -> None:
    request = _build(Notification(CHANNEL, NotificationType.TILE, b"<tile/>", tag="Ab3" * 5 + "x"))
    assert dict(request.headers)["X-WNS-Tag"] == "Ab3Ab3Ab3Ab3Ab3x"


@pytest.mark.parametrize("token", ["", "a b", "t\r\nX: 1"])
def test_an_unusable_access_token_is_refused(token: str) -> None:
    with pytest.raises(errors.InvalidRequest, match="access token"):
        wns.build_request(Notification(CHANNEL, NotificationType.RAW, b"x"), access_token=token)


# --- responses -----------------------------------------------------------------------------------


def _classify(status: int, headers: Any = None, **kwargs: Any) -> wns.Classification:
    return wns.classify_response(status, headers or {}, b"", now=NOW, **kwargs)


def test_a_200_received_is_delivered_with_the_message_id() -> None:
    outcome = _classify(
        200,
        {
            "X-WNS-Status": "received",
            "X-WNS-Msg-ID": "3CE38FF109E03A74",
            "X-WNS-DeviceConnectionStatus": "connected",
        },
    )
    assert outcome == outcomes.Delivered("3CE38FF109E03A74")


def test_a_200_without_a_status_header_is_delivered() -> None:
    assert _classify(200) == outcomes.Delivered(None)


def test_a_200_that_says_dropped_is_recorded_as_a_drop_and_keeps_the_channel() -> None:
    outcome = _classify(
        200,
        [
            ("x-wns-status", "dropped"),
            ("X-WNS-DeviceConnectionStatus", "disconnected"),
            ("X-WNS-Error-Description", "Device offline"),
        ],
    )
    assert outcome == outcomes.Rejected("dropped (device disconnected): Device offline")


def test_a_drop_without_details_still_says_dropped() -> None:
    assert _classify(200, {"X-WNS-Status": "Dropped"}) == outcomes.Rejected("dropped")


def test_a_200_that_says_channelthrottled_is_retried_after_continue_after() -> None:
    outcome = _classify(200, {"X-WNS-Status": "channelthrottled", "X-WNS-CONTINUE-AFTER": "90"})
    assert outcome == outcomes.RetryLater("channelthrottled", 90.0)


# Typed out from protocols.md §3's table, independently of the implementation.
STATUSES: list[tuple[int, type[outcomes.Outcome]]] = [
    (400, outcomes.Rejected),
    (403, outcomes.AuthFailed),
    (404, outcomes.TokenInvalid),
    (405, outcomes.Rejected),
    (406, outcomes.RetryLater),
    (410, outcomes.TokenInvalid),
    (413, outcomes.Rejected),
    (500, outcomes.RetryLater),
    (503, outcomes.RetryLater),
    (429, outcomes.RetryLater),
    (418, outcomes.Rejected),
    (302, outcomes.RetryLater),
]


@pytest.mark.parametrize(("status", "expected"), STATUSES)
def test_each_status_maps_to_its_outcome(status: int, expected: type[outcomes.Outcome]) -> None:
    outcome = _classify(status, {"X-WNS-Error-Description": "why"})
    assert type(outcome) is expected
    assert not isinstance(outcome, outcomes.Delivered | wns.RefreshAccessToken)
    assert outcome.reason.endswith(f"HTTP {status}: why")


def test_a_401_asks_for_a_new_access_token() -> None:
    assert _classify(401, {"X-WNS-Error-Description": "Token expired"}) == wns.RefreshAccessToken(
        "HTTP 401: Token expired"
    )


def test_a_401_with_a_freshly_fetched_token_is_an_auth_failure() -> None:
    outcome = _classify(401, retried_with_new_token=True)
    assert isinstance(outcome, outcomes.AuthFailed)
    assert "freshly fetched" in outcome.reason


@pytest.mark.parametrize(
    ("headers", "seconds"),
    [
        ({"X-WNS-CONTINUE-AFTER": "30"}, 30.0),
        ({"Retry-After": "12"}, 12.0),
        ({"X-WNS-CONTINUE-AFTER": "30", "Retry-After": "12"}, 30.0),
        ({"X-WNS-CONTINUE-AFTER": "soon"}, None),
        ({}, None),
    ],
)
@pytest.mark.parametrize("status", [406, 429, 503])
def test_a_throttled_or_failing_wns_is_retried_after_the_wait_it_names(
    status: int, headers: dict[str, str], seconds: float | None
) -> None:
    outcome = _classify(status, headers)
    assert isinstance(outcome, outcomes.RetryLater)
    assert outcome.after_seconds == seconds


def test_an_error_description_is_clipped_and_made_printable() -> None:
    outcome = _classify(400, {"X-WNS-Error-Description": "bad\x00header " + "x" * 500})
    assert isinstance(outcome, outcomes.Rejected)
    assert outcome.reason.isprintable()
    assert len(outcome.reason) <= len("HTTP 400: ") + wns.MAX_REASON_CHARS


@given(
    status=st.integers(min_value=100, max_value=599),
    wns_status=st.none() | st.sampled_from(["received", "dropped", "channelthrottled"]) | st.text(),
    continue_after=st.none() | st.text(max_size=12),
    retried=st.booleans(),
)
def test_any_answer_classifies_without_raising(
    status: int, wns_status: str | None, continue_after: str | None, retried: bool
) -> None:
    headers = {}
    if wns_status is not None:
        headers["X-WNS-Status"] = wns_status
    if continue_after is not None:
        headers["X-WNS-CONTINUE-AFTER"] = continue_after
    outcome = _classify(status, headers, retried_with_new_token=retried)
    assert isinstance(
        outcome,
        outcomes.Delivered
        | outcomes.RetryLater
        | outcomes.TokenInvalid
        | outcomes.Rejected
        | outcomes.AuthFailed
        | wns.RefreshAccessToken,
    )
    if retried:
        assert not isinstance(outcome, wns.RefreshAccessToken)
