"""Models in storage served end to end: registered with an S3 or HTTP URI and
a storage-config key, requested through tritonclient, pulled by the adapter's
puller into its content-addressed cache, answered; unloading drops the cache
entry once no other model uses it. A real moto S3 server and a loopback HTTP
server, a real etcd and a real sidecar."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton
from tritonclient.utils import InferenceServerException

from protos import model_mesh_pb2 as mm
from tests.helpers import management, register, status_name, wait_for
from tests.puller_servers import FileServer, MotoS3, S3Proxy

SECRET = "e2e-secret-never-in-status"


@pytest.fixture
def proxy(moto: MotoS3):
    """Counts the object GETs that reach S3."""
    with S3Proxy(moto.url) as p:
        yield p


@pytest.fixture
def bucket(moto: MotoS3, models_dir: Path) -> str:
    name = f"e2e-{uuid.uuid4().hex[:10]}"
    s3 = moto.client()
    s3.create_bucket(Bucket=name)
    s3.upload_file(str(models_dir / "add" / "model.onnx"), name, "models/add/model.onnx")
    s3.upload_file(str(models_dir / "big" / "model.onnx"), name, "models/big/model.onnx")
    return name


@pytest.fixture
def storage_config(tmp_path: Path, proxy: S3Proxy, bucket: str) -> Path:
    """ModelMesh's storage-config secret as Kubernetes mounts it: a file per key."""
    config = tmp_path / "storage-config"
    config.mkdir()
    (config / "localMinIO").write_text(json.dumps({
        "type": "s3", "access_key_id": "test-key", "secret_access_key": SECRET,
        "endpoint_url": proxy.url, "region": "us-east-1", "bucket": bucket,
    }))
    return config


@pytest.fixture
def mesh(start_sidecar, storage_config: Path, tmp_path: Path):
    return start_sidecar(storage_config_dir=str(storage_config), models_dir=str(tmp_path / "models"))


def address(sidecar) -> str:
    return f"127.0.0.1:{sidecar.grpc_port}"


def infer_add(addr: str, model: str) -> np.ndarray:
    client = triton.InferenceServerClient(addr)
    try:
        x = triton.InferInput("x", [1, 4], "FP32")
        x.set_data_from_numpy(np.array([[1, 2, 3, 4]], np.float32))
        return client.infer(model, [x]).as_numpy("y")
    finally:
        client.close()


def register_keyed(addr: str, model_id: str, path: str, key: str) -> mm.ModelStatusInfo:
    request = mm.RegisterModelRequest(modelId=model_id, modelInfo=mm.ModelInfo(type="onnx", path=path, key=key))
    return management(addr).registerModel(request, timeout=30)


def cache_entries(sidecar) -> list:
    return sidecar.runtime.repository.files.puller.cache_entries()


def test_s3_model_served_shared_and_cleaned_up(mesh, proxy: S3Proxy, bucket: str):
    addr = address(mesh)
    register_keyed(addr, "s3-add", f"s3://{bucket}/models/add", "localMinIO")
    # ModelMesh's own form: a path inside the keyed storage, the key as JSON
    register_keyed(
        addr, "s3-add-again", "models/add",
        json.dumps({"storage_key": "localMinIO", "storage_params": {"bucket": bucket}}),
    )
    np.testing.assert_allclose(infer_add(addr, "s3-add"), [[2, 3, 4, 5]])
    np.testing.assert_allclose(infer_add(addr, "s3-add-again"), [[2, 3, 4, 5]])

    # one artifact, one download: the second model found it in the cache
    assert sum(proxy.state.object_gets.values()) == 1
    assert len(cache_entries(mesh)) == 1
    # the measured size went to the registry, where the next pod's placement reads it
    record = mesh.view.get("s3-add")
    assert record.size_bytes > 0 and record.size_bytes == mesh.loader.copies["s3-add"].size_bytes

    stub = management(addr)
    stub.unregisterModel(mm.UnregisterModelRequest(modelId="s3-add-again"), timeout=10)
    wait_for(lambda: "s3-add-again" not in mesh.runtime.repository.loaded_ids(), what="unload")
    assert len(cache_entries(mesh)) == 1, "the other model still uses the artifact"
    stub.unregisterModel(mm.UnregisterModelRequest(modelId="s3-add"), timeout=10)
    wait_for(lambda: not cache_entries(mesh), what="cache entry removed")


