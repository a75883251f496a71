"""The sidecar's in-memory copies of etcd tables (registry, instances,
vModels), each fed by an etcd watch.

The request path reads only this view, never etcd. Our own writes are applied
at once (read-your-writes for the caller that registered a model), the watch
brings everyone else's, and a newer mod_revision always wins, so a late watch
event can never roll a record back. After a compaction or a lost watch the
view re-lists and diffs, telling listeners about what disappeared meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from typing import Generic

from mesh.records import ModelRecord
from mesh.store import EtcdTable, R

log = logging.getLogger(__name__)
STOP_WAIT_S = 3.0  # how long stop() keeps cancelling a watch that will not end

RESYNC_BACKOFF_S = (0.1, 0.25, 0.5, 1.0, 2.0)

Listener = Callable[[str, R | None], None]


class TableView(Generic[R]):
    def __init__(self, store: EtcdTable[R]) -> None:
        self._store = store
        self._records: dict[str, R] = {}
        # deletions applied locally before the watch caught up: (revision, id)
        self._tombstones: dict[str, int] = {}
        self._tombstone_order: deque[tuple[int, str]] = deque()
        self.revision = 0
        self.membership = 0  # bumped when an id comes or goes (not on updates)
        self._sorted: tuple[int, list[str]] | None = None
        self._listeners: list[Listener] = []
        self._task: asyncio.Task[None] | None = None
        self.synced = asyncio.Event()
        self.resyncs = 0

    # ---- reads (hot path) -------------------------------------------------

    def get(self, record_id: str) -> R | None:
        return self._records.get(record_id)

    def __len__(self) -> int:
        return len(self._records)

    def records(self) -> list[R]:
        return list(self._records.values())

    def ids(self):
        """A live view of the ids (no copy)."""
        return self._records.keys()

    def sorted_ids(self) -> list[str]:
        """Ids in order, re-sorted only after ids came or went (paging a
        100,000-model registry must not sort it for every page)."""
        if self._sorted is None or self._sorted[0] != self.membership:
            self._sorted = (self.membership, sorted(self._records))
        return self._sorted[1]

    def add_listener(self, listener: Listener) -> None:
        """Called with (record_id, record or None) after every change."""
        self._listeners.append(listener)

    # ---- updates ----------------------------------------------------------

    def apply(self, record: R) -> None:
        """Take `record` unless the view already has the same or a newer one."""
        record_id = record.record_id
        current = self._records.get(record_id)
        if current is not None and current.mod_revision >= record.mod_revision:
            return
        if current is None and record.mod_revision < self.revision:
            # the watch has passed this put and the view no longer has the
            # record: it was deleted since (its tombstone may be gone already)
            return
        if self._tombstones.get(record_id, -1) >= record.mod_revision:
            return
        if current is None:
            self.membership += 1
        self._records[record_id] = record
        self._notify(record_id, record)

    def apply_delete(self, record_id: str, revision: int) -> None:
        current = self._records.get(record_id)
        if current is not None and current.mod_revision > revision:
            return
        self._tombstones[record_id] = revision
        self._tombstone_order.append((revision, record_id))
        if self._records.pop(record_id, None) is not None:
            self.membership += 1
            self._notify(record_id, None)

    def _advance(self, revision: int) -> None:
        """The watch has passed `revision`: older tombstones can go."""
        self.revision = max(self.revision, revision)
        order = self._tombstone_order
        while order and order[0][0] <= self.revision:
            rev, record_id = order.popleft()
            if self._tombstones.get(record_id) == rev:
                del self._tombstones[record_id]

    def _notify(self, record_id: str, record: R | None) -> None:
        for listener in self._listeners:
            try:
                listener(record_id, record)
            except Exception:  # a listener bug must not stop the watch
                log.exception("%s listener failed for %s", self._store.table, record_id)

    # ---- watch loop ---------------------------------------------------------

    async def start(self) -> None:
        """Load the registry, then keep it current in the background."""
        await self._resync()
        self._task = asyncio.create_task(self._run(), name=f"{self._store.table}-watch")

    async def stop(self) -> None:
        """Cancel the watch and wait for it. Cancelled again until it ends:
        Python 3.11's `asyncio.wait_for` (inside aetcd's watch creation) can
        swallow a cancellation that arrives as etcd answers, and the task
        would then wait for watch events forever."""
        task, self._task = self._task, None
        deadline = asyncio.get_running_loop().time() + STOP_WAIT_S
        while task is not None and not task.done():
            task.cancel()
            await asyncio.wait({task}, timeout=0.5)
            if asyncio.get_running_loop().time() > deadline:
                # seen inside aetcd's watch generator: closing the etcd
                # client (the next stop step) ends it; never hang a stop
                log.warning("%s watch did not end within %.0fs of cancelling; leaving it to the client's close",
                            self._store.table, STOP_WAIT_S)
                return
        if task is not None and not task.cancelled() and task.exception() is not None:
            log.warning("%s watch ended with %r", self._store.table, task.exception())

    async def _resync(self) -> None:
        records, revision = await self._store.list()
        fresh = {r.record_id: r for r in records}
        for record_id in [m for m in self._records if m not in fresh]:
            self.apply_delete(record_id, revision)
        for record in records:
            self.apply(record)
        self._advance(revision)
        self.synced.set()

    async def _run(self) -> None:
        failures = 0
        while True:
            try:
                if failures:
                    await self._resync()
                    self.resyncs += 1
                async for event in self._store.watch(self.revision + 1):
                    if event.record is None:
                        self.apply_delete(event.record_id, event.revision)
                    else:
                        self.apply(event.record)
                    self._advance(event.revision)
                    failures = 0
                failures += 1  # the stream ended: etcd closed it
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                failures += 1
                log.warning("%s watch interrupted (%s); resyncing", self._store.table, exc)
            await asyncio.sleep(RESYNC_BACKOFF_S[min(failures, len(RESYNC_BACKOFF_S)) - 1])


RegistryView = TableView[ModelRecord]
