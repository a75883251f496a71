"""The MLServer adapter against a real MLServer 1.7 process (one per module):
layout, load/infer/metadata/unload through `ModelRepository`, error codes,
the start-up purge, measured sizes, the adapter's own gRPC server as a child
process, and a sidecar in front of it all driven by tritonclient."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton

from mesh.adapter_process import AdapterProcess
from protos import grpc_predict_v2_pb2 as v2
from protos import grpc_predict_v2_pb2_grpc as v2_grpc
from protos import model_runtime_pb2 as spi
from protos import model_runtime_pb2_grpc as spi_grpc
from protos.tensor_codec import decode_outputs, encode_inputs
from runtime_adapter.errors import AdapterError
from runtime_adapter.external.base import ExternalConfig
from runtime_adapter.external.layout import safe_dir_name
from runtime_adapter.external.mlserver import MLServer
from runtime_adapter.external.process_memory import ServerProcess
from runtime_adapter.external.v2_client import V2Client
from runtime_adapter.repository import ModelRepository, RepositoryConfig
from tests import mlserver_process
from tests.helpers import register, status_name
from tests.mlserver_process import MLServerProcess, expected_class, make_sklearn_model

pytestmark = pytest.mark.skipif(
    not mlserver_process.available(), reason="no .venv-mlserver: run scripts/mlserver_env.sh"
)

CAPACITY = 1 << 30
READY = spi.RuntimeStatusResponse.READY
POINTS = np.array([[0.2, 0.2], [0.8, 0.2], [0.2, 0.8], [0.9, 0.9], [0.7, 0.6]], dtype=np.float32)
CLASSES = [expected_class(a, b) for a, b in POINTS]


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def volume(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The models volume the adapter and MLServer share (/models in a pod)."""
    return tmp_path_factory.mktemp("volume")


@pytest.fixture(scope="module")
def tree_dir(volume: Path) -> Path:
    """A bare scikit-learn model: <dir>/model.joblib."""
    return make_sklearn_model(volume / "src" / "tree" / "model.joblib").parent


@pytest.fixture(scope="module")
def native_dir(tree_dir: Path, volume: Path) -> Path:
    """A model dir with its own model-settings.json (relative uri, another
    name) and a KServe schema."""
    folder = volume / "src" / "native"
    folder.mkdir(parents=True)
    (folder / "tree.joblib").symlink_to(tree_dir / "model.joblib")
    (folder / "model-settings.json").write_text(json.dumps({
        "name": "whatever-the-user-called-it",
        "implementation": "mlserver_sklearn.SKLearnModel",
        "parameters": {"uri": "./tree.joblib"},
    }))
    (folder / "_schema.json").write_text(json.dumps({
        "inputs": [{"name": "features", "datatype": "FP32", "shape": [-1, 2]}],
        "outputs": [{"name": "predict", "datatype": "INT64", "shape": [-1, 1]}],
    }))
    return folder


