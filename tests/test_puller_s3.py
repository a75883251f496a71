"""S3 pulls against moto's server (with a counting, fault-injecting proxy in front)."""

from __future__ import annotations

import json
import logging
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

from puller import Puller, PullerConfig, PullError
from tests.puller_servers import MotoS3, S3Proxy

SECRET = "moto-secret-key-never-logged"


@pytest.fixture
def proxy(moto: MotoS3) -> Iterator[S3Proxy]:
    with S3Proxy(moto.url) as p:
        yield p


@pytest.fixture
def bucket(moto: MotoS3) -> str:
    name = f"models-{uuid.uuid4().hex[:12]}"
    moto.client().create_bucket(Bucket=name)
    return name


@pytest.fixture
def s3(moto: MotoS3) -> Any:
    return moto.client()


def storage_config(tmp_path: Path, proxy: S3Proxy, bucket: str, **extra: str) -> Path:
    d = tmp_path / "storage-config"
    d.mkdir(exist_ok=True)
    entry = {"type": "s3", "access_key_id": "AKIATEST", "secret_access_key": SECRET, "endpoint_url": proxy.url,
             "region": "us-east-1", "bucket": bucket, **extra}
    (d / "localMinIO").write_text(json.dumps(entry))
    return d


def make_puller(tmp_path: Path, sc: Path, **kw: Any) -> Puller:
    cfg: dict[str, Any] = dict(cache_dir=tmp_path / "cache", storage_config_dir=sc, backoff_initial_s=0.01,
                               backoff_max_s=0.05, pull_deadline_s=30)
    cfg.update(kw)
    return Puller(PullerConfig(**cfg))


def tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_single_object_and_prefix_with_boundary(tmp_path: Path, proxy: S3Proxy, bucket: str, s3: Any) -> None:
    s3.put_object(Bucket=bucket, Key="models/mnist/model.onnx", Body=b"onnx-bytes")
    s3.put_object(Bucket=bucket, Key="models/mnist/1/weights.bin", Body=b"w" * 5000)
    s3.put_object(Bucket=bucket, Key="models/mnist/empty/__init__.py", Body=b"")  # 0 bytes: kept
    s3.put_object(Bucket=bucket, Key="models/mnist/dir-marker/", Body=b"")  # skipped
    s3.put_object(Bucket=bucket, Key="models/mnist2/model.onnx", Body=b"not me")
    s3.put_object(Bucket=bucket, Key="models/single.onnx", Body=b"single")
    with make_puller(tmp_path, storage_config(tmp_path, proxy, bucket)) as puller:
        d = puller.pull("dir", "models/mnist", "localMinIO")
        assert d.path.is_dir() and d.path.name == "mnist"
        assert tree(d.path) == {"1/weights.bin": b"w" * 5000, "empty/__init__.py": b"", "model.onnx": b"onnx-bytes"}
        assert d.size_bytes == d.downloaded_bytes == 5010
        assert proxy.state.object_gets[f"/{bucket}/models/mnist2/model.onnx"] == 0

        f = puller.pull("file", f"s3://{bucket}/models/single.onnx", '{"storage_key": "localMinIO"}')
        assert f.path.is_file() and f.path.name == "single.onnx" and f.path.read_bytes() == b"single"

        trailing = puller.pull("t", f"s3://{bucket}/models/mnist/", "localMinIO")
        assert tree(trailing.path) == tree(d.path)
        assert puller.remote_size(f"s3://{bucket}/models/mnist", "localMinIO") == 5010
        assert puller.remote_size("models/single.onnx", "localMinIO") == 6
        assert puller.remote_size("models/none", "localMinIO") is None


def test_prefix_does_not_match_sibling(tmp_path: Path, proxy: S3Proxy, bucket: str, s3: Any) -> None:
    s3.put_object(Bucket=bucket, Key="models/mnist2/model.onnx", Body=b"x")
    with make_puller(tmp_path, storage_config(tmp_path, proxy, bucket)) as puller:
        with pytest.raises(PullError) as info:
            puller.pull("m", "models/mnist", "localMinIO")
    assert info.value.reason == "not_found" and "models/mnist" in info.value.message
    assert not info.value.retryable


def test_missing_object_and_bucket(tmp_path: Path, proxy: S3Proxy, bucket: str) -> None:
    with make_puller(tmp_path, storage_config(tmp_path, proxy, bucket)) as puller:
        with pytest.raises(PullError) as info:
            puller.pull("m", "models/nothing.onnx", "localMinIO")
        assert info.value.reason == "not_found" and "models/nothing.onnx" in info.value.message
        with pytest.raises(PullError) as info:
            puller.pull("m", "s3://no-such-bucket-here/m.onnx", "localMinIO")
        assert info.value.reason == "not_found" and "NoSuchBucket" in info.value.message


