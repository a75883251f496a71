"""REST v2 on a real sidecar (real etcd, real ONNX Runtime): tritonclient.http
with JSON and binary tensors, every datatype over plain HTTP, the error
statuses, vModel names, metrics, the server's life cycle; and the pure JSON
tensor codec under hypothesis."""

from __future__ import annotations

import json
import math
import socket
import struct
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.http as triton_http
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from tritonclient.utils import serialize_byte_tensor

from mesh.etcd_process import free_port
from mesh.examples import make_identity_model
from mesh.rest_codec import array_to_json, json_to_array
from mesh.rest_infer import HEADER_LENGTH, OutputFormat, parse_infer_request, render_infer_response
from mesh.settings import MeshSettings
from mesh.sidecar import Sidecar
from protos import grpc_predict_v2_pb2 as v2
from protos import model_mesh_pb2 as mm
from protos.tensor_codec import DATATYPE_TO_DTYPE, decode_inputs, encode_outputs
from tests.helpers import management, register

# every v2 datatype a model can take through ONNX Runtime (BF16 is covered by
# the codec tests: ORT's Python API does not take ml_dtypes' bfloat16)
DATATYPES = [dt for dt in DATATYPE_TO_DTYPE if dt != "BF16"]


@pytest.fixture(scope="module")
def identity_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One Identity model per datatype: id-fp16, id-bytes, …"""
    root = tmp_path_factory.mktemp("identity")
    for datatype in DATATYPES:
        make_identity_model(root / f"id-{datatype.lower()}" / "model.onnx", datatype)
    return root


@pytest.fixture
def mesh(start_sidecar, models_dir):
    sidecar = start_sidecar(rest_port=free_port())
    register(sidecar.address, "add", models_dir / "add")
    register(sidecar.address, "echo", models_dir / "echo")
    return sidecar


@pytest.fixture
def http(mesh):
    with httpx.Client(base_url=f"http://127.0.0.1:{mesh.rest_port}", timeout=60) as client:
        yield client


@pytest.fixture
def triton(mesh):
    client = triton_http.InferenceServerClient(f"127.0.0.1:{mesh.rest_port}", network_timeout=60)
    yield client
    client.close()


def sample(datatype: str, shape: tuple[int, int] = (2, 3)) -> np.ndarray:
    """Values that exercise each datatype's edges: extremes, signs, fractions, Unicode."""
    count = shape[0] * shape[1]
    dtype = DATATYPE_TO_DTYPE[datatype]
    if datatype == "BYTES":
        words = ["héllo", "", "wörld ✓", "x" * 40, "tab\tquote\"", "日本"]
        return np.array([w.encode() for w in (words * count)[:count]], dtype=object).reshape(shape)
    if datatype == "BOOL":
        return (np.arange(count) % 2 == 0).reshape(shape)
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        values = [info.min, info.max, 0, 1, info.max // 3, info.min // 7 if info.min else 2]
        return np.array((values * count)[:count], dtype=dtype).reshape(shape)
    values = [0.5, -2.25, 1e-3, 65504.0 if datatype == "FP16" else 1e30, -0.0, 3.140625]
    return np.array((values * count)[:count], dtype=dtype).reshape(shape)


def json_data(array: np.ndarray) -> list:
    """A numpy array as nested JSON data (BYTES as text)."""
    if array.dtype == object:
        return np.vectorize(lambda b: b.decode(), otypes=[object])(array).tolist()
    return array.tolist()


def raw_bytes(array: np.ndarray) -> bytes:
    """The binary extension's bytes, written independently of the server's codec."""
    if array.dtype == object:
        serialized = serialize_byte_tensor(array)  # a 0-d object array holding the bytes
        return serialized.item() if serialized.size else b""
    return np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()


def result_array(response: httpx.Response, name: str = "y") -> np.ndarray:
    """Decode a REST response (JSON or binary) with tritonclient's own decoder."""
    length = response.headers.get(HEADER_LENGTH)
    result = triton_http.InferResult.from_response_body(
        response.content, header_length=int(length) if length else None
    )
    return result.as_numpy(name)


def as_bytes(array: np.ndarray) -> list[bytes]:
    """BYTES elements as bytes (tritonclient gives JSON strings back as str)."""
    return [v.encode() if isinstance(v, str) else v for v in array.ravel().tolist()]


def assert_same(got: np.ndarray, want: np.ndarray) -> None:
    assert got.shape == want.shape
    if want.dtype == object:
        assert as_bytes(got) == as_bytes(want)
    else:
        assert got.dtype == want.dtype
        np.testing.assert_array_equal(got, want)


# --------------------------------------------------------------------------- tritonclient.http


def test_server_and_model_metadata_and_readiness(triton, http):
    assert triton.is_server_live()
    assert triton.is_server_ready()
    meta = triton.get_server_metadata()
    assert meta["name"] == "mmesh" and "binary_tensor_data" in meta["extensions"]
    assert triton.is_model_ready("add")
    model = triton.get_model_metadata("add")
    assert model["name"] == "add"
    assert model["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}]
    assert model["outputs"] == [{"name": "y", "datatype": "FP32", "shape": [-1, 4]}]
    # versions are accepted and passed through (the mesh keeps one per model)
    assert http.get("/v2/models/add/versions/1").json()["name"] == "add"
    assert http.get("/v2/models/add/versions/1/ready").json() == {"name": "add", "ready": True}
    assert http.get("/v2/health/live").json() == {"live": True}


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_infer_via_tritonclient_http(triton, binary):
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    inp = triton_http.InferInput("x", [3, 4], "FP32")
    inp.set_data_from_numpy(x, binary_data=binary)
    out = triton_http.InferRequestedOutput("y", binary_data=binary)
    result = triton.infer("add", [inp], outputs=[out], request_id="r-1", model_version="1")
    np.testing.assert_array_equal(result.as_numpy("y"), x + 1)
    response = result.get_response()
    assert (response["id"], response["model_name"], response["model_version"]) == ("r-1", "add", "1")
    assert ("data" in response["outputs"][0]) is not binary

    text = np.array([b"hello", "wörld".encode(), b""], dtype=object)
    inp = triton_http.InferInput("text", [3], "BYTES")
    inp.set_data_from_numpy(text, binary_data=binary)
    result = triton.infer("echo", [inp], outputs=[triton_http.InferRequestedOutput("echo", binary_data=binary)])
    assert as_bytes(result.as_numpy("echo")) == text.tolist()


def test_tritonclient_default_asks_binary_outputs(triton):
    """Without `outputs` tritonclient sends `binary_data_output: true`."""
    inp = triton_http.InferInput("x", [1, 4], "FP32")
    inp.set_data_from_numpy(np.ones((1, 4), np.float32), binary_data=False)
    result = triton.infer("add", [inp])
    assert result.get_response()["outputs"][0]["parameters"] == {"binary_data_size": 16}
    np.testing.assert_array_equal(result.as_numpy("y"), np.full((1, 4), 2, np.float32))


# --------------------------------------------------------------------------- every datatype


def test_every_datatype_round_trips_as_json_and_binary(mesh, http, identity_dir):
    for datatype in DATATYPES:
        register(mesh.address, f"id-{datatype.lower()}", identity_dir / f"id-{datatype.lower()}")
    for datatype in DATATYPES:
        url = f"/v2/models/id-{datatype.lower()}/infer"
        x = sample(datatype)
        tensor = {"name": "x", "datatype": datatype, "shape": list(x.shape)}

        response = http.post(url, json={"inputs": [{**tensor, "data": json_data(x)}]})
        assert response.status_code == 200, (datatype, response.text)
        output = response.json()["outputs"][0]
        assert (output["name"], output["datatype"], output["shape"]) == ("y", datatype, [2, 3])
        assert_same(result_array(response), x)
        want_flat = json_data(x.ravel())  # JSON outputs are flat, row-major
        assert output["data"] == want_flat, datatype

        raw = raw_bytes(x)
        header = json.dumps({
            "inputs": [{**tensor, "parameters": {"binary_data_size": len(raw)}}],
            "outputs": [{"name": "y", "parameters": {"binary_data": True}}],
        }).encode()
        response = http.post(
            url, content=header + raw,
            headers={HEADER_LENGTH: str(len(header)), "Content-Type": "application/octet-stream"},
        )
        assert response.status_code == 200, (datatype, response.text)
        assert response.headers["Content-Type"] == "application/octet-stream"
        length = int(response.headers[HEADER_LENGTH])
        body = json.loads(response.content[:length])
        assert body["outputs"][0]["parameters"]["binary_data_size"] == len(raw)
        assert response.content[length:] == raw, datatype  # same bytes back
        assert_same(result_array(response), x)


def test_megabyte_tensor_as_json_and_binary(mesh, http, identity_dir):
    """A 1 MB FP32 tensor (converted on a worker thread) both ways."""
    register(mesh.address, "id-fp32", identity_dir / "id-fp32")
    x = np.random.default_rng(0).standard_normal((1, 262144)).astype(np.float32)
    tensor = {"name": "x", "datatype": "FP32", "shape": [1, 262144]}
    response = http.post("/v2/models/id-fp32/infer", json={"inputs": [{**tensor, "data": x.ravel().tolist()}]})
    assert response.status_code == 200, response.text[:500]
    np.testing.assert_array_equal(np.array(response.json()["outputs"][0]["data"], np.float32), x.ravel())
    header = json.dumps({"inputs": [{**tensor, "parameters": {"binary_data_size": x.nbytes}}],
                         "parameters": {"binary_data_output": True}}).encode()
    response = http.post("/v2/models/id-fp32/infer", content=header + x.tobytes(), headers={HEADER_LENGTH: str(len(header))})
    assert response.status_code == 200, response.text[:500]
    assert_same(result_array(response), x)


def test_non_utf8_bytes_output_falls_back_to_binary():
    """JSON strings cannot carry bytes that are not UTF-8: that output goes
    binary even when JSON was asked for; the others stay JSON. (Pure: ONNX
    Runtime's string tensors are text, so no model here returns such bytes.)"""
    blob = b"\xff\xfe\x00raw"
    response = v2.ModelInferResponse(model_name="m")
    encode_outputs(response, {"blob": np.array([blob], dtype=object), "n": np.array([1, 2], np.int32)}, raw=True)
    rendered = render_infer_response(response, OutputFormat())
    assert rendered.header_length is not None and rendered.content_type == "application/octet-stream"
    header = json.loads(rendered.body[: rendered.header_length])
    assert [o.get("data") for o in header["outputs"]] == [None, [1, 2]]
    assert rendered.body[rendered.header_length :] == struct.pack("<I", len(blob)) + blob
    result = triton_http.InferResult.from_response_body(rendered.body, header_length=rendered.header_length)
    assert result.as_numpy("blob").tolist() == [blob]


# --------------------------------------------------------------------------- errors


def post_error(http: httpx.Client, url: str, status: int, **kwargs) -> str:
    response = http.post(url, **kwargs)
    assert response.status_code == status, (url, response.status_code, response.text)
    assert response.headers["Content-Type"].startswith("application/json")
    return response.json()["error"]


def test_errors_map_to_http_statuses(http):
    add_x = {"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}
    assert "nobody" in post_error(http, "/v2/models/nobody/infer", 404, json={"inputs": [add_x]})
    for url in ("/v2/models/nobody", "/v2/models/nobody/ready"):
        response = http.get(url)
        assert response.status_code == 404 and "nobody" in response.json()["error"]

    assert "JSON" in post_error(http, "/v2/models/add/infer", 400, content=b'{"inputs": [')
    assert "JSON object" in post_error(http, "/v2/models/add/infer", 400, json=[1, 2])
    cases = {
        "wrong shape": ({**add_x, "shape": [1, 5]}, "needs 5 elements"),
        "nesting": ({**add_x, "shape": [2, 2], "data": [[1, 2], [3]]}, "shape [2, 2]"),
        "datatype mismatch": ({**add_x, "datatype": "INT32"}, "does not match"),
        "unknown datatype": ({**add_x, "datatype": "FLOAT99"}, "FLOAT99"),
        "non-numeric": ({**add_x, "data": [1, 2, "three", 4]}, "'three'"),
        "bool as number": ({**add_x, "data": [1, 2, True, 4]}, "True"),
        "no data": ({k: v for k, v in add_x.items() if k != "data"}, "neither data"),
        "negative dim": ({**add_x, "shape": [-1, 4]}, "non-negative"),
    }
    for label, (tensor, expected) in cases.items():
        message = post_error(http, "/v2/models/add/infer", 400, json={"inputs": [tensor]})
        assert "'x'" in message and expected in message, (label, message)

    header = json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4],
                                     "parameters": {"binary_data_size": 16}}]}).encode()
    short = post_error(http, "/v2/models/add/infer", 400, content=header + b"\0" * 8, headers={HEADER_LENGTH: str(len(header))})
    assert "runs past" in short
    extra = post_error(http, "/v2/models/add/infer", 400, content=header + b"\0" * 20, headers={HEADER_LENGTH: str(len(header))})
    assert "after the inputs" in extra
    assert HEADER_LENGTH in post_error(http, "/v2/models/add/infer", 400, content=header, headers={HEADER_LENGTH: "999"})
    wrong_size = header.replace(b"16", b"12")
    message = post_error(http, "/v2/models/add/infer", 400, content=wrong_size + b"\0" * 12,
                         headers={HEADER_LENGTH: str(len(wrong_size))})
    assert "'x'" in message and "needs 16 bytes" in message

    response = http.get("/v2/models/add/infer")
    assert response.status_code == 405 and "error" in response.json()
    response = http.get("/v3/nothing")
    assert response.status_code == 404 and "error" in response.json()
    # and the model still serves good requests afterwards
    response = http.post("/v2/models/add/infer", json={"inputs": [add_x]})
    assert response.json()["outputs"][0]["data"] == [2, 3, 4, 5]


