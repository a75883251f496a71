"""The simulator engine: hand-computed cases, and proof that it runs the real
placement code (and has no eviction policy of its own)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import placement.copies
import placement.instances
import sim.cluster
import sim.engine
from placement import Admission, EvictionPlan, SizeAwareLRU
from sim.engine import COLD_FORWARDED, COLD_LOCAL, FAILED, HIT_FORWARDED, HIT_LOCAL, simulate
from sim.testing import tiny_scenario
from sim.workload import sequence_workload

ABC = {"A": 100, "B": 100, "C": 100}


def codes(result) -> list[int]:
    return result.codes.tolist()


def test_one_pod_two_slots_a_b_a_c_a():
    """Capacity for two models: A B A C A → C evicts B (A was used since), A hits twice."""
    workload = sequence_workload(list("ABACA"), [0, 1000, 2000, 3000, 4000], ABC)
    result = simulate(tiny_scenario([200]), workload)
    assert codes(result) == [COLD_LOCAL, COLD_LOCAL, HIT_LOCAL, COLD_LOCAL, HIT_LOCAL]
    assert (result.loads, result.demand_loads, result.evictions) == (3, 3, 1)
    assert result.wait_ms.tolist() == pytest.approx([10, 10, 0, 10, 0])


def test_requests_arriving_while_loading_wait_for_that_load():
    workload = sequence_workload(["A", "A", "A"], [0, 4, 50], {"A": 100})
    result = simulate(tiny_scenario([200], load_ms=10), workload)
    assert codes(result) == [COLD_LOCAL, COLD_LOCAL, HIT_LOCAL]
    assert result.loads == 1
    assert result.wait_ms.tolist() == pytest.approx([10, 6, 0])


def test_placement_forwards_to_a_pod_with_room_and_later_hits_there():
    """Pod 0 holds one model: B goes where choose_load_target finds room (pod 1)."""
    workload = sequence_workload(["A", "B", "B", "A"], [0, 100, 200, 300], {"A": 100, "B": 100})
    result = simulate(tiny_scenario([100, 100]), workload, receiving=[0, 0, 1, 1])
    assert codes(result) == [COLD_LOCAL, COLD_FORWARDED, HIT_LOCAL, HIT_FORWARDED]
    assert result.evictions == 0
    latency = result.latencies_ms()
    assert latency[3] == pytest.approx(1.0 + result.hop_ms)  # inference 1 ms + one hop


def test_busy_model_gets_a_copy_and_the_idle_extra_is_dropped():
    """100 req/s on one model against scale_up_rps 10: a second copy; then idle: dropped."""
    times = list(np.arange(0, 20_000, 10.0)) + [60_000.0]
    workload = sequence_workload(["A"] * len(times), times, {"A": 100})
    scenario = tiny_scenario(2, copies={"interval_s": 1, "scale_up_rps": 10, "copy_idle_s": 10})
    result = simulate(scenario, workload)
    assert result.copy_adds == 1
    assert result.copy_drops == 1
    assert result.copies.max() == 2 and result.copies[-1] == 1


def test_min_copies_are_topped_up_and_pinned():
    workload = sequence_workload(["B", "C", "D"], [10_000, 11_000, 12_000], {"A": 100, "B": 100, "C": 100, "D": 100},
                                 min_copies={"A": 2})
    scenario = tiny_scenario([200, 200], copies={"interval_s": 1})
    result = simulate(scenario, workload, receiving=[0, 0, 0])
    assert result.copy_adds == 2  # the leader adds one copy per round up to min_copies
    assert result.copies[-1] == 2 + 2  # both copies of A stay (pinned) beside B, C, D's survivors
    assert not np.any(result.codes == FAILED)


def test_a_dying_pod_loses_its_models_and_waiting_requests_are_replaced():
    # A loads on pod 1 (slow load); pod 1 dies mid-load at 50 ms; its waiter is
    # re-placed as if it had arrived at pod 0, which takes pod 1's traffic from then on
    workload = sequence_workload(["A", "A"], [0, 1000], {"A": 100})
    scenario = tiny_scenario([100, 100], load_ms=100, failures=[{"at_s": 0.05, "pod": 1}])
    result = simulate(scenario, workload, receiving=[1, 1])
    assert codes(result) == [COLD_LOCAL, HIT_LOCAL]
    assert result.wait_ms[0] == pytest.approx(150)  # 50 ms on the dead pod + a fresh 100 ms load
    assert result.loads == 2


def test_concurrency_mode_never_evicts_a_model_serving_a_request():
    workload = sequence_workload(["A", "B"], [0, 20], {"A": 100, "B": 100}, inference_ms=1000)
    busy = simulate(tiny_scenario([100], mesh={"concurrency": True}), workload)
    # A serves from 10 to 1010 ms; B's load must wait for A's release, then evicts it
    assert busy.wait_ms[1] == pytest.approx(1010 + 10 - 20)
    loose = simulate(tiny_scenario([100]), workload)
    assert loose.wait_ms[1] == pytest.approx(10)  # without in-flight marks A is evicted at once


def test_the_engine_calls_the_real_placement_functions(monkeypatch):
    assert sim.cluster.choose_load_target is placement.instances.choose_load_target
    assert sim.engine.pick_copy is placement.instances.pick_copy
    assert sim.engine.decide_copy is placement.copies.decide_copy
    assert sim.cluster.SizeAwareLRU is SizeAwareLRU
    calls: dict[str, int] = {}

    def spy(owner, name):
        real = getattr(owner, name)

        def wrapper(*args, **kwargs):
            calls[name] = calls.get(name, 0) + 1
            return real(*args, **kwargs)

        monkeypatch.setattr(owner, name, wrapper)

    for name in ("plan", "add", "mark_loaded", "touch", "remove", "pin"):
        spy(SizeAwareLRU, name)
    spy(sim.cluster, "choose_load_target")
    spy(sim.engine, "decide_copy")
    spy(sim.engine, "pick_copy")
    times = list(np.arange(0, 10_000, 5.0))
    rng = np.random.default_rng(0)
    models = [f"m{k}" for k in rng.integers(0, 4, len(times))]
    workload = sequence_workload(models, times, {f"m{k}": 100 for k in range(4)}, min_copies={"m0": 2})
    simulate(tiny_scenario([200, 200, 200], copies={"interval_s": 1, "scale_up_rps": 5}), workload)
    for name in ("plan", "add", "mark_loaded", "touch", "remove", "pin", "choose_load_target", "decide_copy", "pick_copy"):
        assert calls.get(name, 0) > 0, name


def test_eviction_victims_come_from_plan_only(monkeypatch):
    """Swap SizeAwareLRU.plan for most-recently-used eviction: the engine follows it."""
    real_plan = SizeAwareLRU.plan

    def mru_plan(self, needed_bytes):
        plan = real_plan(self, needed_bytes)
        if plan.admission is not Admission.EVICT:
            return plan
        newest = [e.model_id for e in reversed(self.entries()) if not e.loading and not e.in_flight and not e.pinned]
        return EvictionPlan(Admission.EVICT, (newest[0],), "most recently used")

    workload = sequence_workload(list("ABACA"), [0, 1000, 2000, 3000, 4000], ABC)
    lru_result = simulate(tiny_scenario([200]), workload)
    monkeypatch.setattr(SizeAwareLRU, "plan", mru_plan)
    mru_result = simulate(tiny_scenario([200]), workload)
    assert codes(lru_result)[-1] == HIT_LOCAL
    assert codes(mru_result)[-1] == COLD_LOCAL  # C evicted A, the most recently used
    sources = "".join((Path(sim.engine.__file__).parent / f).read_text() for f in ("engine.py", "cluster.py"))
    for policy_word in ("OrderedDict", "move_to_end", "lru_ms() <", "sorted(pod.lru.entries"):
        assert policy_word not in sources


def test_a_model_no_pod_can_take_fails_its_requests():
    workload = sequence_workload(["big", "A"], [0, 100], {"big": 500, "A": 100})
    result = simulate(tiny_scenario([200]), workload)
    assert codes(result) == [FAILED, COLD_LOCAL]


def test_runs_are_identical_across_processes_and_hash_seeds():
    """Same scenario, same seed → same outcome per request, whatever PYTHONHASHSEED
    (no decision may depend on set or hash order)."""
    script = (
        "import hashlib; from sim.scenario import load_scenario; from sim.runner import run_scenario;"
        "r = run_scenario(load_scenario('sim/scenarios/small.yaml'), baselines=False).result;"
        "print(hashlib.sha256(r.codes.tobytes() + r.wait_ms.tobytes()).hexdigest(), r.copy_adds, r.loads)"
    )
    root = Path(sim.engine.__file__).resolve().parents[1]
    outputs = {
        subprocess.run([sys.executable, "-c", script], cwd=root, capture_output=True, text=True, check=True,
                       env={**os.environ, "PYTHONHASHSEED": seed}).stdout
        for seed in ("1", "2")
    }
    assert len(outputs) == 1, outputs