def test_transient_500_is_retried(tmp_path: Path, proxy: S3Proxy, bucket: str, s3: Any) -> None:
    s3.put_object(Bucket=bucket, Key="m/model.onnx", Body=b"abc" * 1000)
    proxy.state.fail_object_gets = 2
    with make_puller(tmp_path, storage_config(tmp_path, proxy, bucket)) as puller:
        pulled = puller.pull("m", "m/model.onnx", "localMinIO")
    assert pulled.path.read_bytes() == b"abc" * 1000
    assert proxy.state.object_gets[f"/{bucket}/m/model.onnx"] == 3  # two injected 500s, then success


def test_retries_exhausted_leave_nothing(tmp_path: Path, proxy: S3Proxy, bucket: str, s3: Any) -> None:
    s3.put_object(Bucket=bucket, Key="m/model.onnx", Body=b"abc")
    proxy.state.fail_object_gets = 100
    with make_puller(tmp_path, storage_config(tmp_path, proxy, bucket), max_attempts=3) as puller:
        with pytest.raises(PullError) as info:
            puller.pull("m", "m/model.onnx", "localMinIO")
        assert info.value.reason == "unavailable" and info.value.retryable and "InternalError" in info.value.message
        assert puller.cache_entries() == []
    assert proxy.state.object_gets[f"/{bucket}/m/model.onnx"] == 3  # botocore's own retries are off
    assert os.listdir(tmp_path / "cache" / "objects") == []


def test_parallel_multipart_download(tmp_path: Path, proxy: S3Proxy, bucket: str, s3: Any) -> None:
    body = os.urandom(1 << 20)
    s3.put_object(Bucket=bucket, Key="big/model.bin", Body=body)
    with make_puller(tmp_path, storage_config(tmp_path, proxy, bucket), s3_multipart_threshold_bytes=256 * 1024,
                     s3_concurrency=4) as puller:
        pulled = puller.pull("m", "big/model.bin", "localMinIO")
    assert pulled.path.read_bytes() == body
    assert proxy.state.ranged_gets[f"/{bucket}/big/model.bin"] == 4


def test_two_models_one_download(tmp_path: Path, proxy: S3Proxy, bucket: str, s3: Any) -> None:
    s3.put_object(Bucket=bucket, Key="shared/a.bin", Body=b"a" * 100)
    s3.put_object(Bucket=bucket, Key="shared/b.bin", Body=b"b" * 100)
    with make_puller(tmp_path, storage_config(tmp_path, proxy, bucket)) as puller:
        one = puller.pull("one", "shared", "localMinIO")
        two = puller.pull("two", f"s3://{bucket}/shared", json.dumps({"storage_key": "localMinIO"}))
        assert one.path == two.path and two.downloaded_bytes == 0
        assert proxy.state.object_gets[f"/{bucket}/shared/a.bin"] == 1
        puller.release("one")
        assert tree(two.path) == {"a.bin": b"a" * 100, "b.bin": b"b" * 100}
        puller.release("two")
        assert not one.path.exists() and puller.cache_entries() == []


def test_object_keys_escaping_the_target_are_rejected(tmp_path: Path, proxy: S3Proxy, bucket: str, s3: Any) -> None:
    s3.put_object(Bucket=bucket, Key="evil/ok.bin", Body=b"1")
    s3.put_object(Bucket=bucket, Key="evil/../../../etc/x", Body=b"1")
    s3.put_object(Bucket=bucket, Key="clash/a", Body=b"1")
    s3.put_object(Bucket=bucket, Key="clash/a/b", Body=b"1")
    with make_puller(tmp_path, storage_config(tmp_path, proxy, bucket)) as puller:
        with pytest.raises(PullError) as info:
            puller.pull("m", "evil", "localMinIO")
        assert info.value.reason == "invalid" and ".." in info.value.message
        with pytest.raises(PullError) as info:
            puller.pull("m", "clash", "localMinIO")
        assert info.value.reason == "invalid" and "both a file and a directory" in info.value.message
        with pytest.raises(PullError) as info:
            puller.pull("m", f"s3://{bucket}/../x", "localMinIO")
        assert info.value.reason == "invalid"
    assert not (tmp_path / "etc").exists() and proxy.state.object_gets == {}


