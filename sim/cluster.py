"""The simulated pods: their caches, loads and evictions, and how they look to
placement — carried out exactly as ``mesh/loader.py`` carries them out.

The decisions are never made here.  Each pod has one ``SizeAwareLRU``, used
the way the loader uses it (``plan`` until FITS, evicting the plan's victims;
``add(loading=True)``; ``mark_loaded`` when the load lands; ``touch`` on use;
``acquire``/``release`` around in-flight requests in concurrency mode;
``pin`` from the copy decision), and targets come from
``choose_load_target`` over ``InstanceState`` snapshots built the way the
router builds them (the receiving pod live, peers as last published).

Simplifications (documented in docs and the report):

* unloads are instant (the loader waits for the runtime's unload before
  re-planning; its duration is not modelled);
* the measured size equals the predicted size (no ``resize``);
* a load that must WAIT for space (everything held by loading, in-flight or
  pinned models) waits up to ``capacity_wait_s`` for space, then fails its
  waiting requests (the router would try one more instance first);
* peers' instance records are republished at most every
  ``publish_interval_s`` after a change (the publisher's coalescing) and every
  ``view_refresh_s`` otherwise; etcd and watch latency are not modelled.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection

from placement import Admission, InstanceState, SizeAwareLRU, choose_load_target
from sim.events import Event, EventQueue
from sim.scenario import MeshConfig, PodSpec, Runtime
from sim.workload import Population

__all__ = ["Cluster", "Load", "Pod"]


class Load:
    """One model loading on one pod, with the requests waiting for it."""

    __slots__ = ("model", "pod", "finish_ms", "waiters", "demand", "done", "queued")

    def __init__(self, model: str, pod: int, demand: bool) -> None:
        self.model = model
        self.pod = pod
        self.finish_ms = math.inf
        self.waiters: list[tuple[int, bool]] = []  # (request index, forwarded)
        self.demand = demand  # started by a request (a cold start), not by copy scaling
        self.done = False  # completed, failed or cancelled: later events ignore it
        self.queued = False  # waiting for space (Admission.WAIT)


class Pod:
    __slots__ = (
        "index", "pod_id", "memory", "zone", "labels", "alive", "lru", "loading", "waiting",
        "slots", "uses", "inflight", "view", "view_at", "changed", "loads", "evictions",
    )

    def __init__(self, index: int, spec: PodSpec, loading_slots: int) -> None:
        self.index = index
        self.pod_id = spec.pod_id
        self.memory = spec.memory
        self.zone = spec.zone
        self.labels = spec.labels
        self.alive = True
        self.lru = SizeAwareLRU(spec.memory)
        self.loading: dict[str, Load] = {}  # model → its load here (the loader's LOADING copies)
        self.waiting: list[Load] = []  # loads waiting for space, oldest first
        self.slots = [0.0] * loading_slots  # when each loading slot frees up (the loader's semaphore)
        self.uses: dict[str, int] = {}  # requests per model since the last copy-scaling round
        self.inflight = 0
        self.view: InstanceState | None = None  # the instance record as last published
        self.view_at = -math.inf  # when it was published
        self.changed = True  # state changed since (the publisher's dirty flag)
        self.loads = 0
        self.evictions = 0

    def reset(self) -> None:
        """A restarted pod: empty cache, nothing loading."""
        self.lru = SizeAwareLRU(self.memory)
        self.loading = {}
        self.waiting = []
        self.slots = [0.0] * len(self.slots)
        self.uses = {}
        self.inflight = 0
        self.view = None
        self.changed = True


class Cluster:
    """Pods, which copies exist where, and the load/evict life cycle."""

    def __init__(
        self,
        specs: list[PodSpec],
        population: Population,
        mesh: MeshConfig,
        runtime_for: Callable[[str], Runtime],
        events: EventQueue,
        on_load_failed: Callable[[Load, float, str], None],
    ) -> None:
        self.pods = [Pod(i, spec, mesh.max_loading_concurrency) for i, spec in enumerate(specs)]
        self.index_of = {pod.pod_id: pod.index for pod in self.pods}
        self.events = events
        self.on_load_failed = on_load_failed
        self.capacity_wait_ms = mesh.capacity_wait_s * 1000.0
        self.publish_ms = mesh.publish_interval_s * 1000.0
        self.refresh_ms = mesh.view_refresh_s * 1000.0
        self.size: dict[str, int] = {}
        self.load_ms: dict[str, float] = {}
        self.required: dict[str, frozenset[str]] = {}
        constraints = {t: frozenset(labels) for t, labels in mesh.type_constraints.items()}
        for model, size, model_type in zip(population.ids, population.sizes.tolist(), population.types):
            runtime = runtime_for(model_type)
            self.size[model] = size
            self.load_ms[model] = runtime.load_fixed_ms + size * 1000.0 / runtime.bandwidth
            self.required[model] = constraints.get(model_type, constraints.get("_default", frozenset()))
        # model → pods with a loaded copy; every model has a (usually empty) list
        self.loaded: dict[str, list[int]] = {m: [] for m in population.ids}
        # model → {pod: load} for copies being loaded
        self.loading: dict[str, dict[int, Load]] = {}
        self.multi: set[str] = set()  # models with >= 2 loaded copies
        self.loads = 0
        self.demand_loads = 0
        self.evictions = 0
        self.drops = 0
        self.failed_loads = 0

    # ------------------------------------------------------------- placement

    def states(self, receiving: int, now: float) -> list[InstanceState]:
        """What the router hands ``choose_load_target``: itself live, peers as
        published (a changed pod republishes at most every ``publish_interval_s``,
        an unchanged one every ``view_refresh_s`` for its drifting LRU age)."""
        out = []
        publish_ms, refresh_ms = self.publish_ms, self.refresh_ms
        for pod in self.pods:
            if not pod.alive:
                continue
            view = pod.view
            if pod.index == receiving:
                if view is None or pod.changed or view.lru_ms != pod.lru.lru_ms():
                    view = self._state(pod)  # live, not published
            elif view is None or now - pod.view_at >= (publish_ms if pod.changed else refresh_ms):
                view = pod.view = self._state(pod)
                pod.view_at = now
                pod.changed = False
            out.append(view)
        return out

    @staticmethod
    def _state(pod: Pod) -> InstanceState:
        lru = pod.lru
        return InstanceState(
            instance_id=pod.pod_id, capacity_bytes=lru.capacity_bytes, used_bytes=lru.used_bytes,
            lru_ms=lru.lru_ms(), model_count=len(lru), loading_count=len(pod.loading),
            zone=pod.zone, labels=pod.labels,
        )

    def target(self, model: str, receiving: int, now: float, exclude: Collection[str] = (),
               prefer_zones_other_than: Collection[str] = ()) -> int | None:
        """Where a new copy of ``model`` loads (``choose_load_target``), as a pod index."""
        chosen = choose_load_target(
            self.size[model], self.states(receiving, now), receiving_id=self.pods[receiving].pod_id,
            exclude=exclude, required_labels=self.required[model],
            prefer_zones_other_than=prefer_zones_other_than,
        )
        return None if chosen is None else self.index_of[chosen]

    # ------------------------------------------------------------ life cycle

    def start_load(self, model: str, pod_index: int, now: float, waiters: list[tuple[int, bool]], *, demand: bool) -> Load:
        """Begin loading ``model`` on a pod (the loader's ``ensure_loaded``: visible as
        LOADING at once, then make room, reserve, take a loading slot, load)."""
        pod = self.pods[pod_index]
        load = Load(model, pod_index, demand)
        load.waiters = waiters
        pod.loading[model] = load
        self.loading.setdefault(model, {})[pod_index] = load
        pod.changed = True
        self._admit(load, now)
        return load

    def _admit(self, load: Load, now: float) -> bool:
        """The loader's ``_make_room`` then ``lru.add``; False if it must wait or failed."""
        pod = self.pods[load.pod]
        lru = pod.lru
        size = self.size[load.model]
        while True:
            plan = lru.plan(size)
            admission = plan.admission
            if admission is Admission.FITS:
                break
            if admission is Admission.EVICT:
                for victim in plan.victims:
                    self.evict(pod, victim)
                continue
            if admission is Admission.NEVER or self.capacity_wait_ms <= 0:
                self.fail(load, now, plan.reason)
                return False
            if not load.queued:  # WAIT: for space to be freed, up to capacity_wait_s
                load.queued = True
                pod.waiting.append(load)
                self.events.push(now + self.capacity_wait_ms, Event.WAIT_TIMEOUT, load)
            return False
        if load.queued:
            load.queued = False
            pod.waiting.remove(load)
        lru.add(load.model, size, int(now), loading=True)
        slots = pod.slots
        k = slots.index(min(slots))
        start = max(now, slots[k])
        load.finish_ms = slots[k] = start + self.load_ms[load.model]
        self.events.push(load.finish_ms, Event.LOAD_DONE, load)
        pod.changed = True
        self.loads += 1
        pod.loads += 1
        if load.demand:
            self.demand_loads += 1
        return True

    def retry_waiting(self, pod: Pod, now: float) -> None:
        """Space may have been freed on ``pod``: waiting loads re-plan, first come
        first served (the loader's ``_space_freed`` wakes every waiter in order;
        whoever's plan is no longer WAIT goes).

        Only loads whose plan can have changed are re-planned: ``plan(n)`` is
        WAIT exactly when n > free + evictable bytes, so an overloaded pod's
        long queue costs a comparison per load, not a plan.
        """
        lru = pod.lru
        size = self.size

        def room() -> int:
            return min(lru.capacity_bytes, lru.capacity_bytes - lru.used_bytes + lru.evictable_bytes)

        limit = room()
        for load in list(pod.waiting):
            if not load.done and size[load.model] <= limit:
                self._admit(load, now)
                limit = room()

    def finish(self, load: Load) -> None:
        """The load landed: LOADED, evictable once idle (``mark_loaded``)."""
        pod = self.pods[load.pod]
        pod.lru.mark_loaded(load.model)
        load.done = True
        self._forget_load(load)
        holders = self.loaded[load.model]
        holders.append(load.pod)
        if len(holders) == 2:
            self.multi.add(load.model)
        pod.changed = True

    def fail(self, load: Load, now: float, reason: str) -> None:
        """A load that cannot happen: its reservation (if any) goes, its waiters fail."""
        pod = self.pods[load.pod]
        load.done = True
        if load.queued:
            load.queued = False
            pod.waiting.remove(load)
        elif load.model in pod.lru and pod.lru.entry(load.model).loading:
            pod.lru.remove(load.model)
        self._forget_load(load)
        self.failed_loads += 1
        pod.changed = True
        self.on_load_failed(load, now, reason)

    def _forget_load(self, load: Load) -> None:
        pod = self.pods[load.pod]
        if pod.loading.get(load.model) is load:
            del pod.loading[load.model]
        loads = self.loading.get(load.model)
        if loads is not None and loads.get(load.pod) is load:
            del loads[load.pod]
            if not loads:
                del self.loading[load.model]

    def evict(self, pod: Pod, model: str) -> None:
        """Carry out one victim of ``plan`` (the loader's ``evict`` → ``unload``)."""
        self._unload(pod, model)
        self.evictions += 1
        pod.evictions += 1

    def drop(self, pod: Pod, model: str) -> None:
        """An idle extra copy goes (the copy decision said DROP)."""
        self._unload(pod, model)
        self.drops += 1

    def _unload(self, pod: Pod, model: str) -> None:
        pod.lru.remove(model)
        holders = self.loaded[model]
        holders.remove(pod.index)
        if len(holders) == 1:
            self.multi.discard(model)
        pod.uses.pop(model, None)
        pod.changed = True

    def kill(self, pod: Pod) -> list[Load]:
        """The pod dies: its copies vanish; returns its unfinished loads (their
        waiters must be re-placed by the caller)."""
        pod.alive = False
        for entry in pod.lru.entries():
            if not entry.loading:
                holders = self.loaded[entry.model_id]
                holders.remove(pod.index)
                if len(holders) == 1:
                    self.multi.discard(entry.model_id)
        lost = list(pod.loading.values())
        for load in lost:
            load.done = True
            load.queued = False
            self._forget_load(load)
        pod.reset()
        return lost

    def revive(self, pod: Pod) -> None:
        pod.reset()
        pod.alive = True

    # --------------------------------------------------------------- queries

    def copies(self) -> int:
        return sum(len(h) for h in self.loaded.values())
