"""Eviction policies the mesh does NOT run, for comparison in benchmarks only.

The mesh evicts by size-aware LRU (``placement.lru``).  These pooled,
instant-load caches show how much hit ratio another policy would gain on the
same request sequence, so a change can be proposed with numbers — never
used by the engine.

* GDSF (Greedy-Dual-Size-Frequency, Cherkasova 1998) with cost 1, i.e. tuned
  for hit ratio: priority = L + frequency ÷ size, evict the lowest, L rises
  to the evicted priority (ageing).  Frequency counts hits while cached.
* LRU-2 (O'Neil et al. 1993): evict the model whose second-to-last request
  is oldest; models requested once go first (by last request).  Not
  size-aware beyond evicting until the newcomer fits.
"""

from __future__ import annotations

import heapq

import numpy as np

__all__ = ["gdsf_hits", "lru2_hits"]


def gdsf_hits(model_index: np.ndarray, sizes: np.ndarray, capacity: int) -> int:
    size = sizes.tolist()
    resident: dict[int, float] = {}  # model → its current priority (the live heap key)
    freq: dict[int, int] = {}
    heap: list[tuple[float, int]] = []
    used = 0
    clock = 0.0
    hits = 0
    for m in model_index.tolist():
        if m in resident:
            hits += 1
            freq[m] += 1
        else:
            s = size[m]
            if s > capacity:
                continue
            while used + s > capacity:
                key, victim = heapq.heappop(heap)
                if resident.get(victim) == key:
                    del resident[victim]
                    del freq[victim]
                    used -= size[victim]
                    clock = key
            freq[m] = 1
            used += s
        priority = clock + freq[m] / size[m]
        resident[m] = priority
        heapq.heappush(heap, (priority, m))
        if len(heap) > 4 * len(resident) + 1024:
            heap = [(k, v) for v, k in resident.items()]
            heapq.heapify(heap)
    return hits


def lru2_hits(model_index: np.ndarray, sizes: np.ndarray, capacity: int) -> int:
    size = sizes.tolist()
    last: dict[int, int] = {}  # model → last request index (kept after eviction: history)
    resident: dict[int, tuple[int, int]] = {}  # model → (second-to-last, last) while cached
    heap: list[tuple[tuple[int, int], int]] = []
    used = 0
    hits = 0
    for i, m in enumerate(model_index.tolist()):
        key = (last.get(m, -1), i)
        last[m] = i
        if m in resident:
            hits += 1
        else:
            s = size[m]
            if s > capacity:
                continue
            while used + s > capacity:
                old, victim = heapq.heappop(heap)
                if resident.get(victim) == old:
                    del resident[victim]
                    used -= size[victim]
            used += s
        resident[m] = key
        heapq.heappush(heap, (key, m))
        if len(heap) > 4 * len(resident) + 1024:
            heap = [(k, v) for v, k in resident.items()]
            heapq.heapify(heap)
    return hits
