"""Status webhooks, sans I/O: payload, signature, Retry-After, backoff and the SSRF guard."""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, strategies as st

from clarion.domain import outcomes
from clarion.domain.records import StatusChange
from clarion.domain.statuses import Status
from clarion.wire import webhooks
from clarion.wire.webhooks import UnsafeUrl, parse_networks, parse_url, refusal

AT = datetime(2026, 1, 2, 3, 4, 5, 678900, tzinfo=UTC)
SECRET = "s3cret-s3cret-s3cret"


def _change(change_id: int, source: Status | None, target: Status) -> StatusChange:
    return StatusChange(
        id=change_id,
        item_id=7,
        notification_id="n-1",
        event_id="e-1",
        user="ann",
        source=source,
        target=target,
        at=AT,
    )


def test_the_payload_names_the_webhook_and_lists_changes_in_order() -> None:
    body = webhooks.payload(
        "orders", [_change(5, Status.PENDING, Status.SENT), _change(9, Status.SENT, Status.READ)]
    )
    assert json.loads(body) == {
        "webhook": "orders",
        "changes": [
            {
                "id": 5,
                "item_id": 7,
                "notification_id": "n-1",
                "event_id": "e-1",
                "user": "ann",
                "from": "pending",
                "to": "sent",
                "at": "2026-01-02T03:04:05.678900Z",
            },
            {
                "id": 9,
                "item_id": 7,
                "notification_id": "n-1",
                "event_id": "e-1",
                "user": "ann",
                "from": "sent",
                "to": "read",
                "at": "2026-01-02T03:04:05.678900Z",
            },
        ],
    }


def test_a_change_created_in_its_status_has_no_from() -> None:
    body = webhooks.payload("h", [_change(1, None, Status.SUPPRESSED)])
    assert json.loads(body)["changes"][0]["from"] is None


def test_the_signature_is_the_documented_hmac_of_timestamp_dot_body() -> None:
    body = b'{"webhook":"h","changes":[]}'
    header = webhooks.signature(SECRET, body, timestamp=1_700_000_000)
    expected = hmac.new(SECRET.encode(), b"1700000000." + body, hashlib.sha256).hexdigest()
    assert header == f"t=1700000000,v1={expected}"


def test_a_signature_verifies_within_the_tolerance() -> None:
    body = b"{}"
    header = webhooks.signature(SECRET, body, timestamp=1000)
    assert webhooks.verify(SECRET, body, header, now=1000)
    assert webhooks.verify(SECRET, body, header, now=1000 + webhooks.SIGNATURE_TOLERANCE_SECONDS)


def test_an_old_signature_is_refused_as_a_replay() -> None:
    body = b"{}"
    header = webhooks.signature(SECRET, body, timestamp=1000)
    assert not webhooks.verify(
        SECRET, body, header, now=1001 + webhooks.SIGNATURE_TOLERANCE_SECONDS
    )


@pytest.mark.parametrize(
    ("secret", "body", "header"),
    [
        ("another-secret-entirely", b"{}", None),
        (SECRET, b'{"x":1}', None),
        (SECRET, b"{}", "t=1000"),
        (SECRET, b"{}", "v1=00"),
        (SECRET, b"{}", "garbage"),
        (SECRET, b"{}", ""),
    ],
)
def test_a_wrong_secret_body_or_header_does_not_verify(
    secret: str, body: bytes, header: str | None
) -> None:
    signed = webhooks.signature(SECRET, b"{}", timestamp=1000)
    assert not webhooks.verify(secret, body, signed if header is None else header, now=1000)


def test_any_of_several_v1_signatures_may_match() -> None:
    good = webhooks.signature(SECRET, b"{}", timestamp=1000)
    assert webhooks.verify(SECRET, b"{}", f"t=1000, v1={'0' * 64}, {good.split(',')[1]}", now=1000)


@given(st.binary(max_size=2000), st.integers(min_value=0, max_value=2**40))
def test_whatever_is_signed_verifies(body: bytes, timestamp: int) -> None:
    header = webhooks.signature(SECRET, body, timestamp=timestamp)
    assert webhooks.verify(SECRET, body, header, now=timestamp)


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (200, outcomes.Delivered()),
        (204, outcomes.Delivered()),
        (301, outcomes.RetryLater("HTTP 301: redirects are not followed")),
        (404, outcomes.RetryLater("HTTP 404")),
        (500, outcomes.RetryLater("HTTP 500")),
    ],
)
def test_only_a_2xx_delivers_a_batch(status: int, expected: outcomes.Outcome) -> None:
    assert webhooks.classify(status, retry_after=None) == expected


