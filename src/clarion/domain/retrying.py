"""When to try a failed delivery again."""

from __future__ import annotations

BASE_DELAY_SECONDS = 2.0
MAX_DELAY_SECONDS = 600.0  # SNS's mobile-push policy caps its backoff at 10 minutes, too
MAX_ATTEMPTS = 12  # with the delays above, about 37 minutes of waiting before giving up


def retry_delay(attempts: int, *, provider_hint: float | None, jitter: float) -> float | None:
    """Seconds to wait before attempt `attempts` + 1, or None when it is time to give up.

    Exponential from `BASE_DELAY_SECONDS`, capped, never sooner than a provider's Retry-After
    (`provider_hint`). `jitter` in [0, 1) spreads retries of one burst ("full jitter" halves
    the wave a provider sees on recovery).
    """
    if attempts >= MAX_ATTEMPTS:
        return None
    delay = min(MAX_DELAY_SECONDS, BASE_DELAY_SECONDS * 2.0 ** max(attempts - 1, 0))
    delay = delay * (0.5 + jitter / 2)
    if provider_hint is not None:
        delay = max(delay, provider_hint)
    return delay
