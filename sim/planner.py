"""Capacity planning: the cheapest pods × memory that meet a hit-ratio target
and a cold-start budget, found by simulating candidate configurations.

For each pod memory size, the pod count is searched by galloping from the
scenario's own count (doubling while the targets are missed, halving while
they are met) then bisecting between the last failure and the first
success: O(log n) simulations, because the hit ratio grows (about)
monotonically with pods.  "About": routing randomness and placement can make
one more pod slightly worse, so the evaluated points are checked, and one
past the answer is simulated too; if any smaller count met the targets while
a larger one did not, the search falls back to trying every count up to the
answer, and says so.

All candidates run on the same workload (same requests, same seed), so the
comparison is between configurations, not between random draws.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from sim.runner import run_scenario
from sim.scenario import Scenario
from sim.stats import Summary
from sim.workload import Workload, load_workload

__all__ = ["Candidate", "Plan", "plan_capacity"]


@dataclass(frozen=True)
class Candidate:
    pods: int
    memory: int
    cost: float
    summary: Summary
    meets: bool


@dataclass
class Plan:
    target_hit: float
    max_cold_rate: float | None
    tried: list[Candidate] = field(default_factory=list)
    chosen: Candidate | None = None
    notes: list[str] = field(default_factory=list)

    def frontier(self) -> list[Candidate]:
        return sorted(self.tried, key=lambda c: (c.memory, c.pods))


OnEvaluate = Callable[[Candidate], None]


def plan_capacity(
    scenario: Scenario,
    *,
    target_hit: float,
    max_cold_rate: float | None = None,
    memories: Sequence[int] | None = None,
    max_pods: int = 256,
    workload: Workload | None = None,
    on_evaluate: OnEvaluate | None = None,
) -> Plan:
    """Search pod counts (and the given pod memory sizes) for the cheapest configuration."""
    workload = workload if workload is not None else load_workload(scenario)
    plan = Plan(target_hit, max_cold_rate)
    largest = int(workload.population.sizes.max())
    best: Candidate | None = None
    for memory in memories or [scenario.pods[0].memory]:
        if memory < largest:
            plan.notes.append(f"{memory} B pods skipped: smaller than the largest model ({largest} B)")
            continue
        found = _search(scenario, workload, memory, plan, max_pods, on_evaluate)
        if found is not None and (best is None or (found.cost, -found.summary.hit_ratio) < (best.cost, -best.summary.hit_ratio)):
            best = found
    plan.chosen = best
    return plan


def _search(scenario: Scenario, workload: Workload, memory: int, plan: Plan, max_pods: int,
            on_evaluate: OnEvaluate | None) -> Candidate | None:
    cache: dict[int, Candidate] = {}

    def evaluate(pods: int) -> Candidate:
        if pods not in cache:
            config = scenario.with_pods(pods, memory)
            summary = run_scenario(config, workload, baselines=False).summary
            candidate = Candidate(pods, memory, scenario.cost.of(pods, memory), summary,
                                  summary.meets(plan.target_hit, plan.max_cold_rate))
            cache[pods] = candidate
            plan.tried.append(candidate)
            if on_evaluate is not None:
                on_evaluate(candidate)
        return cache[pods]

    # gallop from the scenario's own count: halve while it meets, double while it
    # does not (tiny, hopelessly overloaded meshes are the slowest to simulate)
    start = min(max(1, scenario.total_pods), max_pods)
    if evaluate(start).meets:
        low, high = start // 2, start
        while low >= 1 and evaluate(low).meets:
            low, high = low // 2, low
    else:
        low, high = start, start
        while not evaluate(high).meets:
            low = high
            if high >= max_pods:
                plan.notes.append(f"{memory} B pods: targets not met with up to {max_pods} pods")
                return None
            high = min(high * 2, max_pods)
    # bisect (low fails or is 0, high meets)
    while high - low > 1:
        mid = (low + high) // 2
        if evaluate(mid).meets:
            high = mid
        else:
            low = mid
    if high + 1 <= max_pods:
        evaluate(high + 1)  # a check on monotonicity just past the answer
    points = sorted(cache.values(), key=lambda c: c.pods)
    monotone = all(not a.meets or b.meets for a, b in zip(points, points[1:]))
    if not monotone:
        plan.notes.append(f"{memory} B pods: meeting the targets is not monotone in pod count here; tried every count up to {high}")
        for pods in range(1, high):
            if evaluate(pods).meets:
                return cache[pods]
    return cache[high]
