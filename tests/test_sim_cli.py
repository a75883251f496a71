"""`mmesh sim run|plan|trace` through typer's CliRunner, and the planner's search."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from mesh.cli import app
from sim.planner import plan_capacity
from sim.scenario import load_scenario
from sim.trace import read_trace, write_trace

TINY = """\
name: tiny
seed: 2
pods: [{count: 2, memory: 1GiB}]
runtimes: {_default: {load_fixed_ms: 50, bandwidth: 1GiB}}
models: [{count: 30, type: onnx, size: {median: 60MiB, sigma: 0.3, max: 200MiB}, inference_ms: 4}]
traffic: {rate: 20, duration_s: 30, zipf_alpha: 1.1}
report: {sample_interval_s: 1}
"""

runner = CliRunner()


@pytest.fixture
def tiny(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY)
    return path


def cyclic(tmp_path: Path) -> Path:
    """12 equal models requested round-robin; a pod holds 3.  LRU gets no hit
    until all 12 fit at once (4 pods): the minimal count is known."""
    models = [f"m{k % 12}" for k in range(12 * 40)]
    write_trace(tmp_path / "cyclic.csv", [k * 0.5 for k in range(len(models))], models, None)
    path = tmp_path / "cyclic.yaml"
    path.write_text(
        "pods: [{count: 1, memory: 300MiB}]\n"
        "runtimes: {_default: {load_fixed_ms: 20, bandwidth: 10GiB}}\n"
        "trace: {path: cyclic.csv, time_unit: s, default_size: 100MiB}\n"
        "mesh: {copies: {enabled: false}}\n"
    )
    return path


def test_run_writes_a_report_with_plots(tiny, tmp_path):
    out = tmp_path / "out"
    result = runner.invoke(app, ["sim", "run", str(tiny), "--out", str(out), "--pod-counts", "1,2"])
    assert result.exit_code == 0, result.output
    assert "hit ratio" in result.output and "Belady MIN (pooled)" in result.output
    for name in ("report.md", "summary.json", "memory.png", "latency_cdf.png", "hit_vs_pods.png"):
        assert (out / name).stat().st_size > 0, name
    report = (out / "report.md").read_text()
    for image in ("memory.png", "latency_cdf.png", "hit_vs_pods.png"):
        assert f"]({image})" in report
    assert (out / "memory.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_run_reports_scenario_errors_clearly(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(TINY.replace("zipf_alpha: 1.1", "zipf_alpha: 0"))
    result = runner.invoke(app, ["sim", "run", str(bad), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2
    assert "traffic.zipf_alpha" in result.output


def test_planner_finds_the_known_minimal_pod_count(tmp_path):
    scenario = load_scenario(cyclic(tmp_path))
    plan = plan_capacity(scenario, target_hit=0.9)
    assert plan.chosen is not None and plan.chosen.pods == 4
    tried = {c.pods: c.meets for c in plan.tried}
    assert tried[3] is False and tried[4] is True and tried.get(5, True)
    assert len(plan.tried) <= 6  # galloping + bisection, not a linear scan
    from_above = plan_capacity(scenario.with_pods(16), target_hit=0.9)  # gallops down from 16
    assert from_above.chosen is not None and from_above.chosen.pods == 4
    assert 1 not in {c.pods for c in from_above.tried}


def test_plan_command_prints_the_frontier_and_the_choice(tmp_path):
    path = cyclic(tmp_path)
    with path.open("a") as f:
        f.write("cost: {per_pod: 1.0, per_gib: 1.0}\n")  # a fixed cost per pod: fewer, bigger pods win
    result = runner.invoke(
        app, ["sim", "plan", str(path), "--target-hit", "0.9", "--max-cold-rate", "5/s", "--pod-memory", "300MiB,600MiB"]
    )
    assert result.exit_code == 0, result.output
    assert "capacity plan" in result.output and "→" in result.output
    assert "chosen: 2 pods × 600MiB" in result.output


def test_plan_with_an_impossible_target_exits_nonzero(tmp_path):
    result = runner.invoke(app, ["sim", "plan", str(cyclic(tmp_path)), "--target-hit", "1.0", "--max-pods", "4"])
    assert result.exit_code == 1
    assert "no configuration" in result.output


def test_trace_command_exports_a_replayable_trace(tiny, tmp_path):
    out = tmp_path / "trace.csv"
    result = runner.invoke(app, ["sim", "trace", str(tiny), "--out", str(out), "--limit", "100"])
    assert result.exit_code == 0, result.output
    trace = read_trace(out)
    assert len(trace) == 100 and trace.sizes


def test_without_the_sim_extra_the_commands_say_what_to_install(monkeypatch):
    import sys

    from typer.testing import CliRunner

    from mesh.cli import app

    monkeypatch.setitem(sys.modules, "yaml", None)  # as if PyYAML were not installed
    result = CliRunner().invoke(app, ["sim", "plan", "sim/scenarios/small.yaml", "--target-hit", "0.9"])
    assert result.exit_code == 2
    assert "needs yaml" in result.output and "mmesh[sim]" in result.output
