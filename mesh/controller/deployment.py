"""A ServingRuntime's Deployment, and the Service in front of all runtime pods.

Pod layout (one pod = one mesh instance):
* `mm`: the mesh sidecar (`mmesh sidecar`), ports grpc 8033, http 8008 (REST
  v2), prometheus 2112, probes 8089; etcd from ModelMesh's `model-serving-etcd`
  secret (`KV_STORE`); labelled `rt:<runtime>` so models pinned to this
  runtime (`<format>|rt:<runtime>`) load only here.
* `<serverType>-adapter`, for `builtInAdapter.serverType` mlserver/triton: our
  runtime adapter fronting the server at `runtimeManagementPort`, listening
  at `grpcEndpoint`. The pod shares its process namespace so the adapter can
  measure the server's memory per model.
* the runtime's own `spec.containers`, with the shared `/models` volume (and
  `/storage-config`). A runtime without builtInAdapter implements the
  model-runtime SPI at `grpcEndpoint` itself (ModelMesh's custom-runtime
  contract) — mmesh's built-in ONNX/TorchScript runtimes ship that way.

The rendered spec's hash goes into an annotation; the controller replaces the
Deployment only when that hash changes, so defaults the API server adds never
cause an update loop. Pure: no I/O."""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from kubernetes.utils import parse_quantity

MANAGED_BY = "mmesh-controller"
HASH_ANNOTATION = "mmesh.io/spec-hash"
RUNTIME_LABEL = "mmesh.io/runtime"
RUNTIME_KIND_LABEL = "mmesh.io/runtime-kind"
SERVICE_LABEL = "modelmesh-service"  # ModelMesh's selector label, kept for tools that use it
GRPC_PORT, REST_PORT, METRICS_PORT, PROBE_PORT = 8033, 8008, 2112, 8089
DEFAULT_ADAPTER_PORT = 8085
MODELS_DIR = "/models"
ETCD_DIR = "/opt/mmesh/etcd"
STORAGE_CONFIG_DIR = "/storage-config"
ADAPTER_SERVER_TYPES = ("mlserver", "triton")
DEFAULT_MEM_BUFFER_BYTES = 128 * 1024 * 1024


class InvalidRuntime(ValueError):
    """The runtime's spec cannot be turned into a Deployment."""


@dataclass(frozen=True)
class PodSettings:
    """Cluster-wide choices the controller is configured with."""

    namespace: str
    image: str
    service_name: str = "modelmesh-serving"
    etcd_secret: str = "model-serving-etcd"
    storage_secret: str = "storage-config"
    service_account: str = "mmesh"
    default_replicas: int = 1
    grace_period_s: int = 90


def deployment_name(settings: PodSettings, runtime: str) -> str:
    return f"{settings.service_name}-{runtime}"


def _port_of(endpoint: str, default: int) -> int:
    """`port:8085` → 8085 (ModelMesh's endpoint form); unix sockets are not used by mmesh pods."""
    if not endpoint:
        return default
    kind, _, value = endpoint.partition(":")
    if kind != "port" or not value.isdigit():
        raise InvalidRuntime(f"endpoint {endpoint!r} must look like 'port:8085'")
    return int(value)


def _env(values: Mapping[str, str]) -> list[dict[str, Any]]:
    return [{"name": k, "value": v} for k, v in values.items()]


def _field_env(name: str, path: str) -> dict[str, Any]:
    return {"name": name, "valueFrom": {"fieldRef": {"fieldPath": path}}}


def _memory_bytes(container: Mapping[str, Any]) -> int:
    resources = container.get("resources") or {}
    for section in ("requests", "limits"):
        value = (resources.get(section) or {}).get("memory")
        if value:
            return int(parse_quantity(str(value)))
    return 0


def _labels(settings: PodSettings, runtime: str, kind: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "mmesh",
        "app.kubernetes.io/component": "runtime",
        "app.kubernetes.io/managed-by": MANAGED_BY,
        SERVICE_LABEL: settings.service_name,
        RUNTIME_LABEL: runtime,
        RUNTIME_KIND_LABEL: "cluster" if kind == "ClusterServingRuntime" else "namespace",
    }


