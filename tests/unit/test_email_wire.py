"""wire/email: the MIME message, SMTP reply classes, SigV4 against AWS's published test suite,
and the SES v2 and SendGrid v3 requests and answers."""

from __future__ import annotations

import base64
import email
import json
from datetime import UTC, datetime
from email import policy

import pytest

from clarion.domain import errors, outcomes
from clarion.wire import email as wire
from clarion.wire.email import SmtpStage

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
        "headers": {"X-Clarion-Delivery": "dlv-123"},
    }
    values.update(changes)
    return wire.Email(**values)  # type: ignore[arg-type]


def parsed(raw: bytes) -> email.message.EmailMessage:
    message = email.message_from_bytes(raw, policy=policy.default)
    assert isinstance(message, email.message.EmailMessage)
    return message


# --- the message --------------------------------------------------------------------------------


def test_the_message_has_the_headers_and_both_alternatives() -> None:
    raw = wire.render_message(an_email())
    message = parsed(raw)
    assert str(message["From"]) == "Clärion Alerts <noreply@example.com>"
    assert str(message["To"]) == "Bob <bob@xn--exmple-cua.org>"
    assert str(message["Subject"]) == "Your order shipped — ünïcode"
    assert message["Message-ID"] == "<dlv-123@example.com>"
    assert message["Date"] == "Fri, 01 May 2026 12:00:00 +0000"
    assert message["X-Clarion-Delivery"] == "dlv-123"
    assert message.get_content_type() == "multipart/alternative"
    text, html = message.iter_parts()
    assert text.get_content_type() == "text/plain"
    assert "your order shipped" in text.get_content()
    assert html.get_content_type() == "text/html"
    assert b"\r\n" in raw
    assert b"\n" not in raw.replace(b"\r\n", b"")
    assert all(len(line) <= 998 for line in raw.split(b"\r\n"))
    assert max(raw) < 128  # 7-bit: no 8BITMIME needed


def test_list_unsubscribe_is_written_verbatim_with_one_click_post() -> None:
    raw = wire.render_message(an_email())
    assert f"List-Unsubscribe: <{URL}>,\r\n <{MAILTO}>\r\n".encode() in raw
    assert b"List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n" in raw
    assert b"=?" not in raw.split(b"List-Unsubscribe: ")[1].split(b"\r\n")[0]
    message = parsed(raw)
    assert message["List-Unsubscribe"] == f"<{URL}>, <{MAILTO}>"


def test_a_text_only_message_is_a_single_part() -> None:
    message = parsed(wire.render_message(an_email(html=None, unsubscribe=None)))
    assert message.get_content_type() == "text/plain"
    assert "List-Unsubscribe" not in message


@pytest.mark.parametrize(
    "changes",
    [
        {"subject": "hi\r\nBcc: victim@example.com"},
        {"subject": "hi\nBcc: victim@example.com"},
        {"subject": "   "},
        {"to": wire.Mailbox("bob@example.com\r\nBcc: x@example.com")},
        {"to": wire.Mailbox("bob@example.com", "Bob\r\nBcc: x@example.com")},
        {"headers": {"X-Evil": "a\r\nBcc: x@example.com"}},
        {"headers": {"Bcc": "x@example.com"}},
        {"unsubscribe": wire.Unsubscribe("https://x.example/u>\r\nBcc: x@example.com")},
        {"unsubscribe": wire.Unsubscribe("http://x.example/u")},
        {"unsubscribe": wire.Unsubscribe("javascript:alert(1)")},
        {"unsubscribe": wire.Unsubscribe(URL, "https://not-a-mailto.example")},
        {"message_id": "a>b"},
        {"date": datetime(2026, 5, 1)},
    ],
)
def test_header_injection_and_bad_values_are_refused(changes: dict[str, object]) -> None:
    with pytest.raises(errors.InvalidRequest):
        wire.render_message(an_email(**changes))


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("Bob@Example.COM", "Bob@example.com"),
        ("bob@exämple.org", "bob@xn--exmple-cua.org"),
        ("a.b+tag@sub.example.co.uk", "a.b+tag@sub.example.co.uk"),
    ],
)
def test_addresses_are_normalized_to_a_label_domains(given: str, expected: str) -> None:
    assert wire.normalize_address(given) == expected


@pytest.mark.parametrize(
    "address",
    [
        "",
        "bob",
        "bob@",
        "@example.com",
        "bøb@example.com",  # needs SMTPUTF8
        '"bob smith"@example.com',
        "bob@localhost",
        "bob@[127.0.0.1]",
        "bob..x@example.com",
        "bob @example.com",
        "a" * 65 + "@example.com",
        "bob@-example.com",
    ],
)
def test_unusable_addresses_are_refused_clearly(address: str) -> None:
    with pytest.raises(errors.InvalidRequest):
        wire.normalize_address(address)


