"""PNG plots for report.md (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)
import numpy as np  # noqa: E402

from sim.engine import COLD_FORWARDED, COLD_LOCAL, HIT_FORWARDED, HIT_LOCAL, SimResult  # noqa: E402
from sim.stats import SweepPoint  # noqa: E402

__all__ = ["plot_hit_vs_pods", "plot_latency_cdf", "plot_memory"]

MAX_POD_LINES = 16  # more pods than this are drawn as a min/mean/max band


def plot_hit_vs_pods(points: Sequence[SweepPoint], path: Path, title: str) -> Path:
    points = sorted(points, key=lambda p: p.pods)
    x = [p.pods for p in points]
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    ax.plot(x, [p.hit_ratio for p in points], "o-", label="mesh (simulated)")
    for attr, style, label in (
        ("lru_pooled", "s--", "LRU, pooled memory"),
        ("belady", "^--", "Belady MIN, pooled memory"),
        ("infinite", ":", "infinite cache"),
    ):
        values = [getattr(p, attr) for p in points]
        if all(v is not None for v in values):
            ax.plot(x, values, style, label=label)
    ax.set_xlabel("pods")
    ax.set_ylabel("hit ratio")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower right", fontsize="small")
    return _save(fig, path)


def plot_memory(result: SimResult, path: Path, title: str) -> Path:
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    t = result.sample_times_s
    util = result.used_bytes / result.pod_memory if result.used_bytes.size else np.zeros((0, 1))
    if util.shape[1] <= MAX_POD_LINES:
        for k, pod_id in enumerate(result.pod_ids):
            ax.plot(t, util[:, k], label=pod_id, linewidth=1)
        ax.legend(fontsize="x-small", ncol=2, loc="lower right")
    else:
        ax.fill_between(t, util.min(axis=1), util.max(axis=1), alpha=0.3, label="min–max over pods")
        ax.plot(t, util.mean(axis=1), label="mean")
        ax.legend(fontsize="small", loc="lower right")
    ax.set_ylim(0, 1.05)
    ax.set_xlabel("simulated time (s)")
    ax.set_ylabel("memory used ÷ capacity")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    return _save(fig, path)


def plot_latency_cdf(result: SimResult, path: Path, title: str) -> Path:
    latency = result.latencies_ms()
    codes = result.codes
    groups = {
        "overall": ~np.isnan(latency),
        "warm": (codes == HIT_LOCAL) | (codes == HIT_FORWARDED),
        "cold": (codes == COLD_LOCAL) | (codes == COLD_FORWARDED),
    }
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for label, mask in groups.items():
        values = np.sort(latency[mask])
        if values.size:
            step = max(1, values.size // 2000)  # a few thousand points draw the same curve
            ax.plot(values[::step], (np.arange(values.size)[::step] + 1) / values.size, label=f"{label} ({values.size:,})")
    ax.set_xscale("log")
    ax.set_xlabel("latency (ms)")
    ax.set_ylabel("fraction of requests ≤ x")
    ax.set_title(title)
    ax.grid(True, alpha=0.3, which="both")
    ax.legend(fontsize="small", loc="lower right")
    return _save(fig, path)


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