def test_capacity_and_failed_load_statuses(start_sidecar, models_dir):
    size_of_big = (models_dir / "big" / "model.onnx").stat().st_size
    sidecar = start_sidecar(capacity_bytes=size_of_big // 2, rest_port=free_port())
    register(sidecar.address, "big", models_dir / "big")
    register(sidecar.address, "not-onnx", models_dir / "not-onnx")
    x = {"name": "x", "datatype": "FP32", "shape": [1, 512], "data": [0.0] * 512}
    with httpx.Client(base_url=f"http://127.0.0.1:{sidecar.rest_port}", timeout=60) as http:
        assert "capacity" in post_error(http, "/v2/models/big/infer", 503, json={"inputs": [x]})
        assert "ONNX" in post_error(http, "/v2/models/not-onnx/infer", 422, json={"inputs": [x]})
        response = http.get("/v2/models/not-onnx/ready")  # in its failure back-off: not ready
        assert response.status_code == 400 and response.json() == {"name": "not-onnx", "ready": False}


# --------------------------------------------------------------------------- routing, metrics


def test_vmodel_names_and_routing_headers(mesh, http):
    management(mesh.address).setVModel(mm.SetVModelRequest(vModelId="adder", targetModelId="add"), timeout=60)
    body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}]}
    response = http.post("/v2/models/adder/infer", json=body)
    assert response.status_code == 200, response.text
    assert response.json()["outputs"][0]["data"] == [2, 3, 4, 5]
    assert http.get("/v2/models/adder").json()["name"] == "adder"
    # headers win over the path, as over gRPC's model_name
    response = http.post("/v2/models/anything/infer", json=body, headers={"mm-vmodel-id": "adder"})
    assert response.status_code == 200, response.text
    response = http.post("/v2/models/anything/infer", json=body, headers={"MM-Model-Id": "add"})
    assert response.status_code == 200, response.text
    assert post_error(http, "/v2/models/add/infer", 404, json=body, headers={"mm-model-id": "missing"})