# --- SMTP replies -------------------------------------------------------------------------------


def test_a_250_after_data_is_delivered_with_the_queue_id() -> None:
    outcome = wire.classify_smtp_reply(250, "2.0.0 Ok: queued as 4F2A1", stage=SmtpStage.DATA)
    assert outcome == outcomes.Delivered(reference="2.0.0 Ok: queued as 4F2A1")


def test_intermediate_replies_let_the_transaction_go_on() -> None:
    assert wire.classify_smtp_reply(250, "OK", stage=SmtpStage.RCPT) is None
    assert wire.classify_smtp_reply(354, "go ahead", stage=SmtpStage.DATA) is None


@pytest.mark.parametrize("code", [421, 450, 451, 452, 454])
def test_4xx_replies_are_retried(code: int) -> None:
    outcome = wire.classify_smtp_reply(code, "4.3.0 try later", stage=SmtpStage.RCPT)
    assert isinstance(outcome, outcomes.RetryLater)


@pytest.mark.parametrize(
    ("code", "text"),
    [
        (550, "5.1.1 <bob@example.com>: user unknown"),
        (550, "mailbox unavailable"),
        (551, "user not local"),
        (553, "mailbox name not allowed"),
        (554, "5.1.2 bad destination domain"),
        (550, "5.2.1 mailbox disabled"),
    ],
)
def test_mailbox_failures_at_rcpt_are_bounces(code: int, text: str) -> None:
    outcome = wire.classify_smtp_reply(code, text, stage=SmtpStage.RCPT)
    assert isinstance(outcome, outcomes.TokenInvalid)
    assert outcome.reason.startswith(wire.BOUNCE_PREFIX)
    assert wire.is_bounce(outcome)


def test_a_policy_550_is_a_rejection_not_a_bounce() -> None:
    outcome = wire.classify_smtp_reply(550, "5.7.1 message refused as spam", stage=SmtpStage.RCPT)
    assert isinstance(outcome, outcomes.Rejected)
    assert not wire.is_bounce(outcome)


def test_a_full_mailbox_is_retried() -> None:
    assert isinstance(
        wire.classify_smtp_reply(552, "5.2.2 mailbox full", stage=SmtpStage.RCPT),
        outcomes.RetryLater,
    )


@pytest.mark.parametrize(
    ("code", "text", "stage"),
    [
        (535, "5.7.8 authentication credentials invalid", SmtpStage.AUTH),
        (530, "5.7.0 authentication required", SmtpStage.MAIL),
        (554, "no SMTP service here", SmtpStage.CONNECT),
        (502, "STARTTLS not implemented", SmtpStage.STARTTLS),
    ],
)
def test_refusals_of_us_are_auth_failures(code: int, text: str, stage: SmtpStage) -> None:
    assert isinstance(wire.classify_smtp_reply(code, text, stage=stage), outcomes.AuthFailed)


def test_a_554_after_data_is_rejected() -> None:
    outcome = wire.classify_smtp_reply(554, "5.6.0 message content rejected", stage=SmtpStage.DATA)
    assert isinstance(outcome, outcomes.Rejected)


def test_an_enhanced_code_of_another_class_is_ignored() -> None:
    assert wire.SmtpReply.parse(550, "4.1.1 odd").enhanced is None
    assert wire.SmtpReply.parse(550, "5.1.1 user unknown").enhanced == (5, 1, 1)


# --- SigV4: aws-sig-v4-test-suite (AKIDEXAMPLE, us-east-1, service, 20150830T123600Z) ----------

SUITE = wire.AwsCredentials("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY")
SUITE_TIME = datetime(2015, 8, 30, 12, 36, tzinfo=UTC)
EMPTY_SHA256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"


def suite_request(method: str, url: str = "https://example.amazonaws.com/") -> wire.HttpRequest:
    signed = wire.sigv4_sign(
        wire.HttpRequest(method, url, (("Host", "example.amazonaws.com"),), b""),
        SUITE,
        region="us-east-1",
        service="service",
        now=SUITE_TIME,
    )
    return signed


def test_the_signing_key_matches_aws_documentation() -> None:
    key = wire.sigv4_signing_key(SUITE.secret_access_key, "20150830", "us-east-1", "iam")
    assert key.hex() == "c4afb1cc5771d871763a393e44b703571b55cc28424d1a5e86da6ed3c154a4b9"


