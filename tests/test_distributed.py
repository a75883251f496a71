"""Several sidecars, one etcd: placement across instances, forwarding to
copies, capacity respected everywhere, instance records and the leader."""

from __future__ import annotations

import random

import numpy as np
import onnxruntime as ort
import tritonclient.grpc as triton

from mesh.etcd_process import free_port
from runtime_adapter.runtimes.onnx import SESSION_OVERHEAD_BYTES
from tests.helpers import metric, register, status, wait_for


def expected_outputs(models_dir, x: np.ndarray) -> dict[int, np.ndarray]:
    out = {}
    for i in range(5):
        session = ort.InferenceSession(str(models_dir / f"dense-{i}" / "model.onnx"), providers=["CPUExecutionProvider"])
        out[i] = session.run(None, {"x": x})[0]
    return out




def test_three_sidecars_thirty_models_random_traffic(start_sidecar, loop_thread, models_dir):
    size = max((models_dir / f"dense-{i}" / "model.onnx").stat().st_size for i in range(5)) + SESSION_OVERHEAD_BYTES
    capacity = int(size * 10.5)  # ~10 models per sidecar, 30 models in all: the mesh is full
    ports = [free_port() for _ in range(3)]
    sidecars = [start_sidecar(capacity_bytes=capacity, metrics_port=p) for p in ports]
    wait_for(lambda: all(len(s.instances) == 3 for s in sidecars), what="instances to see each other")
    models = {f"m{k:02d}": k % 5 for k in range(30)}
    for k, (model_id, dense) in enumerate(models.items()):
        register(sidecars[k % 3].address, model_id, models_dir / f"dense-{dense}")

    x = np.linspace(-1, 1, 64, dtype=np.float32).reshape(1, 64)
    want = expected_outputs(models_dir, x)
    clients = [triton.InferenceServerClient(s.address) for s in sidecars]
    rng = random.Random(7)
    for n in range(300):
        model_id = rng.choice(list(models))
        entry = rng.randrange(3)
        inp = triton.InferInput("x", [1, 64], "FP32")
        inp.set_data_from_numpy(x)
        got = clients[entry].infer(model_id, [inp]).as_numpy("y")
        np.testing.assert_allclose(got, want[models[model_id]], rtol=1e-5, atol=1e-6)
        if n % 25 == 0:
            for s in sidecars:
                assert s.loader.lru.used_bytes <= capacity

    for s in sidecars:
        loop_thread.run(s.recorder.flush())
        loaded_here = {m for m, c in s.loader.copies.items() if c.state.name == "LOADED"}
        assert s.loader.lru.used_bytes <= capacity
        assert set(s.runtime.repository.loaded_ids()) == loaded_here  # no copy the mesh forgot
        assert len(loaded_here) <= 10
    # the registry agrees with the loaders: each copy listed once, where it is
    for model_id in models:
        listed = {c.location for c in status(sidecars[0].address, model_id).modelCopyInfos if c.copyStatus == 3}
        actual = {s.settings.instance_id for s in sidecars if model_id in s.loader.copies}
        assert listed == actual, model_id
    forwarded = sum(metric(p, "mmesh_forwarded_requests_total") for p in ports)
    assert forwarded > 0  # some requests were served by another instance
    # with 30 models on 3×10 slots, models spread over all three instances
    assert all(len(s.loader.copies) > 0 for s in sidecars)


def test_request_is_forwarded_to_the_copy(start_sidecar, models_dir):
    a, b = start_sidecar(metrics_port=free_port()), start_sidecar(metrics_port=free_port())
    wait_for(lambda: len(a.instances) == 2 and len(b.instances) == 2, what="instances")
    register(a.address, "fw", models_dir / "dense-1")
    inp = triton.InferInput("x", [1, 64], "FP32")
    inp.set_data_from_numpy(np.ones((1, 64), np.float32))
    first = triton.InferenceServerClient(a.address).infer("fw", [inp]).as_numpy("y")
    assert "fw" in a.loader.copies  # a had room: loaded where the request arrived
    wait_for(lambda: a.settings.instance_id in (b.view.get("fw").instances if b.view.get("fw") else {}), what="copy record")
    second = triton.InferenceServerClient(b.address).infer("fw", [inp]).as_numpy("y")
    np.testing.assert_array_equal(first, second)
    assert "fw" not in b.loader.copies  # b forwarded instead of loading a second copy
    assert metric(b.metrics_port, "mmesh_forwarded_requests_total") == 1


