"""Builds a `ModelRepository` in front of an external server from plain
options: what `python -m runtime_adapter --runtime mlserver|triton` runs."""

from __future__ import annotations

from pathlib import Path

from runtime_adapter.capacity import default_capacity_bytes
from runtime_adapter.external.base import ExternalConfig, ExternalServer
from runtime_adapter.external.mlserver import MLServer
from runtime_adapter.external.triton import Triton
from runtime_adapter.model_files import ModelFiles
from runtime_adapter.repository import ModelRepository, RepositoryConfig

SERVERS: dict[str, type[ExternalServer]] = {MLServer.kind: MLServer, Triton.kind: Triton}
# ModelMesh's LOADING_CONCURRENCY default for external runtimes: the server's
# loads are measured one at a time anyway
DEFAULT_LOADING_CONCURRENCY = 1


def build_external_repository(
    kind: str,
    endpoint: str,
    models_dir: Path,
    *,
    pid: int | None = None,
    capacity_bytes: int | None = None,
    max_loading_concurrency: int = DEFAULT_LOADING_CONCURRENCY,
    load_timeout_ms: int = 90_000,
    files: ModelFiles | None = None,
) -> ModelRepository:
    """capacity_bytes: the model memory the server may use. Without it we take
    this host's (or container's) memory, which in Kubernetes is the adapter's
    container, not the server's: set it from the server container's request."""
    if kind not in SERVERS:
        raise ValueError(f"external runtime must be one of {sorted(SERVERS)}, got {kind!r}")
    server = SERVERS[kind](
        ExternalConfig(endpoint=endpoint, models_dir=models_dir, pid=pid, load_timeout_s=load_timeout_ms / 1000)
    )
    config = RepositoryConfig(
        capacity_bytes=capacity_bytes or default_capacity_bytes(),
        max_loading_concurrency=max_loading_concurrency,
        load_timeout_ms=load_timeout_ms,
    )
    return ModelRepository(config, server.runtimes(), backing_server=server, files=files)
