"""Parsing model paths/keys and keeping untrusted paths inside their roots."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from puller import ModelSource, PullError, parse_model_source, safe_join

ROOT = Path("/srv/root")
segment_chars = st.sampled_from(list("ab./\\\x00:~ -_") + ["..", "%2e", "\u00e9"])
untrusted = st.lists(segment_chars, max_size=12).map("".join)


def _inside(root: Path, p: Path) -> bool:
    r, q = os.path.normpath(root), os.path.normpath(p)
    return os.path.commonpath([r, q]) == r


@settings(max_examples=400, deadline=None)
@given(parts=st.lists(st.one_of(untrusted, st.text(max_size=10)), min_size=1, max_size=3))
def test_safe_join_never_escapes(parts: list[str]) -> None:
    try:
        joined = safe_join(ROOT, *parts)
    except PullError as err:
        assert err.reason == "invalid"
        return
    assert _inside(ROOT, joined)
    assert ".." not in joined.relative_to(ROOT).parts
    assert "\x00" not in str(joined)


@pytest.mark.parametrize(
    "rel", ["../x", "a/../../x", "/etc/passwd", "a//b", "a\\..\\b", "a/./b", "a\x00b", "..", "a/.."]
)
def test_safe_join_rejects(rel: str) -> None:
    with pytest.raises(PullError) as info:
        safe_join(ROOT, rel)
    assert info.value.reason == "invalid"


def test_safe_join_accepts_normal_paths() -> None:
    assert safe_join(ROOT, "models/mnist", "1/model.onnx") == ROOT / "models/mnist/1/model.onnx"
    assert safe_join(ROOT, "") == ROOT
    assert safe_join(ROOT, "a..b/.hidden") == ROOT / "a..b/.hidden"


# -- parse_model_source ---------------------------------------------------------------


def test_forms() -> None:
    s = parse_model_source("s3://models/prefix/mnist", "localMinIO")
    assert (s.type, s.bucket, s.path, s.storage_key, s.is_dir) == ("s3", "models", "prefix/mnist", "localMinIO", False)
    assert parse_model_source("s3://models/prefix/").is_dir
    assert parse_model_source("s3://models").path == ""

    h = parse_model_source("https://example.com/a/model.onnx?sig=1#frag")
    assert (h.type, h.url) == ("http", "https://example.com/a/model.onnx?sig=1")

    p = parse_model_source("pvc://my-claim/models/m1")
    assert (p.type, p.pvc_name, p.path) == ("pvc", "my-claim", "models/m1")

    f = parse_model_source("file:///tmp/x/model.onnx")
    assert f.is_local and f.path == "/tmp/x/model.onnx"

    plain = parse_model_source("/tmp/models/add/model.onnx")
    assert plain.is_local and plain.type is None

    keyed_abs = parse_model_source("/models/add", "localMinIO")
    assert not keyed_abs.is_local  # with a key, the path is inside the storage

    rel = parse_model_source("models/mnist", '{"storage_key": "k", "storage_params": {"type": "s3", "bucket": "b"}}')
    assert (rel.type, rel.path, rel.storage_key, dict(rel.storage_params)) == ("s3", "models/mnist", "k", {"type": "s3", "bucket": "b"})
    assert parse_model_source("gs://bucket/m").type == "gcs"


def test_model_key_forms() -> None:
    assert parse_model_source("/m", "").storage_key is None
    assert parse_model_source("/m", "  ").storage_key is None
    key = json.dumps(
        {
            "storage_key": "localMinIO",
            "storage_params": {"bucket": "b", "headers": {"X-Token": "t"}, "port": 9000, "tls": True},
            "model_type": {"name": "onnx"},
            "schema_path": "s.json",
            "disk_size_bytes": 123,
        }
    )
    s = parse_model_source("models/m", key)
    assert s.storage_key == "localMinIO"
    assert dict(s.storage_params) == {"bucket": "b", "headers.X-Token": "t", "port": "9000", "tls": "true"}
    # model_type only: still a local path
    assert parse_model_source("/m/x.onnx", '{"model_type": {"name": "onnx"}}').is_local
    # legacy top-level bucket
    assert parse_model_source("m", '{"storage_key": "k", "bucket": "legacy"}').storage_params["bucket"] == "legacy"


@pytest.mark.parametrize(
    "path,key,needle",
    [
        ("", "", "empty"),
        ("s3://b/../x", "", ".."),
        ("s3://bucket/a/../../x", "", ".."),
        ("s3://bucket/a//b", "", "empty path segment"),
        ("s3:///key", "", "bucket"),
        ("pvc://name/../../etc/passwd", "", ".."),
        ("pvc://Bad_Name/x", "", "claim name"),
        ("/models/../etc/passwd", "", ".."),
        ("models\\x", "k", "backslash"),
        ("http://example.com/dir/", "", "one file"),
        ("http://example.com/a/../b", "", "unsafe"),
        ("http://user:pw@example.com/m.onnx", "", "credentials"),
        ("http:///m.onnx", "", "no host"),
        ("http://h:port/m.onnx", "", "malformed"),  # found by hypothesis
        ("ftp://host/x", "", "scheme"),
        ("file://host/x", "", "file:///"),
        ("models/m", "../x", "not a valid key name"),
        ("models/m", '{"storage_key": "../x"}', "not a valid key name"),
        ("models/m", '{"storage_key": "a/b"}', "not a valid key name"),
        ("models/m", '{"storage_key": 3}', "must be a string"),
        ("models/m", "{not json", "not valid JSON"),
        ("models/m", '["a"]', "not a valid key name"),
        ("models/m", '{"storage_params": {"type": "ftp"}}', "unknown"),
        ("s3://bucket/m", '{"storage_params": {"type": "http"}}', "conflicts"),
        ("models/m", '{"storage_params": [1]}', "must be a JSON object"),
        ("a\nb", "", "control"),
    ],
)
def test_invalid_forms(path: str, key: str, needle: str) -> None:
    with pytest.raises(PullError) as info:
        parse_model_source(path, key)
    assert info.value.reason == "invalid" and not info.value.retryable
    assert needle in info.value.message


def test_repr_hides_secret_params() -> None:
    s = parse_model_source("s3://bucket/m", json.dumps({"storage_params": {"secret_access_key": "hunter2-secret", "bucket": "b"}}))
    assert "hunter2-secret" not in repr(s) and "hunter2-secret" not in str(s)
    assert "'bucket': 'b'" in repr(s)
    presigned = parse_model_source("https://h/m.onnx?X-Amz-Signature=topsecretsig")
    assert "topsecretsig" not in repr(presigned)


path_text = st.lists(st.sampled_from(list("ab/.:\\-_%?#") + ["s3://", "pvc://", "http://h", "file://", ".."]), max_size=12).map("".join)


@settings(max_examples=400, deadline=None)
@given(path=st.one_of(path_text, st.text(max_size=40)), key=st.sampled_from(["", "k", '{"storage_key": "k"}', '{"storage_params": {"type": "s3", "bucket": "b"}}']))
def test_parser_total_and_safe(path: str, key: str) -> None:
    """The parser only ever raises PullError(invalid), and what it accepts joins safely."""
    try:
        source = parse_model_source(path, key)
    except PullError as err:
        assert err.reason == "invalid"
        return
    assert isinstance(source, ModelSource)
    if source.url is None:
        rel = source.path.lstrip("/")
        assert _inside(ROOT, safe_join(ROOT, rel))


def test_puller_imports_nothing_of_the_mesh() -> None:
    import subprocess
    import sys

    code = "import sys, puller; print(sorted(m for m in sys.modules if m.split('.')[0] in ('mesh', 'runtime_adapter', 'placement')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "[]"


def test_errors_and_sources_pickle_and_hash() -> None:
    import pickle

    err = PullError("unavailable", "down", retryable=True)
    back = pickle.loads(pickle.dumps(err))
    assert (back.reason, back.message, back.retryable) == ("unavailable", "down", True)
    s = parse_model_source("s3://bucket/m", '{"storage_key": "k", "storage_params": {"region": "eu"}}')
    assert pickle.loads(pickle.dumps(s)) == s and hash(s) == hash(parse_model_source("s3://bucket/m", "k"))
    with pytest.raises(ValueError):
        PullError("weird", "x")  # type: ignore[arg-type]
