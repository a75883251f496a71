"""Size-aware LRU policy for one instance's local model cache.

This module decides *what* to evict; it never loads or unloads anything.
The sidecar (and the simulator) own the real side effects and report them
back through ``add``/``resize``/``mark_loaded``/``remove``.

Why the data structure looks like this:

* Per-request calls (``touch``, ``acquire``, ``release``, ``__contains__``)
  run on the hot path of both the sidecar and a simulator that must sustain
  hundreds of thousands of requests per second, so they are O(1): an
  ``OrderedDict`` keeps recency order and ``move_to_end`` is constant time.
* ``plan`` walks only from the least recently used end and stops as soon as
  enough space is found, so its cost is proportional to the entries it
  examines, not to the cache size.  A running total of evictable bytes lets
  it answer WAIT in O(1) instead of walking the whole cache to discover that
  eviction could never be enough.
* Order is strictly the order of ``touch``/``add`` calls.  ``now_ms`` is only
  recorded (for ``lru_ms`` and cluster-wide LRU comparison); it never
  reorders entries, so ties and out-of-order clocks cannot produce
  surprising victim choices.
"""

from __future__ import annotations

import enum
from collections import OrderedDict
from dataclasses import dataclass

__all__ = ["Admission", "CacheEntry", "EvictionPlan", "SizeAwareLRU"]


class Admission(enum.Enum):
    """Outcome of asking whether a model of a given size can be admitted."""

    FITS = "fits"  # enough free space already; load now
    EVICT = "evict"  # unload ``victims`` first, then load
    WAIT = "wait"  # space is held by loading/in-flight/pinned models; re-plan later
    NEVER = "never"  # larger than the whole cache; loading here can never succeed


@dataclass(frozen=True)
class EvictionPlan:
    """A decision the caller executes; immutable so it can be logged safely."""

    admission: Admission
    victims: tuple[str, ...]  # oldest first; empty unless EVICT
    reason: str  # human-readable, for errors/logs


@dataclass(frozen=True)
class CacheEntry:
    """Immutable snapshot of one cached model (what ``entries`` returns)."""

    model_id: str
    size_bytes: int
    last_used_ms: int
    loading: bool
    in_flight: int
    pinned: bool


class _Slot:
    """Mutable per-model state; private so snapshots cannot alias it."""

    __slots__ = ("size_bytes", "last_used_ms", "loading", "in_flight", "pinned")

    def __init__(self, size_bytes: int, last_used_ms: int, loading: bool) -> None:
        self.size_bytes = size_bytes
        self.last_used_ms = last_used_ms
        self.loading = loading
        self.in_flight = 0
        self.pinned = False

    def evictable(self) -> bool:
        return not self.loading and self.in_flight == 0 and not self.pinned


