"""What the MLServer and Triton adapters share: load, unload, size, start-up
and forwarding, around one server-specific step (writing the model's layout).

A load writes the layout under `<models_dir>/_<server>_models/<safe id>/`,
asks the server to load it (RepositoryModelLoad) and measures the server's
memory around that call; an unload asks the server to unload and removes the
directory. The `ModelRepository` above keeps the bookkeeping (which ids are
loaded, cancellation by an unload during a load), exactly as for the built-in
runtimes; each model type the server serves is registered as an
`ExternalTypeRuntime` pointing at the one `ExternalServer`.

Model size: the RSS delta of the server's process tree across the load when
we can see that process (see `process_memory`), floored at the model's size
on disk (an allocator that reuses pages freed by an earlier unload shows a
delta near zero); otherwise ModelMesh's estimate, disk size ×
`size_multiplier` (1.25). Loads are serialised while measuring, so one
load's delta does not include another's.

The first load of a model type in a server process also pays for the server
starting that runtime: MLServer imports scikit-learn (about 80 MB for a 2 KB
model, measured with MLServer 1.7.1), Triton loads a backend library. That
memory stays when the model goes and is not the model's, and the mesh keeps a
model's first reported size in its registry for every instance, so for that
first load we report the estimate and measure from the second load of the
type on (per server pid: a restarted server starts over).
"""

from __future__ import annotations

import abc
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from protos import grpc_predict_v2_pb2 as v2
from runtime_adapter.errors import AdapterError
from puller import disk_size
from runtime_adapter.external.layout import child_dir, clear_dir, fresh_dir, remove, safe_dir_name
from runtime_adapter.external.process_memory import ServerProcess
from runtime_adapter.external.request_check import check_request
from runtime_adapter.external.v2_client import V2Client
from runtime_adapter.repository import DEFAULT_MODEL_SIZE_BYTES

log = logging.getLogger(__name__)

MODEL_SIZE_MULTIPLIER = 1.25  # ModelMesh's MODELSIZE_MULTIPLIER default


@dataclass(frozen=True)
class ExternalConfig:
    """Where the server is and how long to wait for it."""

    endpoint: str  # its v2 gRPC endpoint, e.g. 127.0.0.1:8001
    models_dir: Path  # the volume shared with the server (/models in Kubernetes)
    pid: int | None = None  # the server's pid, when known; else looked up by port
    load_timeout_s: float = 90.0
    startup_wait_s: float = 5.0  # per runtimeStatus call; the sidecar polls again
    infer_timeout_s: float = 120.0
    size_multiplier: float = MODEL_SIZE_MULTIPLIER


@dataclass
class ExternalModel:
    """A model held by the external server: requests go there as whole v2
    messages, renamed to the server's name for it and back."""

    server: "ExternalServer" = field(repr=False)
    model_id: str
    external_name: str
    directory: Path
    size_bytes: int
    size_measured: bool = False  # False: ModelMesh's estimate (see the module docstring)

    def infer_v2(self, request: v2.ModelInferRequest, model_id: str) -> v2.ModelInferResponse:
        check_request(request)
        client_name = request.model_name
        # renamed in place and restored: copying would copy the tensors too
        request.model_name = self.external_name
        try:
            response = self.server.client.infer(request)
        finally:
            request.model_name = client_name
        response.model_name = client_name or model_id
        return response

    def metadata_v2(self, model_id: str, name: str) -> v2.ModelMetadataResponse:
        response = self.server.client.model_metadata(self.external_name)
        response.name = name or model_id
        return response

    def close(self) -> None:
        self.server.unload(self)


@dataclass(frozen=True)
class ExternalTypeRuntime:
    """The `Runtime` for one model type of an external server (the repository
    picks runtimes by type; the server needs the type to write the layout)."""

    server: "ExternalServer"
    model_type: str

    def load(self, model_id: str, path: Path) -> ExternalModel:
        return self.server.load(model_id, self.model_type, path)

    def predict_size(self, path: Path) -> int:
        return self.server.predict_size(path)


def _is_ready_state(state: str) -> bool:
    """Triton says READY; MLServer 1.x says "State.READY" (its enum's str())."""
    return state.rsplit(".", 1)[-1].upper() == "READY"