def _mesh_container(settings: PodSettings, runtime: str, spi_port: int, grace_s: int) -> dict[str, Any]:
    env = _env({
        "MM_SVC_GRPC_PORT": str(GRPC_PORT),
        "MMESH_HOST": "0.0.0.0",
        "MMESH_REST_PORT": str(REST_PORT),
        "MMESH_PROBE_PORT": str(PROBE_PORT),
        "MMESH_METRICS_PORT": str(METRICS_PORT),
        "MMESH_RUNTIME": f"127.0.0.1:{spi_port}",
        "MM_LABELS": f"rt:{runtime}",
        "KV_STORE": f"etcd:{ETCD_DIR}/etcd_connection",
        "SHUTDOWN_TIMEOUT_MS": str(grace_s * 1000),
        "MMESH_LOG_FORMAT": "json",
    })
    env += [_field_env("MM_INSTANCE_ID", "metadata.name"), _field_env("MMESH_ADVERTISE_HOST", "status.podIP")]
    return {
        "name": "mm",
        "image": settings.image,
        "imagePullPolicy": "IfNotPresent",
        "command": ["mmesh", "sidecar"],
        "env": env,
        "ports": [
            {"name": "grpc", "containerPort": GRPC_PORT},
            {"name": "http", "containerPort": REST_PORT},
            {"name": "prometheus", "containerPort": METRICS_PORT},
            {"name": "probes", "containerPort": PROBE_PORT},
        ],
        "readinessProbe": {"httpGet": {"path": "/ready", "port": PROBE_PORT}, "periodSeconds": 5},
        "livenessProbe": {"httpGet": {"path": "/live", "port": PROBE_PORT}, "initialDelaySeconds": 30, "periodSeconds": 10},
        "resources": {"requests": {"cpu": "300m", "memory": "256Mi"}, "limits": {"cpu": "3", "memory": "512Mi"}},
        "volumeMounts": [{"name": "etcd-config", "mountPath": ETCD_DIR, "readOnly": True}],
        "securityContext": _restricted(),
    }


def _adapter_container(settings: PodSettings, spec: Mapping[str, Any], adapter: Mapping[str, Any], spi_port: int) -> dict[str, Any]:
    server_type = adapter.get("serverType", "")
    if server_type not in ADAPTER_SERVER_TYPES:
        raise InvalidRuntime(f"builtInAdapter.serverType {server_type!r} is not one of {list(ADAPTER_SERVER_TYPES)}")
    management_port = int(adapter.get("runtimeManagementPort") or 8001)
    args = [
        "python", "-m", "runtime_adapter", "--runtime", server_type,
        "--listen", f"0.0.0.0:{spi_port}", "--runtime-endpoint", f"127.0.0.1:{management_port}",
        "--models-dir", MODELS_DIR, "--storage-config-dir", STORAGE_CONFIG_DIR,
    ]
    containers = spec.get("containers") or []
    server_memory = _memory_bytes(containers[0]) if containers else 0
    buffer = int(adapter.get("memBufferBytes") or DEFAULT_MEM_BUFFER_BYTES)
    if server_memory > buffer:
        args += ["--capacity-bytes", str(server_memory - buffer)]  # ModelMesh: container memory - memBufferBytes
    env = [e for e in adapter.get("env") or [] if isinstance(e, Mapping)]
    return {
        "name": f"{server_type}-adapter",
        "image": settings.image,
        "imagePullPolicy": "IfNotPresent",
        "command": args,
        "env": env,
        "resources": {"requests": {"cpu": "50m", "memory": "96Mi"}, "limits": {"cpu": "2", "memory": "512Mi"}},
        "volumeMounts": _model_mounts(),
        "securityContext": _restricted(),
    }


def _model_mounts() -> list[dict[str, Any]]:
    return [
        {"name": "models-dir", "mountPath": MODELS_DIR},
        {"name": "storage-config", "mountPath": STORAGE_CONFIG_DIR, "readOnly": True},
    ]


def _restricted() -> dict[str, Any]:
    return {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}


def _runtime_containers(spec: Mapping[str, Any]) -> list[dict[str, Any]]:
    containers = []
    for raw in spec.get("containers") or []:
        if not isinstance(raw, Mapping) or not raw.get("name") or not raw.get("image"):
            raise InvalidRuntime("every spec.containers entry needs a name and an image")
        container = copy.deepcopy(dict(raw))
        mounts = [m for m in container.get("volumeMounts") or [] if m.get("name") not in ("models-dir", "storage-config")]
        container["volumeMounts"] = mounts + _model_mounts()
        container.setdefault("securityContext", _restricted())
        containers.append(container)
    return containers


