"""Figures from a simulation: what the report prints and the planner compares.

Definitions (also printed in report.md):

* hit ratio: requests served by an already loaded copy (here or one hop
  away) ÷ all requests;
* cold start: a load started by a request (copy-scaling and min-copies loads
  are not cold starts); cold-start rate = cold starts ÷ simulated seconds;
  cold requests are all requests that waited for a load, including those
  that joined a load another request started;
* latency = inference + hop (if forwarded) + wait for the load (if cold);
  failed requests are left out of latency and counted separately.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from sim.baselines import Baselines
from sim.engine import COLD_FORWARDED, COLD_LOCAL, FAILED, HIT_FORWARDED, HIT_LOCAL, SimResult

__all__ = ["PERCENTILES", "Summary", "SweepPoint", "summarize"]

PERCENTILES = (50, 95, 99)


@dataclass(frozen=True)
class Summary:
    scenario: str
    pods: int
    total_memory_bytes: int
    requests: int
    duration_s: float
    hit_ratio: float
    local_hit_ratio: float
    forwarded_hit_ratio: float
    cold_request_ratio: float
    failed_ratio: float
    cold_starts_per_s: float
    cold_requests_per_s: float
    loads_per_s: float
    evictions_per_s: float
    copy_adds: int
    copy_drops: int
    mean_copies: float
    max_multi_copy_models: int
    memory_util_mean: float  # mean over samples and pods of used ÷ capacity
    memory_util_max: float
    latency_ms: dict[str, dict[str, float]]  # warm / cold / overall → p50 / p95 / p99
    baselines: Baselines | None = None

    @property
    def vs_belady(self) -> float | None:
        if self.baselines is None or self.baselines.belady <= 0:
            return None
        return self.hit_ratio / self.baselines.belady

    def meets(self, target_hit: float, max_cold_rate: float | None) -> bool:
        return self.hit_ratio >= target_hit and (max_cold_rate is None or self.cold_starts_per_s <= max_cold_rate)

    def to_dict(self) -> dict:
        out = asdict(self)
        out["vs_belady"] = self.vs_belady
        return out


@dataclass(frozen=True)
class SweepPoint:
    """Hit ratios of one pod count (for the hit-ratio-vs-pods plot and table)."""

    pods: int
    hit_ratio: float
    belady: float | None
    lru_pooled: float | None
    infinite: float | None


def _percentiles(values: np.ndarray) -> dict[str, float]:
    if values.size == 0:
        return {f"p{p}": float("nan") for p in PERCENTILES}
    return {f"p{p}": float(v) for p, v in zip(PERCENTILES, np.percentile(values, PERCENTILES))}


def summarize(name: str, result: SimResult, baselines: Baselines | None = None) -> Summary:
    codes = result.codes
    n = max(1, len(codes))
    counts = np.bincount(codes, minlength=5)
    latency = result.latencies_ms()
    warm = (codes == HIT_LOCAL) | (codes == HIT_FORWARDED)
    cold = (codes == COLD_LOCAL) | (codes == COLD_FORWARDED)
    seconds = max(result.duration_s, 1e-9)
    util = result.used_bytes / result.pod_memory if result.used_bytes.size else np.zeros((1, 1))
    return Summary(
        scenario=name,
        pods=len(result.pod_ids),
        total_memory_bytes=int(result.pod_memory.sum()),
        requests=len(codes),
        duration_s=result.duration_s,
        hit_ratio=float(counts[HIT_LOCAL] + counts[HIT_FORWARDED]) / n,
        local_hit_ratio=float(counts[HIT_LOCAL]) / n,
        forwarded_hit_ratio=float(counts[HIT_FORWARDED]) / n,
        cold_request_ratio=float(counts[COLD_LOCAL] + counts[COLD_FORWARDED]) / n,
        failed_ratio=float(counts[FAILED]) / n,
        cold_starts_per_s=result.demand_loads / seconds,
        cold_requests_per_s=float(cold.sum()) / seconds,
        loads_per_s=result.loads / seconds,
        evictions_per_s=result.evictions / seconds,
        copy_adds=result.copy_adds,
        copy_drops=result.copy_drops,
        mean_copies=float(result.copies.mean()) if result.copies.size else 0.0,
        max_multi_copy_models=int(result.multi_copy_models.max()) if result.multi_copy_models.size else 0,
        memory_util_mean=float(util.mean()),
        memory_util_max=float(util.max()),
        latency_ms={
            "warm": _percentiles(latency[warm]),
            "cold": _percentiles(latency[cold]),
            "overall": _percentiles(latency[~np.isnan(latency)]),
        },
        baselines=baselines,
    )
