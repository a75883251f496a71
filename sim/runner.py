"""One call from a scenario to figures: workload → engine → baselines → summary.

The CLI, the planner and the benchmarks all go through here, so a
configuration is always evaluated the same way.
"""

from __future__ import annotations

from dataclasses import dataclass

from sim.baselines import compute_baselines
from sim.engine import Progress, SimResult, simulate
from sim.scenario import Scenario
from sim.stats import Summary, summarize
from sim.workload import Workload, load_workload

__all__ = ["Run", "run_scenario"]


@dataclass
class Run:
    scenario: Scenario
    workload: Workload
    result: SimResult
    summary: Summary


def run_scenario(
    scenario: Scenario,
    workload: Workload | None = None,
    *,
    baselines: bool = True,
    progress: Progress | None = None,
) -> Run:
    """Simulate ``scenario`` (on ``workload`` if given: the planner reuses one
    workload across pod counts); baselines pool all pods' memory."""
    workload = workload if workload is not None else load_workload(scenario)
    result = simulate(scenario, workload, progress)
    refs = None
    if baselines:
        pop = workload.population
        refs = compute_baselines(workload.model_index, pop.ids, pop.sizes, int(result.pod_memory.sum()))
    return Run(scenario, workload, result, summarize(scenario.name, result, refs))