def render_deployment(runtime: Mapping[str, Any], settings: PodSettings) -> dict[str, Any]:
    """The Deployment for a multiModel (Cluster)ServingRuntime object."""
    name = runtime["metadata"]["name"]
    kind = runtime.get("kind", "ServingRuntime")
    spec = runtime.get("spec") or {}
    adapter = spec.get("builtInAdapter") or None
    spi_port = _port_of(str(spec.get("grpcEndpoint") or ""), DEFAULT_ADAPTER_PORT)
    runtime_containers = _runtime_containers(spec)
    if not adapter and not runtime_containers:
        raise InvalidRuntime(f"{kind} {name!r} has no containers and no builtInAdapter: nothing would serve models")
    grace_s = settings.grace_period_s
    containers = [_mesh_container(settings, name, spi_port, grace_s)]
    if adapter:
        containers.append(_adapter_container(settings, spec, adapter, spi_port))
    containers += runtime_containers
    labels = _labels(settings, name, kind)
    extra_labels = {str(k): str(v) for k, v in (spec.get("labels") or {}).items()}
    pod_spec: dict[str, Any] = {
        "serviceAccountName": settings.service_account,
        "automountServiceAccountToken": False,
        "terminationGracePeriodSeconds": grace_s,
        "shareProcessNamespace": bool(adapter),
        "containers": containers,
        "volumes": [
            {"name": "models-dir", "emptyDir": {}},
            {"name": "etcd-config", "secret": {"secretName": settings.etcd_secret}},
            {"name": "storage-config", "secret": {"secretName": settings.storage_secret, "optional": True}},
            *copy.deepcopy(spec.get("volumes") or []),
        ],
    }
    for passthrough in ("nodeSelector", "tolerations", "affinity", "imagePullSecrets"):
        if spec.get(passthrough):
            pod_spec[passthrough] = copy.deepcopy(spec[passthrough])
    replicas = spec.get("replicas")
    deployment_spec: dict[str, Any] = {
        "replicas": int(replicas) if isinstance(replicas, int) else settings.default_replicas,
        "selector": {"matchLabels": {SERVICE_LABEL: settings.service_name, RUNTIME_LABEL: name}},
        "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "75%", "maxUnavailable": "15%"}},
        "template": {
            "metadata": {"labels": {**extra_labels, **labels}, "annotations": {str(k): str(v) for k, v in (spec.get("annotations") or {}).items()}},
            "spec": pod_spec,
        },
    }
    digest = hashlib.sha256(json.dumps(deployment_spec, sort_keys=True).encode()).hexdigest()[:16]
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": deployment_name(settings, name),
            "namespace": settings.namespace,
            "labels": labels,
            "annotations": {HASH_ANNOTATION: digest},
        },
        "spec": deployment_spec,
    }


def render_service(settings: PodSettings) -> dict[str, Any]:
    """The one Service in front of every runtime pod of the namespace: clients
    and the controller reach any sidecar, which routes to the copy. Headless,
    as ModelMesh's, so gRPC clients can balance over the pods themselves."""
    spec = {
        "clusterIP": "None",
        "selector": {SERVICE_LABEL: settings.service_name},
        "ports": [
            {"name": "grpc", "port": GRPC_PORT, "targetPort": "grpc"},
            {"name": "http", "port": REST_PORT, "targetPort": "http"},
            {"name": "prometheus", "port": METRICS_PORT, "targetPort": "prometheus"},
        ],
    }
    digest = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": settings.service_name,
            "namespace": settings.namespace,
            "labels": {"app.kubernetes.io/name": "mmesh", "app.kubernetes.io/managed-by": MANAGED_BY},
            "annotations": {HASH_ANNOTATION: digest},
        },
        "spec": spec,
    }


def spec_hash(obj: Mapping[str, Any] | None) -> str:
    if not obj:
        return ""
    return str(((obj.get("metadata") or {}).get("annotations") or {}).get(HASH_ANNOTATION, ""))
