"""Keeps this sidecar's instance record in etcd: registered under a lease
that is kept alive, rewritten when its state changes (a load, an unload),
and refreshed periodically for the slowly drifting fields (LRU age, request
rate) — never on every request.

If etcd loses the lease (an outage longer than the TTL), a new lease is
taken and the record written again, so an instance comes back by itself.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from mesh.records import InstanceRecord
from mesh.store import EtcdTable
from mesh.views import TableView

log = logging.getLogger(__name__)


class InstancePublisher:
    def __init__(
        self,
        table: EtcdTable[InstanceRecord],
        view: TableView[InstanceRecord],
        snapshot: Callable[[], InstanceRecord],
        *,
        ttl_s: int = 10,
        refresh_s: float = 5.0,
        min_interval_s: float = 0.1,
        on_new_lease: Callable[[], None] = lambda: None,
    ) -> None:
        self._table = table
        self._view = view
        self._snapshot = snapshot
        self._on_new_lease = on_new_lease
        self.ttl_s = ttl_s
        self._refresh_s = min(refresh_s, ttl_s / 3)
        self._min_interval_s = min_interval_s
        self._lease = None
        self._published: InstanceRecord | None = None
        self._dirty = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.publishes = 0
        # etcd health as seen by this publisher's own calls (readiness probes
        # read it instead of calling etcd themselves)
        self.last_ok: float | None = None  # loop time of the last successful lease refresh or write
        self.last_error: str | None = None  # why the last attempt failed; None once one succeeds

    def changed(self) -> None:
        """State worth publishing changed (cheap; coalesced by the loop)."""
        self._dirty.set()

    async def start(self) -> None:
        await self._renew_lease()
        await self._publish(force=True)
        self._task = asyncio.create_task(self._run(), name="instance-publisher")

    async def stop(self, *, withdraw: bool = True) -> None:
        """Stop publishing; with `withdraw`, revoke the lease so the record
        disappears at once instead of after the TTL."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        if withdraw and self._lease is not None:
            try:
                await self._lease.revoke()
            except Exception as exc:  # etcd gone: the lease expires by itself
                log.debug("lease revoke failed: %s", exc)

    async def publish_now(self) -> None:
        """Write the record at once, bypassing the coalescing loop: a drain's
        `shutting_down` must reach the peers before it asks them for copies."""
        await self._publish(force=True)

    @property
    def lease(self) -> object:
        return self._lease

    def etcd_problem(self) -> str | None:
        """Why etcd does not look reachable, or None: the last lease refresh
        or record write failed, or none succeeded within the lease's TTL."""
        if self.last_error is not None:
            return f"last etcd call failed: {self.last_error}"
        if self.last_ok is None:
            return "instance record not written yet"
        age = asyncio.get_running_loop().time() - self.last_ok
        if age > self.ttl_s:
            return f"no successful etcd call for {age:.1f} s"
        return None

    def _succeeded(self) -> None:
        self.last_ok = asyncio.get_running_loop().time()
        self.last_error = None

    async def _renew_lease(self) -> None:
        """A new lease (at start, or after the old one expired): the record is
        written again, and the owner re-announces what the janitor may have
        removed meanwhile."""
        had_lease = self._lease is not None
        self._lease = await self._table.client.lease(self.ttl_s)
        self._published = None
        if had_lease:
            self._on_new_lease()

    async def _publish(self, *, force: bool = False) -> None:
        record = self._snapshot()
        if not force and self._published is not None and record.same_state(self._published):
            return
        stored = await self._table.put(record, lease=self._lease)
        self._succeeded()
        self._published = stored
        self._view.apply(stored)
        self.publishes += 1

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        next_refresh = loop.time() + self._refresh_s
        while True:
            try:
                await asyncio.wait_for(self._dirty.wait(), max(0.0, next_refresh - loop.time()))
            except asyncio.TimeoutError:
                pass
            self._dirty.clear()
            try:
                if loop.time() >= next_refresh:
                    next_refresh = loop.time() + self._refresh_s
                    reply = await self._lease.refresh()
                    if reply is None or reply.TTL <= 0:
                        log.warning("instance lease expired; registering again")
                        await self._renew_lease()
                    else:
                        self._succeeded()
                await self._publish()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # etcd down: keep serving; the refresh in 1 s renews a lost lease
                self.last_error = str(exc) or type(exc).__name__
                log.warning("instance record not published (%s); retrying", exc)
                next_refresh = loop.time() + 1.0
            await asyncio.sleep(self._min_interval_s)
