"""The Triton adapter without a Triton binary: the layouts and config.pbtxt it
writes, safe directory names, and the v2 repository calls it makes, recorded
by a small real gRPC server implementing our v2 servicer on loopback. Also
the parts every external runtime shares: error mapping, STARTING while the
server is away, request checks, process memory and the `--runtime` option."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import grpc
import numpy as np
import psutil
import pytest

from mesh.etcd_process import free_port
from protos import grpc_predict_v2_pb2 as v2
from protos import grpc_predict_v2_pb2_grpc as v2_grpc
from protos import model_runtime_pb2 as spi
from protos.tensor_codec import encode_inputs
from runtime_adapter.__main__ import build, parse_args
from runtime_adapter.errors import AdapterError
from runtime_adapter.external.base import ExternalConfig
from runtime_adapter.external.layout import child_dir, safe_dir_name
from runtime_adapter.external.mlserver import MLServer
from runtime_adapter.external.process_memory import ServerProcess, listening_pid, split_host_port, tree_rss_bytes
from runtime_adapter.external.request_check import check_request
from runtime_adapter.schema import parse_schema
from runtime_adapter.external.triton import BACKENDS, Triton, generated_config, strip_model_name
from runtime_adapter.repository import ModelRepository, RepositoryConfig

READY = spi.RuntimeStatusResponse.READY
STARTING = spi.RuntimeStatusResponse.STARTING
SCHEMA = {
    "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}, {"name": "mask", "datatype": "BOOL", "shape": []}],
    "outputs": [{"name": "y", "datatype": "BYTES", "shape": [-1]}],
}


# --------------------------------------------------------------------------- safe names


@pytest.mark.parametrize("model_id", ["model-1", "resnet50_v2.onnx", "A1"])
def test_plain_ids_are_their_own_dir_name(model_id: str) -> None:
    assert safe_dir_name(model_id) == model_id


@pytest.mark.parametrize("model_id", ["a/b", "../etc", "..", ".", "", ".hidden", "x:1", "sp ace", "é", "trailing.", "x" * 200, "a\x00b"])
def test_unsafe_ids_get_a_safe_distinct_name(model_id: str, tmp_path: Path) -> None:
    name = safe_dir_name(model_id)
    assert name != model_id
    assert all(c.isascii() and (c.isalnum() or c in "._-") for c in name)
    assert name[0].isalnum() and len(name) <= 128
    assert child_dir(tmp_path, name).parent == tmp_path
    assert safe_dir_name(model_id) == name  # stable


def test_similar_unsafe_ids_do_not_collide() -> None:
    ids = ["a/b", "a:b", "a b", "a_b", "a/b/", "A/b"]
    assert len({safe_dir_name(i) for i in ids}) == len(ids)


@pytest.mark.parametrize("name", ["..", ".", "", "a/b", "../x"])
def test_child_dir_refuses_to_leave_the_root(name: str, tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        child_dir(tmp_path / "root", name)


# --------------------------------------------------------------------------- config.pbtxt


def test_strip_model_name_keeps_tensor_names_comments_and_strings() -> None:
    config = (
        '# name: "in a comment"\n'
        'name: "old-name"\n'
        'platform: "onnxruntime_onnx"\n'
        'max_batch_size: 8\n'
        'input [ { name: "x" data_type: TYPE_FP32 dims: [ 4 ] } ]\n'
        'output { name: "y"\n data_type: TYPE_FP32 dims: [ 4 ] }\n'
        'parameters { key: "name" value: { string_value: "name: \\"q\\"" } }\n'
        "model_name: 'kept'\n"
    )
    stripped = strip_model_name(config)
    assert '"old-name"' not in stripped
    assert stripped == config.replace('name: "old-name"', "")


def test_strip_model_name_on_one_line() -> None:
    assert strip_model_name("name:'m', backend: \"onnxruntime\"") == ' backend: "onnxruntime"'
    assert strip_model_name('backend: "pytorch" name : "m"') == 'backend: "pytorch" '


def test_generated_config_maps_the_schema() -> None:
    assert generated_config(BACKENDS["onnx"], parse_schema(SCHEMA)) == (
        'backend: "onnxruntime"\n'
        "max_batch_size: 0\n"
        "input [\n"
        "  {\n"
        '    name: "x"\n'
        "    data_type: TYPE_FP32\n"
        "    dims: [ -1, 4 ]\n"
        "  },\n"
        "  {\n"
        '    name: "mask"\n'
        "    data_type: TYPE_BOOL\n"
        "    dims: [ 1 ]\n"
        "    reshape: { shape: [ ] }\n"
        "  }\n"
        "]\n"
        "output [\n"
        "  {\n"
        '    name: "y"\n'
        "    data_type: TYPE_STRING\n"
        "    dims: [ -1 ]\n"
        "  }\n"
        "]\n"
    )


def test_generated_config_without_schema_is_minimal() -> None:
    assert generated_config(BACKENDS["pytorch"], None) == 'backend: "pytorch"\nmax_batch_size: 0\n'
    assert generated_config(BACKENDS["tensorflow"], None) == (
        'backend: "tensorflow"\nplatform: "tensorflow_savedmodel"\nmax_batch_size: 0\n'
    )


@pytest.mark.parametrize("doc, fragment", [
    ({"inputs": [{"name": "x", "datatype": "FLOAT", "shape": [1]}]}, "inputs[0].datatype"),
    ({"inputs": [{"name": "", "datatype": "FP32", "shape": [1]}]}, "inputs[0].name"),
    ({"outputs": [{"name": "y", "datatype": "FP32", "shape": [1.5]}]}, "outputs[0].shape"),
    ({"inputs": {"name": "x"}}, "inputs must be a list"),
    ([], "not a JSON object"),
])
def test_bad_schemas_are_rejected(doc: object, fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment.replace("[", r"\[").replace("]", r"\]")):
        parse_schema(doc)


# --------------------------------------------------------------------------- a recording v2 server


@dataclass
class Recorder(v2_grpc.GRPCInferenceServiceServicer):
    """Answers like Triton in explicit mode and records what it was asked."""

    calls: list[tuple[str, str]] = field(default_factory=list)
    ready: bool = True
    loaded: set[str] = field(default_factory=set)
    index: list[tuple[str, str]] = field(default_factory=list)  # extra (name, state) rows
    fail_load: tuple[grpc.StatusCode, str] | None = None
    fail_unload: grpc.StatusCode | None = None
    last_infer: v2.ModelInferRequest | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    def _record(self, method: str, arg: str = "") -> None:
        with self.lock:
            self.calls.append((method, arg))

    def ServerReady(self, request, context):
        self._record("ServerReady")
        return v2.ServerReadyResponse(ready=self.ready)

    def ServerMetadata(self, request, context):
        self._record("ServerMetadata")
        return v2.ServerMetadataResponse(name="triton", version="2.50.0")

    def RepositoryIndex(self, request, context):
        self._record("RepositoryIndex", f"ready={request.ready}")
        rows = [(name, "READY") for name in sorted(self.loaded)] + self.index
        index = v2.RepositoryIndexResponse.ModelIndex
        return v2.RepositoryIndexResponse(
            models=[index(name=n, state=s) for n, s in rows if s == "READY" or not request.ready]
        )

    def RepositoryModelLoad(self, request, context):
        self._record("RepositoryModelLoad", request.model_name)
        if self.fail_load:
            context.abort(*self.fail_load)
        self.loaded.add(request.model_name)
        return v2.RepositoryModelLoadResponse()

    def RepositoryModelUnload(self, request, context):
        self._record("RepositoryModelUnload", request.model_name)
        if self.fail_unload:
            context.abort(self.fail_unload, "refused")
        if request.model_name not in self.loaded:
            context.abort(grpc.StatusCode.NOT_FOUND, f"no model {request.model_name}")
        self.loaded.discard(request.model_name)
        return v2.RepositoryModelUnloadResponse()

    def ModelInfer(self, request, context):
        self._record("ModelInfer", request.model_name)
        if request.model_name not in self.loaded:
            context.abort(grpc.StatusCode.NOT_FOUND, f"Request for unknown model: '{request.model_name}'")
        self.last_infer = request
        response = v2.ModelInferResponse(model_name=request.model_name, id=request.id)
        response.outputs.add(name="y", datatype="FP32", shape=[1])
        response.raw_output_contents.append(np.float32(7).tobytes())
        return response

    def ModelMetadata(self, request, context):
        self._record("ModelMetadata", request.name)
        return v2.ModelMetadataResponse(name=request.name, platform="onnxruntime_onnx", versions=["1"])


@pytest.fixture
def recorder() -> Iterator[tuple[Recorder, str]]:
    servicer = Recorder()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    v2_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield servicer, f"127.0.0.1:{port}"
    server.stop(grace=None).wait(5)


@pytest.fixture
def models(tmp_path: Path) -> Path:
    """The shared volume, with a few source models under src/."""
    root = tmp_path / "models"
    onnx = root / "src" / "plain"
    onnx.mkdir(parents=True)
    (onnx / "model.onnx").write_bytes(b"\x08\x07" * 500)
    (onnx / "_schema.json").write_text(json.dumps(SCHEMA))
    versions = root / "src" / "versioned"
    for v in ("1", "3", "20"):
        (versions / v).mkdir(parents=True)
        (versions / v / "weights.pt").write_bytes(v.encode() * 10)
    (versions / "notes").mkdir()
    saved = root / "src" / "saved" / "model.savedmodel"
    (saved / "variables").mkdir(parents=True)
    (saved / "saved_model.pb").write_bytes(b"pb")
    native = root / "src" / "native"
    (native / "1").mkdir(parents=True)
    (native / "1" / "model.onnx").write_bytes(b"onnx")
    (native / "config.pbtxt").write_text('name: "original"\nbackend: "onnxruntime"\ninput [ { name: "x" } ]\n')
    (native / "labels.txt").write_text("cat\ndog\n")
    return root


def triton_server(endpoint: str, models: Path, **config: object) -> Triton:
    return Triton(ExternalConfig(endpoint=endpoint, models_dir=models, **config), process=ServerProcess("unix:///none"))


@pytest.fixture
def triton(recorder: tuple[Recorder, str], models: Path) -> Iterator[Triton]:
    server = triton_server(recorder[1], models)
    yield server
    server.close()


def repository(server: Triton | MLServer) -> ModelRepository:
    return ModelRepository(RepositoryConfig(capacity_bytes=1 << 30), server.runtimes(), backing_server=server)


def load(repo: ModelRepository, model_id: str, path: Path, model_type: str) -> int:
    return repo.load(spi.LoadModelRequest(modelId=model_id, modelType=model_type, modelPath=str(path))).sizeInBytes


# --------------------------------------------------------------------------- layouts


def test_generated_layout_for_onnx_with_schema(triton: Triton, models: Path) -> None:
    model = triton.load("team/plain:1", "onnx", models / "src" / "plain")
    folder = models / "_triton_models" / safe_dir_name("team/plain:1")
    assert model.external_name == folder.name and model.directory == folder
    link = folder / "1" / "model.onnx"
    assert link.is_symlink() and link.resolve() == (models / "src" / "plain" / "model.onnx").resolve()
    config = (folder / "config.pbtxt").read_text()
    assert config == generated_config(BACKENDS["onnx"], parse_schema(SCHEMA))
    assert "name:" not in config.split("input [")[0]  # Triton names it after the directory
    disk = sum(f.stat().st_size for f in (models / "src" / "plain").iterdir())
    assert (model.size_bytes, model.size_measured) == (int(disk * 1.25), False)  # no process to measure


def test_generated_layout_picks_the_latest_version(triton: Triton, models: Path) -> None:
    model = triton.load("versioned", "pytorch", models / "src" / "versioned")
    link = model.directory / "1" / "model.pt"
    assert link.resolve() == (models / "src" / "versioned" / "20" / "weights.pt").resolve()
    assert (model.directory / "config.pbtxt").read_text() == 'backend: "pytorch"\nmax_batch_size: 0\n'


def test_generated_layout_for_a_savedmodel(triton: Triton, models: Path) -> None:
    model = triton.load("saved", "tensorflow", models / "src" / "saved")
    assert (model.directory / "1" / "model.savedmodel").resolve() == (models / "src" / "saved" / "model.savedmodel").resolve()


def test_native_layout_links_everything_and_drops_the_name(triton: Triton, models: Path) -> None:
    source = models / "src" / "native"
    model = triton.load("native", "onnx", source)  # a config.pbtxt wins over the type
    entries = sorted(p.name for p in model.directory.iterdir())
    assert entries == ["1", "config.pbtxt", "labels.txt"]
    assert (model.directory / "1").is_symlink() and (model.directory / "labels.txt").is_symlink()
    assert not (model.directory / "config.pbtxt").is_symlink()
    assert (model.directory / "config.pbtxt").read_text() == '\nbackend: "onnxruntime"\ninput [ { name: "x" } ]\n'
    assert (source / "config.pbtxt").read_text().startswith('name: "original"')  # the user's file is untouched


@pytest.mark.parametrize("model_type, subdir, message", [
    ("keras", "plain", "SavedModel"),  # no .h5 conversion
    ("triton", "plain", "config.pbtxt"),  # the native type needs a config
    ("tensorrt", "plain", "no .plan/.engine model file"),
    ("onnx", "missing", "does not exist"),
])
def test_layout_failures_are_failed_precondition_and_leave_nothing(
    triton: Triton, recorder: tuple[Recorder, str], models: Path, model_type: str, subdir: str, message: str
) -> None:
    with pytest.raises(AdapterError) as err:
        triton.load("bad", model_type, models / "src" / subdir)
    assert err.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert message in err.value.message
    assert not (models / "_triton_models" / "bad").exists()
    assert recorder[0].calls == []  # nothing was asked of the server


def test_broken_schema_fails_the_load(triton: Triton, models: Path) -> None:
    (models / "src" / "plain" / "_schema.json").write_text("{not json")
    with pytest.raises(AdapterError) as err:
        triton.load("plain", "onnx", models / "src" / "plain")
    assert err.value.code == grpc.StatusCode.FAILED_PRECONDITION and "_schema.json" in err.value.message


# --------------------------------------------------------------------------- the calls it makes


def test_start_load_infer_metadata_unload_sequence(recorder: tuple[Recorder, str], triton: Triton, models: Path) -> None:
    servicer, _ = recorder
    servicer.loaded = {"left-over"}
    servicer.index = [("broken", "UNAVAILABLE")]
    stale = models / "_triton_models" / "left-over"
    stale.mkdir(parents=True)
    repo = repository(triton)

    status = repo.runtime_status()
    assert status.status == READY
    assert servicer.calls == [
        ("ServerReady", ""), ("RepositoryIndex", "ready=True"), ("RepositoryModelUnload", "left-over"), ("ServerMetadata", ""),
    ]
    assert not stale.exists() and (models / "_triton_models").is_dir()

    servicer.calls.clear()
    load(repo, "a/b", models / "src" / "plain", "onnx")
    name = safe_dir_name("a/b")
    request = v2.ModelInferRequest(model_name="client-name", id="r1")
    encode_inputs(request, {"x": np.ones((1, 4), np.float32)}, raw=True)
    response = repo.infer(request, "a/b")
    assert servicer.last_infer.model_name == name and servicer.last_infer.id == "r1"
    assert servicer.last_infer.raw_input_contents == request.raw_input_contents  # forwarded as it came
    assert response.model_name == "client-name" and request.model_name == "client-name"
    assert repo.metadata("a/b", "client-name").name == "client-name"
    repo.unload("a/b")
    assert servicer.calls == [
        ("RepositoryModelLoad", name), ("ModelInfer", name), ("ModelMetadata", name), ("RepositoryModelUnload", name),
    ]
    assert not (models / "_triton_models" / name).exists()


def test_refused_load_is_failed_precondition_with_the_servers_message(
    recorder: tuple[Recorder, str], triton: Triton, models: Path
) -> None:
    servicer, _ = recorder
    servicer.fail_load = (grpc.StatusCode.INTERNAL, "failed to load 'plain': unexpected inference input 'z'")
    with pytest.raises(AdapterError) as err:
        repository(triton).load(spi.LoadModelRequest(modelId="plain", modelType="onnx", modelPath=str(models / "src" / "plain")))
    assert err.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert "unexpected inference input 'z'" in err.value.message
    # a failed load may leave a half-loaded model: unloaded, and the layout removed
    assert servicer.calls == [("RepositoryModelLoad", "plain"), ("RepositoryModelUnload", "plain")]
    assert not (models / "_triton_models" / "plain").exists()


@pytest.mark.parametrize("code", [grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT])
def test_unload_of_a_model_the_server_lost_is_fine(recorder: tuple[Recorder, str], triton: Triton, models: Path, code) -> None:
    servicer, _ = recorder
    repo = repository(triton)
    load(repo, "plain", models / "src" / "plain", "onnx")
    servicer.fail_unload = code
    repo.unload("plain")
    assert not (models / "_triton_models" / "plain").exists()


def test_unload_that_cannot_reach_the_server_keeps_the_layout_for_the_purge(
    recorder: tuple[Recorder, str], triton: Triton, models: Path
) -> None:
    servicer, _ = recorder
    model = triton.load("plain", "onnx", models / "src" / "plain")
    servicer.fail_unload = grpc.StatusCode.UNAVAILABLE
    with pytest.raises(AdapterError) as err:
        model.close()
    assert err.value.code == grpc.StatusCode.UNAVAILABLE
    assert model.directory.exists()


def test_not_ready_server_is_starting(recorder: tuple[Recorder, str], models: Path) -> None:
    servicer, endpoint = recorder
    servicer.ready = False
    server = triton_server(endpoint, models, startup_wait_s=0.3)
    try:
        assert repository(server).runtime_status().status == STARTING
        servicer.ready = True
        assert repository(server).runtime_status().status == READY
    finally:
        server.close()


def test_unreachable_server_is_starting_then_unavailable(models: Path) -> None:
    server = triton_server(f"127.0.0.1:{free_port()}", models, startup_wait_s=0.2)
    try:
        repo = repository(server)
        assert repo.runtime_status().status == STARTING
        with pytest.raises(AdapterError) as err:
            load(repo, "plain", models / "src" / "plain", "onnx")
        assert err.value.code == grpc.StatusCode.UNAVAILABLE and "unreachable" in err.value.message
        assert not (models / "_triton_models" / "plain").exists()
    finally:
        server.close()


def test_forwarded_errors_keep_their_code(recorder: tuple[Recorder, str], triton: Triton, models: Path) -> None:
    servicer, _ = recorder
    repo = repository(triton)
    load(repo, "plain", models / "src" / "plain", "onnx")
    servicer.loaded.clear()  # the server lost it
    request = v2.ModelInferRequest(model_name="plain")
    encode_inputs(request, {"x": np.ones((1, 4), np.float32)}, raw=False)
    with pytest.raises(AdapterError) as err:
        repo.infer(request, "plain")
    assert err.value.code == grpc.StatusCode.NOT_FOUND and "unknown model" in err.value.message


# --------------------------------------------------------------------------- request checks


def _request(raw: bool) -> v2.ModelInferRequest:
    request = v2.ModelInferRequest(model_name="m")
    encode_inputs(request, {"x": np.ones((2, 3), np.float32), "s": np.array([b"a", b"bc"], dtype=object)}, raw=raw)
    return request


@pytest.mark.parametrize("raw", [False, True])
def test_well_formed_requests_pass(raw: bool) -> None:
    check_request(_request(raw))


@pytest.mark.parametrize("break_it, message", [
    (lambda r: r.inputs[0].shape.append(2), "values for shape"),
    (lambda r: setattr(r.inputs[0], "datatype", "FLOAT32"), "unknown datatype"),
    (lambda r: r.inputs[0].shape.__setitem__(0, -1), "negative dimension"),
])
def test_malformed_typed_requests_are_invalid_argument(break_it, message: str) -> None:
    request = _request(raw=False)
    break_it(request)
    with pytest.raises(AdapterError) as err:
        check_request(request)
    assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT and message in err.value.message


def test_malformed_raw_requests_are_invalid_argument() -> None:
    request = _request(raw=True)
    request.raw_input_contents[0] = request.raw_input_contents[0][:-1]
    with pytest.raises(AdapterError, match="raw bytes"):
        check_request(request)
    request = _request(raw=True)
    del request.raw_input_contents[1]
    with pytest.raises(AdapterError, match="raw_input_contents entries"):
        check_request(request)
    request = _request(raw=True)
    request.inputs[0].contents.fp32_contents.append(1.0)
    with pytest.raises(AdapterError, match="both raw and typed"):
        check_request(request)


# --------------------------------------------------------------------------- process memory


def test_tree_rss_counts_children() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; x = b'1' * (64 << 20); time.sleep(60)"])
    try:
        deadline = time.monotonic() + 30
        while psutil.Process(child.pid).memory_info().rss < 64 << 20:
            assert time.monotonic() < deadline, "child never grew"
            time.sleep(0.01)
        alone = psutil.Process().memory_info().rss
        assert tree_rss_bytes(os.getpid()) >= alone + (64 << 20)
    finally:
        child.kill()
        child.wait(10)
    assert tree_rss_bytes(child.pid) is None


def test_server_process_is_found_by_its_port(recorder: tuple[Recorder, str]) -> None:
    _, endpoint = recorder
    assert ServerProcess(endpoint).pid == os.getpid()  # the recorder listens in this process
    assert ServerProcess(endpoint).rss_bytes() > 0
    assert ServerProcess("unix:///tmp/x.sock").pid is None
    assert ServerProcess("10.255.255.1:8001").pid is None  # not this host
    assert ServerProcess(endpoint, pid=2**22 + 7).pid is None  # a named pid is not replaced


def test_split_host_port_and_listening_pid() -> None:
    assert split_host_port("127.0.0.1:8001") == ("127.0.0.1", 8001)
    assert split_host_port("[::1]:8001") == ("::1", 8001)
    assert split_host_port("dns:///localhost:9") == ("localhost", 9)
    assert split_host_port("unix:///tmp/s") is None and split_host_port("host") is None
    conn = lambda port, status, pid: SimpleNamespace(laddr=SimpleNamespace(port=port), status=status, pid=pid)  # noqa: E731
    conns = [conn(8001, "ESTABLISHED", 5), conn(8001, psutil.CONN_LISTEN, None), conn(8001, psutil.CONN_LISTEN, 42)]
    assert listening_pid(8001, conns) == 42
    assert listening_pid(8002, conns) is None


# --------------------------------------------------------------------------- --runtime


@pytest.mark.parametrize("kind, types", [
    ("triton", {"onnx", "pytorch", "tensorflow", "tensorrt", "keras", "triton"}),
    ("mlserver", {"sklearn", "xgboost", "lightgbm", "mlflow", "mlserver"}),
])
def test_runtime_option_selects_the_external_server(kind: str, types: set[str], tmp_path: Path) -> None:
    args = parse_args(["--runtime", kind, "--runtime-endpoint", "127.0.0.1:1", "--models-dir", str(tmp_path),
                       "--capacity-bytes", "123"])
    repo = build(args)
    assert set(repo.model_types) == types
    assert repo.config.capacity_bytes == 123 and repo.config.max_loading_concurrency == 1


def test_runtime_option_defaults_to_builtin() -> None:
    args = parse_args([])
    assert args.runtime == "builtin" and args.models_dir == Path(os.environ.get("MMESH_MODELS_DIR", "/models"))
    assert "onnx" in build(args).model_types
