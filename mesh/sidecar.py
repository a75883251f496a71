"""Assembles one sidecar: runtime client, registry store and view, loader,
router, data plane, the gRPC server, the REST and probe servers and the
metrics endpoint; and takes them down again in reverse order."""

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
from mesh.drain import DrainConfig, Drainer, DrainReport
from mesh.frontend_grpc import InferenceFrontend
from mesh.frontend_rest import RestFrontend
from mesh.http_server import HttpServer
from mesh.probes import probe_app, sidecar_checks
from mesh.loader import LoaderConfig, ModelLoader
from mesh.management import ExtensionsFrontend, Management, ManagementFrontend
from mesh.metrics import MeshMetrics
from mesh.instance_publisher import InstancePublisher
from mesh.leader import Leader
from mesh.logs import bind_instance
from mesh.passthrough import MethodPolicy, PassthroughHandler
from mesh.payloads import PayloadProcessors
from mesh.peers import Peers
from mesh.records import InstanceRecord, ModelRecord, VModelRecord
from mesh.status import model_status
from mesh.router import Router
from mesh.runtime_client import GrpcRuntime, InProcessRuntime, RuntimeClient
from mesh.settings import MeshSettings
from mesh.store import EtcdTable, RegistryStore
from mesh.tls import TlsMaterial, add_grpc_port, load_tls
from mesh.tls_reload import TlsReloader
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
# One step of stop() (a server, a watch, the runtime) may hang on a peer that
# never answers; shutdown goes on without it rather than hang with it.
STOP_STEP_TIMEOUT_S = 10.0


