"""Web Push, sans I/O: RFC 8291 encryption, RFC 8292 VAPID, RFC 8030 requests and answers."""

from __future__ import annotations

import struct
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import hashes, hmac, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import given, settings, strategies as st

from clarion.domain import errors, outcomes
from clarion.wire import webpush
from clarion.wire.webpush import Message, Subscription, Urgency


def _b64(text: str) -> bytes:
    """RFC 8291 prints its base64url values wrapped; the whitespace "can be removed"."""
    return webpush.b64url_decode("".join(text.split()))


def _key(scalar_b64: str) -> ec.EllipticCurvePrivateKey:
    return ec.derive_private_key(int.from_bytes(_b64(scalar_b64), "big"), ec.SECP256R1())


# RFC 8291 §5 and Appendix A, typed out from the RFC text.
RFC_PLAINTEXT = b"When I grow up, I want to be a watermelon"
RFC_AS_PRIVATE = "yfWPiYE-n46HLnH0KqZOF1fJJU3MYrct3AELtAQ-oRw"
RFC_AS_PUBLIC = """BP4z9KsN6nGRTbVYI_c7VJSPQTBtkgcy27mlmlMoZIIg
                   Dll6e3vCYLocInmYWAmS6TlzAC8wEqKK6PBru3jl7A8"""
RFC_UA_PRIVATE = "q1dXpw3UpT5VOmu_cf_v6ih07Aems3njxI-JWgLcM94"
RFC_UA_PUBLIC = """BCVxsr7N_eNgVRqvHtD0zTZsEc6-VV-JvLexhqUzORcx
                   aOzi6-AYWXvTBHm4bjyPjs7Vd8pZGH6SRpkNtoIAiw4"""
RFC_SALT = "DGv6ra1nlYgDCS1FRnbzlw"
RFC_AUTH = "BTBZMqHH6r4Tts7J_aSIgg"
RFC_ECDH_SECRET = "kyrL1jIIOHEzg3sM2ZWRHDRB62YACZhhSlknJ672kSs"
RFC_PRK_KEY = "Snr3JMxaHVDXHWJn5wdC52WjpCtd2EIEGBykDcZW32k"
RFC_KEY_INFO = """V2ViUHVzaDogaW5mbwAEJXGyvs3942BVGq8e0PTNNmwR
                  zr5VX4m8t7GGpTM5FzFo7OLr4BhZe9MEebhuPI-OztV3
                  ylkYfpJGmQ22ggCLDgT-M_SrDepxkU21WCP3O1SUj0Ew
                  bZIHMtu5pZpTKGSCIA5Zent7wmC6HCJ5mFgJkuk5cwAv
                  MBKiiujwa7t45ewP"""
RFC_IKM = "S4lYMb_L0FxCeq0WhDx813KgSYqU26kOyzWUdsXYyrg"
RFC_PRK = "09_eUZGrsvxChDCGRCdkLiDXrReGOEVeSCdCcPBSJSc"
RFC_CEK = "oIhVW04MRdy2XN9CiKLxTg"
RFC_NONCE = "4h_95klXJ5E_qnoN"
RFC_HEADER = """DGv6ra1nlYgDCS1FRnbzlwAAEABBBP4z
                9KsN6nGRTbVYI_c7VJSPQTBtkgcy27ml mlMoZIIgDll6e3vCYLocInmYWAmS6Tlz
                AC8wEqKK6PBru3jl7A8"""
RFC_CIPHERTEXT = """8pfeW0KbunFT06SuDKoJH9Ql87S1QUrd irN6GcG7sFz1y1sqLgVi1VhjVkHsUoEs
                    bI_0LpXMuGvnzQ"""
RFC_BODY = """DGv6ra1nlYgDCS1FRnbzlwAAEABBBP4z9KsN6nGRTbVYI_c7VJSPQTBtkgcy27ml
              mlMoZIIgDll6e3vCYLocInmYWAmS6TlzAC8wEqKK6PBru3jl7A_yl95bQpu6cVPT
              pK4Mqgkf1CXztLVBSt2Ks3oZwbuwXPXLWyouBWLVWGNWQexSgSxsj_Qulcy4a-fN"""

ENDPOINT = "https://push.example.net/push/JzLQ3raZJfFBR0aqvOMsLrt54w4rJUsV"
NOW = datetime(2026, 3, 4, 5, 6, 7, tzinfo=UTC)


