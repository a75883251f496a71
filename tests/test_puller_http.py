"""HTTP(S) pulls against a loopback server: headers, status codes, dropped
connections, never a corrupt cache entry, shared downloads, custom CA."""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from puller import Puller, PullerConfig, PullError
from tests.puller_servers import FileServer, make_tls

BODY = bytes(range(256)) * 4096  # 1 MiB
TOKEN = "Bearer secret-token-xyz"


@pytest.fixture
def server() -> Iterator[FileServer]:
    with FileServer({"/models/model.onnx": BODY, "/models/other.bin": b"other" * 100}) as srv:
        yield srv


@pytest.fixture
def puller(tmp_path: Path, server: FileServer) -> Iterator[Puller]:
    sc = tmp_path / "storage-config"
    sc.mkdir()
    (sc / "web").write_text(json.dumps({"type": "http", "url": server.url, "headers": {"Authorization": TOKEN}}))
    with Puller(PullerConfig(cache_dir=tmp_path / "cache", storage_config_dir=sc, backoff_initial_s=0.01,
                             backoff_max_s=0.05, pull_deadline_s=20)) as p:
        yield p


def test_pull_with_headers_from_storage_config(server: FileServer, puller: Puller) -> None:
    server.state.require_headers = {"Authorization": TOKEN}
    pulled = puller.pull("m1", "models/model.onnx", "web")
    assert pulled.path.name == "model.onnx" and pulled.path.read_bytes() == BODY
    assert pulled.size_bytes == len(BODY) == pulled.downloaded_bytes and pulled.cache_key
    assert all(h.get("Authorization") == TOKEN for h in server.state.seen_headers)
    # a full URL with the key works the same (and is a cache hit)
    again = puller.pull("m2", f"{server.url}/models/model.onnx", '{"storage_key": "web"}')
    assert again.path == pulled.path and again.downloaded_bytes == 0
    # without the key the server refuses: denied
    with pytest.raises(PullError) as info:
        puller.pull("m3", f"{server.url}/models/model.onnx")
    assert info.value.reason == "denied" and not info.value.retryable


def test_404_is_not_found(server: FileServer, puller: Puller) -> None:
    with pytest.raises(PullError) as info:
        puller.pull("m", "models/missing.onnx", "web")
    assert info.value.reason == "not_found" and "404" in info.value.message and not info.value.retryable
    assert server.state.gets["/models/missing.onnx"] == 0  # the HEAD already said so


def test_dropped_connection_is_retried_and_cached_file_is_whole(server: FileServer, puller: Puller) -> None:
    server.state.drop_gets = 2
    pulled = puller.pull("m", "models/model.onnx", "web")
    assert server.state.gets["/models/model.onnx"] == 3
    assert hashlib.sha256(pulled.path.read_bytes()).digest() == hashlib.sha256(BODY).digest()
    assert [e.size_bytes for e in puller.cache_entries()] == [len(BODY)]


def test_all_attempts_fail_leaves_no_entry(server: FileServer, tmp_path: Path, puller: Puller) -> None:
    server.state.drop_gets = 100
    with pytest.raises(PullError) as info:
        puller.pull("m", "models/model.onnx", "web")
    assert info.value.reason == "unavailable" and info.value.retryable
    assert "gave up after 5 attempts" in info.value.message
    assert server.state.gets["/models/model.onnx"] == 5
    assert puller.cache_entries() == []
    cache = tmp_path / "cache"
    assert list((cache / "objects").iterdir()) == [] and list((cache / "tmp").iterdir()) == []


def test_5xx_is_retried(server: FileServer, puller: Puller) -> None:
    server.state.fail_gets = 2
    assert puller.pull("m", "models/other.bin", "web").path.read_bytes() == b"other" * 100


def test_deadline(server: FileServer, tmp_path: Path) -> None:
    server.state.fail_gets = 1000
    with Puller(PullerConfig(cache_dir=tmp_path / "c", pull_deadline_s=0.5, max_attempts=100,
                             backoff_initial_s=0.1, backoff_max_s=0.2)) as p:
        with pytest.raises(PullError) as info:
            p.pull("m", f"{server.url}/models/other.bin")
    assert info.value.reason == "deadline" and "HTTP 500" in info.value.message


