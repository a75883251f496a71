"""Builds a `ModelRepository` with the built-in runtimes from plain options,
shared by the adapter's own process and the sidecar's in-process mode.

TorchScript (model types ``pytorch`` and ``torchscript``, one runtime object
under both) is served only where torch is installed (the ``torch`` extra);
without it those types are simply absent, so the mesh places such models on
instances that have it.
"""

from __future__ import annotations

import logging

from runtime_adapter.capacity import default_capacity_bytes
from runtime_adapter.model_files import ModelFiles
from runtime_adapter.repository import ModelRepository, RepositoryConfig
from runtime_adapter.runtimes.base import Runtime
from runtime_adapter.runtimes.onnx import OnnxRuntime
from runtime_adapter.runtimes.torchscript import MODEL_TYPES as TORCH_MODEL_TYPES
from runtime_adapter.runtimes.torchscript import TorchScriptRuntime, torch_available

log = logging.getLogger(__name__)


def builtin_runtimes(device: str = "auto", intra_op_threads: int = 1) -> dict[str, Runtime]:
    """The built-in runtimes by model type."""
    onnx = OnnxRuntime(device=device, intra_op_threads=intra_op_threads)
    runtimes: dict[str, Runtime] = {onnx.model_type: onnx}
    if torch_available():
        torch = TorchScriptRuntime(device=device, intra_op_threads=intra_op_threads)
        runtimes.update({model_type: torch for model_type in TORCH_MODEL_TYPES})
    else:
        log.debug("torch is not installed: model types %s are not served", list(TORCH_MODEL_TYPES))
    return runtimes


def build_repository(
    capacity_bytes: int | None = None,
    *,
    device: str = "auto",
    intra_op_threads: int = 1,
    max_loading_concurrency: int = 2,
    load_timeout_ms: int = 90_000,
    files: ModelFiles | None = None,
) -> ModelRepository:
    """files: the puller for storage URIs (default: model paths are local)."""
    config = RepositoryConfig(
        capacity_bytes=capacity_bytes if capacity_bytes else default_capacity_bytes(),
        max_loading_concurrency=max_loading_concurrency,
        load_timeout_ms=load_timeout_ms,
    )
    return ModelRepository(config, builtin_runtimes(device, intra_op_threads), files=files)
