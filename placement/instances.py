"""Choosing where a model loads, and which copy serves a request.

A miss goes to the instance that can take the model at the least cost:

1. the instance that received the request, if it has free room (saves a hop);
2. otherwise any instance with free room, preferring zones that do not
   already hold a copy, then the least busy loader, then the most free space;
3. otherwise (nobody has room) the instance whose least recently used model
   is oldest cluster-wide, i.e. the cheapest eviction in the whole mesh.

Labels restrict candidates; the caller passes instances that already hold a
copy, recently failed, or were already tried in ``exclude``.  All decisions
are deterministic for a given input (ties break on ``instance_id``) so the
simulator reproduces the sidecar exactly.
"""

from __future__ import annotations

import random
from collections.abc import Collection, Sequence
from dataclasses import dataclass

__all__ = ["InstanceState", "choose_load_target", "pick_copy"]


@dataclass(frozen=True)
class InstanceState:
    """What the placement decision needs to know about one instance."""

    instance_id: str
    capacity_bytes: int
    used_bytes: int
    lru_ms: int | None  # last use of its least recently used model; None = empty
    model_count: int = 0
    loading_count: int = 0
    zone: str = ""
    labels: frozenset[str] = frozenset()
    shutting_down: bool = False

    @property
    def free_bytes(self) -> int:
        """Unreserved bytes; never negative even if reservations overshoot."""
        return max(0, self.capacity_bytes - self.used_bytes)


def choose_load_target(
    size_bytes: int,
    instances: Sequence[InstanceState],
    *,
    receiving_id: str | None,
    exclude: Collection[str] = (),
    required_labels: frozenset[str] = frozenset(),
    prefer_zones_other_than: Collection[str] = (),
) -> str | None:
    """Return the instance_id that should load a model of ``size_bytes``, or None.

    None means no instance can ever take it right now (all shutting down,
    excluded, label-mismatched or smaller than the model); the caller should
    fail the request or retry later, not spin.

    Note: the receiving instance wins whenever it has room, even if it sits in
    a zone listed in ``prefer_zones_other_than``: saving the hop is preferred
    over zone spreading, which is only a tie-break among the others.
    """
    excluded = exclude if isinstance(exclude, (set, frozenset, dict)) else set(exclude)
    avoid_zones = (
        prefer_zones_other_than
        if isinstance(prefer_zones_other_than, (set, frozenset, dict))
        else set(prefer_zones_other_than)
    )
    candidates = [
        inst
        for inst in instances
        if not inst.shutting_down
        and inst.instance_id not in excluded
        and required_labels <= inst.labels
        and inst.capacity_bytes >= size_bytes
    ]
    if not candidates:
        return None

    with_room = [inst for inst in candidates if inst.free_bytes >= size_bytes]
    if with_room:
        for inst in with_room:
            if inst.instance_id == receiving_id:
                return inst.instance_id
        best = min(
            with_room,
            key=lambda i: (i.zone in avoid_zones, i.loading_count, -i.free_bytes, i.instance_id),
        )
        return best.instance_id

    # Nobody has room: evict where the oldest model in the mesh lives.  An
    # empty instance (lru_ms None) would count as oldest, but an empty
    # instance with capacity >= size always has room, so it cannot reach here
    # unless its used_bytes are reservations without models.
    oldest = min(
        candidates,
        key=lambda i: (
            i.zone in avoid_zones,
            i.lru_ms is not None,
            i.lru_ms if i.lru_ms is not None else 0,
            i.instance_id,
        ),
    )
    return oldest.instance_id


def pick_copy(copies: Sequence[tuple[str, int]], rng: random.Random) -> str:
    """Power-of-two-choices over ``(instance_id, in_flight)`` pairs.

    Sampling two and taking the less loaded gives most of the benefit of
    least-loaded routing without needing a fresh global view, and avoids
    the herding that always picking the global minimum causes with stale
    counts.  Ties go to the first sampled so the choice stays random.
    Consumes randomness from ``rng`` only when there are >= 2 copies.
    """
    n = len(copies)
    if n == 0:
        raise ValueError("pick_copy needs at least one copy")
    if n == 1:
        return copies[0][0]
    a, b = rng.sample(range(n), 2)
    first, second = copies[a], copies[b]
    return second[0] if second[1] < first[1] else first[0]
