"""Payload processors (mesh/payloads.py): ModelMesh's MM_PAYLOAD_PROCESSORS
URIs, CloudEvents POSTed to a loopback endpoint, log lines, and a sink that
is slow, blocked or down never holding up a request."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import logging
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
import tritonclient.grpc as triton
from prometheus_client import Counter, CollectorRegistry

from mesh.etcd_process import free_port
from mesh.logs import make_handler
from mesh.payloads import HttpSink, LogSink, Match, Payload, PayloadProcessors, parse_processors
from protos import grpc_predict_v2_pb2 as v2
from tests.helpers import register, wait_for


class Collector:
    """A loopback HTTP endpoint that keeps every POST; `blocked` ones wait
    (until the test ends) before answering, as a hung consumer would."""

    def __init__(self, blocked: bool = False) -> None:
        self.posts: list[tuple[str, dict[str, str], bytes]] = []
        self.release = threading.Event()
        if not blocked:
            self.release.set()
        collector = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                collector.posts.append((self.path, {k.lower(): v for k, v in self.headers.items()}, body))
                collector.release.wait(30)
                self.send_response(200)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(10)


@pytest.fixture
def collector() -> Iterator[Collector]:
    c = Collector()
    yield c
    c.close()


@pytest.fixture
def blocked_collector() -> Iterator[Collector]:
    c = Collector(blocked=True)
    yield c
    c.close()


def infer(client: triton.InferenceServerClient, model_id: str, request_id: str = "") -> np.ndarray:
    inp = triton.InferInput("x", [1, 64], "FP32")
    inp.set_data_from_numpy(np.full((1, 64), 0.5, np.float32))
    return client.infer(model_id, [inp], request_id=request_id).as_numpy("y")


def dropped(sidecar, processor: str, reason: str) -> float:
    value = sidecar.metrics.registry.get_sample_value(
        "mmesh_payloads_dropped_total", {"processor": processor, "reason": reason}
    )
    return value or 0.0


# ---- configuration ---------------------------------------------------------------


def test_modelmesh_uris_parse_into_sinks_and_filters():
    parsed = parse_processors(
        "logger://*  logger:///*?m1#ModelInfer\thttp://collector:8080/consumer/kserve/v2?m2 https://h/x#predict",
        source="/mmesh/instances/i",
    )
    kinds = [type(sink) for sink, _ in parsed]
    assert kinds == [LogSink, LogSink, HttpSink, HttpSink]
    assert [m for _, m in parsed] == [Match(), Match("m1", "ModelInfer"), Match("m2"), Match(None, "predict")]
    assert parsed[2][0].url == "http://collector:8080/consumer/kserve/v2"  # query and fragment are filters
    payload = Payload("r", "m1", "inference.GRPCInferenceService/ModelInfer", "request", None)
    assert Match("m1", "ModelInfer")(payload) and Match(None, "inference.GRPCInferenceService/ModelInfer")(payload)
    assert not Match("m2")(payload) and not Match(None, "predict")(payload)
    with pytest.raises(ValueError):
        parse_processors("kafka://broker/topic", source="s")
    assert PayloadProcessors.build("", sample_rate=1, queue_size=1, dropped=None, source="s") is None  # off by default


def test_sampling_decides_once_per_request_pair():
    registry = CollectorRegistry()
    counter = Counter("dropped", "", ["processor", "reason"], registry=registry)
    rolls = iter([0.1, 0.9, 0.2, 0.8])
    processors = PayloadProcessors.build(
        "logger://*", sample_rate=0.5, queue_size=100, dropped=counter, source="s"
    )
    processors._rng = lambda: next(rolls)
    queue = processors.processors[0]._queue

    async def four() -> None:
        async def answer() -> str:
            return "response"

        for n in range(4):
            await processors.observe("m", "M", "", b"x", answer)

    asyncio.run(four())
    kinds = []
    while not queue.empty():
        kinds.append(queue.get_nowait().kind)
    assert kinds == ["request", "response"] * 2  # two of four sampled, each with both halves


def test_off_by_default(start_sidecar):
    assert start_sidecar().dataplane.payloads is None


# ---- against a sidecar -----------------------------------------------------------


def test_http_sink_posts_cloudevents_with_request_and_response(start_sidecar, models_dir, collector: Collector):
    sidecar = start_sidecar(payload_processors=f"{collector.url}/consumer/kserve/v2")
    register(sidecar.address, "m", models_dir / "dense-0")
    client = triton.InferenceServerClient(sidecar.address)
    outputs = {f"req-{n}": infer(client, "m", f"req-{n}") for n in range(3)}
    wait_for(lambda: len(collector.posts) == 6, what="six posts")

    by_id: dict[str, dict[str, tuple[dict, bytes]]] = {}
    for path, headers, body in collector.posts:
        assert path == "/consumer/kserve/v2"
        assert headers["ce-specversion"] == "1.0" and headers["ce-modelid"] == "m"
        assert headers["ce-source"] == f"/mmesh/instances/{sidecar.settings.instance_id}"
        assert headers["ce-method"] == "inference.GRPCInferenceService/ModelInfer"
        assert headers["content-type"] == "application/x-protobuf" and headers["ce-time"]
        kind = {"org.kubeflow.serving.inference.request": "request", "org.kubeflow.serving.inference.response": "response"}[headers["ce-type"]]
        by_id.setdefault(headers["ce-id"], {})[kind] = (headers, body)
    assert set(by_id) == set(outputs)  # request and response linked by the request id
    for request_id, pair in by_id.items():
        request = v2.ModelInferRequest.FromString(pair["request"][1])
        assert request.id == request_id and request.model_name == "m"
        assert list(request.inputs[0].shape) == [1, 64]
        response = v2.ModelInferResponse.FromString(pair["response"][1])
        assert pair["response"][0]["ce-status"] == "OK"
        got = np.frombuffer(response.raw_output_contents[0], np.float32).reshape(1, 64)
        np.testing.assert_array_equal(got, outputs[request_id])


def test_a_blocked_or_down_sink_never_holds_up_requests(start_sidecar, models_dir, blocked_collector: Collector):
    blocked = start_sidecar(payload_processors=blocked_collector.url, payload_queue_size=2)
    down = start_sidecar(payload_processors=f"http://127.0.0.1:{free_port()}/gone")
    for sidecar in (blocked, down):
        register(sidecar.address, "m", models_dir / "dense-1")
        client = triton.InferenceServerClient(sidecar.address)
        for n in range(30):
            infer(client, "m", f"r{n}")  # each completes, with the sink stuck (or refusing)
    # the blocked endpoint still holds the one POST it got; everything beyond the queue was dropped
    assert len(blocked_collector.posts) == 1 and not blocked_collector.release.is_set()
    assert dropped(blocked, "http", "queue_full") >= 60 - 1 - 2
    wait_for(lambda: dropped(down, "http", "send_failed") == 60, what="failed posts counted")
    assert dropped(down, "http", "queue_full") == 0


def test_log_sink_lines_filters_and_one_record_per_request(start_sidecar, models_dir):
    stream = io.StringIO()
    handler = make_handler("json", stream)
    payload_log = logging.getLogger("mesh.payloads")
    payload_log.addHandler(handler)
    payload_log.setLevel(logging.INFO)
    try:
        spec = "logger:///*?watched#ModelInfer"
        a = start_sidecar(payload_processors=spec, payload_log_data=True)
        b = start_sidecar(payload_processors=spec, payload_log_data=True)
        wait_for(lambda: len(a.instances) == 2 and len(b.instances) == 2, what="instances")
        register(a.address, "watched", models_dir / "dense-2")
        register(a.address, "ignored", models_dir / "dense-3")
        infer(triton.InferenceServerClient(b.address), "watched", "first")  # loads on b
        infer(triton.InferenceServerClient(a.address), "watched", "second")  # enters at a, forwarded to b
        infer(triton.InferenceServerClient(a.address), "ignored", "third")
        wait_for(lambda: len(stream.getvalue().splitlines()) >= 4, what="payload lines")
    finally:
        payload_log.removeHandler(handler)
        payload_log.setLevel(logging.NOTSET)
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    # "ignored" is filtered out; the forwarded hop is not recorded twice
    assert sorted((d["request_id"], d["kind"]) for d in lines) == [
        ("first", "request"), ("first", "response"), ("second", "request"), ("second", "response")
    ]
    request, response = (next(d for d in lines if d["request_id"] == "second" and d["kind"] == k) for k in ("request", "response"))
    assert request["instance_id"] == a.settings.instance_id and request["event"] == "payload"
    assert request["model_id"] == "watched" and request["method"] == "inference.GRPCInferenceService/ModelInfer"
    assert request["tensors"] == [{"name": "x", "datatype": "FP32", "shape": [1, 64]}]
    assert response["tensors"] == [{"name": "y", "datatype": "FP32", "shape": [1, 64]}] and response["status"] == "OK"
    sent = v2.ModelInferRequest.FromString(base64.b64decode(request["data_b64"]))
    assert request["size_bytes"] == sent.ByteSize() and sent.id == "second"
