"""The fake kube-apiserver driven by the real `kubernetes` client: CRUD, optimistic
concurrency, the status subresource, the three patch types, selectors, and
watches (synthetic ADDED, replay, bookmarks, 410 after compaction, dropped
streams). If these pass, code under test that uses the client sees the API
server's protocol, not a mock of it."""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import closing
from itertools import islice
from typing import Any

import pytest
from kubernetes import client, watch
from kubernetes.client import ApiException

from tests.kube_api import FakeKubeApi

GROUP, V1BETA1, V1ALPHA1 = "serving.kserve.io", "v1beta1", "v1alpha1"
NS = "models"
ISVC = (GROUP, V1BETA1, NS, "inferenceservices")


@pytest.fixture
def kube() -> Iterator[FakeKubeApi]:
    with FakeKubeApi(bookmark_interval_s=0.1) as server:
        yield server


@pytest.fixture
def api_client(kube: FakeKubeApi) -> Iterator[client.ApiClient]:
    with kube.api_client() as c:
        yield c


@pytest.fixture
def custom(api_client: client.ApiClient) -> client.CustomObjectsApi:
    return client.CustomObjectsApi(api_client)


@pytest.fixture
def apps(api_client: client.ApiClient) -> client.AppsV1Api:
    return client.AppsV1Api(api_client)


@pytest.fixture
def core(api_client: client.ApiClient) -> client.CoreV1Api:
    return client.CoreV1Api(api_client)


def isvc(name: str, labels: dict[str, str] | None = None, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": f"{GROUP}/{V1BETA1}", "kind": "InferenceService",
            "metadata": {"name": name, "labels": labels or {}},
            "spec": spec or {"predictor": {"model": {"modelFormat": {"name": "onnx"}}}},
            "status": {"ignored": "on create"}}


def deployment(name: str, replicas: int = 1) -> client.V1Deployment:
    labels = {"app": name}
    return client.V1Deployment(
        metadata=client.V1ObjectMeta(name=name, labels=labels),
        spec=client.V1DeploymentSpec(
            replicas=replicas, selector=client.V1LabelSelector(match_labels=labels),
            template=client.V1PodTemplateSpec(
                metadata=client.V1ObjectMeta(labels=labels),
                spec=client.V1PodSpec(containers=[client.V1Container(name="c", image="img")]))))


def error(exc: pytest.ExceptionInfo[ApiException]) -> dict[str, Any]:
    """The Status body the client received."""
    body = json.loads(exc.value.body)
    assert body["kind"] == "Status" and body["status"] == "Failure" and body["code"] == exc.value.status
    return body


def rv(obj: dict[str, Any]) -> int:
    return int(obj["metadata"]["resourceVersion"])


def take(stream: Iterator[dict[str, Any]], n: int) -> list[tuple[str, Any]]:
    """The next n events as (type, raw object); fewer if the stream ends."""
    return [(e["type"], e["raw_object"]) for e in islice(stream, n)]


# -- CRUD ------------------------------------------------------------------------------


def test_custom_object_create_get_list_replace_delete(kube: FakeKubeApi, custom: client.CustomObjectsApi) -> None:
    created = custom.create_namespaced_custom_object(*ISVC, isvc("a"))
    meta = created["metadata"]
    assert meta["namespace"] == NS and meta["generation"] == 1 and meta["uid"] and meta["creationTimestamp"]
    assert "status" not in created, "create on the main endpoint drops status"
    assert custom.get_namespaced_custom_object(*ISVC, "a") == created

    custom.create_namespaced_custom_object(*ISVC, isvc("b"))
    listed = custom.list_namespaced_custom_object(*ISVC)
    assert listed["kind"] == "InferenceServiceList" and listed["apiVersion"] == f"{GROUP}/{V1BETA1}"
    assert [i["metadata"]["name"] for i in listed["items"]] == ["a", "b"]
    assert all(i["kind"] == "InferenceService" for i in listed["items"])
    assert listed["metadata"]["resourceVersion"] == str(kube.resource_version)

    created["spec"] = {"predictor": {"model": {"storageUri": "s3://x"}}}
    replaced = custom.replace_namespaced_custom_object(*ISVC, "a", created)
    assert replaced["metadata"]["generation"] == 2 and rv(replaced) > rv(created)
    assert replaced["metadata"]["uid"] == meta["uid"]

    deleted = custom.delete_namespaced_custom_object(*ISVC, "a")
    assert deleted["metadata"]["name"] == "a", "custom resources return the deleted object"
    with pytest.raises(ApiException) as exc:
        custom.get_namespaced_custom_object(*ISVC, "a")
    assert exc.value.status == 404 and error(exc)["reason"] == "NotFound"
    with pytest.raises(ApiException) as exc:
        custom.delete_namespaced_custom_object(*ISVC, "a")
    assert exc.value.status == 404