def _rfc_encrypt(plaintext: bytes = RFC_PLAINTEXT, **kwargs: Any) -> bytes:
    return webpush.encrypt(
        plaintext,
        _b64(RFC_UA_PUBLIC),
        _b64(RFC_AUTH),
        salt=_b64(RFC_SALT),
        sender_key=_key(RFC_AS_PRIVATE),
        **kwargs,
    )


def _receiver() -> tuple[ec.EllipticCurvePrivateKey, bytes, bytes]:
    key = ec.generate_private_key(ec.SECP256R1())
    point = key.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    return key, point, b"\x07" * 16


# --- RFC 8291 Appendix A -----------------------------------------------------------------------


def test_encryption_reproduces_the_rfc_8291_example_byte_for_byte() -> None:
    body = _rfc_encrypt()
    assert body == _b64(RFC_BODY)
    assert body[:86] == _b64(RFC_HEADER)
    assert body[86:] == _b64(RFC_CIPHERTEXT)
    assert len(body) == 144


def test_the_rfc_keys_are_the_ones_the_rfc_prints() -> None:
    assert _b64(RFC_AS_PUBLIC) == _key(RFC_AS_PRIVATE).public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    assert webpush.vapid_public_key(_key(RFC_UA_PRIVATE)) == "".join(RFC_UA_PUBLIC.split())


def test_every_intermediate_value_matches_rfc_8291_appendix_a() -> None:
    ecdh_secret = _key(RFC_AS_PRIVATE).exchange(
        ec.ECDH(),
        ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), _b64(RFC_UA_PUBLIC)),
    )
    assert ecdh_secret == _b64(RFC_ECDH_SECRET)
    assert _hmac(_b64(RFC_AUTH), ecdh_secret) == _b64(RFC_PRK_KEY)
    assert b"WebPush: info\x00" + _b64(RFC_UA_PUBLIC) + _b64(RFC_AS_PUBLIC) == _b64(RFC_KEY_INFO)
    assert _hmac(_b64(RFC_PRK_KEY), _b64(RFC_KEY_INFO) + b"\x01") == _b64(RFC_IKM)
    assert _hmac(_b64(RFC_SALT), _b64(RFC_IKM)) == _b64(RFC_PRK)
    cek, nonce = webpush._derive(
        ecdh_secret, _b64(RFC_AUTH), _b64(RFC_UA_PUBLIC), _b64(RFC_AS_PUBLIC), _b64(RFC_SALT)
    )
    assert cek == _b64(RFC_CEK)
    assert nonce == _b64(RFC_NONCE)


def _hmac(key: bytes, data: bytes) -> bytes:
    mac = hmac.HMAC(key, hashes.SHA256())
    mac.update(data)
    return mac.finalize()


def test_the_rfc_8291_example_decrypts_with_the_receiver_key() -> None:
    assert webpush.decrypt(_b64(RFC_BODY), _key(RFC_UA_PRIVATE), _b64(RFC_AUTH)) == RFC_PLAINTEXT


def test_the_header_carries_the_salt_a_4096_record_size_and_the_sender_key() -> None:
    body = _rfc_encrypt()
    salt, record_size, id_length = body[:16], *struct.unpack("!IB", body[16:21])
    assert salt == _b64(RFC_SALT)
    assert (record_size, id_length) == (4096, 65)
    assert body[21:86] == _b64(RFC_AS_PUBLIC)


# --- encryption: round trips, randomness, limits -------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(plaintext=st.binary(max_size=webpush.MAX_PLAINTEXT_BYTES), data=st.data())
def test_any_plaintext_within_the_limit_round_trips(plaintext: bytes, data: st.DataObject) -> None:
    padding = data.draw(st.integers(0, webpush.MAX_PLAINTEXT_BYTES - len(plaintext)))
    key, point, auth = _receiver()
    body = webpush.encrypt(plaintext, point, auth, padding=padding)
    assert len(body) == 86 + len(plaintext) + 1 + padding + 16 <= 4096
    assert webpush.decrypt(body, key, auth) == plaintext


