"""vModels across two sidecars: transitions load the target to the active
model's copy count before the alias flips; a failing target leaves the old
model serving; deletion releases references (and auto-delete models)."""

from __future__ import annotations


import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton
from tritonclient.utils import InferenceServerException

from protos import model_mesh_pb2 as mm
from tests.helpers import management, register, status, wait_for

V = mm.VModelStatusInfo




def infer(address: str, name: str = "", headers=None) -> np.ndarray:
    inp = triton.InferInput("x", [1, 64], "FP32")
    inp.set_data_from_numpy(np.ones((1, 64), np.float32))
    return triton.InferenceServerClient(address).infer(name, [inp], headers=headers).as_numpy("y")


def loaded_on(sidecars, model_id: str) -> set[str]:
    return {s.settings.instance_id for s in sidecars if s.loader.try_peek(model_id)}


def set_vmodel(address: str, vmodel_id: str, target: str, path=None, **flags) -> mm.VModelStatusInfo:
    request = mm.SetVModelRequest(vModelId=vmodel_id, targetModelId=target, **flags)
    if path is not None:
        request.modelInfo.CopyFrom(mm.ModelInfo(type="onnx", path=str(path)))
    return management(address).setVModel(request, timeout=120)


@pytest.fixture
def pair(start_sidecar):
    a, b = start_sidecar(), start_sidecar()
    wait_for(lambda: len(a.instances) == 2 and len(b.instances) == 2, what="instances")
    return a, b


def test_transition_loads_target_to_same_scale_then_flips(pair, models_dir):
    a, b = pair
    register(a.address, "m1", models_dir / "dense-1")
    info = set_vmodel(a.address, "v", "m1")
    assert info.status == V.DEFINED and info.activeModelId == "m1"
    # two copies of the active model: one on each instance
    for s in pair:
        management(s.address).ensureLoaded(mm.EnsureLoadedRequest(modelId="m1", sync=True), timeout=60)
    wait_for(lambda: len(b.view.get("m1").instances) == 2, what="both copies recorded")
    before = infer(a.address, headers={"mm-vmodel-id": "v"})
    np.testing.assert_array_equal(before, infer(b.address, "m1"))

    info = set_vmodel(b.address, "v", "m2", models_dir / "dense-2", autoDeleteTargetModel=True, sync=True)
    assert info.status == V.DEFINED and info.activeModelId == "m2" and info.targetModelId == "m2"
    assert loaded_on(pair, "m2") == {a.settings.instance_id, b.settings.instance_id}  # same scale as m1 had
    after = infer(a.address, headers={"mm-vmodel-id": "v"})
    np.testing.assert_array_equal(after, infer(a.address, "m2"))
    assert not np.array_equal(before, after)
    # the KServe way: the InferenceService (vModel) name in model_name
    np.testing.assert_array_equal(infer(b.address, "v"), after)
    # m1 was registered by hand: kept, now unreferenced
    assert status(a.address, "m1").status != mm.ModelStatusInfo.NOT_FOUND
    assert a.view.get("m1").refs == 0 and a.view.get("m2").refs == 1

    # another auto-delete target: m2 (auto-delete, no refs left) goes after the flip
    set_vmodel(a.address, "v", "m3", models_dir / "dense-3", autoDeleteTargetModel=True, sync=True)
    wait_for(lambda: status(b.address, "m2").status == mm.ModelStatusInfo.NOT_FOUND, what="m2 auto-deleted")
    wait_for(lambda: not loaded_on(pair, "m2"), what="m2 unloaded everywhere")
    assert management(a.address).getVModelStatus(mm.GetVModelStatusRequest(vModelId="v"), timeout=10).activeModelId == "m3"


def test_failed_target_leaves_old_model_serving(pair, models_dir):
    a, b = pair
    register(a.address, "good", models_dir / "dense-0")
    set_vmodel(a.address, "svc", "good")
    good = infer(b.address, "svc")
    info = set_vmodel(a.address, "svc", "broken", models_dir / "not-onnx", sync=True)
    assert info.status == V.TRANSITION_FAILED
    assert info.activeModelId == "good" and info.targetModelId == "broken"
    assert info.targetModelStatus.status == mm.ModelStatusInfo.LOADING_FAILED
    for s in pair:  # the old model serves throughout
        np.testing.assert_array_equal(infer(s.address, headers={"mm-vmodel-id": "svc"}), good)
    # re-targeting back to the active model ends the transition
    info = set_vmodel(b.address, "svc", "good")
    assert info.status == V.DEFINED and info.activeModelId == "good"
    wait_for(lambda: a.view.get("broken").refs == 0, what="broken target released")
    assert a.view.get("good").refs == 1  # one alias, one reference


def test_delete_and_references(pair, models_dir):
    a, b = pair
    register(a.address, "base", models_dir / "dense-4")
    set_vmodel(a.address, "alias", "base")
    stub = management(b.address)
    with pytest.raises(grpc.RpcError) as err:
        stub.unregisterModel(mm.UnregisterModelRequest(modelId="base"), timeout=10)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    with pytest.raises(grpc.RpcError) as err:  # another owner may not take the alias
        stub.setVModel(mm.SetVModelRequest(vModelId="alias", targetModelId="base", owner="someone"), timeout=10)
    assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS
    with pytest.raises(grpc.RpcError) as err:
        stub.setVModel(mm.SetVModelRequest(vModelId="alias", targetModelId="missing"), timeout=10)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.RpcError) as err:
        stub.setVModel(mm.SetVModelRequest(vModelId="new", targetModelId="base", updateOnly=True), timeout=10)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND

    stub.deleteVModel(mm.DeleteVModelRequest(vModelId="alias"), timeout=10)
    assert stub.getVModelStatus(mm.GetVModelStatusRequest(vModelId="alias"), timeout=10).status == V.NOT_FOUND
    wait_for(lambda: a.vmodel_view.get("alias") is None, what="delete to reach the other sidecar")
    with pytest.raises(InferenceServerException) as err:
        infer(a.address, headers={"mm-vmodel-id": "alias"})
    assert err.value.status() == "StatusCode.NOT_FOUND"
    # no reference left: it can be unregistered now
    stub.unregisterModel(mm.UnregisterModelRequest(modelId="base"), timeout=10)
    assert status(a.address, "base").status == mm.ModelStatusInfo.NOT_FOUND
