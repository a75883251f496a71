"""Management API: ModelMesh's `mmesh.ModelMesh` (register, unregister,
status, ensureLoaded) and our `mmesh.ModelMeshExtensions` (list, bulk
register). Registry writes go to etcd first and then straight into this
sidecar's view, so a request right after registerModel finds the model.
"""

from __future__ import annotations

import asyncio
import bisect
import itertools
import logging


from mesh.clock import now_ms
from mesh.errors import AlreadyExists, InvalidInput, MeshError, PreconditionFailed, RegistryUnavailable
from mesh.grpc_errors import serve_call
from mesh.loader import ModelLoader
from mesh.metrics import MeshMetrics
from mesh.records import ModelRecord
from mesh.router import Router
from mesh.status import model_status
from mesh.store import CAS_RETRIES, RegistryStore
from mesh.views import RegistryView
from mesh.vmodels import VModels
from puller import PullError, parse_model_source
from protos import model_mesh_pb2 as mm
from protos import model_mesh_pb2_grpc as mm_grpc
from protos import mmesh_ext_pb2 as ext
from protos import mmesh_ext_pb2_grpc as ext_grpc

log = logging.getLogger(__name__)

# ModelMesh gives new models a last-used time an hour back, so a registration
# never displaces models that served in the last hour.
LAST_USED_AGE_ON_REGISTER_MS = 3_600_000
DEFAULT_PAGE_SIZE = 500
MAX_MODEL_ID_LENGTH = 512


def validate_registration(request: mm.RegisterModelRequest) -> ModelRecord:
    model_id = request.modelId
    if not model_id:
        raise InvalidInput("modelId is empty")
    if len(model_id) > MAX_MODEL_ID_LENGTH or any(c in model_id for c in "\x00\n\r"):
        raise InvalidInput(f"modelId {model_id[:64]!r}… is not a valid id")
    if not request.HasField("modelInfo") or not request.modelInfo.type:
        raise InvalidInput(f"model {model_id!r}: modelInfo.type is required (e.g. 'onnx')")
    info = request.modelInfo
    if info.path or info.key:
        # a malformed URI, unsafe path or bad key JSON is refused here, once,
        # rather than failing (and being retried) at every load
        try:
            parse_model_source(info.path, info.key)
        except PullError as exc:
            raise InvalidInput(f"model {model_id!r}: {exc.message}") from exc
    last_used = request.lastUsedTime or (now_ms() - LAST_USED_AGE_ON_REGISTER_MS)
    return ModelRecord(model_id=model_id, type=info.type, path=info.path, key=info.key, last_used_ms=last_used)


class Management:
    """The operations behind both services, independent of the wire."""

    def __init__(
        self, store: RegistryStore, view: RegistryView, loader: ModelLoader, router: Router, instance_id: str, vmodels: VModels
    ) -> None:
        self.vmodels = vmodels
        self.store = store
        self.view = view
        self.loader = loader
        self.router = router
        self.instance_id = instance_id
        self._background: set[asyncio.Task[object]] = set()

    def status(self, model_id: str) -> mm.ModelStatusInfo:
        return model_status(self.view.get(model_id), self.loader, self.instance_id)

    async def register(
        self, request: mm.RegisterModelRequest, *, auto_delete: bool = False, min_copies: int = 0
    ) -> mm.ModelStatusInfo:
        record = validate_registration(request)
        record.auto_delete = auto_delete
        record.min_copies = min_copies
        created, stored = await self.store.create(record)
        if not created and not (stored.same_definition(record) and stored.min_copies == record.min_copies):
            raise AlreadyExists(
                f"model {record.model_id!r} already exists with different attributes "
                f"(type={stored.type!r}, path={stored.path!r}, key={stored.key!r}, minCopies={stored.min_copies})"
            )
        self.view.apply(stored)
        if request.loadNow:
            await self._load(stored, sync=request.sync)
        return self.status(record.model_id)

    async def unregister(self, model_id: str) -> None:
        if not model_id:
            raise InvalidInput("modelId is empty")
        # copy-state writes may land between the read and the delete: the
        # delete is conditional (a vModel reference must not slip in), so retry
        for _ in range(CAS_RETRIES):
            record = await self.store.get(model_id)
            if record is None:
                return
            if record.refs:
                raise PreconditionFailed(
                    f"model {model_id!r} is referenced by {record.refs} vModel(s); delete or re-target them first"
                )
            revision = await self.store.delete_if_unchanged(model_id, record.mod_revision)
            if revision is not None:
                self.view.apply_delete(model_id, revision)
                return
        raise RegistryUnavailable(f"model {model_id!r} kept changing while being unregistered; try again")

    async def ensure_loaded(self, request: mm.EnsureLoadedRequest) -> mm.ModelStatusInfo:
        record = await self.router.record(request.modelId)
        await self._load(record, sync=request.sync)
        return self.status(request.modelId)

    async def _load(self, record: ModelRecord, *, sync: bool) -> None:
        """Load now; failures show in the returned status (LOADING_FAILED), as
        in ModelMesh, rather than failing the management call."""
        work = self._quiet_load(record)
        if sync:
            await work
        else:
            task = asyncio.create_task(work)
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    async def _quiet_load(self, record: ModelRecord) -> None:
        try:
            await self.loader.ensure_loaded(record)
        except MeshError as exc:
            log.info("load of %s requested by management failed: %s", record.model_id, exc.message)

    def list(self, request: ext.ListModelsRequest) -> ext.ListModelsResponse:
        wanted = set(request.statusFilter)
        page_size = request.pageSize or DEFAULT_PAGE_SIZE
        ordered = self.view.sorted_ids()
        start = bisect.bisect_right(ordered, request.pageToken) if request.pageToken else 0
        models: list[ext.ModelSummary] = []
        last = ""
        for model_id in itertools.islice(ordered, start, None):
            record = self.view.get(model_id)
            if record is None:
                continue
            status = model_status(record, self.loader, self.instance_id)
            last = model_id
            if wanted and status.status not in wanted:
                continue
            models.append(
                ext.ModelSummary(
                    modelId=model_id,
                    modelInfo=mm.ModelInfo(type=record.type, path=record.path, key=record.key),
                    status=status,
                    sizeInBytes=record.size_bytes,
                    copies=sum(1 for c in status.modelCopyInfos if c.copyStatus == mm.ModelStatusInfo.LOADED),
                )
            )
            if len(models) >= page_size:
                break
        more = bool(models) and last != ordered[-1]
        return ext.ListModelsResponse(models=models, nextPageToken=last if more else "", totalModels=len(self.view))


