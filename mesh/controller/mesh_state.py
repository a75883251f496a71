"""The mesh's state as the controller sees it: the registry and vModel tables
in etcd, watched into views (the same `TableView` every sidecar uses).

This is the push that drives InferenceService status: a copy that finishes
loading, fails, or a vModel that flips writes etcd, the watch delivers it, and
the owning InferenceService is queued — no polling of the mesh (ModelMesh's
controller requeues every second while a model loads). Status is computed
from these views (`vmodel_status`), so it is never older than the event that
asked for it. Writes still go through the mesh's gRPC API (`MeshClient`),
which validates them and drives loads."""

from __future__ import annotations

from collections.abc import Callable

from mesh.controller.predictor import OWNER, vmodel_of
from mesh.records import ModelRecord, VModelRecord
from mesh.status import model_status
from mesh.store import EtcdTable, RegistryStore
from mesh.views import TableView
from mesh.vmodels import vmodel_status
from protos import model_mesh_pb2 as mm


class MeshState:
    def __init__(self, etcd_endpoints: str, kv_prefix: str, on_change: Callable[[str], None]) -> None:
        """`on_change(vmodel_id)` is called (on the event loop) whenever that
        vModel or one of its concrete models changes."""
        self._on_change = on_change
        self.store = RegistryStore(etcd_endpoints, kv_prefix)
        self.registry: TableView[ModelRecord] = TableView(self.store)
        self.vmodels: TableView[VModelRecord] = TableView(
            EtcdTable(self.store.client, kv_prefix, "vmodels", VModelRecord.from_json)
        )
        self.registry.add_listener(self._on_model)
        self.vmodels.add_listener(self._on_vmodel)

    async def start(self) -> None:
        await self.store.connect()
        await self.registry.start()
        await self.vmodels.start()

    async def stop(self) -> None:
        await self.vmodels.stop()
        await self.registry.stop()
        await self.store.close()

    def _on_model(self, model_id: str, record: ModelRecord | None) -> None:
        name = vmodel_of(model_id)
        if name is not None:
            self._on_change(name)

    def _on_vmodel(self, vmodel_id: str, record: VModelRecord | None) -> None:
        self._on_change(vmodel_id)

    def vmodel_status(self, vmodel_id: str) -> mm.VModelStatusInfo:
        return vmodel_status(self.vmodels.get(vmodel_id), lambda model_id: model_status(self.registry.get(model_id)))

    def vmodel(self, vmodel_id: str) -> VModelRecord | None:
        return self.vmodels.get(vmodel_id)

    def owned_vmodels(self) -> list[str]:
        """vModels made for InferenceServices (owner `isvc`)."""
        return [record.vmodel_id for record in self.vmodels.records() if record.owner == OWNER]
