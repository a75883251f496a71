"""Shared fixtures: a real etcd for the session, generated ONNX models, and
sidecars running in a background thread (their own event loop), so tests
drive them with ordinary blocking clients such as tritonclient.

Each sidecar gets its own etcd key prefix, so tests share one etcd without
seeing each other's models.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any, Coroutine, TypeVar

import pytest

from mesh.adapter_process import AdapterProcess
from mesh.etcd_process import EtcdProcess
from mesh.examples import make_add_model, make_dense_model, make_string_model
from mesh.settings import MeshSettings
from mesh.sidecar import Sidecar
from tests.puller_servers import MotoS3

T = TypeVar("T")
_ids = itertools.count()


@pytest.fixture(scope="session")
def etcd() -> Iterator[EtcdProcess]:
    with EtcdProcess() as server:
        yield server


@pytest.fixture(scope="session")
def moto() -> Iterator[MotoS3]:
    """moto's S3 in server mode on loopback, shared by every S3 test."""
    werkzeug = logging.getLogger("werkzeug")
    level = werkzeug.level
    werkzeug.setLevel(logging.ERROR)  # moto's request log
    server = MotoS3().start()
    try:
        yield server
    finally:
        server.stop()
        werkzeug.setLevel(level)


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """add (FP32 [b,4]), echo (BYTES), and five dense models of equal size."""
    root = tmp_path_factory.mktemp("models")
    make_add_model(root / "add" / "model.onnx")
    make_string_model(root / "echo" / "model.onnx")
    for i in range(5):
        make_dense_model(root / f"dense-{i}" / "model.onnx", width=64, layers=4, seed=i)
    make_dense_model(root / "big" / "model.onnx", width=512, layers=8, seed=9)  # 8 MiB: tests halve it for a capacity well above load noise
    (root / "not-onnx").mkdir()
    (root / "not-onnx" / "model.onnx").write_bytes(b"this is not an onnx model\n" * 10)
    return root


class LoopThread:
    """An asyncio loop on a daemon thread; `run` executes a coroutine there."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="sidecar-loop", daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 60) -> T:
        future: Future[T] = asyncio.run_coroutine_threadsafe(coro, self.loop)
        return future.result(timeout)

    def close(self) -> None:
        async def cancel_leftovers() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        self.run(cancel_leftovers(), timeout=10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)
        self.loop.close()


@pytest.fixture
def loop_thread() -> Iterator[LoopThread]:
    lt = LoopThread()
    yield lt
    lt.close()


@pytest.fixture(params=["inprocess", "uds"])
def runtime_mode(request: pytest.FixtureRequest) -> str:
    """Both runtime modes must pass the same tests."""
    return request.param


@pytest.fixture
def start_sidecar(
    etcd: EtcdProcess, loop_thread: LoopThread, tmp_path: Path
) -> Iterator[Callable[..., Sidecar]]:
    """start_sidecar(mode="inprocess", capacity_bytes=0, **settings) -> a started Sidecar;
    everything started is stopped at teardown."""
    started: list[Sidecar] = []
    adapters: list[AdapterProcess] = []
    prefix = f"test-{uuid.uuid4().hex[:8]}"

    def start(mode: str = "inprocess", capacity_bytes: int = 0, **overrides: Any) -> Sidecar:
        runtime = "inprocess"
        if mode == "uds":
            adapter = AdapterProcess(tmp_path / f"rt-{next(_ids)}.sock", capacity_bytes=capacity_bytes, device="cpu")
            adapters.append(adapter.start())
            runtime = adapter.target
        settings = MeshSettings(
            instance_id=overrides.pop("instance_id", f"inst-{next(_ids)}"),
            grpc_port=0,
            metrics_port=overrides.pop("metrics_port", 0),
            rest_port=overrides.pop("rest_port", 0),  # tests that want them pass free ports
            probe_port=overrides.pop("probe_port", 0),
            etcd_endpoints=overrides.pop("etcd_endpoints", etcd.endpoint),
            kv_prefix=overrides.pop("kv_prefix", prefix),
            runtime=overrides.pop("runtime", runtime),
            runtime_capacity_bytes=capacity_bytes,
            device="cpu",
            **overrides,
        )
        sidecar = loop_thread.run(Sidecar(settings).start())
        started.append(sidecar)
        return sidecar

    yield start
    for sidecar in reversed(started):
        loop_thread.run(sidecar.stop(grace_s=0.5))
    for adapter in adapters:
        adapter.stop()