def test_each_message_gets_a_fresh_salt_and_sender_key() -> None:
    _, point, auth = _receiver()
    first, second = (webpush.encrypt(b"same", point, auth) for _ in range(2))
    assert first[:16] != second[:16]
    assert first[21:86] != second[21:86]


def test_a_plaintext_of_3993_bytes_fills_the_4096_byte_body_and_one_more_is_refused() -> None:
    assert webpush.MAX_PLAINTEXT_BYTES == 3993
    assert len(_rfc_encrypt(b"x" * 3993)) == 4096
    with pytest.raises(errors.InvalidRequest, match="4097 bytes") as refused:
        _rfc_encrypt(b"x" * 3994)
    assert refused.value.details == {"size": 4097, "limit": 4096}


def test_padding_counts_towards_the_limit() -> None:
    assert len(_rfc_encrypt(b"x" * 3000, padding=993)) == 4096
    with pytest.raises(errors.InvalidRequest, match="4097 bytes"):
        _rfc_encrypt(b"x" * 3000, padding=994)


def test_padding_is_zero_bytes_after_the_delimiter_and_is_stripped_on_decryption() -> None:
    key, point, auth = _receiver()
    body = webpush.encrypt(b"hi", point, auth, padding=30)
    assert len(body) == 86 + 2 + 1 + 30 + 16
    assert webpush.decrypt(body, key, auth) == b"hi"


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"p256dh": b"\x04" + b"\x01" * 63}, "65-byte"),
        ({"p256dh": b"\x02" + b"\x01" * 64}, "65-byte"),
        ({"p256dh": b"\x04" + b"\x01" * 64}, "not a point on P-256"),
        ({"auth": b"\x00" * 15}, "auth secret"),
        ({"auth": b"\x00" * 17}, "auth secret"),
        ({"salt": b"\x00" * 15}, "salt"),
        ({"padding": -1}, "padding"),
    ],
)
def test_malformed_keys_secrets_salts_and_padding_are_refused(
    change: dict[str, Any], match: str
) -> None:
    arguments: dict[str, Any] = {
        "p256dh": _b64(RFC_UA_PUBLIC),
        "auth": _b64(RFC_AUTH),
        "salt": None,
        "padding": 0,
    }
    arguments.update(change)
    with pytest.raises(errors.InvalidRequest, match=match):
        webpush.encrypt(
            b"x",
            arguments["p256dh"],
            arguments["auth"],
            salt=arguments["salt"],
            padding=arguments["padding"],
        )


def test_a_sender_key_on_another_curve_is_refused() -> None:
    with pytest.raises(errors.InvalidRequest, match="P-256"):
        webpush.encrypt(
            b"x",
            _b64(RFC_UA_PUBLIC),
            _b64(RFC_AUTH),
            sender_key=ec.generate_private_key(ec.SECP384R1()),
        )


# --- decryption refusals -------------------------------------------------------------------------


def _rfc_body() -> bytearray:
    return bytearray(_b64(RFC_BODY))


def _decrypt(body: bytes | bytearray, auth: str = RFC_AUTH) -> bytes:
    return webpush.decrypt(bytes(body), _key(RFC_UA_PRIVATE), _b64(auth))


def test_a_tampered_record_does_not_decrypt() -> None:
    body = _rfc_body()
    body[-1] ^= 1
    with pytest.raises(errors.InvalidRequest, match="bad tag"):
        _decrypt(body)


def test_the_wrong_auth_secret_does_not_decrypt() -> None:
    with pytest.raises(errors.InvalidRequest, match="bad tag"):
        _decrypt(_rfc_body(), auth="AAAAAAAAAAAAAAAAAAAAAA")


def test_a_body_shorter_than_its_header_is_refused() -> None:
    with pytest.raises(errors.InvalidRequest, match="shorter"):
        _decrypt(_rfc_body()[:20])
    with pytest.raises(errors.InvalidRequest, match="shorter than a tag"):
        _decrypt(_rfc_body()[: 86 + 16])


def test_a_record_size_below_18_is_refused() -> None:
    body = _rfc_body()
    body[16:20] = struct.pack("!I", 17)
    with pytest.raises(errors.InvalidRequest, match="below 18"):
        _decrypt(body)


def test_a_body_of_more_than_one_record_is_refused() -> None:
    body = _rfc_body()
    body[16:20] = struct.pack("!I", 18)
    with pytest.raises(errors.InvalidRequest, match="single record"):
        _decrypt(body)


