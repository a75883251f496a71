"""The registry against a real etcd: record encoding, create / CAS update /
delete / list in RegistryStore, the watch-fed RegistryView (ordering,
tombstones, resync after compaction) and the CopyRecorder.

Every test uses its own key prefix on the session's etcd, so tests never see
each other's records.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from mesh.copy_recorder import CopyRecorder, CopyState, DesiredCopy, apply_copy
from mesh.etcd_process import EtcdProcess
from mesh.records import ModelRecord
from mesh.store import RegistryStore
from mesh.views import RegistryView

WAIT_S = 5.0

StoreFactory = Callable[[], Awaitable[RegistryStore]]
ViewFactory = Callable[[RegistryStore], Awaitable[RegistryView]]


# ---- fixtures -----------------------------------------------------------------


@pytest.fixture
def prefix() -> str:
    return f"test-registry-{uuid.uuid4().hex[:10]}"


@pytest.fixture
async def new_store(etcd: EtcdProcess, prefix: str) -> AsyncIterator[StoreFactory]:
    """new_store() -> a connected RegistryStore on this test's prefix (each call
    a separate etcd client); all closed at teardown."""
    stores: list[RegistryStore] = []

    async def make() -> RegistryStore:
        store = RegistryStore(etcd.endpoint, prefix)
        stores.append(store)
        await store.connect()
        return store

    try:
        yield make
    finally:
        for store in reversed(stores):
            try:
                await store.close()
            except Exception:
                pass


@pytest.fixture
async def store(new_store: StoreFactory) -> RegistryStore:
    return await new_store()


@pytest.fixture
async def new_view() -> AsyncIterator[ViewFactory]:
    """new_view(store) -> a started RegistryView; all stopped at teardown."""
    views: list[RegistryView] = []

    async def make(store: RegistryStore) -> RegistryView:
        view = RegistryView(store)
        views.append(view)
        await view.start()
        return view

    try:
        yield make
    finally:
        for view in views:
            await view.stop()


async def wait_for(predicate: Callable[[], bool], what: str, timeout_s: float = WAIT_S) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not predicate():
        if loop.time() >= deadline:
            pytest.fail(f"timed out after {timeout_s}s waiting for {what}")
        await asyncio.sleep(0.01)


def rec(model_id: str, **kw: object) -> ModelRecord:
    kw.setdefault("type", "onnx")
    return ModelRecord(model_id=model_id, **kw)  # type: ignore[arg-type]


def add_instance(name: str, at: int) -> Callable[[ModelRecord], ModelRecord]:
    def mutate(record: ModelRecord) -> ModelRecord:
        record.instances[name] = at
        return record

    return mutate


async def current_revision(store: RegistryStore) -> int:
    _, revision = await store.list()
    return revision


# ---- ModelRecord ----------------------------------------------------------------


def test_record_json_round_trip_keeps_every_field() -> None:
    original = ModelRecord(
        model_id="m/1",
        type="onnx",
        path="s3://bucket/m1",
        key="k",
        size_bytes=12345,
        instances={"a": 10, "b": 11},
        loading={"c": 12},
        failures={"d": (13, "boom: out of memory"), "e": (14, "unicode ✓")},
        last_used_ms=99,
        refs=3,
        mod_revision=777,
    )
    data = original.to_json()
    back = ModelRecord.from_json("m/1", data, mod_revision=777)
    assert back == original
    assert back.failures["d"] == (13, "boom: out of memory")
    assert isinstance(back.failures["d"], tuple)
    # mod_revision belongs to etcd, not to the stored value
    assert b"777" not in data
    assert ModelRecord.from_json("m/1", data).mod_revision == 0


def test_record_json_is_compact() -> None:
    bare = rec("m", mod_revision=5)
    assert json.loads(bare.to_json()) == {"t": "onnx"}
    assert bare.to_json() == b'{"t":"onnx"}'  # no spaces
    back = ModelRecord.from_json("m", bare.to_json())
    assert back.instances == {} and back.loading == {} and back.failures == {}
    assert (back.path, back.key, back.size_bytes, back.last_used_ms, back.refs) == ("", "", 0, 0, 0)

    some = rec("m", path="p", instances={"x": 1}, failures={"y": (2, "e")})
    assert json.loads(some.to_json()) == {"t": "onnx", "p": "p", "i": {"x": 1}, "f": {"y": [2, "e"]}}


def test_same_definition_and_copy() -> None:
    a = rec("m", path="p", key="k", instances={"x": 1}, size_bytes=9)
    assert a.same_definition(rec("m", path="p", key="k"))  # copy state does not matter
    assert not a.same_definition(rec("m", type="pytorch", path="p", key="k"))
    assert not a.same_definition(rec("m", path="q", key="k"))
    assert not a.same_definition(rec("m", path="p", key="other"))

    b = a.copy()
    b.instances["y"] = 2
    b.loading["z"] = 3
    b.failures["w"] = (4, "x")
    assert a.instances == {"x": 1} and a.loading == {} and a.failures == {}


# ---- RegistryStore ------------------------------------------------------------------


async def test_create_is_first_writer_wins(store: RegistryStore) -> None:
    created, stored = await store.create(rec("m1", path="first", key="k1"))
    assert created is True
    assert stored.mod_revision > 0
    assert stored.path == "first"

    created2, stored2 = await store.create(rec("m1", type="pytorch", path="second"))
    assert created2 is False
    assert (stored2.type, stored2.path, stored2.key) == ("onnx", "first", "k1")
    assert stored2.mod_revision == stored.mod_revision

    got = await store.get("m1")
    assert got is not None
    assert (got.type, got.path, got.key, got.mod_revision) == ("onnx", "first", "k1", stored.mod_revision)
    assert await store.get("missing") is None


async def test_cas_update_never_loses_a_write(new_store: StoreFactory) -> None:
    writers = [await new_store() for _ in range(3)]
    per_writer = 50
    created, _ = await writers[0].create(rec("hot"))
    assert created

    async def write(w: int, store: RegistryStore) -> None:
        for i in range(per_writer):
            stored = await store.update("hot", add_instance(f"w{w}-{i}", i))
            assert stored is not None
            assert stored.instances[f"w{w}-{i}"] == i

    await asyncio.wait_for(asyncio.gather(*(write(w, s) for w, s in enumerate(writers))), 25)

    final = await writers[1].get("hot")
    assert final is not None
    expected = {f"w{w}-{i}": i for w in range(len(writers)) for i in range(per_writer)}
    assert final.instances == expected


async def test_update_with_stale_current_rereads(new_store: StoreFactory) -> None:
    a, b = await new_store(), await new_store()
    _, first = await a.create(rec("m"))
    await b.update("m", add_instance("from-b", 1))
    # a still holds the old record; its CAS fails once and retries on the fresh one
    stored = await a.update("m", add_instance("from-a", 2), current=first)
    assert stored is not None
    assert stored.instances == {"from-b": 1, "from-a": 2}
    got = await a.get("m")
    assert got is not None and got.instances == {"from-b": 1, "from-a": 2}
    assert got.mod_revision == stored.mod_revision


async def test_update_missing_and_no_change(store: RegistryStore) -> None:
    calls: list[ModelRecord] = []

    def mutate(record: ModelRecord) -> ModelRecord:
        calls.append(record)
        return record

    assert await store.update("nope", mutate) is None
    assert calls == []

    _, stored = await store.create(rec("m", path="p"))
    result = await store.update("m", lambda r: None)
    assert result is not None and result.mod_revision == stored.mod_revision
    got = await store.get("m")
    assert got is not None and got.mod_revision == stored.mod_revision

    # deleted between the caller's read and its write: None, and nothing recreated
    await store.delete("m")
    assert await store.update("m", add_instance("x", 1), current=got) is None
    assert await store.get("m") is None


async def test_delete(store: RegistryStore) -> None:
    _, stored = await store.create(rec("m"))
    revision = await store.delete("m")
    assert revision is not None and revision > stored.mod_revision
    assert await store.get("m") is None
    assert await store.delete("m") is None
    assert await store.delete("never-existed") is None


async def test_list(store: RegistryStore, etcd: EtcdProcess) -> None:
    records, revision = await store.list()
    assert records == [] and revision > 0

    ids = [f"m{i}" for i in range(5)]
    for i, model_id in enumerate(ids):
        await store.create(rec(model_id, path=f"p{i}"))
    await store.update("m2", add_instance("x", 7))
    await store.delete("m4")

    records, revision = await store.list()
    by_id = {r.model_id: r for r in records}
    assert sorted(by_id) == ["m0", "m1", "m2", "m3"]
    assert by_id["m2"].instances == {"x": 7}
    assert by_id["m1"].path == "p1"
    assert all(r.mod_revision > 0 and revision >= r.mod_revision for r in records)
    assert revision == max(r.mod_revision for r in records) + 1  # the delete of m4 came last

    # another prefix is invisible, both ways
    other = RegistryStore(etcd.endpoint, store.prefix + "-other")
    try:
        await other.connect()
        await other.create(rec("m0", path="elsewhere"))
        other_records, _ = await other.list()
        assert [(r.model_id, r.path) for r in other_records] == [("m0", "elsewhere")]
    finally:
        await other.close()
    records, _ = await store.list()
    assert sorted(r.model_id for r in records) == ["m0", "m1", "m2", "m3"]
    assert {r.model_id: r.path for r in records}["m0"] == "p0"


# ---- RegistryView ---------------------------------------------------------------------


async def test_view_follows_other_clients(new_store: StoreFactory, new_view: ViewFactory) -> None:
    mine, theirs = await new_store(), await new_store()
    _, existing = await theirs.create(rec("existing", path="p0"))

    view = await new_view(mine)
    seen: list[tuple[str, ModelRecord | None]] = []
    view.add_listener(lambda model_id, record: seen.append((model_id, record)))
    assert view.synced.is_set()
    assert len(view) == 1
    got = view.get("existing")
    assert got is not None and got.path == "p0" and got.mod_revision == existing.mod_revision

    _, created = await theirs.create(rec("new", path="p1"))
    await wait_for(lambda: view.get("new") is not None, "the watch to bring a new record")
    assert view.get("new").mod_revision == created.mod_revision  # type: ignore[union-attr]
    assert seen[-1][0] == "new" and seen[-1][1] is not None and seen[-1][1].path == "p1"

    updated = await theirs.update("new", add_instance("i1", 5))
    assert updated is not None
    await wait_for(lambda: view.get("new").mod_revision == updated.mod_revision, "the update")  # type: ignore[union-attr]
    assert view.get("new").instances == {"i1": 5}  # type: ignore[union-attr]
    assert seen[-1] == ("new", view.get("new"))

    deleted_at = await theirs.delete("existing")
    assert deleted_at is not None
    await wait_for(lambda: view.get("existing") is None, "the deletion")
    assert seen[-1] == ("existing", None)
    await wait_for(lambda: view.revision >= deleted_at, "the view's revision to pass the delete")
    assert [r.model_id for r in view.records()] == ["new"]
    assert [m for m, _ in seen] == ["new", "new", "existing"]


async def test_listener_errors_do_not_stop_the_view(new_store: StoreFactory, new_view: ViewFactory) -> None:
    mine, theirs = await new_store(), await new_store()
    view = await new_view(mine)
    seen: list[str] = []

    def broken(model_id: str, record: ModelRecord | None) -> None:
        raise RuntimeError("listener bug")

    view.add_listener(broken)
    view.add_listener(lambda model_id, record: seen.append(model_id))
    await theirs.create(rec("a"))
    await theirs.create(rec("b"))
    await wait_for(lambda: view.get("b") is not None, "records despite a failing listener")
    assert view.get("a") is not None
    assert seen == ["a", "b"]


async def test_apply_keeps_the_newest(store: RegistryStore) -> None:
    view = RegistryView(store)  # not started: apply alone
    seen: list[tuple[str, ModelRecord | None]] = []
    view.add_listener(lambda m, r: seen.append((m, r)))

    newer = rec("m", path="new", mod_revision=20)
    view.apply(newer)
    view.apply(rec("m", path="old", mod_revision=10))
    view.apply(rec("m", path="same", mod_revision=20))
    assert view.get("m") is newer
    assert seen == [("m", newer)]

    newest = rec("m", path="newest", mod_revision=21)
    view.apply(newest)
    assert view.get("m") is newest
    assert seen == [("m", newer), ("m", newest)]


async def test_tombstones(store: RegistryStore) -> None:
    view = RegistryView(store)
    seen: list[tuple[str, ModelRecord | None]] = []
    view.add_listener(lambda m, r: seen.append((m, r)))

    view.apply(rec("m", mod_revision=10))
    view.apply_delete("m", 15)
    assert view.get("m") is None
    assert seen[-1] == ("m", None)

    # late puts from before (or at) the deletion: ignored
    view.apply(rec("m", mod_revision=12))
    view.apply(rec("m", mod_revision=15))
    assert view.get("m") is None
    assert len(seen) == 2

    # a delete older than the record in the view is ignored
    view.apply(rec("x", mod_revision=30))
    view.apply_delete("x", 25)
    assert view.get("x") is not None

    # re-registered after the deletion: taken
    again = rec("m", path="again", mod_revision=16)
    view.apply(again)
    assert view.get("m") is again
    assert seen[-1] == ("m", again)

    # tombstones go once the watch has passed them
    view.apply_delete("m", 40)
    view._advance(39)
    assert view._tombstones == {"m": 40}
    view._advance(40)
    assert view._tombstones == {}


async def test_late_local_apply_cannot_resurrect_a_watched_delete(
    new_store: StoreFactory, new_view: ViewFactory
) -> None:
    """A caller that wrote (or read) a record and applies it after the watch has
    already delivered that record's deletion must not bring it back."""
    mine, theirs = await new_store(), await new_store()
    view = await new_view(mine)
    _, stored = await mine.create(rec("m"))
    deleted_at = await theirs.delete("m")
    assert deleted_at is not None
    await wait_for(lambda: view.revision >= deleted_at, "the watch to pass the deletion")
    assert view.get("m") is None

    view.apply(stored)  # e.g. register() resuming after its create returned
    assert view.get("m") is None

    # a re-registration (newer revision) is still taken
    _, again = await theirs.create(rec("m", path="again"))
    view.apply(again)  # the watch may have brought it first: same record either way
    assert view.get("m") == again
    await wait_for(lambda: view.revision >= again.mod_revision, "the watch to pass the re-registration")
    assert view.get("m") == again


