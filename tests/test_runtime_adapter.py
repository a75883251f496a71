"""Tests of the runtime adapter on its own (no mesh): provider selection, GPU
discovery and default capacity without a GPU, the model repository behind
both front doors, and the adapter's own gRPC server as a child process."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
import types
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np
import psutil
import pytest

from mesh.adapter_process import AdapterProcess
from mesh.examples import make_add_model, make_string_model
from protos import grpc_predict_v2_pb2 as v2
from protos import grpc_predict_v2_pb2_grpc as v2_grpc
from protos import model_runtime_pb2 as spi
from protos import model_runtime_pb2_grpc as spi_grpc
from protos.tensor_codec import decode_outputs, encode_inputs
from runtime_adapter import capacity
from runtime_adapter.capacity import cgroup_memory_limit, default_capacity_bytes
from runtime_adapter.errors import AdapterError
from runtime_adapter.factory import build_repository
from runtime_adapter.gpu import visible_gpu_count
from runtime_adapter.repository import DEFAULT_MODEL_SIZE_BYTES, ModelRepository, RepositoryConfig
from runtime_adapter.runtimes.base import TensorSpec, size_floor
from runtime_adapter.runtimes.onnx import CPU, CUDA, SESSION_OVERHEAD_BYTES, SIZE_FACTOR, OnnxRuntime, select_providers

CAPACITY = 64 * 1024 * 1024
X = np.arange(8, dtype=np.float32).reshape(2, 4)


# --------------------------------------------------------------------------- provider selection


def test_select_providers_cpu_is_cpu_only_even_with_cuda_and_gpus() -> None:
    assert select_providers("cpu", [CUDA, CPU], 2) == [CPU]


def test_select_providers_auto_uses_cuda_when_possible(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="runtime_adapter"):
        assert select_providers("auto", ["TensorrtExecutionProvider", CUDA, CPU], 1) == [CUDA, CPU]
        assert select_providers("cuda", [CUDA, CPU], 4) == [CUDA, CPU]
    assert caplog.records == []


def test_select_providers_auto_without_gpu_is_cpu(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="runtime_adapter"):
        assert select_providers("auto", [CUDA, CPU], 0) == [CPU]
        assert select_providers("auto", [CPU], 3) == [CPU]
    assert caplog.records == []  # auto degrading is expected, not worth a warning


def test_select_providers_cuda_on_cpu_only_build_warns(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="runtime_adapter"):
        assert select_providers("cuda", ["AzureExecutionProvider", CPU], 2) == [CPU]
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert warnings[0].name == "runtime_adapter.runtimes.onnx"
    assert "device=cuda" in warnings[0].getMessage()
    assert "no CUDA provider" in warnings[0].getMessage()


def test_select_providers_cuda_without_visible_gpu_warns(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="runtime_adapter"):
        assert select_providers("cuda", [CUDA, CPU], 0) == [CPU]
    assert [r.getMessage() for r in caplog.records] == [
        "device=cuda requested but no GPU is visible; using the CPU"
    ]


@pytest.mark.parametrize("device", ["gpu", "CPU", "", "tpu"])
def test_select_providers_rejects_unknown_device(device: str) -> None:
    with pytest.raises(ValueError, match="device must be one of"):
        select_providers(device, [CPU], 0)


def test_onnx_runtime_on_this_machine_loads_on_cpu(tmp_path: Path) -> None:
    path = make_add_model(tmp_path / "model.onnx")
    model = OnnxRuntime(device="auto").load("m", path)
    assert model.providers == [CPU]
    assert model.size_bytes >= size_floor(path, SESSION_OVERHEAD_BYTES)  # measured (tests/test_memory_measurement.py)


# --------------------------------------------------------------------------- GPU discovery


def _fake_pynvml(count: int = 0, init_error: Exception | None = None) -> types.ModuleType:
    module = types.ModuleType("pynvml")
    module.calls = []  # type: ignore[attr-defined]

    def nvmlInit() -> None:
        module.calls.append("init")
        if init_error is not None:
            raise init_error

    def nvmlDeviceGetCount() -> int:
        module.calls.append("count")
        return count

    def nvmlShutdown() -> None:
        module.calls.append("shutdown")

    module.nvmlInit = nvmlInit  # type: ignore[attr-defined]
    module.nvmlDeviceGetCount = nvmlDeviceGetCount  # type: ignore[attr-defined]
    module.nvmlShutdown = nvmlShutdown  # type: ignore[attr-defined]
    return module


def test_visible_gpu_count_is_zero_here() -> None:
    assert visible_gpu_count() == 0


def test_visible_gpu_count_without_pynvml(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import raises ImportError
    assert visible_gpu_count() == 0


@pytest.mark.parametrize("value", ["", "-1"])
def test_visible_gpu_count_respects_hidden_devices(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    fake = _fake_pynvml(count=2)
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", value)
    assert visible_gpu_count() == 0
    assert fake.calls == []  # decided before touching NVML


def test_visible_gpu_count_when_nvml_init_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = _fake_pynvml(count=2, init_error=RuntimeError("NVML Shared Library Not Found"))
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert visible_gpu_count() == 0
    assert fake.calls == ["init"]


def test_visible_gpu_count_with_fake_nvml(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = _fake_pynvml(count=2)
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert visible_gpu_count() == 2
    assert fake.calls == ["init", "count", "shutdown"]

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    assert visible_gpu_count() == 1
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2,3")
    assert visible_gpu_count() == 2  # cannot see more than exist


# --------------------------------------------------------------------------- capacity


def test_cgroup_limit_v2_max_means_unlimited(tmp_path: Path) -> None:
    v2_file, v1_file = tmp_path / "memory.max", tmp_path / "memory.limit_in_bytes"
    v2_file.write_text("max\n")
    v1_file.write_text("1073741824\n")
    assert cgroup_memory_limit((v2_file, v1_file)) is None


def test_cgroup_limit_number(tmp_path: Path) -> None:
    v2_file = tmp_path / "memory.max"
    v2_file.write_text("536870912\n")
    assert cgroup_memory_limit((v2_file, tmp_path / "absent")) == 536870912


def test_cgroup_limit_falls_back_to_v1(tmp_path: Path) -> None:
    v1_file = tmp_path / "memory.limit_in_bytes"
    v1_file.write_text("2147483648")
    assert cgroup_memory_limit((tmp_path / "absent", v1_file)) == 2147483648
    garbage = tmp_path / "garbage"
    garbage.write_text("not a number")
    assert cgroup_memory_limit((garbage, v1_file)) == 2147483648


def test_cgroup_limit_huge_v1_value_means_unlimited(tmp_path: Path) -> None:
    v1_file = tmp_path / "memory.limit_in_bytes"
    v1_file.write_text("9223372036854771712\n")
    assert cgroup_memory_limit((tmp_path / "absent", v1_file)) is None


def test_cgroup_limit_missing_files(tmp_path: Path) -> None:
    assert cgroup_memory_limit((tmp_path / "a", tmp_path / "b")) is None
    assert cgroup_memory_limit(()) is None


def test_default_capacity_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    total = psutil.virtual_memory().total
    assert 0 < default_capacity_bytes() <= int(total * capacity.MODEL_MEMORY_FRACTION)
    monkeypatch.setattr(capacity, "cgroup_memory_limit", lambda: 1000)
    assert default_capacity_bytes() == 600
    assert default_capacity_bytes(fraction=0.5) == 500
    monkeypatch.setattr(capacity, "cgroup_memory_limit", lambda: None)
    assert default_capacity_bytes(fraction=0.5) == int(total * 0.5)


# --------------------------------------------------------------------------- repository


@pytest.fixture
def repo() -> ModelRepository:
    return build_repository(capacity_bytes=CAPACITY, device="cpu")


@pytest.fixture(scope="module")
def model_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("adapter-models")
    files = {
        "add": make_add_model(root / "add" / "model.onnx"),
        "echo": make_string_model(root / "echo" / "model.onnx"),
    }
    (root / "junk").mkdir()
    files["junk"] = root / "junk" / "model.onnx"
    files["junk"].write_bytes(b"definitely not protobuf\x00\xff" * 20)
    return files


def load(repo: ModelRepository, model_id: str, path: Path, model_type: str = "onnx") -> spi.LoadModelResponse:
    return repo.load(spi.LoadModelRequest(modelId=model_id, modelType=model_type, modelPath=str(path)))


def infer_request(inputs: dict[str, np.ndarray], *, raw: bool, name: str = "") -> v2.ModelInferRequest:
    request = v2.ModelInferRequest(model_name=name, id="req-1")
    encode_inputs(request, inputs, raw=raw)
    return request


def test_load_reports_measured_size(repo: ModelRepository, model_files: dict[str, Path]) -> None:
    add_dir = model_files["add"].parent
    response = load(repo, "add-1", add_dir)
    assert response.sizeInBytes >= size_floor(model_files["add"], SESSION_OVERHEAD_BYTES)
    assert repo.model_size("add-1") == response.sizeInBytes
    assert repo.loaded_ids() == ["add-1"]
    assert repo.is_ready("add-1")
    # the file itself works as a path too
    assert load(repo, "add-2", model_files["add"]).sizeInBytes >= size_floor(model_files["add"], SESSION_OVERHEAD_BYTES)


@pytest.mark.parametrize("raw", [True, False])
def test_infer_add_model(repo: ModelRepository, model_files: dict[str, Path], raw: bool) -> None:
    load(repo, "add-1", model_files["add"].parent)
    response = repo.infer(infer_request({"x": X}, raw=raw, name="add"), "add-1")
    assert response.model_name == "add"
    assert response.id == "req-1"
    assert [o.name for o in response.outputs] == ["y"]
    assert response.outputs[0].datatype == "FP32"
    assert list(response.outputs[0].shape) == [2, 4]
    if raw:
        assert len(response.raw_output_contents) == 1
        assert not response.outputs[0].contents.ListFields()
    else:
        assert len(response.raw_output_contents) == 0
        assert list(response.outputs[0].contents.fp32_contents) == (X + 1).ravel().tolist()
    out = decode_outputs(response)
    np.testing.assert_array_equal(out["y"], X + 1)
    assert out["y"].dtype == np.float32


def test_infer_names_model_id_when_request_has_no_name(repo: ModelRepository, model_files: dict[str, Path]) -> None:
    load(repo, "add-1", model_files["add"])
    request = infer_request({"x": X[:1]}, raw=True)
    request.model_version = "7"
    response = repo.infer(request, "add-1")
    assert response.model_name == "add-1"
    assert response.model_version == "7"
    np.testing.assert_array_equal(decode_outputs(response)["y"], X[:1] + 1)


def test_infer_requested_outputs(repo: ModelRepository, model_files: dict[str, Path]) -> None:
    load(repo, "add-1", model_files["add"])
    request = infer_request({"x": X}, raw=True)
    request.outputs.add(name="nope")
    with pytest.raises(AdapterError) as info:
        repo.infer(request, "add-1")
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "nope" in info.value.message


def test_metadata(repo: ModelRepository, model_files: dict[str, Path]) -> None:
    load(repo, "add-1", model_files["add"])
    meta = repo.metadata("add-1", "add")
    assert meta.name == "add"
    assert meta.platform == "onnxruntime_onnx"
    assert list(meta.versions) == ["1"]
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.inputs] == [("x", "FP32", [-1, 4])]
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.outputs] == [("y", "FP32", [-1, 4])]
    assert repo.metadata("add-1").name == "add-1"


@pytest.mark.parametrize("raw", [True, False])
def test_string_model_echoes_bytes(repo: ModelRepository, model_files: dict[str, Path], raw: bool) -> None:
    load(repo, "echo-1", model_files["echo"].parent)
    meta = repo.metadata("echo-1")
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.inputs] == [("text", "BYTES", [-1])]
    assert [(t.name, t.datatype) for t in meta.outputs] == [("echo", "BYTES")]
    text = np.array([b"hello", "w\u00f6rld".encode(), b""], dtype=object)
    response = repo.infer(infer_request({"text": text}, raw=raw), "echo-1")
    assert response.outputs[0].datatype == "BYTES"
    assert len(response.raw_output_contents) == (1 if raw else 0)
    assert decode_outputs(response)["echo"].tolist() == [b"hello", "w\u00f6rld".encode(), b""]


def test_load_twice_is_one_load(repo: ModelRepository, model_files: dict[str, Path]) -> None:
    first = load(repo, "add-1", model_files["add"])
    second = load(repo, "add-1", model_files["add"])
    assert second.sizeInBytes == first.sizeInBytes > 0
    assert repo.load_count == 1
    assert repo.loaded_ids() == ["add-1"]


def test_unload_is_idempotent(repo: ModelRepository, model_files: dict[str, Path]) -> None:
    load(repo, "add-1", model_files["add"])
    repo.unload("add-1")
    repo.unload("add-1")
    repo.unload("never-loaded")
    assert repo.unload_count == 1
    assert repo.loaded_ids() == []
    assert not repo.is_ready("add-1")
    with pytest.raises(AdapterError) as info:
        repo.infer(infer_request({"x": X}, raw=True), "add-1")
    assert info.value.code == grpc.StatusCode.NOT_FOUND
    assert "add-1" in info.value.message
    with pytest.raises(AdapterError) as info:
        repo.metadata("add-1")
    assert info.value.code == grpc.StatusCode.NOT_FOUND
    with pytest.raises(AdapterError) as info:
        repo.model_size("add-1")
    assert info.value.code == grpc.StatusCode.NOT_FOUND
    # and it loads again afterwards
    load(repo, "add-1", model_files["add"])
    assert repo.load_count == 2


def test_load_file_that_is_not_onnx(repo: ModelRepository, model_files: dict[str, Path]) -> None:
    with pytest.raises(AdapterError) as info:
        load(repo, "junk", model_files["junk"].parent)
    assert info.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert "model.onnx" in info.value.message
    assert "'junk'" in info.value.message
    assert repo.loaded_ids() == []
    # a failed load does not leave the id stuck "loading"
    with pytest.raises(AdapterError) as again:
        load(repo, "junk", model_files["junk"].parent)
    assert again.value.code == grpc.StatusCode.FAILED_PRECONDITION


def test_load_missing_path(repo: ModelRepository, tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(AdapterError) as info:
        load(repo, "m", missing)
    assert info.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert str(missing) in info.value.message
    assert "does not exist" in info.value.message


def test_load_empty_directory(repo: ModelRepository, tmp_path: Path) -> None:
    with pytest.raises(AdapterError) as info:
        load(repo, "m", tmp_path)
    assert info.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert "no .onnx model file" in info.value.message


def test_load_directory_with_two_models(repo: ModelRepository, model_files: dict[str, Path], tmp_path: Path) -> None:
    shutil.copy(model_files["add"], tmp_path / "a.onnx")
    shutil.copy(model_files["add"], tmp_path / "b.onnx")
    with pytest.raises(AdapterError) as info:
        load(repo, "m", tmp_path)
    assert info.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert "a.onnx" in info.value.message and "b.onnx" in info.value.message
    # model.onnx beside them settles it
    shutil.copy(model_files["echo"], tmp_path / "model.onnx")
    load(repo, "m", tmp_path)
    assert [t.name for t in repo.metadata("m").inputs] == ["text"]


def test_load_directory_with_one_other_named_model(
    repo: ModelRepository, model_files: dict[str, Path], tmp_path: Path
) -> None:
    shutil.copy(model_files["add"], tmp_path / "other.onnx")
    (tmp_path / "README.txt").write_text("not a model")
    response = load(repo, "m", tmp_path)
    assert response.sizeInBytes >= size_floor(tmp_path / "other.onnx", SESSION_OVERHEAD_BYTES)
    np.testing.assert_array_equal(decode_outputs(repo.infer(infer_request({"x": X}, raw=True), "m"))["y"], X + 1)


def test_load_unsupported_type(repo: ModelRepository, model_files: dict[str, Path]) -> None:
    with pytest.raises(AdapterError) as info:
        load(repo, "m", model_files["add"], model_type="tensorflow")
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "tensorflow" in info.value.message
    assert "onnx" in info.value.message
    with pytest.raises(AdapterError) as info:
        load(repo, "", model_files["add"])
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.parametrize(
    ("inputs", "needle"),
    [
        ({"z": X}, "'z'"),  # unknown input name
        ({"x": X.astype(np.float64)}, "'x'"),  # wrong datatype
        ({"x": X.ravel()}, "'x'"),  # wrong rank
        ({"x": np.zeros((2, 3), np.float32)}, "'x'"),  # wrong fixed dim
        ({}, "['x']"),  # missing input
    ],
    ids=["unknown-name", "datatype", "rank", "fixed-dim", "missing"],
)
def test_bad_inputs_are_invalid_argument(
    repo: ModelRepository, model_files: dict[str, Path], inputs: dict[str, np.ndarray], needle: str
) -> None:
    load(repo, "add-1", model_files["add"])
    request = v2.ModelInferRequest()
    if inputs:
        encode_inputs(request, inputs, raw=True)
    with pytest.raises(AdapterError) as info:
        repo.infer(request, "add-1")
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert needle in info.value.message


def test_malformed_tensor_is_invalid_argument(repo: ModelRepository, model_files: dict[str, Path]) -> None:
    load(repo, "add-1", model_files["add"])
    request = v2.ModelInferRequest()
    request.inputs.add(name="x", datatype="FP32", shape=[2, 4])
    request.raw_input_contents.append(b"\x00" * 5)
    with pytest.raises(AdapterError) as info:
        repo.infer(request, "add-1")
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "'x'" in info.value.message


def test_runtime_status_reports_and_purges(repo: ModelRepository, model_files: dict[str, Path]) -> None:
    load(repo, "add-1", model_files["add"])
    load(repo, "echo-1", model_files["echo"])
    assert repo.loaded_ids() == ["add-1", "echo-1"]
    status = repo.runtime_status()
    assert status.status == spi.RuntimeStatusResponse.READY
    assert status.capacityInBytes == CAPACITY
    assert status.maxLoadingConcurrency == 2
    assert status.modelLoadingTimeoutMs == 90_000
    assert status.defaultModelSizeInBytes == DEFAULT_MODEL_SIZE_BYTES
    assert status.runtimeVersion.startswith("mmesh-runtime-adapter/")
    assert "inference.GRPCInferenceService/ModelInfer" in status.methodInfos
    assert not status.allowAnyMethod
    assert repo.loaded_ids() == []
    assert repo.unload_count == 2


def test_build_repository_defaults_capacity() -> None:
    repo = build_repository(device="cpu", max_loading_concurrency=5, load_timeout_ms=1234)
    status = repo.runtime_status()
    assert status.capacityInBytes == default_capacity_bytes() > 0
    assert status.maxLoadingConcurrency == 5
    assert status.modelLoadingTimeoutMs == 1234


def test_predict_size(repo: ModelRepository, model_files: dict[str, Path], tmp_path: Path) -> None:
    def predict(path: Path, model_type: str = "onnx") -> int:
        return repo.predict_size(spi.PredictModelSizeRequest(modelId="p", modelType=model_type, modelPath=str(path)))

    expected = int(model_files["add"].stat().st_size * SIZE_FACTOR) + SESSION_OVERHEAD_BYTES
    assert predict(model_files["add"].parent) == expected
    assert predict(model_files["add"]) == expected
    assert predict(tmp_path / "missing") == DEFAULT_MODEL_SIZE_BYTES
    assert predict(tmp_path) == DEFAULT_MODEL_SIZE_BYTES  # empty directory
    assert repo.loaded_ids() == []  # predicting loads nothing
    with pytest.raises(AdapterError) as info:
        predict(model_files["add"], model_type="tensorflow")
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT


# ---- repository bookkeeping with a fake runtime ----------------------------


@dataclass
class FakeModel:
    size_bytes: int = 1234
    platform: str = "fake"
    inputs: list[TensorSpec] = field(default_factory=list)
    outputs: list[TensorSpec] = field(default_factory=list)
    closed: bool = False

    def infer(self, inputs, output_names):  # pragma: no cover - not called
        return {}

    def close(self) -> None:
        self.closed = True


class BlockingRuntime:
    """load() waits for `release` (after setting `started`), then returns a FakeModel."""

    model_type = "fake"

    def __init__(self, block: bool = True) -> None:
        self.started = threading.Event()
        self.release = threading.Event()
        self.block = block
        self.models: list[FakeModel] = []
        self.error: Exception | None = None

    def load(self, model_id: str, path: Path) -> FakeModel:
        self.started.set()
        if self.block:
            assert self.release.wait(10), "test never released the load"
        if self.error is not None:
            raise self.error
        model = FakeModel()
        self.models.append(model)
        return model

    def predict_size(self, path: Path) -> int:
        return 1


def fake_repo(runtime: BlockingRuntime) -> ModelRepository:
    return ModelRepository(RepositoryConfig(capacity_bytes=CAPACITY), {runtime.model_type: runtime})


def fake_load(repo: ModelRepository, model_id: str = "m") -> spi.LoadModelResponse:
    return repo.load(spi.LoadModelRequest(modelId=model_id, modelType="fake", modelPath="/x"))


def test_unload_during_load_discards_the_model() -> None:
    runtime = BlockingRuntime()
    repo = fake_repo(runtime)
    outcome: dict[str, object] = {}

    def loader() -> None:
        try:
            outcome["response"] = fake_load(repo)
        except AdapterError as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=loader)
    thread.start()
    try:
        assert runtime.started.wait(10)
        # a concurrent load of the same id is refused while the first runs
        with pytest.raises(AdapterError) as info:
            fake_load(repo)
        assert info.value.code == grpc.StatusCode.FAILED_PRECONDITION
        unloader = threading.Thread(target=repo.unload, args=("m",))
        unloader.start()
        unloader.join(10)
        assert not unloader.is_alive()  # unload does not wait for the load
    finally:
        runtime.release.set()
        thread.join(10)
    error = outcome.get("error")
    assert isinstance(error, AdapterError), outcome
    assert error.code == grpc.StatusCode.CANCELLED
    assert repo.loaded_ids() == []
    assert repo.load_count == 0
    assert len(runtime.models) == 1 and runtime.models[0].closed

    # the cancellation is not remembered: the next load succeeds
    runtime.block = False
    assert fake_load(repo).sizeInBytes == 1234
    assert repo.loaded_ids() == ["m"]


def test_failed_load_then_unload_then_load() -> None:
    runtime = BlockingRuntime(block=False)
    runtime.error = RuntimeError("runtime bug")
    repo = fake_repo(runtime)
    with pytest.raises(AdapterError) as info:
        fake_load(repo)
    assert info.value.code == grpc.StatusCode.INTERNAL
    assert "runtime bug" in info.value.message
    repo.unload("m")
    runtime.error = None
    assert fake_load(repo).sizeInBytes == 1234
    assert repo.loaded_ids() == ["m"]


class _HookedLock:
    """A lock that runs `hook` (once, armed) right after a release, so a test can
    put another call exactly between two critical sections of the code under test."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.hook = None
        self.armed = False

    def __enter__(self) -> "_HookedLock":
        self._lock.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self._lock.release()
        if self.armed and self.hook is not None:
            self.armed = False
            self.hook()