def test_get_vanilla_canonical_request_and_string_to_sign() -> None:
    canonical, signed = wire.sigv4_canonical_request(
        "GET",
        "/",
        [],
        [("Host", "example.amazonaws.com"), ("X-Amz-Date", "20150830T123600Z")],
        EMPTY_SHA256,
    )
    assert canonical == (
        "GET\n/\n\nhost:example.amazonaws.com\nx-amz-date:20150830T123600Z\n\n"
        f"host;x-amz-date\n{EMPTY_SHA256}"
    )
    assert signed == "host;x-amz-date"
    assert wire.sigv4_string_to_sign(
        "20150830T123600Z", "20150830/us-east-1/service/aws4_request", canonical
    ) == (
        "AWS4-HMAC-SHA256\n20150830T123600Z\n20150830/us-east-1/service/aws4_request\n"
        "bb579772317eb040ac9ed261061d46c1f17a8133879d6129b6e1c25292927e63"
    )


def test_get_vanilla_authorization_header() -> None:
    assert suite_request("GET").header("authorization") == (
        "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, "
        "SignedHeaders=host;x-amz-date, "
        "Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"
    )


def test_post_vanilla_and_query_order_signatures() -> None:
    post = suite_request("POST").header("authorization") or ""
    assert post.endswith("5da7c1a2acd57cee7505fc6676e4e544621c30862966e37dddb68e92efbe5d6b")
    query = suite_request("GET", "https://example.amazonaws.com/?Param2=value2&Param1=value1")
    assert (query.header("authorization") or "").endswith(
        "b97d918cfa904a5beff61c982a1b6f458b799221646efd99d3219ec94cdf2500"
    )


def test_session_tokens_are_signed() -> None:
    creds = wire.AwsCredentials("ASIAEXAMPLE", "secret", "session-token")
    signed = wire.sigv4_sign(
        wire.HttpRequest("POST", "https://email.eu-west-1.amazonaws.com/x", (), b"{}"),
        creds,
        region="eu-west-1",
        service="ses",
        now=NOW,
    )
    assert signed.header("x-amz-security-token") == "session-token"
    assert "x-amz-security-token" in (signed.header("authorization") or "")
    assert "secret" not in repr(creds)


# --- SES v2 -------------------------------------------------------------------------------------