def test_a_429_carries_the_receivers_retry_after() -> None:
    assert webhooks.classify(429, retry_after=7.0) == outcomes.RetryLater("HTTP 429", 7.0)


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("120", 120.0),
        (" 3 ", 3.0),
        ("Fri, 02 Jan 2026 03:05:05 GMT", 60 - 0.6789),
        ("Thu, 01 Jan 2026 00:00:00 GMT", 0.0),
        ("soon", None),
        ("-5", None),
        (None, None),
    ],
)
def test_retry_after_is_read_as_seconds_or_an_http_date(
    value: str | None, seconds: float | None
) -> None:
    parsed = webhooks.parse_retry_after(value, now=AT)
    if seconds is None:
        assert parsed is None
    else:
        assert parsed == pytest.approx(seconds)


def test_the_backoff_doubles_up_to_the_cap() -> None:
    delays = [
        webhooks.retry_delay(n, base=2.0, cap=60.0, hint=None, jitter=0.999999)
        for n in range(1, 10)
    ]
    assert delays[:5] == pytest.approx([2.0, 4.0, 8.0, 16.0, 32.0], rel=1e-5)
    assert max(delays) == pytest.approx(60.0, rel=1e-5)
    assert delays == sorted(delays)


@given(
    failures=st.integers(min_value=1, max_value=200),
    jitter=st.floats(min_value=0.0, max_value=1.0, exclude_max=True),
)
def test_the_backoff_keeps_at_least_half_the_delay_and_never_exceeds_the_cap(
    failures: int, jitter: float
) -> None:
    delay = webhooks.retry_delay(failures, base=2.0, cap=600.0, hint=None, jitter=jitter)
    full = min(600.0, 2.0 * 2.0 ** (failures - 1))
    assert full / 2 <= delay <= full


def test_the_backoff_honours_retry_after_up_to_an_hour() -> None:
    assert webhooks.retry_delay(1, base=2.0, cap=600.0, hint=90.0, jitter=0.0) == 90.0
    assert webhooks.retry_delay(1, base=2.0, cap=600.0, hint=1e9, jitter=0.0) == (
        webhooks.MAX_RETRY_AFTER_SECONDS
    )
    # A hint shorter than the backoff does not hurry it.
    assert webhooks.retry_delay(5, base=2.0, cap=600.0, hint=1.0, jitter=0.0) == 16.0


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "127.255.0.9",
        "10.1.2.3",
        "172.16.0.1",
        "172.31.255.255",
        "192.168.1.1",
        "169.254.169.254",
        "100.64.0.1",
        "100.127.255.254",
        "0.0.0.0",  # noqa: S104 - an address to refuse, not to bind
        "224.0.0.1",
        "240.0.0.1",
        "255.255.255.255",
        "198.18.0.1",
        "::",
        "::1",
        "fc00::1",
        "fd12:3456::1",
        "fe80::1",
        "ff02::1",
        "::ffff:127.0.0.1",
        "::ffff:10.0.0.1",
        "::ffff:169.254.169.254",
        "64:ff9b::a9fe:a9fe",
        "2002:a00:1::1",
        "2001:db8::1",
        "::127.0.0.1",
    ],
)
def test_the_guard_refuses_addresses_that_are_not_public(address: str) -> None:
    assert refusal(ipaddress.ip_address(address)) is not None


@pytest.mark.parametrize(
    "address", ["93.184.216.34", "8.8.8.8", "2606:4700:4700::1111", "::ffff:8.8.8.8"]
)
def test_the_guard_lets_public_addresses_through(address: str) -> None:
    assert refusal(ipaddress.ip_address(address)) is None


def test_the_guard_names_the_reason() -> None:
    assert refusal(ipaddress.ip_address("169.254.169.254")) == (
        "link-local (cloud metadata lives here)"
    )
    assert refusal(ipaddress.ip_address("::ffff:127.0.0.1")) == "loopback"
    assert refusal(ipaddress.ip_address("2002:7f00:1::")) == "loopback, wrapped in 6to4"


def test_allowed_networks_let_the_operators_own_addresses_through() -> None:
    allowed = parse_networks(["127.0.0.1/32", "10.0.0.0/8"])
    assert refusal(ipaddress.ip_address("127.0.0.1"), allowed) is None
    assert refusal(ipaddress.ip_address("::ffff:127.0.0.1"), allowed) is None
    assert refusal(ipaddress.ip_address("10.9.8.7"), allowed) is None
    assert refusal(ipaddress.ip_address("127.0.0.2"), allowed) == "loopback"
    assert refusal(ipaddress.ip_address("::1"), allowed) == "loopback"