def test_two_models_one_download_and_release(server: FileServer, puller: Puller) -> None:
    a = puller.pull("a", "models/model.onnx", "web")
    b = puller.pull("b", "models/model.onnx", "web")
    assert a.path == b.path and a.cache_key == b.cache_key and b.downloaded_bytes == 0
    assert server.state.gets["/models/model.onnx"] == 1
    puller.release("a")
    assert a.path.read_bytes() == BODY  # b still uses it
    puller.release("a")  # idempotent
    puller.release("b")
    assert not a.path.exists() and puller.cache_entries() == []
    puller.release("never-pulled")


def test_concurrent_pulls_share_one_download(server: FileServer, puller: Puller) -> None:
    results: dict[str, object] = {}

    def pull(mid: str) -> None:
        results[mid] = puller.pull(mid, "models/model.onnx", "web")

    threads = [threading.Thread(target=pull, args=(f"m{i}",)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(results) == 8 and len({r.path for r in results.values()}) == 1  # type: ignore[attr-defined]
    assert server.state.gets["/models/model.onnx"] == 1
    assert sum(r.downloaded_bytes for r in results.values()) == len(BODY)  # type: ignore[attr-defined]
    assert puller.cache_entries()[0].refs == {f"m{i}" for i in range(8)}


def test_changed_content_gets_a_new_entry(server: FileServer, puller: Puller) -> None:
    first = puller.pull("m", "models/other.bin", "web")
    server.state.files["/models/other.bin"] = b"changed!"
    second = puller.pull("m", "models/other.bin", "web")
    assert second.cache_key != first.cache_key and second.path.read_bytes() == b"changed!"
    assert not first.path.exists()  # m moved to the new version; nobody uses the old one


def test_no_version_headers_and_no_head(server: FileServer, puller: Puller) -> None:
    """A server without ETag/Last-Modified that refuses HEAD: content hash names the entry."""
    server.state.etag = False
    server.state.head_status = 405
    a = puller.pull("a", "models/other.bin", "web")
    b = puller.pull("b", "models/other.bin", "web")
    assert a.path == b.path and a.path.read_bytes() == b"other" * 100
    assert server.state.gets["/models/other.bin"] == 2  # nothing to compare without a GET
    assert len(puller.cache_entries()) == 1


def test_url_naming(server: FileServer, puller: Puller) -> None:
    server.state.files["/download"] = b"abc"
    pulled = puller.pull("m", f"{server.url}/download?token=1")
    assert pulled.path.name == "download" and pulled.path.read_bytes() == b"abc"


def test_custom_ca(tmp_path: Path) -> None:
    tls = make_tls(tmp_path)
    with FileServer({"/m.onnx": b"tls-model"}, tls=tls.server_context) as srv:
        sc = tmp_path / "sc"
        sc.mkdir()
        (sc / "private").write_text(json.dumps({"type": "http", "url": srv.url, "certificate": tls.ca_pem}))
        with Puller(PullerConfig(cache_dir=tmp_path / "cache", storage_config_dir=sc, max_attempts=1)) as p:
            assert p.pull("m", "m.onnx", "private").path.read_bytes() == b"tls-model"
            assert p.remote_size(f"{srv.url}/m.onnx", "private") == len(b"tls-model")
            with pytest.raises(PullError) as info:  # system CAs do not trust it
                p.pull("m2", f"{srv.url}/m.onnx")
            assert info.value.reason == "unavailable" and "TLS verification failed" in info.value.message


def test_remote_size(server: FileServer, puller: Puller) -> None:
    assert puller.remote_size("models/model.onnx", "web") == len(BODY)
    assert puller.remote_size("models/missing.onnx", "web") is None
    assert puller.remote_size("http://127.0.0.1:9/x.onnx") is None
    assert puller.remote_size("s3://b/../x") is None
