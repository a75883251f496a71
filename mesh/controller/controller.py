"""The controller process: informers on the five kinds it reads, the mesh's
etcd state, a work queue with workers, Lease-based leadership, and a small
HTTP server for probes and metrics.

Informers and the mesh watch run on every replica (warm caches make a
failover fast); only the leader works the queue. When it takes the lead it
queues every key it knows — each InferenceService, each runtime, the Service,
and each `isvc`-owned vModel in the mesh (so one whose InferenceService was
deleted while no controller ran is cleaned up) — which is also what makes a
restart converge."""

from __future__ import annotations

import asyncio
import functools
import logging
from typing import Any

from aiohttp import web
from kubernetes.client.exceptions import ApiException
from kubernetes.client import ApiClient, AppsV1Api, CoordinationV1Api, CoreV1Api, CustomObjectsApi
from prometheus_client import CONTENT_TYPE_LATEST, Counter, generate_latest

from mesh.controller.deployment import MANAGED_BY, RUNTIME_LABEL
from mesh.controller.informer import Informer
from mesh.controller.kube_writes import GROUP, ISVC_VERSION, RUNTIME_VERSION, KubeWriter
from mesh.controller.leader import LeaseElector
from mesh.controller.mesh_client import MeshClient, mesh_credentials
from mesh.controller.mesh_state import MeshState
from mesh.controller.reconciler import ISVC, RUNTIME, SERVICE, Caches, Reconciler
from mesh.controller.settings import ControllerSettings
from mesh.controller.workqueue import WorkQueue
from mesh.http_server import HttpServer
from mesh.probes import probe_app

log = logging.getLogger(__name__)

RECONCILES = Counter("mmesh_controller_reconciles", "Reconciles by kind of key and result", ["kind", "result"])
STOP_TIMEOUT_S = 5.0
CONFLICT = 409


def _kind_of(key: str) -> str:
    return key.split("/", 1)[0]