def test_a_key_id_that_is_not_a_65_byte_point_is_refused() -> None:
    body = _rfc_body()
    body[20] = 64
    with pytest.raises(errors.InvalidRequest, match="key id"):
        _decrypt(body)
    body = _rfc_body()
    body[22] ^= 0xFF
    with pytest.raises(errors.InvalidRequest, match="sender key"):
        _decrypt(body)


@pytest.mark.parametrize("padded", [b"hello\x01", b"hello\x01\x00\x00", b"\x00\x00\x00"])
def test_a_delimiter_other_than_0x02_is_refused(padded: bytes) -> None:
    # Encrypt by hand with the RFC's key and nonce, so only the delimiter is wrong.
    record = AESGCM(_b64(RFC_CEK)).encrypt(_b64(RFC_NONCE), padded, None)
    with pytest.raises(errors.InvalidRequest, match="delimiter"):
        _decrypt(_b64(RFC_HEADER) + record)


# --- subscriptions and endpoints ---------------------------------------------------------------


def test_a_subscription_parses_from_the_browser_json_strings() -> None:
    subscription = Subscription.parse(ENDPOINT, "".join(RFC_UA_PUBLIC.split()), RFC_AUTH + "==")
    assert subscription == Subscription(ENDPOINT, _b64(RFC_UA_PUBLIC), _b64(RFC_AUTH))


@pytest.mark.parametrize(
    ("endpoint", "p256dh", "auth", "match"),
    [
        ("http://push.example.net/x", RFC_UA_PUBLIC, RFC_AUTH, "https"),
        (ENDPOINT, "not+base64/url", RFC_AUTH, "base64url"),
        (ENDPOINT, "AAAA", RFC_AUTH, "65-byte"),
        (ENDPOINT, RFC_UA_PUBLIC, "AAAA", "auth secret"),
        (ENDPOINT, RFC_UA_PUBLIC, "A", "base64url"),
    ],
)
def test_a_subscription_with_a_bad_part_is_refused(
    endpoint: str, p256dh: str, auth: str, match: str
) -> None:
    with pytest.raises(errors.InvalidRequest, match=match):
        Subscription.parse(endpoint, "".join(p256dh.split()), auth)


@pytest.mark.parametrize(
    ("endpoint", "origin"),
    [
        ("https://fcm.googleapis.com/fcm/send/abc:def", "https://fcm.googleapis.com"),
        (
            "https://updates.push.services.mozilla.com/wpush/v2/gAAA",
            "https://updates.push.services.mozilla.com",
        ),
        ("https://Web.Push.Apple.com/QGuQ?x=1", "https://web.push.apple.com"),
        ("https://push.example.net:443/p", "https://push.example.net"),
        ("https://push.example.net:8443/p", "https://push.example.net:8443"),
        ("HTTPS://push.example.net/p", "https://push.example.net"),
        ("https://[2001:db8::1]:8443/p", "https://[2001:db8::1]:8443"),
    ],
)
def test_the_origin_of_an_endpoint_is_scheme_host_and_a_non_default_port(
    endpoint: str, origin: str
) -> None:
    assert webpush.endpoint_origin(endpoint) == origin


@pytest.mark.parametrize(
    ("endpoint", "match"),
    [
        ("http://push.example.net/p", "https"),
        ("ftp://push.example.net/p", "https"),
        ("push.example.net/p", "https"),
        ("https://user:pw@push.example.net/p", "user information"),
        ("https://user@push.example.net/p", "user information"),
        ("https://push.example.net/p#frag", "fragment"),
        ("https:///p", "no host"),
        ("https://push.example.net/p q", "blanks"),
        ("https://push.example.net/\x00", "control"),
        ("https://püsh.example.net/p", "ASCII"),
        ("https://push.example.net:99999/p", "cannot be parsed"),
        ("", "ASCII URL"),
        ("https://push.example.net/" + "a" * 2100, "2048"),
    ],
)
def test_an_endpoint_clarion_will_not_post_to_is_refused(endpoint: str, match: str) -> None:
    with pytest.raises(errors.InvalidRequest, match=match):
        webpush.endpoint_origin(endpoint)


# --- VAPID ---------------------------------------------------------------------------------------

