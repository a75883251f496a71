"""InferenceService status from the mesh's vModel state: ModelMesh's words,
and the same inputs give the same status (so the controller's own writes
cannot loop)."""

from __future__ import annotations

from mesh.controller.status import Endpoints, problem_status, serving_status
from protos import model_mesh_pb2 as mm

MS, VS = mm.ModelStatusInfo, mm.VModelStatusInfo
ENDPOINTS = Endpoints("modelmesh-serving", "ns")


def copy(status: int, location: str = "pod-a", time: int = 1_700_000_000_000) -> MS.ModelCopyInfo:
    return MS.ModelCopyInfo(location=location, copyStatus=status, time=time)


def loaded_vmodel() -> mm.VModelStatusInfo:
    return VS(status=VS.DEFINED, activeModelId="m__isvc-0123456789", targetModelId="m__isvc-0123456789",
              activeModelStatus=MS(status=MS.LOADED, modelCopyInfos=[copy(MS.LOADED), copy(MS.LOADED, "pod-b")]))


def test_loaded_model_is_ready_with_copies_and_urls():
    status = serving_status(loaded_vmodel(), "mmesh-onnx", 3, ENDPOINTS, {})
    ms = status["modelStatus"]
    assert ms["states"] == {"activeModelState": "Loaded", "targetModelState": ""}
    assert ms["transitionStatus"] == "UpToDate" and ms["copies"] == {"totalCopies": 2, "failedCopies": 0}
    assert ms["runtime"] == "mmesh-onnx" and "lastFailureInfo" not in ms
    assert {c["type"]: c["status"] for c in status["conditions"]} == {"Ready": "True", "PredictorReady": "True"}
    assert status["url"] == "grpc://modelmesh-serving.ns:8033" and status["observedGeneration"] == 3
    assert status["components"]["predictor"]["restUrl"] == "http://modelmesh-serving.ns:8008"


def test_recomputing_from_the_written_status_gives_an_equal_status():
    first = serving_status(loaded_vmodel(), "rt", 1, ENDPOINTS, {})
    assert serving_status(loaded_vmodel(), "rt", 1, ENDPOINTS, first) == first
    failing = problem_status("BlockedByFailedLoad", "NoSupportingRuntime", "none", 1, ENDPOINTS, {})
    assert problem_status("BlockedByFailedLoad", "NoSupportingRuntime", "none", 1, ENDPOINTS, failing) == failing


def test_failed_transition_keeps_the_old_model_serving_and_names_the_failure():
    vmodel = loaded_vmodel()
    vmodel.status = VS.TRANSITION_FAILED
    vmodel.targetModelId = "m__isvc-abcdefabcd"
    vmodel.targetModelStatus.CopyFrom(MS(status=MS.LOADING_FAILED, errors=["object not found: s3://b/broken"],
                                         modelCopyInfos=[copy(MS.LOADING_FAILED, "pod-c", 1_700_000_001_000)]))
    status = serving_status(vmodel, "rt", 2, ENDPOINTS, {})
    ms = status["modelStatus"]
    assert ms["transitionStatus"] == "BlockedByFailedLoad"
    assert ms["states"] == {"activeModelState": "Loaded", "targetModelState": "FailedToLoad"}
    assert ms["lastFailureInfo"] == {
        "reason": "ModelLoadFailed", "message": "object not found: s3://b/broken", "modelRevisionName": "m__isvc-abcdefabcd",
        "location": "pod-c", "time": "2023-11-14T22:13:21Z",
    }
    assert status["conditions"][1] == {"type": "Ready", "status": "True", "lastTransitionTime": status["conditions"][1]["lastTransitionTime"]}


def test_no_runtime_for_a_new_model_is_not_ready_and_says_why():
    status = problem_status("BlockedByFailedLoad", "NoSupportingRuntime", "no usable runtime auto-selects 'x'", 1, ENDPOINTS, {})
    ms = status["modelStatus"]
    assert ms["states"] == {"activeModelState": "FailedToLoad", "targetModelState": ""}
    assert ms["lastFailureInfo"]["reason"] == "NoSupportingRuntime"
    ready = status["conditions"][1]
    assert (ready["status"], ready["reason"], ready["message"]) == ("False", "NoSupportingRuntime", "no usable runtime auto-selects 'x'")


def test_a_problem_with_a_change_leaves_the_served_model_ready():
    status = problem_status("InvalidSpec", "InvalidPredictorSpec", "bad", 2, ENDPOINTS, {}, loaded_vmodel())
    assert status["modelStatus"]["states"] == {"activeModelState": "Loaded", "targetModelState": "FailedToLoad"}
    assert status["conditions"][1]["status"] == "True"
