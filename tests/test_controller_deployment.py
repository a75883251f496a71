"""What the controller writes is what the API server keeps: rendered
Deployments/Services round-trip through the official client's models, and
the InferenceService status it writes survives our CRD's schema (a field
outside it would be pruned silently)."""

from __future__ import annotations

import copy

import pytest

from mesh.controller.deployment import InvalidRuntime, PodSettings, render_deployment, render_service, spec_hash
from mesh.controller.status import Endpoints, problem_status, serving_status
from protos import model_mesh_pb2 as mm
from tests.test_manifests import DEPLOY, crd_schemas, objects, round_trip, validate_custom_object

SETTINGS = PodSettings(namespace="modelmesh-serving", image="mmesh:0.1.0")
RUNTIMES = [obj for path in sorted((DEPLOY / "runtimes").glob("*.yaml")) for obj in objects(path)
            if obj.get("kind") == "ClusterServingRuntime"]
RUNTIMES += [obj for obj in objects(DEPLOY / "examples" / "servingruntime-custom.yaml") if obj.get("kind") == "ServingRuntime"]


@pytest.mark.parametrize("runtime", RUNTIMES, ids=lambda r: r["metadata"]["name"])
def test_rendered_deployments_round_trip_and_mount_what_runtimes_need(runtime):
    deployment = render_deployment(runtime, SETTINGS)
    assert round_trip(deployment) == []
    pod = deployment["spec"]["template"]["spec"]
    for container in pod["containers"][1:]:  # everything but the mesh sidecar sees /models and the storage config
        mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
        assert mounts["models-dir"] == "/models" and mounts["storage-config"] == "/storage-config"
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert selector.items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    # the Service selects every runtime's pods
    service = render_service(SETTINGS)
    assert round_trip(service) == []
    assert service["spec"]["selector"].items() <= deployment["spec"]["template"]["metadata"]["labels"].items()


def test_the_hash_follows_the_spec_only():
    runtime = RUNTIMES[0]
    first = render_deployment(runtime, SETTINGS)
    assert spec_hash(first) == spec_hash(render_deployment(copy.deepcopy(runtime), SETTINGS))
    changed = copy.deepcopy(runtime)
    changed["spec"]["replicas"] = 4
    assert spec_hash(render_deployment(changed, SETTINGS)) != spec_hash(first)


def test_runtimes_that_cannot_run_are_refused():
    empty = {"kind": "ServingRuntime", "metadata": {"name": "empty"}, "spec": {"multiModel": True}}
    with pytest.raises(InvalidRuntime, match="no containers"):
        render_deployment(empty, SETTINGS)
    odd = copy.deepcopy(empty)
    odd["spec"]["builtInAdapter"] = {"serverType": "ovms"}
    with pytest.raises(InvalidRuntime, match="serverType"):
        render_deployment(odd, SETTINGS)
    unix = copy.deepcopy(RUNTIMES[0])
    unix["spec"]["grpcEndpoint"] = "unix:/tmp/x.sock"
    with pytest.raises(InvalidRuntime, match="port:8085"):
        render_deployment(unix, SETTINGS)


def test_every_status_the_controller_writes_fits_the_crd():
    schemas = crd_schemas()
    ms, vs = mm.ModelStatusInfo, mm.VModelStatusInfo
    failed = vs(status=vs.TRANSITION_FAILED, activeModelId="m__isvc-0123456789", targetModelId="m__isvc-abcdefabcd",
                activeModelStatus=ms(status=ms.LOADED, modelCopyInfos=[ms.ModelCopyInfo(location="p", copyStatus=ms.LOADED, time=1)]),
                targetModelStatus=ms(status=ms.LOADING_FAILED, errors=["boom"],
                                     modelCopyInfos=[ms.ModelCopyInfo(location="p", copyStatus=ms.LOADING_FAILED, time=2)]))
    endpoints = Endpoints("modelmesh-serving", "modelmesh-serving")
    statuses = [
        serving_status(failed, "mmesh-onnx", 2, endpoints, {}),
        problem_status("BlockedByFailedLoad", "NoSupportingRuntime", "none", 1, endpoints, {}),
        problem_status("InvalidSpec", "InvalidPredictorSpec", "bad", 1, endpoints, {}, failed),
    ]
    for status in statuses:
        isvc = {"apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService", "metadata": {"name": "m"},
                "spec": {"predictor": {"model": {"modelFormat": {"name": "onnx"}, "storageUri": "s3://b/m"}}},
                "status": status}
        validate_custom_object(isvc, schemas)