def test_credentials_from_storage_config(tmp_path: Path, proxy: S3Proxy, moto: MotoS3, bucket: str, s3: Any,
                                         monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """moto with IAM checks on: the storage config's key is used, a wrong one is denied."""
    from moto import settings as moto_settings

    caplog.set_level(logging.DEBUG, logger="puller")
    iam = boto3.client("iam", endpoint_url=moto.url, region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="y")
    user = f"puller-{uuid.uuid4().hex[:8]}"
    iam.create_user(UserName=user)
    iam.put_user_policy(UserName=user, PolicyName="s3", PolicyDocument=json.dumps(
        {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}))
    key = iam.create_access_key(UserName=user)["AccessKey"]
    s3.put_object(Bucket=bucket, Key="auth/model.onnx", Body=b"private")
    sc = storage_config(tmp_path, proxy, bucket)
    (sc / "good").write_text(json.dumps({"type": "s3", "access_key_id": key["AccessKeyId"],
                                         "secret_access_key": key["SecretAccessKey"], "endpoint_url": proxy.url,
                                         "region": "us-east-1", "bucket": bucket}))
    monkeypatch.setattr(moto_settings, "INITIAL_NO_AUTH_ACTION_COUNT", 0)
    with make_puller(tmp_path, sc) as puller:
        assert puller.pull("ok", "auth/model.onnx", "good").path.read_bytes() == b"private"
        with pytest.raises(PullError) as info:
            puller.pull("bad", "auth/model.onnx", "localMinIO")  # AKIATEST is unknown to moto's IAM
        assert info.value.reason == "denied" and not info.value.retryable
        assert "InvalidAccessKeyId" in info.value.message
        wrong_secret = json.dumps({"storage_key": "good", "storage_params": {"secret_access_key": SECRET}})
        with pytest.raises(PullError) as info:
            puller.pull("bad2", "auth/model.onnx", wrong_secret)
        assert info.value.reason == "denied" and "SignatureDoesNotMatch" in info.value.message
    for text in (caplog.text, str(info.value)):
        assert SECRET not in text and key["SecretAccessKey"] not in text


def test_cache_survives_restart_and_revalidates(tmp_path: Path, proxy: S3Proxy, bucket: str, s3: Any) -> None:
    s3.put_object(Bucket=bucket, Key="r/model.onnx", Body=b"v1")
    sc = storage_config(tmp_path, proxy, bucket)
    with make_puller(tmp_path, sc, retain_released=True) as puller:
        first = puller.pull("m", "r/model.onnx", "localMinIO")
        puller.release("m")
    with make_puller(tmp_path, sc) as puller:
        again = puller.pull("m", "r/model.onnx", "localMinIO")
        assert again.path == first.path and again.downloaded_bytes == 0
        s3.put_object(Bucket=bucket, Key="r/model.onnx", Body=b"v2-changed")
        changed = puller.pull("m", "r/model.onnx", "localMinIO")
        assert changed.cache_key != first.cache_key and changed.path.read_bytes() == b"v2-changed"


def test_deadline_cancels_a_stalled_download(tmp_path: Path, proxy: S3Proxy, bucket: str, s3: Any) -> None:
    import time

    s3.put_object(Bucket=bucket, Key="slow/model.bin", Body=b"s" * 1000)
    proxy.state.delay_object_gets_s = 1.0
    with make_puller(tmp_path, storage_config(tmp_path, proxy, bucket), pull_deadline_s=0.4) as puller:
        started = time.monotonic()
        with pytest.raises(PullError) as info:
            puller.pull("m", "slow/model.bin", "localMinIO")
        assert time.monotonic() - started < 0.9  # reported at the deadline, not when the server answers
        assert info.value.reason == "deadline" and not info.value.retryable
        assert puller.cache_entries() == []
        time.sleep(0.8)  # let the cancelled transfer thread finish before the proxy stops
    assert os.listdir(tmp_path / "cache" / "objects") == []


def test_concurrent_prefix_pulls_share_one_download(tmp_path: Path, proxy: S3Proxy, bucket: str, s3: Any) -> None:
    import threading

    for i in range(20):
        s3.put_object(Bucket=bucket, Key=f"many/part-{i:02d}.bin", Body=bytes([i]) * 2000)
    results: dict[str, Any] = {}
    with make_puller(tmp_path, storage_config(tmp_path, proxy, bucket)) as puller:
        threads = [threading.Thread(target=lambda m=m: results.__setitem__(m, puller.pull(m, "many", "localMinIO")))
                   for m in ("a", "b", "c", "d")]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert len({r.path for r in results.values()}) == 1 and len(results) == 4
        assert all(n == 1 for n in proxy.state.object_gets.values()) and len(proxy.state.object_gets) == 20
        assert len(tree(results["a"].path)) == 20


def test_custom_ca_for_an_https_endpoint(tmp_path: Path, moto: MotoS3, bucket: str, s3: Any) -> None:
    from tests.puller_servers import make_tls

    tls = make_tls(tmp_path)
    s3.put_object(Bucket=bucket, Key="tls/model.onnx", Body=b"over-tls")
    with S3Proxy(moto.url, tls=tls.server_context) as https_proxy:
        sc = storage_config(tmp_path, https_proxy, bucket, certificate=tls.ca_pem)
        assert https_proxy.url.startswith("https://localhost:")
        with make_puller(tmp_path, sc, max_attempts=1) as puller:
            assert puller.pull("m", "tls/model.onnx", "localMinIO").path.read_bytes() == b"over-tls"
            no_ca = json.dumps({"storage_key": "localMinIO", "storage_params": {"certificate": ""}})
            with pytest.raises(PullError) as info:
                puller.pull("m2", "tls/model.onnx", no_ca)
            assert info.value.reason == "unavailable" and not info.value.retryable
            assert "TLS verification" in info.value.message
