"""Leader election through a coordination.k8s.io/v1 Lease, as client-go's:
the holder renews `renewTime` every `renew_s`; a candidate takes the Lease
when it is free or its `renewTime` is older than `leaseDurationSeconds`.
Every write carries the resourceVersion it read, so of two candidates racing
for an expired Lease exactly one wins (the other gets 409 Conflict). A leader
that cannot renew within the lease duration steps down before anyone else
may take over; a leader that stops releases the Lease so failover is quick.

The official client is blocking: calls run on a worker thread."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import datetime, timezone
from typing import Any

from kubernetes.client import CoordinationV1Api
from kubernetes.client.exceptions import ApiException

from mesh.controller.kube_writes import raw_call

log = logging.getLogger(__name__)

NOT_FOUND, CONFLICT = 404, 409


def _micro_time(at: float) -> str:
    return datetime.fromtimestamp(at, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _parse_time(text: str | None) -> float:
    """RFC 3339 (`…Z`, `…+00:00`, with or without microseconds) → epoch seconds."""
    if not text:
        return 0.0
    parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return (parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)).timestamp()


class LeaseElector:
    def __init__(
        self,
        api: CoordinationV1Api,
        namespace: str,
        name: str,
        identity: str,
        *,
        lease_s: int = 15,
        renew_s: float = 5.0,
        retry_s: float = 2.0,
    ) -> None:
        self.api = api
        self.namespace = namespace
        self.name = name
        self.identity = identity
        self.lease_s = lease_s
        self.renew_s = renew_s
        self.retry_s = retry_s
        self.is_leader = False
        self._last_renew = 0.0
        self.observed_holder = ""  # the holder the last attempt saw

    # ---- one attempt (blocking; runs on a thread) ----------------------------------

    def _read(self) -> dict[str, Any] | None:
        try:
            body = raw_call(self.api.read_namespaced_lease, self.name, self.namespace)
        except ApiException as exc:
            if exc.status == NOT_FOUND:
                return None
            raise
        return json.loads(body)

    def _spec(self, now: float, acquired: str | None) -> dict[str, Any]:
        return {
            "holderIdentity": self.identity,
            "leaseDurationSeconds": self.lease_s,
            "acquireTime": acquired or _micro_time(now),
            "renewTime": _micro_time(now),
        }

    def try_acquire_or_renew(self) -> bool:
        """One round: True when this candidate holds the Lease afterwards."""
        now = time.time()
        lease = self._read()
        if lease is None:
            body = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                    "metadata": {"name": self.name, "namespace": self.namespace}, "spec": self._spec(now, None)}
            try:
                raw_call(self.api.create_namespaced_lease, self.namespace, body)
            except ApiException as exc:
                if exc.status == CONFLICT:
                    return False  # another candidate created it first
                raise
            return True
        spec = lease.get("spec") or {}
        holder = spec.get("holderIdentity") or ""
        self.observed_holder = holder
        mine = holder == self.identity
        expired = _parse_time(spec.get("renewTime")) + float(spec.get("leaseDurationSeconds") or self.lease_s) < now
        if not (mine or not holder or expired):
            return False
        lease["spec"] = self._spec(now, spec.get("acquireTime") if mine else None)
        try:
            raw_call(self.api.replace_namespaced_lease, self.name, self.namespace, lease)
        except ApiException as exc:
            if exc.status == CONFLICT:
                return False  # someone wrote it since we read it: they won this round
            raise
        return True

    def release(self) -> None:
        """Give the Lease up (only if still ours), so a successor need not wait it out."""
        lease = self._read()
        if lease is None or (lease.get("spec") or {}).get("holderIdentity") != self.identity:
            return
        lease["spec"]["holderIdentity"] = ""
        lease["spec"]["renewTime"] = _micro_time(0)
        try:
            raw_call(self.api.replace_namespaced_lease, self.name, self.namespace, lease)
        except ApiException as exc:
            log.info("could not release lease %s: %s", self.name, exc.reason)

    # ---- the loop ------------------------------------------------------------------

    async def run(self, lead: Callable[[], Awaitable[None]]) -> None:
        """Campaign until cancelled; while leading, run `lead()` and cancel it
        as soon as leadership is lost."""
        while True:
            await self._wait_for_leadership()
            log.info("%s leads (lease %s/%s)", self.identity, self.namespace, self.name)
            leading = asyncio.create_task(lead(), name="controller-leading")
            try:
                await self._keep_leadership(leading)
            finally:
                self.is_leader = False
                leading.cancel()
                [outcome] = await asyncio.gather(leading, return_exceptions=True)
                if isinstance(outcome, Exception):
                    log.error("the leader's work failed: %r", outcome)
                try:
                    await asyncio.shield(asyncio.to_thread(self.release))
                except Exception as exc:  # the API may be gone too: the lease then just expires
                    log.info("lease release failed: %s", exc)
            log.warning("%s stopped leading; campaigning again", self.identity)
            await asyncio.sleep(self.retry_s)  # a failing leader must not spin

    async def _attempt(self) -> bool:
        try:
            return await asyncio.to_thread(self.try_acquire_or_renew)
        except Exception as exc:
            log.warning("lease %s: %s", self.name, exc)
            return False

    async def _wait_for_leadership(self) -> None:
        while not await self._attempt():
            await asyncio.sleep(self.retry_s)
        self.is_leader = True
        self._last_renew = time.monotonic()

    async def _keep_leadership(self, leading: asyncio.Task[None]) -> None:
        """Renew until a renewal fails for longer than the lease lasts (or the
        leading work ends on its own)."""
        while not leading.done():
            await asyncio.wait({leading}, timeout=self.renew_s)
            if leading.done():
                return
            if await self._attempt():
                self._last_renew = time.monotonic()
            elif self.observed_holder not in ("", self.identity):
                return  # someone else holds it now
            elif time.monotonic() - self._last_renew > self.lease_s * 0.8:
                return  # step down before another candidate may consider the lease expired
