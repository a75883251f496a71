"""The TorchScript runtime (model types ``pytorch``/``torchscript``): the same
repository calls as the ONNX tests, parametrized over both runtimes where the
behaviour is shared, then what only TorchScript has (schema files, derived
metadata, tuple/dict outputs, device choice), and one model served end to end
through a real sidecar. Models are scripted or traced at test time."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Dict, Tuple

import grpc
import numpy as np
import pytest
import torch
import tritonclient.grpc as triton

from mesh.examples import make_add_model
from protos import grpc_predict_v2_pb2 as v2
from protos.tensor_codec import DATATYPE_TO_DTYPE, decode_outputs, encode_inputs
from runtime_adapter import factory
from runtime_adapter.errors import AdapterError
from runtime_adapter.factory import build_repository
from runtime_adapter.repository import ModelRepository
from runtime_adapter.runtimes import onnx, torchscript
from runtime_adapter.runtimes.base import TensorSpec, size_floor
from runtime_adapter.runtimes.torchscript import TorchScriptModel, TorchScriptRuntime, select_torch_device
from tests.helpers import register
from tests.test_runtime_adapter import CAPACITY, X, infer_request, load

XY_SCHEMA = {
    "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}],
    "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 4]}],
}


class AddOne(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + 1.0


class SumAndProduct(torch.nn.Module):
    def forward(self, a: torch.Tensor, b: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        return a + b, a * b


class Named(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        return {"double": x * 2, "negated": -x}


class Dense(torch.nn.Module):
    """4 × width² FP32 weights."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.layers = torch.nn.ModuleList([torch.nn.Linear(width, width, bias=False) for _ in range(4)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = torch.relu(layer(x))
        return x