@pytest.fixture(scope="module")
def mlserver(volume: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[MLServerProcess]:
    log = tmp_path_factory.mktemp("logs") / "mlserver.log"
    with MLServerProcess(volume / MLServer.layout_dir_name, log) as server:
        yield server


@pytest.fixture(scope="module")
def direct(mlserver: MLServerProcess) -> Iterator[V2Client]:
    """Our v2 client straight to MLServer, to check what it holds."""
    client = V2Client(mlserver.endpoint, label="mlserver")
    yield client
    client.close()


def make_server(mlserver: MLServerProcess, volume: Path, **config: object) -> MLServer:
    return MLServer(ExternalConfig(endpoint=mlserver.endpoint, models_dir=volume, pid=mlserver.pid, **config))


def make_repository(server: MLServer) -> ModelRepository:
    return ModelRepository(RepositoryConfig(capacity_bytes=CAPACITY), server.runtimes(), backing_server=server)


@pytest.fixture
def server(mlserver: MLServerProcess, volume: Path) -> Iterator[MLServer]:
    server = make_server(mlserver, volume)
    yield server
    server.close()


@pytest.fixture
def repo(server: MLServer) -> Iterator[ModelRepository]:
    repo = make_repository(server)
    assert repo.runtime_status().status == READY
    yield repo
    for model_id in repo.loaded_ids():
        repo.unload(model_id)


def load(repo: ModelRepository, model_id: str, path: Path, model_type: str = "sklearn") -> int:
    request = spi.LoadModelRequest(modelId=model_id, modelType=model_type, modelPath=str(path))
    return repo.load(request).sizeInBytes


def infer_request(name: str, *, raw: bool, input_name: str = "input-0", x: np.ndarray = POINTS) -> v2.ModelInferRequest:
    request = v2.ModelInferRequest(model_name=name, id="req-1")
    encode_inputs(request, {input_name: x}, raw=raw)
    return request


def ready_in_mlserver(direct: V2Client) -> set[str]:
    return {m.name for m in direct.repository_index(ready_only=True)}


def code_of(fn, *args) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(AdapterError) as err:
        fn(*args)
    return err.value.code, err.value.message


# --------------------------------------------------------------------------- through ModelRepository


@pytest.mark.parametrize("raw", [False, True], ids=["typed", "raw"])
def test_load_infer_metadata_unload(repo: ModelRepository, server: MLServer, direct: V2Client, tree_dir: Path, raw: bool) -> None:
    model_id = "team/tree:v1"  # '/' and ':' are not safe in a directory name
    size = load(repo, model_id, tree_dir)
    assert size > 0
    folder = server.root / safe_dir_name(model_id)
    settings = json.loads((folder / "model-settings.json").read_text())
    assert settings == {
        "name": model_id,
        "implementation": "mlserver_sklearn.SKLearnModel",
        "parameters": {"uri": str(tree_dir / "model.joblib")},
    }
    assert model_id in ready_in_mlserver(direct)

    request = infer_request("client-name", raw=raw)
    response = repo.infer(request, model_id)
    assert request.model_name == "client-name"  # restored after forwarding
    assert response.model_name == "client-name" and response.id == "req-1"
    assert bool(response.raw_output_contents) == raw  # MLServer answers in kind
    assert decode_outputs(response)["predict"].ravel().tolist() == CLASSES

    meta = repo.metadata(model_id, "client-name")
    assert meta.name == "client-name"

    repo.unload(model_id)
    assert not folder.exists()
    assert model_id not in ready_in_mlserver(direct)
    assert code_of(repo.infer, infer_request(model_id, raw=raw), model_id)[0] == grpc.StatusCode.NOT_FOUND


def test_native_model_settings_are_renamed_made_absolute_and_get_the_schema(
    repo: ModelRepository, server: MLServer, native_dir: Path
) -> None:
    load(repo, "native", native_dir, model_type="mlserver")
    settings = json.loads((server.root / "native" / "model-settings.json").read_text())
    assert settings["name"] == "native"
    assert settings["parameters"]["uri"] == str(native_dir / "tree.joblib")
    assert settings["inputs"] == [{"name": "features", "datatype": "FP32", "shape": [-1, 2]}]
    meta = repo.metadata("native")
    assert meta.name == "native"
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.inputs] == [("features", "FP32", [-1, 2])]
    response = repo.infer(infer_request("native", raw=True, input_name="features"), "native")
    assert decode_outputs(response)["predict"].ravel().tolist() == CLASSES


def test_errors_have_the_right_codes(repo: ModelRepository, server: MLServer, direct: V2Client, tree_dir: Path, volume: Path) -> None:
    # unknown to the adapter
    assert code_of(repo.infer, infer_request("nope", raw=True), "nope")[0] == grpc.StatusCode.NOT_FOUND
    assert code_of(repo.metadata, "nope")[0] == grpc.StatusCode.NOT_FOUND

    load(repo, "tree", tree_dir)
    # malformed tensors: refused before forwarding, as the built-in runtimes do
    short = infer_request("tree", raw=True)
    short.raw_input_contents[0] = short.raw_input_contents[0][:-4]
    code, message = code_of(repo.infer, short, "tree")
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "raw bytes" in message
    typed = infer_request("tree", raw=False)
    typed.inputs[0].datatype = "FLOAT"
    assert code_of(repo.infer, typed, "tree")[0] == grpc.StatusCode.INVALID_ARGUMENT
    # well-formed but wrong for the model: MLServer's own verdict (1.7 says INTERNAL)
    code, message = code_of(repo.infer, infer_request("tree", raw=True, x=np.zeros((1, 5), np.float32)), "tree")
    assert code == grpc.StatusCode.INTERNAL and "features" in message
    # gone from MLServer behind our back: its NOT_FOUND comes through
    assert direct.unload_model("tree")
    assert code_of(repo.infer, infer_request("tree", raw=True), "tree")[0] == grpc.StatusCode.NOT_FOUND
    repo.unload("tree")  # MLServer's NOT_FOUND on unload is fine

    # refused loads leave nothing behind
    not_joblib = volume / "src" / "garbage" / "model.joblib"
    not_joblib.parent.mkdir(parents=True, exist_ok=True)
    not_joblib.write_bytes(b"not a pickle\n" * 10)
    for model_id, path, model_type in [
        ("garbage", not_joblib.parent, "sklearn"),  # MLServer fails to unpickle it
        ("missing", volume / "src" / "does-not-exist", "sklearn"),
        ("no-settings", tree_dir, "mlserver"),  # native type needs model-settings.json
        ("no-runtime", tree_dir, "xgboost"),  # mlserver_xgboost is not installed there
    ]:
        code, message = code_of(load, repo, model_id, path, model_type)
        assert code == grpc.StatusCode.FAILED_PRECONDITION, (model_id, message)
        assert not (server.root / model_id).exists()
        assert model_id not in repo.loaded_ids()
    assert code_of(load, repo, "wrong-type", tree_dir, "onnx")[0] == grpc.StatusCode.INVALID_ARGUMENT
    assert ready_in_mlserver(direct) == set()


