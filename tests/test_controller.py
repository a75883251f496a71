"""The Kubernetes controller end to end: the real `kubernetes` client against
a loopback Kubernetes REST server (tests/kube_api.py), a real etcd, and a
real mesh sidecar serving the models the controller registers.

The sidecar plays the pod of the `mmesh-onnx` ClusterServingRuntime (label
`rt:mmesh-onnx`) and reads models from a PVC mount (`pvc://models/...`)."""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as triton
import yaml

from mesh.controller.controller import Controller
from mesh.controller.predictor import vmodel_of
from mesh.controller.settings import ControllerSettings
from tests.helpers import loads_held, wait_for
from tests.kube_api import FakeKubeApi
from tests.test_tls import pki  # noqa: F401  (a fixture: certificates made for the test)

NS = "modelmesh-serving"
DEPLOY = Path(__file__).resolve().parent.parent / "deploy"


def builtin_runtime(name: str) -> dict[str, Any]:
    for path in sorted((DEPLOY / "runtimes").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc.get("kind") == "ClusterServingRuntime" and doc["metadata"]["name"] == name:
                return doc
    raise LookupError(name)


def isvc(name: str, uri: str, fmt: str = "onnx", **model: Any) -> dict[str, Any]:
    return {
        "apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService",
        "metadata": {"name": name, "namespace": NS, "annotations": {"serving.kserve.io/deploymentMode": "ModelMesh"}},
        "spec": {"predictor": {"model": {"modelFormat": {"name": fmt}, "storageUri": uri, **model}}},
    }


@pytest.fixture
def kube() -> Iterator[FakeKubeApi]:
    with FakeKubeApi(bookmark_interval_s=0.2) as api:
        api.apply("clusterservingruntimes", builtin_runtime("mmesh-onnx"))
        yield api


@pytest.fixture
def mesh(start_sidecar, models_dir: Path):
    """One sidecar of the mmesh-onnx runtime; the PVC `models` is models_dir."""
    return start_sidecar(labels="rt:mmesh-onnx", pvc_mounts_dir=str(models_dir.parent))


@pytest.fixture
def uri(models_dir: Path) -> Callable[[str], str]:
    return lambda model: f"pvc://{models_dir.name}/{model}"


@pytest.fixture
def start_controller(kube: FakeKubeApi, mesh, etcd, loop_thread) -> Iterator[Callable[..., Controller]]:
    started: list[Controller] = []

    def start(identity: str = "controller-a") -> Controller:
        settings = ControllerSettings(
            namespace=NS, identity=identity, etcd_endpoints=etcd.endpoint, kv_prefix=mesh.settings.kv_prefix,
            mesh_endpoint=mesh.address, health_port=0, watch_timeout_s=5, lease_s=2, renew_s=0.3, retry_s=0.2,
            image="mmesh:test",
        )
        async def make() -> Controller:  # built on the loop it runs on
            return await Controller(settings, kube.api_client()).start()

        controller = loop_thread.run(make())
        started.append(controller)
        return controller

    def stop(controller: Controller) -> None:
        if controller in started:
            started.remove(controller)
            loop_thread.run(controller.stop())

    start.stop = stop  # type: ignore[attr-defined]
    yield start
    for controller in reversed(started):
        loop_thread.run(controller.stop())


def model_status(kube: FakeKubeApi, name: str) -> dict[str, Any]:
    obj = kube.get("inferenceservices", name, NS) or {}
    return (obj.get("status") or {}).get("modelStatus") or {}


def states(kube: FakeKubeApi, name: str) -> tuple[str, str, str]:
    ms = model_status(kube, name)
    st = ms.get("states") or {}
    return ms.get("transitionStatus", ""), st.get("activeModelState", ""), st.get("targetModelState", "")


def ready(kube: FakeKubeApi, name: str) -> str:
    conditions = ((kube.get("inferenceservices", name, NS) or {}).get("status") or {}).get("conditions") or []
    return next((c["status"] for c in conditions if c["type"] == "Ready"), "")


def infer_dense(mesh, name: str) -> np.ndarray:
    inp = triton.InferInput("x", [1, 64], "FP32")
    inp.set_data_from_numpy(np.ones((1, 64), np.float32))
    return triton.InferenceServerClient(mesh.address).infer(name, [inp]).as_numpy("y")


def concrete_models(mesh, name: str) -> list[str]:
    return sorted(m for m in mesh.view.ids() if vmodel_of(m) == name)


def events_about(kube: FakeKubeApi, name: str) -> list[dict[str, Any]]:
    return [e for e in kube.list("events", NS) if e["involvedObject"]["name"] == name]


def status_writes(kube: FakeKubeApi) -> int:
    return kube.count("PUT", "inferenceservices", "status") + kube.count("PATCH", "inferenceservices", "status")


# --------------------------------------------------------------------------- tests


def test_an_inference_service_is_registered_loaded_served_and_reported(kube, mesh, uri, start_controller):
    start_controller()
    kube.apply("inferenceservices", isvc("dense", uri("dense-0")))
    wait_for(lambda: states(kube, "dense")[1] == "Loaded", timeout_s=20, what="status Loaded")
    [model_id] = concrete_models(mesh, "dense")
    assert mesh.view.get(model_id).type == "onnx|rt:mmesh-onnx"
    status = kube.get("inferenceservices", "dense", NS)["status"]
    assert status["modelStatus"]["copies"] == {"totalCopies": 1, "failedCopies": 0}
    assert status["modelStatus"]["runtime"] == "mmesh-onnx" and ready(kube, "dense") == "True"
    assert status["url"] == f"grpc://modelmesh-serving.{NS}:8033"
    assert infer_dense(mesh, "dense").shape == (1, 64)  # by the InferenceService's name
    wait_for(lambda: [e["reason"] for e in events_about(kube, "dense")] == ["ModelLoaded"], what="a ModelLoaded Event")
    # the runtime got its Deployment and the namespace its Service
    wait_for(lambda: kube.get("deployments", "modelmesh-serving-mmesh-onnx", NS) is not None, what="Deployment")
    wait_for(lambda: kube.get("services", "modelmesh-serving", NS) is not None, what="Service")


def test_reconciling_a_settled_service_writes_nothing(kube, mesh, uri, start_controller, loop_thread):
    """Status is a function of the mesh's state (times carried over, not
    re-stamped): reconciling everything again, a second later, is a no-op —
    so the controller's own status updates cannot feed a loop."""
    controller = start_controller()
    kube.apply("inferenceservices", isvc("quiet", uri("dense-1")))
    wait_for(lambda: states(kube, "quiet")[1] == "Loaded", timeout_s=20, what="Loaded")
    time.sleep(1.1)  # status times have 1 s resolution: a re-stamped time would differ now
    settled = (status_writes(kube), kube.count("PUT", "deployments"), kube.count("POST", "deployments"))
    assert settled[0] >= 1

    async def requeue() -> None:
        controller.queue_everything()

    loop_thread.run(requeue())
    time.sleep(1.0)
    assert (status_writes(kube), kube.count("PUT", "deployments"), kube.count("POST", "deployments")) == settled


def test_storage_uri_edit_is_a_transition_and_a_broken_uri_leaves_the_old_model_serving(
    kube, mesh, uri, start_controller, loop_thread
):
    start_controller()
    kube.apply("inferenceservices", isvc("edited", uri("dense-0")))
    wait_for(lambda: states(kube, "edited")[1] == "Loaded", timeout_s=20, what="first model Loaded")
    before = infer_dense(mesh, "edited")
    [first] = concrete_models(mesh, "edited")

    with loads_held(mesh, loop_thread):  # the new target cannot finish loading yet
        kube.apply("inferenceservices", isvc("edited", uri("dense-1")))
        wait_for(lambda: states(kube, "edited")[0] == "InProgress", timeout_s=10, what="transition in progress")
        assert states(kube, "edited")[1] == "Loaded" and ready(kube, "edited") == "True"
        np.testing.assert_array_equal(infer_dense(mesh, "edited"), before)  # the old model still answers
    wait_for(lambda: states(kube, "edited") == ("UpToDate", "Loaded", ""), timeout_s=20, what="transition done")
    after = infer_dense(mesh, "edited")
    assert not np.array_equal(after, before)
    wait_for(lambda: first not in mesh.view.ids(), what="old concrete model auto-deleted")

    kube.apply("inferenceservices", isvc("edited", uri("missing-model")))
    wait_for(lambda: states(kube, "edited")[0] == "BlockedByFailedLoad", timeout_s=20, what="failed transition")
    assert states(kube, "edited")[1:] == ("Loaded", "FailedToLoad")
    failure = model_status(kube, "edited")["lastFailureInfo"]
    assert failure["reason"] == "ModelLoadFailed" and "missing-model" in failure["message"]
    assert vmodel_of(failure["modelRevisionName"]) == "edited" and failure["location"]
    assert ready(kube, "edited") == "True"
    np.testing.assert_array_equal(infer_dense(mesh, "edited"), after)


def test_delete_removes_the_vmodel_and_its_model(kube, mesh, uri, start_controller):
    start_controller()
    kube.apply("inferenceservices", isvc("doomed", uri("dense-2")))
    wait_for(lambda: states(kube, "doomed")[1] == "Loaded", timeout_s=20, what="Loaded")
    kube.remove("inferenceservices", "doomed", NS)
    wait_for(lambda: mesh.vmodel_view.get("doomed") is None, what="vModel deleted")
    wait_for(lambda: not concrete_models(mesh, "doomed"), what="concrete model deleted")


def test_a_restarted_controller_converges_without_duplicates(kube, mesh, uri, start_controller):
    first = start_controller()
    kube.apply("inferenceservices", isvc("keep", uri("dense-0")))
    kube.apply("inferenceservices", isvc("drop", uri("dense-1")))
    wait_for(lambda: states(kube, "keep")[1] == "Loaded" and states(kube, "drop")[1] == "Loaded", timeout_s=20, what="both Loaded")
    start_controller.stop(first)
    # while no controller runs: one deleted, one edited, one new
    kube.remove("inferenceservices", "drop", NS)
    kube.apply("inferenceservices", isvc("keep", uri("dense-3")))
    kube.apply("inferenceservices", isvc("new", uri("dense-4")))
    kube.compact()  # and the watch history is gone: the new controller must list
    start_controller("controller-b")
    wait_for(lambda: mesh.vmodel_view.get("drop") is None, timeout_s=20, what="orphan vModel deleted")
    wait_for(lambda: states(kube, "new")[1] == "Loaded", timeout_s=20, what="new Loaded")
    wait_for(lambda: states(kube, "keep") == ("UpToDate", "Loaded", "") and len(concrete_models(mesh, "keep")) == 1,
             timeout_s=20, what="edit applied")
    assert sorted(mesh.vmodel_view.ids()) == ["keep", "new"]
    assert [len(concrete_models(mesh, n)) for n in ("keep", "new", "drop")] == [1, 1, 0]


def test_runtime_priority_is_honoured_and_no_runtime_is_reported(kube, mesh, uri, start_controller):
    faster = copy.deepcopy(builtin_runtime("mmesh-onnx"))
    faster["kind"] = "ServingRuntime"
    faster["metadata"] = {"name": "faster-onnx", "namespace": NS}
    for entry in faster["spec"]["supportedModelFormats"]:
        entry["priority"] = 10
    kube.apply("servingruntimes", faster)
    start_controller()
    kube.apply("inferenceservices", isvc("picky", uri("dense-0")))
    wait_for(lambda: model_status(kube, "picky").get("runtime") == "faster-onnx", timeout_s=10, what="priority choice")
    [model_id] = concrete_models(mesh, "picky")
    assert mesh.view.get(model_id).type == "onnx|rt:faster-onnx"
    # naming the runtime overrides priority
    kube.apply("inferenceservices", isvc("named", uri("dense-1"), runtime="mmesh-onnx"))
    wait_for(lambda: states(kube, "named")[1] == "Loaded", timeout_s=20, what="named runtime Loaded")

    kube.apply("inferenceservices", isvc("tf", "pvc://models/tf", fmt="tensorflow"))
    wait_for(lambda: (model_status(kube, "tf").get("lastFailureInfo") or {}).get("reason") == "NoSupportingRuntime",
             timeout_s=10, what="NoSupportingRuntime")
    assert ready(kube, "tf") == "False" and "tensorflow" in model_status(kube, "tf")["lastFailureInfo"]["message"]
    assert not concrete_models(mesh, "tf")
    # and `kubectl describe isvc tf` lists why, once
    wait_for(lambda: events_about(kube, "tf"), what="an Event")
    [event] = events_about(kube, "tf")
    assert (event["type"], event["reason"], event["involvedObject"]["kind"]) == ("Warning", "NoSupportingRuntime", "InferenceService")


def test_an_invalid_spec_is_reported_and_registers_nothing(kube, mesh, start_controller):
    start_controller()
    bad = isvc("bad", "s3://bucket/x")
    bad["spec"]["predictor"]["model"]["storage"] = {"path": "also/this"}
    kube.apply("inferenceservices", bad)
    wait_for(lambda: states(kube, "bad")[0] == "InvalidSpec", timeout_s=10, what="InvalidSpec")
    assert "exactly one of storageUri and storage.path" in model_status(kube, "bad")["lastFailureInfo"]["message"]
    unsafe = isvc("unsafe", "pvc://models/../etc")
    kube.apply("inferenceservices", unsafe)  # the mesh itself refuses this path: INVALID_ARGUMENT
    wait_for(lambda: states(kube, "unsafe")[0] == "InvalidSpec", timeout_s=10, what="mesh-refused spec")
    assert not concrete_models(mesh, "bad") and not concrete_models(mesh, "unsafe")


def test_an_inference_service_without_the_modelmesh_annotation_is_ignored(kube, mesh, uri, start_controller):
    start_controller()
    plain = isvc("serverless", uri("dense-0"))
    plain["metadata"]["annotations"] = {}
    kube.apply("inferenceservices", plain)
    kube.apply("inferenceservices", isvc("marker", uri("dense-1")))
    wait_for(lambda: states(kube, "marker")[1] == "Loaded", timeout_s=20, what="marker Loaded")
    assert not concrete_models(mesh, "serverless")
    assert "status" not in kube.get("inferenceservices", "serverless", NS)


def test_serving_runtimes_become_deployments_that_follow_their_runtime(kube, mesh, start_controller):
    kube.apply("clusterservingruntimes", builtin_runtime("mlserver-1.x"))
    start_controller()
    name = "modelmesh-serving-mlserver-1.x"
    wait_for(lambda: kube.get("deployments", name, NS) is not None, what="mlserver Deployment")
    deployment = kube.get("deployments", name, NS)
    pod = deployment["spec"]["template"]["spec"]
    containers = {c["name"]: c for c in pod["containers"]}
    assert list(containers) == ["mm", "mlserver-adapter", "mlserver"]
    mm = containers["mm"]
    assert mm["image"] == "mmesh:test" and mm["command"] == ["mmesh", "sidecar"]
    assert {p["name"]: p["containerPort"] for p in mm["ports"]} == {"grpc": 8033, "http": 8008, "prometheus": 2112, "probes": 8089}
    env = {e["name"]: e.get("value") for e in mm["env"]}
    assert env["MM_LABELS"] == "rt:mlserver-1.x" and env["KV_STORE"].startswith("etcd:")
    adapter = containers["mlserver-adapter"]["command"]
    assert adapter[adapter.index("--runtime") + 1] == "mlserver" and "127.0.0.1:8001" in adapter
    for container in ("mlserver-adapter", "mlserver"):
        assert {"name": "models-dir", "mountPath": "/models"} in containers[container]["volumeMounts"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["etcd-config"]["secret"]["secretName"] == "model-serving-etcd"
    assert pod["shareProcessNamespace"] is True  # the adapter measures MLServer's memory
    assert deployment["spec"]["replicas"] == 1

    # an update rolls the Deployment; removal deletes it
    runtime = kube.get("clusterservingruntimes", "mlserver-1.x")
    runtime["spec"]["replicas"] = 3
    kube.apply("clusterservingruntimes", runtime)
    wait_for(lambda: kube.get("deployments", name, NS)["spec"]["replicas"] == 3, what="replicas updated")
    replaced = kube.count("PUT", "deployments")
    kube.remove("deployments", name, NS)  # someone deletes it by hand: it comes back
    wait_for(lambda: kube.get("deployments", name, NS) is not None, what="Deployment recreated")
    kube.remove("clusterservingruntimes", "mlserver-1.x")
    wait_for(lambda: kube.get("deployments", name, NS) is None, what="Deployment deleted")
    assert kube.get("deployments", "modelmesh-serving-mmesh-onnx", NS) is not None
    assert kube.count("PUT", "deployments") == replaced  # no update churn


def test_two_controllers_elect_one_leader_and_fail_over(kube, mesh, uri, start_controller):
    a = start_controller("controller-a")
    b = start_controller("controller-b")
    wait_for(lambda: a.elector.is_leader != b.elector.is_leader, timeout_s=10, what="one leader")
    leader, follower = (a, b) if a.elector.is_leader else (b, a)
    lease = kube.get("leases", "mmesh-controller-leader", NS)
    assert lease["spec"]["holderIdentity"] == leader.settings.identity
    start_controller.stop(leader)  # releases the lease
    wait_for(lambda: follower.elector.is_leader, timeout_s=10, what="failover")
    kube.apply("inferenceservices", isvc("after-failover", uri("dense-0")))
    wait_for(lambda: states(kube, "after-failover")[1] == "Loaded", timeout_s=20, what="served after failover")


VERBS = {"POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}


def granted(rules_docs: list[dict[str, Any]]) -> set[tuple[str, str, str]]:
    return {
        (group, resource, verb)
        for doc in rules_docs if doc.get("kind") in ("Role", "ClusterRole")
        for rule in doc["rules"] for group in rule["apiGroups"] for resource in rule["resources"] for verb in rule["verbs"]
    }


def needed(method: str, path: str) -> tuple[str, str, str]:
    """(apiGroup, resource[/subresource], verb) of one request path."""
    parts = path.strip("/").split("/")
    group, rest = ("", parts[2:]) if parts[0] == "api" else (parts[1], parts[3:])
    if rest and rest[0] == "namespaces":
        rest = rest[2:]
    resource = rest[0] + (f"/{rest[2]}" if len(rest) > 2 else "")
    verb = VERBS.get(method) or ("get" if len(rest) > 1 else "list")
    return group, resource, verb


def test_every_api_call_the_controller_makes_is_granted_by_its_rbac(kube, mesh, uri, start_controller):
    kube.apply("clusterservingruntimes", builtin_runtime("mlserver-1.x"))
    start_controller()
    kube.apply("inferenceservices", isvc("rbac", uri("dense-0")))
    kube.apply("inferenceservices", isvc("rbac-tf", "pvc://models/tf", fmt="tensorflow"))
    wait_for(lambda: states(kube, "rbac")[1] == "Loaded", timeout_s=20, what="Loaded")
    wait_for(lambda: events_about(kube, "rbac-tf"), what="Warning Event")
    runtime = kube.get("clusterservingruntimes", "mlserver-1.x")
    runtime["spec"]["replicas"] = 2
    kube.apply("clusterservingruntimes", runtime)
    wait_for(lambda: kube.get("deployments", "modelmesh-serving-mlserver-1.x", NS)["spec"]["replicas"] == 2, what="update")
    kube.remove("clusterservingruntimes", "mlserver-1.x")
    wait_for(lambda: kube.get("deployments", "modelmesh-serving-mlserver-1.x", NS) is None, what="delete")
    kube.remove("inferenceservices", "rbac", NS)
    wait_for(lambda: mesh.vmodel_view.get("rbac") is None, what="vModel deleted")

    rules = granted(list(yaml.safe_load_all((DEPLOY / "controller" / "rbac.yaml").read_text())))
    calls = {needed(method, path) for method, path in list(kube.requests)}
    assert {("apps", "deployments", "update"), ("apps", "deployments", "delete"),
            ("serving.kserve.io", "inferenceservices/status", "update"), ("", "events", "create")} <= calls
    assert calls - rules == set(), "calls the controller's Role/ClusterRole does not allow"


def test_the_controller_reaches_a_mesh_that_requires_mutual_tls(kube, start_sidecar, models_dir, uri, etcd, loop_thread, pki):
    tls_mesh = start_sidecar(labels="rt:mmesh-onnx", pvc_mounts_dir=str(models_dir.parent), **pki.sidecar("require"))
    settings = ControllerSettings(
        namespace=NS, identity="tls", etcd_endpoints=etcd.endpoint, kv_prefix=tls_mesh.settings.kv_prefix,
        mesh_endpoint=tls_mesh.address, health_port=0, watch_timeout_s=5, lease_s=2, renew_s=0.3, retry_s=0.2,
        mesh_tls_ca=str(pki.ca), mesh_tls_cert=str(pki.client.cert), mesh_tls_key=str(pki.client.key),
    )

    async def make() -> Controller:
        return await Controller(settings, kube.api_client()).start()

    controller = loop_thread.run(make())
    try:
        kube.apply("inferenceservices", isvc("secure", uri("dense-0")))
        wait_for(lambda: states(kube, "secure")[1] == "Loaded", timeout_s=20, what="Loaded over mutual TLS")
    finally:
        loop_thread.run(controller.stop())


def test_vmodels_the_controller_did_not_make_are_left_alone(kube, mesh, uri, models_dir, start_controller):
    from protos import model_mesh_pb2 as mm
    from tests.helpers import management

    management(mesh.address).setVModel(mm.SetVModelRequest(
        vModelId="by-hand", targetModelId="by-hand-model", modelInfo=mm.ModelInfo(type="onnx", path=str(models_dir / "dense-0")),
    ), timeout=30)
    start_controller()
    kube.apply("inferenceservices", isvc("managed", uri("dense-1")))
    wait_for(lambda: states(kube, "managed")[1] == "Loaded", timeout_s=20, what="Loaded")
    assert mesh.vmodel_view.get("by-hand") is not None and "by-hand-model" in mesh.view.ids()
