"""A real etcd, a real sidecar and a real runtime adapter (in-process and over
a Unix socket), driven by tritonclient.grpc and by the KServe SDK's client."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tritonclient.grpc as triton
from tritonclient.utils import InferenceServerException

from protos import grpc_predict_v2_pb2 as v2
from protos import grpc_predict_v2_pb2_grpc as v2_grpc
from tests.helpers import register, status_name


@pytest.fixture
def mesh(start_sidecar, runtime_mode, models_dir):
    sidecar = start_sidecar(runtime_mode)
    register(sidecar.address, "add", models_dir / "add")
    register(sidecar.address, "echo", models_dir / "echo")
    return sidecar


def test_server_and_model_metadata_via_tritonclient(mesh):
    client = triton.InferenceServerClient(mesh.address)
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.get_server_metadata().name == "mmesh"
    assert client.is_model_ready("add")  # registered = servable on demand
    meta = client.get_model_metadata("add")
    assert meta.name == "add"
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.inputs] == [("x", "FP32", [-1, 4])]
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.outputs] == [("y", "FP32", [-1, 4])]
    assert status_name(mesh.address, "add") == "LOADED"  # metadata needed the model


def test_infer_raw_tensors_via_tritonclient(mesh):
    client = triton.InferenceServerClient(mesh.address)
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    inp = triton.InferInput("x", [3, 4], "FP32")
    inp.set_data_from_numpy(x)
    result = client.infer("add", [inp], request_id="r-1")
    np.testing.assert_array_equal(result.as_numpy("y"), x + 1)
    assert result.get_response().id == "r-1"

    text = np.array([b"hello", "wörld".encode()], dtype=object)
    inp = triton.InferInput("text", [2], "BYTES")
    inp.set_data_from_numpy(text)
    out = client.infer("echo", [inp]).as_numpy("echo")
    assert out.tolist() == [b"hello", "wörld".encode()]


def test_infer_typed_tensors_via_raw_grpc_stub(mesh):
    import grpc

    stub = v2_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(mesh.address))
    request = v2.ModelInferRequest(model_name="add")
    tensor = request.inputs.add(name="x", datatype="FP32", shape=[1, 4])
    tensor.contents.fp32_contents.extend([1.5, 2.5, 3.5, 4.5])
    response = stub.ModelInfer(request, timeout=30)
    assert not response.raw_output_contents  # typed in, typed out
    assert list(response.outputs[0].contents.fp32_contents) == [2.5, 3.5, 4.5, 5.5]


def test_headers_name_the_model(mesh):
    """mm-model-id wins over model_name, as in ModelMesh."""
    client = triton.InferenceServerClient(mesh.address)
    inp = triton.InferInput("x", [1, 4], "FP32")
    inp.set_data_from_numpy(np.zeros((1, 4), np.float32))
    result = client.infer("no-such-model", [inp], headers={"mm-model-id": "add"})
    np.testing.assert_array_equal(result.as_numpy("y"), np.ones((1, 4), np.float32))
    with pytest.raises(InferenceServerException) as err:
        client.infer("add", [inp], headers={"mm-model-id": "missing"})
    assert err.value.status() == "StatusCode.NOT_FOUND"


KSERVE_CLIENT = textwrap.dedent(
    """
    import asyncio, json, sys
    import numpy as np
    from kserve import InferenceGRPCClient, InferInput, InferRequest

    async def main(address):
        client = InferenceGRPCClient(address, timeout=60)
        try:
            live = await client.is_server_live()
            ready = await client.is_model_ready("add")
            x = np.array([[1, 2, 3, 4]], dtype=np.float32)
            inp = InferInput(name="x", shape=[1, 4], datatype="FP32")
            inp.set_data_from_numpy(x, binary_data=False)
            typed = await client.infer(InferRequest(model_name="add", infer_inputs=[inp], request_id="k1"))
            inp2 = InferInput(name="x", shape=[1, 4], datatype="FP32")
            inp2.set_data_from_numpy(x, binary_data=True)
            raw = await client.infer(InferRequest(model_name="add", infer_inputs=[inp2], request_id="k2"))
            print(json.dumps({
                "live": live, "ready": ready,
                "typed": typed.outputs[0].as_numpy().tolist(),
                "raw": raw.outputs[0].as_numpy().tolist(),
            }))
        finally:
            await client.close()

    asyncio.run(main(sys.argv[1]))
    """
)


def test_kserve_sdk_grpc_client(mesh):
    """The KServe SDK registers its own `inference.*` protos in protobuf's
    default pool, as tritonclient does, so it runs in a process of its own."""
    proc = subprocess.run(
        [sys.executable, "-c", KSERVE_CLIENT, mesh.address], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["live"] is True and result["ready"] is True
    assert result["typed"] == [[2.0, 3.0, 4.0, 5.0]]
    assert result["raw"] == [[2.0, 3.0, 4.0, 5.0]]


def test_failed_start_leaves_nothing_running(start_sidecar, loop_thread, etcd):
    """A sidecar that cannot bind its port stops what it had started (etcd
    watches, runtime), instead of leaking tasks into the process."""
    import grpc as grpc_module

    from mesh.settings import MeshSettings
    from mesh.sidecar import Sidecar

    running = start_sidecar()
    port = int(running.address.rsplit(":", 1)[1])
    settings = MeshSettings(
        instance_id="clash", grpc_port=port, metrics_port=0, rest_port=0, probe_port=0, etcd_endpoints=etcd.endpoint,
        kv_prefix=running.settings.kv_prefix, device="cpu",
    )
    clash = Sidecar(settings)
    try:
        loop_thread.run(clash.start())
    except (OSError, RuntimeError, grpc_module.RpcError):
        pass
    else:
        loop_thread.run(clash.stop(grace_s=0))
        raise AssertionError("a second sidecar started on a port in use")
    # what it had started is stopped: the registry watch and its etcd client
    assert clash.view._task is None
    assert clash.store.client.channel is None
    assert "clash" not in running.instances.ids()
