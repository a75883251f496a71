"""This instance's model cache: single-flight loads, size-aware LRU eviction,
failure back-off, and the in-flight accounting that keeps a model from being
evicted while it serves.

The policy (what fits, what to evict) is `placement.SizeAwareLRU`; this module
carries out its decisions against the runtime and publishes copy states to
the registry through `CopyRecorder`, never waiting on etcd itself.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from mesh.clock import now_ms
from mesh.copy_recorder import CopyRecorder, CopyState, DesiredCopy
from mesh.errors import (
    CapacityExhausted,
    DeadlineExceeded,
    Draining,
    MeshError,
    ModelLoadFailed,
    ModelNotFound,
    RuntimeUnavailable,
)
from mesh.metrics import MeshMetrics
from mesh.records import ModelRecord
from mesh.runtime_client import RuntimeClient
from mesh.type_constraints import runtime_model_type
from placement import Admission, InstanceState, SizeAwareLRU, in_backoff
from protos import grpc_predict_v2_pb2 as v2
from protos import model_runtime_pb2 as spi

log = logging.getLogger(__name__)


def _event(event: str, model_id: str, size_bytes: int, duration_ms: float, **more: object) -> dict[str, object]:
    """The structured fields of a load/unload log line (see mesh/logs.py):
    one line per load, failed load, unload and eviction."""
    return {"event": event, "model_id": model_id, "size_bytes": size_bytes, "duration_ms": round(duration_ms, 3), **more}


@dataclass
class LocalCopy:
    model_id: str
    state: CopyState
    since_ms: int
    size_bytes: int = 0
    error: str = ""
    metadata: v2.ModelMetadataResponse | None = field(default=None, repr=False)


@dataclass(frozen=True)
class LoaderConfig:
    capacity_bytes: int
    max_loading_concurrency: int = 2
    load_timeout_s: float = 90.0
    default_model_size_bytes: int = 1 << 20
    failure_backoff_ms: int = 30_000
    capacity_wait_s: float = 30.0


class ModelLoader:
    def __init__(
        self,
        runtime: RuntimeClient,
        config: LoaderConfig,
        recorder: CopyRecorder | None,
        metrics: MeshMetrics,
        clock: Callable[[], int] = now_ms,
    ) -> None:
        self.runtime = runtime
        self.config = config
        self.lru = SizeAwareLRU(config.capacity_bytes)
        self._recorder = recorder
        self._metrics = metrics
        self._clock = clock
        self.copies: dict[str, LocalCopy] = {}  # LOADING or LOADED here
        self.failures: dict[str, LocalCopy] = {}  # last failed load, per model
        self._loads: dict[str, asyncio.Task[LocalCopy]] = {}
        self._unloads: dict[str, asyncio.Task[None]] = {}
        self._unregistered: set[str] = set()  # unregistered while their load ran
        self.uses: Counter[str] = Counter()  # requests per model since the copy scaler last looked
        self._load_slots = asyncio.Semaphore(config.max_loading_concurrency)
        self._space_freed = asyncio.Event()
        self.load_count = 0
        self.draining = False  # shutting down: no new loads start here (see mesh/drain.py)
        self.on_change: Callable[[], None] = lambda: None  # e.g. republish the instance record
        metrics.instance_capacity.set(config.capacity_bytes)

    # ---- hot path -----------------------------------------------------------

    def try_acquire(self, model_id: str) -> LocalCopy | None:
        """If the model is loaded here, mark one request in flight (no eviction
        until `release`) and touch it; else None. Synchronous, so nothing can
        evict it between the check and the mark."""
        copy = self.copies.get(model_id)
        if copy is None or copy.state is not CopyState.LOADED:
            return None
        self.lru.acquire(model_id)
        self.lru.touch(model_id, self._clock())
        self.uses[model_id] += 1
        return copy

    def try_peek(self, model_id: str) -> bool:
        """Whether a copy is loaded here (no in-flight mark, no touch)."""
        copy = self.copies.get(model_id)
        return copy is not None and copy.state is CopyState.LOADED

    def release(self, model_id: str) -> None:
        if model_id in self.lru:
            self.lru.release(model_id)
            if self.lru.is_evictable(model_id):
                self._signal_space()

    # ---- loading ------------------------------------------------------------

    def failure_of(self, model_id: str) -> LocalCopy | None:
        """The last failure, while it still holds the model in back-off."""
        failure = self.failures.get(model_id)
        if failure is None:
            return None
        if in_backoff(failure.since_ms, self._clock(), self.config.failure_backoff_ms):
            return failure
        return None

    async def ensure_loaded(self, record: ModelRecord, *, force: bool = False) -> LocalCopy:
        """Return once the model is loaded here, starting the load if nobody has.
        Every concurrent caller shares the one load; a caller that gives up does
        not cancel it for the others. While draining no new load starts (it
        raises `Draining`, which the router takes as "go elsewhere") unless
        `force`d: the router's last resort when no other instance can take it."""
        model_id = record.model_id
        copy = self.copies.get(model_id)
        if copy is not None and copy.state is CopyState.LOADED:
            return copy
        task = self._loads.get(model_id)
        if task is None:
            if self.draining and not force:
                raise Draining(f"model {model_id!r} is not loaded here and this instance is shutting down")
            failure = self.failure_of(model_id)
            if failure is not None:
                raise ModelLoadFailed(
                    f"model {model_id!r} failed to load {self._clock() - failure.since_ms} ms ago "
                    f"and is in back-off: {failure.error}"
                )
            # visible as LOADING at once, before the first await of the load
            self.copies[model_id] = LocalCopy(model_id, CopyState.LOADING, self._clock())
            task = asyncio.create_task(self._load(record), name=f"load-{model_id}")
            self._loads[model_id] = task
            task.add_done_callback(lambda t, m=model_id: self._loads.pop(m, None) if self._loads.get(m) is t else None)
        return await asyncio.shield(task)

    async def settle(self, timeout_s: float) -> None:
        """Wait (bounded) for the loads in progress to land or fail."""
        pending = list(self._loads.values())
        if pending and timeout_s > 0:
            await asyncio.wait(pending, timeout=timeout_s)

    async def predicted_size(self, record: ModelRecord) -> int:
        """Measured at an earlier load if ever loaded, else the runtime's estimate."""
        if record.size_bytes:
            return record.size_bytes  # measured at an earlier load: best guess
        try:
            size = await self.runtime.predict_size(
                spi.PredictModelSizeRequest(
                    modelId=record.model_id, modelType=runtime_model_type(record.type), modelPath=record.path, modelKey=record.key
                )
            )
        except MeshError as exc:
            log.debug("size prediction for %s failed: %s", record.model_id, exc)
            size = 0
        return size or self.config.default_model_size_bytes

    async def _load(self, record: ModelRecord) -> LocalCopy:
        model_id = record.model_id
        try:
            return await self._load_once(record)
        finally:
            self._unregistered.discard(model_id)

    async def _load_once(self, record: ModelRecord) -> LocalCopy:
        model_id = record.model_id
        pending_unload = self._unloads.get(model_id)
        if pending_unload is not None:
            await asyncio.shield(pending_unload)
        started = time.perf_counter()
        copy = self.copies[model_id]
        try:
            copy.size_bytes = size = await self.predicted_size(record)
            await self._make_room(model_id, size)
        except BaseException:
            self.copies.pop(model_id, None)
            raise
        self.lru.add(model_id, size, self._clock(), loading=True)
        self._publish(model_id, DesiredCopy(CopyState.LOADING, copy.since_ms))
        self.on_change()
        try:
            async with self._load_slots:
                response = await asyncio.wait_for(
                    self.runtime.load(
                        spi.LoadModelRequest(
                            modelId=model_id, modelType=runtime_model_type(record.type), modelPath=record.path, modelKey=record.key
                        ),
                        self.config.load_timeout_s,
                    ),
                    self.config.load_timeout_s,
                )
        except BaseException as exc:
            await self._undo_failed_load(model_id, exc, size, started)
            raise self._load_error(model_id, exc) from exc
        measured = response.sizeInBytes or size
        if measured > self.lru.capacity_bytes:
            error = CapacityExhausted(
                f"model {model_id!r} takes {measured} bytes once loaded, more than this instance's "
                f"capacity of {self.lru.capacity_bytes}"
            )
            await self._drop(model_id, unload=True)
            self._record_failure(model_id, error.message, measured, started)
            raise error
        if model_id in self._unregistered:
            await self._drop(model_id, unload=True)
            self._publish(model_id, DesiredCopy(None, self._clock()))
            raise ModelNotFound(f"model {model_id!r} was unregistered while it loaded")
        self.lru.resize(model_id, measured)
        self.lru.mark_loaded(model_id)
        copy.state, copy.since_ms, copy.size_bytes = CopyState.LOADED, self._clock(), measured
        self.failures.pop(model_id, None)
        self.load_count += 1
        self._publish(model_id, DesiredCopy(CopyState.LOADED, copy.since_ms, measured))
        elapsed_ms = (time.perf_counter() - started) * 1e3
        self._metrics.load_ms.observe(elapsed_ms)
        self._metrics.loaded_model_size.observe(measured)
        self._update_gauges()
        log.info("loaded %s: %d bytes in %.1f ms", model_id, measured, elapsed_ms, extra=_event("load", model_id, measured, elapsed_ms))
        if self.lru.over_capacity_bytes:
            await self._shed_excess()
        return copy

    def _load_error(self, model_id: str, exc: BaseException) -> BaseException:
        if isinstance(exc, asyncio.TimeoutError):
            return DeadlineExceeded(f"model {model_id!r} did not load within {self.config.load_timeout_s}s")
        if isinstance(exc, (RuntimeUnavailable, asyncio.CancelledError)):
            return exc
        if isinstance(exc, MeshError):
            return ModelLoadFailed(f"model {model_id!r} failed to load: {exc.message}")
        return ModelLoadFailed(f"model {model_id!r} failed to load: {exc!r}")

    async def _undo_failed_load(self, model_id: str, exc: BaseException, size: int, started: float) -> None:
        """A load that raised: free its reservation and remember why, except
        when the runtime was unreachable or we were cancelled (no fault of
        the model). A timed-out or cancelled load may still land in the
        runtime, so it is unloaded, as the SPI contract asks."""
        await self._drop(model_id, unload=isinstance(exc, (asyncio.TimeoutError, asyncio.CancelledError)))
        if isinstance(exc, (RuntimeUnavailable, asyncio.CancelledError)):
            self._publish(model_id, DesiredCopy(None, self._clock()))
        else:
            message = exc.message if isinstance(exc, MeshError) else str(exc) or repr(exc)
            self._record_failure(model_id, message, size, started)

    async def _drop(self, model_id: str, *, unload: bool) -> None:
        """Forget a copy that never served: its reservation goes at once, and
        the runtime is told to unload it when it may hold it."""
        if model_id in self.lru:
            self.lru.remove(model_id)
        self.copies.pop(model_id, None)
        self._signal_space()
        if unload:
            try:
                await self.runtime.unload(model_id)
            except MeshError as unload_error:
                log.warning("unload after abandoned load of %s failed: %s", model_id, unload_error)

    def _record_failure(self, model_id: str, message: str, size: int, started: float) -> None:
        failure = LocalCopy(model_id, CopyState.FAILED, self._clock(), error=message)
        self.failures[model_id] = failure
        self._metrics.load_failures.inc()
        self._publish(model_id, DesiredCopy(CopyState.FAILED, failure.since_ms, error=message))
        elapsed_ms = (time.perf_counter() - started) * 1e3
        log.warning(
            "load of %s failed: %s", model_id, message,
            extra=_event("load_failed", model_id, size, elapsed_ms, error=message),
        )

    async def _make_room(self, model_id: str, size: int) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.capacity_wait_s
        while True:
            plan = self.lru.plan(size)
            if plan.admission is Admission.FITS:
                return
            if plan.admission is Admission.NEVER:
                raise CapacityExhausted(f"model {model_id!r}: {plan.reason}")
            if plan.admission is Admission.EVICT:
                await asyncio.gather(*(self.evict(victim) for victim in plan.victims))
                continue
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise CapacityExhausted(f"model {model_id!r}: no space freed within {self.config.capacity_wait_s}s; {plan.reason}")
            self._space_freed.clear()
            try:
                await asyncio.wait_for(self._space_freed.wait(), remaining)
            except asyncio.TimeoutError:
                pass

    async def _shed_excess(self) -> None:
        plan = self.lru.plan(0)
        if plan.admission is Admission.EVICT:
            await asyncio.gather(*(self.evict(victim) for victim in plan.victims))

    # ---- unloading ----------------------------------------------------------

    async def evict(self, model_id: str) -> None:
        """LRU eviction: counted and timed as ModelMesh does."""
        copy = self.copies.get(model_id)
        if copy is not None:
            self._metrics.evictions.inc()
            self._metrics.age_at_eviction_ms.observe(max(0, self._clock() - copy.since_ms))
        await self.unload(model_id, "LRU", event="evict")

    async def unload(self, model_id: str, reason: str = "requested", *, event: str = "unload") -> None:
        """Unload a loaded copy. The model stays counted (pinned) until the
        runtime has really freed it, so no load is admitted into memory that
        is still in use. `reason` and `event` go into its one log line."""
        existing = self._unloads.get(model_id)
        if existing is not None:
            return await asyncio.shield(existing)
        copy = self.copies.get(model_id)
        if copy is None or copy.state is not CopyState.LOADED:
            return
        # take it out of service now, in this same step, so that no load that
        # starts before the unload task runs can be confused with this copy
        del self.copies[model_id]
        self.lru.pin(model_id, True)
        task = asyncio.create_task(self._unload(copy, reason, event), name=f"unload-{model_id}")
        self._unloads[model_id] = task
        task.add_done_callback(lambda t, m=model_id: self._unloads.pop(m, None))
        await asyncio.shield(task)

    async def _unload(self, copy: LocalCopy, reason: str, event: str) -> None:
        model_id = copy.model_id
        started = time.perf_counter()
        try:
            await self.runtime.unload(model_id)
        except MeshError as exc:  # capacity is written off rather than leaked forever
            log.warning("unload of %s failed (%s); releasing its capacity anyway", model_id, exc)
        finally:
            self.lru.remove(model_id)
            self._signal_space()
            self._update_gauges()
        elapsed_ms = (time.perf_counter() - started) * 1e3
        self._metrics.unload_ms.observe(elapsed_ms)
        self._publish(model_id, DesiredCopy(None, self._clock()))
        log.info(
            "%s %s (%s): %d bytes in %.1f ms", "evicted" if event == "evict" else "unloaded", model_id, reason,
            copy.size_bytes, elapsed_ms,
            extra=_event(event, model_id, copy.size_bytes, elapsed_ms, reason=reason, age_ms=max(0, self._clock() - copy.since_ms)),
        )

    def forget(self, model_id: str) -> None:
        """The model was unregistered: drop its failure and unload it in the background."""
        self.failures.pop(model_id, None)
        if model_id in self._loads:
            self._unregistered.add(model_id)  # unloaded as soon as its load lands
        elif model_id in self.copies and self.copies[model_id].state is CopyState.LOADED:
            asyncio.create_task(self.unload(model_id, "unregistered"), name=f"unregister-{model_id}")

    async def unload_all(self, reason: str = "shutdown") -> None:
        await asyncio.gather(*(self.unload(m, reason) for m in list(self.copies)), return_exceptions=True)

    # ---- bookkeeping ----------------------------------------------------------

    @property
    def loading_count(self) -> int:
        return len(self._loads)

    def instance_state(self, instance_id: str) -> InstanceState:
        """This instance as placement sees it, from live (not published) state."""
        return InstanceState(
            instance_id=instance_id,
            capacity_bytes=self.lru.capacity_bytes,
            used_bytes=self.lru.used_bytes,
            lru_ms=self.lru.lru_ms(),
            model_count=len(self.lru),
            loading_count=self.loading_count,
        )

    def _signal_space(self) -> None:
        self._space_freed.set()

    def _publish(self, model_id: str, want: DesiredCopy) -> None:
        if self._recorder is not None:
            self._recorder.set(model_id, want)

    def _update_gauges(self) -> None:
        self.on_change()
        self._metrics.instance_used.set(self.lru.used_bytes)
        self._metrics.models_loaded.set(sum(1 for c in self.copies.values() if c.state is CopyState.LOADED))