def test_missing_object_fails_the_load_clearly(mesh, bucket: str):
    addr = address(mesh)
    register_keyed(addr, "s3-missing", f"s3://{bucket}/models/nothing-here", "localMinIO")
    with pytest.raises(InferenceServerException) as failure:
        infer_add(addr, "s3-missing")
    assert failure.value.status() == "StatusCode.FAILED_PRECONDITION"
    assert "nothing-here" in failure.value.message()
    assert SECRET not in failure.value.message()
    assert status_name(addr, "s3-missing") == "LOADING_FAILED"
    assert not cache_entries(mesh)


def test_unknown_storage_key_fails_without_echoing_secrets(mesh, bucket: str):
    addr = address(mesh)
    register_keyed(addr, "s3-nokey", f"s3://{bucket}/models/add", "no-such-key")
    with pytest.raises(InferenceServerException) as failure:
        infer_add(addr, "s3-nokey")
    assert failure.value.status() == "StatusCode.FAILED_PRECONDITION"
    assert "no-such-key" in failure.value.message()
    assert status_name(addr, "s3-nokey") == "LOADING_FAILED"


@pytest.mark.parametrize(
    "path, key",
    [
        ("s3://bucket/../escape", ""),
        ("pvc://claim/../../etc/passwd", ""),
        ("models/add", "../storage-key"),
        ("models/add", '{"storage_key": '),
        ("ftp://host/model.onnx", ""),
    ],
)
def test_unsafe_or_malformed_locations_are_refused_at_registration(mesh, path: str, key: str):
    addr = address(mesh)
    with pytest.raises(grpc.RpcError) as refused:
        register_keyed(addr, "bad-location", path, key)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert mesh.view.get("bad-location") is None


def test_public_http_model_needs_no_key(mesh, models_dir: Path):
    body = (models_dir / "add" / "model.onnx").read_bytes()
    with FileServer({"/m/model.onnx": body}) as server:
        addr = address(mesh)
        register(addr, "http-add", f"{server.url}/m/model.onnx")
        np.testing.assert_allclose(infer_add(addr, "http-add"), [[2, 3, 4, 5]])
        assert server.state.gets["/m/model.onnx"] == 1


def test_with_a_disk_budget_an_unloaded_artifact_is_kept_for_the_next_load(
    start_sidecar, storage_config: Path, tmp_path: Path, proxy: S3Proxy, bucket: str
):
    mesh = start_sidecar(
        storage_config_dir=str(storage_config), models_dir=str(tmp_path / "models"),
        models_disk_budget_bytes=64 << 20,
    )
    addr = address(mesh)
    register_keyed(addr, "kept", f"s3://{bucket}/models/add", "localMinIO")
    np.testing.assert_allclose(infer_add(addr, "kept"), [[2, 3, 4, 5]])
    management(addr).unregisterModel(mm.UnregisterModelRequest(modelId="kept"), timeout=10)
    wait_for(lambda: "kept" not in mesh.runtime.repository.loaded_ids(), what="unload")
    assert len(cache_entries(mesh)) == 1, "kept within the budget"
    register_keyed(addr, "kept-again", f"s3://{bucket}/models/add", "localMinIO")
    np.testing.assert_allclose(infer_add(addr, "kept-again"), [[2, 3, 4, 5]])
    assert sum(proxy.state.object_gets.values()) == 1, "the second load downloaded nothing"