def test_unload_right_after_the_runtime_returns_is_not_lost() -> None:
    """An unload that arrives after the runtime finished loading but before the
    repository recorded the model must still leave the model unloaded."""
    lock = _HookedLock()

    class ArmingRuntime(BlockingRuntime):
        def load(self, model_id: str, path: Path) -> FakeModel:
            model = super().load(model_id, path)
            lock.armed = True  # fire on the first release after the runtime returned
            return model

    runtime = ArmingRuntime(block=False)
    repo = fake_repo(runtime)
    repo._lock = lock  # type: ignore[assignment]
    unloads: list[str] = []

    def unload_now() -> None:
        unloads.append("m")
        repo.unload("m")

    lock.hook = unload_now
    try:
        fake_load(repo)
    except AdapterError as exc:
        assert exc.code == grpc.StatusCode.CANCELLED
    assert unloads == ["m"]
    assert repo.loaded_ids() == []
    assert runtime.models[0].closed


def test_second_load_right_after_the_runtime_returns_does_not_load_again() -> None:
    """A second load of the same id in that same window must not start a
    duplicate load (which would replace, and leak, the first session)."""
    lock = _HookedLock()

    class ArmingRuntime(BlockingRuntime):
        def load(self, model_id: str, path: Path) -> FakeModel:
            model = super().load(model_id, path)
            lock.armed = True
            return model

    runtime = ArmingRuntime(block=False)
    repo = fake_repo(runtime)
    repo._lock = lock  # type: ignore[assignment]
    second: list[int] = []

    def load_again() -> None:
        lock.hook = None  # once
        second.append(fake_load(repo).sizeInBytes)

    lock.hook = load_again
    assert fake_load(repo).sizeInBytes == 1234
    assert second == [1234]
    assert len(runtime.models) == 1
    assert repo.load_count == 1
    assert repo.loaded_ids() == ["m"]


