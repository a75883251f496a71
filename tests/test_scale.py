"""10,000 registrations from 3 sidecars at once, with conflicting updates:
all 10,000 present once, first writer's definition kept, no update lost,
every sidecar's view equal to etcd revision for revision.

Three client threads (one per sidecar) register through the bulk RPC
`mmesh.ModelMeshExtensions/registerModels` in batches of 500, each in its own
shuffled order, so the same ids are created concurrently through different
sidecars (and etcd clients):

- 7,500 ids: all three threads, the same definition → every attempt OK;
- 1,000 ids (i % 10 == 7): all three threads, a path of their own, and
  500 ids (i % 20 == 8): a storage key of their own → exactly one OK per id,
  whose definition etcd keeps; the other two get ALREADY_EXISTS naming it;
- 1,000 ids (i % 10 == 9): one thread only → OK.

Meanwhile a fourth thread writes to the same records: three writers (one per
sidecar's store, each starting from its own possibly stale view, as the copy
recorder does) increment `refs` on 750 records by compare-and-swap, racing
each other and the registrations; and five of the ids are real ONNX models
that it serves through the three sidecars, so loads publish copy states
(LOADING → LOADED) into records other threads are re-registering. A fifth
client pages `listModels` throughout and must always see ids in order and
once each.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections import Counter, defaultdict

import grpc
import numpy as np
import tritonclient.grpc as triton

from mesh.copy_recorder import CopyState
from mesh.store import RegistryStore
from protos import model_mesh_pb2 as mm
from protos import mmesh_ext_pb2 as ext
from protos import mmesh_ext_pb2_grpc as ext_grpc
from tests.helpers import wait_for

TOTAL = 10_000
BATCH = 500
THREADS = 3
REAL = {f"m{i:05d}": i // 2000 for i in (10, 2010, 4010, 6010, 8010)}  # id -> dense-k (same-definition ids)
BUMP_TARGETS = [f"m{i:05d}" for i in range(TOTAL) if i % 20 == 0 or i % 40 == 7]
BUMPS_PER_WRITER = 2


def model_id(i: int) -> str:
    return f"m{i:05d}"


def kind(i: int) -> str:
    if i % 10 == 7:
        return "path-conflict"
    if i % 20 == 8:
        return "key-conflict"
    if i % 10 == 9:
        return "single"
    return "shared"


def definition(i: int, k: int, models_dir) -> tuple[str, str] | None:
    """(path, key) thread k registers for id i, None when it does not."""
    mid = model_id(i)
    match kind(i):
        case "path-conflict":
            return f"/models/{mid}/from-{k}", ""
        case "key-conflict":
            return f"/models/{mid}", f"key-{k}"
        case "single":
            return (f"/models/{mid}", "") if (i // 10) % THREADS == k else None
        case _:
            return (str(models_dir / f"dense-{REAL[mid]}"), "") if mid in REAL else (f"/models/{mid}", "")


def _bump(record):
    record.refs += 1
    return record


def test_ten_thousand_conflicting_registrations_from_three_sidecars(start_sidecar, loop_thread, etcd, models_dir):
    started = time.monotonic()
    sidecars = [start_sidecar() for _ in range(THREADS)]
    wait_for(lambda: all(len(s.instances) == THREADS for s in sidecars), 10, "sidecars to see each other")
    prefix = sidecars[0].store.prefix
    assert all(s.store.prefix == prefix for s in sidecars)

    plans: list[list[mm.RegisterModelRequest]] = []
    for k in range(THREADS):
        plan = [
            mm.RegisterModelRequest(modelId=model_id(i), modelInfo=mm.ModelInfo(type="onnx", path=d[0], key=d[1]))
            for i in range(TOTAL)
            if (d := definition(i, k, models_dir)) is not None
        ]
        random.Random(k).shuffle(plan)
        plans.append(plan)
    results: list[list[ext.RegisterModelsResponse.Result]] = [[] for _ in range(THREADS)]
    errors: list[BaseException] = []
    registering = threading.Barrier(THREADS + 1)

    def register_all(k: int) -> None:
        try:
            with grpc.insecure_channel(sidecars[k].address) as channel:
                stub = ext_grpc.ModelMeshExtensionsStub(channel)
                registering.wait(10)
                for start in range(0, len(plans[k]), BATCH):
                    batch = plans[k][start : start + BATCH]
                    response = stub.registerModels(ext.RegisterModelsRequest(models=batch), timeout=120)
                    # one result per model, in request order
                    assert [r.modelId for r in response.results] == [m.modelId for m in batch]
                    results[k].extend(response.results)
                    if start == 0:
                        # let the conflicting writer land a bump before registration
                        # races on: overlap is then certain, not a matter of timing
                        first_bump.wait(30)
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    # ---- the conflicting writer (fourth thread) ------------------------------
    bumps: dict[str, int] = Counter()  # successful increments per id, all writers
    served: dict[str, set[int]] = defaultdict(set)  # real model -> sidecars that answered
    registration_done = threading.Event()
    overlapped = [0]  # increments committed while registrations were still running
    first_bump = threading.Event()

    async def bump_round(pending: list[tuple[int, str]]) -> list[tuple[int, str]]:
        async def one(w: int, mid: str) -> bool:
            s = sidecars[w]
            stored = await s.store.update(mid, _bump, current=s.view.get(mid))
            if stored is None:
                return False
            s.view.apply(stored)  # read-your-writes, racing the watch (as the copy recorder does)
            return True

        done = await asyncio.gather(*(one(w, mid) for w, mid in pending))
        during = not registration_done.is_set()
        for (w, mid), ok in zip(pending, done):
            bumps[mid] += ok
            overlapped[0] += ok and during
        if overlapped[0]:
            first_bump.set()
        return [p for p, ok in zip(pending, done) if not ok]  # not registered yet: again later

    def conflicting_writer() -> None:
        try:
            clients = [triton.InferenceServerClient(s.address) for s in sidecars]
            x = triton.InferInput("x", [1, 64], "FP32")
            x.set_data_from_numpy(np.linspace(-1, 1, 64, dtype=np.float32).reshape(1, 64))
            todo = [(w, mid) for _ in range(BUMPS_PER_WRITER) for mid in BUMP_TARGETS for w in range(THREADS)]
            deadline = time.monotonic() + 90
            while todo or any(len(served[m]) < THREADS for m in REAL):
                assert time.monotonic() < deadline, f"conflicting writer stuck: {len(todo)} bumps left"
                # each round: at most one bump per (writer, id), all writers at once
                seen: set[tuple[int, str]] = set()
                now, later = [], []
                for p in todo:
                    (later if p in seen else now).append(p)
                    seen.add(p)
                todo = loop_thread.run(bump_round(now), timeout=60) + later
                for mid in REAL:
                    for w in range(THREADS):
                        if w in served[mid]:
                            continue
                        try:
                            clients[w].infer(mid, [x])
                            served[mid].add(w)
                        except triton.InferenceServerException as exc:
                            assert "NOT_FOUND" in str(exc.status()) or "not registered" in str(exc), exc
                if not now and not registration_done.is_set():
                    time.sleep(0.02)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=register_all, args=(k,), name=f"register-{k}") for k in range(THREADS)]
    threads.append(threading.Thread(target=conflicting_writer, name="conflicting-writer"))
    for t in threads:
        t.start()
    registering.wait(10)

    # ---- a fifth client pages listModels while all that runs ----------------------
    passes = 0
    with grpc.insecure_channel(sidecars[1].address) as channel:
        lister = ext_grpc.ModelMeshExtensionsStub(channel)
        while any(t.is_alive() for t in threads[:THREADS]):
            token, ids = "", []
            while True:
                page = lister.listModels(ext.ListModelsRequest(pageToken=token, pageSize=2000), timeout=30)
                ids += [m.modelId for m in page.models]
                token = page.nextPageToken
                if not token:
                    break
            assert all(a < b for a, b in zip(ids, ids[1:])), "a listing under concurrent registration repeated or reordered ids"
            passes += 1
            time.sleep(0.05)
    for t in threads[:THREADS]:
        t.join(120)
    registration_done.set()
    threads[THREADS].join(120)
    assert not any(t.is_alive() for t in threads), "a client thread did not finish"
    assert not errors, errors
    registered_s = time.monotonic() - started

    # ---- per-id results of the bulk RPC ------------------------------------------------
    by_id: dict[str, list[tuple[int, ext.RegisterModelsResponse.Result]]] = defaultdict(list)
    for k in range(THREADS):
        assert len(results[k]) == len(plans[k])
        for r in results[k]:
            by_id[r.modelId].append((k, r))
    assert len(by_id) == TOTAL
    codes = Counter(r.code for rs in results for r in rs)
    assert set(codes) == {"OK", "ALREADY_EXISTS"}, codes
    winners: dict[str, int] = {}
    for i in range(TOTAL):
        mid, got = model_id(i), by_id[model_id(i)]
        attempts = [k for k in range(THREADS) if definition(i, k, models_dir) is not None]
        assert sorted(k for k, _ in got) == attempts, mid  # exactly one result per attempt
        ok = [k for k, r in got if r.code == "OK"]
        if kind(i) in ("path-conflict", "key-conflict"):
            assert len(ok) == 1, (mid, [(k, r.code) for k, r in got])  # one winner, two ALREADY_EXISTS
            winners[mid] = ok[0]
            path, key = definition(i, ok[0], models_dir)
            for k, r in got:
                if k != ok[0]:
                    assert r.code == "ALREADY_EXISTS" and f"path={path!r}" in r.message and f"key={key!r}" in r.message, r
        else:
            assert ok == attempts, (mid, [(k, r.code, r.message) for k, r in got])  # same definition: all OK
    assert codes["ALREADY_EXISTS"] == 2 * 1500

    # ---- etcd holds exactly the expected records -----------------------------------------
    for s in sidecars:
        loop_thread.run(s.recorder.flush(timeout_s=20), timeout=30)

    async def read_etcd():
        store = RegistryStore(etcd.endpoint, prefix)
        try:
            return await store.list()
        finally:
            await store.close()

    records, _ = asyncio.run(read_etcd())
    stored = {r.model_id: r for r in records}
    assert len(records) == TOTAL and set(stored) == {model_id(i) for i in range(TOTAL)}
    for i in range(TOTAL):
        mid = model_id(i)
        record = stored[mid]
        want = definition(i, winners.get(mid, (i // 10) % THREADS if kind(i) == "single" else 0), models_dir)
        assert (record.type, record.path, record.key) == ("onnx", *want), mid
        # no increment lost to a concurrent registration, load or other writer
        assert record.refs == bumps.get(mid, 0), (mid, record.refs, bumps.get(mid, 0))
    assert all(bumps[mid] == THREADS * BUMPS_PER_WRITER for mid in BUMP_TARGETS)
    # the real models: every sidecar answered, and the records list exactly the copies that exist
    for mid in REAL:
        assert served[mid] == set(range(THREADS))
        loaded = {
            s.settings.instance_id for s in sidecars
            if (c := s.loader.copies.get(mid)) is not None and c.state is CopyState.LOADED
        }
        assert loaded and set(stored[mid].instances) == loaded and not stored[mid].loading, (mid, stored[mid], loaded)

    # ---- every view converges on etcd, revision for revision ---------------------------------
    want_view = {m: (r.mod_revision, r.path, r.key, r.refs, tuple(sorted(r.instances))) for m, r in stored.items()}

    async def snapshot(s):  # on the sidecars' loop: the watch mutates the view there
        return {r.model_id: (r.mod_revision, r.path, r.key, r.refs, tuple(sorted(r.instances))) for r in s.view.records()}

    def view_of(s):
        return loop_thread.run(snapshot(s), timeout=30)

    for s in sidecars:
        wait_for(lambda: view_of(s) == want_view, 30, f"view of {s.settings.instance_id} to equal etcd")

    # ---- listModels pages through each sidecar: every id exactly once, as etcd has it ----------
    for s in sidecars:
        with grpc.insecure_channel(s.address) as channel:
            stub = ext_grpc.ModelMeshExtensionsStub(channel)
            seen: list[str] = []
            token = ""
            while True:
                page = stub.listModels(ext.ListModelsRequest(pageToken=token, pageSize=1000), timeout=30)
                assert page.totalModels == TOTAL
                for m in page.models:
                    record = stored[m.modelId]
                    assert (m.modelInfo.path, m.modelInfo.key) == (record.path, record.key)
                seen += [m.modelId for m in page.models]
                token = page.nextPageToken
                if not token:
                    break
            assert seen == sorted(stored), "listModels missed, repeated or reordered ids"
    assert passes >= 1 and overlapped[0] > 0
    elapsed = time.monotonic() - started
    print(
        f"\n{sum(codes.values()):,} registration attempts ({codes['OK']:,} OK, {codes['ALREADY_EXISTS']:,} ALREADY_EXISTS) "
        f"and {sum(bumps.values()):,} conflicting updates ({overlapped[0]:,} while registering) in {registered_s:.1f} s; "
        f"{passes} concurrent listings; all checks in {elapsed:.1f} s"
    )
