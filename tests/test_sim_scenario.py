"""Scenario validation, size/rate parsing and the trace reader."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from sim.scenario import ScenarioError, load_scenario, parse_scenario
from sim.trace import TraceError, read_trace, write_trace
from sim.units import parse_rate, parse_size
from sim.workload import load_workload

SCENARIOS = Path(__file__).resolve().parents[1] / "sim" / "scenarios"
BASE = {
    "pods": [{"count": 2, "memory": "1GiB"}],
    "models": [{"count": 10, "size": "100MiB"}],
    "traffic": {"rate": 10, "duration_s": 10},
}


def problems(**changes) -> str:
    doc = json.loads(json.dumps(BASE))
    for path, value in changes.items():
        target = doc
        *parents, key = path.split("__")
        for part in parents:
            target = target[int(part)] if part.isdigit() else target[part]
        target[key] = value
    with pytest.raises(ScenarioError) as info:
        parse_scenario(doc)
    return str(info.value)


def test_unknown_keys_are_named_with_where_and_what_is_allowed():
    message = problems(pods__0__memroy="2GiB")
    assert "unknown key 'memroy' in pods[0]" in message
    assert "allowed here: count, memory, zone, labels" in message
    assert "unknown key 'burst' in traffic" in problems(traffic__burst=1)
    assert "unknown key 'sigmaa' in models[0].size" in problems(models__0__size={"median": "1MiB", "sigmaa": 1})
    assert "unknown key 'intervall' in mesh.copies" in problems(mesh={"copies": {"intervall": 3}})
    assert "unknown key 'nope' in the top level" in problems(nope=1)


def test_bad_values_are_explained():
    assert "models[0].size: size must not be negative" in problems(models__0__size="-5MiB")
    assert "not a size" in problems(pods__0__memory="lots")
    assert "traffic.zipf_alpha" in problems(traffic__zipf_alpha=0) and "greater than 0" in problems(traffic__zipf_alpha=-1)
    assert "traffic.rate" in problems(traffic__rate=0)
    assert "traffic.duration_s" in problems(traffic__duration_s=-3)
    assert "exactly one of 'traffic'" in problems(trace={"path": "x.csv"})
    assert "only 2 pods" in problems(failures=[{"at_s": 1, "pod": 5}])
    assert "'bursty' settings given but pattern is 'poisson'" in problems(traffic__bursty={"on_s": 1})


def test_a_model_larger_than_every_pod_is_an_error():
    doc = {**BASE, "models": [{"count": 3, "size": "2GiB"}]}
    with pytest.raises(ScenarioError, match="larger than every pod"):
        load_workload(parse_scenario(doc))


def test_the_example_scenarios_are_valid(tmp_path):
    names = sorted(p.stem for p in SCENARIOS.glob("*.yaml"))
    assert {"small", "zipf-1k-models", "diurnal", "trace-replay"} <= set(names)
    for path in SCENARIOS.glob("*.yaml"):
        scenario = load_scenario(path)
        assert scenario.name == path.stem
        if scenario.trace is not None:
            assert Path(scenario.trace.path).is_file()  # relative to the scenario file
            assert len(load_workload(scenario)) > 1000


def test_a_missing_or_broken_scenario_file_says_so(tmp_path):
    with pytest.raises(ScenarioError, match="cannot read"):
        load_scenario(tmp_path / "absent.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("pods: [\n")
    with pytest.raises(ScenarioError, match="not valid YAML"):
        load_scenario(bad)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("512MiB", 512 << 20), ("4GiB", 4 << 30), ("1.5G", 1_500_000_000), ("1000", 1000), ("2 gib", 2 << 30), (7, 7)],
)
def test_sizes(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["-1GiB", "GiB", "4XB", "", "1e3"])
def test_bad_sizes(text):
    with pytest.raises(ValueError):
        parse_size(text)


def test_rates():
    assert parse_rate("5/s") == 5 and parse_rate("120/min") == 2 and parse_rate(2.5) == 2.5
    with pytest.raises(ValueError):
        parse_rate("fast")


def test_csv_trace_round_trip_and_time_units(tmp_path):
    path = tmp_path / "t.csv"
    write_trace(path, [5.0, 5.5, 7.25], ["a", "b", "a"], {"a": 10, "b": 20})
    trace = read_trace(path)
    assert trace.times_s.tolist() == [0.0, 0.5, 2.25]
    assert trace.model_ids == ["a", "b"] and trace.model_index.tolist() == [0, 1, 0]
    assert trace.sizes == {"a": 10, "b": 20}
    ms = tmp_path / "ms.csv"
    ms.write_text("time_ms,model\n2000,x\n1000,y\n")
    trace = read_trace(ms)
    assert trace.times_s.tolist() == [0.0, 1.0]
    assert [trace.model_ids[k] for k in trace.model_index] == ["y", "x"]  # sorted by time
    relative_ms = tmp_path / "rel.csv"
    relative_ms.write_text("time,model_id\n0,x\n1500,x\n")
    assert read_trace(relative_ms, time_unit="ms").times_s.tolist() == [0.0, 1.5]
    with pytest.raises(TraceError, match="needs a time column"):
        (tmp_path / "no.csv").write_text("when,what\n1,2\n")
        read_trace(tmp_path / "no.csv")


def test_a_mesh_json_request_log_is_a_trace(tmp_path):
    log = tmp_path / "requests.log"
    lines = [
        {"ts": "2026-01-01T00:00:00.000Z", "level": "info", "model_id": "m1", "latency_ms": 3},
        "not json at all",
        {"ts": "2026-01-01T00:00:01.500+00:00", "model_id": "m2"},
        {"msg": "sidecar started"},
        {"ts": "2026-01-01T00:00:02Z", "modelId": "m1", "size_bytes": 123},
    ]
    log.write_text("\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n")
    trace = read_trace(log)
    assert trace.times_s.tolist() == [0.0, 1.5, 2.0]
    assert trace.model_ids == ["m1", "m2"] and trace.sizes == {"m1": 123}
    assert trace.skipped == 2
    epoch_ms = tmp_path / "epoch.jsonl"
    epoch_ms.write_text("\n".join(json.dumps({"time": 1_767_225_600_000 + d, "model_id": "m"}) for d in (0, 250)))
    assert read_trace(epoch_ms).times_s.tolist() == [0.0, 0.25]  # auto: epoch milliseconds
    assert len(read_trace(epoch_ms, limit=1)) == 1


def test_in_a_mesh_log_only_request_events_are_requests(tmp_path):
    """mesh/logs.py's JSON lines: load/evict lines carry the request's model_id too."""
    lines = [
        {"timestamp": "2026-01-01T00:00:00.000+00:00", "event": "load", "model_id": "m1", "size_bytes": 5000},
        {"timestamp": "2026-01-01T00:00:00.400+00:00", "message": "loaded", "model_id": "m1"},
        {"timestamp": "2026-01-01T00:00:00.500+00:00", "event": "request", "model_id": "m1", "code": "OK"},
        {"timestamp": "2026-01-01T00:00:01.000+00:00", "event": "evict", "model_id": "m2", "size_bytes": 7},
        {"timestamp": "2026-01-01T00:00:01.500+00:00", "event": "request", "model_id": "m2", "code": "OK"},
    ]
    log = tmp_path / "mesh.jsonl"
    log.write_text("\n".join(json.dumps(x) for x in lines))
    trace = read_trace(log)
    assert trace.times_s.tolist() == [0.0, 1.0] and trace.model_ids == ["m1", "m2"]
    assert trace.sizes == {"m1": 5000, "m2": 7} and trace.skipped == 3


def test_trace_scenario_takes_sizes_from_the_trace_and_defaults_otherwise(tmp_path):
    write_trace(tmp_path / "t.csv", np.arange(50) * 0.1, [f"m{k % 5}" for k in range(50)], None)
    (tmp_path / "s.yaml").write_text(
        "pods: [{count: 2, memory: 1GiB}]\ntrace: {path: t.csv, default_size: 64MiB}\n"
    )
    workload = load_workload(load_scenario(tmp_path / "s.yaml"))
    assert len(workload) == 50 and set(workload.population.sizes.tolist()) == {64 << 20}
    assert workload.duration_s == pytest.approx(4.9)
