"""The simulator's future: a heap of timed events.

Only rare things are events (load completions, capacity-wait deadlines,
copy-scaling rounds, samples, pod failures, and request completions when
concurrency is modelled); requests themselves are a pre-sorted array the
engine walks, so a warm hit never touches the heap.
"""

from __future__ import annotations

import enum
import heapq
import itertools
from typing import Any

__all__ = ["Event", "EventQueue"]

INF = float("inf")


class Event(enum.IntEnum):
    LOAD_DONE = 0
    WAIT_TIMEOUT = 1
    RELEASE = 2  # a request finished (concurrency mode only)
    POD_FAIL = 3
    POD_RECOVER = 4
    COPY_TICK = 5
    SAMPLE = 6


class EventQueue:
    """Min-heap of ``(time_ms, seq, kind, payload)``; ``seq`` keeps ties in push order."""

    __slots__ = ("heap", "_seq")

    def __init__(self) -> None:
        self.heap: list[tuple[float, int, Event, Any]] = []
        self._seq = itertools.count()

    def push(self, time_ms: float, kind: Event, payload: Any = None) -> None:
        heapq.heappush(self.heap, (time_ms, next(self._seq), kind, payload))

    def pop(self) -> tuple[float, int, Event, Any]:
        return heapq.heappop(self.heap)

    def next_time(self) -> float:
        return self.heap[0][0] if self.heap else INF

    def __len__(self) -> int:
        return len(self.heap)
