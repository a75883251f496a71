"""The InferenceService status, from the mesh's vModel state.

Field names and state words are ModelMesh's (`status.modelStatus.states`,
`transitionStatus`, `copies`, `lastFailureInfo`, the `Ready` condition and
the shared gRPC/REST URLs), so `kubectl get isvc` and tools written for
ModelMesh read it unchanged; `modelStatus.runtime` is ours (the runtime chosen).

The result depends only on its inputs, and times come from the mesh's copy
records or carry over from the current status, so computing it again for an
unchanged model gives an equal status and the controller writes nothing:
its own status updates cannot loop. Pure: no I/O."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from protos import model_mesh_pb2 as mm

MS = mm.ModelStatusInfo
VS = mm.VModelStatusInfo
MODEL_STATES = {
    MS.NOT_FOUND: "Pending",
    MS.NOT_LOADED: "Standby",
    MS.LOADING: "Loading",
    MS.LOADED: "Loaded",
    MS.LOADING_FAILED: "FailedToLoad",
    MS.UNKNOWN: "Pending",
}
TRANSITIONS = {
    VS.NOT_FOUND: "InProgress",
    VS.DEFINED: "UpToDate",
    VS.TRANSITIONING: "InProgress",
    VS.TRANSITION_FAILED: "BlockedByFailedLoad",
    VS.UNKNOWN: "InProgress",
}
READY_STATES = ("Loaded", "Standby")  # Standby serves too: the first request loads it


@dataclass(frozen=True)
class Endpoints:
    """The mesh Service every InferenceService of the namespace is served by."""

    service: str
    namespace: str
    grpc_port: int = 8033
    rest_port: int = 8008

    @property
    def grpc_url(self) -> str:
        return f"grpc://{self.service}.{self.namespace}:{self.grpc_port}"

    @property
    def rest_url(self) -> str:
        return f"http://{self.service}.{self.namespace}:{self.rest_port}"


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _now() -> str:
    return datetime.now(tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _copies(info: mm.ModelStatusInfo) -> dict[str, int]:
    return {
        "totalCopies": sum(1 for c in info.modelCopyInfos if c.copyStatus == MS.LOADED),
        "failedCopies": sum(1 for c in info.modelCopyInfos if c.copyStatus == MS.LOADING_FAILED),
    }


def _failure(info: mm.ModelStatusInfo, model_id: str) -> dict[str, Any] | None:
    failed = [c for c in info.modelCopyInfos if c.copyStatus == MS.LOADING_FAILED]
    if info.status != MS.LOADING_FAILED and not failed:
        return None
    latest = max(failed, key=lambda c: c.time) if failed else None
    failure: dict[str, Any] = {
        "reason": "ModelLoadFailed",
        "message": info.errors[0] if info.errors else "the model failed to load",
        "modelRevisionName": model_id,
    }
    if latest is not None:
        failure["location"] = latest.location
        if latest.time:
            failure["time"] = _iso(latest.time)
    return failure


def _condition(ready: bool, reason: str, message: str, current: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Ready and PredictorReady; lastTransitionTime kept while the status holds."""
    status = "True" if ready else "False"
    conditions = []
    previous = {c.get("type"): c for c in current.get("conditions") or [] if isinstance(c, Mapping)}
    for kind in ("PredictorReady", "Ready"):
        old = previous.get(kind) or {}
        condition: dict[str, Any] = {
            "type": kind,
            "status": status,
            "lastTransitionTime": old.get("lastTransitionTime") if old.get("status") == status else _now(),
        }
        if not ready:
            condition["reason"] = reason
            condition["message"] = message
        conditions.append(condition)
    return conditions


def _frame(generation: int, endpoints: Endpoints) -> dict[str, Any]:
    return {
        "observedGeneration": generation,
        "url": endpoints.grpc_url,
        "address": {"url": endpoints.grpc_url},
        "components": {"predictor": {"url": endpoints.grpc_url, "grpcUrl": endpoints.grpc_url, "restUrl": endpoints.rest_url}},
    }


def serving_status(
    vmodel: mm.VModelStatusInfo, runtime: str, generation: int, endpoints: Endpoints, current: Mapping[str, Any]
) -> dict[str, Any]:
    """Status of an InferenceService whose vModel the mesh holds."""
    active = MODEL_STATES[vmodel.activeModelStatus.status]
    transitioning = vmodel.status in (VS.TRANSITIONING, VS.TRANSITION_FAILED)
    target = MODEL_STATES[vmodel.targetModelStatus.status] if transitioning else ""
    model_status: dict[str, Any] = {
        "transitionStatus": TRANSITIONS[vmodel.status],
        "states": {"activeModelState": active, "targetModelState": target},
        "copies": _copies(vmodel.activeModelStatus),
        "runtime": runtime,
    }
    failure = None
    if transitioning:
        failure = _failure(vmodel.targetModelStatus, vmodel.targetModelId)
    failure = failure or _failure(vmodel.activeModelStatus, vmodel.activeModelId)
    if failure is not None:
        model_status["lastFailureInfo"] = failure
    ready = active in READY_STATES
    message = failure["message"] if failure else f"the model is {active}"
    status = _frame(generation, endpoints)
    status["modelStatus"] = model_status
    status["conditions"] = _condition(ready, "ModelNotReady" if active != "FailedToLoad" else "ModelLoadFailed", message, current)
    return status


def problem_status(
    transition: str, reason: str, message: str, generation: int, endpoints: Endpoints, current: Mapping[str, Any],
    vmodel: mm.VModelStatusInfo | None = None, blocked_state: str = "FailedToLoad",
) -> dict[str, Any]:
    """Status when the spec cannot be served as asked (InvalidSpec, no
    runtime, the mesh not reachable yet). A vModel the mesh still serves from
    before stays visible and ready, with the problem as its target's state:
    the problem blocks the change, not what already works."""
    status = _frame(generation, endpoints)
    serving = vmodel is not None and vmodel.status != VS.NOT_FOUND
    active = MODEL_STATES[vmodel.activeModelStatus.status] if serving else blocked_state
    failure: dict[str, Any] = {"reason": reason, "message": message}
    old = (current.get("modelStatus") or {}).get("lastFailureInfo") or {}
    # a failure that is not a copy's has no time of its own: keep the first one
    same = old.get("reason") == reason and old.get("message") == message and old.get("time")
    failure["time"] = old["time"] if same else _now()
    status["modelStatus"] = {
        "transitionStatus": transition,
        "states": {"activeModelState": active, "targetModelState": blocked_state if serving else ""},
        "copies": _copies(vmodel.activeModelStatus) if serving else {"totalCopies": 0, "failedCopies": 0},
        "lastFailureInfo": failure,
    }
    ready = serving and active in READY_STATES
    status["conditions"] = _condition(ready, reason, message, current)
    return status