def save_torchscript(module: torch.nn.Module, path: Path, schema: dict | None = None, schema_name: str = "_schema.json") -> Path:
    """torch.jit.script `module` to `path`, with a schema file beside it if given."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.jit.script(module).save(str(path))
    if schema is not None:
        (path.parent / schema_name).write_text(json.dumps(schema))
    return path


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("torch-models")
    return {
        # the same model (y = x + 1 over FP32 [b, 4]) for both runtimes
        "onnx": make_add_model(root / "onnx-add" / "model.onnx"),
        "pytorch": save_torchscript(AddOne(), root / "torch-add" / "model.pt", XY_SCHEMA),
        "add-no-schema": save_torchscript(AddOne(), root / "add-no-schema" / "model.pt"),
        "tuple": save_torchscript(SumAndProduct(), root / "tuple" / "model.pt"),
        "dict": save_torchscript(Named(), root / "dict" / "model.pt"),
    }


@pytest.fixture
def repo() -> ModelRepository:
    return build_repository(capacity_bytes=CAPACITY, device="cpu")


RUNTIMES = ["onnx", "pytorch"]
OVERHEAD = {"onnx": onnx.SESSION_OVERHEAD_BYTES, "pytorch": torchscript.MODULE_OVERHEAD_BYTES}
PLATFORM = {"onnx": "onnxruntime_onnx", "pytorch": "pytorch_libtorch"}


def error_of(call, *args) -> AdapterError:
    with pytest.raises(AdapterError) as info:
        call(*args)
    return info.value


# --------------------------------------------------------------------------- shared with ONNX


@pytest.mark.parametrize("model_type", RUNTIMES)
@pytest.mark.parametrize("raw", [True, False])
def test_load_infer_metadata(repo: ModelRepository, models: dict[str, Path], model_type: str, raw: bool) -> None:
    model_file = models[model_type]
    response = load(repo, "add", model_file.parent, model_type)
    assert response.sizeInBytes >= size_floor(model_file, OVERHEAD[model_type])
    assert repo.model_size("add") == response.sizeInBytes
    out = repo.infer(infer_request({"x": X}, raw=raw, name="add"), "add")
    assert [(o.name, o.datatype, list(o.shape)) for o in out.outputs] == [("y", "FP32", [2, 4])]
    np.testing.assert_array_equal(decode_outputs(out)["y"], X + 1)
    meta = repo.metadata("add")
    assert meta.platform == PLATFORM[model_type]
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.inputs] == [("x", "FP32", [-1, 4])]
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.outputs] == [("y", "FP32", [-1, 4])]
    repo.unload("add")
    assert repo.loaded_ids() == []


@pytest.mark.parametrize("model_type", RUNTIMES)
@pytest.mark.parametrize(
    ("inputs", "needle"),
    [
        ({"z": X}, "'z'"),
        ({"x": X.astype(np.float64)}, "'x'"),
        ({"x": X.ravel()}, "'x'"),
        ({"x": np.zeros((2, 3), np.float32)}, "'x'"),
        ({}, "['x']"),
    ],
    ids=["unknown-name", "datatype", "rank", "fixed-dim", "missing"],
)
def test_bad_inputs_are_invalid_argument(
    repo: ModelRepository, models: dict[str, Path], model_type: str, inputs: dict, needle: str
) -> None:
    load(repo, "add", models[model_type], model_type)
    request = v2.ModelInferRequest()
    if inputs:
        encode_inputs(request, inputs, raw=True)
    error = error_of(repo.infer, request, "add")
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert needle in error.message


@pytest.mark.parametrize("model_type", RUNTIMES)
def test_unknown_requested_output(repo: ModelRepository, models: dict[str, Path], model_type: str) -> None:
    load(repo, "add", models[model_type], model_type)
    request = infer_request({"x": X}, raw=True)
    request.outputs.add(name="nope")
    error = error_of(repo.infer, request, "add")
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "nope" in error.message


@pytest.mark.parametrize(("model_type", "file_name"), [("onnx", "model.onnx"), ("pytorch", "model.pt")])
def test_unloadable_file_is_failed_precondition(repo: ModelRepository, tmp_path: Path, model_type: str, file_name: str) -> None:
    (tmp_path / file_name).write_bytes(b"definitely not a model\x00\xff" * 20)
    error = error_of(load, repo, "junk", tmp_path, model_type)
    assert error.code == grpc.StatusCode.FAILED_PRECONDITION
    assert file_name in error.message and "'junk'" in error.message
    assert repo.loaded_ids() == []


# --------------------------------------------------------------------------- TorchScript only


def test_eager_checkpoint_is_failed_precondition(repo: ModelRepository, tmp_path: Path) -> None:
    torch.save(torch.nn.Linear(2, 2), tmp_path / "model.pt")  # pickled module, not TorchScript
    error = error_of(load, repo, "eager", tmp_path, "pytorch")
    assert error.code == grpc.StatusCode.FAILED_PRECONDITION
    assert "TorchScript" in error.message


def test_metadata_without_schema_is_derived_from_forward(repo: ModelRepository, models: dict[str, Path]) -> None:
    load(repo, "t", models["tuple"], "pytorch")
    meta = repo.metadata("t")
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.inputs] == [("a", "FP32", [-1]), ("b", "FP32", [-1])]
    assert [t.name for t in meta.outputs] == ["output__0", "output__1"]
    # derived metadata is a guess: any dtype and rank go to the model
    a, b = np.arange(6, dtype=np.int64).reshape(2, 3), np.full((2, 3), 2, np.int64)
    out = decode_outputs(repo.infer(infer_request({"a": a, "b": b}, raw=True), "t"))
    np.testing.assert_array_equal(out["output__0"], a + b)
    np.testing.assert_array_equal(out["output__1"], a * b)
    assert out["output__0"].dtype == np.int64
    # a subset of the outputs
    request = infer_request({"a": a, "b": b}, raw=True)
    request.outputs.add(name="output__1")
    assert list(decode_outputs(repo.infer(request, "t"))) == ["output__1"]


def test_torch_rejecting_inputs_is_invalid_argument(repo: ModelRepository, models: dict[str, Path]) -> None:
    load(repo, "t", models["tuple"], "pytorch")
    a, b = np.zeros((2, 3), np.float32), np.zeros((4, 5), np.float32)  # shapes do not broadcast
    error = error_of(repo.infer, infer_request({"a": a, "b": b}, raw=True), "t")
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "['a', 'b']" in error.message


def test_gpu_out_of_memory_is_resource_exhausted() -> None:
    def forward(*args: torch.Tensor) -> torch.Tensor:
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    model = TorchScriptModel(forward, "cpu", 0, [TensorSpec("x", "FP32", (-1,), exact=False)])
    error = error_of(model.infer, {"x": X}, None)
    assert error.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "2.00 GiB" in error.message


def test_bytes_input_is_invalid_argument(repo: ModelRepository, models: dict[str, Path]) -> None:
    load(repo, "n", models["add-no-schema"], "pytorch")
    error = error_of(repo.infer, infer_request({"x": np.array([b"a"], dtype=object)}, raw=True), "n")
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "'x'" in error.message and "BYTES" in error.message


def test_dict_outputs_are_named_by_their_keys(repo: ModelRepository, models: dict[str, Path]) -> None:
    load(repo, "d", models["dict"], "torchscript")  # the other type name, same runtime
    assert list(repo.metadata("d").outputs) == []  # known only at inference
    out = decode_outputs(repo.infer(infer_request({"x": X}, raw=False), "d"))
    assert sorted(out) == ["double", "negated"]
    np.testing.assert_array_equal(out["double"], X * 2)
    request = infer_request({"x": X}, raw=True)
    request.outputs.add(name="missing")
    error = error_of(repo.infer, request, "d")
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "double" in error.message


def test_traced_model_in_a_single_file_directory(repo: ModelRepository, tmp_path: Path) -> None:
    torch.jit.trace(SumAndProduct(), (torch.zeros(1, 2), torch.zeros(1, 2))).save(str(tmp_path / "net.pth"))
    (tmp_path / "README.md").write_text("not a model")
    load(repo, "traced", tmp_path, "pytorch")
    ones = np.ones((1, 2), np.float32)
    out = decode_outputs(repo.infer(infer_request({"a": ones, "b": ones * 3}, raw=True), "traced"))
    np.testing.assert_array_equal(out["output__0"], ones * 4)


def test_schema_json_names_and_types_the_tensors(repo: ModelRepository, tmp_path: Path) -> None:
    schema = {
        "inputs": [
            {"name": "left", "datatype": "INT32", "shape": [-1]},
            {"name": "right", "datatype": "INT32", "shape": [-1]},
        ],
        "outputs": [
            {"name": "total", "datatype": "INT32", "shape": [-1]},
            {"name": "product", "datatype": "INT32", "shape": [-1]},
        ],
    }
    save_torchscript(SumAndProduct(), tmp_path / "model.pt", schema, schema_name="schema.json")
    load(repo, "s", tmp_path, "pytorch")
    meta = repo.metadata("s")
    assert [t.name for t in meta.inputs] == ["left", "right"]
    assert [(t.name, t.datatype) for t in meta.outputs] == [("total", "INT32"), ("product", "INT32")]
    left, right = np.array([1, 2], np.int32), np.array([3, 4], np.int32)
    out = decode_outputs(repo.infer(infer_request({"left": left, "right": right}, raw=True), "s"))
    assert out["total"].tolist() == [4, 6] and out["product"].tolist() == [3, 8]
    error = error_of(repo.infer, infer_request({"left": left.astype(np.float32), "right": right}, raw=True), "s")
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT and "'left'" in error.message


def test_bf16_round_trip(repo: ModelRepository, tmp_path: Path) -> None:
    bf16 = DATATYPE_TO_DTYPE["BF16"]
    save_torchscript(AddOne(), tmp_path / "model.pt", {"inputs": [{"name": "x", "datatype": "BF16", "shape": [-1]}]})
    load(repo, "bf", tmp_path, "pytorch")
    x = np.array([1.5, -2.0, 8.0], dtype=bf16)
    out = decode_outputs(repo.infer(infer_request({"x": x}, raw=True), "bf"))["output__0"]
    assert out.dtype == bf16
    assert out.astype(np.float32).tolist() == [2.5, -1.0, 9.0]


@pytest.mark.parametrize(
    ("schema", "needle"),
    [
        ("{not json", "invalid"),
        ({"inputs": [{"name": "x", "datatype": "FLOAT", "shape": [-1]}]}, "datatype"),
        ({"inputs": [{"name": "x", "datatype": "FP32", "shape": [-1]}] * 2}, "forward takes 1"),
        ({"inputs": [{"name": "x", "datatype": "BYTES", "shape": [-1]}]}, "BYTES"),
    ],
    ids=["not-json", "datatype", "input-count", "bytes"],
)
def test_bad_schema_is_failed_precondition(repo: ModelRepository, tmp_path: Path, schema: object, needle: str) -> None:
    save_torchscript(AddOne(), tmp_path / "model.pt")
    (tmp_path / "_schema.json").write_text(schema if isinstance(schema, str) else json.dumps(schema))
    error = error_of(load, repo, "bad", tmp_path, "pytorch")
    assert error.code == grpc.StatusCode.FAILED_PRECONDITION
    assert needle in error.message
    assert repo.loaded_ids() == []


def test_measured_size_of_a_bigger_model(tmp_path: Path) -> None:
    width = 1024  # 4 × 1024² FP32 = 16 MiB of weights
    weights = 4 * width * width * 4
    model_file = save_torchscript(Dense(width), tmp_path / "model.pt")
    runtime = TorchScriptRuntime(device="cpu")
    models = [runtime.load(f"dense-{i}", model_file) for i in range(2)]
    for model in models:
        assert model.device == "cpu"
        assert weights <= model.size_bytes < 4 * weights
        assert model.footprint is not None and 0.9 * weights <= model.footprint.host_bytes < 4 * weights
    low, high = sorted(m.footprint.host_bytes for m in models if m.footprint)
    assert high <= 1.25 * low
    assert runtime.predict_size(tmp_path) == int(model_file.stat().st_size * torchscript.SIZE_FACTOR) + (
        torchscript.MODULE_OVERHEAD_BYTES
    )
    out = models[0].infer({"x": np.ones((1, width), np.float32)}, None)
    assert out["output__0"].shape == (1, width)


# --------------------------------------------------------------------------- device and factory


def test_select_torch_device() -> None:
    assert select_torch_device("cpu", True, 2) == "cpu"
    assert select_torch_device("auto", True, 1) == "cuda:0"
    assert select_torch_device("cuda", True, 4) == "cuda:0"
    assert select_torch_device("auto", False, 0) == "cpu"
    assert select_torch_device("auto", True, 0) == "cpu"


@pytest.mark.parametrize(
    ("cuda_available", "gpu_count", "why"),
    [(False, 0, "torch has no CUDA support"), (True, 0, "no GPU is visible")],
)
def test_cuda_asked_but_impossible_warns(
    caplog: pytest.LogCaptureFixture, cuda_available: bool, gpu_count: int, why: str
) -> None:
    with caplog.at_level(logging.WARNING, logger="runtime_adapter"):
        assert select_torch_device("cuda", cuda_available, gpu_count) == "cpu"
    assert [r.getMessage() for r in caplog.records] == [f"device=cuda requested but {why}; using the CPU"]


def test_auto_degrades_silently(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="runtime_adapter"):
        select_torch_device("auto", False, 0)
    assert caplog.records == []


@pytest.mark.parametrize("device", ["gpu", "CUDA", ""])
def test_select_torch_device_rejects_unknown(device: str) -> None:
    with pytest.raises(ValueError, match="device must be one of"):
        select_torch_device(device, True, 1)


def test_this_machine_loads_on_cpu_with_auto(models: dict[str, Path]) -> None:
    model = TorchScriptRuntime(device="auto").load("m", models["pytorch"])
    assert model.device == ("cuda:0" if torch.cuda.is_available() else "cpu")


def test_factory_registers_one_runtime_under_both_types() -> None:
    runtimes = factory.builtin_runtimes(device="cpu")
    assert sorted(runtimes) == ["onnx", "pytorch", "torchscript"]
    assert runtimes["pytorch"] is runtimes["torchscript"]


def test_factory_without_torch_omits_its_types(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` raises ImportError
    with caplog.at_level(logging.DEBUG, logger="runtime_adapter.factory"):
        repo = build_repository(capacity_bytes=CAPACITY, device="cpu")
    assert repo.model_types == ["onnx"]
    assert any("pytorch" in r.getMessage() for r in caplog.records)


# --------------------------------------------------------------------------- end to end


def test_torchscript_model_through_a_sidecar(start_sidecar, runtime_mode, models: dict[str, Path]) -> None:
    sidecar = start_sidecar(runtime_mode)
    register(sidecar.address, "torch-add", models["pytorch"].parent, type="pytorch")
    client = triton.InferenceServerClient(sidecar.address)
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    inp = triton.InferInput("x", [3, 4], "FP32")
    inp.set_data_from_numpy(x)
    result = client.infer("torch-add", [inp], request_id="t-1")
    np.testing.assert_array_equal(result.as_numpy("y"), x + 1)
    meta = client.get_model_metadata("torch-add")
    assert meta.platform == "pytorch_libtorch"
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.inputs] == [("x", "FP32", [-1, 4])]
