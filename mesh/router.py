"""Finds a copy of a model to serve a request: a local hit; else a copy on a
peer (loaded first, then loading); else a new copy where placement says —
here or on a peer, which then loads it.

The hit path touches only in-memory state: the loader's copy table and LRU.
A miss reads the registry and instance views (memory, fed by watches); etcd
is read only for a model the view has never heard of. Forwarded requests
carry `mm-forwarded` and are served where they land, so a request makes at
most one extra hop.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import TypeVar

from mesh.clock import now_ms
from mesh.errors import CapacityExhausted, MeshError, ModelLoadFailed, ModelNotFound, RuntimeUnavailable
from mesh.loader import LocalCopy, ModelLoader
from mesh.metrics import MeshMetrics
from mesh.peers import Peer, Peers, hop_metadata
from mesh.records import InstanceRecord, ModelRecord
from mesh.store import RegistryStore
from mesh.type_constraints import TypeConstraints
from mesh.views import RegistryView, TableView
from placement import InstanceState, choose_load_target, in_backoff, pick_copy
from protos import grpc_predict_v2_pb2 as v2

log = logging.getLogger(__name__)
T = TypeVar("T")

# A load can finish and be evicted again before the waiting request runs when
# the cache is thrashing; a few re-tries then give up with RESOURCE_EXHAUSTED.
MISS_ATTEMPTS = 3
# Targets tried for one request (copies or load places) before UNAVAILABLE.
ROUTE_ATTEMPTS = 3
# Statuses from a peer after which another target may succeed.
RETRY_ELSEWHERE = (RuntimeUnavailable, CapacityExhausted)

Remote = Callable[[Peer], Awaitable[T]]


class Router:
    def __init__(
        self,
        view: RegistryView,
        store: RegistryStore,
        loader: ModelLoader,
        metrics: MeshMetrics,
        *,
        instance_id: str = "",
        instances: TableView[InstanceRecord] | None = None,
        peers: Peers | None = None,
        failure_backoff_ms: int = 30_000,
        rng: random.Random | None = None,
        zone: str = "",
        labels: frozenset[str] = frozenset(),
        constraints: TypeConstraints = TypeConstraints(),
    ) -> None:
        self.zone = zone
        self.labels = labels
        self.constraints = constraints
        self.view = view
        self.store = store
        self.loader = loader
        self.metrics = metrics
        self.instance_id = instance_id
        self.instances = instances
        self.peers = peers
        self.failure_backoff_ms = failure_backoff_ms
        self.rng = rng or random.Random()
        self.requests = 0  # for the instance record's request rate

    async def record(self, model_id: str) -> ModelRecord:
        """The registry record, from the view; a strong read only when the view
        lacks it (registered elsewhere a moment ago), so unknown ids still end
        in NOT_FOUND without trusting a lagging watch."""
        record = self.view.get(model_id)
        if record is None:
            record = await self.store.get(model_id)
            if record is None:
                raise ModelNotFound(f"model {model_id!r} is not registered")
            self.view.apply(record)
        return record

    async def route(
        self,
        model_id: str,
        local: Callable[[LocalCopy], Awaitable[T]],
        remote: Remote[T] | None = None,
        *,
        forwarded: bool = False,
        before_load: Callable[[], Awaitable[None]] | None = None,
    ) -> T:
        """Run `local` against a copy here or `remote` against a peer's stub.
        `before_load` runs once before any load is started or asked for (cheap
        input validation, so a malformed request never costs a model load)."""
        self.requests += 1
        copy = self.loader.try_acquire(model_id)
        if copy is not None:
            return await self._serve(model_id, copy, local)
        can_forward = remote is not None and self.peers is not None
        draining = self.loader.draining and can_forward and model_id not in self.loader.copies
        if not draining and (forwarded or not can_forward or model_id in self.loader.copies):
            # served here: a hop already happened, or a load here is under way
            return await self._serve(model_id, await self._miss(model_id, before_load), local)
        # a draining instance starts no load: even a forwarded request goes on
        # to where a copy is or may load (peers' placement already skips us)
        record = await self.record(model_id)
        tried: set[str] = {self.instance_id} if draining else set()
        last: MeshError | None = None
        for _ in range(ROUTE_ATTEMPTS):
            target, existing = await self._target(record, tried)
            if target is None:
                break
            if (not existing or target == self.instance_id) and before_load is not None:
                await before_load()  # this request may cause a load: check it first
                before_load = None
            if target == self.instance_id:
                try:
                    copy = await self._miss(model_id, None)
                except RETRY_ELSEWHERE as exc:  # no room here after all: a peer may have some
                    tried.add(target)
                    last = exc
                    continue
                return await self._serve(model_id, copy, local)
            try:
                result = await self.peers.call(target, remote)
                self.metrics.forwarded.labels("ok").inc()
                return result
            except RETRY_ELSEWHERE as exc:
                self.metrics.forwarded.labels("retried").inc()
                log.info("request for %s failed on %s (%s); trying elsewhere", model_id, target, exc.message)
                tried.add(target)
                last = exc
                record = self.view.get(model_id) or record
        if draining:  # nowhere else could take it: serving it here beats failing it
            log.info("draining, but no other instance could serve %s; loading it here", model_id)
            return await self._serve(model_id, await self._miss(model_id, before_load, force=True), local)
        if isinstance(last, CapacityExhausted):
            raise last
        if last is not None:
            raise RuntimeUnavailable(f"model {model_id!r}: no copy could serve after {len(tried)} attempts; last: {last.message}")
        failures = self._recent_failures(record)
        if failures:
            where, (at, message) = max(failures.items(), key=lambda item: item[1][0])
            raise ModelLoadFailed(
                f"model {model_id!r} failed to load on {sorted(failures)} and is in back-off; "
                f"last error ({where}, {now_ms() - at} ms ago): {message}"
            )
        raise CapacityExhausted(f"model {model_id!r}: no instance can take it (capacity or labels)")

    def _recent_failures(self, record: ModelRecord) -> dict[str, tuple[int, str]]:
        now = now_ms()
        failures = {i: f for i, f in record.failures.items() if in_backoff(f[0], now, self.failure_backoff_ms)}
        local = self.loader.failure_of(record.model_id)
        if local is not None:  # fresher than the record, which is written asynchronously
            failures[self.instance_id] = (local.since_ms, local.error)
        return failures

    async def _target(self, record: ModelRecord, tried: set[str]) -> tuple[str | None, bool]:
        """(instance, whether a copy exists there): a loaded copy (fewer
        in-flight of two random ones), else a loading copy (its load is
        shared), else where placement puts a new copy."""
        live = self.live_instances()
        for copies in (record.instances, record.loading):
            candidates = [i for i in copies if i in live and i not in tried]
            if candidates:
                return pick_copy([(i, self.peers.in_flight[i]) for i in candidates], self.rng), True
        return await self.load_target(record, tried), False

    async def load_target(
        self, record: ModelRecord, exclude: set[str], *, prefer_zones_other_than: set[str] = frozenset()
    ) -> str | None:
        """Where a new copy should load (placement), avoiding `exclude` and the
        instances where it failed recently."""
        excluded = set(exclude) | set(self._recent_failures(record))
        if self.peers is not None and self.instances is not None and self.peers.any_unreachable:
            excluded |= {i for i in self.instances.ids() if i != self.instance_id and not self.peers.reachable(i)}
        size = await self.loader.predicted_size(record)
        return choose_load_target(
            size, self._instance_states(), receiving_id=self.instance_id, exclude=excluded,
            required_labels=self.constraints.labels_for(record.type),
            prefer_zones_other_than=prefer_zones_other_than,
        )

    def live_instances(self):
        """Instances with a live record whose connection has not just failed."""
        if self.instances is None:
            return {self.instance_id: None}.keys()
        if self.peers is None or not self.peers.any_unreachable:
            return self.instances.ids()  # the common case: a live view, no copy
        return {i: None for i in self.instances.ids() if i == self.instance_id or self.peers.reachable(i)}.keys()

    def is_draining(self, instance_id: str) -> bool:
        """Whether the instance's record says it is shutting down: its copies
        still serve, but are on their way out."""
        record = self.instances.get(instance_id) if self.instances is not None else None
        return record is not None and record.shutting_down

    async def load_on(self, instance_id: str, model_id: str) -> None:
        """Make `instance_id` load the model: here directly, on a peer by a
        forwarded metadata call (served where it lands, loading first)."""
        if instance_id == self.instance_id or self.peers is None:
            record = await self.record(model_id)
            await self.loader.ensure_loaded(record)
            return
        metadata = hop_metadata(model_id, self.instance_id)
        await self.peers.call(
            instance_id, lambda peer: peer.v2.ModelMetadata(v2.ModelMetadataRequest(name=model_id), metadata=metadata, timeout=600)
        )

    def _instance_states(self) -> list[InstanceState]:
        """Peers as their records say; this instance as its loader says now."""
        states = [
            replace(
                self.loader.instance_state(self.instance_id),
                zone=self.zone, labels=self.labels, shutting_down=self.loader.draining,
            )
        ]
        if self.instances is not None:
            for rec in self.instances.records():
                if rec.instance_id == self.instance_id:
                    continue
                states.append(
                    InstanceState(
                        instance_id=rec.instance_id,
                        capacity_bytes=rec.capacity_bytes,
                        used_bytes=rec.used_bytes,
                        lru_ms=rec.lru_ms or None,
                        model_count=rec.count,
                        loading_count=rec.loading,
                        zone=rec.zone,
                        labels=frozenset(rec.labels),
                        shutting_down=rec.shutting_down,
                    )
                )
        return states

    async def _serve(self, model_id: str, copy: LocalCopy, local: Callable[[LocalCopy], Awaitable[T]]) -> T:
        try:
            return await local(copy)
        finally:
            self.loader.release(model_id)

    async def _miss(
        self, model_id: str, before_load: Callable[[], Awaitable[None]] | None, *, force: bool = False
    ) -> LocalCopy:
        """Load here (or wait for the load in progress) and take a copy;
        `force` loads even while draining."""
        copy = self.loader.try_acquire(model_id)
        if copy is not None:
            return copy
        record = await self.record(model_id)
        if before_load is not None:
            await before_load()
        started = time.perf_counter()
        self.metrics.waiting_for_load.inc()
        try:
            for _ in range(MISS_ATTEMPTS):
                await self.loader.ensure_loaded(record, force=force)
                copy = self.loader.try_acquire(model_id)
                if copy is not None:
                    self.metrics.cache_miss_ms.observe((time.perf_counter() - started) * 1e3)
                    return copy
        finally:
            self.metrics.waiting_for_load.dec()
        raise CapacityExhausted(f"model {model_id!r} was evicted before it could serve: the cache is thrashing")