def test_resource_versions_come_from_one_counter(kube: FakeKubeApi, custom: client.CustomObjectsApi,
                                                 apps: client.AppsV1Api) -> None:
    versions = [rv(custom.create_namespaced_custom_object(*ISVC, isvc("a"))),
                int(apps.create_namespaced_deployment(NS, deployment("d")).metadata.resource_version),
                rv(kube.apply("leases", {"metadata": {"name": "l", "namespace": NS}, "spec": {}})),
                rv(custom.create_namespaced_custom_object(*ISVC, isvc("b")))]
    assert versions == sorted(set(versions)) and kube.resource_version == versions[-1]


def test_duplicate_create_is_409_already_exists(custom: client.CustomObjectsApi) -> None:
    custom.create_namespaced_custom_object(*ISVC, isvc("a"))
    with pytest.raises(ApiException) as exc:
        custom.create_namespaced_custom_object(*ISVC, isvc("a"))
    assert exc.value.status == 409 and error(exc)["reason"] == "AlreadyExists"


def test_stale_replace_and_patch_are_409_conflict(custom: client.CustomObjectsApi) -> None:
    first = custom.create_namespaced_custom_object(*ISVC, isvc("a"))
    custom.replace_namespaced_custom_object(*ISVC, "a", {**first, "spec": {"v": 2}})
    with pytest.raises(ApiException) as exc:
        custom.replace_namespaced_custom_object(*ISVC, "a", {**first, "spec": {"v": 3}})
    body = error(exc)
    assert exc.value.status == 409 and body["reason"] == "Conflict" and "has been modified" in body["message"]
    with pytest.raises(ApiException) as exc:
        stale = {"metadata": {"resourceVersion": first["metadata"]["resourceVersion"]}, "spec": {"v": 4}}
        custom.patch_namespaced_custom_object(*ISVC, "a", stale)
    assert exc.value.status == 409
    assert custom.get_namespaced_custom_object(*ISVC, "a")["spec"] == {"v": 2}
    with pytest.raises(ApiException) as exc:
        custom.replace_namespaced_custom_object(*ISVC, "missing", isvc("missing"))
    assert exc.value.status == 404


def test_status_subresource_split(custom: client.CustomObjectsApi) -> None:
    obj = custom.create_namespaced_custom_object(*ISVC, isvc("a", v=1))

    with_status = custom.replace_namespaced_custom_object_status(*ISVC, "a", {**obj, "spec": {"v": 99},
                                                                              "status": {"ready": True}})
    assert with_status["status"] == {"ready": True} and with_status["spec"] == {"v": 1}
    assert with_status["metadata"]["generation"] == 1 and rv(with_status) > rv(obj)

    main = custom.replace_namespaced_custom_object(*ISVC, "a", {**with_status, "spec": {"v": 2}, "status": {"x": 1}})
    assert main["status"] == {"ready": True}, "PUT on the main resource keeps the stored status"
    assert main["spec"] == {"v": 2} and main["metadata"]["generation"] == 2

    patched = custom.patch_namespaced_custom_object_status(*ISVC, "a", {"spec": {"v": 3}, "status": {"url": "u"}})
    assert patched["status"] == {"ready": True, "url": "u"} and patched["spec"] == {"v": 2}
    assert patched["metadata"]["generation"] == 2

    labelled = custom.patch_namespaced_custom_object(*ISVC, "a", {"metadata": {"labels": {"k": "v"}}})
    assert labelled["metadata"]["generation"] == 2, "generation counts spec changes only"


