"""APNs, sans I/O: requests, payload limits, provider tokens, response classes and GOAWAY."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta, timezone
from typing import Any
from uuid import UUID

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from hypothesis import given, strategies as st

from clarion.domain import errors, outcomes
from clarion.wire import apns
from clarion.wire.apns import Environment, Expiration, Notification, Priority, PushType

TOKEN = "a1b2c3d4" * 8
MESSAGE_ID = UUID("123E4567-E89B-12D3-A456-426614174000")
AT = datetime(2026, 3, 4, 5, 6, 7, tzinfo=UTC)
JWT = "eyJhbGciOiJFUzI1NiJ9.eyJpc3MiOiJ4In0.c2ln"


def _request(notification: Notification, *, authorization: str | None = JWT) -> apns.Request:
    return apns.build_request(
        notification, environment=Environment.PRODUCTION, authorization=authorization
    )


def _headers(request: apns.Request) -> dict[str, str]:
    return dict(request.headers)


def _padded(push_type: PushType, size: int, char: str = "a") -> Notification:
    """A notification whose body is `size` bytes (or the next size `char` can reach)."""
    bare = Notification(TOKEN, "com.example.app", push_type=push_type, custom_data={"p": ""})
    overhead = len(apns.encode_payload(bare))
    count = math.ceil((size - overhead) / len(char.encode()))
    return Notification(
        TOKEN, "com.example.app", push_type=push_type, custom_data={"p": char * count}
    )


# --- requests ----------------------------------------------------------------------------------


def test_an_alert_request_has_pseudo_headers_first_then_the_apns_headers_and_a_compact_body() -> (
    None
):
    request = _request(
        Notification(
            TOKEN,
            "com.example.app",
            apns_id=MESSAGE_ID,
            title="Hi",
            subtitle="there",
            body="Ünïcode ✓",
            badge=3,
            sound="default",
            thread_id="t-1",
            category="MSG",
            mutable_content=True,
            custom_data={"order": 42},
        )
    )
    assert request.method == "POST"
    assert (request.host, request.port) == ("api.push.apple.com", 443)
    assert request.path == f"/3/device/{TOKEN}"
    assert request.headers == (
        (":method", "POST"),
        (":scheme", "https"),
        (":authority", "api.push.apple.com"),
        (":path", f"/3/device/{TOKEN}"),
        ("authorization", f"bearer {JWT}"),
        ("apns-topic", "com.example.app"),
        ("apns-push-type", "alert"),
        ("apns-priority", "10"),
        ("apns-id", "123e4567-e89b-12d3-a456-426614174000"),
    )
    assert (
        request.body
        == (
            '{"aps":{"alert":{"title":"Hi","subtitle":"there","body":"Ünïcode ✓"},"badge":3,'
            '"sound":"default","thread-id":"t-1","category":"MSG","mutable-content":1},"order":42}'
        ).encode()
    )
    assert {":path", "authorization"} <= request.never_indexed


def test_certificate_auth_sends_no_authorization_header() -> None:
    request = _request(Notification(TOKEN, "com.example.app", body="x"), authorization=None)
    assert "authorization" not in _headers(request)


def test_certificate_auth_still_names_the_topic() -> None:
    # Optional with a single-topic certificate (it defaults to the subject's UID), required
    # with a multi-topic one [AP-resp, MissingTopic]: always sent, so either kind works.
    request = _request(
        Notification(TOKEN, "com.example.app", push_type=PushType.VOIP, body="x"),
        authorization=None,
    )
    assert _headers(request)["apns-topic"] == "com.example.app.voip"


def test_the_sandbox_environment_uses_the_sandbox_host() -> None:
    request = apns.build_request(
        Notification(TOKEN, "com.example.app", body="x"),
        environment=Environment.SANDBOX,
        authorization=JWT,
    )
    assert request.host == "api.sandbox.push.apple.com"
    assert _headers(request)[":authority"] == "api.sandbox.push.apple.com"


def test_a_background_push_defaults_to_priority_5_and_sets_content_available() -> None:
    request = _request(
        Notification(TOKEN, "com.example.app", push_type=PushType.BACKGROUND, custom_data={"k": 1})
    )
    headers = _headers(request)
    assert headers["apns-push-type"] == "background"
    assert headers["apns-priority"] == "5"
    assert headers["apns-topic"] == "com.example.app"
    assert json.loads(request.body) == {"aps": {"content-available": 1}, "k": 1}


@pytest.mark.parametrize("priority", [Priority.IMMEDIATE, Priority.PRIORITIZE_POWER])
def test_a_background_push_refuses_any_priority_but_5(priority: Priority) -> None:
    with pytest.raises(errors.InvalidRequest, match="priority 5"):
        _request(
            Notification(TOKEN, "com.example.app", push_type=PushType.BACKGROUND, priority=priority)
        )


def test_a_background_push_refuses_an_alert() -> None:
    with pytest.raises(errors.InvalidRequest, match="background"):
        _request(Notification(TOKEN, "com.example.app", push_type=PushType.BACKGROUND, body="x"))


@pytest.mark.parametrize("priority", [10, 5, 1])
def test_an_alert_push_sends_the_priority_asked_for(priority: int) -> None:
    request = _request(
        Notification(TOKEN, "com.example.app", body="x", priority=Priority(priority))
    )
    assert _headers(request)["apns-priority"] == str(priority)


def test_a_priority_apns_does_not_know_is_refused() -> None:
    with pytest.raises(errors.InvalidRequest, match="priority"):
        _request(Notification(TOKEN, "com.example.app", body="x", priority=7))  # type: ignore[arg-type]


# Typed out from protocols.md §1, independently of apns.TOPIC_SUFFIXES.
TOPICS = [
    ("alert", "com.example.app"),
    ("background", "com.example.app"),
    ("voip", "com.example.app.voip"),
    ("complication", "com.example.app.complication"),
    ("fileprovider", "com.example.app.pushkit.fileprovider"),
    ("mdm", "com.example.app"),
    ("location", "com.example.app.location-query"),
    ("liveactivity", "com.example.app.push-type.liveactivity"),
    ("pushtotalk", "com.example.app.voip-ptt"),
    ("widgets", "com.example.app.push-type.widgets"),
    ("controls", "com.example.app.push-type.controls"),
]


@pytest.mark.parametrize(("push_type", "topic"), TOPICS)
def test_each_push_type_gets_its_topic_suffix(push_type: str, topic: str) -> None:
    request = _request(
        Notification(TOKEN, "com.example.app", push_type=PushType(push_type), custom_data={"k": 1})
    )
    assert _headers(request)["apns-topic"] == topic
    assert _headers(request)["apns-push-type"] == push_type


def test_every_push_type_in_the_spec_is_known() -> None:
    assert {str(t) for t in PushType} == {push_type for push_type, _ in TOPICS}


@pytest.mark.parametrize("push_type", [PushType.LOCATION, PushType.LIVEACTIVITY])
def test_location_and_live_activity_pushes_need_token_auth(push_type: PushType) -> None:
    with pytest.raises(errors.InvalidRequest, match="token auth"):
        _request(Notification(TOKEN, "com.example.app", push_type=push_type), authorization=None)


def test_an_expiration_is_sent_as_unix_seconds() -> None:
    expires = datetime(2026, 3, 4, 6, 6, 7, 999_999, tzinfo=timezone(timedelta(hours=1)))
    request = _request(Notification(TOKEN, "com.example.app", body="x", expiration=expires))
    assert _headers(request)["apns-expiration"] == str(int(expires.timestamp()))
    assert _headers(request)["apns-expiration"] == "1772600767"


def test_expiring_once_is_sent_as_zero() -> None:
    request = _request(Notification(TOKEN, "com.example.app", body="x", expiration=Expiration.ONCE))
    assert _headers(request)["apns-expiration"] == "0"


def test_no_expiration_no_collapse_id_and_no_apns_id_send_no_such_headers() -> None:
    headers = _headers(_request(Notification(TOKEN, "com.example.app", body="x")))
    assert not {"apns-expiration", "apns-collapse-id", "apns-id"} & set(headers)


@pytest.mark.parametrize(
    "expires",
    [datetime(2026, 1, 1), datetime(1970, 1, 1, tzinfo=UTC)],
)
def test_a_naive_or_pre_1970_expiration_is_refused(expires: datetime) -> None:
    with pytest.raises(errors.InvalidRequest, match="expiration"):
        _request(Notification(TOKEN, "com.example.app", body="x", expiration=expires))


def test_a_collapse_id_of_64_bytes_is_sent() -> None:
    collapse_id = "é" * 32
    request = _request(Notification(TOKEN, "com.example.app", body="x", collapse_id=collapse_id))
    assert _headers(request)["apns-collapse-id"] == collapse_id


@pytest.mark.parametrize("collapse_id", ["a" * 65, "é" * 32 + "a", "", "a\r\nb"])
def test_a_collapse_id_over_64_bytes_empty_or_with_control_characters_is_refused(
    collapse_id: str,
) -> None:
    with pytest.raises(errors.InvalidRequest, match="collapse id"):
        _request(Notification(TOKEN, "com.example.app", body="x", collapse_id=collapse_id))


@pytest.mark.parametrize("token", ["", "abc", "zz" * 32, TOKEN + " ", "../" + TOKEN])
def test_a_device_token_that_is_not_hex_is_refused(token: str) -> None:
    with pytest.raises(errors.InvalidRequest, match="device token"):
        _request(Notification(token, "com.example.app", body="x"))


def test_a_device_token_of_any_even_length_is_taken() -> None:
    assert _request(Notification("ABCDEF" * 20, "com.example.app", body="x")).path.endswith(
        "ABCDEF" * 20
    )


@pytest.mark.parametrize("topic", ["", "com.example app", "com.example\napp", "com.exämple"])
def test_a_topic_that_is_not_a_bundle_id_is_refused(topic: str) -> None:
    with pytest.raises(errors.InvalidRequest, match="topic"):
        _request(Notification(TOKEN, topic, body="x"))


def test_custom_data_may_not_use_the_aps_key() -> None:
    with pytest.raises(errors.InvalidRequest, match="'aps'"):
        _request(Notification(TOKEN, "com.example.app", custom_data={"aps": {}}))


def test_aps_extra_adds_keys_but_may_not_repeat_a_field() -> None:
    request = _request(
        Notification(
            TOKEN,
            "com.example.app",
            body="x",
            aps_extra={"interruption-level": "time-sensitive"},
        )
    )
    assert json.loads(request.body)["aps"]["interruption-level"] == "time-sensitive"
    with pytest.raises(errors.InvalidRequest, match="repeats alert"):
        _request(Notification(TOKEN, "com.example.app", body="x", aps_extra={"alert": "y"}))


@pytest.mark.parametrize("data", [{"n": math.nan}, {"n": math.inf}, {"o": object()}])
def test_custom_data_json_cannot_express_is_refused(data: dict[str, Any]) -> None:
    with pytest.raises(errors.InvalidRequest, match="not JSON"):
        _request(Notification(TOKEN, "com.example.app", custom_data=data))


def test_a_negative_badge_is_refused() -> None:
    with pytest.raises(errors.InvalidRequest, match="badge"):
        _request(Notification(TOKEN, "com.example.app", badge=-1))


# --- size limits -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("push_type", "limit"),
    [(PushType.ALERT, 4096), (PushType.BACKGROUND, 4096), (PushType.VOIP, 5120)],
)
def test_a_body_of_exactly_the_limit_is_sent_and_one_byte_more_is_refused(
    push_type: PushType, limit: int
) -> None:
    assert len(_request(_padded(push_type, limit)).body) == limit
    with pytest.raises(errors.InvalidRequest, match=f"{limit + 1} bytes") as refused:
        _request(_padded(push_type, limit + 1))
    assert refused.value.details == {"size": limit + 1, "limit": limit}


def test_a_voip_body_between_4096_and_5120_bytes_is_sent() -> None:
    assert len(_request(_padded(PushType.VOIP, 5000)).body) == 5000
    with pytest.raises(errors.InvalidRequest):
        _request(_padded(PushType.ALERT, 5000))


@given(
    push_type=st.sampled_from(list(PushType)),
    over=st.integers(min_value=1, max_value=10_000),
    char=st.sampled_from(["a", "é", "€", "😀", '"', "\n"]),
)
def test_bodies_over_the_limit_are_always_refused(
    push_type: PushType, over: int, char: str
) -> None:
    limit = 5120 if push_type is PushType.VOIP else 4096
    notification = _padded(push_type, limit + over, char)
    with pytest.raises(errors.InvalidRequest, match="bytes"):
        _request(notification)


_json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(), children, max_size=4)
    ),
    max_leaves=20,
)


@given(data=st.dictionaries(st.text().filter(lambda key: key != "aps"), _json_values, max_size=6))
def test_arbitrary_custom_data_round_trips_into_the_body_or_is_refused_as_too_large(
    data: dict[str, Any],
) -> None:
    notification = Notification(TOKEN, "com.example.app", body="hello", custom_data=data)
    expected = {"aps": {"alert": {"body": "hello"}}, **data}
    size = len(json.dumps(expected, separators=(",", ":"), ensure_ascii=False).encode())
    if size > 4096:
        with pytest.raises(errors.InvalidRequest, match="bytes"):
            _request(notification)
        return
    body = _request(notification).body
    assert len(body) == size
    assert json.loads(body) == expected


# --- provider token ----------------------------------------------------------------------------

KEY_ID = "ABC123DEFG"
TEAM_ID = "DEF123GHIJ"


def test_the_provider_token_header_is_es256_with_the_key_id() -> None:
    assert apns.provider_token_header(KEY_ID) == {"alg": "ES256", "kid": KEY_ID}


def test_the_provider_token_claims_are_the_team_and_the_issue_time_in_seconds() -> None:
    issued = datetime(2026, 3, 4, 5, 6, 7, 890_000, tzinfo=UTC)
    assert apns.provider_token_claims(TEAM_ID, issued) == {"iss": TEAM_ID, "iat": 1772600767}


@pytest.mark.parametrize("bad", ["", "ABC123DEF", "ABC123DEFGH", "ABC-23DEFG"])
def test_a_key_or_team_id_that_is_not_10_characters_is_refused(bad: str) -> None:
    with pytest.raises(errors.InvalidRequest, match="key id"):
        apns.provider_token_header(bad)
    with pytest.raises(errors.InvalidRequest, match="team id"):
        apns.provider_token_claims(bad, AT)


def test_a_naive_issue_time_is_refused() -> None:
    with pytest.raises(errors.InvalidRequest, match="timezone"):
        apns.provider_token_claims(TEAM_ID, datetime(2026, 1, 1))


def test_a_signed_provider_token_verifies_with_the_public_key_and_has_only_alg_and_kid() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    token = apns.sign_provider_token(pem.decode(), KEY_ID, TEAM_ID, AT)
    assert jwt.get_unverified_header(token) == {"alg": "ES256", "kid": KEY_ID}
    claims = jwt.decode(
        token, key.public_key(), algorithms=["ES256"], options={"verify_iat": False}
    )
    assert claims == {"iss": TEAM_ID, "iat": int(AT.timestamp())}


def test_a_signing_key_that_is_not_p256_is_refused() -> None:
    rsa_pem = rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    with pytest.raises(errors.InvalidRequest, match="P-256"):
        apns.sign_provider_token(rsa_pem, KEY_ID, TEAM_ID, AT)
    with pytest.raises(errors.InvalidRequest, match="PEM"):
        apns.sign_provider_token(b"not a key", KEY_ID, TEAM_ID, AT)


@pytest.mark.parametrize(
    ("minutes", "refresh"),
    [(-5, False), (0, False), (19, False), (40, False), (49.9, False), (50, True), (61, True)],
)
def test_a_provider_token_is_refreshed_at_50_minutes(minutes: float, refresh: bool) -> None:
    assert apns.needs_refresh(AT, AT + timedelta(minutes=minutes)) is refresh


@pytest.mark.parametrize(
    ("minutes", "refresh"), [(0, False), (19.9, False), (20, True), (30, True)]
)
def test_a_token_apns_called_expired_is_refreshed_but_never_within_20_minutes(
    minutes: float, refresh: bool
) -> None:
    assert apns.needs_refresh(AT, AT + timedelta(minutes=minutes), expired_by_apns=True) is refresh


# --- responses ---------------------------------------------------------------------------------

# Typed out from protocols.md §1's reason table, independently of the implementation.
REASONS: list[tuple[int, str, type[outcomes.Outcome]]] = [
    (400, "BadDeviceToken", outcomes.TokenInvalid),
    (400, "DeviceTokenNotForTopic", outcomes.Rejected),
    (400, "BadCollapseId", outcomes.Rejected),
    (400, "BadExpirationDate", outcomes.Rejected),
    (400, "BadMessageId", outcomes.Rejected),
    (400, "BadPriority", outcomes.Rejected),
    (400, "BadTopic", outcomes.Rejected),
    (400, "DuplicateHeaders", outcomes.Rejected),
    (400, "InvalidPushType", outcomes.Rejected),
    (400, "MissingDeviceToken", outcomes.Rejected),
    (400, "MissingTopic", outcomes.Rejected),
    (400, "PayloadEmpty", outcomes.Rejected),
    (400, "TopicDisallowed", outcomes.Rejected),
    (400, "IdleTimeout", outcomes.RetryLater),
    (403, "ExpiredProviderToken", outcomes.RetryLater),
    (403, "InvalidProviderToken", outcomes.AuthFailed),
    (403, "MissingProviderToken", outcomes.AuthFailed),
    (403, "BadCertificate", outcomes.AuthFailed),
    (403, "BadCertificateEnvironment", outcomes.AuthFailed),
    (403, "Forbidden", outcomes.AuthFailed),
    (403, "UnrelatedKeyIdInToken", outcomes.AuthFailed),
    (403, "BadEnvironmentKeyIdInToken", outcomes.AuthFailed),
    (404, "BadPath", outcomes.Rejected),
    (405, "MethodNotAllowed", outcomes.Rejected),
    (410, "Unregistered", outcomes.TokenInvalid),
    (410, "ExpiredToken", outcomes.TokenInvalid),
    (413, "PayloadTooLarge", outcomes.Rejected),
    (429, "TooManyRequests", outcomes.RetryLater),
    (429, "TooManyProviderTokenUpdates", outcomes.RetryLater),
    (500, "InternalServerError", outcomes.RetryLater),
    (503, "ServiceUnavailable", outcomes.RetryLater),
    (503, "Shutdown", outcomes.RetryLater),
]

NEVER_RETRIED = {
    "BadDeviceToken",
    "DeviceTokenNotForTopic",
    "Forbidden",
    "ExpiredToken",
    "Unregistered",
    "PayloadTooLarge",
}


def _error(reason: str, **extra: object) -> bytes:
    return json.dumps({"reason": reason, **extra}).encode()


@pytest.mark.parametrize(
    ("status", "reason", "expected"), REASONS, ids=[f"{s}-{r}" for s, r, _ in REASONS]
)
def test_each_reason_in_the_table_maps_to_its_outcome(
    status: int, reason: str, expected: type[outcomes.Outcome]
) -> None:
    body = _error(reason, timestamp=1_700_000_000_000) if status == 410 else _error(reason)
    outcome = apns.classify_response(
        status, {"apns-id": str(MESSAGE_ID)}, body, token_registered_at=None
    )
    assert type(outcome) is expected
    assert not isinstance(outcome, outcomes.Delivered)
    assert outcome.reason.startswith(reason)
    if reason in NEVER_RETRIED:
        assert not isinstance(outcome, outcomes.RetryLater)


@pytest.mark.parametrize(
    "reason", ["DeviceTokenNotForTopic", "BadCertificateEnvironment", "BadEnvironmentKeyIdInToken"]
)
def test_a_topic_or_environment_mismatch_is_named_and_never_retires_the_token(reason: str) -> None:
    status = 400 if reason == "DeviceTokenNotForTopic" else 403
    outcome = apns.classify_response(status, {}, _error(reason), token_registered_at=None)
    assert not isinstance(outcome, outcomes.TokenInvalid | outcomes.Delivered)
    assert "mismatch" in outcome.reason or "another app" in outcome.reason


def test_a_200_is_delivered_with_the_response_apns_id() -> None:
    outcome = apns.classify_response(
        200,
        [("APNS-ID", str(MESSAGE_ID)), ("apns-unique-id", "u-1")],
        b"",
        token_registered_at=None,
    )
    assert outcome == outcomes.Delivered(reference=str(MESSAGE_ID))


def test_a_200_without_an_apns_id_is_still_delivered() -> None:
    assert apns.classify_response(200, {}, b"", token_registered_at=None) == outcomes.Delivered()


STAMP_MS = 1_772_600_767_123
STAMP = datetime(2026, 3, 4, 5, 6, 7, 123_000, tzinfo=UTC)


@pytest.mark.parametrize("reason", ["Unregistered", "ExpiredToken"])
def test_a_410_retires_a_token_registered_before_its_timestamp(reason: str) -> None:
    outcome = apns.classify_response(
        410,
        {},
        _error(reason, timestamp=STAMP_MS),
        token_registered_at=STAMP - timedelta(days=3),
    )
    assert outcome == outcomes.TokenInvalid(reason)


@pytest.mark.parametrize("reason", ["Unregistered", "ExpiredToken"])
def test_a_410_keeps_a_token_registered_again_after_its_timestamp(reason: str) -> None:
    outcome = apns.classify_response(
        410,
        {},
        _error(reason, timestamp=STAMP_MS),
        token_registered_at=STAMP + timedelta(milliseconds=1),
    )
    assert isinstance(outcome, outcomes.Rejected)
    assert outcome.reason.startswith(reason)
    assert "registered again" in outcome.reason


def test_a_410_retires_a_token_registered_at_the_very_millisecond_of_its_timestamp() -> None:
    outcome = apns.classify_response(
        410, {}, _error("Unregistered", timestamp=STAMP_MS), token_registered_at=STAMP
    )
    assert isinstance(outcome, outcomes.TokenInvalid)


@pytest.mark.parametrize(
    "body", [_error("Unregistered"), _error("Unregistered", timestamp="soon"), b"<html>", b""]
)
def test_a_410_without_a_usable_timestamp_retires_the_token(body: bytes) -> None:
    outcome = apns.classify_response(410, {}, body, token_registered_at=STAMP)
    assert isinstance(outcome, outcomes.TokenInvalid)


@pytest.mark.parametrize(
    ("status", "reason", "seconds"),
    [(429, "TooManyRequests", 7.0), (503, "ServiceUnavailable", 120.0), (400, "IdleTimeout", 3.0)],
)
def test_retry_after_is_honoured(status: int, reason: str, seconds: float) -> None:
    outcome = apns.classify_response(
        status, {"Retry-After": str(int(seconds))}, _error(reason), token_registered_at=None
    )
    assert outcome == outcomes.RetryLater(reason, seconds)


def test_without_retry_after_429_waits_a_minute_and_5xx_follows_the_backoff() -> None:
    assert apns.classify_response(
        429, {}, _error("TooManyRequests"), token_registered_at=None
    ) == outcomes.RetryLater("TooManyRequests", 60.0)
    assert apns.classify_response(
        500, {}, _error("InternalServerError"), token_registered_at=None
    ) == outcomes.RetryLater("InternalServerError", None)


@pytest.mark.parametrize("value", ["soon", "-5", "1.5", "Wed, 21 Oct 2026 07:28:00 GMT", ""])
def test_a_retry_after_that_is_not_delta_seconds_is_ignored(value: str) -> None:
    outcome = apns.classify_response(
        429, {"retry-after": value}, _error("TooManyRequests"), token_registered_at=None
    )
    assert outcome == outcomes.RetryLater("TooManyRequests", 60.0)


def test_retry_after_does_not_make_a_refusal_retryable() -> None:
    outcome = apns.classify_response(
        400, {"retry-after": "5"}, _error("BadTopic"), token_registered_at=None
    )
    assert outcome == outcomes.Rejected("BadTopic")


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (400, outcomes.Rejected),
        (403, outcomes.AuthFailed),
        (404, outcomes.Rejected),
        (405, outcomes.Rejected),
        (410, outcomes.TokenInvalid),
        (413, outcomes.Rejected),
        (429, outcomes.RetryLater),
        (500, outcomes.RetryLater),
        (502, outcomes.RetryLater),
        (503, outcomes.RetryLater),
    ],
)
@pytest.mark.parametrize("body", [b"", b"<html>oops</html>", b"[1,2]", b'{"reason": 5}', b"\xff"])
def test_an_unreadable_body_is_classified_by_status_alone(
    status: int, expected: type[outcomes.Outcome], body: bytes
) -> None:
    outcome = apns.classify_response(status, {}, body, token_registered_at=None)
    assert type(outcome) is expected
    assert not isinstance(outcome, outcomes.Delivered)
    assert outcome.reason.startswith(f"HTTP {status}")


@given(status=st.integers(min_value=100, max_value=599), body=st.binary(max_size=200))
def test_any_answer_classifies_without_raising(status: int, body: bytes) -> None:
    outcome = apns.classify_response(status, {}, body, token_registered_at=STAMP)
    assert isinstance(
        outcome,
        outcomes.Delivered
        | outcomes.RetryLater
        | outcomes.TokenInvalid
        | outcomes.Rejected
        | outcomes.AuthFailed,
    )


# --- GOAWAY ------------------------------------------------------------------------------------


@pytest.mark.parametrize("reason", ["Shutdown", "IdleTimeout", "BadCertificateEnvironment"])
def test_goaway_debug_data_gives_its_reason(reason: str) -> None:
    assert apns.parse_goaway_reason(json.dumps({"reason": reason}).encode()) == reason


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"Shutdown",
        b"\x00\xff\xfe",
        b"[]",
        b'"Shutdown"',
        b'{"reason": null}',
        b'{"reason": ""}',
        b'{"why": "x"}',
        b"[" * 10_000,
    ],
)
def test_goaway_debug_data_without_a_json_reason_gives_none(data: bytes) -> None:
    assert apns.parse_goaway_reason(data) is None


@given(st.binary(max_size=300))
def test_goaway_parsing_never_raises(data: bytes) -> None:
    reason = apns.parse_goaway_reason(data)
    assert reason is None or (isinstance(reason, str) and reason)
