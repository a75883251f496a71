"""Back-off bookkeeping as pure functions.

Kept free of state so the sidecar can store failure times wherever it likes
(memory, etcd records) and the simulator can replay them deterministically.
"""

from __future__ import annotations

__all__ = ["backoff_delay_ms", "in_backoff"]


def in_backoff(failed_at_ms: int | None, now_ms: int, backoff_ms: int) -> bool:
    """True while ``now_ms`` is within ``backoff_ms`` after a failure.

    ``None`` means "never failed".  The window is half-open,
    ``[failed_at_ms, failed_at_ms + backoff_ms)``, so a zero back-off never
    excludes anything.  A failure time in the future (clock skew between
    instances) counts as in back-off: excluding an instance a little too long
    is cheaper than retrying one that just failed.
    """
    if backoff_ms < 0:
        raise ValueError(f"backoff_ms must be >= 0, got {backoff_ms}")
    if failed_at_ms is None:
        return False
    return now_ms - failed_at_ms < backoff_ms


def backoff_delay_ms(attempts: int, base_ms: int, max_ms: int) -> int:
    """Exponential delay capped at ``max_ms``: 1 -> base, 2 -> 2*base, 3 -> 4*base ...

    ``attempts`` counts failures so far and must be >= 1.  Large attempt
    counts are capped without building huge integers.
    """
    if attempts < 1:
        raise ValueError(f"attempts must be >= 1, got {attempts}")
    if base_ms < 0 or max_ms < 0:
        raise ValueError(f"base_ms and max_ms must be >= 0, got {base_ms}, {max_ms}")
    if base_ms == 0:
        return 0
    shift = attempts - 1
    # base_ms >= 1, so base_ms << shift >= 2**shift, which exceeds max_ms once
    # shift reaches max_ms.bit_length(); stop before the integer grows.
    if shift >= max_ms.bit_length():
        return max_ms
    return min(max_ms, base_ms << shift)