def test_noop_write_keeps_the_resource_version(custom: client.CustomObjectsApi) -> None:
    obj = custom.create_namespaced_custom_object(*ISVC, isvc("a", v=1))
    again = custom.patch_namespaced_custom_object(*ISVC, "a", {"spec": {"v": 1}})
    assert again["metadata"]["resourceVersion"] == obj["metadata"]["resourceVersion"]


def test_merge_patch_deletes_nulls_and_merges_objects(kube: FakeKubeApi, custom: client.CustomObjectsApi) -> None:
    custom.create_namespaced_custom_object(*ISVC, isvc("a", keep=1, drop=2, nested={"x": 1, "y": 2}, items=[1, 2]))
    patched = custom.patch_namespaced_custom_object(*ISVC, "a", {"spec": {"drop": None, "nested": {"y": None, "z": 3},
                                                                          "items": [3]}})
    assert patched["spec"] == {"keep": 1, "nested": {"x": 1, "z": 3}, "items": [3]}
    assert kube.patches[-1][1] == "application/merge-patch+json"


def test_json_patch_ops_and_failed_test(kube: FakeKubeApi, custom: client.CustomObjectsApi) -> None:
    custom.create_namespaced_custom_object(*ISVC, isvc("a", n=1, tags=["x"], old=True))
    ops = [{"op": "test", "path": "/spec/n", "value": 1}, {"op": "replace", "path": "/spec/n", "value": 2},
           {"op": "add", "path": "/spec/tags/-", "value": "y"}, {"op": "add", "path": "/spec/tags/0", "value": "w"},
           {"op": "remove", "path": "/spec/old"}, {"op": "add", "path": "/metadata/labels/a~1b", "value": "c"}]
    patched = custom.patch_namespaced_custom_object(*ISVC, "a", ops, _content_type="application/json-patch+json")
    assert patched["spec"] == {"n": 2, "tags": ["w", "x", "y"]} and patched["metadata"]["labels"] == {"a/b": "c"}
    assert kube.patches[-1][1] == "application/json-patch+json"

    failing = [{"op": "replace", "path": "/spec/n", "value": 5}, {"op": "test", "path": "/spec/n", "value": 1}]
    with pytest.raises(ApiException) as exc:
        custom.patch_namespaced_custom_object(*ISVC, "a", failing, _content_type="application/json-patch+json")
    assert exc.value.status == 422
    assert custom.get_namespaced_custom_object(*ISVC, "a")["spec"]["n"] == 2, "a failed JSON patch changes nothing"

    with pytest.raises(ApiException) as exc:  # the client's default for custom objects is a merge patch
        custom.patch_namespaced_custom_object(*ISVC, "a", ops)
    assert exc.value.status == 400 and kube.patches[-1][1] == "application/merge-patch+json"


def test_deployment_patch_content_types_and_status(kube: FakeKubeApi, apps: client.AppsV1Api) -> None:
    apps.create_namespaced_deployment(NS, deployment("d"))
    scaled = apps.patch_namespaced_deployment("d", NS, {"spec": {"replicas": 3}})
    assert scaled.spec.replicas == 3 and scaled.metadata.generation == 2
    assert kube.patches[-1][1] == "application/strategic-merge-patch+json"

    scaled = apps.patch_namespaced_deployment("d", NS, [{"op": "replace", "path": "/spec/replicas", "value": 4}])
    assert scaled.spec.replicas == 4 and scaled.metadata.generation == 3
    assert kube.patches[-1][1] == "application/json-patch+json"

    ready = apps.patch_namespaced_deployment_status("d", NS, {"status": {"readyReplicas": 4, "replicas": 4}})
    assert ready.status.ready_replicas == 4 and ready.metadata.generation == 3
    assert kube.count("PATCH", "deployments") == 2 and kube.count("PATCH", "deployments", "status") == 1

    status = apps.delete_namespaced_deployment("d", NS)  # typed `object` by the client: the Status dict
    assert status["kind"] == "Status" and status["status"] == "Success" and status["details"]["name"] == "d"
    assert kube.get("deployments", "d", NS) is None