class SizeAwareLRU:
    """Byte-budgeted LRU over the models resident (or loading) on one instance.

    Space is *reserved* at ``add`` time, before the load finishes, so two
    concurrent misses cannot both be told FITS for the same free bytes.
    An entry is evictable only when it is fully loaded, has no in-flight
    requests and is not pinned; everything else holds its space until the
    caller changes that state.
    """

    __slots__ = ("_capacity", "_used", "_evictable_bytes", "_slots")

    def __init__(self, capacity_bytes: int) -> None:
        if capacity_bytes < 0:
            raise ValueError(f"capacity_bytes must be >= 0, got {capacity_bytes}")
        self._capacity = capacity_bytes
        self._used = 0
        # Sum of sizes of evictable entries: lets plan() answer WAIT in O(1).
        self._evictable_bytes = 0
        # Iteration order = recency order, least recently used first.
        self._slots: OrderedDict[str, _Slot] = OrderedDict()

    # ----------------------------------------------------------------- sizes

    @property
    def capacity_bytes(self) -> int:
        return self._capacity

    @capacity_bytes.setter
    def capacity_bytes(self, value: int) -> None:
        # Shrinking does not evict: eviction is a side effect the caller must
        # perform (plan(0) then unload), and it may have to wait for in-flight
        # requests.  Until then over_capacity_bytes reports the excess.
        if value < 0:
            raise ValueError(f"capacity_bytes must be >= 0, got {value}")
        self._capacity = value

    @property
    def used_bytes(self) -> int:
        return self._used

    @property
    def free_bytes(self) -> int:
        """Bytes still unreserved; 0 (never negative) while over capacity."""
        return max(0, self._capacity - self._used)

    @property
    def evictable_bytes(self) -> int:
        """Bytes held by evictable entries (loaded, idle, unpinned).

        ``plan(n)`` answers WAIT exactly when ``n`` fits the capacity but
        exceeds ``capacity_bytes - used_bytes + evictable_bytes``, so a caller
        with many loads waiting for space can tell which could proceed
        without planning each one.
        """
        return self._evictable_bytes

    @property
    def over_capacity_bytes(self) -> int:
        """How far reservations exceed capacity (after ``resize`` or a shrink)."""
        return max(0, self._used - self._capacity)

    def __len__(self) -> int:
        return len(self._slots)

    def __contains__(self, model_id: object) -> bool:
        return model_id in self._slots

    # ------------------------------------------------------------- mutation

    def add(self, model_id: str, size_bytes: int, now_ms: int, *, loading: bool = True) -> None:
        """Reserve space for a model about to load, as most recently used.

        Raises ValueError if the model is already present or the reservation
        would exceed capacity: callers must ``plan`` and evict first, so a
        silent overcommit here would hide a caller bug.
        """
        if size_bytes < 0:
            raise ValueError(f"size_bytes must be >= 0, got {size_bytes}")
        if model_id in self._slots:
            raise ValueError(f"model {model_id!r} is already in the cache")
        if self._used + size_bytes > self._capacity:
            raise ValueError(
                f"adding {model_id!r} ({size_bytes} B) would exceed capacity: "
                f"used {self._used} B + {size_bytes} B > {self._capacity} B; plan() first"
            )
        slot = _Slot(size_bytes, now_ms, loading)
        self._slots[model_id] = slot
        self._used += size_bytes
        if slot.evictable():
            self._evictable_bytes += size_bytes

    def resize(self, model_id: str, size_bytes: int) -> None:
        """Replace the predicted size with the measured one.

        Allowed to exceed capacity: the model is already in memory, refusing
        the number would only make the books wrong.  The excess shows up in
        ``over_capacity_bytes`` and the next ``plan`` will evict it away.
        """
        if size_bytes < 0:
            raise ValueError(f"size_bytes must be >= 0, got {size_bytes}")
        slot = self._slots[model_id]
        delta = size_bytes - slot.size_bytes
        self._used += delta
        if slot.evictable():
            self._evictable_bytes += delta
        slot.size_bytes = size_bytes

    def mark_loaded(self, model_id: str) -> None:
        """The load finished; the model becomes evictable once idle and unpinned."""
        slot = self._slots[model_id]
        if slot.loading:
            slot.loading = False
            if slot.evictable():
                self._evictable_bytes += slot.size_bytes

    def remove(self, model_id: str) -> int:
        """Forget a model (unloaded, load failed, ...); returns the freed bytes.

        Unconditional: the caller decides whether removing a loading or busy
        model is right (e.g. a failed load).  KeyError if absent.
        """
        slot = self._slots.pop(model_id)
        self._used -= slot.size_bytes
        if slot.evictable():
            self._evictable_bytes -= slot.size_bytes
        return slot.size_bytes

    def touch(self, model_id: str, now_ms: int) -> None:
        """Mark as most recently used.  O(1); KeyError if absent."""
        self._slots.move_to_end(model_id)
        self._slots[model_id].last_used_ms = now_ms

    def acquire(self, model_id: str) -> None:
        """Count one more in-flight request; a busy model is never a victim."""
        slot = self._slots[model_id]
        if slot.in_flight == 0 and slot.evictable():
            self._evictable_bytes -= slot.size_bytes
        slot.in_flight += 1

    def release(self, model_id: str) -> None:
        """Count one request finished.  ValueError on release without acquire."""
        slot = self._slots[model_id]
        if slot.in_flight == 0:
            raise ValueError(f"release of {model_id!r} without a matching acquire")
        slot.in_flight -= 1
        if slot.in_flight == 0 and slot.evictable():
            self._evictable_bytes += slot.size_bytes

    def pin(self, model_id: str, pinned: bool) -> None:
        """Pin (or unpin) a model so eviction never picks it, e.g. a required copy."""
        slot = self._slots[model_id]
        if slot.pinned == pinned:
            return
        was = slot.evictable()
        slot.pinned = pinned
        now = slot.evictable()
        if was and not now:
            self._evictable_bytes -= slot.size_bytes
        elif now and not was:
            self._evictable_bytes += slot.size_bytes

    # --------------------------------------------------------------- queries

    def is_evictable(self, model_id: str) -> bool:
        """Not loading, no in-flight requests, not pinned.  KeyError if absent."""
        return self._slots[model_id].evictable()

    def plan(self, needed_bytes: int) -> EvictionPlan:
        """Decide how ``needed_bytes`` more could be reserved.  Does not mutate.

        NEVER if it exceeds total capacity; FITS if free space suffices;
        EVICT with the shortest oldest-first run of evictable entries that
        frees enough; WAIT if even evicting every evictable entry would not.
        ``plan(0)`` on an over-capacity cache yields the victims needed to get
        back under capacity.
        """
        if needed_bytes < 0:
            raise ValueError(f"needed_bytes must be >= 0, got {needed_bytes}")
        if needed_bytes > self._capacity:
            return EvictionPlan(
                Admission.NEVER,
                (),
                f"needs {needed_bytes} B but total cache capacity is {self._capacity} B",
            )
        shortfall = self._used + needed_bytes - self._capacity
        if shortfall <= 0:
            return EvictionPlan(
                Admission.FITS,
                (),
                f"needs {needed_bytes} B, {self._capacity - self._used} B free",
            )
        if self._evictable_bytes < shortfall:
            return EvictionPlan(
                Admission.WAIT,
                (),
                f"needs {shortfall} B more than free but only {self._evictable_bytes} B "
                f"is evictable; the rest is held by loading, in-flight or pinned models",
            )
        victims: list[str] = []
        freed = 0
        for model_id, slot in self._slots.items():
            if not slot.evictable():
                continue
            victims.append(model_id)
            freed += slot.size_bytes
            if freed >= shortfall:
                break
        return EvictionPlan(
            Admission.EVICT,
            tuple(victims),
            f"evict {len(victims)} model(s) freeing {freed} B to cover a {shortfall} B shortfall",
        )

    def lru_ms(self) -> int | None:
        """Last-use time of the least recently used entry (None if empty).

        Used for cluster-wide LRU: the instance whose oldest model is oldest
        is the cheapest place to evict.  Assumes callers pass non-decreasing
        ``now_ms``; otherwise it is the time recorded on the oldest entry by
        order, not the minimum time.
        """
        for slot in self._slots.values():
            return slot.last_used_ms
        return None

    def entry(self, model_id: str) -> CacheEntry:
        """Snapshot of one entry.  KeyError if absent."""
        return self._snapshot(model_id, self._slots[model_id])

    def entries(self) -> list[CacheEntry]:
        """Snapshot of all entries, least recently used first.  O(n)."""
        return [self._snapshot(mid, slot) for mid, slot in self._slots.items()]

    @staticmethod
    def _snapshot(model_id: str, slot: _Slot) -> CacheEntry:
        return CacheEntry(
            model_id=model_id,
            size_bytes=slot.size_bytes,
            last_used_ms=slot.last_used_ms,
            loading=slot.loading,
            in_flight=slot.in_flight,
            pinned=slot.pinned,
        )

    def __repr__(self) -> str:
        return (
            f"SizeAwareLRU(capacity_bytes={self._capacity}, used_bytes={self._used}, "
            f"models={len(self._slots)})"
        )