# --------------------------------------------------------------------------- gRPC server (own process)


@pytest.fixture(scope="module")
def sock_dir() -> Iterator[Path]:
    # Unix socket paths are limited to ~107 bytes; pytest's tmp paths can exceed that
    path = Path(tempfile.mkdtemp(prefix="mm-rt-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def adapter(sock_dir: Path) -> Iterator[AdapterProcess]:
    process = AdapterProcess(sock_dir / "rt.sock", capacity_bytes=CAPACITY, device="cpu")
    process.start()
    try:
        yield process
    finally:
        process.stop()


@pytest.fixture(scope="module")
def channel(adapter: AdapterProcess) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(adapter.target) as ch:
        grpc.channel_ready_future(ch).result(timeout=20)
        yield ch


def _id(model_id: str) -> tuple[tuple[str, str], ...]:
    return (("mm-model-id", model_id),)


def test_grpc_lifecycle(channel: grpc.Channel, model_files: dict[str, Path]) -> None:
    runtime = spi_grpc.ModelRuntimeStub(channel)
    inference = v2_grpc.GRPCInferenceServiceStub(channel)

    status = runtime.runtimeStatus(spi.RuntimeStatusRequest(), timeout=10)
    assert status.status == spi.RuntimeStatusResponse.READY
    assert status.capacityInBytes == CAPACITY
    assert status.defaultModelSizeInBytes == DEFAULT_MODEL_SIZE_BYTES

    add_dir = str(model_files["add"].parent)
    predicted = runtime.predictModelSize(
        spi.PredictModelSizeRequest(modelId="add-1", modelType="onnx", modelPath=add_dir), timeout=10
    )
    assert predicted.sizeInBytes == int(model_files["add"].stat().st_size * SIZE_FACTOR) + SESSION_OVERHEAD_BYTES
    loaded = runtime.loadModel(spi.LoadModelRequest(modelId="add-1", modelType="onnx", modelPath=add_dir), timeout=30)
    assert loaded.sizeInBytes >= size_floor(model_files["add"], SESSION_OVERHEAD_BYTES)  # measured
    assert runtime.modelSize(spi.ModelSizeRequest(modelId="add-1"), timeout=10).sizeInBytes == loaded.sizeInBytes

    # the mesh names the concrete model in the header; model_name is the client's name
    response = inference.ModelInfer(infer_request({"x": X}, raw=True, name="add"), metadata=_id("add-1"), timeout=10)
    assert response.model_name == "add"
    np.testing.assert_array_equal(decode_outputs(response)["y"], X + 1)
    # plain v2 clients name the model in the request
    typed = inference.ModelInfer(infer_request({"x": X}, raw=False, name="add-1"), timeout=10)
    assert list(typed.outputs[0].contents.fp32_contents) == (X + 1).ravel().tolist()

    meta = inference.ModelMetadata(v2.ModelMetadataRequest(name="add"), metadata=_id("add-1"), timeout=10)
    assert meta.name == "add"
    assert meta.platform == "onnxruntime_onnx"
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.inputs] == [("x", "FP32", [-1, 4])]
    assert inference.ModelReady(v2.ModelReadyRequest(name="add"), metadata=_id("add-1"), timeout=10).ready

    index = inference.RepositoryIndex(v2.RepositoryIndexRequest(), timeout=10)
    assert [(m.name, m.state) for m in index.models] == [("add-1", "READY")]

    runtime.unloadModel(spi.UnloadModelRequest(modelId="add-1"), timeout=10)
    runtime.unloadModel(spi.UnloadModelRequest(modelId="add-1"), timeout=10)  # idempotent
    assert list(inference.RepositoryIndex(v2.RepositoryIndexRequest(), timeout=10).models) == []
    assert not inference.ModelReady(v2.ModelReadyRequest(name="add-1"), timeout=10).ready
    with pytest.raises(grpc.RpcError) as info:
        inference.ModelInfer(infer_request({"x": X}, raw=True), metadata=_id("add-1"), timeout=10)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


def test_grpc_errors(channel: grpc.Channel, model_files: dict[str, Path]) -> None:
    runtime = spi_grpc.ModelRuntimeStub(channel)
    inference = v2_grpc.GRPCInferenceServiceStub(channel)

    with pytest.raises(grpc.RpcError) as info:
        runtime.loadModel(
            spi.LoadModelRequest(modelId="junk", modelType="onnx", modelPath=str(model_files["junk"].parent)),
            timeout=30,
        )
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "model.onnx" in info.value.details()

    with pytest.raises(grpc.RpcError) as info:
        runtime.loadModel(spi.LoadModelRequest(modelId="x", modelType="keras", modelPath="/x"), timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT

    with pytest.raises(grpc.RpcError) as info:
        inference.ModelInfer(infer_request({"x": X}, raw=True), metadata=_id("no-such-model"), timeout=10)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    assert "no-such-model" in info.value.details()

    with pytest.raises(grpc.RpcError) as info:
        runtime.modelSize(spi.ModelSizeRequest(modelId="no-such-model"), timeout=10)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND

    runtime.loadModel(
        spi.LoadModelRequest(modelId="add-e", modelType="onnx", modelPath=str(model_files["add"])), timeout=30
    )
    try:
        with pytest.raises(grpc.RpcError) as info:
            inference.ModelInfer(infer_request({"x": X.astype(np.int64)}, raw=True), metadata=_id("add-e"), timeout=10)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "'x'" in info.value.details()
    finally:
        runtime.unloadModel(spi.UnloadModelRequest(modelId="add-e"), timeout=10)


def test_sigterm_exits_cleanly(sock_dir: Path) -> None:
    process = AdapterProcess(sock_dir / "term.sock", device="cpu")
    process.start()
    proc = process._proc
    assert proc is not None
    try:
        with grpc.insecure_channel(process.target) as ch:
            grpc.channel_ready_future(ch).result(timeout=20)
            status = spi_grpc.ModelRuntimeStub(ch).runtimeStatus(spi.RuntimeStatusRequest(), timeout=10)
            assert status.status == spi.RuntimeStatusResponse.READY
        started = time.monotonic()
        os.kill(proc.pid, signal.SIGTERM)
        assert proc.wait(timeout=8) == 0
        assert time.monotonic() - started < 8
    finally:
        process.stop()