def test_services_with_label_selectors(core: client.CoreV1Api) -> None:
    for name, labels in [("s1", {"app": "mm", "tier": "a"}), ("s2", {"app": "mm", "tier": "b"}), ("s3", {"app": "x"})]:
        core.create_namespaced_service(NS, client.V1Service(
            metadata=client.V1ObjectMeta(name=name, labels=labels),
            spec=client.V1ServiceSpec(ports=[client.V1ServicePort(port=8033)])))

    def names(**kw: str) -> list[str]:
        return [s.metadata.name for s in core.list_namespaced_service(NS, **kw).items]

    assert names() == ["s1", "s2", "s3"]
    assert names(label_selector="app=mm,tier=b") == ["s2"]
    assert names(label_selector="app!=mm") == ["s3"]
    assert names(label_selector="tier") == ["s1", "s2"]
    assert names(field_selector="metadata.name=s3") == ["s3"]
    assert [s.metadata.name for s in core.list_service_for_all_namespaces(label_selector="app=x").items] == ["s3"]
    assert core.list_namespaced_service("elsewhere").items == []

    svc = core.read_namespaced_service("s1", NS)
    svc.spec.ports[0].port = 9000
    assert core.replace_namespaced_service("s1", NS, svc).spec.ports[0].port == 9000
    assert core.delete_namespaced_service("s1", NS).metadata.name == "s1"  # services return the object
    assert names() == ["s2", "s3"]


def test_leases_optimistic_concurrency(api_client: client.ApiClient) -> None:
    leases = client.CoordinationV1Api(api_client)
    lease = leases.create_namespaced_lease(NS, client.V1Lease(
        metadata=client.V1ObjectMeta(name="leader"),
        spec=client.V1LeaseSpec(holder_identity="a", lease_duration_seconds=5)))
    lease.spec.holder_identity = "b"
    taken = leases.replace_namespaced_lease("leader", NS, lease)
    assert taken.spec.holder_identity == "b"
    lease.spec.holder_identity = "c"  # still carries the old resourceVersion
    with pytest.raises(ApiException) as exc:
        leases.replace_namespaced_lease("leader", NS, lease)
    assert exc.value.status == 409
    renewed = leases.patch_namespaced_lease("leader", NS, {"spec": {"leaseTransitions": 1}})
    assert renewed.spec.holder_identity == "b" and renewed.spec.lease_transitions == 1
    leases.delete_namespaced_lease("leader", NS)
    assert leases.list_namespaced_lease(NS).items == []


def test_cluster_scoped_custom_objects(custom: client.CustomObjectsApi) -> None:
    csr = (GROUP, V1ALPHA1, "clusterservingruntimes")
    created = custom.create_cluster_custom_object(*csr, {"metadata": {"name": "triton"}, "spec": {"v": 1}})
    assert "namespace" not in created["metadata"] and created["kind"] == "ClusterServingRuntime"
    assert custom.patch_cluster_custom_object(*csr, "triton", {"spec": {"v": 2}})["metadata"]["generation"] == 2
    assert [i["metadata"]["name"] for i in custom.list_cluster_custom_object(*csr)["items"]] == ["triton"]
    with pytest.raises(ApiException) as exc:  # not a namespaced kind
        custom.get_namespaced_custom_object(GROUP, V1ALPHA1, NS, "clusterservingruntimes", "triton")
    assert exc.value.status == 404


