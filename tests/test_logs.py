"""Structured logs (mesh/logs.py): JSON lines with the request context, one
line per load / failed load / eviction with sizes and times, per-request
lines only when asked for, and no secret in any of it."""

from __future__ import annotations

import contextvars
import io
import json
import logging
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as triton
from tritonclient.utils import InferenceServerException

from mesh.logs import JsonFormatter, bind_request, make_handler
from protos import model_mesh_pb2 as mm
from runtime_adapter.runtimes.onnx import SESSION_OVERHEAD_BYTES
from tests.helpers import management, register

SECRET = "log-test-secret-never-in-any-line"

Lines = Callable[[], list[dict]]


@pytest.fixture
def json_lines() -> Iterator[Lines]:
    """Everything logged (DEBUG and up) while the test runs, parsed: every
    line must be one JSON object."""
    stream = io.StringIO()
    handler = make_handler("json", stream)
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield lambda: [json.loads(line) for line in stream.getvalue().splitlines()]
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


def events(lines: list[dict], event: str, model_id: str | None = None) -> list[dict]:
    return [d for d in lines if d.get("event") == event and (model_id is None or d.get("model_id") == model_id)]


def infer(client: triton.InferenceServerClient, model_id: str, **kwargs) -> np.ndarray:
    inp = triton.InferInput("x", [1, 64], "FP32")
    inp.set_data_from_numpy(np.ones((1, 64), np.float32))
    return client.infer(model_id, [inp], **kwargs).as_numpy("y")


def test_formatter_fields_context_and_extras():
    record = logging.LogRecord("mesh.x", logging.INFO, __file__, 1, "hello %s", ("there",), None)
    record.size_bytes = 5  # as `extra=` sets it
    handler = make_handler("json", io.StringIO())

    def in_a_request() -> None:
        bind_request("", {"x-request-id": "rid-7"}, "inst-9")
        for f in handler.filters:
            f.filter(record)

    contextvars.copy_context().run(in_a_request)  # the test thread's own context stays clean
    doc = json.loads(JsonFormatter().format(record))
    assert doc["message"] == "hello there" and doc["level"] == "INFO" and doc["logger"] == "mesh.x"
    assert doc["timestamp"].endswith("+00:00")
    assert doc["request_id"] == "rid-7" and doc["instance_id"] == "inst-9" and doc["size_bytes"] == 5
    with pytest.raises(ValueError):
        make_handler("yaml")  # type: ignore[arg-type]


def test_one_line_per_load_and_eviction_with_sizes_and_times(start_sidecar, models_dir, json_lines: Lines):
    size = max((models_dir / f"dense-{i}" / "model.onnx").stat().st_size for i in range(2)) + SESSION_OVERHEAD_BYTES
    sidecar = start_sidecar(capacity_bytes=int(size * 1.5))  # room for one: the second load evicts the first
    me = sidecar.settings.instance_id
    register(sidecar.address, "first", models_dir / "dense-0")
    register(sidecar.address, "second", models_dir / "dense-1")
    client = triton.InferenceServerClient(sidecar.address)
    infer(client, "first", headers={"x-request-id": "req-first"})
    infer(client, "first")  # a hit: no line
    infer(client, "second", request_id="req-second")  # the v2 request id
    lines = json_lines()

    for model_id, request_id in (("first", "req-first"), ("second", "req-second")):
        (load,) = events(lines, "load", model_id)
        assert load["level"] == "INFO" and load["logger"] == "mesh.loader"
        assert load["size_bytes"] > 0 and load["duration_ms"] > 0
        assert load["request_id"] == request_id and load["instance_id"] == me
        assert {"timestamp", "message"} <= set(load)
    (evicted,) = events(lines, "evict", "first")
    assert evicted["size_bytes"] == sidecar.view.get("first").size_bytes and evicted["duration_ms"] >= 0
    assert evicted["request_id"] == "req-second"  # the request whose load made room
    assert not events(lines, "unload") and not events(lines, "evict", "second")
    assert not events(lines, "request")  # per-request lines are off by default


