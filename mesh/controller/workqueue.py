"""A work queue of object keys, as client-go's rate-limited queue:

* a key waits in the queue at most once, however many events name it;
* a key being worked on is not handed to a second worker: if it is added
  meanwhile, it is queued again when the first worker is done (so the last
  change is never lost and one key is never reconciled twice at once);
* a failed key comes back after a per-key exponential back-off (`retry`),
  reset by `forget` after a success.

asyncio, single event loop; `add` may be called from other threads through
`loop.call_soon_threadsafe`."""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass


@dataclass(frozen=True)
class Backoff:
    """Per-key exponential back-off: base × 2^failures, capped."""

    base_s: float = 0.05
    cap_s: float = 60.0

    def delay(self, failures: int) -> float:
        return min(self.cap_s, self.base_s * (2 ** min(failures, 32)))


class WorkQueue:
    def __init__(self, backoff: Backoff = Backoff()) -> None:
        self.backoff = backoff
        self._queue: deque[str] = deque()
        self._queued: set[str] = set()
        self._active: set[str] = set()
        self._dirty: set[str] = set()  # added while active: queue again when done
        self._failures: dict[str, int] = {}
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._ready = asyncio.Event()
        self._closed = False

    def __len__(self) -> int:
        return len(self._queue)

    def add(self, key: str) -> None:
        if self._closed:
            return
        if key in self._active:
            self._dirty.add(key)
            return
        if key not in self._queued:
            self._queued.add(key)
            self._queue.append(key)
            self._ready.set()

    def add_after(self, key: str, delay_s: float) -> None:
        """Queue `key` after `delay_s` (an earlier pending timer for it wins)."""
        if self._closed or key in self._timers:
            return
        loop = asyncio.get_running_loop()
        self._timers[key] = loop.call_later(delay_s, self._fire, key)

    def _fire(self, key: str) -> None:
        self._timers.pop(key, None)
        self.add(key)

    def retry(self, key: str) -> float:
        """The key failed: queue it again after its back-off; returns the delay."""
        failures = self._failures.get(key, 0)
        self._failures[key] = failures + 1
        delay = self.backoff.delay(failures)
        self.add_after(key, delay)
        return delay

    def forget(self, key: str) -> None:
        self._failures.pop(key, None)

    def failures(self, key: str) -> int:
        return self._failures.get(key, 0)

    async def get(self) -> str | None:
        """The next key (now being worked on), or None once closed."""
        while not self._queue:
            if self._closed:
                return None
            self._ready.clear()
            await self._ready.wait()
        key = self._queue.popleft()
        self._queued.discard(key)
        self._active.add(key)
        return key

    def done(self, key: str) -> None:
        self._active.discard(key)
        if key in self._dirty:
            self._dirty.discard(key)
            self.add(key)

    def close(self) -> None:
        """Wake every waiting `get` with None; later adds are ignored."""
        self._closed = True
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        self._queue.clear()
        self._queued.clear()
        self._ready.set()
