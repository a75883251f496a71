"""Tests for placement.failures."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from placement.failures import backoff_delay_ms, in_backoff


def test_in_backoff_window_is_half_open() -> None:
    assert in_backoff(None, 1_000, 500) is False
    assert in_backoff(1_000, 1_000, 500) is True
    assert in_backoff(1_000, 1_499, 500) is True
    assert in_backoff(1_000, 1_500, 500) is False
    assert in_backoff(1_000, 1_000, 0) is False
    assert in_backoff(2_000, 1_000, 500) is True  # failure "in the future": clock skew
    with pytest.raises(ValueError):
        in_backoff(0, 0, -1)


def test_backoff_delay_doubles_and_caps() -> None:
    assert [backoff_delay_ms(n, 100, 1_000) for n in range(1, 7)] == [100, 200, 400, 800, 1_000, 1_000]
    assert backoff_delay_ms(10**9, 100, 30_000) == 30_000  # no giant integers
    assert backoff_delay_ms(3, 0, 1_000) == 0
    assert backoff_delay_ms(1, 500, 100) == 100  # base above cap is capped
    for bad in [(0, 100, 1_000), (1, -1, 1_000), (1, 100, -1)]:
        with pytest.raises(ValueError):
            backoff_delay_ms(*bad)


@settings(max_examples=300, deadline=None)
@given(attempts=st.integers(1, 200), base=st.integers(0, 10_000), cap=st.integers(0, 10**7))
def test_backoff_delay_matches_formula(attempts: int, base: int, cap: int) -> None:
    d = backoff_delay_ms(attempts, base, cap)
    assert d == min(cap, base * 2 ** (attempts - 1))
    assert d <= backoff_delay_ms(attempts + 1, base, cap)