def test_startup_purges_what_mlserver_still_holds(
    mlserver: MLServerProcess, volume: Path, repo: ModelRepository, server: MLServer, direct: V2Client, tree_dir: Path
) -> None:
    load(repo, "left-over", tree_dir)
    stray = server.root / "stray"
    stray.mkdir()
    (stray / "model-settings.json").write_text("{}")
    assert "left-over" in ready_in_mlserver(direct)

    restarted = make_server(mlserver, volume)  # a new adapter: it knows nothing
    try:
        status = make_repository(restarted).runtime_status()
    finally:
        restarted.close()
    assert status.status == READY and status.capacityInBytes == CAPACITY
    assert ready_in_mlserver(direct) == set()
    assert sorted(p.name for p in server.root.iterdir()) == ["settings.json"]  # MLServer's own settings stay
    repo.unload("left-over")  # the old view's unload of a purged model still succeeds


def test_size_is_measured_when_the_server_process_is_visible(
    mlserver: MLServerProcess, volume: Path, server: MLServer, tree_dir: Path
) -> None:
    assert ServerProcess(mlserver.endpoint).pid == mlserver.pid  # found by its listening port
    disk = (tree_dir / "model.joblib").stat().st_size
    estimate = int(disk * 1.25)  # ModelMesh's estimate
    # the first sklearn model of this adapter also pays for MLServer importing
    # scikit-learn (if this MLServer had not yet): reported as the estimate
    first = server.load("first", "sklearn", tree_dir)
    second = server.load("second", "sklearn", tree_dir)
    try:
        assert (first.size_bytes, first.size_measured) == (estimate, False)
        assert second.size_measured and second.size_bytes >= disk
    finally:
        first.close()
        second.close()

    blind = MLServer(ExternalConfig(endpoint=mlserver.endpoint, models_dir=volume),
                     process=ServerProcess("unix:///nowhere"))
    try:
        estimated = make_repository(blind)
        assert load(estimated, "estimated", tree_dir) == estimate
        assert estimated.predict_size(spi.PredictModelSizeRequest(modelType="sklearn", modelPath=str(tree_dir))) == estimate
        estimated.unload("estimated")
    finally:
        blind.close()
    print(f"\nMLServer RSS delta for a second sklearn model: {second.size_bytes} bytes (disk {disk} bytes)")


# --------------------------------------------------------------------------- the adapter process, and a sidecar in front


@pytest.fixture(scope="module")
def adapter(mlserver: MLServerProcess, volume: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[AdapterProcess]:
    sock = tmp_path_factory.mktemp("sock") / "adapter.sock"
    args = ("--runtime", "mlserver", "--runtime-endpoint", mlserver.endpoint, "--models-dir", str(volume))
    process = AdapterProcess(sock, capacity_bytes=CAPACITY, extra_args=args).start()
    yield process
    process.stop()


def test_adapter_process_serves_the_spi_and_v2(adapter: AdapterProcess, mlserver: MLServerProcess, tree_dir: Path) -> None:
    with grpc.insecure_channel(adapter.target) as channel:
        runtime = spi_grpc.ModelRuntimeStub(channel)
        inference = v2_grpc.GRPCInferenceServiceStub(channel)
        status = runtime.runtimeStatus(spi.RuntimeStatusRequest(), timeout=30)
        assert status.status == READY and status.capacityInBytes == CAPACITY
        loaded = runtime.loadModel(
            spi.LoadModelRequest(modelId="via-grpc", modelType="sklearn", modelPath=str(tree_dir)), timeout=60
        )
        assert loaded.sizeInBytes > 0  # measured: the adapter found MLServer by its port
        assert runtime.modelSize(spi.ModelSizeRequest(modelId="via-grpc"), timeout=10).sizeInBytes == loaded.sizeInBytes
        header = (("mm-model-id", "via-grpc"),)
        response = inference.ModelInfer(infer_request("isvc-name", raw=True), metadata=header, timeout=30)
        assert response.model_name == "isvc-name"
        assert decode_outputs(response)["predict"].ravel().tolist() == CLASSES
        assert inference.ModelMetadata(v2.ModelMetadataRequest(name="isvc-name"), metadata=header, timeout=10).name == "isvc-name"
        assert inference.ModelReady(v2.ModelReadyRequest(name="via-grpc"), timeout=10).ready
        runtime.unloadModel(spi.UnloadModelRequest(modelId="via-grpc"), timeout=30)
        with pytest.raises(grpc.RpcError) as err:
            inference.ModelInfer(infer_request("via-grpc", raw=True), timeout=30)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND


def test_sidecar_in_front_of_the_adapter_via_tritonclient(adapter: AdapterProcess, start_sidecar, tree_dir: Path) -> None:
    sidecar = start_sidecar(runtime=adapter.target)
    register(sidecar.address, "sk-tree", tree_dir, type="sklearn")
    client = triton.InferenceServerClient(sidecar.address)
    try:
        inp = triton.InferInput("input-0", list(POINTS.shape), "FP32")
        inp.set_data_from_numpy(POINTS)
        result = client.infer("sk-tree", [inp], request_id="e2e")
        assert result.as_numpy("predict").ravel().tolist() == CLASSES
        assert result.get_response().model_name == "sk-tree"
        assert status_name(sidecar.address, "sk-tree") == "LOADED"
    finally:
        client.close()
