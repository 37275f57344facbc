"""FCM HTTP v1, sans I/O: service accounts, OAuth, messages, limits and answers."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from hypothesis import given, strategies as st

from clarion.domain import errors, outcomes
from clarion.wire import fcm
from clarion.wire.fcm import (
    AndroidConfig,
    AndroidNotification,
    AndroidPriority,
    ApnsConfig,
    Message,
    Notification,
    WebpushConfig,
)

NOW = datetime(2026, 3, 4, 5, 6, 7, tzinfo=UTC)
TOKEN = "fGw3kP0sT9e:APA91bH" + "x" * 140
RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
RSA_PEM = RSA_KEY.private_bytes(
    serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
).decode()
ACCOUNT_JSON: dict[str, Any] = {
    "type": "service_account",
    "project_id": "clarion-test",
    "private_key_id": "0123456789abcdef",
    "private_key": RSA_PEM,
    "client_email": "sender@clarion-test.iam.gserviceaccount.com",
    "client_id": "1234567890",
    "auth_uri": "https://accounts.google.com/o/oauth2/auth",
    "token_uri": "https://oauth2.googleapis.com/token",
}


def _account(**changes: Any) -> fcm.ServiceAccount:
    return fcm.parse_service_account({**ACCOUNT_JSON, **changes})


# --- service account ---------------------------------------------------------------------------


@pytest.mark.parametrize("form", ["text", "bytes", "mapping"])
def test_a_service_account_file_parses_in_any_form(form: str) -> None:
    text = json.dumps(ACCOUNT_JSON)
    document: Any = {"text": text, "bytes": text.encode(), "mapping": ACCOUNT_JSON}[form]
    account = fcm.parse_service_account(document)
    assert account == fcm.ServiceAccount(
        project_id="clarion-test",
        client_email="sender@clarion-test.iam.gserviceaccount.com",
        private_key=RSA_PEM,
        token_uri="https://oauth2.googleapis.com/token",
        private_key_id="0123456789abcdef",
    )


def test_the_private_key_never_shows_in_a_repr() -> None:
    assert "PRIVATE KEY" not in repr(_account())


def test_a_file_without_a_key_id_has_none() -> None:
    document = {k: v for k, v in ACCOUNT_JSON.items() if k != "private_key_id"}
    assert fcm.parse_service_account(document).private_key_id is None


EC_PEM = (
    ec.generate_private_key(ec.SECP256R1())
    .private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    .decode()
)


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"type": "authorized_user"}, "service_account"),
        ({"type": None}, "service_account"),
        ({"project_id": ""}, "project_id"),
        ({"project_id": None}, "project_id"),
        ({"project_id": "Bad/Project"}, "project id"),
        ({"client_email": None}, "client_email"),
        ({"client_email": "no-at-sign"}, "address"),
        ({"private_key": None}, "private_key"),
        ({"private_key": "-----BEGIN PRIVATE KEY-----\nxx\n-----END PRIVATE KEY-----"}, "PEM"),
        ({"private_key": EC_PEM}, "RSA"),
        ({"token_uri": None}, "token_uri"),
        ({"token_uri": "http://oauth2.googleapis.com/token"}, "https"),
        ({"token_uri": "https://user@oauth2.googleapis.com/token"}, "https"),
        ({"token_uri": "oauth2.googleapis.com/token"}, "https"),
        ({"private_key_id": 5}, "private_key_id"),
    ],
)
def test_a_service_account_file_with_a_bad_field_is_refused(
    changes: dict[str, Any], match: str
) -> None:
    with pytest.raises(errors.InvalidRequest, match=match):
        _account(**changes)


@pytest.mark.parametrize("document", ["not json", "[1, 2]", b"\xff", "null"])
def test_a_service_account_file_that_is_not_a_json_object_is_refused(document: Any) -> None:
    with pytest.raises(errors.InvalidRequest, match="JSON"):
        fcm.parse_service_account(document)


def test_an_http_token_uri_is_taken_only_when_allowed_for_an_emulator() -> None:
    document = {**ACCOUNT_JSON, "token_uri": "http://127.0.0.1:8085/token"}
    account = fcm.parse_service_account(document, allow_http=True)
    assert account.token_uri == "http://127.0.0.1:8085/token"


# --- OAuth ---------------------------------------------------------------------------------------


def test_the_assertion_claims_name_the_account_scope_audience_and_one_hour() -> None:
    assert fcm.assertion_claims(_account(), now=NOW) == {
        "iss": "sender@clarion-test.iam.gserviceaccount.com",
        "scope": "https://www.googleapis.com/auth/firebase.messaging",
        "aud": "https://oauth2.googleapis.com/token",
        "iat": int(NOW.timestamp()),
        "exp": int(NOW.timestamp()) + 3600,
    }


def test_the_audience_is_the_files_token_uri() -> None:
    account = _account(token_uri="https://emulator.test/token")
    assert fcm.assertion_claims(account, now=NOW)["aud"] == "https://emulator.test/token"


def test_the_assertion_is_rs256_signed_with_the_key_id_in_its_header() -> None:
    assertion = fcm.sign_assertion(_account(), now=NOW)
    assert jwt.get_unverified_header(assertion) == {
        "alg": "RS256",
        "typ": "JWT",
        "kid": "0123456789abcdef",
    }
    claims = jwt.decode(
        assertion,
        RSA_KEY.public_key(),
        algorithms=["RS256"],
        audience="https://oauth2.googleapis.com/token",
        options={"verify_exp": False, "verify_iat": False},
    )
    assert claims == fcm.assertion_claims(_account(), now=NOW)


def test_an_assertion_without_a_key_id_has_no_kid() -> None:
    document = {k: v for k, v in ACCOUNT_JSON.items() if k != "private_key_id"}
    assertion = fcm.sign_assertion(fcm.parse_service_account(document), now=NOW)
    assert "kid" not in jwt.get_unverified_header(assertion)


def test_an_assertion_needs_a_timezone_aware_time() -> None:
    with pytest.raises(errors.InvalidRequest, match="timezone"):
        fcm.sign_assertion(_account(), now=datetime(2026, 1, 1))


def test_the_token_request_is_the_jwt_bearer_grant_form() -> None:
    body = fcm.token_request_body("aaa.bbb.ccc")
    assert body == (
        b"grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer&assertion=aaa.bbb.ccc"
    )
    assert parse_qs(body.decode(), strict_parsing=True) == {
        "grant_type": ["urn:ietf:params:oauth:grant-type:jwt-bearer"],
        "assertion": ["aaa.bbb.ccc"],
    }
    assert fcm.TOKEN_REQUEST_CONTENT_TYPE == "application/x-www-form-urlencoded"


def _token_answer(status: int, document: Any, headers: Any = None) -> Any:
    body = document if isinstance(document, bytes) else json.dumps(document).encode()
    return fcm.classify_token_response(status, headers or {}, body, now=NOW)


def test_a_token_answer_gives_a_token_refreshed_five_minutes_before_expiry() -> None:
    token = _token_answer(
        200, {"access_token": "ya29.abc", "expires_in": 3599, "token_type": "Bearer"}
    )
    assert isinstance(token, fcm.AccessToken)
    assert token.value == "ya29.abc"
    assert token.expires_at == NOW + timedelta(seconds=3599)
    assert token.refresh_at == NOW + timedelta(seconds=3299)
    assert not token.needs_refresh(NOW + timedelta(seconds=3298))
    assert token.needs_refresh(NOW + timedelta(seconds=3299))
    assert "ya29" not in repr(token)


def test_a_short_lived_token_is_refreshed_halfway() -> None:
    token = _token_answer(200, {"access_token": "t", "expires_in": 60})
    assert isinstance(token, fcm.AccessToken)
    assert token.refresh_at == NOW + timedelta(seconds=30)


@pytest.mark.parametrize(
    "document",
    [
        {"expires_in": 3599},
        {"access_token": "", "expires_in": 3599},
        {"access_token": "t", "expires_in": 0},
        {"access_token": "t", "expires_in": "3599"},
        {"access_token": "t", "expires_in": True},
        {"access_token": "t"},
        {"access_token": "t", "expires_in": 3599, "token_type": "mac"},
        [1],
        b"<html>",
    ],
)
def test_an_unreadable_token_answer_is_retried(document: Any) -> None:
    assert isinstance(_token_answer(200, document), outcomes.RetryLater)


@pytest.mark.parametrize("status", [400, 401, 403])
def test_a_refused_grant_is_an_auth_failure_with_googles_words(status: int) -> None:
    outcome = _token_answer(
        status, {"error": "invalid_grant", "error_description": "Invalid JWT Signature."}
    )
    assert outcome == outcomes.AuthFailed(
        f"OAuth HTTP {status} invalid_grant: Invalid JWT Signature."
    )


@pytest.mark.parametrize("status", [429, 500, 503])
def test_a_token_endpoint_failure_is_retried_after_retry_after(status: int) -> None:
    outcome = _token_answer(status, b"", {"Retry-After": "30"})
    assert outcome == outcomes.RetryLater(f"OAuth HTTP {status}", 30.0)


# --- messages ------------------------------------------------------------------------------------


def _body(message: Message) -> dict[str, Any]:
    request = fcm.build_request(message, project_id="clarion-test", access_token="ya29.abc")
    document: dict[str, Any] = json.loads(request.body)
    return document


def test_a_full_message_is_the_v1_json_firebase_expects() -> None:
    message = Message(
        token=TOKEN,
        notification=Notification(title="Hi", body="Ünïcode ✓", image="https://x.test/i.png"),
        data={"order": "42", "kind": "shipped"},
        android=AndroidConfig(
            priority=AndroidPriority.HIGH,
            ttl=timedelta(hours=1),
            collapse_key="orders",
            restricted_package_name="com.example.app",
            data={"order": "42"},
            notification=AndroidNotification(
                channel_id="orders",
                color="#FF0000",
                click_action="OPEN_ORDER",
                extra={"notification_priority": "PRIORITY_HIGH"},
            ),
        ),
        apns=ApnsConfig(
            headers={"apns-priority": "10"}, payload={"aps": {"badge": 3, "sound": "default"}}
        ),
        webpush=WebpushConfig(
            headers={"TTL": "60", "Urgency": "high", "Topic": "orders"},
            data={"order": "42"},
            notification={"title": "Hi", "icon": "/i.png"},
            link="https://example.com/orders/42",
        ),
        analytics_label="orders_v1",
    )
    assert _body(message) == {
        "message": {
            "token": TOKEN,
            "notification": {"title": "Hi", "body": "Ünïcode ✓", "image": "https://x.test/i.png"},
            "data": {"order": "42", "kind": "shipped"},
            "android": {
                "collapse_key": "orders",
                "priority": "high",
                "ttl": "3600s",
                "restricted_package_name": "com.example.app",
                "data": {"order": "42"},
                "notification": {
                    "color": "#FF0000",
                    "click_action": "OPEN_ORDER",
                    "channel_id": "orders",
                    "notification_priority": "PRIORITY_HIGH",
                },
            },
            "apns": {
                "headers": {"apns-priority": "10"},
                "payload": {"aps": {"badge": 3, "sound": "default"}},
            },
            "webpush": {
                "headers": {"TTL": "60", "Urgency": "high", "Topic": "orders"},
                "data": {"order": "42"},
                "notification": {"title": "Hi", "icon": "/i.png"},
                "fcm_options": {"link": "https://example.com/orders/42"},
            },
            "fcm_options": {"analytics_label": "orders_v1"},
        }
    }


def test_the_request_posts_compact_json_with_the_bearer_token() -> None:
    request = fcm.build_request(
        Message(token=TOKEN, data={"a": "b"}), project_id="clarion-test", access_token="ya29.abc"
    )
    assert request.method == "POST"
    assert request.url == "https://fcm.googleapis.com/v1/projects/clarion-test/messages:send"
    assert request.headers == (
        ("Authorization", "Bearer ya29.abc"),
        ("Content-Type", "application/json; charset=UTF-8"),
    )
    assert request.body == f'{{"message":{{"token":"{TOKEN}","data":{{"a":"b"}}}}}}'.encode()


def test_validate_only_asks_fcm_to_check_without_sending() -> None:
    request = fcm.build_request(
        Message(token=TOKEN), project_id="p-1", access_token="t", validate_only=True
    )
    assert json.loads(request.body) == {"message": {"token": TOKEN}, "validate_only": True}


def test_the_send_url_can_point_at_an_emulator() -> None:
    request = fcm.build_request(
        Message(token=TOKEN), project_id="p-1", access_token="t", base="http://127.0.0.1:9099/"
    )
    assert request.url == "http://127.0.0.1:9099/v1/projects/p-1/messages:send"


@pytest.mark.parametrize("project_id", ["", "Bad", "a/b", "a?b", "p 1", "-p"])
def test_a_project_id_that_could_break_the_path_is_refused(project_id: str) -> None:
    with pytest.raises(errors.InvalidRequest, match="project id"):
        fcm.send_url(project_id)


@pytest.mark.parametrize("token", ["", "a b", "tok\r\nX: 1"])
def test_an_unusable_access_token_is_refused(token: str) -> None:
    with pytest.raises(errors.InvalidRequest, match="access token"):
        fcm.build_request(Message(token=TOKEN), project_id="p-1", access_token=token)


def test_a_topic_message_drops_the_legacy_topics_prefix() -> None:
    assert _body(Message(topic="/topics/news"))["message"] == {"topic": "news"}
    assert _body(Message(topic="news-1_~%.x"))["message"] == {"topic": "news-1_~%.x"}


def test_a_condition_message_is_sent_as_given() -> None:
    condition = "'dogs' in topics || 'cats' in topics"
    assert _body(Message(condition=condition))["message"] == {"condition": condition}


@pytest.mark.parametrize(
    "targets",
    [{}, {"token": TOKEN, "topic": "news"}, {"topic": "a", "condition": "'a' in topics"}],
)
def test_a_message_needs_exactly_one_target(targets: dict[str, str]) -> None:
    with pytest.raises(errors.InvalidRequest, match="exactly one"):
        _body(Message(**targets))


@pytest.mark.parametrize(
    ("message", "match"),
    [
        (Message(token=""), "registration token"),
        (Message(token="abc def"), "registration token"),
        (Message(token="tök"), "registration token"),
        (Message(topic="a b"), "topic"),
        (Message(topic="/topics/"), "topic"),
        (Message(condition="  "), "condition"),
        (Message(token=TOKEN, analytics_label="a" * 51), "analytics label"),
        (Message(token=TOKEN, analytics_label="a b"), "analytics label"),
    ],
)
def test_malformed_targets_and_labels_are_refused(message: Message, match: str) -> None:
    with pytest.raises(errors.InvalidRequest, match=match):
        _body(message)


@pytest.mark.parametrize("value", [1, 1.5, True, None, {"a": "b"}, ["x"]])
def test_a_data_value_that_is_not_a_string_is_refused_not_stringified(value: Any) -> None:
    with pytest.raises(errors.InvalidRequest, match="must be a string"):
        _body(Message(token=TOKEN, data={"k": value}))


@pytest.mark.parametrize("key", ["from", "gcm", "google", "google.c.a.e", "GoogleFoo", ""])
def test_reserved_or_empty_data_keys_are_refused(key: str) -> None:
    with pytest.raises(errors.InvalidRequest, match=r"reserves|non-empty"):
        _body(Message(token=TOKEN, data={key: "x"}))


@pytest.mark.parametrize(
    "config",
    [
        AndroidConfig(data={"from": "x"}),
        AndroidConfig(data={"n": 1}),  # type: ignore[dict-item]
    ],
)
def test_android_data_follows_the_same_rules(config: AndroidConfig) -> None:
    with pytest.raises(errors.InvalidRequest, match=r"android\.data"):
        _body(Message(token=TOKEN, android=config))


def test_collapse_key_and_other_data_words_fcm_overrides_are_allowed() -> None:
    assert _body(Message(token=TOKEN, data={"collapse_key": "x"}))["message"]["data"] == {
        "collapse_key": "x"
    }


@pytest.mark.parametrize(
    ("ttl", "text"),
    [
        (timedelta(0), "0s"),
        (timedelta(seconds=3600), "3600s"),
        (timedelta(seconds=1, milliseconds=500), "1.500000000s"),
        (timedelta(microseconds=1), "0.000001000s"),
        (timedelta(weeks=4), "2419200s"),
    ],
)
def test_an_android_ttl_is_seconds_with_nanos_only_when_fractional(
    ttl: timedelta, text: str
) -> None:
    assert fcm.format_ttl(ttl) == text
    assert _body(Message(token=TOKEN, android=AndroidConfig(ttl=ttl)))["message"]["android"] == {
        "ttl": text
    }


@pytest.mark.parametrize("ttl", [timedelta(weeks=4, microseconds=1), timedelta(seconds=-1)])
def test_an_android_ttl_outside_zero_to_four_weeks_is_refused(ttl: timedelta) -> None:
    with pytest.raises(errors.InvalidRequest, match="TTL"):
        fcm.format_ttl(ttl)


@pytest.mark.parametrize("priority", ["normal", "high"])
def test_the_android_priority_is_normal_or_high(priority: str) -> None:
    config = AndroidConfig(priority=AndroidPriority(priority))
    assert _body(Message(token=TOKEN, android=config))["message"]["android"] == {
        "priority": priority
    }


def test_an_unknown_android_priority_is_refused() -> None:
    with pytest.raises(errors.InvalidRequest, match="priority"):
        _body(Message(token=TOKEN, android=AndroidConfig(priority="urgent")))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("notification", "match"),
    [
        (AndroidNotification(color="red"), "color"),
        (AndroidNotification(title="a", extra={"title": "b"}), "repeats title"),
    ],
)
def test_android_notification_overrides_are_checked(
    notification: AndroidNotification, match: str
) -> None:
    with pytest.raises(errors.InvalidRequest, match=match):
        _body(Message(token=TOKEN, android=AndroidConfig(notification=notification)))


@pytest.mark.parametrize(
    ("apns", "match"),
    [
        (ApnsConfig(headers={"priority": "10"}), "apns-"),
        (ApnsConfig(headers={"apns-topic": "a\r\nb"}), "printable"),
        (ApnsConfig(payload={"aps": {"alert": "x" * 4100}}), "4096"),
        (ApnsConfig(payload={"n": float("nan")}), "not JSON"),
    ],
)
def test_apns_overrides_are_checked(apns: ApnsConfig, match: str) -> None:
    with pytest.raises(errors.InvalidRequest, match=match):
        _body(Message(token=TOKEN, apns=apns))


@pytest.mark.parametrize(
    ("webpush", "match"),
    [
        (WebpushConfig(headers={"TTL": "soon"}), "TTL"),
        (WebpushConfig(headers={"Urgency": "urgent"}), "Urgency"),
        (WebpushConfig(headers={"Topic": "a" * 33}), "Topic"),
        (WebpushConfig(headers={"X": "a\nb"}), "printable"),
        (WebpushConfig(link="http://example.com"), "https"),
        (WebpushConfig(data={"google.x": "y"}), "reserves"),
    ],
)
def test_webpush_overrides_are_checked(webpush: WebpushConfig, match: str) -> None:
    with pytest.raises(errors.InvalidRequest, match=match):
        _body(Message(token=TOKEN, webpush=webpush))


def test_empty_sections_are_left_out() -> None:
    message = Message(
        token=TOKEN,
        notification=Notification(),
        android=AndroidConfig(),
        apns=ApnsConfig(),
        webpush=WebpushConfig(),
    )
    assert _body(message) == {"message": {"token": TOKEN}}


# --- payload limit -------------------------------------------------------------------------------


def _with_data_size(size: int, **target: str) -> Message:
    """A message whose counted payload is exactly `size` bytes: one key "k" (1 byte)."""
    return Message(data={"k": "v" * (size - 1)}, **target)


@pytest.mark.parametrize(
    ("target", "limit"),
    [({"token": TOKEN}, 4096), ({"topic": "news"}, 2048), ({"condition": "'a' in topics"}, 2048)],
)
def test_a_payload_of_exactly_the_limit_is_sent_and_one_byte_more_is_refused(
    target: dict[str, str], limit: int
) -> None:
    assert fcm.payload_size(_with_data_size(limit, **target)) == limit
    _body(_with_data_size(limit, **target))
    with pytest.raises(errors.InvalidRequest, match=f"{limit + 1} bytes") as refused:
        _body(_with_data_size(limit + 1, **target))
    assert refused.value.details == {"size": limit + 1, "limit": limit}


def test_the_payload_counts_utf8_bytes_of_data_keys_values_and_notification_fields() -> None:
    message = Message(
        token=TOKEN,
        notification=Notification(title="é", body="ab"),
        data={"ké": "€"},
        android=AndroidConfig(
            data={"x": "y"},
            notification=AndroidNotification(tag="t", extra={"sticky": True}),
        ),
        webpush=WebpushConfig(data={"w": "z"}, notification={"a": 1}),
        apns=ApnsConfig(payload={"aps": {"alert": "not counted"}}),
    )
    expected = (
        (len("title") + 2)
        + (len("body") + 2)  # notification
        + (3 + 3)  # data: "ké" is 3 bytes, "€" is 3
        + 2
        + (len("tag") + 1)
        + len('{"sticky":true}')  # android
        + 2
        + len('{"a":1}')  # webpush
    )
    assert fcm.payload_size(message) == expected


@given(
    data=st.dictionaries(
        st.text(min_size=1, max_size=20).filter(
            lambda k: k not in {"from", "gcm"} and not k.lower().startswith("google")
        ),
        st.text(max_size=300),
        max_size=20,
    )
)
def test_the_payload_size_is_the_sum_of_utf8_key_and_value_bytes(data: dict[str, str]) -> None:
    message = Message(token=TOKEN, data=data)
    size = sum(len(k.encode()) + len(v.encode()) for k, v in data.items())
    assert fcm.payload_size(message) == size
    if size > 4096:
        with pytest.raises(errors.InvalidRequest, match="bytes"):
            _body(message)
    else:
        assert _body(message)["message"].get("data", {}) == data


# --- responses -----------------------------------------------------------------------------------


def _error(status: int, code: str | None, message: str = "m", **extra: Any) -> bytes:
    details: list[dict[str, Any]] = [{"@type": "type.googleapis.com/google.rpc.BadRequest"}]
    if code is not None:
        details.append({"@type": fcm.FCM_ERROR_TYPE, "errorCode": code})
    status_text = {
        400: "INVALID_ARGUMENT",
        401: "UNAUTHENTICATED",
        403: "PERMISSION_DENIED",
        404: "NOT_FOUND",
        429: "RESOURCE_EXHAUSTED",
        500: "INTERNAL",
        503: "UNAVAILABLE",
    }.get(status, "UNKNOWN")
    error = {"code": status, "message": message, "status": status_text, "details": details}
    return json.dumps({"error": {**error, **extra}}).encode()


def _classify(
    status: int, body: bytes = b"", headers: Any = None, **kwargs: Any
) -> fcm.Classification:
    return fcm.classify_response(status, headers or {}, body, now=NOW, **kwargs)


def test_a_200_is_delivered_with_the_message_name() -> None:
    body = b'{"name": "projects/clarion-test/messages/0:1500415314455276%31bd1c9631bd1c96"}'
    assert _classify(200, body) == outcomes.Delivered(
        "projects/clarion-test/messages/0:1500415314455276%31bd1c9631bd1c96"
    )


@pytest.mark.parametrize("body", [b"", b"{}", b'{"name": 5}', b"<html>"])
def test_a_200_without_a_readable_name_is_still_delivered(body: bytes) -> None:
    assert _classify(200, body) == outcomes.Delivered(None)


# Typed out from protocols.md §2's table, independently of the implementation.
ERROR_CODES: list[tuple[int, str, type[outcomes.Outcome]]] = [
    (404, "UNREGISTERED", outcomes.TokenInvalid),
    (403, "SENDER_ID_MISMATCH", outcomes.TokenInvalid),
    (400, "INVALID_ARGUMENT", outcomes.Rejected),
    (401, "THIRD_PARTY_AUTH_ERROR", outcomes.AuthFailed),
    (429, "QUOTA_EXCEEDED", outcomes.RetryLater),
    (503, "UNAVAILABLE", outcomes.RetryLater),
    (500, "INTERNAL", outcomes.RetryLater),
    (400, "UNSPECIFIED_ERROR", outcomes.Rejected),
]


@pytest.mark.parametrize(
    ("status", "code", "expected"), ERROR_CODES, ids=[code for _, code, _ in ERROR_CODES]
)
def test_each_error_code_maps_to_its_outcome(
    status: int, code: str, expected: type[outcomes.Outcome]
) -> None:
    outcome = _classify(status, _error(status, code, "Requested entity was not found."))
    assert type(outcome) is expected
    assert isinstance(
        outcome,
        outcomes.TokenInvalid | outcomes.Rejected | outcomes.RetryLater | outcomes.AuthFailed,
    )
    assert outcome.reason == f"{code}: Requested entity was not found."


@pytest.mark.parametrize(("status", "code", "expected"), ERROR_CODES)
def test_the_error_code_decides_whatever_the_http_status(
    status: int, code: str, expected: type[outcomes.Outcome]
) -> None:
    assert type(_classify(400, _error(400, code))) is expected
    assert type(_classify(500, _error(500, code))) is expected


def test_an_invalid_argument_that_names_the_token_retires_it() -> None:
    body = _error(
        400, "INVALID_ARGUMENT", "The registration token is not a valid FCM registration token"
    )
    assert _classify(400, body) == outcomes.TokenInvalid(
        "INVALID_ARGUMENT: The registration token is not a valid FCM registration token"
    )


def test_an_invalid_argument_about_the_payload_only_fails_the_message() -> None:
    body = _error(
        400, "INVALID_ARGUMENT", "Invalid value at 'message.data[0].value' (TYPE_STRING), 12"
    )
    assert isinstance(_classify(400, body), outcomes.Rejected)


def test_a_plain_401_asks_for_a_new_access_token() -> None:
    body = _error(401, None, "Request had invalid authentication credentials.")
    assert fcm.needs_new_access_token(401, body)
    assert _classify(401, body) == fcm.RefreshAccessToken(
        "HTTP 401 UNAUTHENTICATED: Request had invalid authentication credentials."
    )
    assert _classify(401, b"") == fcm.RefreshAccessToken("HTTP 401")


def test_a_401_with_a_freshly_fetched_token_is_an_auth_failure() -> None:
    outcome = _classify(401, _error(401, None), retried_with_new_token=True)
    assert isinstance(outcome, outcomes.AuthFailed)
    assert "freshly fetched" in outcome.reason


def test_a_third_party_auth_error_never_asks_for_a_new_token() -> None:
    body = _error(401, "THIRD_PARTY_AUTH_ERROR", "Auth error from APNS or Web Push Service")
    assert not fcm.needs_new_access_token(401, body)
    assert isinstance(_classify(401, body), outcomes.AuthFailed)


@pytest.mark.parametrize("status", [200, 400, 403, 404, 500])
def test_only_a_401_asks_for_a_new_token(status: int) -> None:
    assert not fcm.needs_new_access_token(status, _error(status, None))


@pytest.mark.parametrize(
    ("headers", "seconds"),
    [
        ({}, 60.0),
        ({"Retry-After": "7"}, 7.0),
        ({"retry-after": "Wed, 04 Mar 2026 05:07:07 GMT"}, 60.0),
        ({"Retry-After": "Wed, 04 Mar 2026 05:16:07 GMT"}, 600.0),
        ({"Retry-After": "nonsense"}, 60.0),
    ],
)
def test_quota_exceeded_waits_for_retry_after_or_a_minute(
    headers: dict[str, str], seconds: float
) -> None:
    outcome = _classify(429, _error(429, "QUOTA_EXCEEDED"), headers)
    assert isinstance(outcome, outcomes.RetryLater)
    assert outcome.after_seconds == seconds


@pytest.mark.parametrize(("status", "code"), [(503, "UNAVAILABLE"), (500, "INTERNAL")])
def test_unavailable_and_internal_honour_retry_after_and_otherwise_leave_the_backoff(
    status: int, code: str
) -> None:
    assert _classify(status, _error(status, code), {"Retry-After": "12"}) == outcomes.RetryLater(
        f"{code}: m", 12.0
    )
    assert _classify(status, _error(status, code)) == outcomes.RetryLater(f"{code}: m", None)


# Without an FcmError the HTTP status decides, per protocols.md §2.
STATUS_ONLY: list[tuple[int, type[outcomes.Outcome]]] = [
    (400, outcomes.Rejected),
    (403, outcomes.AuthFailed),
    (404, outcomes.Rejected),
    (413, outcomes.Rejected),
    (429, outcomes.RetryLater),
    (500, outcomes.RetryLater),
    (502, outcomes.RetryLater),
    (503, outcomes.RetryLater),
    (302, outcomes.RetryLater),
]


@pytest.mark.parametrize(("status", "expected"), STATUS_ONLY)
@pytest.mark.parametrize("body", [b"", b"<html>oops</html>", b"[1]", b'{"error": "x"}', b"\xff"])
def test_without_an_error_code_the_status_decides(
    status: int, expected: type[outcomes.Outcome], body: bytes
) -> None:
    outcome = _classify(status, body)
    assert type(outcome) is expected
    assert not isinstance(outcome, outcomes.Delivered | fcm.RefreshAccessToken)
    assert f"HTTP {status}" in outcome.reason


def test_a_404_without_unregistered_never_retires_the_token() -> None:
    assert _classify(
        404, _error(404, None, "Requested entity was not found.")
    ) == outcomes.Rejected("HTTP 404 NOT_FOUND: Requested entity was not found.")


def test_an_unknown_error_code_falls_back_on_the_status() -> None:
    assert isinstance(_classify(503, _error(503, "SOMETHING_NEW")), outcomes.RetryLater)
    assert isinstance(_classify(400, _error(400, "SOMETHING_NEW")), outcomes.Rejected)


def test_the_apns_reason_fcm_passes_on_is_kept() -> None:
    body = _error(404, "UNREGISTERED", "Requested entity was not found.")
    document = json.loads(body)
    document["error"]["details"].append(
        {"@type": fcm.APNS_ERROR_TYPE, "statusCode": 410, "reason": "Unregistered"}
    )
    outcome = _classify(404, json.dumps(document).encode())
    assert outcome == outcomes.TokenInvalid(
        "UNREGISTERED: Requested entity was not found. (APNs Unregistered)"
    )


def test_the_error_body_parts_are_read() -> None:
    assert fcm.parse_error(_error(404, "UNREGISTERED", "gone")) == fcm.ErrorBody(
        status="NOT_FOUND", message="gone", error_code="UNREGISTERED"
    )
    assert fcm.parse_error(b"nope") == fcm.ErrorBody()
    assert fcm.parse_error(b'{"error": {"details": "x", "status": 5}}') == fcm.ErrorBody()


def test_a_long_error_message_is_clipped() -> None:
    outcome = _classify(400, _error(400, "INVALID_ARGUMENT", "x" * 1000 + "\n\x00"))
    assert isinstance(outcome, outcomes.Rejected)
    assert len(outcome.reason) <= len("INVALID_ARGUMENT: ") + fcm.MAX_REASON_CHARS
    assert outcome.reason.isprintable()


_json_leaf = st.none() | st.booleans() | st.integers() | st.text(max_size=30)


@given(
    status=st.integers(min_value=100, max_value=599),
    body=st.binary(max_size=200)
    | st.recursive(
        _json_leaf,
        lambda children: (
            st.lists(children, max_size=3)
            | st.dictionaries(
                st.sampled_from(["error", "details", "errorCode", "@type", "message", "status"]),
                children,
                max_size=4,
            )
        ),
        max_leaves=12,
    ).map(lambda value: json.dumps(value).encode()),
    retried=st.booleans(),
)
def test_any_answer_classifies_without_raising(status: int, body: bytes, retried: bool) -> None:
    outcome = _classify(status, body, retried_with_new_token=retried)
    assert isinstance(
        outcome,
        outcomes.Delivered
        | outcomes.RetryLater
        | outcomes.TokenInvalid
        | outcomes.Rejected
        | outcomes.AuthFailed
        | fcm.RefreshAccessToken,
    )
    if retried:
        assert not isinstance(outcome, fcm.RefreshAccessToken)
