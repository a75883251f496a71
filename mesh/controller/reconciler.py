"""One reconcile per queue key, each idempotent (run it twice, nothing new
happens), so restarts, duplicate events and retries are all safe:

* `isvc/<name>`: the InferenceService's vModel in the mesh (set, transition
  on a spec change, delete when the ISVC or its ModelMesh annotation goes),
  then its status, written only when it differs from what the API holds;
* `runtime/<name>`: the Deployment of the (Cluster)ServingRuntime of that name
  (a namespaced ServingRuntime shadows a ClusterServingRuntime), created,
  replaced when its rendered hash changes, or deleted;
* `service`: the mesh Service, present while any runtime is.

A failure raises; the worker retries the key with back-off."""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import grpc

from mesh.controller.deployment import (
    MANAGED_BY,
    InvalidRuntime,
    PodSettings,
    deployment_name,
    render_deployment,
    render_service,
    spec_hash,
)
from mesh.controller.kube_writes import KubeWriter
from mesh.controller.mesh_client import MeshClient
from mesh.controller.mesh_state import MeshState
from mesh.controller.predictor import OWNER, InvalidSpec, Predictor, is_modelmesh, predictor_from_isvc
from mesh.controller.runtime_choice import RuntimeInfo, choose_runtime
from mesh.controller.status import Endpoints, problem_status, serving_status
from protos import model_mesh_pb2 as mm

log = logging.getLogger(__name__)

ISVC, RUNTIME, SERVICE = "isvc/", "runtime/", "service"
# the mesh refused the registration itself: retrying will not help, the spec must change
SPEC_ERRORS = (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.ALREADY_EXISTS)


class Cache(Protocol):
    def get(self, key: str) -> dict[str, Any] | None: ...
    def items(self) -> list[dict[str, Any]]: ...


@dataclass
class Caches:
    isvcs: Cache
    runtimes: Cache  # the namespace's ServingRuntimes
    cluster_runtimes: Cache
    deployments: Cache
    services: Cache


class MeshUnavailable(RuntimeError):
    """The mesh's API could not be reached; the key is retried."""


def _managed(obj: Mapping[str, Any] | None) -> bool:
    return bool(obj) and ((obj.get("metadata") or {}).get("labels") or {}).get("app.kubernetes.io/managed-by") == MANAGED_BY


def status_news(old: Mapping[str, Any], new: Mapping[str, Any]) -> tuple[str, str, str] | None:
    """The Event a status change is worth, if any: a new failure (Warning,
    its reason and message), or the active model reaching Loaded (Normal)."""
    old_failure = (old.get("modelStatus") or {}).get("lastFailureInfo") or {}
    failure = (new.get("modelStatus") or {}).get("lastFailureInfo") or {}
    if failure and (failure.get("reason"), failure.get("message")) != (old_failure.get("reason"), old_failure.get("message")):
        return "Warning", str(failure.get("reason", "")), str(failure.get("message", ""))
    was = ((old.get("modelStatus") or {}).get("states") or {}).get("activeModelState")
    now = ((new.get("modelStatus") or {}).get("states") or {}).get("activeModelState")
    if now == "Loaded" and was != "Loaded":
        runtime = (new.get("modelStatus") or {}).get("runtime", "")
        return "Normal", "ModelLoaded", f"the model is loaded (runtime {runtime})" if runtime else "the model is loaded"
    return None


