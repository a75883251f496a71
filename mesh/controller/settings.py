"""The controller's configuration, from the environment its Deployment sets
(deploy/controller): POD_NAMESPACE, POD_NAME, KV_STORE, MMESH_IMAGE, …"""

from __future__ import annotations

import socket

from pydantic import AliasChoices, Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from mesh.controller.deployment import PodSettings


class ControllerSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MMESH_", populate_by_name=True, extra="ignore")

    namespace: str = Field("default", validation_alias=AliasChoices("POD_NAMESPACE", "MMESH_NAMESPACE", "namespace"))
    identity: str = Field(default_factory=socket.gethostname, validation_alias=AliasChoices("POD_NAME", "MMESH_IDENTITY", "identity"))
    # the mesh's etcd: ModelMesh's secret file (KV_STORE=etcd:<file>) or the two fields
    kv_store: str = Field("", validation_alias=AliasChoices("KV_STORE", "MMESH_KV_STORE", "kv_store"))
    etcd_endpoints: str = "127.0.0.1:2379"
    kv_prefix: str = "mmesh"
    # the mesh's management API; default: the mesh Service of the namespace
    mesh_endpoint: str = ""
    service_name: str = "modelmesh-serving"
    # when the mesh serves TLS (MM_TLS_*): the CA to verify it, and for mutual
    # TLS the controller's certificate and key (PEM files)
    mesh_tls_ca: str = ""
    mesh_tls_cert: str = ""
    mesh_tls_key: str = ""
    image: str = "mmesh:0.1.0"  # sidecar and adapter containers of runtime Deployments
    etcd_secret: str = "model-serving-etcd"
    storage_secret: str = "storage-config"
    runtime_service_account: str = "mmesh"
    default_replicas: int = Field(1, ge=0)
    health_port: int = 8081  # /healthz, /readyz, /metrics; 0 = off
    lease_name: str = "mmesh-controller-leader"
    lease_s: int = Field(15, ge=1)
    renew_s: float = Field(5.0, gt=0)
    retry_s: float = Field(2.0, gt=0)
    watch_timeout_s: int = Field(60, ge=1)  # a watch is re-opened (from its resourceVersion) this often
    workers: int = Field(4, ge=1)

    @model_validator(mode="after")
    def _apply_kv_store(self) -> "ControllerSettings":
        from mesh.etcd_connection import apply_kv_store

        apply_kv_store(self)
        if not self.mesh_endpoint:
            self.mesh_endpoint = f"{self.service_name}.{self.namespace}:8033"
        return self

    def pod_settings(self) -> PodSettings:
        return PodSettings(
            namespace=self.namespace, image=self.image, service_name=self.service_name,
            etcd_secret=self.etcd_secret, storage_secret=self.storage_secret,
            service_account=self.runtime_service_account, default_replicas=self.default_replicas,
        )