class ManagementFrontend(mm_grpc.ModelMeshServicer):
    def __init__(self, management: Management, metrics: MeshMetrics) -> None:
        self.m = management
        self.metrics = metrics

    async def registerModel(self, request, context):
        return await serve_call(context, self.metrics, "registerModel", self.m.register(request))

    async def unregisterModel(self, request, context):
        async def work():
            await self.m.unregister(request.modelId)
            return mm.UnregisterModelResponse()

        return await serve_call(context, self.metrics, "unregisterModel", work())

    async def getModelStatus(self, request, context):
        async def work():
            return self.m.status(request.modelId)

        return await serve_call(context, self.metrics, "getModelStatus", work())

    async def ensureLoaded(self, request, context):
        return await serve_call(context, self.metrics, "ensureLoaded", self.m.ensure_loaded(request))

    async def setVModel(self, request, context):
        return await serve_call(context, self.metrics, "setVModel", self.m.vmodels.set(request, self.m.register))

    async def getVModelStatus(self, request, context):
        async def work():
            return self.m.vmodels.status(request.vModelId, request.owner)

        return await serve_call(context, self.metrics, "getVModelStatus", work())

    async def deleteVModel(self, request, context):
        async def work():
            await self.m.vmodels.delete(request.vModelId, request.owner)
            return mm.DeleteVModelResponse()

        return await serve_call(context, self.metrics, "deleteVModel", work())


class ExtensionsFrontend(ext_grpc.ModelMeshExtensionsServicer):
    def __init__(self, management: Management, metrics: MeshMetrics) -> None:
        self.m = management
        self.metrics = metrics

    async def listModels(self, request, context):
        async def work():
            return self.m.list(request)

        return await serve_call(context, self.metrics, "listModels", work())

    async def registerModels(self, request, context):
        async def work():
            min_copies = dict(request.minCopies)
            unknown = set(min_copies) - {r.modelId for r in request.models}
            if unknown:
                raise InvalidInput(f"minCopies names models not in this request: {sorted(unknown)[:5]}")
            results = await asyncio.gather(*(self._one(r, min_copies.get(r.modelId, 0)) for r in request.models))
            return ext.RegisterModelsResponse(results=results)

        return await serve_call(context, self.metrics, "registerModels", work())

    async def _one(self, request: mm.RegisterModelRequest, min_copies: int) -> ext.RegisterModelsResponse.Result:
        try:
            await self.m.register(request, min_copies=min_copies)
        except MeshError as exc:
            return ext.RegisterModelsResponse.Result(modelId=request.modelId, code=exc.code.name, message=exc.message)
        return ext.RegisterModelsResponse.Result(modelId=request.modelId, code="OK")