def test_all_namespaces_list_of_a_namespaced_kind(kube: FakeKubeApi, custom: client.CustomObjectsApi) -> None:
    kube.apply("servingruntimes", {"metadata": {"name": "r", "namespace": "a"}, "spec": {}})
    kube.apply("servingruntimes", {"metadata": {"name": "r", "namespace": "b"}, "spec": {}})
    runtimes = (GROUP, V1ALPHA1, "servingruntimes")
    items = custom.list_cluster_custom_object(*runtimes)["items"]
    assert [(i["metadata"]["namespace"], i["kind"]) for i in items] == [("a", "ServingRuntime"),
                                                                        ("b", "ServingRuntime")]
    items = custom.list_cluster_custom_object(*runtimes, field_selector="metadata.namespace=b")["items"]
    assert [i["metadata"]["namespace"] for i in items] == ["b"]


def test_unknown_paths_and_media_types(kube: FakeKubeApi, custom: client.CustomObjectsApi) -> None:
    with pytest.raises(ApiException) as exc:
        custom.list_namespaced_custom_object("nope.example.com", "v1", NS, "things")
    assert exc.value.status == 404 and error(exc)["reason"] == "NotFound"
    with pytest.raises(urllib.error.HTTPError) as http_exc:
        urllib.request.urlopen(f"{kube.url}/healthz-not-served", timeout=5)
    assert http_exc.value.code == 404 and json.loads(http_exc.value.read())["kind"] == "Status"

    custom.create_namespaced_custom_object(*ISVC, isvc("a"))
    with pytest.raises(ApiException) as exc:
        custom.patch_namespaced_custom_object(*ISVC, "a", {"spec": {}}, _content_type="application/apply-patch+yaml")
    assert exc.value.status == 415


def test_direct_store_access(kube: FakeKubeApi, custom: client.CustomObjectsApi) -> None:
    stored = kube.apply("inferenceservices", {"metadata": {"name": "a", "namespace": NS}, "spec": {"v": 1}})
    assert stored["apiVersion"] == f"{GROUP}/{V1BETA1}" and stored["kind"] == "InferenceService"
    assert custom.get_namespaced_custom_object(*ISVC, "a") == stored

    kube.set_status("inferenceservices", "a", {"ready": True}, NS)
    updated = kube.apply("inferenceservices", {"metadata": {"name": "a", "namespace": NS}, "spec": {"v": 2}})
    assert updated["metadata"]["generation"] == 2 and rv(updated) > rv(stored)
    assert updated["status"] == {"ready": True}, "apply leaves status alone, like kubectl apply"

    copy_ = kube.get("inferenceservices", "a", NS)
    assert copy_ is not None
    copy_["spec"]["v"] = 42
    assert kube.get("inferenceservices", "a", NS)["spec"]["v"] == 2, "get returns a copy"  # type: ignore[index]
    assert [o["metadata"]["name"] for o in kube.list("inferenceservices", NS)] == ["a"]
    assert kube.list("inferenceservices", "other") == []

    kube.remove("inferenceservices", "a", NS)
    kube.remove("inferenceservices", "a", NS)  # already gone: no error
    assert kube.get("inferenceservices", "a", NS) is None
    assert kube.count("GET", "inferenceservices") == 1 and kube.count("POST", "inferenceservices") == 0
    assert ("GET", f"/apis/{GROUP}/{V1BETA1}/namespaces/{NS}/inferenceservices/a") in kube.requests


# -- watches ---------------------------------------------------------------------------


def test_watch_from_empty_lists_then_streams_live_events(kube: FakeKubeApi, custom: client.CustomObjectsApi) -> None:
    custom.create_namespaced_custom_object(*ISVC, isvc("a"))
    custom.create_namespaced_custom_object(*ISVC, isvc("b"))
    w = watch.Watch()
    with closing(w.stream(custom.list_namespaced_custom_object, *ISVC, timeout_seconds=5)) as stream:
        assert [(t, o["metadata"]["name"]) for t, o in take(stream, 2)] == [("ADDED", "a"), ("ADDED", "b")]
        custom.patch_namespaced_custom_object(*ISVC, "a", {"spec": {"v": 2}})
        kube.remove("inferenceservices", "b", NS)
        kube.apply("inferenceservices", {"metadata": {"name": "elsewhere", "namespace": "other"}, "spec": {}})
        custom.create_namespaced_custom_object(*ISVC, isvc("c"))
        events = take(stream, 3)
    assert [(t, o["metadata"]["name"]) for t, o in events] == [("MODIFIED", "a"), ("DELETED", "b"), ("ADDED", "c")]
    assert events[0][1]["spec"]["v"] == 2
    assert rv(events[1][1]) > rv(events[0][1]), "DELETED carries the deletion's resourceVersion"
    assert w.resource_version == events[2][1]["metadata"]["resourceVersion"]


