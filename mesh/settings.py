"""All sidecar configuration in one typed object, read from flags and the
environment. Variable names follow ModelMesh where one exists
(MM_SVC_GRPC_PORT, MM_KVSTORE_PREFIX, MM_LOAD_FAILURE_EXPIRY_TIME_MS, …)."""

from __future__ import annotations

import socket
import uuid
from typing import Literal

from pydantic import AliasChoices, Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


def _default_instance_id() -> str:
    return f"{socket.gethostname()[-12:]}-{uuid.uuid4().hex[:6]}"


class MeshSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MMESH_", populate_by_name=True, extra="ignore")

    instance_id: str = Field(default_factory=_default_instance_id, validation_alias=AliasChoices("MM_INSTANCE_ID", "MMESH_INSTANCE_ID", "instance_id"))
    host: str = "127.0.0.1"
    grpc_port: int = Field(8033, validation_alias=AliasChoices("MM_SVC_GRPC_PORT", "MMESH_GRPC_PORT", "grpc_port"))
    advertise_host: str = ""  # how peers reach this sidecar; default: host
    zone: str = Field("", validation_alias=AliasChoices("MM_ZONE", "MMESH_ZONE", "zone"))
    labels: str = Field("", validation_alias=AliasChoices("MM_LABELS", "MMESH_LABELS", "labels"))  # comma-separated
    # {"<model type>": {"required": [labels]}, "_default": {...}}; the built-in
    # runtime adds the label "mt:<type>" for each type it serves
    type_constraints: str = Field("", validation_alias=AliasChoices("MM_TYPE_CONSTRAINTS", "MMESH_TYPE_CONSTRAINTS", "type_constraints"))
    instance_ttl_s: int = 10  # lease of the instance record: a dead sidecar leaves every view within this
    metrics_port: int = 2112  # 0 disables the metrics endpoint
    etcd_endpoints: str = "127.0.0.1:2379"  # comma-separated host:port
    kv_prefix: str = Field("mmesh", validation_alias=AliasChoices("MM_KVSTORE_PREFIX", "MMESH_KV_PREFIX", "kv_prefix"))
    # ModelMesh's `etcd:<file>` (the model-serving-etcd secret, mounted): when
    # set, its endpoints and root_prefix replace the two fields above
    kv_store: str = Field("", validation_alias=AliasChoices("KV_STORE", "MMESH_KV_STORE", "kv_store"))

    # runtime: "inprocess" builds the adapter in this process; anything else is
    # a gRPC target such as unix:///tmp/mmesh/grpc.sock or localhost:8085
    runtime: str = "inprocess"
    runtime_capacity_bytes: int = 0  # in-process adapter only; 0 = from memory
    device: str = "auto"
    runtime_wait_s: float = 60.0  # how long to wait for an external runtime at start

    # model storage, for the in-process adapter's puller (an adapter process
    # takes the same as flags); names as ModelMesh's puller where it has one
    models_dir: str = Field("", validation_alias=AliasChoices("ROOT_MODEL_DIR", "MMESH_MODELS_DIR", "models_dir"))  # "" = a temp dir
    storage_config_dir: str = Field(
        "", validation_alias=AliasChoices("STORAGE_CONFIG_DIR", "MMESH_STORAGE_CONFIG_DIR", "storage_config_dir")
    )  # the mounted storage-config secret: one JSON file per storage key
    pvc_mounts_dir: str = Field("/pvc_mounts", validation_alias=AliasChoices("PVC_MOUNTS_DIR", "MMESH_PVC_MOUNTS_DIR", "pvc_mounts_dir"))
    models_disk_budget_bytes: int = 0  # 0 = no limit on the download cache
    pull_deadline_s: float = 600.0  # a pull's own deadline, apart from the load timeout

    load_failure_backoff_ms: int = Field(
        30_000, validation_alias=AliasChoices("MM_LOAD_FAILURE_EXPIRY_TIME_MS", "MMESH_LOAD_FAILURE_BACKOFF_MS", "load_failure_backoff_ms")
    )
    capacity_wait_s: float = 30.0  # how long a load waits for in-use models to free space
    request_timeout_s: float = 60.0
    copy_scale_interval_s: float = 5.0
    # ModelMesh's MM_SCALEUP_RPM_THRESHOLD is per minute; ours is per second
    scale_up_rps: float = Field(33.0, validation_alias=AliasChoices("MMESH_SCALE_UP_RPS", "scale_up_rps"))
    scale_up_in_flight: int = 16
    copy_idle_s: float = 600.0  # an extra copy unused this long is dropped
    default_vmodel_owner: str = Field("", validation_alias=AliasChoices("MM_DEFAULT_VMODEL_OWNER", "MMESH_DEFAULT_VMODEL_OWNER", "default_vmodel_owner"))

    # REST and probes (aiohttp, on the sidecar's event loop; ModelMesh's ports)
    rest_port: int = 8008  # v2 REST: /v2/models/{name}/infer, …; 0 = off
    probe_port: int = 8089  # GET /live and /ready for kubelet; 0 = off

    # TLS (mesh/tls.py checks and uses these): off unless a certificate and key
    # are given; then gRPC, peer channels and REST serve TLS, mutual when
    # client auth is optional/require (verified with the trust CA)
    tls_cert_path: str = Field("", validation_alias=AliasChoices("MM_TLS_KEY_CERT_PATH", "MMESH_TLS_CERT_PATH", "tls_cert_path"))
    tls_key_path: str = Field("", validation_alias=AliasChoices("MM_TLS_PRIVATE_KEY_PATH", "MMESH_TLS_KEY_PATH", "tls_key_path"))
    tls_client_auth: str = Field("none", validation_alias=AliasChoices("MM_TLS_CLIENT_AUTH", "MMESH_TLS_CLIENT_AUTH", "tls_client_auth"))
    tls_trust_cert_path: str = Field(
        "", validation_alias=AliasChoices("MM_TLS_TRUST_CERT_PATH", "MMESH_TLS_TRUST_CERT_PATH", "tls_trust_cert_path")
    )  # comma-separated CA files
    tls_target_name_override: str = ""  # host name peers check in each other's certificate; "" = the advertised host
    tls_reload_s: float = Field(30.0, ge=0)  # how often renewed TLS files are looked for (REST, peers); 0 = never

    # drain (mesh/drain.py): SIGTERM → copies moved to peers, in-flight calls
    # finished, exit — all within this; Kubernetes' default grace period.
    # ModelMesh's SHUTDOWN_TIMEOUT_MS (the pod's grace period in ms) wins when set
    drain_grace_s: float = 30.0
    shutdown_timeout_ms: int = Field(
        0, validation_alias=AliasChoices("SHUTDOWN_TIMEOUT_MS", "MMESH_SHUTDOWN_TIMEOUT_MS", "shutdown_timeout_ms")
    )

    # logging (mesh/logs.py): `text` for people, `json` lines for log pipelines;
    # one line per external request when log_requests is on (off by default)
    log_format: Literal["text", "json"] = "text"
    log_requests: bool = Field(False, validation_alias=AliasChoices("MM_LOG_EACH_INVOKE", "MMESH_LOG_REQUESTS", "log_requests"))

    # payload logging (mesh/payloads.py): ModelMesh's whitespace-separated
    # processor URIs (logger://*, http://host:port/path[?modelId][#method]); off when empty
    payload_processors: str = Field(
        "", validation_alias=AliasChoices("MM_PAYLOAD_PROCESSORS", "MMESH_PAYLOAD_PROCESSORS", "payload_processors")
    )
    payload_sample_rate: float = Field(1.0, ge=0.0, le=1.0)  # share of requests recorded (request and response)
    payload_log_data: bool = False  # logger:// lines include the payload itself (base64)
    payload_queue_size: int = Field(1000, ge=1)  # per processor; a full queue drops (and counts) payloads

    @model_validator(mode="after")
    def _apply_kv_store(self) -> "MeshSettings":
        """Read KV_STORE's connection file once, at start-up."""
        from mesh.etcd_connection import apply_kv_store

        apply_kv_store(self)
        return self
