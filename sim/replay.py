"""Replay a recorded trace against a live mesh, to check the simulator's fidelity.

``mmesh sim replay TRACE --target host:port ... --metrics host:port ...``
sends each request of a trace (``sim.trace``) as a v2 ``ModelInfer`` to one
of the targets, time-compressed by ``speed`` and stopped after
``max_duration_s``, and records per request whether it was a hit.

Why requests go one at a time: hit or miss is read from the mesh's own
metrics, scraped before and after each request, and a delta can only be
pinned on a request if no other request is in flight.  (A trace faster than
the mesh answers therefore falls behind its schedule; the actual send times
are recorded, and those are what the simulator should be given.)

Why a miss is "the summed ``modelmesh_loadmodel_milliseconds_count`` of all
sidecars went up" rather than ``modelmesh_cache_miss_milliseconds_count``:
when a request is forwarded to the instance that loads the model, both the
receiver and the loader may observe the wait as a cache miss, while a load is
counted once, by the instance that performs it.  With copy scaling off and
one request in flight, a load during a request is that request's load.

Models must already be registered (the command does not register anything:
a mesh's registry is the operator's, and the replay should not change it).
Input tensors come from each model's v2 metadata, fetched the first time the
model is used, *inside* that request's measurement window: a metadata call
may itself load the model, which then counts as that request's miss, as it
would have had the inference come first.

Targets are chosen like a Kubernetes Service spreads connections: round-robin
or a seeded random pick, decided up front, and recorded per request so the
simulator can be given the same receiving pods (``simulate_records``).
"""

from __future__ import annotations

import csv
import json
import random
import re
import time
import urllib.request
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import grpc
import numpy as np

from protos import grpc_predict_v2_pb2 as v2
from protos import grpc_predict_v2_pb2_grpc as v2_grpc
from sim.engine import HIT_FORWARDED, HIT_LOCAL, SimResult, simulate
from sim.testing import tiny_scenario
from sim.trace import RecordedTrace
from sim.workload import sequence_workload

__all__ = [
    "LOADS_METRIC",
    "LoadCounter",
    "ReplayRecord",
    "ReplayResult",
    "replay",
    "simulate_records",
    "spread",
    "write_records",
]

LOADS_METRIC = "modelmesh_loadmodel_milliseconds_count"
Spread = Literal["round-robin", "random"]
_ITEM_BYTES = {
    "BOOL": 1, "UINT8": 1, "INT8": 1, "UINT16": 2, "INT16": 2, "FP16": 2, "BF16": 2,
    "UINT32": 4, "INT32": 4, "FP32": 4, "UINT64": 8, "INT64": 8, "FP64": 8, "BYTES": 4,
}


@dataclass(frozen=True)
class ReplayRecord:
    """One request as sent: ``time_s`` is the actual send time since the start."""

    time_s: float
    trace_time_s: float
    model_id: str
    target: str
    target_index: int
    hit: bool
    latency_ms: float
    error: str = ""


@dataclass
class ReplayResult:
    records: list[ReplayRecord]
    targets: list[str]
    not_sent: int = 0  # requests past the duration bound

    @property
    def answered(self) -> list[ReplayRecord]:
        return [r for r in self.records if not r.error]

    @property
    def hit_ratio(self) -> float:
        answered = self.answered
        return sum(r.hit for r in answered) / len(answered) if answered else float("nan")


def spread(n: int, targets: int, how: Spread = "round-robin", seed: int = 0) -> list[int]:
    """The target index of each of ``n`` requests, decided before anything is sent."""
    if how == "round-robin":
        return [k % targets for k in range(n)]
    rng = random.Random(seed)
    return [rng.randrange(targets) for _ in range(n)]


class LoadCounter:
    """Sum of one Prometheus counter over several ``/metrics`` endpoints."""

    def __init__(self, endpoints: Sequence[str], metric: str = LOADS_METRIC, timeout_s: float = 5.0) -> None:
        self.urls = [e if e.startswith("http") else f"http://{e}/metrics" for e in endpoints]
        self._line = re.compile(rf"^{re.escape(metric)}(\{{[^}}]*\}})? (\S+)$", re.MULTILINE)
        self.timeout_s = timeout_s

    def __call__(self) -> float:
        total = 0.0
        for url in self.urls:
            text = urllib.request.urlopen(url, timeout=self.timeout_s).read().decode()
            total += sum(float(m.group(2)) for m in self._line.finditer(text))
        return total


class _Client:
    """v2 inference against one target, with zero-filled inputs built from metadata."""

    def __init__(self, target: str, timeout_s: float) -> None:
        self.channel = grpc.insecure_channel(target)
        self.stub = v2_grpc.GRPCInferenceServiceStub(self.channel)
        self.timeout_s = timeout_s

    def infer(self, model_id: str, inputs: dict[str, list[v2.ModelMetadataResponse.TensorMetadata]]) -> None:
        if model_id not in inputs:
            meta = self.stub.ModelMetadata(v2.ModelMetadataRequest(name=model_id), timeout=self.timeout_s)
            inputs[model_id] = list(meta.inputs)
        self.stub.ModelInfer(_request(model_id, inputs[model_id]), timeout=self.timeout_s)

    def close(self) -> None:
        self.channel.close()


