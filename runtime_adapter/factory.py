"""Builds a `ModelRepository` with the built-in runtimes from plain options,
shared by the adapter's own process and the sidecar's in-process mode."""

from __future__ import annotations

from runtime_adapter.capacity import default_capacity_bytes
from runtime_adapter.repository import ModelRepository, RepositoryConfig
from runtime_adapter.runtimes.onnx import OnnxRuntime


def build_repository(
    capacity_bytes: int | None = None,
    *,
    device: str = "auto",
    intra_op_threads: int = 1,
    max_loading_concurrency: int = 2,
    load_timeout_ms: int = 90_000,
) -> ModelRepository:
    onnx = OnnxRuntime(device=device, intra_op_threads=intra_op_threads)
    config = RepositoryConfig(
        capacity_bytes=capacity_bytes if capacity_bytes else default_capacity_bytes(),
        max_loading_concurrency=max_loading_concurrency,
        load_timeout_ms=load_timeout_ms,
    )
    return ModelRepository(config, {onnx.model_type: onnx})