async def test_resync_after_compaction(new_store: StoreFactory, new_view: ViewFactory) -> None:
    mine, theirs = await new_store(), await new_store()
    for model_id in ("keep", "change", "gone"):
        await theirs.create(rec(model_id))
    view = await new_view(mine)
    assert len(view) == 3
    await view.stop()
    old_revision = view.revision

    seen: list[tuple[str, ModelRecord | None]] = []
    view.add_listener(lambda m, r: seen.append((m, r)))
    _, added = await theirs.create(rec("added", path="pa"))
    changed = await theirs.update("change", add_instance("i", 3))
    assert changed is not None
    deleted_at = await theirs.delete("gone")
    assert deleted_at is not None
    head = await current_revision(theirs)
    await theirs._client.compact(head)

    # the view's own position is gone from etcd's history
    with pytest.raises(Exception) as info:
        async for _ in mine.watch(old_revision + 1):
            break
    assert "compacted" in str(info.value).lower()

    await view._resync()
    assert sorted(r.model_id for r in view.records()) == ["added", "change", "keep"]
    assert view.get("change").instances == {"i": 3}  # type: ignore[union-attr]
    assert view.get("change").mod_revision == changed.mod_revision  # type: ignore[union-attr]
    assert view.get("added").mod_revision == added.mod_revision  # type: ignore[union-attr]
    assert view.revision >= head
    assert ("gone", None) in seen
    assert sorted(m for m, _ in seen) == ["added", "change", "gone"]


