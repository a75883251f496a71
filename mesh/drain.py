"""Graceful drain: what a sidecar does between SIGTERM and exit, so that
taking a pod away loses no request and costs no cold load — ModelMesh's
pre-stop migration, bounded by the pod's grace period.

The order, and why:

1. **Announce.** Mark this instance `shutting_down`: the loader starts no
   new load (a request for a model not here is routed to a peer — a copy, or
   where placement puts one — even if it was forwarded to us; only when no
   other instance can take it is it loaded here after all), our own
   placement skips us, the readiness probe turns not-ready, the copy scaler
   and leader duties stop (leadership passes at once), and the instance
   record is rewritten *before anything else* so every peer's placement
   excludes us as a load target. Loads already under way may finish.
   Requests keep being served: every copy here stays listed and loaded.
2. **Copy out.** For each model loaded here that has no copy on another
   live, non-draining instance — most recently used first, a few at a time —
   ask the instance placement picks to load it (`Router.load_on`), trying
   another if that fails, until the copy-out deadline. Then wait until the
   registry view lists the new copies, so peers know where they are.
3. **Withdraw.** Remove our copies from the registry records and wait a
   moment (`settle_s`) for peers' watches to apply it and for requests they
   already forwarded to land. Peers now route to the new copies; only now,
   because a peer that stopped routing to us *before* the copies existed
   elsewhere would cold-load every model that had its only copy here. We
   still hold and serve the copies for whatever still reaches us.
4. **Stop** (`Sidecar.stop`): the gRPC server refuses new calls and gives
   in-flight ones what is left of the grace period; then the models are
   unloaded, the registry writes flushed, and the instance record's lease
   revoked, so it disappears at once rather than after its TTL.

Budget: everything fits in `grace_s` (Kubernetes' terminationGracePeriod,
30 s by default; ModelMesh's SHUTDOWN_TIMEOUT_MS). Copying out ends
`stop_reserve_s` (at most a quarter of the grace) plus `settle_s` before the
deadline; the server's grace for in-flight calls ends `cleanup_s` before it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from mesh.clock import now_ms
from mesh.copy_recorder import DesiredCopy
from mesh.errors import MeshError

if TYPE_CHECKING:
    from mesh.settings import MeshSettings
    from mesh.sidecar import Sidecar

log = logging.getLogger(__name__)

COPY_ATTEMPTS = 2  # targets tried per model
POLL_S = 0.05


@dataclass(frozen=True)
class DrainConfig:
    grace_s: float = 30.0
    migrate: bool = True  # False when the whole mesh is going away (nowhere to copy to)
    parallelism: int = 4  # copies requested at once
    settle_s: float = 1.0
    stop_reserve_s: float = 5.0

    @classmethod
    def from_settings(cls, settings: "MeshSettings", grace_s: float | None = None, *, migrate: bool = True) -> "DrainConfig":
        """`grace_s` if given, else SHUTDOWN_TIMEOUT_MS when set, else `drain_grace_s`."""
        if grace_s is None:
            grace_s = settings.shutdown_timeout_ms / 1000 if settings.shutdown_timeout_ms > 0 else settings.drain_grace_s
        return cls(grace_s=max(0.0, grace_s), migrate=migrate)

    @property
    def reserve_s(self) -> float:
        """Kept after copying out for withdrawing, stopping and leaving etcd."""
        return min(self.stop_reserve_s, self.grace_s / 4) + self.settle_s

    @property
    def cleanup_s(self) -> float:
        """Kept after the server's grace for unloading and leaving etcd."""
        return min(2.0, self.grace_s / 10)


@dataclass
class DrainReport:
    copied: dict[str, str] = field(default_factory=dict)  # model -> the instance that took a copy
    not_copied: dict[str, str] = field(default_factory=dict)  # model -> why not
    had_copies: list[str] = field(default_factory=list)  # copies elsewhere already: nothing to do
    withdrawn: int = 0
    seconds: float = 0.0


