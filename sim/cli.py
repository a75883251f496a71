"""`mmesh sim ...`: run a scenario into a report, plan capacity, export a trace,
replay a trace against a live mesh."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from sim.planner import plan_capacity
from sim.report import frontier_table, summary_table, write_markdown
from sim.runner import Run, run_scenario
from sim.scenario import Scenario, ScenarioError, load_scenario
from sim.stats import SweepPoint
from sim.trace import TraceError, write_trace
from sim.units import format_size, parse_rate, parse_size
from sim.workload import Workload, load_workload

sim_app = typer.Typer(help="Simulate a mesh on the real placement code; plan capacity.", no_args_is_help=True)
console = Console()

ScenarioArg = Annotated[Path, typer.Argument(help="scenario YAML (see sim/scenarios/)", exists=True, dir_okay=False)]


@sim_app.callback()
def _needs_sim_extra() -> None:
    """Scenario files need PyYAML and reports matplotlib: the `sim` extra.
    Say so once, plainly, instead of an ImportError deep in a command."""
    import importlib.util

    missing = [m for m in ("yaml", "matplotlib") if importlib.util.find_spec(m) is None]
    if missing:
        console.print(
            f"[red]error:[/red] the simulator needs {' and '.join(missing)}: pip install 'mmesh\\[sim]'",
            markup=True, highlight=False,
        )
        raise typer.Exit(2)


def _progress() -> Progress:
    return Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        console=console, transient=False,
    )


def _load(path: Path) -> tuple[Scenario, Workload]:
    try:
        scenario = load_scenario(path)
        return scenario, load_workload(scenario)
    except (ScenarioError, TraceError) as exc:
        console.print(f"[red]error:[/red] {exc}", markup=True, highlight=False)
        raise typer.Exit(2) from None


def _counts(text: str) -> list[int]:
    try:
        counts = sorted({int(x) for x in text.split(",") if x.strip()})
    except ValueError:
        raise typer.BadParameter(f"expected pod counts like 2,4,8, got {text!r}") from None
    if any(c < 1 for c in counts):
        raise typer.BadParameter("pod counts must be >= 1")
    return counts


def _default_sweep(scenario: Scenario) -> list[int]:
    n = scenario.total_pods
    return scenario.report.pod_counts or sorted({max(1, n // 4), max(1, n // 2), n, 2 * n})


@sim_app.command()
def run(
    scenario_path: ScenarioArg,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="report folder (default sim-out/<scenario>)")] = None,
    pod_counts: Annotated[str, typer.Option(help="pod counts for the hit-ratio-vs-pods plot, e.g. 2,4,8 (default: report.pod_counts or n/4, n/2, n, 2n)")] = "",
    sweep: Annotated[bool, typer.Option(help="run the pod-count sweep for the hit-ratio plot")] = True,
) -> None:
    """Simulate a scenario: summary table, PNG plots and report.md in OUT."""
    from sim.plots import plot_hit_vs_pods, plot_latency_cdf, plot_memory  # matplotlib: only when plotting
    scenario, workload = _load(scenario_path)
    out = out or Path("sim-out") / scenario.name
    out.mkdir(parents=True, exist_ok=True)
    counts = _counts(pod_counts) if pod_counts else _default_sweep(scenario)
    if sweep and len(scenario.pods) != 1:
        console.print("[yellow]pod sweep skipped: it varies one pod group and this scenario has several[/yellow]")
        sweep = False
    with _progress() as progress:
        task = progress.add_task("simulating", total=len(workload))
        main = run_scenario(scenario, workload, progress=lambda done, total: progress.update(task, completed=done))
        points: list[SweepPoint] = [_point(main)]
        if sweep:
            others = [c for c in counts if c != scenario.total_pods]
            task = progress.add_task("pod sweep", total=len(others))
            for count in others:
                points.append(_point(run_scenario(scenario.with_pods(count), workload)))
                progress.advance(task)
    console.print(summary_table(main.summary))
    images = {
        "memory": plot_memory(main.result, out / "memory.png", f"{scenario.name}: memory per pod"),
        "latency_cdf": plot_latency_cdf(main.result, out / "latency_cdf.png", f"{scenario.name}: latency"),
    }
    if len(points) > 1:
        images["hit_vs_pods"] = plot_hit_vs_pods(points, out / "hit_vs_pods.png", f"{scenario.name}: hit ratio vs pods")
    report = write_markdown(out, scenario, main.summary, images, points if len(points) > 1 else ())
    console.print(f"report: {report}")


def _point(run: Run) -> SweepPoint:
    b = run.summary.baselines
    return SweepPoint(run.summary.pods, run.summary.hit_ratio, b and b.belady, b and b.lru, b and b.infinite)


@sim_app.command()
def plan(
    scenario_path: ScenarioArg,
    target_hit: Annotated[float, typer.Option(help="required hit ratio, e.g. 0.99", min=0.0, max=1.0)] = 0.99,
    max_cold_rate: Annotated[str, typer.Option(help="cold-start budget, e.g. 5/s or 120/min (default: none)")] = "",
    pod_memory: Annotated[str, typer.Option(help="pod memory sizes to consider, e.g. 4GiB,8GiB,16GiB (default: the scenario's)")] = "",
    max_pods: Annotated[int, typer.Option(help="give up above this many pods", min=1)] = 256,
) -> None:
    """Find the cheapest pods × memory meeting the targets; print the configurations tried."""
    try:
        cold = parse_rate(max_cold_rate) if max_cold_rate else None
        memories = [parse_size(m) for m in pod_memory.split(",") if m.strip()] or None
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    scenario, workload = _load(scenario_path)
    if len(scenario.pods) != 1:
        console.print("[red]error:[/red] the planner varies one pod group; describe the pods as a single group")
        raise typer.Exit(2)
    with _progress() as progress:
        task = progress.add_task("configurations simulated", total=None)
        result = plan_capacity(
            scenario, target_hit=target_hit, max_cold_rate=cold, memories=memories, max_pods=max_pods,
            workload=workload, on_evaluate=lambda c: progress.advance(task),
        )
    console.print(frontier_table(result))
    for note in result.notes:
        console.print(f"[yellow]note:[/yellow] {note}")
    if result.chosen is None:
        console.print("[red]no configuration tried meets the targets[/red]")
        raise typer.Exit(1)
    c = result.chosen
    console.print(f"chosen: [bold]{c.pods} pods × {format_size(c.memory)}[/bold] (cost {c.cost:,.2f}), "
                  f"hit ratio {c.summary.hit_ratio:.4f}, {c.summary.cold_starts_per_s:.2f} cold starts/s")


@sim_app.command()
def trace(
    scenario_path: ScenarioArg,
    out: Annotated[Path, typer.Option("--out", "-o", help="CSV file to write")],
    sizes: Annotated[bool, typer.Option(help="include a size_bytes column")] = True,
    limit: Annotated[Optional[int], typer.Option(help="write only the first N requests", min=1)] = None,
) -> None:
    """Write a scenario's generated requests as a CSV trace (time, model_id, size_bytes)."""
    _, workload = _load(scenario_path)
    pop = workload.population
    n = min(len(workload), limit or len(workload))
    write_trace(
        out, (workload.times_ms[:n] / 1000.0).tolist(), (pop.ids[k] for k in workload.model_index[:n].tolist()),
        dict(zip(pop.ids, pop.sizes.tolist())) if sizes else None,
    )
    console.print(f"{n:,} requests over {len(pop):,} models → {out}")