async def test_watch_restarts_after_compaction(new_store: StoreFactory, new_view: ViewFactory) -> None:
    """The watch loop, resuming from a compacted revision, re-lists and goes on."""
    mine, theirs = await new_store(), await new_store()
    await theirs.create(rec("a"))
    view = await new_view(mine)
    await view.stop()

    await theirs.delete("a")
    await theirs.create(rec("b"))
    await theirs._client.compact(await current_revision(theirs))

    view._task = asyncio.create_task(view._run())  # resumes at the stale revision
    await wait_for(lambda: view.resyncs >= 1, "a resync after the compacted watch")
    await wait_for(lambda: view.get("a") is None and view.get("b") is not None, "the re-listed state")

    _, c = await theirs.create(rec("c"))
    await wait_for(lambda: view.get("c") is not None, "the restarted watch to deliver new records")
    assert view.get("c").mod_revision == c.mod_revision  # type: ignore[union-attr]
    assert view.resyncs == 1


async def test_concurrent_updates_through_view_converge(
    new_store: StoreFactory, new_view: ViewFactory
) -> None:
    mine, theirs = await new_store(), await new_store()
    view = await new_view(mine)
    _, stored = await mine.create(rec("m"))
    view.apply(stored)

    async def local(task: int) -> None:
        for i in range(10):
            result = await mine.update("m", add_instance(f"l{task}-{i}", i), current=view.get("m"))
            assert result is not None
            view.apply(result)
            # read-your-writes: the view is never behind our own write
            assert view.get("m").mod_revision >= result.mod_revision  # type: ignore[union-attr]
            assert f"l{task}-{i}" in view.get("m").instances  # type: ignore[union-attr]

    async def remote() -> None:
        for i in range(20):
            assert await theirs.update("m", add_instance(f"r-{i}", i)) is not None

    await asyncio.wait_for(asyncio.gather(*(local(t) for t in range(4)), remote()), 25)

    final = await theirs.get("m")
    assert final is not None
    expected = {f"l{t}-{i}": i for t in range(4) for i in range(10)} | {f"r-{i}": i for i in range(20)}
    assert final.instances == expected
    await wait_for(
        lambda: view.get("m") is not None and view.get("m").mod_revision == final.mod_revision,  # type: ignore[union-attr]
        "the view to settle on etcd's record",
    )
    assert view.get("m") == final