def test_full_instance_places_new_models_on_peers(start_sidecar, models_dir):
    size = (models_dir / "dense-0" / "model.onnx").stat().st_size + SESSION_OVERHEAD_BYTES
    a = start_sidecar(capacity_bytes=int(size * 1.5))
    b = start_sidecar(capacity_bytes=int(size * 5))
    wait_for(lambda: len(a.instances) == 2 and len(b.instances) == 2, what="instances")
    for i in range(3):
        register(a.address, f"p{i}", models_dir / f"dense-{i}")
    client = triton.InferenceServerClient(a.address)
    inp = triton.InferInput("x", [1, 64], "FP32")
    inp.set_data_from_numpy(np.ones((1, 64), np.float32))
    for i in range(3):
        client.infer(f"p{i}", [inp])
    # a holds one model; the rest went to b, which had free space, not evicting a's
    assert len(a.loader.copies) == 1 and "p0" in a.loader.copies
    assert {"p1", "p2"} <= set(b.loader.copies)


def test_instance_records_and_leader(start_sidecar, loop_thread):
    a, b = start_sidecar(), start_sidecar()
    wait_for(lambda: len(a.instances) == 2 and len(b.instances) == 2, what="instances")
    rec = a.instances.get(b.settings.instance_id)
    assert rec.endpoint == b.address and rec.capacity_bytes == b.loader.lru.capacity_bytes
    wait_for(lambda: a.leader.is_leader != b.leader.is_leader, what="exactly one leader")
    leader, follower = (a, b) if a.leader.is_leader else (b, a)
    loop_thread.run(leader.stop())  # graceful: revokes its lease and hands over leadership
    wait_for(lambda: follower.leader.is_leader, timeout_s=10, what="re-election")
    wait_for(lambda: len(follower.instances) == 1, what="stopped instance to leave the view")


def test_type_constraints_restrict_where_models_load(start_sidecar, models_dir):
    """MM_TYPE_CONSTRAINTS: onnx models need the label gpu-pool; only b has it."""
    constraints = '{"onnx": {"required": ["gpu-pool"]}}'
    a = start_sidecar(type_constraints=constraints)
    b = start_sidecar(type_constraints=constraints, labels="gpu-pool")
    wait_for(lambda: len(a.instances) == 2 and len(b.instances) == 2, what="instances")
    assert "mt:onnx" in a.instances.get(b.settings.instance_id).labels  # the built-in runtime's type label
    register(a.address, "constrained", models_dir / "dense-2")
    inp = triton.InferInput("x", [1, 64], "FP32")
    inp.set_data_from_numpy(np.ones((1, 64), np.float32))
    triton.InferenceServerClient(a.address).infer("constrained", [inp])
    assert not a.loader.try_peek("constrained") and b.loader.try_peek("constrained")


def test_a_type_with_a_runtime_label_loads_only_on_that_runtime(start_sidecar, models_dir):
    """`onnx|rt:pool-b` (how the Kubernetes controller pins a model to the
    runtime it chose): only b carries rt:pool-b, and its runtime is asked to
    load format `onnx`, not the labelled string."""
    a = start_sidecar()
    b = start_sidecar(labels="rt:pool-b")
    wait_for(lambda: len(a.instances) == 2 and len(b.instances) == 2, what="instances")
    register(a.address, "pinned", models_dir / "dense-3", type="onnx|rt:pool-b")
    inp = triton.InferInput("x", [1, 64], "FP32")
    inp.set_data_from_numpy(np.ones((1, 64), np.float32))
    triton.InferenceServerClient(a.address).infer("pinned", [inp])
    assert not a.loader.try_peek("pinned") and b.loader.try_peek("pinned")


def test_a_peer_whose_connection_fails_is_passed_over_not_retried_per_request(start_sidecar, loop_thread, models_dir):
    """B's server goes away while its instance record lives on (until its
    lease would expire): the first request that finds B's copy unreachable
    marks B, and the next request for another of B's models goes straight
    to a load elsewhere instead of trying B again."""
    a, b = start_sidecar(), start_sidecar()
    wait_for(lambda: len(a.instances) == 2 and len(b.instances) == 2, what="instances")
    inp = triton.InferInput("x", [1, 64], "FP32")
    inp.set_data_from_numpy(np.ones((1, 64), np.float32))
    for model_id, path in (("on-b-1", "dense-0"), ("on-b-2", "dense-1")):
        register(b.address, model_id, models_dir / path)
        triton.InferenceServerClient(b.address).infer(model_id, [inp])
        wait_for(lambda: b.settings.instance_id in (a.view.get(model_id).instances if a.view.get(model_id) else {}),
                 what="a sees the copy on b")
    loop_thread.run(b.server.stop(0))  # b's gRPC port closes; its record stays

    def retried() -> float:
        return a.metrics.forwarded.labels("retried")._value.get()

    client = triton.InferenceServerClient(a.address)
    client.infer("on-b-1", [inp])
    assert retried() == 1 and not b_reachable(a, b)
    client.infer("on-b-2", [inp])
    assert retried() == 1  # not tried again
    assert a.loader.try_peek("on-b-1") and a.loader.try_peek("on-b-2")


def b_reachable(a, b) -> bool:
    return a.peers.reachable(b.settings.instance_id)