def _request(model_id: str, inputs: Iterable[v2.ModelMetadataResponse.TensorMetadata]) -> v2.ModelInferRequest:
    """Zeros of each input's shape (a dynamic dimension becomes 1), as raw contents;
    a BYTES element in raw form is a 4-byte length, so zeros are empty strings."""
    request = v2.ModelInferRequest(model_name=model_id)
    for meta in inputs:
        shape = [d if d > 0 else 1 for d in meta.shape]
        request.inputs.add(name=meta.name, datatype=meta.datatype, shape=shape)
        count = int(np.prod(shape)) if shape else 1
        request.raw_input_contents.append(bytes(count * _ITEM_BYTES.get(meta.datatype, 4)))
    return request


def replay(
    trace: RecordedTrace,
    targets: Sequence[str],
    metrics: Sequence[str],
    *,
    speed: float = 1.0,
    max_duration_s: float = 300.0,
    how: Spread = "round-robin",
    seed: int = 0,
    settle_s: float = 0.0,
    timeout_s: float = 60.0,
    on_request: Callable[[ReplayRecord], None] | None = None,
) -> ReplayResult:
    """Send ``trace`` to ``targets`` one request at a time (see the module docstring).

    Request k is sent at ``trace time / speed`` after the start, or as soon as
    the previous one is answered if that is later; nothing is sent after
    ``max_duration_s``.  ``settle_s`` waits after each miss, so peers' views
    of the new copy (published at most every 0.1 s) catch up before the next
    request: a fast replay otherwise races the publisher, which the
    simulator, running on the recorded send times, models only roughly.
    """
    if not targets or not metrics:
        raise ValueError("replay needs at least one target and one metrics endpoint")
    if speed <= 0:
        raise ValueError("speed must be > 0")
    count_loads = LoadCounter(metrics)
    clients = [_Client(t, timeout_s) for t in targets]
    chosen = spread(len(trace), len(targets), how, seed)
    inputs: dict[str, list[v2.ModelMetadataResponse.TensorMetadata]] = {}
    records: list[ReplayRecord] = []
    result = ReplayResult(records, list(targets))
    times = trace.times_s.tolist()
    ids = trace.model_ids
    start = time.monotonic()
    loads = count_loads()
    try:
        for k, (t, m) in enumerate(zip(times, trace.model_index.tolist())):
            due = start + t / speed
            if due - start > max_duration_s or time.monotonic() - start > max_duration_s:
                result.not_sent = len(times) - k
                break
            time.sleep(max(0.0, due - time.monotonic()))
            before = loads  # copy scaling off, nothing loads between requests: one scrape per request
            sent = time.monotonic()
            error = ""
            try:
                clients[chosen[k]].infer(ids[m], inputs)
            except grpc.RpcError as exc:
                error = f"{exc.code().name}: {exc.details()}"
            latency_ms = (time.monotonic() - sent) * 1000.0
            loads = count_loads()
            hit = loads == before
            record = ReplayRecord(sent - start, t, ids[m], targets[chosen[k]], chosen[k], hit and not error, latency_ms, error)
            records.append(record)
            if on_request is not None:
                on_request(record)
            if not hit and settle_s:
                time.sleep(settle_s)
    finally:
        for client in clients:
            client.close()
    return result


def write_records(path: str | Path, records: Sequence[ReplayRecord]) -> None:
    """Per-request results: JSON lines for ``.jsonl``/``.ndjson``, else CSV.

    Both carry ``time_s`` and ``model_id``, so ``sim.trace.read_trace`` reads
    the output back as a trace of what was actually sent."""
    path = Path(path)
    rows = [asdict(r) for r in records]
    with path.open("w", newline="") as handle:
        if path.suffix.lower() in (".jsonl", ".ndjson"):
            handle.writelines(json.dumps(row) + "\n" for row in rows)
            return
        writer = csv.DictWriter(handle, fieldnames=[f for f in ReplayRecord.__dataclass_fields__])
        writer.writeheader()
        writer.writerows(rows)


@dataclass
class SimulatedReplay:
    result: SimResult
    hits: np.ndarray = field(repr=False)  # bool per request

    @property
    def hit_ratio(self) -> float:
        return float(self.hits.mean()) if len(self.hits) else float("nan")


def simulate_records(
    records: Sequence[ReplayRecord],
    sizes: dict[str, int],
    capacities: Sequence[int],
    *,
    load_ms: float = 20.0,
    **sections: object,
) -> SimulatedReplay:
    """The simulator on what a replay actually sent: the recorded send times,
    models and receiving pods (target index → pod index), copy scaling off
    as in a fidelity check.  Unanswered requests are left out."""
    sent = [r for r in records if not r.error]
    workload = sequence_workload([r.model_id for r in sent], [r.time_s * 1000.0 for r in sent], sizes)
    scenario = tiny_scenario(list(capacities), load_ms=load_ms, **sections)
    result = simulate(scenario, workload, receiving=[r.target_index for r in sent])
    codes = result.codes
    return SimulatedReplay(result, (codes == HIT_LOCAL) | (codes == HIT_FORWARDED))