VAPID_KEY = ec.generate_private_key(ec.SECP256R1())


def test_a_vapid_token_has_the_origin_as_audience_12_hours_of_life_and_the_subject() -> None:
    token = webpush.sign_vapid(VAPID_KEY, ENDPOINT, subject="mailto:ops@example.com", now=NOW)
    assert jwt.get_unverified_header(token) == {"alg": "ES256", "typ": "JWT"}
    claims = jwt.decode(
        token,
        VAPID_KEY.public_key(),
        algorithms=["ES256"],
        audience="https://push.example.net",
        options={"verify_exp": False},
    )
    assert claims == {
        "aud": "https://push.example.net",
        "exp": int(NOW.timestamp()) + 12 * 3600,
        "sub": "mailto:ops@example.com",
    }


def test_the_authorization_header_is_vapid_t_and_k_with_the_uncompressed_public_key() -> None:
    token = webpush.sign_vapid(VAPID_KEY, ENDPOINT, subject="https://example.com/contact", now=NOW)
    value = webpush.vapid_authorization(token, VAPID_KEY)
    k = webpush.vapid_public_key(VAPID_KEY)
    assert value == f"vapid t={token}, k={k}"
    raw = webpush.b64url_decode(k)
    assert len(raw) == 65
    assert raw[0] == 4
    assert "=" not in k


def test_a_signed_vapid_credential_verifies_as_a_push_service_would() -> None:
    token = webpush.sign_vapid(VAPID_KEY, ENDPOINT, subject="mailto:ops@example.com", now=NOW)
    credential = webpush.verify_vapid(
        webpush.vapid_authorization(token, VAPID_KEY),
        endpoint=ENDPOINT + "/another/subscription",
        now=NOW + timedelta(hours=11),
    )
    assert credential.public_key == webpush.vapid_public_key(VAPID_KEY)
    assert credential.claims["sub"] == "mailto:ops@example.com"


@pytest.mark.parametrize("hours", [24, 0.001])
def test_a_lifetime_up_to_24_hours_is_signed(hours: float) -> None:
    token = webpush.sign_vapid(
        VAPID_KEY, ENDPOINT, subject="mailto:a@b.c", now=NOW, lifetime=timedelta(hours=hours)
    )
    webpush.verify_vapid(webpush.vapid_authorization(token, VAPID_KEY), endpoint=ENDPOINT, now=NOW)


@pytest.mark.parametrize(
    "lifetime", [timedelta(hours=24, seconds=1), timedelta(0), timedelta(seconds=-5)]
)
def test_a_lifetime_over_24_hours_or_not_positive_is_refused(lifetime: timedelta) -> None:
    with pytest.raises(errors.InvalidRequest, match="24 hours"):
        webpush.sign_vapid(VAPID_KEY, ENDPOINT, subject="mailto:a@b.c", now=NOW, lifetime=lifetime)


@pytest.mark.parametrize(
    "subject", ["", "ops@example.com", "mailto:", "mailto:nobody", "http://example.com", "https://"]
)
def test_a_subject_that_is_not_a_mailto_or_https_uri_is_refused(subject: str) -> None:
    with pytest.raises(errors.InvalidRequest, match="subject"):
        webpush.sign_vapid(VAPID_KEY, ENDPOINT, subject=subject, now=NOW)


def test_signing_refuses_a_naive_time_and_a_key_off_p256() -> None:
    with pytest.raises(errors.InvalidRequest, match="timezone"):
        webpush.sign_vapid(VAPID_KEY, ENDPOINT, subject="mailto:a@b.c", now=datetime(2026, 1, 1))
    with pytest.raises(errors.InvalidRequest, match="P-256"):
        webpush.sign_vapid(
            ec.generate_private_key(ec.SECP384R1()), ENDPOINT, subject="mailto:a@b.c", now=NOW
        )


def _credential(claims: dict[str, Any], key: ec.EllipticCurvePrivateKey = VAPID_KEY) -> str:
    token = jwt.encode(claims, key, algorithm="ES256")
    return f"vapid t={token}, k={webpush.vapid_public_key(VAPID_KEY)}"


GOOD_CLAIMS = {"aud": "https://push.example.net", "exp": int(NOW.timestamp()) + 3600}


