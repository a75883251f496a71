"""How many copies each model has: more for busy models, fewer for idle
ones, never fewer than a model's `min_copies`.

Each sidecar looks at its own loaded copies every interval (the decision is
`placement.copies.decide_copy`, which the simulator calls too):
- a copy that served more than `scale_up_rps`, or had `scale_up_in_flight`
  requests in flight, asks for another copy on another instance (another zone
  first) — decided by the first holder in id order, so the holders of one model
  do not all add a copy at once;
- an extra copy (the model has others) idle for `copy_idle_ms` is unloaded —
  by the last holder in id order, one per interval — before LRU pressure has
  to pick victims;
- a copy that `min_copies` needs is pinned against eviction.
The leader tops up models below `min_copies` (after an instance is lost).
"""

from __future__ import annotations

import asyncio
import logging

from mesh.clock import now_ms
from mesh.errors import MeshError
from mesh.loader import ModelLoader
from mesh.records import ModelRecord
from mesh.router import Router
from mesh.views import RegistryView
from placement.copies import CopyAction, CopyPolicy, decide_copy

__all__ = ["CopyPolicy", "CopyScaler"]  # CopyPolicy lives in placement.copies, shared with the simulator

log = logging.getLogger(__name__)


class CopyScaler:
    def __init__(self, router: Router, loader: ModelLoader, registry: RegistryView, policy: CopyPolicy) -> None:
        self.router = router
        self.loader = loader
        self.registry = registry
        self.policy = policy
        self.me = router.instance_id
        self._adding: dict[str, asyncio.Task[None]] = {}
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="copy-scaler")

    async def stop(self) -> None:
        tasks = [t for t in (self._task, *self._adding.values()) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.policy.interval_s)
            try:
                await self.tick(self.policy.interval_s)
            except asyncio.CancelledError:
                raise
            except Exception:  # one bad round must not stop scaling for good
                log.exception("copy scaling round failed")

    def holders(self, record: ModelRecord) -> list[str]:
        """Live instances with a loaded copy (this one by its own state); a
        draining instance's copy is on its way out and does not count."""
        live = self.router.live_instances()
        holders = {i for i in record.instances if i in live and i != self.me and not self.router.is_draining(i)}
        if self.loader.try_peek(record.model_id):
            holders.add(self.me)
        return sorted(holders)

    async def tick(self, elapsed_s: float) -> None:
        uses, self.loader.uses = self.loader.uses, type(self.loader.uses)()
        now = now_ms()
        for model_id in list(self.loader.copies):
            if not self.loader.try_peek(model_id):
                continue
            record = self.registry.get(model_id)
            if record is None:
                continue
            holders = self.holders(record)
            entry = self.loader.lru.entry(model_id)
            decision = decide_copy(
                self.me, holders, min_copies=record.min_copies, uses=uses[model_id], elapsed_s=elapsed_s,
                in_flight=entry.in_flight, last_used_ms=entry.last_used_ms, now_ms=now, policy=self.policy,
            )
            self.loader.lru.pin(model_id, decision.pin)
            if decision.action is CopyAction.ADD:
                self.add_copy(record, holders)
            elif decision.action is CopyAction.DROP:  # the unload's log line says why
                await self.loader.unload(model_id, f"idle extra copy, {len(holders)} copies")

    def add_copy(self, record: ModelRecord, holders: list[str]) -> None:
        """Load one more copy somewhere else, in the background (one at a time per model)."""
        model_id = record.model_id
        if model_id in self._adding:
            return

        async def add() -> None:
            zones = {r.zone for i in holders if (r := self.router.instances.get(i)) is not None and r.zone}
            target = await self.router.load_target(record, set(holders), prefer_zones_other_than=zones)
            if target is None:
                return
            log.info("adding a copy of %s on %s (%d copies)", model_id, target, len(holders))
            try:
                await self.router.load_on(target, model_id)
            except MeshError as exc:
                log.warning("extra copy of %s on %s failed: %s", model_id, target, exc.message)

        task = asyncio.create_task(add(), name=f"add-copy-{model_id}")
        self._adding[model_id] = task
        task.add_done_callback(lambda t: self._adding.pop(model_id, None))

    def top_up(self) -> None:
        """Leader duty: models below their minimum get copies added."""
        for record in self.registry.records():
            if record.min_copies:
                holders = self.holders(record)
                if len(holders) < record.min_copies:
                    self.add_copy(record, holders)