class Drainer:
    """Steps 1–3 above, against a started sidecar; `Sidecar.drain` runs it
    and then stops the sidecar with `request_grace_s()`."""

    def __init__(self, sidecar: "Sidecar", config: DrainConfig) -> None:
        self.sidecar = sidecar
        self.config = config
        self.me = sidecar.settings.instance_id
        self._loop = asyncio.get_running_loop()
        self.deadline = self._loop.time() + config.grace_s

    def _left(self, keep_s: float = 0.0) -> float:
        return max(0.0, self.deadline - keep_s - self._loop.time())

    def request_grace_s(self) -> float:
        """What in-flight calls get when the server stops."""
        return self._left(self.config.cleanup_s)

    async def run(self) -> DrainReport:
        started = time.perf_counter()
        report = DrainReport()
        await self.announce()
        if self.config.migrate:
            await self.copy_out(report)
        await self.withdraw(report)
        report.seconds = time.perf_counter() - started
        log.info(
            "drained %s in %.1f s: %d copied, %d had copies elsewhere, %d not copied %s",
            self.me, report.seconds, len(report.copied), len(report.had_copies), len(report.not_copied),
            report.not_copied or "",
            extra={"event": "drain_done", "copied": report.copied, "not_copied": report.not_copied,
                   "had_copies": report.had_copies, "duration_ms": round(report.seconds * 1e3, 1)},
        )
        return report

    # ---- 1. announce ---------------------------------------------------------

    async def announce(self) -> None:
        sc = self.sidecar
        sc.loader.draining = True
        log.info("draining %s (grace %.1f s)", self.me, self.config.grace_s,
                 extra={"event": "drain_start", "grace_s": self.config.grace_s})
        # no new copies decided here; the leader key is handed over now
        await self._bounded(asyncio.gather(sc.scaler.stop(), sc.leader.stop()), 2.0, "stopping copy scaling and leader duties")
        await self._bounded(sc.publisher.publish_now(), 2.0, "publishing shutting_down")
        await sc.loader.settle(self._left(self.config.reserve_s))  # loads under way land, and are copied out too

    # ---- 2. copy out -----------------------------------------------------------

    async def copy_out(self, report: DrainReport) -> None:
        loader = self.sidecar.loader
        loaded = [m for m in loader.copies if loader.try_peek(m)]
        loaded.sort(key=lambda m: loader.lru.entry(m).last_used_ms, reverse=True)  # most recently used first
        wanted = []
        for model_id in loaded:
            (report.had_copies if self.copy_elsewhere(model_id) else wanted).append(model_id)
        if not wanted:
            return
        slots = asyncio.Semaphore(self.config.parallelism)  # FIFO: the MRU order holds
        tasks = {m: asyncio.create_task(self._copy(m, slots, report), name=f"drain-copy-{m}") for m in wanted}
        _, pending = await asyncio.wait(tasks.values(), timeout=self._left(self.config.reserve_s))
        for model_id, task in tasks.items():
            if task in pending:
                task.cancel()
                report.not_copied[model_id] = "out of time"
        await asyncio.gather(*tasks.values(), return_exceptions=True)
        await self._wait_listed(list(report.copied))

    def copy_elsewhere(self, model_id: str) -> bool:
        """Whether another live instance that is not draining has it loaded."""
        record = self.sidecar.view.get(model_id)
        if record is None:
            return False
        router, live = self.sidecar.router, self.sidecar.router.live_instances()
        return any(i != self.me and i in live and not router.is_draining(i) for i in record.instances)

    async def _copy(self, model_id: str, slots: asyncio.Semaphore, report: DrainReport) -> None:
        router = self.sidecar.router
        async with slots:
            tried = {self.me}
            why = "no instance can take it"
            for _ in range(COPY_ATTEMPTS):
                record = self.sidecar.view.get(model_id)
                if record is None:
                    why = "unregistered"
                    break
                if self.copy_elsewhere(model_id):  # a peer added one meanwhile
                    report.had_copies.append(model_id)
                    return
                target = await router.load_target(record, tried)
                if target is None:
                    break
                started = time.perf_counter()
                try:
                    await router.load_on(target, model_id)
                except MeshError as exc:
                    tried.add(target)
                    why = f"{target}: {exc.message}"
                    log.warning("drain: copying %s to %s failed: %s", model_id, target, exc.message)
                    continue
                report.copied[model_id] = target
                log.info(
                    "drain: copied %s to %s", model_id, target,
                    extra={"event": "drain_copy", "model_id": model_id, "target": target,
                           "duration_ms": round((time.perf_counter() - started) * 1e3, 3)},
                )
                return
            report.not_copied[model_id] = why

    async def _wait_listed(self, models: list[str]) -> None:
        """Until the registry view names the new copies (peers see the same
        records, a watch event apart), or the copy-out time is up."""
        limit = self._loop.time() + self._left(self.config.reserve_s)
        while not all(self.copy_elsewhere(m) for m in models) and self._loop.time() < limit:
            await asyncio.sleep(POLL_S)

    # ---- 3. withdraw -----------------------------------------------------------

    async def withdraw(self, report: DrainReport) -> None:
        sc = self.sidecar
        now = now_ms()
        for model_id in [m for m in sc.loader.copies if sc.loader.try_peek(m)]:
            sc.recorder.set(model_id, DesiredCopy(None, now))
            report.withdrawn += 1
        await self._bounded(sc.recorder.flush(timeout_s=self._left(self.config.cleanup_s)), None, "withdrawing copies")
        await asyncio.sleep(min(self.config.settle_s, self._left(self.config.cleanup_s)))

    async def _bounded(self, work: Awaitable[object], timeout_s: float | None, what: str) -> None:
        """A step that must not hold up the drain (etcd away, say): bounded,
        and its failure logged rather than raised."""
        limit = self._left(self.config.cleanup_s) if timeout_s is None else min(timeout_s, self._left(self.config.cleanup_s))
        try:
            await asyncio.wait_for(work, limit)
        except asyncio.TimeoutError:
            log.warning("drain: %s took longer than %.1f s; going on", what, limit)
        except Exception as exc:
            log.warning("drain: %s failed (%s); going on", what, exc)