def test_an_https_url_with_a_name_is_parsed_for_resolution() -> None:
    target = parse_url("https://Hooks.Example.com/clarion?x=1", allow_http=False)
    assert (target.scheme, target.host, target.port, target.literal) == (
        "https",
        "hooks.example.com",
        443,
        None,
    )
    assert target.host_header == "hooks.example.com"
    assert parse_url("https://example.com:8443/", allow_http=False).host_header == (
        "example.com:8443"
    )


def test_a_literal_ipv6_address_keeps_its_brackets_in_the_host_header() -> None:
    target = parse_url("https://[2606:4700:4700::1111]:8443/", allow_http=False)
    assert target.literal == ipaddress.ip_address("2606:4700:4700::1111")
    assert target.host_header == "[2606:4700:4700::1111]:8443"


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("http://example.com/hook", "https"),
        ("ftp://example.com/hook", "https"),
        ("example.com/hook", "https"),
        ("https:///hook", "no host"),
        ("https://user:pw@example.com/", "credentials"),
        ("https://example.com/#frag", "fragment"),
        ("https://example.com:99999/", "parsed"),
        ("https://exa mple.com/", "blanks"),
        ("https://example.com/\n", "blanks"),
        ("https://169.254.169.254/latest/meta-data", "link-local"),
        ("https://10.0.0.1/", "private"),
        ("https://127.0.0.1:8443/", "loopback"),
        ("https://[::1]/", "loopback"),
        ("https://[::ffff:10.0.0.1]/", "private"),
        ("https://[fd00::1]/", "unique-local"),
        ("https://100.64.1.1/", "CGNAT"),
        ("https://2130706433/", "numeric"),
        ("https://0x7f.1/", "numeric"),
        ("https://127.1/", "numeric"),
        ("https://bücher.example/", "xn--"),
        ("https://under_score-.example!/", "valid name"),
        ("https://example.com/" + "a" * 2000, "longer"),
    ],
)
def test_unsafe_urls_are_refused_with_a_reason(url: str, why: str) -> None:
    with pytest.raises(UnsafeUrl, match=why):
        parse_url(url, allow_http=False)


def test_plain_http_needs_the_operators_leave_and_an_allowed_network() -> None:
    allowed = parse_networks(["127.0.0.1/32"])
    assert parse_url("http://127.0.0.1:9000/h", allow_http=True, allowed=allowed).port == 9000
    with pytest.raises(UnsafeUrl, match="https"):
        parse_url("http://127.0.0.1:9000/h", allow_http=False, allowed=allowed)
    with pytest.raises(UnsafeUrl, match="allowed networks"):
        parse_url("http://93.184.216.34/h", allow_http=True, allowed=allowed)
    # A name is checked once resolved, at dispatch.
    assert parse_url("http://receiver.internal/h", allow_http=True).literal is None


def test_every_resolved_address_must_pass() -> None:
    target = parse_url("https://rebind.example/", allow_http=False)
    public, private = ipaddress.ip_address("8.8.8.8"), ipaddress.ip_address("10.0.0.1")
    assert webhooks.vet_addresses(target, [public], ()) is None
    why = webhooks.vet_addresses(target, [public, private], ())
    assert why is not None
    assert "10.0.0.1" in why
    assert webhooks.vet_addresses(target, [], ()) == "rebind.example resolves to no address"


def test_http_to_a_name_passes_only_when_every_address_is_allowed() -> None:
    allowed = parse_networks(["127.0.0.1/32"])
    target = parse_url("http://localhost:9000/", allow_http=True, allowed=allowed)
    loopback = ipaddress.ip_address("127.0.0.1")
    assert webhooks.vet_addresses(target, [loopback], allowed) is None
    assert webhooks.vet_addresses(target, [ipaddress.ip_address("8.8.8.8")], allowed) == (
        "plain http is allowed only to the operator's allowed networks"
    )


def test_the_timestamp_is_written_in_utc_whatever_the_zone() -> None:
    east = AT.astimezone(ZoneInfo("Asia/Tokyo"))
    change = StatusChange(1, 1, "n", "e", "u", None, Status.SENT, east + timedelta(0))
    assert webhooks.change_json(change)["at"] == "2026-01-02T03:04:05.678900Z"