class Controller:
    def __init__(self, settings: ControllerSettings, api_client: ApiClient) -> None:
        self.settings = settings
        self.api_client = api_client
        self.queue = WorkQueue()
        self.state = MeshState(settings.etcd_endpoints, settings.kv_prefix, lambda name: self.queue.add(ISVC + name))
        self.mesh = MeshClient(
            settings.mesh_endpoint, mesh_credentials(settings.mesh_tls_ca, settings.mesh_tls_cert, settings.mesh_tls_key)
        )
        ns, timeout = settings.namespace, settings.watch_timeout_s
        custom, apps, core = CustomObjectsApi(api_client), AppsV1Api(api_client), CoreV1Api(api_client)
        managed = f"app.kubernetes.io/managed-by={MANAGED_BY}"
        self.informers = {
            "isvcs": Informer("inferenceservices", functools.partial(
                custom.list_namespaced_custom_object, GROUP, ISVC_VERSION, ns, "inferenceservices"), self._on_isvc,
                watch_timeout_s=timeout),
            "runtimes": Informer("servingruntimes", functools.partial(
                custom.list_namespaced_custom_object, GROUP, RUNTIME_VERSION, ns, "servingruntimes"), self._on_runtime,
                watch_timeout_s=timeout),
            "cluster_runtimes": Informer("clusterservingruntimes", functools.partial(
                custom.list_cluster_custom_object, GROUP, RUNTIME_VERSION, "clusterservingruntimes"), self._on_runtime,
                watch_timeout_s=timeout),
            "deployments": Informer("deployments", functools.partial(apps.list_namespaced_deployment, ns),
                                    self._on_deployment, watch_timeout_s=timeout, label_selector=managed),
            "services": Informer("services", functools.partial(core.list_namespaced_service, ns),
                                 lambda key, obj: self.queue.add(SERVICE), watch_timeout_s=timeout, label_selector=managed),
        }
        self.reconciler = Reconciler(
            Caches(**self.informers), KubeWriter(api_client, ns), self.mesh, self.state, settings.pod_settings(),
            enqueue=self.queue.add,
        )
        self.elector = LeaseElector(
            CoordinationV1Api(api_client), ns, settings.lease_name, settings.identity,
            lease_s=settings.lease_s, renew_s=settings.renew_s, retry_s=settings.retry_s,
        )
        self._http: HttpServer | None = None
        self._campaign: asyncio.Task[None] | None = None

    # ---- events → keys ---------------------------------------------------------------

    def _on_isvc(self, key: str, obj: dict[str, Any] | None) -> None:
        self.queue.add(ISVC + key.split("/", 1)[-1])

    def _on_runtime(self, key: str, obj: dict[str, Any] | None) -> None:
        """A runtime changed: its Deployment, and every InferenceService (the
        best runtime for each may have changed)."""
        self.queue.add(RUNTIME + key.split("/", 1)[-1])
        for isvc in self.informers["isvcs"].keys():
            self.queue.add(ISVC + isvc.split("/", 1)[-1])

    def _on_deployment(self, key: str, obj: dict[str, Any] | None) -> None:
        """Someone changed or deleted a Deployment we own: put it back."""
        labels = ((obj or {}).get("metadata") or {}).get("labels") or {}
        runtime = labels.get(RUNTIME_LABEL)
        if runtime:
            self.queue.add(RUNTIME + runtime)
        else:  # deleted: the event's last state may lack labels; check every runtime
            self.queue_everything(mesh=False)

    def queue_everything(self, *, mesh: bool = True) -> None:
        for informer in (self.informers["runtimes"], self.informers["cluster_runtimes"]):
            for key in informer.keys():
                self.queue.add(RUNTIME + key.split("/", 1)[-1])
        for obj in self.informers["deployments"].items():
            runtime = ((obj.get("metadata") or {}).get("labels") or {}).get(RUNTIME_LABEL)
            if runtime:
                self.queue.add(RUNTIME + runtime)
        self.queue.add(SERVICE)
        if mesh:
            for key in self.informers["isvcs"].keys():
                self.queue.add(ISVC + key.split("/", 1)[-1])
            for name in self.state.owned_vmodels():
                self.queue.add(ISVC + name)

    # ---- life cycle ----------------------------------------------------------------

    @property
    def synced(self) -> bool:
        return all(informer.synced.is_set() for informer in self.informers.values())

    async def start(self) -> "Controller":
        if self.settings.health_port:
            self._http = HttpServer("0.0.0.0", self.settings.health_port)
            await self._http.serve(self._health_app())
        await self.state.start()
        loop = asyncio.get_running_loop()
        for informer in self.informers.values():
            informer.start(loop)
        self._campaign = asyncio.create_task(self.elector.run(self._lead), name="controller-campaign")
        return self

    async def stop(self) -> None:
        if self._campaign is not None:
            self._campaign.cancel()
            await asyncio.gather(self._campaign, return_exceptions=True)
        self.queue.close()
        await asyncio.gather(*(asyncio.to_thread(i.stop, STOP_TIMEOUT_S) for i in self.informers.values()))
        await self.state.stop()
        await self.mesh.close()
        if self._http is not None:
            await self._http.stop()

    async def _lead(self) -> None:
        while not self.synced:  # act on complete caches only: a partial one would look like deletions
            await asyncio.sleep(0.05)
        self.queue_everything()
        workers = [asyncio.create_task(self._work(), name=f"controller-worker-{i}") for i in range(self.settings.workers)]
        try:
            await asyncio.gather(*workers)
        finally:
            for worker in workers:
                worker.cancel()
            await asyncio.gather(*workers, return_exceptions=True)

    async def _work(self) -> None:
        while True:
            key = await self.queue.get()
            if key is None:
                return
            try:
                await self.reconciler.reconcile(key)
            except asyncio.CancelledError:
                self.queue.done(key)
                self.queue.add(key)  # leadership lost mid-way: the next leader does it
                raise
            except ApiException as exc:
                delay = self.queue.retry(key)
                RECONCILES.labels(_kind_of(key), "conflict" if exc.status == CONFLICT else "error").inc()
                # a 409 means our cache was a moment behind: the retry reads the newer object
                log.log(logging.DEBUG if exc.status == CONFLICT else logging.WARNING,
                        "reconcile %s: API answered %s %s; retry in %.2f s", key, exc.status, exc.reason, delay)
            except Exception as exc:
                delay = self.queue.retry(key)
                RECONCILES.labels(_kind_of(key), "error").inc()
                log.warning("reconcile %s failed (%s); retry in %.2f s", key, exc, delay, exc_info=log.isEnabledFor(logging.DEBUG))
            else:
                self.queue.forget(key)
                RECONCILES.labels(_kind_of(key), "ok").inc()
            self.queue.done(key)

    def _health_app(self) -> web.Application:
        async def synced() -> str | None:
            return None if self.synced else "informers still listing"

        app = probe_app({"synced": synced}, live_paths=("/healthz", "/live"), ready_paths=("/readyz", "/ready"))

        async def metrics(request: web.Request) -> web.Response:
            return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})

        app.router.add_get("/metrics", metrics)
        return app


def load_api_client() -> ApiClient:
    """In a pod: the service account; elsewhere: the kubeconfig."""
    from kubernetes import config

    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()
    return ApiClient()


async def run_controller(settings: ControllerSettings) -> None:
    """Run until SIGTERM/SIGINT."""
    import signal

    controller = await Controller(settings, load_api_client()).start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await controller.stop()
