"""Publishes this instance's copy states (loading, loaded, failed, gone) into
the models' registry records, off the request path.

Each model has one desired state; a worker writes the latest one by CAS and
retries while etcd is unreachable, so a burst of changes (loading → loaded)
costs at most one write per change that is still current, and an etcd outage
delays the record but never a request.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from enum import Enum

from mesh.errors import RegistryUnavailable
from mesh.records import ModelRecord
from mesh.store import RegistryStore
from mesh.views import RegistryView

log = logging.getLogger(__name__)

RETRY_DELAYS_S = (0.05, 0.2, 0.5, 1.0, 2.0)


class CopyState(Enum):
    LOADING = "LOADING"
    LOADED = "LOADED"
    FAILED = "FAILED"


@dataclass(frozen=True)
class DesiredCopy:
    state: CopyState | None  # None: no copy here
    at_ms: int
    size_bytes: int = 0
    error: str = ""


def apply_copy(record: ModelRecord, instance_id: str, want: DesiredCopy) -> ModelRecord | None:
    """The record with this instance's copy set to `want`; None if unchanged."""
    before = (
        record.instances.get(instance_id),
        record.loading.get(instance_id),
        record.failures.get(instance_id),
        record.size_bytes,
    )
    record.instances.pop(instance_id, None)
    record.loading.pop(instance_id, None)
    if want.state is CopyState.LOADING:
        record.loading[instance_id] = want.at_ms
    elif want.state is CopyState.LOADED:
        record.instances[instance_id] = want.at_ms
        record.failures.pop(instance_id, None)
    elif want.state is CopyState.FAILED:
        record.failures[instance_id] = (want.at_ms, want.error)
    if want.size_bytes:
        record.size_bytes = want.size_bytes
    after = (
        record.instances.get(instance_id),
        record.loading.get(instance_id),
        record.failures.get(instance_id),
        record.size_bytes,
    )
    return record if after != before else None


class CopyRecorder:
    def __init__(self, store: RegistryStore, view: RegistryView, instance_id: str) -> None:
        self._store = store
        self._view = view
        self.instance_id = instance_id
        self._desired: dict[str, DesiredCopy] = {}
        self._workers: dict[str, asyncio.Task[None]] = {}

    def set(self, model_id: str, want: DesiredCopy) -> None:
        self._desired[model_id] = want
        if model_id not in self._workers:
            self._workers[model_id] = asyncio.create_task(self._sync(model_id), name=f"record-{model_id}")

    async def _sync(self, model_id: str) -> None:
        attempt = 0
        try:
            while True:
                want = self._desired[model_id]
                try:
                    stored = await self._store.update(
                        model_id,
                        lambda rec: apply_copy(rec, self.instance_id, want),
                        current=self._view.get(model_id),
                    )
                except RegistryUnavailable as exc:
                    delay = RETRY_DELAYS_S[min(attempt, len(RETRY_DELAYS_S) - 1)]
                    attempt += 1
                    log.warning("copy state of %s not recorded yet (%s); retrying in %.2fs", model_id, exc, delay)
                    await asyncio.sleep(delay)
                    continue
                if stored is not None:
                    self._view.apply(stored)
                if self._desired.get(model_id) is want:
                    del self._desired[model_id]
                    return
                attempt = 0  # a newer state arrived while writing: write it too
        finally:
            self._workers.pop(model_id, None)

    async def flush(self, timeout_s: float = 10.0) -> None:
        """Wait until every desired state is written (tests, shutdown)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while self._workers and loop.time() < deadline:
            await asyncio.wait(list(self._workers.values()), timeout=deadline - loop.time())

    async def close(self) -> None:
        for task in list(self._workers.values()):
            task.cancel()
        await asyncio.gather(*self._workers.values(), return_exceptions=True)
