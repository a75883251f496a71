"""Bad input gets a clear error with the right gRPC status and never changes
the registry: unknown models, malformed tensors, models too big for the
instance, files that are not ONNX, and bad registrations."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton
from tritonclient.utils import InferenceServerException

from mesh.etcd_process import free_port
from protos import grpc_predict_v2_pb2 as v2
from protos import grpc_predict_v2_pb2_grpc as v2_grpc
from protos import model_mesh_pb2 as mm
from tests.helpers import management, metric, register, status, status_name


def registry_snapshot(loop_thread, sidecar) -> dict[str, bytes]:
    """Every registry value as stored in etcd, for before/after comparisons."""
    records, _ = loop_thread.run(sidecar.store.list())
    return {r.model_id: r.to_json() for r in records}


def v2_stub(sidecar) -> v2_grpc.GRPCInferenceServiceStub:
    return v2_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(sidecar.address))


def call_code(fn, *args) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as err:
        fn(*args, timeout=30)
    return err.value.code(), err.value.details()


@pytest.fixture
def mesh(start_sidecar, runtime_mode, models_dir):
    size_of_big = (models_dir / "big" / "model.onnx").stat().st_size
    capacity = size_of_big // 2  # the dense models fit, "big" never does
    sidecar = start_sidecar(runtime_mode, capacity_bytes=capacity, metrics_port=free_port())
    for model_id in ("add", "big", "not-onnx", "dense-0"):
        register(sidecar.address, model_id, models_dir / model_id)
    return sidecar


def test_unknown_model_is_not_found(mesh, loop_thread):
    before = registry_snapshot(loop_thread, mesh)
    client = triton.InferenceServerClient(mesh.address)
    inp = triton.InferInput("x", [1, 4], "FP32")
    inp.set_data_from_numpy(np.zeros((1, 4), np.float32))
    with pytest.raises(InferenceServerException) as err:
        client.infer("nobody", [inp])
    assert err.value.status() == "StatusCode.NOT_FOUND"
    assert "nobody" in err.value.message()
    code, _ = call_code(v2_stub(mesh).ModelMetadata, v2.ModelMetadataRequest(name="nobody"))
    assert code == grpc.StatusCode.NOT_FOUND
    code, _ = call_code(v2_stub(mesh).ModelReady, v2.ModelReadyRequest(name="nobody"))
    assert code == grpc.StatusCode.NOT_FOUND
    assert status(mesh.address, "nobody").status == mm.ModelStatusInfo.NOT_FOUND
    assert registry_snapshot(loop_thread, mesh) == before


MALFORMED = {
    "raw length": lambda r: (r.inputs.add(name="x", datatype="FP32", shape=[1, 4]), r.raw_input_contents.append(b"\0" * 15)),
    "typed count": lambda r: r.inputs.add(name="x", datatype="FP32", shape=[1, 4]).contents.fp32_contents.extend([1.0] * 3),
    "datatype": lambda r: r.inputs.add(name="x", datatype="FLOAT99", shape=[1, 4]),
    "negative dim": lambda r: r.inputs.add(name="x", datatype="FP32", shape=[-1, 4]),
    "raw count": lambda r: (r.inputs.add(name="x", datatype="FP32", shape=[1, 1]), r.raw_input_contents.extend([b"\0" * 4] * 2)),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_tensor_is_invalid_argument_and_costs_no_load(mesh, loop_thread, case):
    before = registry_snapshot(loop_thread, mesh)
    request = v2.ModelInferRequest(model_name="add")
    MALFORMED[case](request)
    code, details = call_code(v2_stub(mesh).ModelInfer, request)
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "'x'" in details  # names the tensor
    assert status_name(mesh.address, "add") == "NOT_LOADED"  # rejected before loading
    assert registry_snapshot(loop_thread, mesh) == before


def test_tensors_that_do_not_fit_the_model_are_invalid_argument(mesh):
    stub = v2_stub(mesh)
    cases = {
        "wrong name": ("z", "FP32", [1, 4]),
        "wrong datatype": ("x", "INT32", [1, 4]),
        "wrong shape": ("x", "FP32", [1, 5]),
    }
    for label, (name, datatype, shape) in cases.items():
        request = v2.ModelInferRequest(model_name="add")
        request.inputs.add(name=name, datatype=datatype, shape=shape)
        count = int(np.prod(shape))
        request.raw_input_contents.append(b"\0" * (4 * count))
        code, details = call_code(stub.ModelInfer, request)
        assert code == grpc.StatusCode.INVALID_ARGUMENT, label
        assert repr(name) in details, (label, details)
    # and the model still serves good requests afterwards
    good = v2.ModelInferRequest(model_name="add")
    good.inputs.add(name="x", datatype="FP32", shape=[1, 4]).contents.fp32_contents.extend([0, 0, 0, 0])
    assert list(stub.ModelInfer(good, timeout=30).outputs[0].contents.fp32_contents) == [1, 1, 1, 1]


def test_model_larger_than_capacity_is_resource_exhausted(mesh, loop_thread):
    client = triton.InferenceServerClient(mesh.address)
    client.infer("add", [_add_input()])  # something loaded, to check nothing is evicted for nothing
    loop_thread.run(mesh.recorder.flush())  # its copy state is written asynchronously
    before = registry_snapshot(loop_thread, mesh)
    inp = triton.InferInput("x", [1, 512], "FP32")
    inp.set_data_from_numpy(np.zeros((1, 512), np.float32))
    with pytest.raises(InferenceServerException) as err:
        client.infer("big", [inp])
    assert err.value.status() == "StatusCode.RESOURCE_EXHAUSTED"
    assert "capacity" in err.value.message()
    assert status_name(mesh.address, "big") == "NOT_LOADED"
    assert status_name(mesh.address, "add") == "LOADED"
    loop_thread.run(mesh.recorder.flush())
    assert registry_snapshot(loop_thread, mesh) == before


def _add_input() -> triton.InferInput:
    inp = triton.InferInput("x", [1, 4], "FP32")
    inp.set_data_from_numpy(np.zeros((1, 4), np.float32))
    return inp


def test_file_that_is_not_onnx_fails_the_load_and_backs_off(mesh, loop_thread):
    client = triton.InferenceServerClient(mesh.address)
    others_before = {k: v for k, v in registry_snapshot(loop_thread, mesh).items() if k != "not-onnx"}
    with pytest.raises(InferenceServerException) as err:
        client.infer("not-onnx", [_add_input()])
    assert err.value.status() == "StatusCode.FAILED_PRECONDITION"
    assert "not a loadable ONNX model" in err.value.message()
    info = status(mesh.address, "not-onnx")
    assert info.status == mm.ModelStatusInfo.LOADING_FAILED
    assert any("not a loadable ONNX model" in e for e in info.errors)
    # within the back-off the next request fails fast, without a second attempt
    with pytest.raises(InferenceServerException) as err:
        client.infer("not-onnx", [_add_input()])
    assert err.value.status() == "StatusCode.FAILED_PRECONDITION"
    assert "back-off" in err.value.message()
    assert metric(mesh.metrics_port, "modelmesh_loadmodel_failure_total") == 1
    # the failure is recorded in the model's own record only
    loop_thread.run(mesh.recorder.flush())
    after = registry_snapshot(loop_thread, mesh)
    record = loop_thread.run(mesh.store.get("not-onnx"))
    assert mesh.settings.instance_id in record.failures
    assert {k: v for k, v in after.items() if k != "not-onnx"} == others_before


def test_bad_registrations(mesh, loop_thread, models_dir):
    stub = management(mesh.address)
    before = registry_snapshot(loop_thread, mesh)
    code, details = call_code(stub.registerModel, mm.RegisterModelRequest(modelId="", modelInfo=mm.ModelInfo(type="onnx")))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    code, details = call_code(stub.registerModel, mm.RegisterModelRequest(modelId="m", modelInfo=mm.ModelInfo(path="/x")))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "type" in details
    different = mm.RegisterModelRequest(modelId="add", modelInfo=mm.ModelInfo(type="onnx", path=str(models_dir / "echo")))
    code, details = call_code(stub.registerModel, different)
    assert code == grpc.StatusCode.ALREADY_EXISTS
    assert registry_snapshot(loop_thread, mesh) == before
    # re-registering the same definition is idempotent
    same = mm.RegisterModelRequest(modelId="add", modelInfo=mm.ModelInfo(type="onnx", path=str(models_dir / "add")))
    assert stub.registerModel(same, timeout=30).status == mm.ModelStatusInfo.NOT_LOADED
    assert registry_snapshot(loop_thread, mesh) == before


def test_unregister_unloads_and_forgets(mesh, loop_thread):
    client = triton.InferenceServerClient(mesh.address)
    client.infer("add", [_add_input()])
    management(mesh.address).unregisterModel(mm.UnregisterModelRequest(modelId="add"), timeout=30)
    assert status(mesh.address, "add").status == mm.ModelStatusInfo.NOT_FOUND
    with pytest.raises(InferenceServerException) as err:
        client.infer("add", [_add_input()])
    assert err.value.status() == "StatusCode.NOT_FOUND"
    assert "add" not in registry_snapshot(loop_thread, mesh)
    assert "dense-0" in registry_snapshot(loop_thread, mesh)


def test_request_without_a_model_name(mesh):
    request = v2.ModelInferRequest()
    request.inputs.add(name="x", datatype="FP32", shape=[1, 4]).contents.fp32_contents.extend([0, 0, 0, 0])
    code, details = call_code(v2_stub(mesh).ModelInfer, request)
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "model" in details
