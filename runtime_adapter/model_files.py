"""Where a model's files come from: the puller for storage URIs and keys,
the path itself for plain local paths (and when no puller is configured).

The repository asks this object for a local path before a runtime loads a
model and tells it when the model is gone, so the puller's content-addressed
cache knows which artifacts are still in use. Storage failures become
`AdapterError`s with FAILED_PRECONDITION: the mesh records them as load
failures (LOADING_FAILED, back-off) instead of retrying every request.
"""

from __future__ import annotations

import logging
from pathlib import Path

from puller import PullError, Puller, parse_model_source
from runtime_adapter.errors import AdapterError

log = logging.getLogger(__name__)

# Before a remote model's first load only its size in storage is known; the
# runtimes' own factors (1.1–1.25) plus this margin keep the guess on the safe
# side until the first measured load replaces it in the registry.
REMOTE_SIZE_FACTOR = 1.25
REMOTE_SIZE_OVERHEAD_BYTES = 256 * 1024


class ModelFiles:
    """Local paths for models, with references held while they are loaded."""

    def __init__(self, puller: Puller | None = None) -> None:
        self.puller = puller

    def fetch(self, model_id: str, model_path: str, model_key: str) -> Path:
        """Blocking: download (or find in the cache) and hold a reference for `model_id`."""
        if self.puller is None:
            return Path(model_path)
        try:
            return self.puller.pull(model_id, model_path, model_key).path
        except PullError as exc:
            raise AdapterError.failed_precondition(f"model {model_id!r}: {exc.message}") from exc

    def release(self, model_id: str) -> None:
        if self.puller is not None:
            self.puller.release(model_id)

    def release_all(self) -> None:
        if self.puller is not None:
            self.puller.release_all()

    def local_path(self, model_path: str, model_key: str) -> Path | None:
        """The path a runtime can read without downloading, or None for remote storage."""
        if self.puller is None:
            return Path(model_path)
        try:
            source = parse_model_source(model_path, model_key)
        except PullError:
            return None
        return Path(source.path) if source.is_local else None

    def predict_remote_size(self, model_path: str, model_key: str) -> int | None:
        """A size guess for a model still in storage (HEAD / listing, bounded)."""
        if self.puller is None:
            return None
        stored = self.puller.remote_size(model_path, model_key)
        if stored is None:
            return None
        return int(stored * REMOTE_SIZE_FACTOR) + REMOTE_SIZE_OVERHEAD_BYTES

    def close(self) -> None:
        if self.puller is not None:
            self.puller.close()


def build_model_files(
    models_dir: Path,
    *,
    storage_config_dir: Path | None = None,
    pvc_mounts_dir: Path = Path("/pvc_mounts"),
    disk_budget_bytes: int | None = None,
    pull_deadline_s: float = 600.0,
) -> ModelFiles:
    """A puller whose cache lives in `<models_dir>/_cache` (the `_` prefix keeps
    it apart from the external servers' `_mlserver_models` / `_triton_models`,
    all on the one volume the runtime containers share).

    Without a disk budget an artifact is deleted when its last model unloads
    (disk use = what is loaded). With one, released artifacts stay until the
    budget needs their space, least recently used first, so a model evicted
    from memory and requested again reloads without downloading."""
    from puller import PullerConfig

    return ModelFiles(
        Puller(
            PullerConfig(
                cache_dir=Path(models_dir) / "_cache",
                storage_config_dir=storage_config_dir,
                pvc_mounts_dir=pvc_mounts_dir,
                disk_budget_bytes=disk_budget_bytes or None,
                retain_released=bool(disk_budget_bytes),
                pull_deadline_s=pull_deadline_s,
            )
        )
    )
