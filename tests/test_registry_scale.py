"""10,000 registrations through 3 sidecars at once, overlapping and
conflicting, while copy-state writes hit the same records: every model
present once, first writer's definition kept, every view equal to etcd."""

from __future__ import annotations

import asyncio
import threading
from collections import Counter

import grpc

from mesh.store import RegistryStore
from protos import model_mesh_pb2 as mm
from protos import mmesh_ext_pb2 as ext
from protos import mmesh_ext_pb2_grpc as ext_grpc
from tests.helpers import wait_for

TOTAL = 10_000
BATCH = 500


def request(model_id: str, path: str) -> mm.RegisterModelRequest:
    return mm.RegisterModelRequest(modelId=model_id, modelInfo=mm.ModelInfo(type="onnx", path=path))


def test_ten_thousand_registrations_from_three_sidecars(start_sidecar, loop_thread, etcd):
    sidecars = [start_sidecar() for _ in range(3)]
    # each sidecar registers 4,000 ids: 0-3999, 3000-6999, 6000-9999 overlap by 1,000
    # with the same definition; and every sidecar also tries ids 9000-9099 with a
    # path of its own: exactly one definition may win each of those.
    plans = []
    for k in range(3):
        ids = range(k * 3000, k * 3000 + 4000) if k < 2 else range(6000, 10_000)
        plans.append([request(f"m{i:05d}", "/models/shared") for i in ids if not 9000 <= i < 9100]
                     + [request(f"m{i:05d}", f"/models/from-{k}") for i in range(9000, 9100)])
    results: list[list[ext.RegisterModelsResponse.Result]] = [[] for _ in range(3)]

    def register_all(k: int) -> None:
        stub = ext_grpc.ModelMeshExtensionsStub(grpc.insecure_channel(sidecars[k].address))
        for start in range(0, len(plans[k]), BATCH):
            response = stub.registerModels(ext.RegisterModelsRequest(models=plans[k][start : start + BATCH]), timeout=120)
            results[k].extend(response.results)

    # conflicting writers: copy-state updates on records being registered
    async def churn() -> int:
        store = sidecars[0].store
        done = 0
        for i in range(0, TOTAL, 50):
            stored = await store.update(f"m{i:05d}", lambda rec: _with_failure(rec, i))
            done += stored is not None
        return done

    threads = [threading.Thread(target=register_all, args=(k,)) for k in range(3)]
    for t in threads:
        t.start()
    churned = loop_thread.run(churn(), timeout=120)
    for t in threads:
        t.join(180)

    codes = Counter(r.code for rs in results for r in rs)
    assert set(codes) <= {"OK", "ALREADY_EXISTS"}
    # 100 contested ids, 3 tries each: one winner, two ALREADY_EXISTS
    assert codes["ALREADY_EXISTS"] == 200, codes

    async def read_etcd():
        store = RegistryStore(etcd.endpoint, sidecars[0].store.prefix)
        try:
            return await store.list()
        finally:
            await store.close()

    records, _ = asyncio.run(read_etcd())
    by_id = {r.model_id: r for r in records}
    assert len(records) == TOTAL and set(by_id) == {f"m{i:05d}" for i in range(TOTAL)}
    for i in range(TOTAL):
        record = by_id[f"m{i:05d}"]
        if 9000 <= i < 9100:
            winner = [k for k in range(3) for r in results[k] if r.modelId == record.model_id and r.code == "OK"]
            assert len(winner) == 1 and record.path == f"/models/from-{winner[0]}"
        else:
            assert record.path == "/models/shared"
    # churn writes landed next to the registrations, none lost
    assert sum(1 for r in records if "churn" in r.failures) == churned > 0
    # every view converges on etcd, revision for revision
    revisions = {r.model_id: r.mod_revision for r in records}
    for s in sidecars:
        wait_for(lambda: {m: s.view.get(m).mod_revision if s.view.get(m) else 0 for m in revisions} == revisions,
                 30, f"view of {s.settings.instance_id}")
    # paging lists each model exactly once
    stub = ext_grpc.ModelMeshExtensionsStub(grpc.insecure_channel(sidecars[2].address))
    seen, token = [], ""
    while True:
        page = stub.listModels(ext.ListModelsRequest(pageToken=token, pageSize=1000), timeout=60)
        seen += [m.modelId for m in page.models]
        token = page.nextPageToken
        if not token:
            break
    assert len(seen) == TOTAL and len(set(seen)) == TOTAL and page.totalModels == TOTAL


def _with_failure(record, i: int):
    record.failures["churn"] = (i, "conflicting writer")
    return record