def test_watch_from_a_resource_version_replays_later_events(kube: FakeKubeApi, custom: client.CustomObjectsApi) -> None:
    custom.create_namespaced_custom_object(*ISVC, isvc("a"))
    listed = custom.list_namespaced_custom_object(*ISVC)
    custom.patch_namespaced_custom_object(*ISVC, "a", {"spec": {"v": 2}})
    custom.create_namespaced_custom_object(*ISVC, isvc("b"))
    custom.delete_namespaced_custom_object(*ISVC, "a")
    with closing(watch.Watch().stream(custom.list_namespaced_custom_object, *ISVC, timeout_seconds=5,
                                      resource_version=listed["metadata"]["resourceVersion"])) as stream:
        events = take(stream, 3)
    assert [(t, o["metadata"]["name"]) for t, o in events] == [("MODIFIED", "a"), ("ADDED", "b"), ("DELETED", "a")]


def test_watch_label_selector_sees_objects_enter_and_leave(custom: client.CustomObjectsApi) -> None:
    custom.create_namespaced_custom_object(*ISVC, isvc("in", {"team": "x"}))
    custom.create_namespaced_custom_object(*ISVC, isvc("out", {"team": "y"}))
    with closing(watch.Watch().stream(custom.list_namespaced_custom_object, *ISVC, label_selector="team=x",
                                      timeout_seconds=5)) as stream:
        assert [(t, o["metadata"]["name"]) for t, o in take(stream, 1)] == [("ADDED", "in")]
        custom.patch_namespaced_custom_object(*ISVC, "out", {"spec": {"v": 9}})  # not selected: unseen
        custom.patch_namespaced_custom_object(*ISVC, "in", {"metadata": {"labels": {"team": "y"}}})
        custom.patch_namespaced_custom_object(*ISVC, "out", {"metadata": {"labels": {"team": "x"}}})
        events = take(stream, 2)
    assert [(t, o["metadata"]["name"]) for t, o in events] == [("DELETED", "in"), ("ADDED", "out")]


def test_typed_watch_of_deployments(kube: FakeKubeApi, apps: client.AppsV1Api) -> None:
    apps.create_namespaced_deployment(NS, deployment("d"))
    with closing(watch.Watch().stream(apps.list_namespaced_deployment, NS, timeout_seconds=5)) as stream:
        first = next(stream)
        apps.patch_namespaced_deployment_status("d", NS, {"status": {"readyReplicas": 1}})
        second = next(stream)
    assert first["type"] == "ADDED" and isinstance(first["object"], client.V1Deployment)
    assert second["type"] == "MODIFIED" and second["object"].status.ready_replicas == 1


def test_bookmarks_only_when_asked(kube: FakeKubeApi, custom: client.CustomObjectsApi) -> None:
    custom.create_namespaced_custom_object(*ISVC, isvc("a"))
    w = watch.Watch()
    with closing(w.stream(custom.list_namespaced_custom_object, *ISVC, allow_watch_bookmarks=True,
                          timeout_seconds=5)) as stream:
        events = take(stream, 3)
    assert [t for t, _ in events] == ["ADDED", "BOOKMARK", "BOOKMARK"]
    bookmark = events[1][1]
    assert bookmark["kind"] == "InferenceService" and bookmark["apiVersion"] == f"{GROUP}/{V1BETA1}"
    assert bookmark["metadata"] == {"resourceVersion": str(kube.resource_version)}
    assert w.resource_version == str(kube.resource_version), "the client resumes from bookmarks"

    start = time.monotonic()
    events = take(w.stream(custom.list_namespaced_custom_object, *ISVC, resource_version=w.resource_version,
                           timeout_seconds=1), 10)
    assert events == [] and 0.9 < time.monotonic() - start < 3, "no bookmarks unasked; timeoutSeconds ends the stream"