# ---- CopyRecorder -----------------------------------------------------------------------


def test_apply_copy() -> None:
    record = rec("m", instances={"other": 1})
    loading = apply_copy(record.copy(), "me", DesiredCopy(CopyState.LOADING, at_ms=100))
    assert loading is not None
    assert loading.loading == {"me": 100} and loading.instances == {"other": 1}

    loaded = apply_copy(loading.copy(), "me", DesiredCopy(CopyState.LOADED, at_ms=200, size_bytes=4096))
    assert loaded is not None
    assert loaded.instances == {"other": 1, "me": 200} and loaded.loading == {} and loaded.size_bytes == 4096
    assert apply_copy(loaded.copy(), "me", DesiredCopy(CopyState.LOADED, at_ms=200)) is None
    assert apply_copy(loaded.copy(), "me", DesiredCopy(CopyState.LOADED, at_ms=200, size_bytes=4096)) is None

    failed = apply_copy(loaded.copy(), "me", DesiredCopy(CopyState.FAILED, at_ms=300, error="bad"))
    assert failed is not None
    assert failed.failures == {"me": (300, "bad")} and failed.instances == {"other": 1}
    assert failed.size_bytes == 4096
    assert apply_copy(failed.copy(), "me", DesiredCopy(CopyState.FAILED, at_ms=300, error="bad")) is None

    reloaded = apply_copy(failed.copy(), "me", DesiredCopy(CopyState.LOADED, at_ms=400))
    assert reloaded is not None and reloaded.failures == {} and reloaded.instances["me"] == 400

    gone = apply_copy(reloaded.copy(), "me", DesiredCopy(None, at_ms=500))
    assert gone is not None and gone.instances == {"other": 1}
    assert apply_copy(gone.copy(), "me", DesiredCopy(None, at_ms=600)) is None