class ExternalServer(abc.ABC):
    """One external v2 server and the directory of layouts we write for it."""

    kind: ClassVar[str]  # "mlserver", "triton"
    layout_dir_name: ClassVar[str]  # "_mlserver_models", "_triton_models"
    model_types: ClassVar[tuple[str, ...]]
    # entries of the layout dir that are not ours to clear at start-up
    keep_on_clear: ClassVar[frozenset[str]] = frozenset()

    def __init__(
        self, config: ExternalConfig, *, client: V2Client | None = None, process: ServerProcess | None = None
    ) -> None:
        self.config = config
        self.client = client or V2Client(config.endpoint, label=self.kind, infer_timeout_s=config.infer_timeout_s)
        self.process = process or ServerProcess(config.endpoint, config.pid)
        self.root = config.models_dir / self.layout_dir_name
        self._measure_lock = threading.Lock()
        self._started_types: set[tuple[int, str]] = set()  # (server pid, model type)

    @abc.abstractmethod
    def write_layout(self, model_id: str, model_type: str, source: Path, target: Path) -> str:
        """Write what the server needs to load the model at `source` into the
        empty directory `target`; return the name the server will know it by.
        Raises AdapterError (FAILED_PRECONDITION) for a model it cannot lay out."""

    def runtimes(self) -> dict[str, ExternalTypeRuntime]:
        """The repository's runtimes: one per model type, all this server."""
        return {model_type: ExternalTypeRuntime(self, model_type) for model_type in self.model_types}

    def close(self) -> None:
        self.client.close()

    # ---- start-up -----------------------------------------------------------

    def start_clean(self) -> bool:
        """Called on runtimeStatus, i.e. when the sidecar (re)starts and has no
        record of loaded models: once the server is ready (waiting at most
        `startup_wait_s`), unload whatever it holds and clear our layout dir.
        False while the server is not ready yet (status STARTING)."""
        deadline = time.monotonic() + self.config.startup_wait_s
        while not self.client.server_ready(timeout_s=max(0.1, min(2.0, deadline - time.monotonic()))):
            if time.monotonic() >= deadline:
                log.info("%s at %s is not ready yet", self.kind, self.config.endpoint)
                return False
            time.sleep(0.2)
        # index before clearing: MLServer lists only models whose files exist
        for entry in self.client.repository_index(ready_only=True):
            if _is_ready_state(entry.state):
                log.warning("unloading %r, left loaded in %s from before the sidecar started", entry.name, self.kind)
                self.client.unload_model(entry.name)
        removed = clear_dir(self.root, self.keep_on_clear)
        if removed:
            log.info("cleared %d stale model dir(s) from %s", len(removed), self.root)
        self.root.mkdir(parents=True, exist_ok=True)
        meta = self.client.server_metadata()
        log.info("%s %s at %s is ready (pid %s)", meta.name, meta.version, self.config.endpoint, self.process.pid)
        return True

    # ---- load / unload --------------------------------------------------------

    def load(self, model_id: str, model_type: str, path: Path) -> ExternalModel:
        if not path.exists():
            raise AdapterError.failed_precondition(f"model path {str(path)!r} does not exist")
        source = path.absolute()
        self.root.mkdir(parents=True, exist_ok=True)
        target = fresh_dir(child_dir(self.root, safe_dir_name(model_id)))
        name: str | None = None
        try:
            name = self.write_layout(model_id, model_type, source, target)
            size, measured = self._load_and_size(name, model_type, source)
        except BaseException:
            if name is not None:
                self._unload_quietly(name)  # a failed load may leave a half-loaded model
            remove(target)
            raise
        return ExternalModel(self, model_id, name, target, size, measured)

    def _load_and_size(self, name: str, model_type: str, source: Path) -> tuple[int, bool]:
        """Load `name` in the server; its size and whether it was measured."""
        estimate = self.estimate_size(source)
        pid = self.process.pid
        if pid is None:
            self.client.load_model(name, self.config.load_timeout_s)
            log.info("%s: size %d bytes is an estimate (disk x %.2f); server process not visible",
                     name, estimate, self.config.size_multiplier)
            return estimate, False
        with self._measure_lock:
            before = self.process.rss_bytes()
            self.client.load_model(name, self.config.load_timeout_s)
            after = self.process.rss_bytes()
            first_of_type = (pid, model_type) not in self._started_types
            self._started_types.add((pid, model_type))
        if before is None or after is None:
            return estimate, False
        if first_of_type:
            log.info("%s: first %s model in %s pid %d; its RSS delta %d includes the runtime's start-up, "
                     "reporting the estimate %d", name, model_type, self.kind, pid, after - before, estimate)
            return estimate, False
        disk = disk_size(source)
        size = max(after - before, disk, 1)
        log.info("%s: measured %s RSS delta %d bytes (disk %d) -> size %d", name, self.kind, after - before, disk, size)
        return size, True

    def _unload_quietly(self, name: str) -> None:
        try:
            self.client.unload_model(name)
        except AdapterError as exc:
            log.warning("could not unload %r from %s after a failed load: %s", name, self.kind, exc.message)

    def unload(self, model: ExternalModel) -> None:
        """Unload in the server, then remove the layout. If the server cannot
        be reached the layout stays, so the next start-up purge finds it."""
        self.client.unload_model(model.external_name)
        remove(model.directory)

    # ---- size ---------------------------------------------------------------

    def estimate_size(self, path: Path) -> int:
        disk = disk_size(path)
        return int(disk * self.config.size_multiplier) if disk else DEFAULT_MODEL_SIZE_BYTES

    def predict_size(self, path: Path) -> int:
        if not path.exists():
            raise AdapterError.failed_precondition(f"model path {str(path)!r} does not exist")
        return self.estimate_size(path)
