"""The content-addressed cache (budget, LRU, restarts, debris), local/PVC pulls, and the retry policy."""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from puller import Puller, PullerConfig, PullError
from puller.retry import Deadline, RetryPolicy, call_with_retries
from tests.puller_servers import FileServer

KB = 1024


@pytest.fixture
def server() -> Iterator[FileServer]:
    files = {f"/m{i}.bin": bytes([i]) * (10 * KB) for i in range(6)}
    with FileServer(files) as srv:
        yield srv


def cfg(tmp_path: Path, **kw: object) -> PullerConfig:
    return PullerConfig(cache_dir=tmp_path / "cache", pvc_mounts_dir=tmp_path / "pvc", backoff_initial_s=0.01, **kw)  # type: ignore[arg-type]


def test_release_deletes_unless_retained(tmp_path: Path, server: FileServer) -> None:
    with Puller(cfg(tmp_path)) as p:
        a = p.pull("a", f"{server.url}/m0.bin")
        p.release("a")
        assert not a.path.exists()
    with Puller(cfg(tmp_path, retain_released=True)) as p:
        a = p.pull("a", f"{server.url}/m0.bin")
        p.release("a")
        assert a.path.exists() and p.cache_entries()[0].refs == frozenset()
        again = p.pull("b", f"{server.url}/m0.bin")
        assert again.downloaded_bytes == 0 and server.state.gets["/m0.bin"] == 2


def test_budget_evicts_unreferenced_lru_first(tmp_path: Path, server: FileServer, caplog: pytest.LogCaptureFixture) -> None:
    with Puller(cfg(tmp_path, disk_budget_bytes=35 * KB, retain_released=True)) as p:
        paths = {i: p.pull(f"m{i}", f"{server.url}/m{i}.bin").path for i in range(3)}  # 30 KB
        for i in range(3):
            p.release(f"m{i}")
        p.pull("m0-again", f"{server.url}/m0.bin")  # m0 is now the most recently used (and referenced)
        time.sleep(0.01)
        p.pull("m3", f"{server.url}/m3.bin")  # needs room: m1 (oldest, unreferenced) goes
        assert not paths[1].exists() and paths[0].exists() and paths[2].exists()
        p.pull("m4", f"{server.url}/m4.bin")  # then m2
        assert not paths[2].exists() and paths[0].exists()
        assert sum(e.size_bytes for e in p.cache_entries()) <= 35 * KB
        # everything referenced and over budget: the pull proceeds, with a warning
        caplog.set_level(logging.WARNING, logger="puller")
        big = p.pull("m5", f"{server.url}/m5.bin")
        assert big.path.exists() and "over its disk budget" in caplog.text
        assert len(p.cache_entries()) == 4
        # releasing while over budget deletes at once
        p.release("m5")
        assert not big.path.exists()


def test_restart_reuses_entries_and_cleans_debris(tmp_path: Path, server: FileServer) -> None:
    with Puller(cfg(tmp_path, retain_released=True)) as p:
        kept = p.pull("a", f"{server.url}/m0.bin")
    cache = tmp_path / "cache"
    (cache / "tmp" / "dl-crashed" / "data").mkdir(parents=True)
    (cache / "tmp" / "dl-crashed" / "data" / "half.bin").write_bytes(b"half")
    (cache / "objects" / ("f" * 64)).mkdir()  # no entry.json: a malformed entry
    (cache / "objects" / "not-a-digest").mkdir()
    with Puller(cfg(tmp_path)) as p:
        assert os.listdir(cache / "tmp") == []
        assert sorted(os.listdir(cache / "objects")) == [kept.cache_key]
        again = p.pull("a", f"{server.url}/m0.bin")
        assert again.path == kept.path and again.downloaded_bytes == 0
        assert server.state.gets["/m0.bin"] == 1


def test_budget_applies_to_entries_from_before_a_restart(tmp_path: Path, server: FileServer) -> None:
    with Puller(cfg(tmp_path, retain_released=True)) as p:
        pulled = [p.pull(f"m{i}", f"{server.url}/m{i}.bin") for i in range(3)]
    old = [m.path for m in pulled]
    for i, m in enumerate(pulled):  # last use is the entry file's mtime; make the order unambiguous
        t = time.time() - 100 + i
        os.utime(tmp_path / "cache" / "objects" / str(m.cache_key) / "entry.json", (t, t))
    with Puller(cfg(tmp_path, disk_budget_bytes=25 * KB)) as p:
        p.pull("new", f"{server.url}/m3.bin")
        assert [q.exists() for q in old] == [False, False, True]  # oldest two evicted