async def test_copy_recorder_publishes_states(new_store: StoreFactory, new_view: ViewFactory) -> None:
    mine, reader = await new_store(), await new_store()
    view = await new_view(mine)
    _, stored = await mine.create(rec("m", instances={"peer": 1}))
    view.apply(stored)
    recorder = CopyRecorder(mine, view, "inst-a")
    try:
        recorder.set("m", DesiredCopy(CopyState.LOADING, at_ms=100))
        recorder.set("m", DesiredCopy(CopyState.LOADED, at_ms=150, size_bytes=2048))
        await recorder.flush()
        assert recorder._workers == {}
        got = await reader.get("m")
        assert got is not None
        assert got.instances == {"peer": 1, "inst-a": 150}
        assert "inst-a" not in got.loading
        assert got.size_bytes == 2048
        assert view.get("m").mod_revision >= got.mod_revision  # type: ignore[union-attr]

        recorder.set("m", DesiredCopy(CopyState.FAILED, at_ms=200, error="CUDA out of memory"))
        await recorder.flush()
        got = await reader.get("m")
        assert got is not None
        assert got.failures == {"inst-a": (200, "CUDA out of memory")}
        assert got.instances == {"peer": 1} and got.loading == {}

        recorder.set("m", DesiredCopy(CopyState.LOADED, at_ms=300))
        await recorder.flush()
        recorder.set("m", DesiredCopy(None, at_ms=400))
        await recorder.flush()
        got = await reader.get("m")
        assert got is not None
        assert got.instances == {"peer": 1} and got.loading == {} and got.failures == {}
        assert got.size_bytes == 2048

        # an unchanged state writes nothing
        before = got.mod_revision
        recorder.set("m", DesiredCopy(None, at_ms=500))
        await recorder.flush()
        got = await reader.get("m")
        assert got is not None and got.mod_revision == before

        # a model deleted meanwhile: the recorder gives up quietly and writes nothing
        await reader.delete("m")
        recorder.set("m", DesiredCopy(CopyState.LOADED, at_ms=600))
        await recorder.flush()
        assert recorder._workers == {}
        assert await reader.get("m") is None
    finally:
        await recorder.close()


