"""Copy scaling: whether one loaded copy should ask for another copy, be
dropped as an idle extra, or stay — and whether it must be pinned.

Extracted from the sidecar's ``CopyScaler`` so the simulator makes exactly
the same decision from the same inputs; the sidecar does the I/O (choosing a
target, loading, unloading) and this module only decides.

The rules, evaluated by every holder of a copy once per interval:

* busy = served at least ``scale_up_rps`` in the interval, or has at least
  ``scale_up_in_flight`` requests in flight;
* a busy copy asks for one more copy, but only the first holder in id order
  asks, so the holders of one model do not all add a copy at once;
* an idle extra copy (the model has more than ``max(1, min_copies)``) unused
  for ``copy_idle_ms`` is dropped by the last holder in id order;
* a copy is pinned against LRU eviction while the model has no more copies
  than ``min_copies`` requires.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["CopyAction", "CopyDecision", "CopyPolicy", "decide_copy", "is_busy", "may_act"]


@dataclass(frozen=True)
class CopyPolicy:
    """Thresholds of copy scaling (and how often the sidecar evaluates them)."""

    interval_s: float = 5.0
    scale_up_rps: float = 33.0  # ModelMesh's default 2000 requests per minute
    scale_up_in_flight: int = 16
    copy_idle_ms: int = 600_000


class CopyAction(enum.Enum):
    KEEP = "keep"
    ADD = "add"  # load one more copy on another instance
    DROP = "drop"  # unload this copy: an idle extra


@dataclass(frozen=True)
class CopyDecision:
    action: CopyAction
    pin: bool  # pin this copy against eviction (min_copies needs it)


# The decision space is tiny: share the six immutable answers instead of
# allocating one per call (the simulator asks for many per interval).
_DECISIONS = {(a, p): CopyDecision(a, p) for a in CopyAction for p in (False, True)}


def is_busy(uses: int, elapsed_s: float, in_flight: int, policy: CopyPolicy) -> bool:
    """Enough requests in the interval, or enough in flight now, to want another copy."""
    return uses / elapsed_s >= policy.scale_up_rps or in_flight >= policy.scale_up_in_flight


def may_act(n_holders: int, *, min_copies: int, uses: int, elapsed_s: float, in_flight: int, policy: CopyPolicy) -> bool:
    """False when ``decide_copy`` is certain to answer KEEP, unpinned.

    That is every copy that is the model's only one, with no ``min_copies``
    and not busy — most copies, most of the time.  A caller looking after
    many copies (the simulator) skips those without building the inputs.
    """
    return n_holders > 1 or min_copies > 0 or is_busy(uses, elapsed_s, in_flight, policy)


def decide_copy(
    me: str,
    holders: Sequence[str],
    *,
    min_copies: int,
    uses: int,
    elapsed_s: float,
    in_flight: int,
    last_used_ms: int,
    now_ms: int,
    policy: CopyPolicy,
) -> CopyDecision:
    """Decide for the copy held by ``me``.

    ``holders`` are the live instances with a loaded copy, sorted by id and
    including ``me``; ``uses`` counts requests this copy served in the last
    ``elapsed_s`` seconds; ``in_flight`` and ``last_used_ms`` describe this
    copy now.
    """
    if not holders:
        raise ValueError("decide_copy needs the holders of the copy, including me")
    pin = len(holders) <= min_copies
    if is_busy(uses, elapsed_s, in_flight, policy):
        action = CopyAction.ADD if holders[0] == me else CopyAction.KEEP
    elif (
        len(holders) > max(1, min_copies)
        and holders[-1] == me
        and now_ms - last_used_ms >= policy.copy_idle_ms
    ):
        action = CopyAction.DROP
    else:
        action = CopyAction.KEEP
    return _DECISIONS[(action, pin)]
