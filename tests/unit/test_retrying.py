"""When a failed delivery is tried again."""

from __future__ import annotations

import pytest
from hypothesis import given, strategies as st

from clarion.domain.retrying import (
    BASE_DELAY_SECONDS,
    MAX_ATTEMPTS,
    MAX_DELAY_SECONDS,
    retry_delay,
)

jitters = st.floats(min_value=0.0, max_value=1.0, exclude_max=True)
attempts_before_giving_up = st.integers(min_value=0, max_value=MAX_ATTEMPTS - 1)
hints = st.floats(min_value=0.0, max_value=86_400.0)


def delay(attempts: int, *, jitter: float, hint: float | None = None) -> float:
    result = retry_delay(attempts, provider_hint=hint, jitter=jitter)
    assert result is not None
    return result


@given(jitter=jitters)
def test_the_delay_never_shrinks_as_attempts_grow(jitter: float) -> None:
    delays = [delay(a, jitter=jitter) for a in range(MAX_ATTEMPTS)]
    assert delays == sorted(delays)


@given(attempts=attempts_before_giving_up, jitter=jitters)
def test_the_delay_is_capped_at_the_maximum(attempts: int, jitter: float) -> None:
    assert 0 < delay(attempts, jitter=jitter) <= MAX_DELAY_SECONDS


@given(attempts=attempts_before_giving_up, jitter=jitters, hint=hints)
def test_the_delay_is_never_below_the_provider_hint(
    attempts: int, jitter: float, hint: float
) -> None:
    assert delay(attempts, jitter=jitter, hint=hint) >= hint


@given(attempts=attempts_before_giving_up, jitter=jitters, hint=hints)
def test_a_provider_hint_never_makes_the_delay_shorter(
    attempts: int, jitter: float, hint: float
) -> None:
    assert delay(attempts, jitter=jitter, hint=hint) >= delay(attempts, jitter=jitter)


def test_a_provider_hint_beyond_the_cap_is_honoured() -> None:
    assert delay(1, jitter=0.0, hint=3600.0) == 3600.0


@given(attempts=attempts_before_giving_up, low=jitters, high=jitters)
def test_more_jitter_never_means_a_shorter_delay(attempts: int, low: float, high: float) -> None:
    low, high = sorted((low, high))
    assert delay(attempts, jitter=low) <= delay(attempts, jitter=high)


@given(attempts=attempts_before_giving_up, jitter=jitters)
def test_jitter_spreads_retries_over_the_upper_half_of_the_backoff(
    attempts: int, jitter: float
) -> None:
    backoff = min(MAX_DELAY_SECONDS, BASE_DELAY_SECONDS * 2.0 ** max(attempts - 1, 0))
    assert backoff / 2 <= delay(attempts, jitter=jitter) <= backoff


def test_the_first_retry_waits_about_the_base_delay() -> None:
    assert delay(1, jitter=0.0) == BASE_DELAY_SECONDS / 2
    assert delay(1, jitter=0.999) == pytest.approx(BASE_DELAY_SECONDS, rel=1e-3)


def test_the_delay_doubles_until_the_cap() -> None:
    assert delay(2, jitter=0.0) == 2 * delay(1, jitter=0.0)
    assert delay(5, jitter=0.0) == 16 * delay(1, jitter=0.0)
    assert delay(MAX_ATTEMPTS - 1, jitter=0.999) == pytest.approx(MAX_DELAY_SECONDS, rel=1e-3)


@given(
    attempts=st.integers(min_value=MAX_ATTEMPTS, max_value=10_000),
    jitter=jitters,
    hint=st.none() | hints,
)
def test_it_is_time_to_give_up_from_max_attempts_on(
    attempts: int, jitter: float, hint: float | None
) -> None:
    assert retry_delay(attempts, provider_hint=hint, jitter=jitter) is None


def test_the_last_attempt_before_giving_up_still_gets_a_delay() -> None:
    assert retry_delay(MAX_ATTEMPTS - 1, provider_hint=None, jitter=0.5) is not None