def test_a_failed_load_is_one_warning_line(start_sidecar, models_dir, json_lines: Lines):
    sidecar = start_sidecar()
    register(sidecar.address, "broken", models_dir / "not-onnx")
    with pytest.raises(InferenceServerException):
        infer(triton.InferenceServerClient(sidecar.address), "broken")
    (failed,) = events(json_lines(), "load_failed", "broken")
    assert failed["level"] == "WARNING" and failed["error"] and failed["duration_ms"] >= 0 and "size_bytes" in failed
    assert not events(json_lines(), "load", "broken")


def test_request_lines_only_when_enabled(start_sidecar, models_dir, json_lines: Lines):
    quiet, chatty = start_sidecar(), start_sidecar(log_requests=True)
    for sidecar in (quiet, chatty):
        register(sidecar.address, "m", models_dir / "dense-2")
        client = triton.InferenceServerClient(sidecar.address)
        for n in range(3):
            infer(client, "m", request_id=f"{sidecar.settings.instance_id}-{n}")
        with pytest.raises(InferenceServerException):
            infer(client, "nope")
    lines = [d for d in events(json_lines(), "request") if d.get("method") == "ModelInfer"]
    assert {d["instance_id"] for d in lines} == {chatty.settings.instance_id}
    ok = [d for d in lines if d["code"] == "OK"]
    assert [d["request_id"] for d in ok] == [f"{chatty.settings.instance_id}-{n}" for n in range(3)]
    assert all(d["model_id"] == "m" and d["duration_ms"] > 0 for d in ok)
    (missing,) = [d for d in lines if d["code"] != "OK"]
    assert missing["code"] == "NOT_FOUND" and missing["model_id"] == "nope" and missing["request_id"]


def test_storage_secrets_never_logged(start_sidecar, moto, models_dir, tmp_path: Path, json_lines: Lines):
    bucket = f"logs-{uuid.uuid4().hex[:10]}"
    s3 = moto.client()
    s3.create_bucket(Bucket=bucket)
    s3.upload_file(str(models_dir / "add" / "model.onnx"), bucket, "models/add/model.onnx")
    config = tmp_path / "storage-config"
    config.mkdir()
    (config / "store").write_text(json.dumps({
        "type": "s3", "access_key_id": "test-key", "secret_access_key": SECRET,
        "endpoint_url": moto.url, "region": "us-east-1", "bucket": bucket,
    }))
    sidecar = start_sidecar(storage_config_dir=str(config), models_dir=str(tmp_path / "models"), log_requests=True)
    stub = management(sidecar.address)
    for model_id, path in (("stored", "models/add"), ("missing", "models/none")):
        key = json.dumps({"storage_key": "store", "storage_params": {"bucket": bucket}})
        stub.registerModel(mm.RegisterModelRequest(modelId=model_id, modelInfo=mm.ModelInfo(type="onnx", path=path, key=key)), timeout=30)
    client = triton.InferenceServerClient(sidecar.address)
    x = triton.InferInput("x", [1, 4], "FP32")
    x.set_data_from_numpy(np.array([[1, 2, 3, 4]], np.float32))
    np.testing.assert_allclose(client.infer("stored", [x]).as_numpy("y"), [[2, 3, 4, 5]])
    with pytest.raises(InferenceServerException):
        client.infer("missing", [x])
    lines = json_lines()
    assert events(lines, "load", "stored") and events(lines, "load_failed", "missing")
    assert not any(SECRET in json.dumps(d) for d in lines)


def test_rest_requests_carry_their_request_id(start_sidecar, models_dir, json_lines: Lines):
    """REST lines get the same context as gRPC ones: the body's `id`, else
    the `x-request-id` header."""
    import httpx

    from mesh.etcd_process import free_port

    sidecar = start_sidecar(log_requests=True, rest_port=free_port())
    register(sidecar.address, "m", models_dir / "dense-2")
    url = f"http://127.0.0.1:{sidecar.rest_port}/v2/models/m/infer"
    tensor = {"name": "x", "shape": [1, 64], "datatype": "FP32", "data": [1.0] * 64}
    with httpx.Client(timeout=30) as http:
        assert http.post(url, json={"id": "from-body", "inputs": [tensor]}).status_code == 200
        assert http.post(url, json={"inputs": [tensor]}, headers={"x-request-id": "from-header"}).status_code == 200
    lines = [d for d in events(json_lines(), "request") if d.get("method") == "ModelInfer"]
    assert [d["request_id"] for d in lines] == ["from-body", "from-header"]
    assert all(d["model_id"] == "m" for d in lines)
