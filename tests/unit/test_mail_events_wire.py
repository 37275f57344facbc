"""SNS string-to-sign, signature checks, URL rules, SES and SendGrid event parsing."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta
from functools import cache
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import NameOID

from clarion.domain import errors
from clarion.wire import mail_events as wire

NOW = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
TOPIC = "arn:aws:sns:eu-west-1:123456789012:ses-feedback"
CERT_URL = "https://sns.eu-west-1.amazonaws.com/SimpleNotificationService-abc.pem"


@cache
def _rsa() -> tuple[rsa.RSAPrivateKey, bytes]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sns.amazonaws.com")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(NOW - timedelta(days=1))
        .not_valid_after(NOW + timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    return key, cert.public_bytes(serialization.Encoding.PEM)


def _signed(fields: dict[str, Any], version: str = "2") -> bytes:
    message = dict(fields, SignatureVersion=version, SigningCertURL=CERT_URL)
    parsed = wire.parse_sns(json.dumps(message | {"Signature": "AA=="}).encode(), None)
    algorithm = hashes.SHA1() if version == "1" else hashes.SHA256()  # noqa: S303
    signature = _rsa()[0].sign(wire.sns_string_to_sign(parsed), padding.PKCS1v15(), algorithm)
    return json.dumps(message | {"Signature": base64.b64encode(signature).decode()}).encode()


def _notification(message: str = "{}", **extra: Any) -> dict[str, Any]:
    return {
        "Type": "Notification",
        "MessageId": "22b80b92-fdea-4c2c-8f9d-bdfb0c7bf324",
        "TopicArn": TOPIC,
        "Message": message,
        "Timestamp": "2026-05-01T12:00:00.000Z",
        "UnsubscribeURL": "https://sns.eu-west-1.amazonaws.com/?Action=Unsubscribe",
        **extra,
    }


def test_the_notification_string_to_sign_lists_the_documented_fields_in_order() -> None:
    body = json.dumps(
        _notification("hello", Subject="subj", SignatureVersion="1", Signature="x")
        | {"SigningCertURL": CERT_URL}
    ).encode()
    assert wire.sns_string_to_sign(wire.parse_sns(body, "Notification")) == (
        b"Message\nhello\nMessageId\n22b80b92-fdea-4c2c-8f9d-bdfb0c7bf324\nSubject\nsubj\n"
        b"Timestamp\n2026-05-01T12:00:00.000Z\nTopicArn\n" + TOPIC.encode() + b"\n"
        b"Type\nNotification\n"
    )


def test_a_notification_without_subject_leaves_it_out_of_the_string_to_sign() -> None:
    body = json.dumps(
        _notification("m") | {"SignatureVersion": "2", "Signature": "x", "SigningCertURL": CERT_URL}
    ).encode()
    assert b"Subject" not in wire.sns_string_to_sign(wire.parse_sns(body, None))


def test_the_confirmation_string_to_sign_includes_subscribe_url_and_token() -> None:
    body = json.dumps(
        {
            "Type": "SubscriptionConfirmation",
            "MessageId": "m1",
            "Token": "tok",
            "TopicArn": TOPIC,
            "Message": "confirm",
            "SubscribeURL": "https://sns.eu-west-1.amazonaws.com/?Action=ConfirmSubscription",
            "Timestamp": "2026-05-01T12:00:00.000Z",
            "SignatureVersion": "1",
            "Signature": "x",
            "SigningCertURL": CERT_URL,
        }
    ).encode()
    assert wire.sns_string_to_sign(wire.parse_sns(body, "SubscriptionConfirmation")) == (
        b"Message\nconfirm\nMessageId\nm1\nSubscribeURL\n"
        b"https://sns.eu-west-1.amazonaws.com/?Action=ConfirmSubscription\n"
        b"Timestamp\n2026-05-01T12:00:00.000Z\nToken\ntok\nTopicArn\n" + TOPIC.encode() + b"\n"
        b"Type\nSubscriptionConfirmation\n"
    )


@pytest.mark.parametrize("version", ["1", "2"])
def test_a_signature_by_the_certificate_key_verifies(version: str) -> None:
    message = wire.parse_sns(_signed(_notification("x"), version), "Notification")
    wire.verify_sns(message, _rsa()[1], NOW)


def test_an_altered_message_does_not_verify() -> None:
    document = json.loads(_signed(_notification('{"a": 1}')))
    document["Message"] = '{"a": 2}'
    message = wire.parse_sns(json.dumps(document).encode(), None)
    with pytest.raises(errors.InvalidSignature):
        wire.verify_sns(message, _rsa()[1], NOW)


def test_a_signature_version_swap_does_not_verify() -> None:
    document = json.loads(_signed(_notification("x"), "2"))
    document["SignatureVersion"] = "1"
    with pytest.raises(errors.InvalidSignature):
        wire.verify_sns(wire.parse_sns(json.dumps(document).encode(), None), _rsa()[1], NOW)


def test_an_expired_certificate_is_refused() -> None:
    message = wire.parse_sns(_signed(_notification("x")), None)
    with pytest.raises(errors.InvalidSignature):
        wire.verify_sns(message, _rsa()[1], NOW + timedelta(days=3))


def test_garbage_as_certificate_is_an_invalid_signature() -> None:
    message = wire.parse_sns(_signed(_notification("x")), None)
    with pytest.raises(errors.InvalidSignature):
        wire.verify_sns(message, b"-----BEGIN CERTIFICATE-----\nnope\n", NOW)


@pytest.mark.parametrize(
    ("body", "header", "error"),
    [
        (b"not json", None, errors.MalformedJson),
        (b"[]", None, errors.MalformedJson),
        (b'{"Type": "Other"}', None, errors.InvalidRequest),
        (json.dumps(_notification()).encode(), None, errors.InvalidRequest),
        (
            json.dumps(
                _notification() | {"SignatureVersion": "3", "Signature": "x", "SigningCertURL": "u"}
            ).encode(),
            None,
            errors.InvalidRequest,
        ),
        (
            json.dumps(
                _notification() | {"SignatureVersion": "2", "Signature": "x", "SigningCertURL": "u"}
            ).encode(),
            "SubscriptionConfirmation",
            errors.InvalidRequest,
        ),
    ],
)
def test_malformed_sns_messages_are_refused(
    body: bytes, header: str | None, error: type[Exception]
) -> None:
    with pytest.raises(error):
        wire.parse_sns(body, header)


@pytest.mark.parametrize(
    ("url", "allowed"),
    [
        (CERT_URL, True),
        ("https://sns.us-east-1.amazonaws.com/SimpleNotificationService-x.pem", True),
        ("https://sns.cn-north-1.amazonaws.com.cn/SimpleNotificationService-x.pem", True),
        ("http://sns.us-east-1.amazonaws.com/SimpleNotificationService-x.pem", False),
        ("https://sns.us-east-1.amazonaws.com.evil.example/x.pem", False),
        ("https://evil.example/sns.us-east-1.amazonaws.com/x.pem", False),
        ("https://sns.us-east-1.amazonaws.com@evil.example/x.pem", False),
        ("https://user@sns.us-east-1.amazonaws.com/x.pem", False),
        ("https://sns.us-east-1.amazonaws.com:8443/x.pem", False),
        ("https://sns.us-east-1.amazonaws.com/x.txt", False),
        ("https://127.0.0.1:9443/SimpleNotificationService-x.pem", False),
    ],
)
def test_only_sns_hosts_may_serve_certificates(url: str, allowed: bool) -> None:
    assert wire.certificate_url_allowed(url) is allowed


def test_an_operator_prefix_admits_an_emulator() -> None:
    url = "https://127.0.0.1:9443/SimpleNotificationService-x.pem"
    assert wire.certificate_url_allowed(url, ["https://127.0.0.1:9443/"])
    assert not wire.certificate_url_allowed(url, ["https://127.0.0.1:9444/"])
    assert not wire.certificate_url_allowed(
        "http://127.0.0.1:9443/x.pem", ["http://127.0.0.1:9443/"]
    )


def _ses(kind: str, **body: Any) -> str:
    return json.dumps({"notificationType": kind, **body, "mail": {"messageId": "m"}})


def test_a_permanent_bounce_names_its_recipients() -> None:
    message = _ses(
        "Bounce",
        bounce={
            "bounceType": "Permanent",
            "bouncedRecipients": [
                {"emailAddress": "ann@example.com"},
                {"emailAddress": '"Bob" <bob@example.com>'},
                {"nothing": 1},
            ],
        },
    )
    found = wire.parse_ses_event(message)
    assert found.bounced == {"ann@example.com", "bob@example.com"}
    assert not found.complained


def test_transient_bounces_and_other_events_name_nobody() -> None:
    transient = _ses(
        "Bounce",
        bounce={"bounceType": "Transient", "bouncedRecipients": [{"emailAddress": "a@x.io"}]},
    )
    assert not wire.parse_ses_event(transient)
    assert not wire.parse_ses_event(_ses("Delivery", delivery={}))
    assert not wire.parse_ses_event("Successfully validated SNS topic for Amazon SES")
    assert not wire.parse_ses_event("[1, 2]")


def test_a_configuration_set_complaint_event_names_its_recipients() -> None:
    message = json.dumps(
        {
            "eventType": "Complaint",
            "complaint": {
                "complainedRecipients": [{"emailAddress": "Ann@Example.com"}],
                "complaintFeedbackType": "abuse",
            },
        }
    )
    assert wire.parse_ses_event(message).complained == {"Ann@Example.com"}


def test_a_not_spam_report_is_no_complaint() -> None:
    message = _ses(
        "Complaint",
        complaint={
            "complainedRecipients": [{"emailAddress": "a@x.io"}],
            "complaintFeedbackType": "not-spam",
        },
    )
    assert not wire.parse_ses_event(message)


def test_address_forms_cover_case_and_idn() -> None:
    forms = wire.address_forms(["Ann@Bücher.Example"])
    assert "ann@bücher.example" in forms
    assert "ann@xn--bcher-kva.example" in forms
    assert "bob@xn--bcher-kva.example" in wire.address_forms(["bob@xn--bcher-kva.example"])
    assert "bob@bücher.example" in wire.address_forms(["bob@xn--bcher-kva.example"])


# --- SendGrid ----------------------------------------------------------------------------------


@cache
def _ec() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _public_b64() -> str:
    der = (
        _ec()
        .public_key()
        .public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    return base64.b64encode(der).decode()


def _sign(timestamp: str, body: bytes) -> str:
    signature = _ec().sign(timestamp.encode() + body, ec.ECDSA(hashes.SHA256()))
    return base64.b64encode(signature).decode()


def test_the_sendgrid_key_loads_from_base64_der_and_pem() -> None:
    pem = (
        _ec()
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    assert (
        wire.load_sendgrid_key(_public_b64()).public_numbers()
        == _ec().public_key().public_numbers()
    )
    assert wire.load_sendgrid_key(pem).public_numbers() == _ec().public_key().public_numbers()
    with pytest.raises(errors.InvalidRequest):
        wire.load_sendgrid_key("not a key")
    other = ec.generate_private_key(ec.SECP384R1()).public_key()
    with pytest.raises(errors.InvalidRequest):
        wire.load_sendgrid_key(
            other.public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            ).decode()
        )


def _verify(signature: str | None, timestamp: str | None, body: bytes, now: datetime) -> None:
    wire.verify_sendgrid(
        wire.load_sendgrid_key(_public_b64()),
        signature=signature,
        timestamp=timestamp,
        body=body,
        now=now,
        max_age=timedelta(minutes=10),
    )


def test_a_fresh_sendgrid_signature_verifies() -> None:
    stamp = str(int(NOW.timestamp()))
    _verify(_sign(stamp, b"[]"), stamp, b"[]", NOW)


@pytest.mark.parametrize(
    "case", ["altered body", "other timestamp", "stale", "missing", "not base64", "garbage"]
)
def test_bad_sendgrid_signatures_are_refused(case: str) -> None:
    stamp = str(int(NOW.timestamp()))
    signature: str | None = _sign(stamp, b"[]")
    body, timestamp, now = b"[]", stamp, NOW
    if case == "altered body":
        body = b"[ ]"
    elif case == "other timestamp":
        timestamp = str(int(NOW.timestamp()) + 1)
    elif case == "stale":
        now = NOW + timedelta(minutes=11)
    elif case == "missing":
        signature = None
    elif case == "not base64":
        signature = "***"
    else:
        signature = base64.b64encode(b"\x30\x03\x02\x01\x01").decode()
    with pytest.raises(errors.InvalidSignature):
        _verify(signature, timestamp, body, now)


def test_sendgrid_events_sort_into_bounced_and_complained() -> None:
    events = [
        {"email": "a@x.io", "event": "processed"},
        {"email": "b@x.io", "event": "bounce", "type": "bounce"},
        {"email": "c@x.io", "event": "bounce", "type": "blocked"},
        {"email": "d@x.io", "event": "dropped", "reason": "Bounced Address"},
        {"email": "e@x.io", "event": "dropped", "reason": "Unsubscribed Address"},
        {"email": "f@x.io", "event": "spamreport"},
        {"email": "g@x.io", "event": "dropped", "reason": "Spam Reporting Address"},
        {"email": 5, "event": "bounce"},
        "junk",
    ]
    found = wire.parse_sendgrid_events(json.dumps(events).encode())
    assert found.bounced == {"b@x.io", "d@x.io"}
    assert found.complained == {"f@x.io", "g@x.io"}


@pytest.mark.parametrize("body", [b"{}", b"nope", b'"x"'])
def test_a_sendgrid_body_that_is_not_an_array_is_refused(body: bytes) -> None:
    with pytest.raises(errors.MalformedJson):
        wire.parse_sendgrid_events(body)
