"""Assembles one sidecar: runtime client, registry store and view, loader,
router, data plane, the gRPC server and the metrics endpoint; and takes them
down again in reverse order."""

from __future__ import annotations

import asyncio
import logging
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from prometheus_client import start_http_server

from mesh.clock import now_ms
from mesh.copies import CopyPolicy, CopyScaler
from mesh.copy_recorder import CopyRecorder, CopyState, DesiredCopy
from mesh.dataplane import DataPlane
from mesh.frontend_grpc import InferenceFrontend
from mesh.loader import LoaderConfig, ModelLoader
from mesh.management import ExtensionsFrontend, Management, ManagementFrontend
from mesh.metrics import MeshMetrics
from mesh.instance_publisher import InstancePublisher
from mesh.leader import Leader
from mesh.passthrough import MethodPolicy, PassthroughHandler
from mesh.peers import Peers
from mesh.records import InstanceRecord, ModelRecord, VModelRecord
from mesh.status import model_status
from mesh.router import Router
from mesh.runtime_client import GrpcRuntime, InProcessRuntime, RuntimeClient
from mesh.settings import MeshSettings
from mesh.store import EtcdTable, RegistryStore
from mesh.type_constraints import TypeConstraints
from mesh.views import RegistryView, TableView
from mesh.vmodels import VModels
from protos import grpc_predict_v2_pb2_grpc as v2_grpc
from protos import model_mesh_pb2_grpc as mm_grpc
from protos import mmesh_ext_pb2_grpc as ext_grpc
from runtime_adapter.factory import build_repository
from runtime_adapter.model_files import ModelFiles, build_model_files
from runtime_adapter.server import SERVER_OPTIONS

log = logging.getLogger(__name__)


