"""ModelStatusInfo for getModelStatus and friends, from the registry record
overlaid with this instance's own (fresher) view of its copy."""

from __future__ import annotations

from mesh.copy_recorder import CopyState
from mesh.loader import ModelLoader
from mesh.records import ModelRecord
from protos import model_mesh_pb2 as mm

Status = mm.ModelStatusInfo
_COPY_STATUS = {
    CopyState.LOADING: Status.LOADING,
    CopyState.LOADED: Status.LOADED,
    CopyState.FAILED: Status.LOADING_FAILED,
}


def model_status(record: ModelRecord | None, loader: ModelLoader | None = None, instance_id: str = "") -> mm.ModelStatusInfo:
    """The model's status from its registry record; with a loader, this
    instance's own copy is taken from the loader instead (fresher). Without
    one (the Kubernetes controller, which has only the etcd view) the record
    alone."""
    if record is None:
        return Status(status=Status.NOT_FOUND)
    copies: dict[str, tuple[int, int, str]] = {}  # instance -> (status, time, error)
    for inst, at in record.loading.items():
        copies[inst] = (Status.LOADING, at, "")
    for inst, at in record.instances.items():
        copies[inst] = (Status.LOADED, at, "")
    for inst, (at, error) in record.failures.items():
        if inst not in copies:
            copies[inst] = (Status.LOADING_FAILED, at, error)
    if loader is not None:
        # this instance knows its own copy better than the (asynchronously written) record
        copies.pop(instance_id, None)
        local = loader.copies.get(record.model_id) or loader.failure_of(record.model_id)
        if local is not None:
            copies[instance_id] = (_COPY_STATUS[local.state], local.since_ms, local.error)
    infos = sorted(copies.items(), key=lambda item: item[1][1], reverse=True)
    states = {state for state, _, _ in copies.values()}
    if Status.LOADED in states:
        overall = Status.LOADED
    elif Status.LOADING in states:
        overall = Status.LOADING
    elif Status.LOADING_FAILED in states:
        overall = Status.LOADING_FAILED
    else:
        overall = Status.NOT_LOADED
    errors = [error for _, (state, _, error) in infos if state == Status.LOADING_FAILED and error]
    return Status(
        status=overall,
        errors=errors if overall == Status.LOADING_FAILED else [],
        modelCopyInfos=[Status.ModelCopyInfo(location=inst, copyStatus=state, time=at) for inst, (state, at, _) in infos],
    )
