"""Discrete-event simulation of a mesh: requests walk a pre-sorted array, rare
things (loads landing, copy-scaling rounds, failures, samples) are events.

A request arrives at a random pod (like a Kubernetes Service spreading
connections) and is routed as ``mesh/router.py`` routes it: a copy loaded on
the receiving pod serves it; else a load in progress there; else a loaded
copy on a peer (``pick_copy``, one hop); else a loading copy on a peer; else
a new copy where ``choose_load_target`` says (one hop unless it is the
receiving pod).  Requests that wait for a load are cold.

Why the loop looks the way it does: the target is hundreds of thousands of
requests per second of wall time, so a warm hit is a list index, a dict
lookup, a membership test and ``SizeAwareLRU.touch`` — no event, no
allocation.  Outcomes go into a bytearray and latencies are computed
afterwards with numpy (inference time + hop + wait).  Request in-flight
intervals are only modelled with ``mesh.concurrency: true`` (one heap event
per request); without it a request holds no in-flight mark, so eviction can
pick a model that is serving, the ``scale_up_in_flight`` trigger never fires
(copy scaling reacts to request rate only) and ``pick_copy`` sees zero
in-flight everywhere (a random pick of two).  With inference times far below
the time a model spends as the LRU victim, this changes almost nothing.

Copy-scaling rounds call ``placement.copies.decide_copy`` for every copy the
decision could change: among the copies used in the round, copies of models
with more than one copy, models with ``min_copies`` and (concurrency mode)
copies with requests in flight, those for which ``placement.copies.may_act``
says the answer is not certain to be KEEP, unpinned.  Every other copy would
get KEEP, unpinned (tested), so the round skips it.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from placement import CopyAction, CopyPolicy, decide_copy, may_act, pick_copy
from sim.cluster import Cluster, Load, Pod
from sim.events import INF, Event, EventQueue
from sim.scenario import Scenario
from sim.workload import Workload

__all__ = ["HIT_FORWARDED", "HIT_LOCAL", "COLD_FORWARDED", "COLD_LOCAL", "FAILED", "Engine", "SimResult"]

HIT_LOCAL, HIT_FORWARDED, COLD_LOCAL, COLD_FORWARDED, FAILED = range(5)
UNRESOLVED = 255  # a request nobody has answered yet; none may remain at the end
CHUNK = 1 << 16  # requests between progress callbacks

Progress = Callable[[int, int], None]


@dataclass
class SimResult:
    """Everything a run produced; ``sim.stats`` turns it into figures."""

    pod_ids: list[str]
    pod_memory: np.ndarray  # bytes per pod
    duration_s: float
    codes: np.ndarray  # uint8 outcome per request (HIT_LOCAL ... FAILED)
    wait_ms: np.ndarray  # time waited for a load (cold requests), else 0
    inference_ms: np.ndarray
    hop_ms: float
    loads: int
    demand_loads: int
    evictions: int
    copy_adds: int
    copy_drops: int
    failed_loads: int
    sample_times_s: np.ndarray
    used_bytes: np.ndarray  # samples × pods
    copies: np.ndarray  # total loaded copies per sample
    multi_copy_models: np.ndarray  # models with >= 2 copies per sample
    per_pod: dict[str, dict[str, int]] = field(default_factory=dict)
    max_used_fraction: float = 0.0  # max over samples and pods of used / capacity

    def latencies_ms(self) -> np.ndarray:
        """Per request: inference + one hop if forwarded + the load wait (NaN if failed)."""
        codes = self.codes
        hop = ((codes == HIT_FORWARDED) | (codes == COLD_FORWARDED)) * self.hop_ms
        latency = self.inference_ms + hop + self.wait_ms
        latency[codes == FAILED] = np.nan
        return latency


class Engine:
    """One simulation run of a scenario's workload on its pods."""

    def __init__(self, scenario: Scenario, workload: Workload, receiving: Sequence[int] | None = None) -> None:
        """``receiving``: the pod each request arrives at (default: uniform, seeded)."""
        self.scenario = scenario
        self.workload = workload
        self.receiving = receiving
        mesh = scenario.mesh
        self.mesh = mesh
        self.events = EventQueue()
        self.cluster = Cluster(scenario.pod_specs(), workload.population, mesh, scenario.runtime_for,
                               self.events, self._load_failed)
        self.rng = random.Random(scenario.seed)
        n = len(workload)
        self.codes = bytearray([UNRESOLVED]) * n
        self.wait_ms = np.zeros(n)
        self.inference = workload.inference_ms
        self.min_copies = {m: c for m, c in zip(workload.population.ids, workload.population.min_copies.tolist()) if c > 0}
        copies = mesh.copies
        self.policy = CopyPolicy(copies.interval_s, copies.scale_up_rps, copies.scale_up_in_flight, int(copies.copy_idle_s * 1000))
        self.copy_scaling = copies.enabled
        self.adding: set[str] = set()
        self.copy_adds = 0
        self._version = 0  # bumped when pods fail or restart (their LRU objects change)
        pods = self.cluster.pods
        self.redirect = list(range(len(pods)))  # drawn pod → alive pod taking its traffic
        self.samples: list[tuple[float, list[int], int, int]] = []
        self.tms: list[int] = []
        self.recv: list[int] = []
        self.names: list[str] = []

    # ------------------------------------------------------------------ run

    def run(self, progress: Progress | None = None) -> SimResult:
        w = self.workload
        n = len(w)
        pods = self.cluster.pods
        self.tms = np.floor(w.times_ms).astype(np.int64).tolist()
        if self.receiving is not None:
            self.recv = [int(p) for p in self.receiving]
            if len(self.recv) != n or any(not 0 <= p < len(pods) for p in self.recv):
                raise ValueError(f"receiving needs {n} pod indices in [0, {len(pods)})")
        else:
            self.recv = np.random.default_rng(self.scenario.seed + 1).integers(0, len(pods), n).tolist()
        ids = w.population.ids
        self.names = [ids[k] for k in w.model_index.tolist()]
        end_ms = max(w.duration_s * 1000.0, self.tms[-1] if n else 0.0)
        self.end_ms = end_ms
        self._schedule_periodic()
        for failure in self.scenario.failures:
            self.events.push(failure.at_s * 1000.0, Event.POD_FAIL, (failure.pod, failure.recover_after_s))
        for lo in range(0, n, CHUNK):
            self._requests(lo, min(n, lo + CHUNK))
            if progress is not None:
                progress(min(n, lo + CHUNK), n)
        self._run_events(INF)  # loads still landing after the last request
        return self._result()

    def _requests(self, lo: int, hi: int) -> None:
        """The hot loop; everything it touches is a local."""
        tms, recv, names, redirect = self.tms, self.recv, self.names, self.redirect
        codes, inference = self.codes, self.inference
        cluster = self.cluster
        loaded = cluster.loaded
        pods = cluster.pods
        touch = [pod.lru.touch for pod in pods]  # bound SizeAwareLRU.touch per pod
        pod_loading = [pod.loading for pod in pods]
        uses = [pod.uses for pod in pods]
        heap = self.events.heap
        track_uses = self.copy_scaling
        concurrency = self.mesh.concurrency
        local, forwarded = HIT_LOCAL, HIT_FORWARDED
        version = self._version
        next_ev = heap[0][0] if heap else INF
        for i in range(lo, hi):
            t = tms[i]
            if t >= next_ev:
                next_ev = self._run_events(t)
                if self._version != version:  # pods failed or restarted: fresh references
                    version = self._version
                    touch = [pod.lru.touch for pod in pods]
                    pod_loading = [pod.loading for pod in pods]
                    uses = [pod.uses for pod in pods]
            m = names[i]
            p = redirect[recv[i]]
            holders = loaded[m]
            if p in holders:
                q = p
                codes[i] = local
            elif holders and m not in pod_loading[p]:
                q = holders[0] if len(holders) == 1 else self._pick(holders)
                codes[i] = forwarded
            else:
                self._miss(i, m, p, t)
                next_ev = heap[0][0] if heap else INF
                continue
            touch[q](m, t)
            if track_uses:
                u = uses[q]
                u[m] = u.get(m, 0) + 1
            if concurrency:
                finish = self._acquire(pods[q], m, t + inference[i])
                if finish < next_ev:
                    next_ev = finish

    def _pick(self, holders: list[int]) -> int:
        """``pick_copy`` over the loaded copies (in-flight per pod, 0 without concurrency)."""
        pods = self.cluster.pods
        chosen = pick_copy([(pods[q].pod_id, pods[q].inflight) for q in holders], self.rng)
        return self.cluster.index_of[chosen]

    def _acquire(self, pod: Pod, model: str, finish: float) -> float:
        pod.lru.acquire(model)
        pod.inflight += 1
        self.events.push(finish, Event.RELEASE, (pod, pod.lru, model))
        return finish

    # ----------------------------------------------------------------- misses

    def _miss(self, i: int, m: str, p: int, now: float) -> None:
        """No loaded copy reachable: wait for a load here or on a peer, or start one."""
        cluster = self.cluster
        if p < 0:  # every pod is down
            self.codes[i] = FAILED
            return
        holders = cluster.loaded[m]
        if holders:  # only for a request re-placed after its pod died: a copy exists now
            q = p if p in holders else (holders[0] if len(holders) == 1 else self._pick(holders))
            self._serve_late(cluster.pods[q], m, [(i, q != p)], now)
            return
        loads = cluster.loading.get(m)
        if loads:
            load = loads.get(p)
            if load is None:
                if len(loads) == 1:
                    load = next(iter(loads.values()))
                else:
                    load = loads[self._pick(list(loads))]
            load.waiters.append((i, load.pod != p))
            return
        q = cluster.target(m, p, now)
        if q is None:
            self.codes[i] = FAILED
            return
        cluster.start_load(m, q, now, [(i, q != p)], demand=True)

    def _load_failed(self, load: Load, now: float, reason: str) -> None:
        for i, _ in load.waiters:
            self.codes[i] = FAILED
        self.adding.discard(load.model)

    def _land(self, load: Load, now: float) -> None:
        """A load finished: the copy serves, its waiters are served (cold)."""
        cluster = self.cluster
        cluster.finish(load)
        self.adding.discard(load.model)
        pod = cluster.pods[load.pod]
        if load.waiters:
            self._serve_late(pod, load.model, load.waiters, now)
        if pod.waiting:
            cluster.retry_waiting(pod, now)

    def _serve_late(self, pod: Pod, m: str, waiters: list[tuple[int, bool]], now: float) -> None:
        """Requests that waited for a load are served at ``now`` (cold)."""
        pod.lru.touch(m, int(now))
        tms, codes, wait = self.tms, self.codes, self.wait_ms
        for i, forwarded in waiters:
            codes[i] = COLD_FORWARDED if forwarded else COLD_LOCAL
            wait[i] = now - tms[i]
            if self.mesh.concurrency:
                self._acquire(pod, m, now + self.inference[i])
        if self.copy_scaling:
            pod.uses[m] = pod.uses.get(m, 0) + len(waiters)

    # ----------------------------------------------------------------- events

    def _schedule_periodic(self) -> None:
        if self.copy_scaling or self.min_copies:
            self.events.push(self.policy.interval_s * 1000.0, Event.COPY_TICK)
        self.events.push(0.0, Event.SAMPLE)

    def _run_events(self, until: float) -> float:
        """Process every event at or before ``until``; return the next event time."""
        events = self.events
        heap = events.heap
        pop = heapq.heappop
        release = Event.RELEASE
        while heap and heap[0][0] <= until:
            now, _, kind, payload = pop(heap)
            if kind is release:  # the most frequent kind in concurrency mode: first
                pod, lru, model = payload
                if pod.lru is lru and model in lru:
                    lru.release(model)
                    pod.inflight -= 1
                    if pod.waiting and lru.is_evictable(model):
                        self.cluster.retry_waiting(pod, now)
            elif kind is Event.LOAD_DONE:
                if not payload.done:
                    self._land(payload, now)
            elif kind is Event.WAIT_TIMEOUT:
                if not payload.done and payload.queued:
                    self.cluster.fail(payload, now, "no space freed within capacity_wait_s")
            elif kind is Event.COPY_TICK:
                self._copy_round(now)
                if now + self.policy.interval_s * 1000.0 <= self.end_ms:
                    events.push(now + self.policy.interval_s * 1000.0, Event.COPY_TICK)
            elif kind is Event.SAMPLE:
                self._sample(now)
                step = self.scenario.report.sample_interval_s * 1000.0
                if now < self.end_ms:
                    events.push(min(now + step, self.end_ms), Event.SAMPLE)
            elif kind is Event.POD_FAIL:
                self._pod_fails(now, *payload)
            elif kind is Event.POD_RECOVER:
                self._pod_recovers(payload)
        return heap[0][0] if heap else INF

    # ------------------------------------------------------------ copy scaling

    def _copy_round(self, now: float) -> None:
        """Every alive pod runs the sidecar's copy-scaling round; the leader tops up."""
        cluster = self.cluster
        pods = cluster.pods
        elapsed_s = self.policy.interval_s
        if self.copy_scaling:
            extra: dict[int, list[str]] = {}
            for m in sorted(cluster.multi) + list(self.min_copies):  # sorted: set order varies per process
                for q in cluster.loaded[m]:
                    extra.setdefault(q, []).append(m)
            for pod in pods:
                if not pod.alive:
                    continue
                uses = dict(pod.uses)
                pod.uses.clear()  # cleared in place: the hot loop holds a reference
                candidates = dict.fromkeys(uses)
                candidates.update(dict.fromkeys(extra.get(pod.index, ())))
                if self.mesh.concurrency and pod.inflight:
                    candidates.update(dict.fromkeys(e.model_id for e in pod.lru.entries() if e.in_flight))
                for m in candidates:
                    self._decide(pod, m, uses.get(m, 0), elapsed_s, now)
        leader = self._any_alive()
        for m, wanted in self.min_copies.items():  # the leader tops up models below min_copies
            holders = cluster.loaded[m]
            if len(holders) < wanted:
                self._add_copy(m, holders, leader, now)

    def _decide(self, pod: Pod, m: str, uses: int, elapsed_s: float, now: float) -> None:
        cluster = self.cluster
        holders = cluster.loaded[m]
        if pod.index not in holders:
            return  # loading, or gone since it was used
        min_copies = self.min_copies.get(m, 0)
        entry = pod.lru.entry(m) if self.mesh.concurrency else None  # else nothing is ever in flight
        if not may_act(len(holders), min_copies=min_copies, uses=uses, elapsed_s=elapsed_s,
                       in_flight=entry.in_flight if entry else 0, policy=self.policy):
            return  # decide_copy would say KEEP, unpinned
        ids = sorted(cluster.pods[q].pod_id for q in holders)
        entry = entry or pod.lru.entry(m)
        decision = decide_copy(
            pod.pod_id, ids, min_copies=min_copies, uses=uses, elapsed_s=elapsed_s,
            in_flight=entry.in_flight, last_used_ms=entry.last_used_ms, now_ms=int(now), policy=self.policy,
        )
        if entry.pinned != decision.pin:
            pod.lru.pin(m, decision.pin)
            if not decision.pin and pod.waiting:
                cluster.retry_waiting(pod, now)
        if decision.action is CopyAction.ADD:
            self._add_copy(m, holders, pod.index, now)
        elif decision.action is CopyAction.DROP:
            cluster.drop(pod, m)
            if pod.waiting:
                cluster.retry_waiting(pod, now)

    def _add_copy(self, m: str, holders: list[int], receiving: int, now: float) -> None:
        """``CopyScaler.add_copy``: one more copy elsewhere, another zone first; one at a time per model."""
        if m in self.adding or receiving < 0:
            return
        cluster = self.cluster
        pods = cluster.pods
        zones = {pods[q].zone for q in holders if pods[q].zone}
        exclude = {pods[q].pod_id for q in holders}
        target = cluster.target(m, receiving, now, exclude, prefer_zones_other_than=zones)
        if target is None or m in pods[target].loading:
            return
        self.adding.add(m)
        self.copy_adds += 1
        cluster.start_load(m, target, now, [], demand=False)

    def _any_alive(self) -> int:
        return next((pod.index for pod in self.cluster.pods if pod.alive), -1)

    # ---------------------------------------------------------------- failures

    def _pod_fails(self, now: float, index: int, recover_after_s: float | None) -> None:
        cluster = self.cluster
        pod = cluster.pods[index]
        if not pod.alive:
            return
        lost = cluster.kill(pod)
        self._reroute()
        self._version += 1
        if recover_after_s is not None:
            self.events.push(now + recover_after_s * 1000.0, Event.POD_RECOVER, index)
        for load in lost:  # their waiting requests are placed again, from a live pod
            self.adding.discard(load.model)
            for i, _ in load.waiters:
                self._miss(i, load.model, self.redirect[self.recv[i]], now)

    def _pod_recovers(self, index: int) -> None:
        self.cluster.revive(self.cluster.pods[index])
        self._reroute()
        self._version += 1

    def _reroute(self) -> None:
        alive = [pod.index for pod in self.cluster.pods if pod.alive]
        for k in range(len(self.redirect)):
            self.redirect[k] = k if self.cluster.pods[k].alive else (alive[k % len(alive)] if alive else -1)

    # ----------------------------------------------------------------- output

    def _sample(self, now: float) -> None:
        cluster = self.cluster
        used = [pod.lru.used_bytes if pod.alive else 0 for pod in cluster.pods]
        self.samples.append((now / 1000.0, used, cluster.copies(), len(cluster.multi)))

    def _result(self) -> SimResult:
        cluster = self.cluster
        if UNRESOLVED in self.codes:
            raise AssertionError(f"simulator bug: {self.codes.count(UNRESOLVED)} request(s) never answered")
        memory = np.array([pod.memory for pod in cluster.pods], dtype=np.int64)
        times = np.array([s[0] for s in self.samples])
        used = np.array([s[1] for s in self.samples], dtype=np.int64).reshape(len(self.samples), len(memory))
        fraction = float((used / memory).max()) if used.size else 0.0
        return SimResult(
            pod_ids=[pod.pod_id for pod in cluster.pods],
            pod_memory=memory,
            duration_s=self.workload.duration_s,
            codes=np.frombuffer(bytes(self.codes), dtype=np.uint8),
            wait_ms=self.wait_ms,
            inference_ms=self.inference,
            hop_ms=self.mesh.hop_ms,
            loads=cluster.loads,
            demand_loads=cluster.demand_loads,
            evictions=cluster.evictions,
            copy_adds=self.copy_adds,
            copy_drops=cluster.drops,
            failed_loads=cluster.failed_loads,
            sample_times_s=times,
            used_bytes=used,
            copies=np.array([s[2] for s in self.samples], dtype=np.int64),
            multi_copy_models=np.array([s[3] for s in self.samples], dtype=np.int64),
            per_pod={pod.pod_id: {"loads": pod.loads, "evictions": pod.evictions} for pod in cluster.pods},
            max_used_fraction=fraction,
        )


def simulate(scenario: Scenario, workload: Workload, progress: Progress | None = None,
             receiving: Sequence[int] | None = None) -> SimResult:
    """Run ``scenario`` on ``workload`` (the engine's one entry point)."""
    return Engine(scenario, workload, receiving).run(progress)

