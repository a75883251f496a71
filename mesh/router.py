"""Finds a copy of a model to serve a request: a local hit, or a load here on
a miss. (Forwarding to a copy on a peer joins here with the distributed mesh.)

The hit path touches only in-memory state: the loader's copy table and LRU.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from mesh.errors import CapacityExhausted, ModelNotFound
from mesh.loader import LocalCopy, ModelLoader
from mesh.metrics import MeshMetrics
from mesh.records import ModelRecord
from mesh.store import RegistryStore
from mesh.views import RegistryView

T = TypeVar("T")

# A load can finish and be evicted again before the waiting request runs when
# the cache is thrashing; a few re-tries then give up with RESOURCE_EXHAUSTED.
MISS_ATTEMPTS = 3


class Router:
    def __init__(self, view: RegistryView, store: RegistryStore, loader: ModelLoader, metrics: MeshMetrics) -> None:
        self.view = view
        self.store = store
        self.loader = loader
        self.metrics = metrics

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

    async def with_copy(
        self,
        model_id: str,
        call: Callable[[LocalCopy], Awaitable[T]],
        before_load: Callable[[], Awaitable[None]] | None = None,
    ) -> T:
        """Run `call` against a loaded copy, loading one on a miss.
        `before_load` runs once on a miss, before any load starts (cheap input
        validation, so a malformed request never costs a model load)."""
        copy = self.loader.try_acquire(model_id)
        if copy is None:
            copy = await self._miss(model_id, before_load)
        try:
            return await call(copy)
        finally:
            self.loader.release(model_id)

    async def _miss(self, model_id: str, before_load: Callable[[], Awaitable[None]] | None) -> LocalCopy:
        record = await self.record(model_id)
        if before_load is not None:
            await before_load()
        started = time.perf_counter()
        self.metrics.waiting_for_load.inc()
        try:
            for _ in range(MISS_ATTEMPTS):
                await self.loader.ensure_loaded(record)
                copy = self.loader.try_acquire(model_id)
                if copy is not None:
                    self.metrics.cache_miss_ms.observe((time.perf_counter() - started) * 1e3)
                    return copy
        finally:
            self.metrics.waiting_for_load.dec()
        raise CapacityExhausted(f"model {model_id!r} was evicted before it could serve: the cache is thrashing")
