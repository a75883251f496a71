"""Measured model memory (runtime_adapter.memory, runtime_adapter.gpu): the
GPU reading and selection logic against a fake NVML module (no GPU here), the
measured section itself, and real ONNX models of known weight size.

No test asserts a time; memory assertions use bands, since RSS is noisy."""

from __future__ import annotations

import gc
import os
import sys
import threading
import time
import types
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from mesh.examples import make_dense_model
from protos import model_runtime_pb2 as spi
from runtime_adapter import memory
from runtime_adapter.factory import build_repository
from runtime_adapter.gpu import (
    DeviceMemory,
    cuda_to_nvml_indices,
    gpu_snapshot,
    memory_delta,
    visible_gpu_count,
    visible_nvml_indices,
)
from runtime_adapter.memory import Footprint, measure_load
from runtime_adapter.runtimes.onnx import PRIMING_MODEL, SESSION_OVERHEAD_BYTES, OnnxRuntime

MiB = 1 << 20
PID = 4242


# --------------------------------------------------------------------------- a fake pynvml


@dataclass
class FakeDevice:
    uuid: str
    used: int = 0
    processes: dict[int, int | None] = field(default_factory=dict)  # pid -> usedGpuMemory


class FakeNvml(types.ModuleType):
    """The pynvml calls gpu.py makes, over FakeDevices; `errors` makes a named
    call raise, `calls` records them (handles are the device indices)."""

    def __init__(self, *devices: FakeDevice, errors: dict[str, Exception] | None = None) -> None:
        super().__init__("pynvml")
        self.devices = list(devices)
        self.errors = errors or {}
        self.calls: list[str] = []

    def _call(self, name: str) -> None:
        self.calls.append(name)
        if name in self.errors:
            raise self.errors[name]

    def nvmlInit(self) -> None:
        self._call("init")

    def nvmlShutdown(self) -> None:
        self._call("shutdown")

    def nvmlDeviceGetCount(self) -> int:
        self._call("count")
        return len(self.devices)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        self._call(f"handle{index}")
        return index

    def nvmlDeviceGetUUID(self, handle: int) -> bytes:
        self._call("uuid")
        return self.devices[handle].uuid.encode()  # older pynvml returns bytes

    def nvmlDeviceGetComputeRunningProcesses(self, handle: int) -> list[SimpleNamespace]:
        self._call("processes")
        procs = self.devices[handle].processes
        return [SimpleNamespace(pid=pid, usedGpuMemory=used) for pid, used in procs.items()]

    def nvmlDeviceGetMemoryInfo(self, handle: int) -> SimpleNamespace:
        self._call("memory")
        return SimpleNamespace(used=self.devices[handle].used, total=80 << 30)


def two_gpus() -> FakeNvml:
    return FakeNvml(
        FakeDevice("GPU-aaaa1111", used=1 * MiB, processes={1: 1 * MiB}),
        FakeDevice("GPU-bbbb2222", used=2 * MiB, processes={}),
    )


def snapshot(nvml: FakeNvml, ordinals: list[int], visible: str | None = None) -> dict[int, DeviceMemory]:
    # visible=None in gpu_snapshot means "read the environment"; tests pass it explicitly
    return gpu_snapshot(ordinals, nvml=nvml, pid=PID, visible=visible)


# --------------------------------------------------------------------------- CUDA_VISIBLE_DEVICES


@pytest.mark.parametrize(
    ("visible", "expected"),
    [
        (None, [0, 1, 2]),  # unset: every device
        ("", []),
        ("-1", []),
        ("2,0", [2, 0]),  # CUDA ordinal order, not NVML's
        (" 1 ", [1]),
        ("0,7,1", [0]),  # CUDA stops at the first entry naming no device
        ("1,1,2", [1]),  # ...or repeating one
        ("GPU-bbbb", [1]),  # a unique UUID prefix
        ("GPU-cccc3333,GPU-aaaa", [2, 0]),
        ("GPU-", []),  # ambiguous prefix
        ("GPU-ffff", []),
        ("MIG-1234", []),  # MIG instances are not resolved
    ],
)
def test_visible_nvml_indices(visible: str | None, expected: list[int]) -> None:
    uuids = ["GPU-aaaa1111", "GPU-bbbb2222", "GPU-cccc3333"]
    assert visible_nvml_indices(visible, 3, uuids) == expected


def test_visible_nvml_indices_uuid_without_uuid_list_ends_the_list() -> None:
    assert visible_nvml_indices("0,GPU-aaaa", 2) == [0]