@dataclass
class Sidecar:
    settings: MeshSettings
    metrics: MeshMetrics = field(default_factory=MeshMetrics)
    grpc_port: int = 0  # the bound port, once started
    metrics_port: int = 0
    rest_port: int = 0  # REST v2 and probe ports, once bound (0 = off)
    probe_port: int = 0
    shutting_down: bool = False  # set when stopping begins: readiness turns 503

    @property
    def tls(self) -> TlsMaterial | None:
        """The TLS material in use (the reloader's latest), or None for plain text."""
        if getattr(self, "tls_reloader", None) is not None:
            return self.tls_reloader.material
        return getattr(self, "_tls_at_start", None)

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
        bind_instance(s.instance_id)  # logging: every task started from here (requests too) carries it
        self.metrics.log_requests = s.log_requests
        self._tls_at_start: TlsMaterial | None = load_tls(s)  # first: bad TLS settings fail before anything runs
        self.tls_reloader = TlsReloader(s, self._tls_at_start) if self._tls_at_start and s.tls_reload_s > 0 else None
        self._tls_watch: asyncio.Task[None] | None = None
        self._metrics_server = None
        self._temp_models_dir: Path | None = None
        self._rest_server: HttpServer | None = None
        self._probe_server: HttpServer | None = None
        # the HTTP ports are claimed first: a taken one fails the start before anything runs
        if s.probe_port > 0:
            self._probe_server = HttpServer(s.host, s.probe_port)
            self.probe_port = self._probe_server.port
        if s.rest_port > 0:
            self._rest_server = HttpServer(s.host, s.rest_port)
            self.rest_port = self._rest_server.port
        if self._probe_server is not None:  # served at once, so /live answers while the rest starts
            await self._probe_server.serve(probe_app(sidecar_checks(self)))
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
        self.peers = Peers(self.instances, self.tls, self.tls_reloader)
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
        # payload logging: None (and free on the request path) unless processors are configured
        self.payloads = PayloadProcessors.build(
            s.payload_processors, sample_rate=s.payload_sample_rate, queue_size=s.payload_queue_size,
            dropped=self.metrics.payloads_dropped, source=f"/mmesh/instances/{s.instance_id}",
            include_data=s.payload_log_data,
        )
        if self.payloads is not None:
            self.payloads.start()
        self.dataplane = DataPlane(self.router, s.request_timeout_s, s.instance_id, self.vmodels, self.payloads)
        self.management = Management(self.store, self.view, self.loader, self.router, s.instance_id, self.vmodels)
        self.server = grpc.aio.server(options=SERVER_OPTIONS)
        v2_grpc.add_GRPCInferenceServiceServicer_to_server(
            InferenceFrontend(self.dataplane, self.metrics, self._serving_ready), self.server
        )
        mm_grpc.add_ModelMeshServicer_to_server(ManagementFrontend(self.management, self.metrics), self.server)
        ext_grpc.add_ModelMeshExtensionsServicer_to_server(ExtensionsFrontend(self.management, self.metrics), self.server)
        self.server.add_generic_rpc_handlers((PassthroughHandler(self.dataplane, MethodPolicy(status), self.metrics),))
        address = f"{s.host}:{s.grpc_port}"
        if self.tls_reloader is not None:
            self.grpc_port = self.server.add_secure_port(address, self.tls_reloader.grpc_server_credentials())
        else:
            self.grpc_port = add_grpc_port(self.server, address, self.tls)
        if not self.grpc_port:
            raise OSError(f"could not bind gRPC port {s.host}:{s.grpc_port}")
        await self.server.start()
        if self._rest_server is not None:  # before the instance is published: peers may send REST clients here
            rest = RestFrontend(self.dataplane, self.metrics, self._serving_ready)
            if self.tls_reloader is not None:
                ssl_context = self.tls_reloader.ssl_context()
            else:
                ssl_context = self.tls.server_ssl_context() if self.tls else None
            await self._rest_server.serve(rest.app(), ssl_context=ssl_context)
        if self.tls_reloader is not None:
            self._tls_watch = asyncio.create_task(self.tls_reloader.run(s.tls_reload_s), name="tls-reload")
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
            shutting_down=self.shutting_down,  # peers' placement skips a draining instance
        )

    def _serving_ready(self) -> bool:
        """v2 ServerReady: the registry view is synced and no drain has begun."""
        return self.view.synced.is_set() and not self.shutting_down

    def _announce_copies(self) -> None:
        """After a lost lease the janitor may have dropped our copies from the
        records; state them again (unless draining: withdrawn on purpose)."""
        if self.shutting_down:
            return
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

    async def drain(self, grace_s: float | None = None, *, migrate: bool = True) -> DrainReport | None:
        """Graceful shutdown (SIGTERM): stop taking loads, copy this
        instance's models to peers, withdraw its copies, then `stop` with what
        is left of the grace period for in-flight calls. The steps and their
        order are in mesh/drain.py. `grace_s` defaults to the settings'
        (`drain_grace_s`, or ModelMesh's SHUTDOWN_TIMEOUT_MS); `migrate=False`
        skips the copies (the whole mesh is going away). Ends stopped, even
        when cancelled; returns what was copied where."""
        bind_instance(self.settings.instance_id)
        self.shutting_down = True
        drainer = Drainer(self, DrainConfig.from_settings(self.settings, grace_s, migrate=migrate))
        report = None
        try:
            report = await drainer.run()
        except Exception:
            log.exception("drain of %s failed; stopping now", self.settings.instance_id)
        finally:
            await self.stop(grace_s=drainer.request_grace_s())
        return report

    async def stop(self, grace_s: float = 2.0) -> None:
        """Stop in reverse order; safe on a partly started sidecar, and one
        failing step does not keep the others from running. Runs once, in
        the first caller's task (a failed start stops what it started at
        once); a later call (after `drain`, say) waits for that one."""
        stopping: asyncio.Future[None] | None = getattr(self, "_stopping", None)
        if stopping is not None:
            await asyncio.shield(stopping)
            return
        self._stopping = asyncio.get_running_loop().create_future()
        try:
            await self._stop(grace_s)
        finally:
            self._stopping.set_result(None)

    async def _stop(self, grace_s: float) -> None:
        bind_instance(self.settings.instance_id)
        self.shutting_down = True
        steps = [
            ("_tls_watch", self._stop_tls_watch),
            ("leader", lambda: self.leader.stop()),
            ("scaler", lambda: self.scaler.stop()),
            ("server", lambda: self.server.stop(grace_s)),
            ("_rest_server", lambda: self._stop_http("_rest_server")),
            ("payloads", lambda: self.payloads.close()),  # after the servers: the last responses are queued
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
            ("_probe_server", lambda: self._stop_http("_probe_server")),  # last: /live answers to the end
        ]
        for attribute, step in steps:
            if getattr(self, attribute, None) is None:
                continue
            try:
                await asyncio.wait_for(step(), STOP_STEP_TIMEOUT_S + grace_s)
            except asyncio.TimeoutError:
                log.error("stopping %s took over %.0f s; going on without it", attribute, STOP_STEP_TIMEOUT_S + grace_s)
            except Exception:
                log.exception("stopping %s failed", attribute)

    async def _stop_tls_watch(self) -> None:
        task, self._tls_watch = self._tls_watch, None
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    async def _stop_http(self, attribute: str) -> None:
        server = getattr(self, attribute)
        setattr(self, attribute, None)
        await server.stop()

    async def _remove_temp_models_dir(self) -> None:
        path, self._temp_models_dir = self._temp_models_dir, None
        await asyncio.to_thread(shutil.rmtree, path, True)

    async def _stop_metrics(self) -> None:
        server, self._metrics_server = self._metrics_server, None
        server.shutdown()
        server.server_close()