def test_local_and_pvc_paths(tmp_path: Path) -> None:
    model = tmp_path / "models" / "add" / "model.onnx"
    model.parent.mkdir(parents=True)
    model.write_bytes(b"x" * 100)
    claim = tmp_path / "pvc" / "my-claim" / "m1"
    claim.mkdir(parents=True)
    (claim / "model.onnx").write_bytes(b"y" * 50)
    sc = tmp_path / "sc"
    sc.mkdir()
    (sc / "claim").write_text(json.dumps({"type": "pvc", "name": "my-claim"}))
    with Puller(cfg(tmp_path, storage_config_dir=sc)) as p:
        local = p.pull("add", str(model))
        assert (local.path, local.size_bytes, local.downloaded_bytes, local.cache_key) == (model, 100, 0, None)
        assert p.pull("dir", str(model.parent)).size_bytes == 100
        assert p.pull("uri", model.as_uri()).path == model
        pvc = p.pull("pvc", "pvc://my-claim/m1")
        assert pvc.path == claim and pvc.size_bytes == 50
        assert p.pull("pvc2", "m1", "claim").path == claim
        assert p.remote_size(str(model)) == 100
        assert p.cache_entries() == []
        for bad in ("pvc://my-claim/../../etc/passwd", "pvc://my-claim/m1/../../../x"):
            with pytest.raises(PullError) as info:
                p.pull("evil", bad)
            assert info.value.reason == "invalid"
        with pytest.raises(PullError) as info:
            p.pull("gone", str(tmp_path / "missing.onnx"))
        assert info.value.reason == "not_found"
        p.release("add")  # a no-op for local paths


def test_model_moving_from_cached_to_local_drops_its_reference(tmp_path: Path, server: FileServer) -> None:
    (tmp_path / "local.bin").write_bytes(b"1")
    with Puller(cfg(tmp_path)) as p:
        cached = p.pull("m", f"{server.url}/m0.bin")
        p.pull("m", str(tmp_path / "local.bin"))
        assert not cached.path.exists()


# -- retry policy -----------------------------------------------------------------


def test_backoff_grows_with_jitter_and_caps() -> None:
    policy = RetryPolicy(max_attempts=10, initial_s=0.2, max_s=1.0)
    for n, base in [(1, 0.2), (2, 0.4), (3, 0.8), (4, 1.0), (9, 1.0)]:
        delays = {policy.delay(n) for _ in range(50)}
        assert all(base / 2 <= d <= base for d in delays) and len(delays) > 1


def test_call_with_retries_respects_attempts_and_deadline() -> None:
    calls: list[int] = []
    slept: list[float] = []

    def flaky(n: int) -> str:
        calls.append(n)
        if n < 3:
            raise PullError("unavailable", "boom", retryable=True)
        return "ok"

    assert call_with_retries(flaky, RetryPolicy(5, 0.01, 0.02), Deadline(5), describe="t", sleep=slept.append) == "ok"
    assert calls == [1, 2, 3] and len(slept) == 2

    def never(n: int) -> str:
        raise PullError("unavailable", "down", retryable=True)

    with pytest.raises(PullError) as info:
        call_with_retries(never, RetryPolicy(3, 0.001, 0.001), Deadline(5), describe="t", sleep=lambda s: None)
    assert info.value.reason == "unavailable" and "gave up after 3 attempts" in info.value.message
    with pytest.raises(PullError) as info:
        call_with_retries(never, RetryPolicy(10, 10, 10), Deadline(1), describe="t", sleep=lambda s: None)
    assert info.value.reason == "deadline" and "last error" in info.value.message

    def fatal(n: int) -> str:
        calls.append(n)
        raise PullError("not_found", "no")

    calls.clear()
    with pytest.raises(PullError):
        call_with_retries(fatal, RetryPolicy(5), Deadline(5), describe="t")
    assert calls == [1]
