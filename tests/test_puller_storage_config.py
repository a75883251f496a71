"""storage-config: key resolution as in ModelMesh, overrides, re-reads, and secrets kept out of sight."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pytest

from puller import Puller, PullerConfig, PullError, StorageConfig, parse_model_source
from puller.targets import HttpTarget, LocalTarget, S3Target, resolve_target

SECRET = "s3cr3t-V4lue-never-shown"
TOKEN = "Bearer tok-never-shown"


def write(d: Path, key: str, value: object) -> None:
    d.mkdir(parents=True, exist_ok=True)
    (d / key).write_text(value if isinstance(value, str) else json.dumps(value))


@pytest.fixture
def sc_dir(tmp_path: Path) -> Path:
    d = tmp_path / "storage-config"
    write(d, "localMinIO", {"type": "s3", "access_key_id": "AKID", "secret_access_key": SECRET,
                            "endpoint_url": "http://127.0.0.1:9000", "region": "us-south", "default_bucket": "models"})
    write(d, "web", {"type": "http", "url": "https://models.example.com/base", "headers": {"Authorization": TOKEN}})
    write(d, "claim", {"type": "pvc", "name": "my-claim"})
    return d


def resolve(sc: StorageConfig, path: str, key: str = "", pvc: Path = Path("/pvc_mounts")):
    return resolve_target(parse_model_source(path, key), sc, pvc)


def test_explicit_key_and_default_bucket(sc_dir: Path) -> None:
    t = resolve(StorageConfig(sc_dir), "mnist/v1", "localMinIO")
    assert isinstance(t, S3Target)
    assert (t.bucket, t.key) == ("models", "mnist/v1")  # default_bucket maps to bucket
    assert t.entry is not None and t.entry.get("region") == "us-south"
    # the URI's bucket wins over the entry's
    assert resolve(StorageConfig(sc_dir), "s3://other/m", "localMinIO").bucket == "other"


def test_storage_params_override(sc_dir: Path) -> None:
    key = json.dumps({"storage_key": "localMinIO", "storage_params": {"bucket": "override", "region": "eu"}})
    t = resolve(StorageConfig(sc_dir), "m", key)
    assert isinstance(t, S3Target) and t.bucket == "override" and t.entry.get("region") == "eu"
    # dotted keys set nested fields: headers.X
    key = json.dumps({"storage_key": "web", "storage_params": {"headers.X-Extra": "1"}})
    h = resolve(StorageConfig(sc_dir), "dir/model.onnx", key)
    assert isinstance(h, HttpTarget)
    assert h.url == "https://models.example.com/base/dir/model.onnx"
    assert dict(h.entry.headers) == {"Authorization": TOKEN, "X-Extra": "1"}
    # storage_params alone, no key file at all
    only = resolve(StorageConfig(None), "m/x", json.dumps({"storage_params": {"type": "s3", "bucket": "b"}}))
    assert isinstance(only, S3Target) and (only.bucket, only.key, only.entry.key) == ("b", "m/x", None)


def test_default_keys(tmp_path: Path) -> None:
    d = tmp_path / "sc"
    write(d, "default", {"type": "s3", "bucket": "dflt", "endpoint_url": "http://e"})
    write(d, "default_http", {"type": "http", "url": "https://h", "headers": "Authorization: x"})
    sc = StorageConfig(d)
    assert resolve(sc, "m").bucket == "dflt"  # no key, no type: `default`
    t = resolve(sc, "m.onnx", '{"storage_params": {"type": "http"}}')  # type known: `default_http`
    assert isinstance(t, HttpTarget) and t.url == "https://h/m.onnx" and t.entry.key == "default_http"
    # an http URL with no key picks default_http (its headers), never the s3 `default`
    u = resolve(sc, "https://other.example/m.onnx")
    assert isinstance(u, HttpTarget) and u.entry.key == "default_http"
    # s3:// with no default_s3: `default` (type s3) applies
    assert resolve(sc, "s3://bkt/m").entry.key == "default"
    # a plain absolute path without key/type is used in place, whatever `default` says
    assert isinstance(resolve(sc, "/abs/model.onnx"), LocalTarget)


def test_no_default_and_relative_path_is_clear(tmp_path: Path) -> None:
    with pytest.raises(PullError) as info:
        resolve(StorageConfig(tmp_path / "none"), "models/m")
    assert info.value.reason == "invalid" and "no storage is configured" in info.value.message
    # a public URL or a local path needs no key
    assert resolve(StorageConfig(None), "https://h/m.onnx").entry is None
    assert isinstance(resolve(StorageConfig(None), "/m.onnx"), LocalTarget)


def test_missing_explicit_key_names_key_not_contents(sc_dir: Path) -> None:
    with pytest.raises(PullError) as info:
        resolve(StorageConfig(sc_dir), "m", "nope")
    assert info.value.reason == "invalid" and "'nope'" in info.value.message
    with pytest.raises(PullError) as info:
        resolve(StorageConfig(None), "m", "nope")
    assert "no storage config directory" in info.value.message


def test_type_mismatch_and_missing_type(sc_dir: Path) -> None:
    with pytest.raises(PullError, match="type 'http' but the model path is a s3://"):
        resolve(StorageConfig(sc_dir), "s3://b/m", "web")
    write(sc_dir, "typeless", {"bucket": "b"})
    with pytest.raises(PullError, match="storage type is missing"):
        resolve(StorageConfig(sc_dir), "m", "typeless")


def test_pvc_key_and_traversal(sc_dir: Path, tmp_path: Path) -> None:
    t = resolve(StorageConfig(sc_dir), "models/m1", "claim", pvc=tmp_path)
    assert isinstance(t, LocalTarget) and t.path == tmp_path / "my-claim" / "models" / "m1"
    write(sc_dir, "evil", {"type": "pvc", "name": "../../etc"})
    with pytest.raises(PullError) as info:
        resolve(StorageConfig(sc_dir), "passwd", "evil", pvc=tmp_path)
    assert info.value.reason == "invalid"
    with pytest.raises(PullError) as info:
        StorageConfig(sc_dir).read("../storage-config/claim")
    assert info.value.reason == "invalid"


@pytest.mark.parametrize("stype", ["gcs", "azure"])
def test_gcs_azure_unsupported(tmp_path: Path, stype: str) -> None:
    write(tmp_path, "k", {"type": stype})
    with pytest.raises(PullError) as info:
        resolve(StorageConfig(tmp_path), "m", "k")
    assert info.value.reason == "unsupported" and f"storage type {stype}" in info.value.message
    with pytest.raises(PullError) as info:
        resolve(StorageConfig(None), "gs://bucket/m")
    assert info.value.reason == "unsupported" and "gcs" in info.value.message


def test_file_type_needs_an_absolute_path() -> None:
    t = resolve(StorageConfig(None), "/m/model.onnx", '{"storage_params": {"type": "file"}}')
    assert isinstance(t, LocalTarget) and t.path == Path("/m/model.onnx")
    with pytest.raises(PullError, match="absolute"):
        resolve(StorageConfig(None), "m/model.onnx", '{"storage_params": {"type": "file"}}')


def test_headers_forms(tmp_path: Path) -> None:
    write(tmp_path, "a", {"type": "http", "url": "https://h", "headers": ["A: 1", "B:2"]})
    write(tmp_path, "b", {"type": "http", "url": "https://h", "headers": "A: 1\nB: x:y"})
    write(tmp_path, "c", {"type": "http", "url": "https://h", "headers": "no colon"})
    sc = StorageConfig(tmp_path)
    assert dict(sc.resolve("a").headers) == {"A": "1", "B": "2"}
    assert dict(sc.resolve("b").headers) == {"A": "1", "B": "x:y"}
    with pytest.raises(PullError, match="Name: value"):
        sc.resolve("c")


def test_file_change_is_reread(tmp_path: Path) -> None:
    write(tmp_path, "k", {"type": "s3", "bucket": "one"})
    sc = StorageConfig(tmp_path)
    assert sc.resolve("k").get("bucket") == "one"
    # Kubernetes swaps secret contents atomically; emulate with a replace and a new mtime
    write(tmp_path, "k.tmp", {"type": "s3", "bucket": "two"})
    os.replace(tmp_path / "k.tmp", tmp_path / "k")
    assert sc.resolve("k").get("bucket") == "two"
    (tmp_path / "k").unlink()
    with pytest.raises(PullError, match="not found"):
        sc.resolve("k")


def test_bad_json_does_not_echo_contents(tmp_path: Path) -> None:
    write(tmp_path, "k", '{"type": "s3", "secret_access_key": "' + SECRET + '" oops}')
    with pytest.raises(PullError) as info:
        StorageConfig(tmp_path).resolve("k")
    assert info.value.reason == "invalid" and "not valid JSON" in info.value.message
    assert SECRET not in str(info.value) and SECRET not in repr(info.value)


def test_secrets_never_in_repr_or_logs(sc_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="puller")
    sc = StorageConfig(sc_dir)
    s3 = sc.resolve("localMinIO")
    web = sc.resolve("web")
    for obj in (s3, web, sc, resolve(sc, "m", "localMinIO"), resolve(sc, "x.onnx", "web")):
        assert SECRET not in repr(obj) and SECRET not in str(obj)
        assert TOKEN not in repr(obj) and "tok-never-shown" not in str(obj)
    assert "AKID" not in repr(s3)  # the key id is redacted too
    assert "endpoint_url='http://127.0.0.1:9000'" in repr(s3) and "'Authorization': ***" in repr(web)
    assert s3.scrub(f"server said {SECRET}!") == "server said ***!"
    # a failing pull with these credentials logs and raises without them (port 9: nothing listens)
    write(sc_dir, "dead", {"type": "http", "url": "http://127.0.0.1:9", "headers": {"Authorization": TOKEN}})
    with Puller(PullerConfig(cache_dir=tmp_path / "cache", storage_config_dir=sc_dir, pull_deadline_s=3,
                             max_attempts=1)) as puller:
        with pytest.raises(PullError) as info:
            puller.pull("m", "x.onnx", "dead")
        for text in (str(info.value), repr(info.value), caplog.text, repr(puller)):
            assert SECRET not in text and "tok-never-shown" not in text
