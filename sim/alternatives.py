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
from collections.abc import Iterator
from typing import Any

import numpy as np

__all__ = ["gdsf_hits", "lru2_hits"]


class _PriorityCache:
    """Resident models under a priority; eviction takes the lowest first.

    Re-prioritising a model pushes a new heap entry and leaves the old one
    stale (skipped when popped); the heap is rebuilt when stale entries
    outnumber live ones, so both policies below stay O(log n) per request."""

    def __init__(self, sizes: list[int], capacity: int) -> None:
        self.size = sizes
        self.capacity = capacity
        self.resident: dict[int, Any] = {}  # model → its current priority (the live heap key)
        self.heap: list[tuple[Any, int]] = []
        self.used = 0

    def make_room(self, s: int) -> Iterator[tuple[Any, int]]:
        """Evict until `s` more bytes fit, yielding (priority, model) per eviction."""
        while self.used + s > self.capacity:
            key, victim = heapq.heappop(self.heap)
            if self.resident.get(victim) == key:
                del self.resident[victim]
                self.used -= self.size[victim]
                yield key, victim

    def admit(self, m: int) -> None:
        self.used += self.size[m]

    def set(self, m: int, key: Any) -> None:
        self.resident[m] = key
        heapq.heappush(self.heap, (key, m))
        if len(self.heap) > 4 * len(self.resident) + 1024:
            self.heap = [(k, v) for v, k in self.resident.items()]
            heapq.heapify(self.heap)


def gdsf_hits(model_index: np.ndarray, sizes: np.ndarray, capacity: int) -> int:
    cache = _PriorityCache(sizes.tolist(), capacity)
    size = cache.size
    freq: dict[int, int] = {}
    clock = 0.0
    hits = 0
    for m in model_index.tolist():
        if m in cache.resident:
            hits += 1
            freq[m] += 1
        else:
            s = size[m]
            if s > capacity:
                continue
            for key, victim in cache.make_room(s):
                del freq[victim]
                clock = key
            freq[m] = 1
            cache.admit(m)
        cache.set(m, clock + freq[m] / size[m])
    return hits


def lru2_hits(model_index: np.ndarray, sizes: np.ndarray, capacity: int) -> int:
    cache = _PriorityCache(sizes.tolist(), capacity)
    last: dict[int, int] = {}  # model → last request index (kept after eviction: history)
    hits = 0
    for i, m in enumerate(model_index.tolist()):
        key = (last.get(m, -1), i)  # (second-to-last, last) request
        last[m] = i
        if m in cache.resident:
            hits += 1
        else:
            s = cache.size[m]
            if s > capacity:
                continue
            for _ in cache.make_room(s):
                pass
            cache.admit(m)
        cache.set(m, key)
    return hits
