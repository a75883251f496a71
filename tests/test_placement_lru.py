"""Tests for placement.lru: a stateful model check plus concrete scenarios."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from placement.lru import Admission, CacheEntry, EvictionPlan, SizeAwareLRU

MODEL_IDS = [f"m{i}" for i in range(8)]


def reference_plan(entries: list[CacheEntry], capacity: int, needed: int) -> tuple[Admission, tuple[str, ...]]:
    """Naive O(n) statement of the spec, computed only from the public snapshot."""
    used = sum(e.size_bytes for e in entries)
    if needed > capacity:
        return Admission.NEVER, ()
    shortfall = used + needed - capacity
    if shortfall <= 0:
        return Admission.FITS, ()
    evictable = [e for e in entries if not e.loading and e.in_flight == 0 and not e.pinned]
    if sum(e.size_bytes for e in evictable) < shortfall:
        return Admission.WAIT, ()
    victims: list[str] = []
    freed = 0
    for e in evictable:
        victims.append(e.model_id)
        freed += e.size_bytes
        if freed >= shortfall:
            break
    return Admission.EVICT, tuple(victims)


class LRUMachine(RuleBasedStateMachine):
    """Drives SizeAwareLRU and a shadow model side by side.

    The shadow tracks recency order independently (append on add, move to end
    on touch) so the order returned by entries() is checked, not assumed.
    """

    def __init__(self) -> None:
        super().__init__()
        self.lru: SizeAwareLRU
        self.order: list[str] = []
        self.sizes: dict[str, int] = {}
        self.loading: dict[str, bool] = {}
        self.in_flight: dict[str, int] = {}
        self.pinned: dict[str, bool] = {}
        self.last_used: dict[str, int] = {}
        self.now = 0
        # Set only by resize/capacity shrink: the only legitimate ways over capacity.
        self.overflow_allowed = False

    @initialize(capacity=st.integers(0, 150))
    def init(self, capacity: int) -> None:
        self.lru = SizeAwareLRU(capacity)

    def _tick(self) -> int:
        self.now += 1
        return self.now

    def _forget(self, mid: str) -> None:
        self.order.remove(mid)
        for d in (self.sizes, self.loading, self.in_flight, self.pinned, self.last_used):
            del d[mid]

    def _check_plan(self, needed: int) -> EvictionPlan:
        plan = self.lru.plan(needed)
        snapshot = self.lru.entries()
        expected = reference_plan(snapshot, self.lru.capacity_bytes, needed)
        assert (plan.admission, plan.victims) == expected, (plan, expected, snapshot)
        assert isinstance(plan.reason, str) and plan.reason
        assert (plan.admission is Admission.NEVER) == (needed > self.lru.capacity_bytes)
        by_id = {e.model_id: e for e in snapshot}
        for v in plan.victims:
            e = by_id[v]
            assert not e.loading and e.in_flight == 0 and not e.pinned
            assert self.lru.is_evictable(v)
        if plan.admission is Admission.EVICT:
            freed = sum(by_id[v].size_bytes for v in plan.victims)
            assert self.lru.used_bytes - freed + needed <= self.lru.capacity_bytes
            # Minimal: without the newest victim it would not fit.
            last = by_id[plan.victims[-1]].size_bytes
            assert self.lru.used_bytes - (freed - last) + needed > self.lru.capacity_bytes
        elif plan.admission is Admission.WAIT:
            evictable = sum(e.size_bytes for e in snapshot if self.lru.is_evictable(e.model_id))
            assert self.lru.used_bytes - evictable + needed > self.lru.capacity_bytes
        else:
            assert plan.victims == ()
        return plan

    # ----------------------------------------------------------------- rules

    @rule(mid=st.sampled_from(MODEL_IDS), size=st.integers(0, 80), loading=st.booleans())
    def admit(self, mid: str, size: int, loading: bool) -> None:
        if mid in self.lru:
            with pytest.raises(ValueError):
                self.lru.add(mid, size, self._tick(), loading=loading)
            return
        plan = self._check_plan(size)
        if plan.admission in (Admission.WAIT, Admission.NEVER):
            used_before = self.lru.used_bytes
            with pytest.raises(ValueError):
                self.lru.add(mid, size, self._tick(), loading=loading)
            assert mid not in self.lru and self.lru.used_bytes == used_before
            return
        for victim in plan.victims:
            assert self.lru.remove(victim) == self.sizes[victim]
            self._forget(victim)
        now = self._tick()
        self.lru.add(mid, size, now, loading=loading)
        self.order.append(mid)
        self.sizes[mid] = size
        self.loading[mid] = loading
        self.in_flight[mid] = 0
        self.pinned[mid] = False
        self.last_used[mid] = now
        assert self.lru.used_bytes <= self.lru.capacity_bytes

    @precondition(lambda self: len(self.order) > 0)
    @rule(data=st.data())
    def touch(self, data: st.DataObject) -> None:
        mid = data.draw(st.sampled_from(self.order))
        now = self._tick()
        self.lru.touch(mid, now)
        self.order.remove(mid)
        self.order.append(mid)
        self.last_used[mid] = now

    @precondition(lambda self: len(self.order) > 0)
    @rule(data=st.data())
    def acquire(self, data: st.DataObject) -> None:
        mid = data.draw(st.sampled_from(self.order))
        self.lru.acquire(mid)
        self.in_flight[mid] += 1
        assert not self.lru.is_evictable(mid)

    @precondition(lambda self: len(self.order) > 0)
    @rule(data=st.data())
    def release(self, data: st.DataObject) -> None:
        mid = data.draw(st.sampled_from(self.order))
        if self.in_flight[mid] == 0:
            with pytest.raises(ValueError):
                self.lru.release(mid)
            return
        self.lru.release(mid)
        self.in_flight[mid] -= 1

    @precondition(lambda self: len(self.order) > 0)
    @rule(data=st.data())
    def mark_loaded(self, data: st.DataObject) -> None:
        mid = data.draw(st.sampled_from(self.order))
        self.lru.mark_loaded(mid)
        self.loading[mid] = False

    @precondition(lambda self: len(self.order) > 0)
    @rule(data=st.data(), pinned=st.booleans())
    def pin(self, data: st.DataObject, pinned: bool) -> None:
        mid = data.draw(st.sampled_from(self.order))
        self.lru.pin(mid, pinned)
        self.pinned[mid] = pinned

    @precondition(lambda self: len(self.order) > 0)
    @rule(data=st.data())
    def remove(self, data: st.DataObject) -> None:
        mid = data.draw(st.sampled_from(self.order))
        assert self.lru.remove(mid) == self.sizes[mid]
        self._forget(mid)
        assert mid not in self.lru
        with pytest.raises(KeyError):
            self.lru.remove(mid)

    @precondition(lambda self: len(self.order) > 0)
    @rule(data=st.data(), size=st.integers(0, 80))
    def resize(self, data: st.DataObject, size: int) -> None:
        mid = data.draw(st.sampled_from(self.order))
        self.lru.resize(mid, size)
        self.sizes[mid] = size
        self.overflow_allowed = True

    @rule(capacity=st.integers(0, 150))
    def set_capacity(self, capacity: int) -> None:
        used = self.lru.used_bytes
        self.lru.capacity_bytes = capacity
        # Shrinking never evicts by itself.
        assert self.lru.used_bytes == used and len(self.lru) == len(self.order)
        self.overflow_allowed = True

    @rule(needed=st.integers(0, 200))
    def plan_only(self, needed: int) -> None:
        before = self.lru.entries()
        self._check_plan(needed)
        assert self.lru.entries() == before  # planning never mutates

    @rule(mid=st.sampled_from(MODEL_IDS))
    def absent_ids_raise(self, mid: str) -> None:
        if mid in self.lru:
            return
        for op in (self.lru.touch,):
            with pytest.raises(KeyError):
                op(mid, self.now)
        for op1 in (self.lru.acquire, self.lru.release, self.lru.mark_loaded, self.lru.is_evictable):
            with pytest.raises(KeyError):
                op1(mid)

    # ------------------------------------------------------------ invariants

    @invariant()
    def matches_shadow(self) -> None:
        snapshot = self.lru.entries()
        assert [e.model_id for e in snapshot] == self.order
        for e in snapshot:
            assert e.size_bytes == self.sizes[e.model_id]
            assert e.loading == self.loading[e.model_id]
            assert e.in_flight == self.in_flight[e.model_id]
            assert e.pinned == self.pinned[e.model_id]
            assert e.last_used_ms == self.last_used[e.model_id]
            assert self.lru.is_evictable(e.model_id) == (
                not e.loading and e.in_flight == 0 and not e.pinned
            )
        assert len(self.lru) == len(self.order)
        assert self.lru.lru_ms() == (self.last_used[self.order[0]] if self.order else None)

    @invariant()
    def byte_accounting(self) -> None:
        used = sum(self.sizes.values())
        cap = self.lru.capacity_bytes
        assert self.lru.used_bytes == used
        assert self.lru.free_bytes == max(0, cap - used)
        assert self.lru.over_capacity_bytes == max(0, used - cap)
        if used <= cap:
            self.overflow_allowed = False
        else:
            assert self.overflow_allowed, "over capacity without a resize or shrink"

    @invariant()
    def plan_zero_and_full(self) -> None:
        # plan(0) is how callers shed an over-capacity excess; plan(capacity) is the
        # largest admissible request.  Both must agree with the reference.
        self._check_plan(0)
        self._check_plan(self.lru.capacity_bytes)


TestLRUStateMachine = LRUMachine.TestCase
TestLRUStateMachine.settings = settings(
    max_examples=250,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


# ------------------------------------------------------------------ examples


def _loaded(lru: SizeAwareLRU, mid: str, size: int, now: int) -> None:
    lru.add(mid, size, now, loading=False)


def test_touch_reorders_lru_by_call_order() -> None:
    lru = SizeAwareLRU(100)
    for i, mid in enumerate(["a", "b", "c", "d"]):
        _loaded(lru, mid, 10, i)
    lru.touch("b", 10)
    lru.touch("a", 11)
    assert [e.model_id for e in lru.entries()] == ["c", "d", "b", "a"]
    assert lru.lru_ms() == 2
    # Order follows calls, not timestamps: an older now_ms still moves to the end.
    lru.touch("c", 0)
    assert [e.model_id for e in lru.entries()] == ["d", "b", "a", "c"]
    assert lru.plan(80).victims == ("d", "b")


def test_round_robin_over_capacity_evicts_least_recently_used_each_time() -> None:
    lru = SizeAwareLRU(3 * 100)
    models = [f"m{i}" for i in range(5)]
    evicted: list[str] = []
    for step in range(25):
        mid = models[step % 5]
        if mid in lru:
            lru.touch(mid, step)
            continue
        plan = lru.plan(100)
        if step < 3:
            assert plan.admission is Admission.FITS
        else:
            assert plan.admission is Admission.EVICT
            assert len(plan.victims) == 1
            # The LRU entry is the model requested three steps ago.
            assert plan.victims[0] == models[(step - 3) % 5]
            assert plan.victims[0] == lru.entries()[0].model_id
            lru.remove(plan.victims[0])
            evicted.append(plan.victims[0])
        lru.add(mid, 100, step)
        lru.mark_loaded(mid)
    assert len(evicted) == 22  # every request after the first three misses
    assert len(lru) == 3 and lru.used_bytes == 300


def test_wait_when_space_is_held_by_busy_models() -> None:
    lru = SizeAwareLRU(100)
    lru.add("loading", 40, 0)  # still loading by default
    _loaded(lru, "busy", 40, 1)
    _loaded(lru, "idle", 20, 2)
    lru.acquire("busy")
    plan = lru.plan(50)
    assert plan.admission is Admission.WAIT and plan.victims == ()
    assert lru.plan(20) == EvictionPlan(Admission.EVICT, ("idle",), lru.plan(20).reason)
    lru.release("busy")
    assert lru.plan(50).victims == ("busy", "idle")
    lru.mark_loaded("loading")
    assert lru.plan(50).victims == ("loading", "busy")


def test_pinned_entries_are_skipped_not_blocking() -> None:
    lru = SizeAwareLRU(100)
    for i, mid in enumerate("abcd"):
        _loaded(lru, mid, 25, i)
    lru.pin("a", True)
    assert not lru.is_evictable("a")
    assert lru.plan(30).victims == ("b", "c")
    lru.pin("a", False)
    assert lru.plan(30).victims == ("a", "b")


def test_never_when_larger_than_capacity_even_if_empty() -> None:
    lru = SizeAwareLRU(100)
    plan = lru.plan(101)
    assert plan.admission is Admission.NEVER
    assert "101" in plan.reason and "100" in plan.reason
    assert lru.plan(100).admission is Admission.FITS


def test_add_rejects_duplicates_and_overcommit() -> None:
    lru = SizeAwareLRU(100)
    lru.add("a", 60, 0)
    with pytest.raises(ValueError):
        lru.add("a", 10, 1)
    with pytest.raises(ValueError):
        lru.add("b", 41, 1)
    assert "b" not in lru and lru.used_bytes == 60
    lru.add("b", 40, 1)
    assert lru.free_bytes == 0


def test_resize_may_overshoot_and_plan_zero_sheds_it() -> None:
    lru = SizeAwareLRU(100)
    _loaded(lru, "a", 30, 0)
    lru.add("b", 50, 1)
    lru.resize("b", 90)  # measured size larger than predicted
    assert lru.used_bytes == 120 and lru.over_capacity_bytes == 20 and lru.free_bytes == 0
    plan = lru.plan(0)
    assert plan.admission is Admission.EVICT and plan.victims == ("a",)
    lru.remove("a")
    assert lru.over_capacity_bytes == 0 and lru.plan(0).admission is Admission.FITS


def test_shrinking_capacity_does_not_evict() -> None:
    lru = SizeAwareLRU(100)
    _loaded(lru, "a", 40, 0)
    _loaded(lru, "b", 40, 1)
    lru.capacity_bytes = 50
    assert len(lru) == 2 and lru.over_capacity_bytes == 30
    assert lru.plan(0).victims == ("a",)
    with pytest.raises(ValueError):
        lru.capacity_bytes = -1


def test_release_without_acquire_and_entry_snapshot() -> None:
    lru = SizeAwareLRU(10)
    lru.add("a", 5, 7)
    with pytest.raises(ValueError):
        lru.release("a")
    lru.acquire("a")
    lru.acquire("a")
    lru.pin("a", True)
    assert lru.entry("a") == CacheEntry("a", 5, 7, True, 2, True)
    assert lru.lru_ms() == 7
    assert SizeAwareLRU(10).lru_ms() is None


def test_negative_sizes_rejected() -> None:
    lru = SizeAwareLRU(10)
    with pytest.raises(ValueError):
        lru.add("a", -1, 0)
    with pytest.raises(ValueError):
        lru.plan(-1)
    with pytest.raises(ValueError):
        SizeAwareLRU(-5)