@pytest.mark.parametrize(
    ("authorization", "match"),
    [
        (_credential({**GOOD_CLAIMS, "aud": "https://other.example"}), "does not verify"),
        (_credential({**GOOD_CLAIMS, "exp": int(NOW.timestamp())}), "expired"),
        (_credential({**GOOD_CLAIMS, "exp": int(NOW.timestamp()) + 86401}), "24 hours"),
        (_credential({"aud": GOOD_CLAIMS["aud"]}), "does not verify"),
        (_credential({**GOOD_CLAIMS, "sub": "nobody"}), "subject"),
        (_credential(GOOD_CLAIMS, ec.generate_private_key(ec.SECP256R1())), "does not verify"),
        ("WebPush " + _credential(GOOD_CLAIMS)[6:], "scheme"),
        ("vapid t=abc", "both"),
        ("vapid nonsense", "name=value"),
    ],
)
def test_verification_refuses_what_a_push_service_refuses(authorization: str, match: str) -> None:
    with pytest.raises(errors.InvalidRequest, match=match):
        webpush.verify_vapid(authorization, endpoint=ENDPOINT, now=NOW)


def test_verification_takes_the_parameters_in_any_order_and_spacing() -> None:
    token = jwt.encode(GOOD_CLAIMS, VAPID_KEY, algorithm="ES256")
    value = f"Vapid k={webpush.vapid_public_key(VAPID_KEY)},t={token}"
    assert webpush.verify_vapid(value, endpoint=ENDPOINT, now=NOW).claims == GOOD_CLAIMS


def _pem(key: Any, private_format: serialization.PrivateFormat) -> bytes:
    return bytes(
        key.private_bytes(serialization.Encoding.PEM, private_format, serialization.NoEncryption())
    )


@pytest.mark.parametrize(
    "source",
    [
        _pem(VAPID_KEY, serialization.PrivateFormat.PKCS8),
        _pem(VAPID_KEY, serialization.PrivateFormat.TraditionalOpenSSL).decode(),
        webpush.b64url_encode(VAPID_KEY.private_numbers().private_value.to_bytes(32, "big")),
    ],
    # The key is made afresh at each collection: ids that name it would differ between the
    # processes of a parallel run.
    ids=["pkcs8-pem", "traditional-pem", "raw-scalar"],
)
def test_a_vapid_key_loads_from_pem_or_from_the_raw_base64url_scalar(source: str | bytes) -> None:
    loaded = webpush.load_vapid_key(source)
    assert webpush.vapid_public_key(loaded) == webpush.vapid_public_key(VAPID_KEY)


@pytest.mark.parametrize(
    ("source", "match"),
    [
        (_pem(rsa.generate_private_key(65537, 2048), serialization.PrivateFormat.PKCS8), "P-256"),
        (b"-----BEGIN PRIVATE KEY-----\nnope\n-----END PRIVATE KEY-----\n", "PEM"),
        (webpush.b64url_encode(b"\x01" * 31), "32 bytes"),
        (webpush.b64url_encode(b"\x00" * 32), "scalar"),
        ("not base64!", "base64url"),
        (b"\xff\xfe", "neither"),
    ],
)
def test_a_vapid_key_in_no_known_form_is_refused(source: str | bytes, match: str) -> None:
    with pytest.raises(errors.InvalidRequest, match=match):
        webpush.load_vapid_key(source)


# --- requests ------------------------------------------------------------------------------------

SUBSCRIPTION = Subscription(ENDPOINT, _b64(RFC_UA_PUBLIC), _b64(RFC_AUTH))
AUTHORIZATION = "vapid t=eyJ0eXAiOiJKV1QiLCJhbGciOiJFUzI1NiJ9.e30.c2ln, k=BP4z"


def _build(message: Message, **kwargs: Any) -> webpush.Request:
    return webpush.build_request(message, authorization=AUTHORIZATION, **kwargs)


def test_a_request_with_a_payload_carries_every_header_in_order_and_the_rfc_body() -> None:
    request = _build(
        Message(SUBSCRIPTION, RFC_PLAINTEXT, ttl=10, urgency=Urgency.HIGH, topic="order-42_x"),
        salt=_b64(RFC_SALT),
        sender_key=_key(RFC_AS_PRIVATE),
    )
    assert request.method == "POST"
    assert request.url == ENDPOINT
    assert request.headers == (
        ("TTL", "10"),
        ("Urgency", "high"),
        ("Topic", "order-42_x"),
        ("Content-Encoding", "aes128gcm"),
        ("Content-Type", "application/octet-stream"),
        ("Authorization", AUTHORIZATION),
    )
    assert request.body == _b64(RFC_BODY)


