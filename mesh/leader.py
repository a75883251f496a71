"""Leader election and the leader's janitor work.

One sidecar holds `<prefix>/leader`, written under its session lease: when
it dies the lease expires, the key goes, and the next sidecar to try takes
it. The leader removes dead instances from registry records (at once when
an instance leaves the instance table, and in a periodic sweep), and clears
copies stuck in LOADING on live instances for longer than a load may take.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from mesh.clock import now_ms
from mesh.errors import MeshError
from mesh.records import InstanceRecord, ModelRecord
from mesh.store import RegistryStore
from mesh.views import RegistryView, TableView

log = logging.getLogger(__name__)


def without_instances(record: ModelRecord, gone: Callable[[str], bool], stale_loading_before_ms: int) -> ModelRecord | None:
    """The record with every copy, load and failure of a gone instance removed,
    and loads started before `stale_loading_before_ms` dropped; None if unchanged."""
    changed = False
    for field in (record.instances, record.failures):
        for instance_id in [i for i in field if gone(i)]:
            del field[instance_id]
            changed = True
    for instance_id, started in list(record.loading.items()):
        if gone(instance_id) or started < stale_loading_before_ms:
            del record.loading[instance_id]
            changed = True
    return record if changed else None


class Leader:
    def __init__(
        self,
        store: RegistryStore,
        registry: RegistryView,
        instances: TableView[InstanceRecord],
        instance_id: str,
        lease_of: Callable[[], object],
        *,
        poll_s: float = 1.0,
        sweep_s: float = 10.0,
        max_load_ms: int = 180_000,
        on_round: Callable[[], None] = lambda: None,
    ) -> None:
        self._on_round = on_round
        self._store = store
        self._registry = registry
        self._instances = instances
        self.instance_id = instance_id
        self._lease_of = lease_of
        self._key = f"{store.prefix}/leader".encode()
        self._poll_s = poll_s
        self._sweep_s = sweep_s
        self._max_load_ms = max_load_ms
        self.is_leader = False
        self._task: asyncio.Task[None] | None = None
        self._sweep_now = asyncio.Event()
        instances.add_listener(self._on_instance_change)

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="leader")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        if self.is_leader:
            try:  # hand over at once rather than after the lease's TTL
                client = self._store.client
                tx = client.transactions
                await client.transaction(
                    compare=[tx.value(self._key) == self.instance_id.encode()], success=[tx.delete(self._key)], failure=[]
                )
            except Exception as exc:
                log.debug("leader key not released: %s", exc)
            self.is_leader = False

    def _on_instance_change(self, instance_id: str, record: InstanceRecord | None) -> None:
        if record is None and self.is_leader:
            self._sweep_now.set()

    async def _campaign(self) -> bool:
        """Take the key if free; keep it if ours. True while we lead."""
        client = self._store.client
        tx = client.transactions
        ok, responses = await client.transaction(
            compare=[tx.version(self._key) == 0],
            success=[tx.put(self._key, self.instance_id.encode(), lease=self._lease_of())],
            failure=[tx.get(self._key)],
        )
        if ok:
            return True
        holder = responses[0][0][0].decode() if responses[0] else ""
        return holder == self.instance_id

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        next_sweep = 0.0
        while True:
            try:
                leading = await self._campaign()
                if leading != self.is_leader:
                    log.info("instance %s %s leadership", self.instance_id, "took" if leading else "lost")
                    self.is_leader = leading
                if leading:
                    self._on_round()  # e.g. retry vModel transitions whose driver died or failed
                if leading and (self._sweep_now.is_set() or loop.time() >= next_sweep):
                    self._sweep_now.clear()
                    next_sweep = loop.time() + self._sweep_s
                    await self.sweep()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # etcd away: try again next round
                log.warning("leader round failed: %s", exc)
            try:
                await asyncio.wait_for(self._sweep_now.wait(), self._poll_s)
            except asyncio.TimeoutError:
                pass

    async def sweep(self) -> int:
        """Remove dead instances (and stale loads) from every record; returns
        how many records changed."""
        live = self._instances.ids()
        gone = lambda i: i not in live  # noqa: E731
        stale_before = now_ms() - self._max_load_ms
        changed = 0
        for record in self._registry.records():
            if without_instances(record.copy(), gone, stale_before) is None:
                continue
            try:
                stored = await self._store.update(
                    record.model_id, lambda rec: without_instances(rec, gone, stale_before), current=record
                )
            except MeshError as exc:
                log.warning("janitor could not clean %s: %s", record.model_id, exc)
                continue
            if stored is not None:
                self._registry.apply(stored)
                changed += 1
        if changed:
            log.info("janitor removed dead instances from %d records", changed)
        return changed