def test_the_ses_request_carries_the_raw_mime_and_is_signed() -> None:
    request = wire.ses_send_email_request(
        an_email(),
        region="eu-west-1",
        credentials=wire.AwsCredentials("AKIDEXAMPLE", "secret"),
        now=NOW,
        configuration_set="clarion",
        tags={"tenant": "t-1"},
    )
    assert request.method == "POST"
    assert request.url == "https://email.eu-west-1.amazonaws.com/v2/email/outbound-emails"
    body = json.loads(request.body)
    assert body["Destination"] == {"ToAddresses": ["Bob <bob@xn--exmple-cua.org>"]}
    assert body["ConfigurationSetName"] == "clarion"
    assert body["EmailTags"] == [{"Name": "tenant", "Value": "t-1"}]
    raw = base64.b64decode(body["Content"]["Raw"]["Data"])
    assert parsed(raw)["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    authorization = request.header("authorization") or ""
    assert authorization.startswith(
        "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20260501/eu-west-1/ses/aws4_request, "
        "SignedHeaders=content-type;host;x-amz-date, Signature="
    )
    assert request.header("x-amz-date") == "20260501T120000Z"


def test_the_ses_simple_form_carries_the_unsubscribe_headers() -> None:
    request = wire.ses_send_email_request(
        an_email(), region="us-east-1", credentials=SUITE, now=NOW, raw=False
    )
    simple = json.loads(request.body)["Content"]["Simple"]
    assert simple["Subject"] == {"Data": "Your order shipped — ünïcode", "Charset": "UTF-8"}
    assert simple["Body"]["Html"]["Data"] == "<p>Hello <b>Bob</b></p>"
    names = {h["Name"] for h in simple["Headers"]}
    assert {"List-Unsubscribe", "List-Unsubscribe-Post"} <= names


def test_bad_ses_inputs_are_refused() -> None:
    with pytest.raises(errors.InvalidRequest):
        wire.ses_endpoint("eu-west-1/../x")
    with pytest.raises(errors.InvalidRequest):
        wire.ses_send_email_request(
            an_email(), region="us-east-1", credentials=SUITE, now=NOW, tags={"a b": "c"}
        )


def ses_error(status: int, kind: str, message: str = "nope") -> outcomes.Outcome:
    body = json.dumps({"message": message}).encode()
    return wire.classify_ses_response(status, {"x-amzn-ErrorType": f"{kind}:http://x/"}, body)


def test_ses_200_is_delivered_with_the_message_id() -> None:
    assert wire.classify_ses_response(200, {}, b'{"MessageId":"010f-abc"}') == outcomes.Delivered(
        "010f-abc"
    )


@pytest.mark.parametrize(
    ("status", "kind", "expected"),
    [
        (429, "TooManyRequestsException", outcomes.RetryLater),
        (400, "ThrottlingException", outcomes.RetryLater),
        (400, "LimitExceededException", outcomes.RetryLater),
        (500, "InternalFailure", outcomes.RetryLater),
        (503, "ServiceUnavailable", outcomes.RetryLater),
        (400, "MessageRejected", outcomes.Rejected),
        (400, "BadRequestException", outcomes.Rejected),
        (400, "MailFromDomainNotVerifiedException", outcomes.AuthFailed),
        (400, "AccountSuspendedException", outcomes.AuthFailed),
        (400, "SendingPausedException", outcomes.AuthFailed),
        (403, "InvalidClientTokenId", outcomes.AuthFailed),
        (403, "SignatureDoesNotMatch", outcomes.AuthFailed),
        (403, "RequestExpired", outcomes.AuthFailed),
        (404, "NotFoundException", outcomes.AuthFailed),
        (400, "SomethingNew", outcomes.Rejected),
    ],
)
def test_ses_errors_are_classified(status: int, kind: str, expected: type) -> None:
    outcome = ses_error(status, kind)
    assert isinstance(outcome, expected)
    assert kind in str(outcome)


def test_ses_error_code_falls_back_to_the_body() -> None:
    body = b'{"__type":"com.amazonaws#MessageRejected","message":"virus"}'
    assert wire.classify_ses_response(400, {}, body) == outcomes.Rejected(
        "SES HTTP 400 MessageRejected: virus"
    )


# --- SendGrid v3 --------------------------------------------------------------------------------


def test_the_sendgrid_request_has_personalization_content_and_headers() -> None:
    request = wire.sendgrid_request(
        an_email(), api_key="SG.key", custom_args={"delivery": "dlv-123"}, categories=["billing"]
    )
    assert request.url == "https://api.sendgrid.com/v3/mail/send"
    assert request.header("authorization") == "Bearer SG.key"
    body = json.loads(request.body)
    assert body["personalizations"] == [
        {"to": [{"email": "bob@xn--exmple-cua.org", "name": "Bob"}]}
    ]
    assert body["from"] == {"email": "noreply@example.com", "name": "Clärion Alerts"}
    assert [c["type"] for c in body["content"]] == ["text/plain", "text/html"]
    assert body["headers"]["List-Unsubscribe"] == f"<{URL}>, <{MAILTO}>"
    assert body["headers"]["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert body["custom_args"] == {"delivery": "dlv-123"}
    assert body["categories"] == ["billing"]


def test_sendgrid_refuses_an_injected_key_and_subject() -> None:
    with pytest.raises(errors.InvalidRequest):
        wire.sendgrid_request(an_email(), api_key="SG.key\r\nX-Evil: 1")
    with pytest.raises(errors.InvalidRequest):
        wire.sendgrid_request(an_email(subject="a\nb"), api_key="SG.key")


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (400, outcomes.Rejected),
        (401, outcomes.AuthFailed),
        (403, outcomes.AuthFailed),
        (413, outcomes.Rejected),
        (500, outcomes.RetryLater),
        (503, outcomes.RetryLater),
    ],
)
def test_sendgrid_errors_are_classified(status: int, expected: type) -> None:
    body = json.dumps({"errors": [{"message": "bad", "field": "from.email", "help": None}]})
    outcome = wire.classify_sendgrid_response(status, {}, body.encode(), now=NOW)
    assert isinstance(outcome, expected)
    if status < 500:
        assert "bad (field from.email)" in str(outcome)


def test_sendgrid_202_is_delivered_with_the_message_id() -> None:
    outcome = wire.classify_sendgrid_response(202, {"X-Message-Id": "abc.123"}, b"", now=NOW)
    assert outcome == outcomes.Delivered("abc.123")


def test_sendgrid_429_waits_until_the_rate_limit_resets() -> None:
    reset = str(int(NOW.timestamp()) + 42)
    outcome = wire.classify_sendgrid_response(
        429, [("X-RateLimit-Reset", reset)], b'{"errors":[{"message":"too many"}]}', now=NOW
    )
    assert outcome == outcomes.RetryLater("SendGrid HTTP 429: too many", 42.0)