def test_the_default_ttl_is_four_weeks_and_normal_urgency_is_not_sent() -> None:
    headers = dict(_build(Message(SUBSCRIPTION, b"{}")).headers)
    assert headers["TTL"] == "2419200"
    assert "Urgency" not in headers
    assert "Topic" not in headers


def test_a_ttl_of_zero_is_sent_only_when_asked_for() -> None:
    assert dict(_build(Message(SUBSCRIPTION, b"{}", ttl=0)).headers)["TTL"] == "0"


@pytest.mark.parametrize("ttl", [-1, 2**31, True, 1.5])
def test_a_ttl_that_is_not_whole_non_negative_seconds_is_refused(ttl: Any) -> None:
    with pytest.raises(errors.InvalidRequest, match="TTL"):
        _build(Message(SUBSCRIPTION, b"{}", ttl=ttl))


@pytest.mark.parametrize("urgency", ["very-low", "low", "high"])
def test_each_urgency_but_normal_is_sent(urgency: str) -> None:
    message = Message(SUBSCRIPTION, b"{}", urgency=Urgency(urgency))
    assert dict(_build(message).headers)["Urgency"] == urgency


def test_an_unknown_urgency_is_refused() -> None:
    with pytest.raises(errors.InvalidRequest, match="urgency"):
        _build(Message(SUBSCRIPTION, b"{}", urgency="urgent"))  # type: ignore[arg-type]


def test_a_topic_of_32_base64url_characters_is_sent() -> None:
    topic = "aZ09-_" * 5 + "xy"
    assert dict(_build(Message(SUBSCRIPTION, b"{}", topic=topic)).headers)["Topic"] == topic


@pytest.mark.parametrize("topic", ["a" * 33, "", "a+b", "a/b", "a=", "a b", "é"])
def test_a_topic_over_32_characters_or_outside_base64url_is_refused(topic: str) -> None:
    with pytest.raises(errors.InvalidRequest, match="topic"):
        _build(Message(SUBSCRIPTION, b"{}", topic=topic))


def test_a_push_without_payload_has_no_body_and_no_content_headers() -> None:
    request = _build(Message(SUBSCRIPTION))
    assert request.body == b""
    assert [name for name, _ in request.headers] == ["TTL", "Authorization"]


def test_a_payload_is_encrypted_for_the_subscription_and_decrypts_on_the_device() -> None:
    key, point, auth = _receiver()
    request = _build(Message(Subscription(ENDPOINT, point, auth), b'{"title":"Hi"}', padding=5))
    assert webpush.decrypt(request.body, key, auth) == b'{"title":"Hi"}'


def test_a_payload_over_the_limit_is_refused_when_building() -> None:
    with pytest.raises(errors.InvalidRequest, match="bytes"):
        _build(Message(SUBSCRIPTION, b"x" * 3994))


@pytest.mark.parametrize("authorization", ["Bearer abc", "vapid t=a,\r\nX-Evil: 1", ""])
def test_an_authorization_that_is_not_a_vapid_header_value_is_refused(authorization: str) -> None:
    with pytest.raises(errors.InvalidRequest, match="authorization"):
        webpush.build_request(Message(SUBSCRIPTION, b"{}"), authorization=authorization)


def test_a_subscription_with_an_unusable_endpoint_is_refused_when_building() -> None:
    with pytest.raises(errors.InvalidRequest, match="https"):
        _build(Message(Subscription("http://x.example/p", _b64(RFC_UA_PUBLIC), _b64(RFC_AUTH))))


# --- responses -----------------------------------------------------------------------------------


def _classify(status: int, headers: Any = None, body: bytes = b"") -> outcomes.Outcome:
    return webpush.classify_response(status, headers or {}, body, now=NOW)


def test_a_201_is_delivered_with_the_location_as_reference() -> None:
    location = "https://push.example.net/message/qDIYHNcfAIPP_5tlYW2Wo"
    assert _classify(201, [("Location", location), ("TTL", "10")]) == outcomes.Delivered(location)


