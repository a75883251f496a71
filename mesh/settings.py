"""All sidecar configuration in one typed object, read from flags and the
environment. Variable names follow ModelMesh where one exists
(MM_SVC_GRPC_PORT, MM_KVSTORE_PREFIX, MM_LOAD_FAILURE_EXPIRY_TIME_MS, …)."""

from __future__ import annotations

import socket
import uuid

from pydantic import AliasChoices, Field
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
