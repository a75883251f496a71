"""On-demand loading, size-aware LRU eviction and single-flight loads on one
sidecar, in both runtime modes."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import tritonclient.grpc as triton
from tritonclient.utils import InferenceServerException

from mesh.etcd_process import free_port
from runtime_adapter.runtimes.onnx import SESSION_OVERHEAD_BYTES
from protos import model_mesh_pb2 as mm
from tests.helpers import loads_held, management, metric, register, status, status_name, wait_for


def dense_size(models_dir, i: int) -> int:
    return (models_dir / f"dense-{i}" / "model.onnx").stat().st_size + SESSION_OVERHEAD_BYTES


def infer_dense(client: triton.InferenceServerClient, model_id: str) -> np.ndarray:
    inp = triton.InferInput("x", [1, 64], "FP32")
    inp.set_data_from_numpy(np.ones((1, 64), np.float32))
    return client.infer(model_id, [inp]).as_numpy("y")


def test_lru_eviction_keeps_the_three_most_recent(start_sidecar, runtime_mode, models_dir):
    size = max(dense_size(models_dir, i) for i in range(5))
    capacity = int(size * 3.5)  # room for 3 of the 5
    metrics_port = free_port()
    sidecar = start_sidecar(runtime_mode, capacity_bytes=capacity, metrics_port=metrics_port)
    ids = [f"dense-{i}" for i in range(5)]
    for model_id in ids:
        register(sidecar.address, model_id, models_dir / model_id)
    client = triton.InferenceServerClient(sidecar.address)

    order = ids * 3 + ["dense-1", "dense-0", "dense-4", "dense-1"]
    recent: list[str] = []
    for model_id in order:
        out = infer_dense(client, model_id)
        assert out.shape == (1, 64) and np.isfinite(out).all()
        recent = [m for m in recent if m != model_id] + [model_id]
        expected_loaded = set(recent[-3:])
        loaded = {m for m in ids if status_name(sidecar.address, m) == "LOADED"}
        assert loaded == expected_loaded, f"after {model_id}: loaded {loaded}, want {expected_loaded}"
        assert sidecar.loader.lru.used_bytes <= capacity
        assert len(sidecar.loader.copies) <= 3

    # round-robin over 5 models with room for 3 misses every time (LRU's known
    # worst case): 15 loads; then dense-1 and dense-0 miss, dense-4 and dense-1 hit.
    loads = metric(metrics_port, "modelmesh_loadmodel_milliseconds_count")
    evictions = metric(metrics_port, "modelmesh_model_evicted_total")
    assert loads == 15 + 2
    assert evictions == loads - 3
    assert metric(metrics_port, "modelmesh_instance_used_bytes") <= capacity


def test_fifty_concurrent_first_requests_share_one_load(start_sidecar, loop_thread, runtime_mode, models_dir):
    metrics_port = free_port()
    sidecar = start_sidecar(runtime_mode, metrics_port=metrics_port)
    register(sidecar.address, "dense-0", models_dir / "dense-0")
    client = triton.InferenceServerClient(sidecar.address)
    # the load cannot finish before all 50 requests are waiting for it
    with ThreadPoolExecutor(max_workers=50) as pool:
        with loads_held(sidecar, loop_thread):
            futures = [pool.submit(infer_dense, client, "dense-0") for _ in range(50)]
            wait_for(lambda: metric(metrics_port, "mmesh_requests_waiting_for_load") >= 50, 30, "all requests to wait")
        outputs = [f.result(timeout=60) for f in futures]
    assert len(outputs) == 50
    for out in outputs[1:]:
        np.testing.assert_array_equal(out, outputs[0])
    assert sidecar.loader.load_count == 1
    assert metric(metrics_port, "modelmesh_loadmodel_milliseconds_count") == 1
    assert metric(metrics_port, "modelmesh_cache_miss_milliseconds_count") == 50
    assert metric(metrics_port, "modelmesh_request_size_bytes_count") == 50
    assert metric(metrics_port, "modelmesh_response_size_bytes_count") == 50
    assert metric(metrics_port, "modelmesh_response_size_bytes_sum") >= 50 * 64 * 4  # 64 FP32 out each
    if runtime_mode == "inprocess":
        assert sidecar.runtime.repository.load_count == 1
    info = status(sidecar.address, "dense-0")
    assert [(c.location, c.copyStatus) for c in info.modelCopyInfos] == [(sidecar.settings.instance_id, 3)]


def test_register_with_load_now_and_sync(start_sidecar, models_dir):
    sidecar = start_sidecar()
    info = register(sidecar.address, "dense-2", models_dir / "dense-2", loadNow=True, sync=True)
    assert info.status == 3  # LOADED
    assert sidecar.loader.load_count == 1


def test_copy_state_reaches_the_registry(start_sidecar, loop_thread, models_dir):
    """Other sidecars learn about copies from etcd, written off the request path."""
    sidecar = start_sidecar()
    register(sidecar.address, "dense-3", models_dir / "dense-3")
    infer_dense(triton.InferenceServerClient(sidecar.address), "dense-3")
    loop_thread.run(sidecar.recorder.flush())
    record = loop_thread.run(sidecar.store.get("dense-3"))
    assert set(record.instances) == {sidecar.settings.instance_id}
    assert not record.loading and not record.failures
    assert record.size_bytes == dense_size(models_dir, 3)


def test_unregistered_while_loading_is_unloaded_not_leaked(start_sidecar, loop_thread, models_dir):
    metrics_port = free_port()
    sidecar = start_sidecar(metrics_port=metrics_port)
    register(sidecar.address, "dense-4", models_dir / "dense-4")
    client = triton.InferenceServerClient(sidecar.address)
    with ThreadPoolExecutor(max_workers=1) as pool:
        with loads_held(sidecar, loop_thread):
            pending = pool.submit(infer_dense, client, "dense-4")
            wait_for(lambda: metric(metrics_port, "mmesh_requests_waiting_for_load") >= 1, 30, "the request to wait")
            management(sidecar.address).unregisterModel(mm.UnregisterModelRequest(modelId="dense-4"), timeout=30)
        with pytest.raises(InferenceServerException) as err:
            pending.result(timeout=60)
    assert err.value.status() == "StatusCode.NOT_FOUND"
    assert "dense-4" not in sidecar.runtime.repository.loaded_ids()
    assert sidecar.loader.lru.used_bytes == 0
    # registered again, it loads and serves normally
    register(sidecar.address, "dense-4", models_dir / "dense-4")
    assert infer_dense(client, "dense-4").shape == (1, 64)
    assert status_name(sidecar.address, "dense-4") == "LOADED"
