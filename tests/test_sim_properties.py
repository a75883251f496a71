"""Hypothesis: workload generators and simulator invariants on random small cases."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from placement import Admission, SizeAwareLRU
from sim.baselines import belady_hits, infinite_hits, lru_hits, next_use
from sim.engine import FAILED, HIT_FORWARDED, HIT_LOCAL, simulate
from sim.scenario import Bursty, Diurnal, Traffic
from sim.testing import tiny_scenario
from sim.workload import arrival_times, intensity, sequence_workload, zipf_models

FAST = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def cases(draw, *, equal_sizes: bool = False, max_pods: int = 3):
    """A random mesh (1-3 pods) and a random request sequence over up to 8 models."""
    capacities = draw(st.lists(st.integers(100, 400), min_size=1, max_size=max_pods))
    n_models = draw(st.integers(1, 8))
    smallest = min(capacities)
    size = draw(st.integers(10, smallest))
    sizes = {f"m{k}": size if equal_sizes else draw(st.integers(10, smallest)) for k in range(n_models)}
    n = draw(st.integers(1, 60))
    requests = [f"m{k}" for k in draw(st.lists(st.integers(0, n_models - 1), min_size=n, max_size=n))]
    gaps = draw(st.lists(st.integers(0, 500), min_size=n, max_size=n))
    times = np.cumsum(gaps).astype(float).tolist()
    inference = draw(st.floats(0.1, 300))
    options = dict(
        load_ms=draw(st.sampled_from([0.0, 5.0, 100.0])),
        mesh={"concurrency": draw(st.booleans()), "capacity_wait_s": draw(st.sampled_from([0, 1, 30]))},
        copies={"interval_s": 0.5, "scale_up_rps": 2, "copy_idle_s": 1} if draw(st.booleans()) else False,
        seed=draw(st.integers(0, 5)),
    )
    return capacities, sequence_workload(requests, times, sizes, inference_ms=inference), options


@FAST
@given(cases())
def test_invariants_hold_on_random_cases(case):
    capacities, workload, options = case
    checked = []
    real_touch = SizeAwareLRU.touch

    def touch(self, model_id, now_ms):  # used bytes never exceed capacity, checked on every use
        assert self.used_bytes <= self.capacity_bytes
        checked.append(1)
        return real_touch(self, model_id, now_ms)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(SizeAwareLRU, "touch", touch)
        result = simulate(tiny_scenario(capacities, **options), workload)
    n = len(workload)
    counts = np.bincount(result.codes, minlength=5)
    assert counts.sum() == n and len(counts) == 5  # every request answered exactly once
    hits = counts[HIT_LOCAL] + counts[HIT_FORWARDED]
    assert np.all(result.used_bytes <= result.pod_memory)
    infinite = infinite_hits(workload.model_index)
    assert 0 <= hits <= infinite  # only first requests must miss
    if options["mesh"]["capacity_wait_s"] == 30 and not options["mesh"]["concurrency"]:
        assert counts[FAILED] == 0  # every model fits every pod; loads finish well within the wait
    again = simulate(tiny_scenario(capacities, **options), workload)
    assert again.codes.tolist() == result.codes.tolist()  # deterministic
    assert np.allclose(again.wait_ms, result.wait_ms)


@FAST
@given(cases(equal_sizes=True, max_pods=1))
def test_belady_beats_lru_and_matches_the_simulator_on_one_pod(case):
    """Equal sizes, one cache: Belady's MIN is optimal; with instant loads the
    simulated pod is exactly the pooled LRU (same SizeAwareLRU, same order)."""
    capacities, workload, _ = case
    pop = workload.population
    capacity = capacities[0]
    belady = belady_hits(workload.model_index, pop.sizes, capacity)
    lru = lru_hits(workload.model_index, pop.ids, pop.sizes, capacity)
    assert infinite_hits(workload.model_index) >= belady >= lru >= 0
    spaced = workload.times_ms + np.arange(len(workload))  # >= 1 ms apart: each load (~0 ms) lands first
    requests = [pop.ids[k] for k in workload.model_index]
    instant = sequence_workload(requests, spaced, dict(zip(pop.ids, pop.sizes.tolist())))
    result = simulate(tiny_scenario(capacities, load_ms=0.0), instant)
    sim_hits = int(np.isin(result.codes, [HIT_LOCAL, HIT_FORWARDED]).sum())
    assert sim_hits == lru


def test_belady_on_a_known_sequence():
    # capacity 2 of unit size: A B C A B (MIN keeps A,B; C is loaded and evicted next) → A, B hit
    seq = np.array([0, 1, 2, 0, 1])
    assert belady_hits(seq, np.ones(3, dtype=np.int64), 2) == 1  # forced admission: C evicts B (farthest)
    assert lru_hits(seq, ["A", "B", "C"], np.ones(3, dtype=np.int64), 2) == 0
    assert next_use(seq).tolist() == [3, 4, 5, 5, 5]


@FAST
@given(st.integers(0, 2**32 - 1), st.sampled_from(["poisson", "bursty", "diurnal"]), st.floats(1, 200), st.floats(1, 100))
def test_arrivals_are_sorted_seeded_and_have_the_right_mean(seed, pattern, rate, duration):
    extra = {"bursty": {"bursty": Bursty(on_s=2, off_s=3)}, "diurnal": {"diurnal": Diurnal(period_s=20)}}.get(pattern, {})
    traffic = Traffic(rate=rate, duration_s=duration, pattern=pattern, **extra)
    times = arrival_times(traffic, np.random.default_rng(seed))
    assert np.all(np.diff(times) >= 0)
    assert times.size == 0 or (times[0] >= 0 and times[-1] <= duration)
    assert np.array_equal(times, arrival_times(traffic, np.random.default_rng(seed)))
    expected = intensity(traffic, np.random.default_rng(seed))[1][-1]  # Λ(T) of this draw
    assert abs(times.size - expected) <= 6 * np.sqrt(expected) + 3
    if pattern == "poisson":
        assert expected == pytest.approx(rate * duration)


def test_bursty_traffic_is_silent_when_off():
    traffic = Traffic(rate=50, duration_s=200, pattern="bursty", bursty=Bursty(on_s=5, off_s=10, off_fraction=0))
    t, lam = intensity(traffic, np.random.default_rng(1))
    times = arrival_times(traffic, np.random.default_rng(1))
    slopes = np.diff(lam) / np.maximum(np.diff(t), 1e-12)
    segment = np.clip(np.searchsorted(t, times, side="right") - 1, 0, len(slopes) - 1)
    assert np.all(slopes[segment] > 0)  # no arrival inside an off period


@FAST
@given(st.integers(0, 2**32 - 1), st.integers(1, 200), st.floats(0.3, 2.0), st.booleans())
def test_zipf_requests_stay_in_the_population_and_favour_the_head(seed, n_models, alpha, drift):
    times = np.sort(np.random.default_rng(seed).uniform(0, 100, 5000))
    args = (times, n_models, alpha, np.random.default_rng(seed), 10.0 if drift else None, 3)
    models = zipf_models(*args)
    assert models.min() >= 0 and models.max() < n_models
    assert np.array_equal(models, zipf_models(*args[:3], np.random.default_rng(seed), *args[4:]))
    if not drift and n_models >= 20:
        counts = np.bincount(models, minlength=n_models)
        assert counts.max() > 5000 / n_models  # the most popular model beats uniform


@FAST
@given(st.lists(st.tuples(st.integers(1, 60), st.booleans(), st.booleans(), st.booleans()), max_size=12),
       st.integers(0, 130))
def test_evictable_bytes_predicts_wait_exactly(entries, needed):
    """The engine re-plans waiting loads only when this says plan() could differ."""
    lru = SizeAwareLRU(200)
    for k, (size, loading, busy, pinned) in enumerate(entries):
        if lru.used_bytes + size > lru.capacity_bytes:
            break
        lru.add(f"m{k}", size, k, loading=loading)
        if busy:
            lru.acquire(f"m{k}")
        lru.pin(f"m{k}", pinned)
    room = lru.capacity_bytes - lru.used_bytes + lru.evictable_bytes
    waits = lru.plan(needed).admission is Admission.WAIT
    assert waits == (needed <= lru.capacity_bytes and needed > room)
