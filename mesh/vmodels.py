"""vModels: stable aliases (an InferenceService name) for concrete models
that change underneath them, as in ModelMesh.

`setVModel` points an alias at a target model. While the active model is
serving, the target is loaded first — to as many copies as the active model
has — and only then does the alias flip; if the target fails to load, the old
model keeps serving and the alias reports TRANSITION_FAILED until a retry
succeeds. Reference counts on the models (in the same etcd transactions as the
alias changes) keep referenced models from being unregistered and let
`autoDeleteTargetModel` models go when nothing refers to them any more.

Any sidecar drives a transition it started; the leader re-drives transitions
whose driver died and retries failed ones after the load back-off.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from mesh.clock import now_ms
from mesh.errors import (
    AlreadyExists,
    InvalidInput,
    MeshError,
    ModelLoadFailed,
    ModelNotFound,
    PreconditionFailed,
    RegistryUnavailable,
)
from mesh.records import ModelRecord, VModelRecord
from mesh.router import Router
from mesh.store import EtcdTable, RegistryStore, Write, commit
from mesh.views import RegistryView, TableView
from placement import in_backoff
from protos import model_mesh_pb2 as mm

log = logging.getLogger(__name__)

COMMIT_RETRIES = 20
STALE_TRANSITION_MS = 30_000
VStatus = mm.VModelStatusInfo


def vmodel_status(
    record: VModelRecord | None, model_status: Callable[[str], mm.ModelStatusInfo], owner: str = ""
) -> mm.VModelStatusInfo:
    """getVModelStatus's answer for `record` (None: not defined); shared by the
    sidecar and the Kubernetes controller, which reads the same etcd tables."""
    if record is None or (owner and record.owner != owner):
        return VStatus(status=VStatus.NOT_FOUND, activeModelStatus=mm.ModelStatusInfo(status=mm.ModelStatusInfo.NOT_FOUND))
    info = VStatus(
        status=VStatus.DEFINED,
        activeModelId=record.active,
        targetModelId=record.target,
        activeModelStatus=model_status(record.active),
        owner=record.owner,
    )
    if record.transitioning:
        info.status = VStatus.TRANSITION_FAILED if record.failed else VStatus.TRANSITIONING
        info.targetModelStatus.CopyFrom(model_status(record.target))
    return info


class VModels:
    def __init__(
        self,
        store: RegistryStore,
        registry: RegistryView,
        table: EtcdTable[VModelRecord],
        view: TableView[VModelRecord],
        router: Router,
        model_status: Callable[[str], mm.ModelStatusInfo],
        *,
        default_owner: str = "",
        failure_backoff_ms: int = 30_000,
    ) -> None:
        self.store = store
        self.registry = registry
        self.table = table
        self.view = view
        self.router = router
        self._model_status = model_status
        self.default_owner = default_owner
        self.failure_backoff_ms = failure_backoff_ms
        self._driving: dict[str, asyncio.Task[None]] = {}
        self._failed_at: dict[str, int] = {}
        self._first_seen: dict[str, int] = {}  # transitions seen pending, by the leader

    # ---- reads ------------------------------------------------------------------

    async def active_model(self, vmodel_id: str) -> str:
        """The model requests for this alias go to: from the view; from etcd
        only when the view has not heard of it (defined a moment ago)."""
        record = self.view.get(vmodel_id)
        if record is None:
            record = await self.table.get(vmodel_id)
            if record is None:
                raise ModelNotFound(f"vModel {vmodel_id!r} is not defined")
            self.view.apply(record)
        return record.active

    def status(self, vmodel_id: str, owner: str = "") -> mm.VModelStatusInfo:
        return vmodel_status(self.view.get(vmodel_id), self._model_status, owner)

    # ---- setVModel -------------------------------------------------------------

    async def set(self, request: mm.SetVModelRequest, register: Callable) -> mm.VModelStatusInfo:
        if not request.vModelId:
            raise InvalidInput("vModelId is empty")
        if not request.targetModelId:
            raise InvalidInput(f"vModel {request.vModelId!r}: targetModelId is empty")
        owner = request.owner or self.default_owner
        if request.HasField("modelInfo"):
            await register(
                mm.RegisterModelRequest(modelId=request.targetModelId, modelInfo=request.modelInfo),
                auto_delete=request.autoDeleteTargetModel,
            )
        for _ in range(COMMIT_RETRIES):
            if await self._try_set(request, owner):
                break
        else:
            raise RegistryUnavailable(f"vModel {request.vModelId!r} kept changing; gave up")
        record = self.view.get(request.vModelId)
        if record is not None and (record.transitioning or request.loadNow):
            work = self.drive(request.vModelId, load_now=request.loadNow)
            if request.sync:
                await work
            else:
                self._spawn(request.vModelId, work)
        return self.status(request.vModelId)

    async def _try_set(self, request: mm.SetVModelRequest, owner: str) -> bool:
        vmodel_id, target = request.vModelId, request.targetModelId
        current = await self.table.get(vmodel_id)
        if current is None and request.updateOnly:
            raise ModelNotFound(f"vModel {vmodel_id!r} does not exist (updateOnly)")
        if current is not None and current.owner != owner:
            raise AlreadyExists(f"vModel {vmodel_id!r} belongs to owner {current.owner!r}")
        expected = request.expectedTargetModelId
        if expected and current is not None and current.target != expected:
            raise PreconditionFailed(f"vModel {vmodel_id!r} targets {current.target!r}, not the expected {expected!r}")
        if current is not None and current.target == target:
            return True  # nothing to change
        models = await self._read_models({target} | ({current.target} if current else set()))
        if target not in models:
            raise ModelNotFound(f"target model {target!r} of vModel {vmodel_id!r} is not registered")
        writes: list[Write] = []
        # the vModel holds one reference on each of its active and target models
        # (one when they are the same): re-targeting to the active adds none
        gains_reference = current is None or target != current.active
        if current is None:
            record = VModelRecord(vmodel_id, active=target, target=target, owner=owner)
            writes.append(Write(self.table, vmodel_id, record, 0))
        else:
            record = current.copy()
            record.target, record.failed = target, False
            if current.target != current.active and current.target != target:
                # the previous target never became active: release it
                writes += self._release(models[current.target])
            if request.force or self._loaded_copies(current.active) == 0 and not request.loadNow:
                # nothing is serving the old model (or the caller insists): flip now
                record.active = target
                if current.active != target:
                    active = models.get(current.active) or await self.store.get(current.active)
                    if active is not None:
                        writes += self._release(active)
            writes.append(Write(self.table, vmodel_id, record, current.mod_revision))
        if gains_reference:
            new_target = models[target].copy()
            new_target.refs += 1
            writes.insert(0, Write(self.store, target, new_target, models[target].mod_revision))
        revision = await commit(self.store.client, writes)
        if revision is None:
            return False
        record.mod_revision = revision
        self.view.apply(record)
        return True

    # ---- deleteVModel ------------------------------------------------------------

    async def delete(self, vmodel_id: str, owner: str = "") -> None:
        for _ in range(COMMIT_RETRIES):
            current = await self.table.get(vmodel_id)
            if current is None:
                return
            if (owner or self.default_owner) and current.owner != (owner or self.default_owner):
                raise ModelNotFound(f"vModel {vmodel_id!r} has another owner")
            models = await self._read_models({current.active, current.target})
            writes = [Write(self.table, vmodel_id, None, current.mod_revision)]
            for model_id in {current.active, current.target}:
                if model_id in models:
                    writes += self._release(models[model_id])
            revision = await commit(self.store.client, writes)
            if revision is not None:
                self.view.apply_delete(vmodel_id, revision)
                return
        raise RegistryUnavailable(f"vModel {vmodel_id!r} kept changing; gave up")

    # ---- transitions ---------------------------------------------------------------

    def _spawn(self, vmodel_id: str, work) -> None:
        if vmodel_id in self._driving:
            work.close()
            return
        task = asyncio.create_task(work, name=f"vmodel-{vmodel_id}")
        self._driving[vmodel_id] = task
        task.add_done_callback(lambda t: self._driving.pop(vmodel_id, None))

    def pending(self) -> list[VModelRecord]:
        """Transitions the leader should (re-)drive: failed ones once their
        back-off is over, and ones nobody has finished for `STALE_TRANSITION_MS`
        (their driver died) — not fresh ones another sidecar is driving."""
        now = now_ms()
        due = []
        transitioning = {r.vmodel_id: r for r in self.view.records() if r.transitioning}
        for stale in set(self._first_seen) - set(transitioning):
            del self._first_seen[stale]
        for vmodel_id, record in transitioning.items():
            if vmodel_id in self._driving:
                continue
            first_seen = self._first_seen.setdefault(vmodel_id, now)
            if record.failed:
                if not in_backoff(self._failed_at.get(vmodel_id, first_seen), now, self.failure_backoff_ms):
                    due.append(record)
            elif now - first_seen >= STALE_TRANSITION_MS:
                due.append(record)
        return due

    def retry_pending(self) -> None:
        for record in self.pending():
            self._spawn(record.vmodel_id, self.drive(record.vmodel_id))

    async def drive(self, vmodel_id: str, *, load_now: bool = False) -> None:
        """Load the target to the active model's number of copies, then flip.
        Idempotent: flips only from the state it read (CAS)."""
        record = self.view.get(vmodel_id)
        if record is None:
            return
        if not record.transitioning:
            if load_now:
                await self._ensure_copies(record.target, 1)
            return
        wanted = max(1, self._loaded_copies(record.active))
        try:
            await self._ensure_copies(record.target, wanted)
        except MeshError as exc:
            log.warning("vModel %s: target %s failed to load: %s", vmodel_id, record.target, exc.message)
            self._failed_at[vmodel_id] = now_ms()
            await self._mark_failed(vmodel_id, record.target)
            return
        self._failed_at.pop(vmodel_id, None)
        await self._flip(vmodel_id, record.target)

    async def _ensure_copies(self, model_id: str, wanted: int) -> None:
        record = await self.router.record(model_id)
        have = self._loaded_copies(model_id)
        tried: set[str] = set()
        while have < wanted:
            holders = set(record.instances) | tried
            target = await self.router.load_target(record, holders)
            if target is None:
                break  # no more room: serve with the copies there are
            tried.add(target)
            await self.router.load_on(target, model_id)
            have += 1
        if have == 0:
            raise ModelLoadFailed(f"model {model_id!r} could not be loaded anywhere")

    def _loaded_copies(self, model_id: str) -> int:
        record = self.registry.get(model_id)
        if record is None:
            return 0
        live = self.router.live_instances()
        local = 1 if self.router.loader.try_peek(model_id) else 0
        others = sum(1 for i in record.instances if i in live and i != self.router.instance_id)
        return others + local

    async def _flip(self, vmodel_id: str, target: str) -> None:
        for _ in range(COMMIT_RETRIES):
            current = await self.table.get(vmodel_id)
            if current is None or current.target != target or not current.transitioning:
                return  # deleted or re-targeted meanwhile: nothing of ours to finish
            models = await self._read_models({current.active})
            record = current.copy()
            record.active, record.failed = target, False
            writes = [Write(self.table, vmodel_id, record, current.mod_revision)]
            if current.active in models:
                writes += self._release(models[current.active])
            revision = await commit(self.store.client, writes)
            if revision is not None:
                record.mod_revision = revision
                self.view.apply(record)
                log.info("vModel %s now serves %s (was %s)", vmodel_id, target, current.active)
                return

    async def _mark_failed(self, vmodel_id: str, target: str) -> None:
        def mark(record: VModelRecord) -> VModelRecord | None:
            if record.target != target or record.failed:
                return None
            record.failed = True
            return record

        stored = await self.table.update(vmodel_id, mark)
        if stored is not None:
            self.view.apply(stored)

    # ---- helpers ----------------------------------------------------------------

    async def _read_models(self, ids: set[str]) -> dict[str, ModelRecord]:
        """Fresh (strong) reads: refs must be counted on the latest revision."""
        found = await asyncio.gather(*(self.store.get(i) for i in ids))
        return {r.model_id: r for r in found if r is not None}

    def _release(self, model: ModelRecord) -> list[Write]:
        """Drop one reference; an auto-delete model with none left goes."""
        model = model.copy()
        model.refs = max(0, model.refs - 1)
        if model.refs == 0 and model.auto_delete:
            return [Write(self.store, model.model_id, None, model.mod_revision)]
        return [Write(self.store, model.model_id, model, model.mod_revision)]