def test_rest_calls_are_counted_like_grpc_calls(mesh, http):
    def count(method: str, code: str) -> float:
        labels = {"method": method, "code": code}
        return mesh.metrics.registry.get_sample_value("modelmesh_api_request_milliseconds_count", labels) or 0.0

    body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}]}
    for _ in range(3):
        assert http.post("/v2/models/add/infer", json=body).status_code == 200
    http.post("/v2/models/nobody/infer", json=body)
    http.get("/v2/models/add")
    assert count("ModelInfer", "OK") == 3
    assert count("ModelInfer", "NOT_FOUND") == 1
    assert count("ModelMetadata", "OK") == 1
    # sizes are observed once the model is named, as for gRPC: the 404 counts too
    assert mesh.metrics.registry.get_sample_value("modelmesh_request_size_bytes_count") == 4


# --------------------------------------------------------------------------- life cycle


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def clash_settings(etcd, name: str, **ports: int) -> MeshSettings:
    ports = {"grpc_port": 0, "metrics_port": 0, **ports}
    return MeshSettings(instance_id=name, etcd_endpoints=etcd.endpoint, kv_prefix=f"test-{name}", device="cpu", **ports)


def test_stop_closes_rest_and_probe_ports(loop_thread, etcd):
    settings = clash_settings(etcd, "rest-stop", rest_port=free_port(), probe_port=free_port())
    sidecar = loop_thread.run(Sidecar(settings).start())
    try:
        assert port_open(sidecar.rest_port) and port_open(sidecar.probe_port)
        assert httpx.get(f"http://127.0.0.1:{sidecar.rest_port}/v2/health/ready", timeout=10).json() == {"ready": True}
    finally:
        loop_thread.run(sidecar.stop(grace_s=0.5))
    assert not port_open(sidecar.rest_port) and not port_open(sidecar.probe_port)


