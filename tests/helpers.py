"""Small blocking helpers the end-to-end tests share: register models and
read status through the management API, and scrape Prometheus metrics."""

from __future__ import annotations

import re
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc

from protos import model_mesh_pb2 as mm
from protos import model_mesh_pb2_grpc as mm_grpc


def management(address: str) -> mm_grpc.ModelMeshStub:
    return mm_grpc.ModelMeshStub(grpc.insecure_channel(address))


def register(address: str, model_id: str, path: Path | str, type: str = "onnx", **flags: bool) -> mm.ModelStatusInfo:
    request = mm.RegisterModelRequest(modelId=model_id, modelInfo=mm.ModelInfo(type=type, path=str(path)), **flags)
    return management(address).registerModel(request, timeout=60)


def status(address: str, model_id: str) -> mm.ModelStatusInfo:
    return management(address).getModelStatus(mm.GetStatusRequest(modelId=model_id), timeout=10)


def status_name(address: str, model_id: str) -> str:
    return mm.ModelStatusInfo.ModelStatus.Name(status(address, model_id).status)


def metric(port: int, name: str) -> float:
    """Sum of every sample of `name` (all label sets) on a /metrics endpoint."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    total = 0.0
    for line in text.splitlines():
        match = re.match(rf"^{re.escape(name)}(\{{[^}}]*\}})? (\S+)$", line)
        if match:
            total += float(match.group(2))
    return total


def answers_ok(url: str) -> bool:
    """Whether a GET of `url` answers 200 now (a process starting up may refuse it)."""
    import httpx

    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def wait_for(predicate: Callable[[], object], timeout_s: float = 10.0, what: str = "condition") -> float:
    """Poll until `predicate()` holds (bounded); returns the seconds it took."""
    started = time.monotonic()
    while not predicate():
        assert time.monotonic() - started < timeout_s, f"timed out waiting for {what}"
        time.sleep(0.05)
    return time.monotonic() - started


@contextmanager
def loads_held(sidecar, loop_thread) -> Iterator[None]:
    """Hold every load slot of `sidecar`, so loads queue until the block ends:
    tests make request overlap certain instead of a matter of timing."""
    slots = sidecar.loader.config.max_loading_concurrency
    for _ in range(slots):
        loop_thread.run(sidecar.loader._load_slots.acquire())
    try:
        yield
    finally:
        for _ in range(slots):
            loop_thread.loop.call_soon_threadsafe(sidecar.loader._load_slots.release)
