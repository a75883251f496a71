"""Fidelity: the same trace through a live 3-sidecar mesh (``sim.replay``) and
through the simulator must give hit ratios within 5 points.

The mesh is set up so the simulator's model of it is exact in everything but
timing: 20 equal models, room for 3 per sidecar (9 of 20 resident), copy
scaling off, requests one at a time, and the simulator given the replay's
actual send times and receiving sidecars.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

from mesh.etcd_process import free_port
from mesh.examples import make_dense_model
from runtime_adapter.runtimes.onnx import SESSION_OVERHEAD_BYTES
from sim.replay import replay, simulate_records, write_records
from sim.scenario import Traffic
from sim.trace import read_trace, write_trace
from sim.workload import arrival_times, zipf_models
from tests.helpers import register, wait_for

MODELS = 20
SLOTS = 3  # models per sidecar
REQUESTS = 400
TOLERANCE = 0.05


@pytest.fixture(scope="module")
def dense_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("fidelity-models")
    for k in range(MODELS):
        make_dense_model(root / f"f{k:02d}" / "model.onnx", width=64, layers=4, seed=k)
    return root


def zipf_trace(path: Path, ids: list[str], seed: int = 11) -> Path:
    """About REQUESTS requests, Poisson at 40/s, Zipf(1.0) over ``ids``."""
    rng = np.random.default_rng(seed)
    times = arrival_times(Traffic(rate=40, duration_s=REQUESTS / 40), rng)
    models = zipf_models(times, len(ids), 1.0, rng)
    write_trace(path, times.tolist(), [ids[k] for k in models.tolist()])
    return path


@pytest.mark.timeout(240)  # ~12 s on a quiet machine; bounded generously for a loaded CI
def test_live_and_simulated_hit_ratios_agree(start_sidecar, dense_models, tmp_path):
    ids = sorted(p.name for p in dense_models.iterdir())
    # the adapter floors a model's measured size at file + session overhead;
    # these models are small enough to sit on the floor, and 3.5 slots leave
    # room for a few percent of measurement noise without a fourth model fitting
    size = max((dense_models / m / "model.onnx").stat().st_size for m in ids) + SESSION_OVERHEAD_BYTES
    capacity = int(size * (SLOTS + 0.5))
    ports = [free_port() for _ in range(3)]
    no_copies = {"scale_up_rps": 1e9, "scale_up_in_flight": 10**9}
    sidecars = [start_sidecar(capacity_bytes=capacity, metrics_port=p, **no_copies) for p in ports]
    wait_for(lambda: all(len(s.instances) == 3 for s in sidecars), what="instances to see each other")
    for m in ids:
        register(sidecars[0].address, m, dense_models / m)

    trace = read_trace(zipf_trace(tmp_path / "trace.csv", ids), time_unit="s")
    started = time.monotonic()
    live = replay(trace, [s.address for s in sidecars], [f"127.0.0.1:{p}" for p in ports],
                  speed=4.0, max_duration_s=120.0, how="random", seed=3)
    elapsed = time.monotonic() - started
    write_records(tmp_path / "replay.csv", live.records)

    assert not [r.error for r in live.records if r.error]
    assert live.not_sent == 0
    for s in sidecars:
        assert s.loader.lru.used_bytes <= capacity
        assert len(s.loader.copies) <= SLOTS
    measured = {c.size_bytes for s in sidecars for c in s.loader.copies.values()}
    assert all(size * 0.9 <= b < capacity / SLOTS for b in measured), (size, measured)

    misses_ms = [r.latency_ms for r in live.records if not r.hit]
    simulated = simulate_records(live.records, dict.fromkeys(ids, size), [capacity] * 3,
                                 load_ms=float(np.median(misses_ms)))
    gap = abs(live.hit_ratio - simulated.hit_ratio)
    print(f"fidelity: live {live.hit_ratio:.4f} vs simulated {simulated.hit_ratio:.4f} "
          f"(gap {gap:.4f}) over {len(live.records)} requests, replay {elapsed:.1f} s")
    assert 0 < live.hit_ratio < 1 and 0 < simulated.hit_ratio < 1
    assert gap <= TOLERANCE

    # the per-request file reads back as a trace of what was sent
    sent = read_trace(tmp_path / "replay.csv", time_unit="s")
    assert len(sent) == len(live.records)


def test_replay_command_records_hits_and_misses(start_sidecar, dense_models, tmp_path):
    """`mmesh sim replay` on one sidecar with room for two models: A A B A C B →
    C evicts B (A was used since), so B misses again."""
    from typer.testing import CliRunner

    from mesh.cli import app

    size = (dense_models / "f00" / "model.onnx").stat().st_size + SESSION_OVERHEAD_BYTES
    port = free_port()
    sidecar = start_sidecar(capacity_bytes=int(size * 2.5), metrics_port=port)
    for m in ("f00", "f01", "f02"):
        register(sidecar.address, m, dense_models / m)
    trace = tmp_path / "abc.csv"
    write_trace(trace, [0.0, 0.1, 0.2, 0.3, 0.4, 0.5], ["f00", "f00", "f01", "f00", "f02", "f01"])
    out = tmp_path / "replay.jsonl"
    result = CliRunner().invoke(app, ["sim", "replay", str(trace), "--target", sidecar.address,
                                      "--metrics", f"127.0.0.1:{port}", "--speed", "10", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "hit ratio 0.3333" in result.output
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["hit"] for r in rows] == [False, True, False, True, False, False]
    assert {r["target"] for r in rows} == {sidecar.address}