def test_watch_after_compact_raises_410(kube: FakeKubeApi, custom: client.CustomObjectsApi) -> None:
    old = custom.create_namespaced_custom_object(*ISVC, isvc("a"))["metadata"]["resourceVersion"]
    custom.patch_namespaced_custom_object(*ISVC, "a", {"spec": {"v": 2}})
    kube.compact()
    with pytest.raises(ApiException) as exc:
        list(watch.Watch().stream(custom.list_namespaced_custom_object, *ISVC, resource_version=old, timeout_seconds=5))
    assert exc.value.status == 410 and f"too old resource version: {old}" in exc.value.reason
    assert kube.count("GET", "inferenceservices") == 1, "with timeout_seconds the client does not retry"

    with pytest.raises(ApiException) as exc:
        list(watch.Watch().stream(custom.list_namespaced_custom_object, *ISVC, resource_version=old))
    assert exc.value.status == 410
    assert kube.count("GET", "inferenceservices") == 3, "without it, the client retries a 410 once"

    current = str(kube.resource_version)  # a watch from the compaction point is fine
    with closing(watch.Watch().stream(custom.list_namespaced_custom_object, *ISVC, resource_version=current,
                                      timeout_seconds=5)) as stream:
        custom.patch_namespaced_custom_object(*ISVC, "a", {"spec": {"v": 3}})
        assert [t for t, _ in take(stream, 1)] == ["MODIFIED"]


def _watch_in_thread(stream: Iterator[dict[str, Any]]) -> tuple[threading.Thread, list[str], threading.Event]:
    """Consume a watch on a thread; `first` is set once the first event arrived."""
    seen: list[str] = []
    first = threading.Event()

    def run() -> None:
        for event in stream:
            seen.append(event["type"])
            first.set()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, seen, first


def test_drop_watches_ends_streams(kube: FakeKubeApi, custom: client.CustomObjectsApi) -> None:
    custom.create_namespaced_custom_object(*ISVC, isvc("a"))
    thread, seen, first = _watch_in_thread(
        watch.Watch().stream(custom.list_namespaced_custom_object, *ISVC, timeout_seconds=30))
    assert first.wait(5)
    kube.drop_watches()
    thread.join(5)
    assert not thread.is_alive() and seen == ["ADDED"]


def test_dropped_watch_is_resumed_by_the_client(kube: FakeKubeApi, custom: client.CustomObjectsApi) -> None:
    custom.create_namespaced_custom_object(*ISVC, isvc("a"))
    w = watch.Watch()
    with closing(w.stream(custom.list_namespaced_custom_object, *ISVC)) as stream:
        assert [t for t, _ in take(stream, 1)] == ["ADDED"]
        kube.drop_watches()
        custom.patch_namespaced_custom_object(*ISVC, "a", {"spec": {"v": 2}})
        assert [t for t, _ in take(stream, 1)] == ["MODIFIED"], "re-watched from the last resourceVersion"
    assert kube.count("GET", "inferenceservices") == 2


def test_stop_ends_open_watches_promptly() -> None:
    kube = FakeKubeApi(bookmark_interval_s=10).start()
    try:
        with kube.api_client() as c:
            custom = client.CustomObjectsApi(c)
            custom.create_namespaced_custom_object(*ISVC, isvc("a"))
            idle = client.CoreV1Api(c).list_namespaced_service(NS)  # leaves a keep-alive connection open
            assert idle.items == []
            thread, seen, first = _watch_in_thread(
                watch.Watch().stream(custom.list_namespaced_custom_object, *ISVC, timeout_seconds=60))
            assert first.wait(5)
            start = time.monotonic()
            kube.stop()
            assert time.monotonic() - start < 2
            thread.join(5)
            assert not thread.is_alive() and seen == ["ADDED"]
    finally:
        kube.stop()  # idempotent