def test_taken_rest_port_fails_the_start_before_anything_runs(loop_thread, etcd):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        probe_port = free_port()
        sidecar = Sidecar(clash_settings(etcd, "rest-clash", rest_port=taken.getsockname()[1], probe_port=probe_port))
        with pytest.raises(OSError):
            loop_thread.run(sidecar.start())
    assert not port_open(probe_port)  # claimed first, released again
    assert not hasattr(sidecar, "runtime") and not hasattr(sidecar, "view")  # nothing else was started


def test_failure_late_in_start_stops_the_http_servers(loop_thread, etcd):
    """The metrics port (bound last) is taken: the REST and probe servers,
    already serving by then, are stopped with everything else."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        rest_port, probe_port = free_port(), free_port()
        sidecar = Sidecar(clash_settings(
            etcd, "late-clash", metrics_port=taken.getsockname()[1], rest_port=rest_port, probe_port=probe_port
        ))
        with pytest.raises(OSError):
            loop_thread.run(sidecar.start())
    assert not port_open(rest_port) and not port_open(probe_port)
    assert sidecar.view._task is None and sidecar._rest_server is None and sidecar._probe_server is None


# --------------------------------------------------------------------------- the pure codec


BF16 = DATATYPE_TO_DTYPE.get("BF16")


@st.composite
def tensors(draw) -> tuple[str, np.ndarray]:
    datatype = draw(st.sampled_from(sorted(DATATYPE_TO_DTYPE)))
    shape = draw(hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=4))
    if datatype == "BYTES":
        count = math.prod(shape)
        words = draw(st.lists(st.text(max_size=8), min_size=count, max_size=count))
        array = np.empty(count, dtype=object)
        array[:] = [w.encode("utf-8", "surrogatepass") for w in words]
        return datatype, array.reshape(shape)
    dtype = DATATYPE_TO_DTYPE[datatype]
    if datatype == "BF16":  # hypothesis has no bfloat16 strategy: draw FP32 and round
        return datatype, draw(hnp.arrays(np.float32, shape)).astype(BF16)
    return datatype, draw(hnp.arrays(dtype, shape))


def same_values(got: np.ndarray, want: np.ndarray) -> bool:
    if want.dtype == object:
        return got.shape == want.shape and as_bytes(got) == as_bytes(want)
    if want.dtype.kind == "f" or want.dtype == BF16:
        a, b = got.astype(np.float64), want.astype(np.float64)
        return got.shape == want.shape and bool(np.all((a == b) | (np.isnan(a) & np.isnan(b))))
    return got.dtype == want.dtype and np.array_equal(got, want)


def _utf8(array: np.ndarray) -> bool:
    try:
        array_to_json("t", array)
        return True
    except ValueError:
        return False


@settings(max_examples=300, deadline=None)
@given(tensors(), st.booleans())
def test_json_codec_round_trip(tensor, nested):
    """numpy -> JSON text -> numpy, for every datatype and shape, flat or nested."""
    datatype, array = tensor
    if not _utf8(array):  # a lone surrogate drawn as text has no UTF-8 form
        return
    data = array_to_json("t", array)
    if nested and array.ndim > 1:
        data = np.array(data, dtype=object).reshape(array.shape).tolist()
    text = json.dumps({"data": data})
    back = json_to_array("t", datatype, list(array.shape), json.loads(text)["data"])
    assert same_values(back, array)


@settings(max_examples=150, deadline=None)
@given(st.lists(tensors(), min_size=1, max_size=3), st.lists(st.booleans(), min_size=3, max_size=3))
def test_infer_messages_round_trip(tensor_list, binary):
    """REST body -> ModelInferRequest -> decoded inputs, and a response with
    the same tensors -> REST body -> tritonclient's decoder, JSON and binary."""
    tensors_ = {f"t{i}": t for i, t in enumerate(tensor_list) if _utf8(t[1])}
    if not tensors_:
        return
    inputs, chunks = [], []
    for (name, (datatype, array)), as_binary in zip(tensors_.items(), binary):
        spec = {"name": name, "datatype": datatype, "shape": list(array.shape), "parameters": {"p": name}}
        if as_binary:
            chunk = raw_bytes(array) if datatype != "BF16" else array.view(np.uint16).astype("<u2").tobytes()
            spec["parameters"]["binary_data_size"] = len(chunk)
            chunks.append(chunk)
        else:
            spec["data"] = array_to_json(name, array)
        inputs.append(spec)
    header = json.dumps({"id": "q", "inputs": inputs, "parameters": {"binary_data_output": binary[0]}}).encode()
    request, output_format = parse_infer_request(header + b"".join(chunks), str(len(header)) if chunks else None, "m")
    assert request.id == "q" and output_format == OutputFormat(binary[0], {})
    decoded = decode_inputs(request)
    for name, (_, array) in tensors_.items():
        assert same_values(decoded[name], array)
        assert request.inputs[list(tensors_).index(name)].parameters["p"].string_param == name

    response = v2.ModelInferResponse(model_name="m", id="q")
    encode_outputs(response, {name: array for name, (_, array) in tensors_.items()}, raw=binary[1])
    response.parameters["seen"].bool_param = True
    rendered = render_infer_response(response, OutputFormat(binary[2], {}))
    header_json = json.loads(rendered.body[: rendered.header_length] if rendered.header_length else rendered.body)
    assert header_json["id"] == "q" and header_json["parameters"] == {"seen": True}
    if "BF16" in {dt for dt, _ in tensors_.values()}:
        return  # tritonclient's decoder has no BF16
    result = triton_http.InferResult.from_response_body(rendered.body, header_length=rendered.header_length)
    for name, (_, array) in tensors_.items():
        assert same_values(result.as_numpy(name).reshape(array.shape), array)


