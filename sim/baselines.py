"""Reference points computed on the same request sequence as a simulation.

All baselines **pool the memory of every pod into one cache** (capacity =
the sum of the pods' capacities), see the requests in the same order, load
instantly and keep one copy per model.  Pooling is the optimistic limit of
what the pods together could hold (no fragmentation across pods, no extra
copies, no routing), so the gap between the mesh and these numbers is the
cost of everything: the eviction policy, partitioning into pods, copies,
and requests arriving while a model loads.

* ``infinite``: only compulsory misses (first request of each model).
* ``belady``: Belady's MIN with forced admission (every requested model is
  loaded, as the mesh must to serve it); on a miss, evict the resident
  models whose next request is farthest in the future until the new one
  fits.  Optimal for equal sizes; for variable sizes the optimum is NP-hard
  and this farthest-next-use greedy is the standard approximation (an
  estimate of the limit, not a proven bound).
* ``lru``: the mesh's own ``SizeAwareLRU`` as one pooled cache — the same
  policy code without pods, copies or load times, which separates "policy"
  from "mesh" in the gap to Belady.

Hit ratio = hits / requests, where a request for a model larger than the
whole pool counts as a miss.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass

import numpy as np

from placement import Admission, SizeAwareLRU

__all__ = ["Baselines", "belady_hits", "compute_baselines", "infinite_hits", "lru_hits", "next_use"]


@dataclass(frozen=True)
class Baselines:
    capacity_bytes: int
    infinite: float
    belady: float
    lru: float


def next_use(model_index: np.ndarray) -> np.ndarray:
    """For each request, the index of the next request for the same model (n if none)."""
    n = len(model_index)
    order = np.lexsort((np.arange(n), model_index))  # by model, then by time
    nxt = np.full(n, n, dtype=np.int64)
    same = model_index[order[1:]] == model_index[order[:-1]]
    nxt[order[:-1][same]] = order[1:][same]
    return nxt


def infinite_hits(model_index: np.ndarray) -> int:
    return len(model_index) - len(np.unique(model_index))


def belady_hits(model_index: np.ndarray, sizes: np.ndarray, capacity: int) -> int:
    """Hits of farthest-next-use eviction with forced admission (see module docstring)."""
    nxt = next_use(model_index).tolist()
    reqs = model_index.tolist()
    size = sizes.tolist()
    resident: dict[int, int] = {}  # model → its next use (the live heap key)
    heap: list[tuple[int, int]] = []  # (-next use, model); stale entries skipped lazily
    used = 0
    hits = 0
    push, pop = heapq.heappush, heapq.heappop
    for i, m in enumerate(reqs):
        nu = nxt[i]
        if m in resident:
            hits += 1
            resident[m] = nu
            push(heap, (-nu, m))
            continue
        s = size[m]
        if s > capacity:
            continue
        while used + s > capacity:
            key, victim = pop(heap)
            if resident.get(victim) == -key:
                del resident[victim]
                used -= size[victim]
        resident[m] = nu
        used += s
        push(heap, (-nu, m))
        if len(heap) > 4 * len(resident) + 1024:  # drop stale entries
            heap = [(-k, v) for v, k in resident.items()]
            heapq.heapify(heap)
    return hits


def lru_hits(model_index: np.ndarray, ids: list[str], sizes: np.ndarray, capacity: int) -> int:
    """Hits of the mesh's ``SizeAwareLRU`` as one pooled cache with instant loads."""
    lru = SizeAwareLRU(capacity)
    size = sizes.tolist()
    hits = 0
    for i, k in enumerate(model_index.tolist()):
        m = ids[k]
        if m in lru:
            lru.touch(m, i)
            hits += 1
            continue
        plan = lru.plan(size[k])
        if plan.admission is Admission.NEVER:
            continue
        for victim in plan.victims:
            lru.remove(victim)
        lru.add(m, size[k], i, loading=False)
    return hits


def compute_baselines(model_index: np.ndarray, ids: list[str], sizes: np.ndarray, capacity: int) -> Baselines:
    n = max(1, len(model_index))
    return Baselines(
        capacity_bytes=capacity,
        infinite=infinite_hits(model_index) / n,
        belady=belady_hits(model_index, sizes, capacity) / n,
        lru=lru_hits(model_index, ids, sizes, capacity) / n,
    )