class Reconciler:
    def __init__(
        self,
        caches: Caches,
        writer: KubeWriter,
        mesh: MeshClient,
        state: MeshState,
        pods: PodSettings,
        *,
        enqueue: Callable[[str], None],
    ) -> None:
        self.caches = caches
        self.writer = writer
        self.mesh = mesh
        self.state = state
        self.pods = pods
        self.namespace = pods.namespace
        self.endpoints = Endpoints(pods.service_name, pods.namespace)
        self.enqueue = enqueue

    async def reconcile(self, key: str) -> None:
        if key.startswith(ISVC):
            await self.reconcile_isvc(key[len(ISVC):])
        elif key.startswith(RUNTIME):
            await self.reconcile_runtime(key[len(RUNTIME):])
        elif key == SERVICE:
            await self.reconcile_service()
        else:
            log.warning("unknown work key %r dropped", key)

    # ---- InferenceService -------------------------------------------------------------

    def runtime_infos(self) -> list[RuntimeInfo]:
        objects = [*self.caches.runtimes.items(), *self.caches.cluster_runtimes.items()]
        return [RuntimeInfo.from_object(obj) for obj in objects]

    async def reconcile_isvc(self, name: str) -> None:
        isvc = self.caches.isvcs.get(f"{self.namespace}/{name}")
        if isvc is None or not is_modelmesh(isvc) or (isvc.get("metadata") or {}).get("deletionTimestamp"):
            await self._delete_vmodel(name)
            return
        current = isvc.get("status") or {}
        generation = int((isvc.get("metadata") or {}).get("generation") or 0)
        try:
            predictor = predictor_from_isvc(isvc)
        except InvalidSpec as exc:
            await self._write_status(isvc, self._problem("InvalidSpec", "InvalidPredictorSpec", str(exc), isvc))
            return
        choice = choose_runtime(predictor, self.runtime_infos())
        if choice.runtime is None:
            await self._write_status(isvc, self._problem("BlockedByFailedLoad", "NoSupportingRuntime", choice.reason, isvc))
            return
        runtime = choice.runtime.name
        try:
            await self._ensure_vmodel(predictor, runtime)
        except grpc.aio.AioRpcError as exc:
            if exc.code() in SPEC_ERRORS:
                await self._write_status(isvc, self._problem("InvalidSpec", "InvalidPredictorSpec", exc.details() or "", isvc))
                return
            message = f"waiting for the mesh at {self.mesh.target}: {exc.code().name} {exc.details()}"
            await self._write_status(isvc, self._problem("InProgress", "RuntimeUnhealthy", message, isvc, "Loading"))
            raise MeshUnavailable(message) from exc
        vmodel = self.state.vmodel_status(name)
        await self._write_status(isvc, serving_status(vmodel, runtime, generation, self.endpoints, current))

    def _problem(self, transition: str, reason: str, message: str, isvc: Mapping[str, Any], state: str = "FailedToLoad") -> dict[str, Any]:
        name = isvc["metadata"]["name"]
        vmodel = self.state.vmodel_status(name) if self._owned(name) else None
        generation = int(isvc["metadata"].get("generation") or 0)
        return problem_status(transition, reason, message, generation, self.endpoints, isvc.get("status") or {}, vmodel, state)

    def _owned(self, name: str) -> bool:
        record = self.state.vmodel(name)
        return record is not None and record.owner == OWNER

    async def _ensure_vmodel(self, predictor: Predictor, runtime: str) -> None:
        """setVModel when the mesh's target is not this spec's model yet: the
        mesh keeps the old model serving until the new one has loaded."""
        model_id = predictor.concrete_model_id(runtime)
        record = self.state.vmodel(predictor.name)
        if record is not None and record.target == model_id:
            return
        info = mm.ModelInfo(type=predictor.model_type(runtime), path=predictor.model_path, key=predictor.model_key)
        log.info("vModel %s → %s (%s)", predictor.name, model_id, info.type)
        await self.mesh.set_vmodel(mm.SetVModelRequest(
            vModelId=predictor.name, owner=OWNER, targetModelId=model_id, modelInfo=info,
            autoDeleteTargetModel=True, loadNow=True,
        ))

    async def _delete_vmodel(self, name: str) -> None:
        if not self._owned(name):
            return
        log.info("vModel %s: its InferenceService is gone; deleting", name)
        try:
            await self.mesh.delete_vmodel(name, OWNER)
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.NOT_FOUND:
                raise MeshUnavailable(f"deleteVModel {name}: {exc.code().name} {exc.details()}") from exc

    async def _write_status(self, isvc: Mapping[str, Any], status: dict[str, Any]) -> None:
        current = isvc.get("status") or {}
        if current == status:
            return  # nothing new: no write, so our own update events end here
        body = copy.deepcopy(dict(isvc))
        body["status"] = status
        await self.writer.replace_isvc_status(body)
        news = status_news(current, status)
        if news is not None:
            await self._event(body, *news)

    async def _event(self, obj: dict[str, Any], kind: str, reason: str, message: str) -> None:
        """Best effort: an Event that cannot be written is logged, never retried."""
        try:
            await self.writer.event(obj, kind, reason, message, MANAGED_BY)
        except Exception as exc:
            log.info("event %s for %s not written: %s", reason, obj["metadata"]["name"], exc)

    # ---- runtimes ------------------------------------------------------------------

    def runtime_object(self, name: str) -> dict[str, Any] | None:
        return self.caches.runtimes.get(f"{self.namespace}/{name}") or self.caches.cluster_runtimes.get(name)

    @staticmethod
    def wanted(runtime: Mapping[str, Any] | None) -> bool:
        spec = (runtime or {}).get("spec") or {}
        return bool(runtime) and bool(spec.get("multiModel")) and not spec.get("disabled")

    async def reconcile_runtime(self, name: str) -> None:
        runtime = self.runtime_object(name)
        existing = self.caches.deployments.get(f"{self.namespace}/{deployment_name(self.pods, name)}")
        self.enqueue(SERVICE)
        if not self.wanted(runtime):
            if _managed(existing):
                log.info("runtime %s is gone, disabled or not multiModel: deleting its Deployment", name)
                await self.writer.delete_deployment(existing["metadata"]["name"])
            return
        try:
            desired = render_deployment(runtime, self.pods)
        except InvalidRuntime as exc:
            log.warning("runtime %s cannot be deployed: %s", name, exc)
            return
        if existing is None:
            log.info("creating Deployment %s", desired["metadata"]["name"])
            await self.writer.create_deployment(desired)
        elif spec_hash(existing) != spec_hash(desired):
            log.info("updating Deployment %s", desired["metadata"]["name"])
            desired["metadata"]["resourceVersion"] = existing["metadata"]["resourceVersion"]
            await self.writer.replace_deployment(desired)

    async def reconcile_service(self) -> None:
        names = {obj["metadata"]["name"] for obj in [*self.caches.runtimes.items(), *self.caches.cluster_runtimes.items()]}
        any_runtime = any(self.wanted(self.runtime_object(name)) for name in names)
        existing = self.caches.services.get(f"{self.namespace}/{self.pods.service_name}")
        if not any_runtime:
            if _managed(existing):
                await self.writer.delete_service(self.pods.service_name)
            return
        desired = render_service(self.pods)
        if existing is None:
            await self.writer.create_service(desired)
        elif _managed(existing) and spec_hash(existing) != spec_hash(desired):
            desired["metadata"]["resourceVersion"] = existing["metadata"]["resourceVersion"]
            await self.writer.replace_service(desired)
