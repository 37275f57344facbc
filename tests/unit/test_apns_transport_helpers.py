"""Pure helpers of the APNs transport: provider-token caching and the push built from a claim."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from clarion.adapters.providers.apns import ProviderTokens, apns_id_for, notification_for
from clarion.domain.notifications import InboxItem
from clarion.domain.records import Claimed
from clarion.domain.statuses import Status

START = datetime(2026, 1, 1, tzinfo=UTC)
PEM = (
    ec.generate_private_key(ec.SECP256R1())
    .private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    .decode()
)


class Clock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> datetime:
        return self.now


def test_a_provider_token_is_reused_until_fifty_minutes_old() -> None:
    clock = Clock()
    tokens = ProviderTokens(clock)
    first = tokens.token(PEM, "KEY1234567", "TEAM123456")
    clock.now = START + timedelta(minutes=49)
    assert tokens.token(PEM, "KEY1234567", "TEAM123456") == first
    clock.now = START + timedelta(minutes=50)
    assert tokens.token(PEM, "KEY1234567", "TEAM123456") != first


def test_an_expired_token_is_renewed_only_once_twenty_minutes_old() -> None:
    clock = Clock()
    tokens = ProviderTokens(clock)
    first = tokens.token(PEM, "KEY1234567", "TEAM123456")
    tokens.expired(PEM, "KEY1234567", "TEAM123456", first)
    clock.now = START + timedelta(minutes=19)
    assert tokens.token(PEM, "KEY1234567", "TEAM123456") == first
    clock.now = START + timedelta(minutes=20)
    assert tokens.token(PEM, "KEY1234567", "TEAM123456") != first


def test_the_push_carries_the_item_and_a_stable_apns_id_per_delivery() -> None:
    item = InboxItem(
        id=1,
        notification_id="n",
        event_id="e",
        user="u",
        status=Status.PENDING,
        type="t",
        title="T",
        body="B",
        data={"k": 1},
        category="c",
        group="g",
        created_at=START,
    )
    claimed = Claimed(7, 1, "tenant", "apns", "3", 1, item, address="ab" * 32)
    n = notification_for(claimed, "com.example.app")
    assert (n.device_token, n.title, n.body, n.category, n.thread_id) == (
        "ab" * 32,
        "T",
        "B",
        "c",
        "g",
    )
    assert n.custom_data == {"k": 1}
    assert n.apns_id == apns_id_for(7) != apns_id_for(8)
