"""Human-facing output: rich tables for the terminal and report.md.

The definitions of every figure live in ``sim.stats`` and are repeated in
the Markdown report, so a report read on its own says what it measured.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from rich.table import Table

from sim.planner import Plan
from sim.scenario import Scenario
from sim.stats import Summary, SweepPoint
from sim.units import format_size

__all__ = ["frontier_table", "summary_rows", "summary_table", "write_markdown"]

DEFINITIONS = """\
- **hit ratio**: requests served by an already loaded copy (on the receiving pod or one hop away) ÷ all requests.
- **cold start**: a load started by a request; copy-scaling loads are not cold starts. Rate = cold starts ÷ simulated seconds.
- **cold requests**: requests that waited for a load (they started it or joined one in progress).
- **latency** = inference time + one hop if forwarded + the wait for a load if cold; failed requests are counted, not timed.
- **baselines** pool all pods' memory into one cache (sum of capacities), see the same request sequence, load instantly and keep one copy per model:
  *infinite* (only first requests miss), *Belady MIN* (evict the model whose next request is farthest; forced admission; for variable sizes a greedy approximation of the optimum, which is NP-hard) and *LRU pooled* (the mesh's SizeAwareLRU as one cache).
- **simulation limits**: unloads are instant; measured size = predicted size; instance records reach peers at most every `publish_interval_s` after a change (no etcd latency); without `mesh.concurrency` requests hold no in-flight mark (copy scaling reacts to request rate only); no CPU queueing in runtimes.
"""


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.2f}%"


def _ms(x: float) -> str:
    return "–" if x != x else f"{x:,.1f}"


def summary_rows(s: Summary) -> list[tuple[str, str]]:
    """(figure, value) pairs shared by the terminal table and the Markdown report."""
    rows = [
        ("pods × memory", f"{s.pods} × {format_size(s.total_memory_bytes / max(1, s.pods))} = {format_size(s.total_memory_bytes)}"),
        ("requests (simulated seconds)", f"{s.requests:,} ({s.duration_s:,.0f} s)"),
        ("hit ratio (local + forwarded)", f"{_pct(s.hit_ratio)} ({_pct(s.local_hit_ratio)} + {_pct(s.forwarded_hit_ratio)})"),
        ("cold requests / failed", f"{_pct(s.cold_request_ratio)} / {_pct(s.failed_ratio)}"),
        ("cold starts per s", f"{s.cold_starts_per_s:,.2f}"),
        ("loads / evictions per s", f"{s.loads_per_s:,.2f} / {s.evictions_per_s:,.2f}"),
        ("copies added / dropped", f"{s.copy_adds:,} / {s.copy_drops:,} (mean copies {s.mean_copies:,.0f}, max models with ≥2: {s.max_multi_copy_models})"),
        ("memory used (mean / max of pods)", f"{_pct(s.memory_util_mean)} / {_pct(s.memory_util_max)}"),
    ]
    for kind in ("warm", "cold", "overall"):
        p = s.latency_ms[kind]
        rows.append((f"latency {kind} p50 / p95 / p99 (ms)", f"{_ms(p['p50'])} / {_ms(p['p95'])} / {_ms(p['p99'])}"))
    if s.baselines is not None:
        b = s.baselines
        rows += [
            ("infinite cache (pooled)", _pct(b.infinite)),
            ("Belady MIN (pooled)", _pct(b.belady)),
            ("LRU (pooled)", _pct(b.lru)),
            ("mesh ÷ Belady", f"{s.vs_belady:.3f}" if s.vs_belady is not None else "–"),
            ("LRU pooled ÷ Belady", f"{b.lru / b.belady:.3f}" if b.belady > 0 else "–"),
        ]
    return rows


def summary_table(s: Summary) -> Table:
    table = Table(title=f"simulation: {s.scenario}", show_header=True, header_style="bold")
    table.add_column("figure")
    table.add_column("value", justify="right")
    for name, value in summary_rows(s):
        table.add_row(name, value)
    return table


def frontier_table(plan: Plan) -> Table:
    cold = "max cold starts/s" if plan.max_cold_rate is None else f"≤ {plan.max_cold_rate:g} cold starts/s"
    table = Table(title=f"capacity plan: hit ratio ≥ {plan.target_hit:g}, {cold}", header_style="bold")
    for column in ("", "pods", "memory/pod", "hit ratio", "cold starts/s", "p99 cold (ms)", "cost", "meets"):
        table.add_column(column, justify="right")
    for c in plan.frontier():
        chosen = c is plan.chosen
        table.add_row(
            "→" if chosen else "", str(c.pods), format_size(c.memory), _pct(c.summary.hit_ratio),
            f"{c.summary.cold_starts_per_s:,.2f}", _ms(c.summary.latency_ms["cold"]["p99"]), f"{c.cost:,.2f}",
            "yes" if c.meets else "no", style="bold green" if chosen else None,
        )
    return table


def write_markdown(
    out_dir: Path,
    scenario: Scenario,
    summary: Summary,
    images: dict[str, Path],
    sweep: Sequence[SweepPoint] = (),
) -> Path:
    """report.md (with the PNGs beside it) and summary.json."""
    lines = [f"# Simulation report: {scenario.name}", ""]
    lines += ["| figure | value |", "|---|---|"]
    lines += [f"| {name} | {value} |" for name, value in summary_rows(summary)]
    if sweep:
        lines += ["", "## Hit ratio at other pod counts", "", "| pods | mesh | LRU pooled | Belady pooled | infinite |", "|---|---|---|---|---|"]
        for p in sorted(sweep, key=lambda p: p.pods):
            lines.append(f"| {p.pods} | {_pct(p.hit_ratio)} | {_pct(p.lru_pooled)} | {_pct(p.belady)} | {_pct(p.infinite)} |")
    for title, key in (("Hit ratio vs pods", "hit_vs_pods"), ("Memory over time", "memory"), ("Latency CDF", "latency_cdf")):
        if key in images:
            lines += ["", f"## {title}", "", f"![{title}]({images[key].name})"]
    lines += ["", "## Definitions", "", DEFINITIONS, "## Scenario", "", "```json",
              json.dumps(scenario.model_dump(mode="json"), indent=2), "```", ""]
    (out_dir / "summary.json").write_text(json.dumps(summary.to_dict(), indent=2, default=str))
    path = out_dir / "report.md"
    path.write_text("\n".join(lines))
    return path