def test_parameters_pass_through_both_ways():
    body = json.dumps({
        "parameters": {"flag": True, "n": -3, "big": 2**63, "x": 0.5, "s": "v", "binary_data_output": False},
        "inputs": [{"name": "a", "datatype": "INT32", "shape": [1], "data": [7], "parameters": {"k": 1}}],
        "outputs": [{"name": "b", "parameters": {"binary_data": True, "top": 3}}],
    }).encode()
    request, output_format = parse_infer_request(body, None, "m", "2")
    assert request.model_version == "2"
    params = {k: p.WhichOneof("parameter_choice") for k, p in request.parameters.items()}
    assert params == {"flag": "bool_param", "n": "int64_param", "big": "uint64_param", "x": "double_param", "s": "string_param"}
    assert request.inputs[0].parameters["k"].int64_param == 1
    assert request.outputs[0].name == "b" and request.outputs[0].parameters["top"].int64_param == 3
    assert "binary_data" not in request.outputs[0].parameters
    assert output_format.is_binary("b") and not output_format.is_binary("other")
    for bad in ({"p": [1]}, {"p": {"q": 1}}, {"p": None}, {"p": 2**64}):
        with pytest.raises(ValueError, match="'p'"):
            parse_infer_request(json.dumps({"inputs": [], "parameters": bad}).encode(), None, "m")