@sim_app.command()
def replay(
    trace_path: Annotated[Path, typer.Argument(help="trace file (CSV or JSON lines, see sim/trace.py)", exists=True, dir_okay=False)],
    target: Annotated[list[str], typer.Option("--target", "-t", help="sidecar gRPC address host:port; repeat for several")],
    metrics: Annotated[list[str], typer.Option("--metrics", "-m", help="sidecar metrics host:port; repeat, one per sidecar")],
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="per-request results (.csv, or .jsonl)")] = None,
    speed: Annotated[float, typer.Option(help="time compression: 10 replays a 10-minute trace in 1 minute", min=0.001)] = 1.0,
    max_duration: Annotated[float, typer.Option(help="stop sending after this many seconds", min=0.0)] = 300.0,
    spread_by: Annotated[str, typer.Option("--spread", help="round-robin or random (seeded) choice of target")] = "round-robin",
    seed: Annotated[int, typer.Option(help="seed of the random target choice")] = 0,
    settle: Annotated[float, typer.Option(help="seconds to wait after each miss (let peers see the new copy)", min=0.0)] = 0.0,
    time_unit: Annotated[str, typer.Option(help="unit of numeric trace times: auto, s or ms")] = "auto",
    limit: Annotated[Optional[int], typer.Option(help="replay only the first N requests", min=1)] = None,
) -> None:
    """Send a trace to a live mesh, one request at a time; hit/miss per request from
    the mesh's load counter.  Models must already be registered."""
    from sim.replay import replay as run_replay, write_records  # grpc stubs: only when replaying
    from sim.trace import read_trace

    if spread_by not in ("round-robin", "random"):
        raise typer.BadParameter(f"--spread must be round-robin or random, got {spread_by!r}")
    if time_unit not in ("auto", "s", "ms"):
        raise typer.BadParameter(f"--time-unit must be auto, s or ms, got {time_unit!r}")
    try:
        recorded = read_trace(trace_path, time_unit=time_unit, limit=limit)  # type: ignore[arg-type]
    except TraceError as exc:
        console.print(f"[red]error:[/red] {exc}", markup=True, highlight=False)
        raise typer.Exit(2) from None
    with _progress() as progress:
        task = progress.add_task("requests", total=len(recorded))
        result = run_replay(recorded, target, metrics, speed=speed, max_duration_s=max_duration,
                            how=spread_by, seed=seed, settle_s=settle,  # type: ignore[arg-type]
                            on_request=lambda record: progress.advance(task))
    if out is not None:
        write_records(out, result.records)
    errors = len(result.records) - len(result.answered)
    console.print(f"{len(result.records):,} requests sent ({result.not_sent:,} past --max-duration, {errors:,} failed); "
                  f"hit ratio [bold]{result.hit_ratio:.4f}[/bold]" + (f" → {out}" if out else ""))
