"""Deadlines and the retry policy of a pull.

ModelMesh pulls ran under the LoadModel RPC's context and had no retries of
their own, so one dropped connection near the end of a large download failed
the load (modelmesh-serving #369). Here a pull has its own deadline (separate
from the runtime's load deadline) and retries retryable failures with
exponential back-off and jitter, never past that deadline. The storage
clients' own retries are turned off (see backends/s3.py), so this policy is
the only one and the attempt count is what it says.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from .errors import PullError

log = logging.getLogger(__name__)
T = TypeVar("T")


class Deadline:
    """A point on the monotonic clock; every blocking step asks how much is left."""

    def __init__(self, seconds: float, *, what: str = "pull") -> None:
        self._end = time.monotonic() + seconds
        self.seconds = seconds
        self.what = what

    def remaining(self) -> float:
        return max(0.0, self._end - time.monotonic())

    def expired(self) -> bool:
        return time.monotonic() >= self._end

    def check(self, doing: str = "") -> None:
        """Raise PullError(deadline) when the deadline has passed."""
        if self.expired():
            raise self.error(doing)

    def error(self, doing: str = "", last: PullError | None = None) -> PullError:
        msg = f"{self.what} deadline of {self.seconds:g} s exceeded"
        if doing:
            msg += f" while {doing}"
        if last is not None:
            msg += f" (last error: {last})"
        return PullError("deadline", msg)

    def timeout(self, cap: float) -> float:
        """A per-operation timeout: at most `cap`, never past the deadline (min 0.05 s)."""
        return max(0.05, min(cap, self.remaining()))


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 5
    initial_s: float = 0.2
    max_s: float = 5.0

    def delay(self, failed_attempts: int, rng: random.Random | None = None) -> float:
        """Exponential back-off with "equal jitter": half fixed, half random, so
        retries of many pulls that failed together spread out but still wait."""
        base = min(self.max_s, self.initial_s * (2 ** (failed_attempts - 1)))
        r = (rng or random).random()
        return base / 2 + r * base / 2


def call_with_retries(
    fn: Callable[[int], T],
    policy: RetryPolicy,
    deadline: Deadline,
    *,
    describe: str,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """Run `fn(attempt)` until it returns, retrying retryable PullErrors.

    Gives up with the last error after `policy.max_attempts`, or with
    PullError(deadline) when the next back-off would end past the deadline.
    """
    attempt = 1
    while True:
        deadline.check(describe)
        try:
            return fn(attempt)
        except PullError as err:
            if not err.retryable:
                raise
            if attempt >= policy.max_attempts:
                raise PullError(
                    err.reason,
                    f"{err.message} (gave up after {attempt} attempts)",
                    retryable=True,
                ) from err
            delay = policy.delay(attempt)
            if delay >= deadline.remaining():
                raise deadline.error(describe, last=err) from err
            log.warning("%s: attempt %d failed (%s); retrying in %.2f s", describe, attempt, err, delay)
            sleep(delay)
            attempt += 1