@dataclass
class Sidecar:
    settings: MeshSettings
    metrics: MeshMetrics = field(default_factory=MeshMetrics)
    grpc_port: int = 0  # the bound port, once started
    metrics_port: int = 0

    async def start(self) -> "Sidecar":
        """Start everything; if any part fails, stop what already started
        (a half-started gRPC server or etcd watch must not outlive the failure)."""
        try:
            return await self._start()
        except BaseException:
            await self.stop(grace_s=0)
            raise

    async def _start(self) -> "Sidecar":
        s = self.settings
        self._metrics_server = None
        self._temp_models_dir: Path | None = None
        self.runtime = await self._connect_runtime()
        status = await self.runtime.status()  # also purges models left from a previous life
        self.store = RegistryStore(s.etcd_endpoints, s.kv_prefix)
        await self.store.connect()
        self.view = RegistryView(self.store)
        await self.view.start()
        self.recorder = CopyRecorder(self.store, self.view, s.instance_id)
        self.loader = ModelLoader(
            self.runtime,
            LoaderConfig(
                capacity_bytes=status.capacityInBytes,
                max_loading_concurrency=max(1, status.maxLoadingConcurrency),
                load_timeout_s=(status.modelLoadingTimeoutMs or 90_000) / 1000,
                default_model_size_bytes=status.defaultModelSizeInBytes or (1 << 20),
                failure_backoff_ms=s.load_failure_backoff_ms,
                capacity_wait_s=s.capacity_wait_s,
            ),
            self.recorder,
            self.metrics,
        )
        self.view.add_listener(self._on_registry_change)
        self.metrics.models_managed.set(len(self.view))
        self._forget_stale_copies()
        self.instances_table = EtcdTable(self.store.client, s.kv_prefix, "instances", InstanceRecord.from_json)
        self.instances = TableView(self.instances_table)
        await self.instances.start()
        self.peers = Peers(self.instances)
        self.labels = frozenset(label for label in s.labels.split(",") if label) | self.runtime.type_labels()
        self.router = Router(
            self.view, self.store, self.loader, self.metrics,
            instance_id=s.instance_id, instances=self.instances, peers=self.peers,
            failure_backoff_ms=s.load_failure_backoff_ms,
            zone=s.zone, labels=self.labels, constraints=TypeConstraints.parse(s.type_constraints),
        )
        self.vmodel_table = EtcdTable(self.store.client, s.kv_prefix, "vmodels", VModelRecord.from_json)
        self.vmodel_view = TableView(self.vmodel_table)
        await self.vmodel_view.start()
        self.vmodels = VModels(
            self.store, self.view, self.vmodel_table, self.vmodel_view, self.router,
            lambda model_id: model_status(self.view.get(model_id), self.loader, s.instance_id),
            default_owner=s.default_vmodel_owner, failure_backoff_ms=s.load_failure_backoff_ms,
        )
        self.dataplane = DataPlane(self.router, s.request_timeout_s, s.instance_id, self.vmodels)
        self.management = Management(self.store, self.view, self.loader, self.router, s.instance_id, self.vmodels)
        self.server = grpc.aio.server(options=SERVER_OPTIONS)
        v2_grpc.add_GRPCInferenceServiceServicer_to_server(
            InferenceFrontend(self.dataplane, self.metrics, lambda: self.view.synced.is_set()), self.server
        )
        mm_grpc.add_ModelMeshServicer_to_server(ManagementFrontend(self.management, self.metrics), self.server)
        ext_grpc.add_ModelMeshExtensionsServicer_to_server(ExtensionsFrontend(self.management, self.metrics), self.server)
        self.server.add_generic_rpc_handlers((PassthroughHandler(self.dataplane, MethodPolicy(status), self.metrics),))
        self.grpc_port = self.server.add_insecure_port(f"{s.host}:{s.grpc_port}")
        if not self.grpc_port:
            raise OSError(f"could not bind gRPC port {s.host}:{s.grpc_port}")
        await self.server.start()
        self._started_ms = now_ms()
        self._rate_mark = (asyncio.get_running_loop().time(), 0)
        self.publisher = InstancePublisher(
            self.instances_table, self.instances, self._instance_record,
            ttl_s=s.instance_ttl_s, on_new_lease=self._announce_copies,
        )
        await self.publisher.start()
        self.loader.on_change = self.publisher.changed
        self.scaler = CopyScaler(
            self.router, self.loader, self.view,
            CopyPolicy(s.copy_scale_interval_s, s.scale_up_rps, s.scale_up_in_flight, int(s.copy_idle_s * 1000)),
        )
        await self.scaler.start()
        self.leader = Leader(
            self.store, self.view, self.instances, s.instance_id, lambda: self.publisher.lease,
            on_round=self._leader_round,
        )
        await self.leader.start()
        if s.metrics_port > 0:
            self._metrics_server, _ = start_http_server(s.metrics_port, addr=s.host, registry=self.metrics.registry)
            self.metrics_port = self._metrics_server.server_port
        log.info("sidecar %s serving on %s:%d", s.instance_id, s.host, self.grpc_port)
        return self

    async def _connect_runtime(self) -> RuntimeClient:
        s = self.settings
        if s.runtime == "inprocess":
            return InProcessRuntime(
                build_repository(s.runtime_capacity_bytes or None, device=s.device, files=self._model_files())
            )
        runtime = GrpcRuntime(s.runtime)
        await runtime.wait_ready(s.runtime_wait_s)
        return runtime

    def _model_files(self) -> ModelFiles:
        """The in-process adapter's puller, configured from the settings."""
        s = self.settings
        if s.models_dir:
            models_dir = Path(s.models_dir)
        else:
            models_dir = self._temp_models_dir = Path(tempfile.mkdtemp(prefix="mmesh-models-"))
        return build_model_files(
            models_dir,
            storage_config_dir=Path(s.storage_config_dir) if s.storage_config_dir else None,
            pvc_mounts_dir=Path(s.pvc_mounts_dir),
            disk_budget_bytes=s.models_disk_budget_bytes,
            pull_deadline_s=s.pull_deadline_s,
        )

    def _forget_stale_copies(self) -> None:
        """Records may still list copies from this instance id's previous life;
        the runtime was just purged, so they are gone."""
        me = self.settings.instance_id
        for record in self.view.records():
            if me in record.instances or me in record.loading:
                self.recorder.set(record.model_id, DesiredCopy(None, 0))

    def _leader_round(self) -> None:
        self.vmodels.retry_pending()
        self.scaler.top_up()

    def _instance_record(self) -> InstanceRecord:
        s, lru = self.settings, self.loader.lru
        now = asyncio.get_running_loop().time()
        then, count = self._rate_mark
        rate = (self.router.requests - count) / (now - then) if now > then else 0.0
        self._rate_mark = (now, self.router.requests)
        return InstanceRecord(
            instance_id=s.instance_id,
            endpoint=f"{s.advertise_host or s.host}:{self.grpc_port}",
            zone=s.zone,
            labels=tuple(sorted(self.labels)),
            capacity_bytes=lru.capacity_bytes,
            used_bytes=lru.used_bytes,
            lru_ms=lru.lru_ms() or 0,
            count=len(lru),
            loading=self.loader.loading_count,
            req_rate=rate,
            start_ms=self._started_ms,
        )

    def _announce_copies(self) -> None:
        """After a lost lease the janitor may have dropped our copies from the
        records; state them again."""
        for copy in list(self.loader.copies.values()):
            if copy.state is CopyState.LOADED:
                self.recorder.set(copy.model_id, DesiredCopy(CopyState.LOADED, copy.since_ms, copy.size_bytes))

    def _on_registry_change(self, model_id: str, record: ModelRecord | None) -> None:
        if record is None:
            self.loader.forget(model_id)
        self.metrics.models_managed.set(len(self.view))

    @property
    def address(self) -> str:
        return f"{self.settings.host}:{self.grpc_port}"

    async def stop(self, grace_s: float = 2.0) -> None:
        """Stop in reverse order; safe on a partly started sidecar, and one
        failing step does not keep the others from running."""
        steps = [
            ("leader", lambda: self.leader.stop()),
            ("scaler", lambda: self.scaler.stop()),
            ("server", lambda: self.server.stop(grace_s)),
            ("_metrics_server", self._stop_metrics),
            ("loader", lambda: self.loader.unload_all()),
            ("recorder", lambda: self.recorder.flush(timeout_s=3)),
            ("recorder", lambda: self.recorder.close()),
            ("publisher", lambda: self.publisher.stop()),
            ("peers", lambda: self.peers.close()),
            ("instances", lambda: self.instances.stop()),
            ("vmodel_view", lambda: self.vmodel_view.stop()),
            ("view", lambda: self.view.stop()),
            ("store", lambda: self.store.close()),
            ("runtime", lambda: self.runtime.close()),
            ("_temp_models_dir", self._remove_temp_models_dir),
        ]
        for attribute, step in steps:
            if getattr(self, attribute, None) is None:
                continue
            try:
                await step()
            except Exception:
                log.exception("stopping %s failed", attribute)

    async def _remove_temp_models_dir(self) -> None:
        path, self._temp_models_dir = self._temp_models_dir, None
        await asyncio.to_thread(shutil.rmtree, path, True)

    async def _stop_metrics(self) -> None:
        server, self._metrics_server = self._metrics_server, None
        server.shutdown()
        server.server_close()