async def test_copy_recorders_of_two_instances_do_not_clobber(
    new_store: StoreFactory, new_view: ViewFactory
) -> None:
    s1, s2 = await new_store(), await new_store()
    v1, v2 = await new_view(s1), await new_view(s2)
    await s1.create(rec("m"))
    await wait_for(lambda: v1.get("m") is not None and v2.get("m") is not None, "both views to see m")
    r1, r2 = CopyRecorder(s1, v1, "a"), CopyRecorder(s2, v2, "b")
    try:
        for at in range(1, 11):
            r1.set("m", DesiredCopy(CopyState.LOADING, at_ms=at))
            r2.set("m", DesiredCopy(CopyState.LOADING, at_ms=at))
            await asyncio.sleep(0)
        r1.set("m", DesiredCopy(CopyState.LOADED, at_ms=100))
        r2.set("m", DesiredCopy(CopyState.LOADED, at_ms=200))
        await asyncio.gather(r1.flush(), r2.flush())
        got = await s1.get("m")
        assert got is not None
        assert got.instances == {"a": 100, "b": 200} and got.loading == {}
        for view in (v1, v2):
            await wait_for(lambda: view.get("m") == got, "the views to converge")
    finally:
        await r1.close()
        await r2.close()


async def test_list_reads_in_pages_at_one_revision(store: RegistryStore) -> None:
    for i in range(10):
        await store.create(ModelRecord(model_id=f"page-{i}", type="onnx"))
    records, revision = await store.list(page_size=3)
    assert sorted(r.model_id for r in records) == [f"page-{i}" for i in range(10)]
    assert all(r.mod_revision <= revision for r in records)
    assert revision == max(r.mod_revision for r in records)