@pytest.mark.parametrize("status", [200, 201, 202])
def test_any_2xx_is_delivered_even_without_a_location(status: int) -> None:
    assert _classify(status) == outcomes.Delivered(None)


# Typed out from protocols.md §4's table, independently of the implementation.
STATUSES: list[tuple[int, type[outcomes.Outcome]]] = [
    (400, outcomes.Rejected),
    (401, outcomes.AuthFailed),
    (403, outcomes.AuthFailed),
    (404, outcomes.TokenInvalid),
    (410, outcomes.TokenInvalid),
    (413, outcomes.Rejected),
    (429, outcomes.RetryLater),
    (500, outcomes.RetryLater),
    (502, outcomes.RetryLater),
    (503, outcomes.RetryLater),
    (405, outcomes.Rejected),
    (418, outcomes.Rejected),
    (301, outcomes.RetryLater),
]


@pytest.mark.parametrize(("status", "expected"), STATUSES)
def test_each_status_maps_to_its_outcome(status: int, expected: type[outcomes.Outcome]) -> None:
    outcome = _classify(status)
    assert type(outcome) is expected
    assert not isinstance(outcome, outcomes.Delivered)
    assert f"HTTP {status}" in outcome.reason


@pytest.mark.parametrize("status", [400, 401, 403, 413, 500])
def test_only_404_and_410_retire_the_subscription(status: int) -> None:
    assert not isinstance(_classify(status), outcomes.TokenInvalid)


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("120", 120.0),
        (" 7 ", 7.0),
        ("Wed, 04 Mar 2026 05:08:07 GMT", 120.0),
        ("Wed, 04 Mar 2026 05:00:00 GMT", 0.0),
        ("soon", None),
        ("-5", None),
        ("", None),
    ],
)
@pytest.mark.parametrize("status", [429, 503])
def test_retry_after_in_seconds_or_as_an_http_date_is_honoured(
    status: int, value: str, seconds: float | None
) -> None:
    outcome = _classify(status, {"Retry-After": value})
    assert isinstance(outcome, outcomes.RetryLater)
    assert outcome.after_seconds == seconds


def test_the_push_service_text_is_kept_in_the_reason() -> None:
    outcome = _classify(403, {}, b"invalid JWT provided\n")
    assert outcome == outcomes.AuthFailed("HTTP 403: invalid JWT provided")


@pytest.mark.parametrize(
    "text",
    [
        b"the key in the authorization header does not correspond to the sender ID used to "
        b"subscribe this user",
        b"VAPID key mismatch",
    ],
)
def test_a_403_for_a_key_the_subscription_was_not_made_with_retires_only_it(text: bytes) -> None:
    assert isinstance(_classify(403, {}, text), outcomes.TokenInvalid)


def test_a_subject_is_checked_on_its_own() -> None:
    webpush.check_subject("mailto:ops@example.com")
    webpush.check_subject("https://example.com/contact")
    with pytest.raises(errors.InvalidRequest):
        webpush.check_subject("ops@example.com")


def test_the_message_of_a_json_error_is_kept_in_the_reason() -> None:
    body = b'{"code": 410, "errno": 106, "error": "Gone", "message": "Request did not validate"}'
    assert _classify(410, {}, body) == outcomes.TokenInvalid("HTTP 410: Request did not validate")


def test_a_long_or_binary_error_body_is_clipped_and_made_printable() -> None:
    outcome = _classify(400, {}, b"\x00\x1b[31m" + b"e" * 500)
    assert isinstance(outcome, outcomes.Rejected)
    assert outcome.reason.isprintable()
    assert len(outcome.reason) <= len("HTTP 400: ") + webpush.MAX_REASON_CHARS


@given(
    status=st.integers(min_value=100, max_value=599),
    body=st.binary(max_size=300),
    retry_after=st.none() | st.text(max_size=40),
)
def test_any_answer_classifies_without_raising(
    status: int, body: bytes, retry_after: str | None
) -> None:
    headers = {} if retry_after is None else {"retry-after": retry_after}
    outcome = _classify(status, headers, body)
    assert isinstance(
        outcome,
        outcomes.Delivered
        | outcomes.RetryLater
        | outcomes.TokenInvalid
        | outcomes.Rejected
        | outcomes.AuthFailed,
    )