def test_cuda_to_nvml_indices() -> None:
    assert cuda_to_nvml_indices([0], [2, 3]) == [2]
    assert cuda_to_nvml_indices([1], [2, 3]) == [3]
    assert cuda_to_nvml_indices([0, 1], [3, 2]) == [2, 3]
    assert cuda_to_nvml_indices([5, -1], [2]) == []  # not visible to this process
    assert cuda_to_nvml_indices([0], []) == []


def test_visible_gpu_count_with_uuids(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = two_gpus()
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-bbbb2222")
    assert visible_gpu_count() == 1
    assert "uuid" in fake.calls and fake.calls[-1] == "shutdown"


# --------------------------------------------------------------------------- readings and deltas


def test_snapshot_reads_only_the_devices_the_model_uses() -> None:
    fake = two_gpus()
    fake.devices[1].processes = {PID: 3 * MiB}
    readings = snapshot(fake, [0], visible="1")  # cuda:0 is NVML device 1
    assert readings == {1: DeviceMemory(process_bytes=3 * MiB, listed=True, device_bytes=2 * MiB)}
    assert "handle0" not in fake.calls
    assert fake.calls[0] == "init" and fake.calls[-1] == "shutdown"


def test_snapshot_with_nothing_to_read_touches_no_nvml() -> None:
    fake = two_gpus()
    assert snapshot(fake, []) == {}  # the model is on the CPU
    assert snapshot(fake, [0], visible="") == {}  # CUDA shows no device
    assert fake.calls == ["init", "count", "shutdown"]  # only the second looked


def test_per_process_delta_ignores_other_processes() -> None:
    fake = two_gpus()
    fake.devices[0].processes[PID] = 100 * MiB
    before = snapshot(fake, [0])
    fake.devices[0].processes[PID] = 300 * MiB
    fake.devices[0].used += 900 * MiB  # 200 ours, 700 another process's
    assert memory_delta(before, snapshot(fake, [0])) == 200 * MiB


def test_first_context_counts_from_zero() -> None:
    """Not listed before the load (no CUDA context yet) is a known 0."""
    fake = two_gpus()
    before = snapshot(fake, [0])
    assert before[0].listed is False and before[0].process_bytes == 0
    fake.devices[0].processes[PID] = 50 * MiB
    fake.devices[0].used += 50 * MiB
    assert memory_delta(before, snapshot(fake, [0])) == 50 * MiB


def test_pid_never_listed_falls_back_to_device_delta() -> None:
    """In a container with its own PID namespace NVML lists host pids only."""
    fake = two_gpus()
    before = snapshot(fake, [0, 1])
    fake.devices[0].processes[99999] = 40 * MiB  # our usage, under the host pid
    fake.devices[0].used += 40 * MiB
    assert memory_delta(before, snapshot(fake, [0, 1])) == 40 * MiB


@pytest.mark.parametrize("failure", ["unavailable", "raises"])
def test_per_process_usage_unknown_falls_back_to_device_delta(failure: str) -> None:
    fake = two_gpus()
    if failure == "unavailable":
        fake.devices[0].processes[PID] = None  # pynvml's NVML_VALUE_NOT_AVAILABLE
    else:
        fake.errors["processes"] = RuntimeError("NVML_ERROR_NOT_SUPPORTED")
    before = snapshot(fake, [0])
    fake.devices[0].used += 64 * MiB
    after = snapshot(fake, [0])
    assert after[0].process_bytes is None
    assert memory_delta(before, after) == 64 * MiB


def test_unknown_before_reading_does_not_charge_the_whole_process() -> None:
    """A failed before-reading must not make the process's total look like growth."""
    fake = two_gpus()
    fake.devices[0].processes[PID] = 5000 * MiB  # models loaded earlier
    fake.errors["processes"] = RuntimeError("transient")
    before = snapshot(fake, [0])
    del fake.errors["processes"]
    fake.devices[0].processes[PID] += 10 * MiB
    fake.devices[0].used += 10 * MiB
    assert memory_delta(before, snapshot(fake, [0])) == 10 * MiB  # device-wide instead


@pytest.mark.parametrize(
    "errors",
    [
        {"init": RuntimeError("NVML Shared Library Not Found")},
        {"count": RuntimeError("driver gone")},
        {"handle0": RuntimeError("GPU is lost")},
        {"processes": RuntimeError("x"), "memory": RuntimeError("y")},
    ],
    ids=["init", "count", "handle", "all-readings"],
)
def test_nvml_errors_read_as_no_growth(errors: dict[str, Exception]) -> None:
    fake = two_gpus()
    before = snapshot(fake, [0])
    fake.errors.update(errors)
    fake.devices[0].processes[PID] = 10 * MiB
    fake.devices[0].used += 10 * MiB
    assert memory_delta(before, snapshot(fake, [0])) == 0


def test_delta_never_negative_and_ignores_unmatched_devices() -> None:
    fake = two_gpus()
    fake.devices[0].processes[PID] = 10 * MiB
    before = snapshot(fake, [0])
    fake.devices[0].processes[PID] = 2 * MiB  # something else freed memory meanwhile
    assert memory_delta(before, snapshot(fake, [0])) == 0
    assert memory_delta({}, snapshot(fake, [0])) == 0


def test_without_pynvml_there_is_nothing_to_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import raises ImportError
    assert gpu_snapshot([0]) == {}


# --------------------------------------------------------------------------- the measured section


def test_footprint_reports_the_larger_of_measured_and_floor() -> None:
    assert Footprint(host_bytes=10, gpu_bytes=5, floor_bytes=12).size_bytes == 15
    assert Footprint(host_bytes=3, gpu_bytes=0, floor_bytes=12).size_bytes == 12


def test_measure_counts_what_the_load_keeps() -> None:
    def load() -> np.ndarray:
        return np.ones(32 * MiB // 8, dtype=np.float64)  # 32 MiB, touched

    array, footprint = measure_load(load, floor_bytes=0)
    assert array.nbytes == 32 * MiB
    assert 0.9 * 32 * MiB <= footprint.host_bytes < 2 * 32 * MiB
    assert footprint.gpu_bytes == 0
    assert footprint.size_bytes == footprint.host_bytes


def test_measure_does_not_count_transient_buffers() -> None:
    """What the load frees before returning is not the model's (malloc_trim)."""

    def load() -> np.ndarray:
        scratch = np.ones(48 * MiB // 8)
        kept = scratch[: MiB // 8].copy()
        del scratch
        return kept

    _, footprint = measure_load(load, floor_bytes=0)
    assert footprint.host_bytes < 16 * MiB


def test_floor_stands_when_little_is_measured() -> None:
    _, footprint = measure_load(lambda: None, floor_bytes=5 * MiB)
    assert footprint.size_bytes == 5 * MiB


def test_prepare_runs_outside_the_measurement() -> None:
    kept: list[np.ndarray] = []
    order: list[str] = []

    def prepare() -> None:
        order.append("prepare")
        kept.append(np.ones(24 * MiB // 8))  # one-time runtime state

    def load() -> None:
        order.append("load")

    _, footprint = measure_load(load, floor_bytes=0, prepare=prepare)
    assert order == ["prepare", "load"]
    assert footprint.host_bytes < 8 * MiB


def test_measured_sections_never_overlap() -> None:
    active, peak = 0, 0
    guard = threading.Lock()

    def load() -> None:
        nonlocal active, peak
        with guard:
            active += 1
            peak = max(peak, active)
        time.sleep(0.02)
        with guard:
            active -= 1

    threads = [threading.Thread(target=measure_load, args=(load,), kwargs={"floor_bytes": 0}) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert peak == 1


def test_failed_load_releases_the_lock_and_restores_gc() -> None:
    assert gc.isenabled()

    def load() -> None:
        assert not gc.isenabled()  # paused inside the window
        raise ValueError("bad model")

    with pytest.raises(ValueError, match="bad model"):
        measure_load(load, floor_bytes=0)
    assert gc.isenabled()
    assert not memory.LOAD_MEASUREMENT_LOCK.locked()


def test_measure_adds_gpu_growth(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = two_gpus()
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)

    def load() -> str:  # what a CUDA load looks like to NVML
        fake.devices[1].processes[os.getpid()] = 300 * MiB
        fake.devices[1].used += 300 * MiB
        return "model"

    _, footprint = measure_load(load, floor_bytes=1 * MiB, gpu_ordinals=[1])
    assert footprint.gpu_bytes == 300 * MiB
    assert footprint.size_bytes == footprint.host_bytes + 300 * MiB


@pytest.mark.parametrize("setup", ["no-pynvml", "init-error", "no-devices", "hidden"])
def test_measure_degrades_to_host_only(monkeypatch: pytest.MonkeyPatch, setup: str) -> None:
    fake = two_gpus()
    if setup == "no-pynvml":
        monkeypatch.setitem(sys.modules, "pynvml", None)
    else:
        monkeypatch.setitem(sys.modules, "pynvml", fake)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    if setup == "init-error":
        fake.errors["init"] = RuntimeError("NVML Shared Library Not Found")
    elif setup == "no-devices":
        fake.devices.clear()
    elif setup == "hidden":
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")

    def load() -> np.ndarray:
        for device in fake.devices:
            device.used += 100 * MiB
        return np.ones(8 * MiB // 8)

    _, footprint = measure_load(load, floor_bytes=0, gpu_ordinals=[0])
    assert footprint.gpu_bytes == 0
    assert footprint.size_bytes == footprint.host_bytes >= 0.9 * 8 * MiB


# --------------------------------------------------------------------------- real ONNX models

WIDTH, LAYERS = 1024, 4  # 4 × 1024² FP32 = 16 MiB of weights
WEIGHT_BYTES = WIDTH * WIDTH * 4 * LAYERS


@pytest.fixture(scope="module")
def big_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_dense_model(tmp_path_factory.mktemp("big-onnx") / "model.onnx", width=WIDTH, layers=LAYERS)


@pytest.fixture(scope="module")
def external_data_onnx(big_onnx: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same model with its weights in `weights.bin` beside a tiny model.onnx:
    the file-size estimate misses them, the measurement does not."""
    import onnx

    root = tmp_path_factory.mktemp("external-onnx")
    model = onnx.load(str(big_onnx))
    onnx.save_model(
        model, str(root / "model.onnx"), save_as_external_data=True,
        all_tensors_to_one_file=True, location="weights.bin", size_threshold=1024,
    )
    assert (root / "model.onnx").stat().st_size < 64 * 1024
    return root


def test_priming_model_is_the_documented_three_node_model() -> None:
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.eye(2, dtype=np.float32), name="w")
    bias = numpy_helper.from_array(np.zeros((2,), np.float32), name="b")
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "w"], ["m"]),
            helper.make_node("Add", ["m", "b"], ["a"]),
            helper.make_node("Relu", ["a"], ["y"]),
        ],
        "prime",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 2])],
        initializer=[weight, bias],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    assert model.SerializeToString() == PRIMING_MODEL


def load_size(repo, model_id: str, path: Path) -> int:
    request = spi.LoadModelRequest(modelId=model_id, modelType="onnx", modelPath=str(path))
    return repo.load(request).sizeInBytes


def test_big_onnx_model_reports_a_size_in_band(big_onnx: Path) -> None:
    repo = build_repository(capacity_bytes=1 << 30, device="cpu")
    size = load_size(repo, "big", big_onnx.parent)
    assert WEIGHT_BYTES <= size < 4 * WEIGHT_BYTES
    assert repo.model_size("big") == size


def test_big_onnx_measurement_itself_is_in_band_and_repeatable(big_onnx: Path) -> None:
    """The raw RSS growth (not just the floor) tracks the weights, for two
    loads held at once and for a load right after an unload."""
    runtime = OnnxRuntime(device="cpu")
    first = runtime.load("a", big_onnx)
    second = runtime.load("b", big_onnx)
    readings = [m.footprint.host_bytes for m in (first, second) if m.footprint]
    first.close()
    second.close()
    third = runtime.load("c", big_onnx)  # freed pages are there to be reused
    assert third.footprint is not None
    readings.append(third.footprint.host_bytes)
    for reading in readings:
        assert 0.9 * WEIGHT_BYTES <= reading < 4 * WEIGHT_BYTES, readings
    assert max(readings) <= 1.25 * min(readings), readings
    assert third.size_bytes >= WEIGHT_BYTES + SESSION_OVERHEAD_BYTES


def test_external_weights_are_measured_not_guessed(external_data_onnx: Path) -> None:
    repo = build_repository(capacity_bytes=1 << 30, device="cpu")
    runtime = OnnxRuntime()
    predicted = runtime.predict_size(external_data_onnx)
    assert predicted < WEIGHT_BYTES / 10  # the estimate only sees model.onnx
    sizes = [load_size(repo, f"ext-{i}", external_data_onnx) for i in range(2)]
    for size in sizes:
        assert 0.9 * WEIGHT_BYTES <= size < 4 * WEIGHT_BYTES, sizes
    assert max(sizes) <= 1.25 * min(sizes), sizes
