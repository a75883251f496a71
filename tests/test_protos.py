"""Wire compatibility of our protos: generated modules up to date, the v2
`inference.*` messages and service against tritonclient's and the KServe
SDK's, and the `mmesh.*` SPI/management API against ModelMesh's published
protos (field numbers, names and types hardcoded from them)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import descriptor_pool
from google.protobuf.descriptor import Descriptor, FieldDescriptor, FileDescriptor

from protos import grpc_predict_v2_pb2 as ours
from protos import grpc_predict_v2_pb2_grpc as ours_grpc
from protos import mmesh_ext_pb2, model_mesh_pb2, model_mesh_pb2_grpc, model_runtime_pb2, model_runtime_pb2_grpc
from protos.descriptor_pool import POOL
from protos.generate import main as generate_main

triton = pytest.importorskip("tritonclient.grpc.service_pb2")
triton_grpc = pytest.importorskip("tritonclient.grpc.service_pb2_grpc")

REPO_ROOT = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------- helpers


def all_messages(file: FileDescriptor) -> dict[str, Descriptor]:
    """Every message of a file, nested ones included, by full name."""
    found: dict[str, Descriptor] = {}

    def visit(message: Descriptor) -> None:
        found[message.full_name] = message
        for nested in message.nested_types:
            visit(nested)

    for message in file.message_types_by_name.values():
        visit(message)
    return found


def field_signature(f: FieldDescriptor) -> tuple[str, int, int, str]:
    """(name, type, label, referenced type) — what decides a field's wire meaning."""
    ref = f.message_type.full_name if f.message_type else f.enum_type.full_name if f.enum_type else ""
    return (f.name, f.type, f.label, ref)


def fields_by_number(message: Descriptor) -> dict[int, tuple[str, int, int, str]]:
    return {f.number: field_signature(f) for f in message.fields}


class RecordingChannel:
    """Stands in for a grpc.Channel: records the method paths a stub asks for."""

    def __init__(self) -> None:
        self.paths: dict[str, dict[str, Any]] = {}

    def _record(self, kind: str):
        def make(path: str, request_serializer=None, response_deserializer=None, **_: Any) -> None:
            self.paths[path] = {"kind": kind, "response": response_deserializer}

        return make

    def __getattr__(self, name: str):
        if name in ("unary_unary", "unary_stream", "stream_unary", "stream_stream"):
            return self._record(name)
        raise AttributeError(name)


def stub_paths(stub_class: type) -> dict[str, dict[str, Any]]:
    channel = RecordingChannel()
    stub_class(channel)
    return channel.paths


# --------------------------------------------------------------------------- generated modules


def test_generated_modules_are_current(capsys: pytest.CaptureFixture[str]) -> None:
    assert generate_main(["--check"]) == 0
    assert "stale" not in capsys.readouterr().err


def test_generate_check_detects_a_stale_module(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    """The check is not vacuous: a module that differs is reported."""
    import protos.generate as generate

    fake_dir = tmp_path / "protos"
    fake_dir.mkdir()
    for proto in generate.proto_files():
        (fake_dir / proto.name).write_bytes(proto.read_bytes())
        for name in generate.generated_names(proto):
            (fake_dir / name).write_bytes((generate.PROTO_DIR / name).read_bytes())
    monkeypatch.setattr(generate, "REPO_ROOT", tmp_path)
    monkeypatch.setattr(generate, "PROTO_DIR", fake_dir)
    assert generate_main(["--check"]) == 0  # an exact copy is current
    (fake_dir / "model_mesh_pb2.py").write_text("# edited by hand\n")
    assert generate_main(["--check"]) == 1
    assert "model_mesh_pb2.py" in capsys.readouterr().err


# --------------------------------------------------------------------------- private descriptor pool


def test_our_modules_use_a_private_pool() -> None:
    default = descriptor_pool.Default()
    for module in (ours, model_runtime_pb2, model_mesh_pb2, mmesh_ext_pb2):
        assert module.DESCRIPTOR.pool is POOL
    assert POOL is not default
    assert triton.DESCRIPTOR.pool is default
    # both define inference.ModelInferRequest, each in its own pool
    assert POOL.FindMessageTypeByName("inference.ModelInferRequest").file.name == "protos/grpc_predict_v2.proto"
    assert default.FindMessageTypeByName("inference.ModelInferRequest").file.name == "grpc_service.proto"
    assert ours.ModelInferRequest is not triton.ModelInferRequest
    with pytest.raises(KeyError):
        default.FindMessageTypeByName("mmesh.LoadModelRequest")


def test_messages_cross_the_wire_between_ours_and_tritons() -> None:
    request = ours.ModelInferRequest(model_name="m", model_version="2", id="r")
    tensor = request.inputs.add(name="x", datatype="FP32", shape=[1, 2])
    tensor.parameters["p"].int64_param = 7
    request.outputs.add(name="y")
    request.parameters["priority"].uint64_param = 3
    request.raw_input_contents.append(b"\x00\x00\x80?\x00\x00\x00@")
    parsed = triton.ModelInferRequest.FromString(request.SerializeToString())
    assert (parsed.model_name, parsed.model_version, parsed.id) == ("m", "2", "r")
    assert [(t.name, t.datatype, list(t.shape)) for t in parsed.inputs] == [("x", "FP32", [1, 2])]
    assert parsed.inputs[0].parameters["p"].int64_param == 7
    assert [o.name for o in parsed.outputs] == ["y"]
    assert parsed.parameters["priority"].uint64_param == 3
    assert list(parsed.raw_input_contents) == [b"\x00\x00\x80?\x00\x00\x00@"]

    response = triton.ModelInferResponse(model_name="m", id="r")
    out = response.outputs.add(name="y", datatype="INT64", shape=[3])
    out.contents.int64_contents.extend([1, -2, 3])
    back = ours.ModelInferResponse.FromString(response.SerializeToString())
    assert back.outputs[0].name == "y"
    assert list(back.outputs[0].contents.int64_contents) == [1, -2, 3]
    assert back.SerializeToString() == response.SerializeToString()


def test_import_order_with_tritonclient_does_not_matter() -> None:
    """tritonclient first, then ours (this module imports ours first)."""
    snippet = (
        "import tritonclient.grpc.service_pb2 as t\n"
        "from protos import grpc_predict_v2_pb2 as o, model_runtime_pb2, model_mesh_pb2\n"
        "print(o.ModelInferRequest.DESCRIPTOR.full_name, t.ModelInferRequest.DESCRIPTOR.full_name)\n"
    )
    result = subprocess.run([sys.executable, "-c", snippet], cwd=REPO_ROOT, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["inference.ModelInferRequest", "inference.ModelInferRequest"]


# --------------------------------------------------------------------------- v2 vs tritonclient


OUR_V2 = all_messages(ours.DESCRIPTOR)
TRITON = all_messages(triton.DESCRIPTOR)
SUPERSET_OF_TRITON = [
    "inference.ModelInferRequest",
    "inference.ModelInferResponse",
    "inference.InferTensorContents",
    "inference.InferParameter",
    "inference.ModelMetadataResponse.TensorMetadata",
    "inference.RepositoryIndexRequest",
    "inference.RepositoryIndexResponse",
    "inference.RepositoryModelLoadRequest",
    "inference.RepositoryModelUnloadRequest",
]


def test_shared_v2_messages_agree_with_triton_field_by_field() -> None:
    shared = sorted(set(OUR_V2) & set(TRITON))
    # all our v2 messages but MLServer's metadata parameter maps are Triton's too
    assert set(OUR_V2) - set(TRITON) == {
        "inference.ModelMetadataResponse.ParametersEntry",
        "inference.ModelMetadataResponse.TensorMetadata.ParametersEntry",
    }
    assert len(shared) >= 30
    mismatches = []
    compared = 0
    for name in shared:
        mine, theirs = fields_by_number(OUR_V2[name]), fields_by_number(TRITON[name])
        for number in sorted(set(mine) & set(theirs)):
            compared += 1
            if mine[number] != theirs[number]:
                mismatches.append((name, number, mine[number], theirs[number]))
    assert mismatches == []
    assert compared >= 60


@pytest.mark.parametrize("root", SUPERSET_OF_TRITON)
def test_our_fields_are_a_superset_of_tritons(root: str) -> None:
    names = [n for n in TRITON if n == root or n.startswith(root + ".")]
    assert root in names and root in OUR_V2
    for name in names:
        assert name in OUR_V2, f"{name} is missing from our protos"
        mine, theirs = fields_by_number(OUR_V2[name]), fields_by_number(TRITON[name])
        missing = {n: theirs[n] for n in theirs if n not in mine}
        assert missing == {}, f"{name} lacks Triton's fields {missing}"
        assert {n: mine[n] for n in theirs} == theirs
        # oneofs (InferParameter.parameter_choice) must group the same fields
        for oneof in TRITON[name].oneofs:
            assert {f.name for f in OUR_V2[name].oneofs_by_name[oneof.name].fields} >= {f.name for f in oneof.fields}


def test_infer_request_fields_exactly() -> None:
    """A hardcoded spot check, in case both sides drifted together."""
    fields = {f.name: f.number for f in ours.ModelInferRequest.DESCRIPTOR.fields}
    assert fields == {"model_name": 1, "model_version": 2, "id": 3, "parameters": 4, "inputs": 5, "outputs": 6,
                      "raw_input_contents": 7}
    fields = {f.name: f.number for f in ours.ModelInferResponse.DESCRIPTOR.fields}
    assert fields == {"model_name": 1, "model_version": 2, "id": 3, "parameters": 4, "outputs": 5,
                      "raw_output_contents": 6}


def test_v2_service_methods_match_tritons_stub() -> None:
    service = ours.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    assert service.full_name == "inference.GRPCInferenceService"
    triton_service = triton.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    their_paths = stub_paths(triton_grpc.GRPCInferenceServiceStub)
    our_paths = stub_paths(ours_grpc.GRPCInferenceServiceStub)
    assert set(our_paths) == {f"/inference.GRPCInferenceService/{m.name}" for m in service.methods}

    shared = [m for m in service.methods if m.name in triton_service.methods_by_name]
    assert [m.name for m in shared] == [m.name for m in service.methods]  # Triton has all of ours
    for method in shared:
        path = f"/inference.GRPCInferenceService/{method.name}"
        assert path in their_paths, f"tritonclient's stub has no {path}"
        assert our_paths[path]["kind"] == their_paths[path]["kind"] == "unary_unary"
        theirs = triton_service.methods_by_name[method.name]
        assert method.input_type.full_name == theirs.input_type.full_name
        assert method.output_type.full_name == theirs.output_type.full_name
        assert their_paths[path]["response"].__self__.DESCRIPTOR.full_name == method.output_type.full_name
    for name in ("ModelInfer", "ModelMetadata", "ModelReady", "RepositoryIndex"):
        assert f"/inference.GRPCInferenceService/{name}" in their_paths


# --------------------------------------------------------------------------- v2 vs the KServe SDK

KSERVE_SNIPPET = r"""
import json
from kserve.protocol.grpc import grpc_predict_v2_pb2 as k
from protos import grpc_predict_v2_pb2 as ours  # coexists with the SDK too
assert ours.DESCRIPTOR.pool is not k.DESCRIPTOR.pool
messages = {}
def visit(m):
    messages[m.full_name] = {
        str(f.number): [f.name, f.type, f.label,
                        f.message_type.full_name if f.message_type else f.enum_type.full_name if f.enum_type else ""]
        for f in m.fields
    }
    for n in m.nested_types:
        visit(n)
for m in k.DESCRIPTOR.message_types_by_name.values():
    visit(m)
services = {
    f"/{s.full_name}/{m.name}": [m.input_type.full_name, m.output_type.full_name]
    for s in k.DESCRIPTOR.services_by_name.values() for m in s.methods
}
print(json.dumps({"messages": messages, "services": services}))
"""

# KServe numbers these differently from Triton (model_name = 1; responses carry
# fields); ours follow Triton's and MLServer's, as grpc_predict_v2.proto says.
KSERVE_REPOSITORY_DEVIATIONS = {
    "inference.RepositoryModelLoadRequest",
    "inference.RepositoryModelLoadResponse",
    "inference.RepositoryModelUnloadRequest",
    "inference.RepositoryModelUnloadResponse",
}


@pytest.fixture(scope="module")
def kserve_descriptors() -> dict[str, Any]:
    # find it without importing: the SDK's pb2 would clash with tritonclient's in the default pool
    if importlib.util.find_spec("kserve") is None:
        pytest.skip("the KServe SDK is not installed")
    result = subprocess.run([sys.executable, "-c", KSERVE_SNIPPET], cwd=REPO_ROOT, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_v2_messages_match_kserve(kserve_descriptors: dict[str, Any]) -> None:
    theirs_all: dict[str, dict[str, list]] = kserve_descriptors["messages"]
    assert "inference.ModelInferRequest" in theirs_all
    assert set(theirs_all) <= set(OUR_V2), "KServe has v2 messages we lack"
    differing = {}
    compared = 0
    for name, theirs in theirs_all.items():
        mine = {str(n): list(sig) for n, sig in fields_by_number(OUR_V2[name]).items()}
        diff = {n: (mine.get(n), sig) for n, sig in theirs.items() if mine.get(n) != sig}
        compared += len(theirs)
        if diff:
            differing[name] = diff
    assert compared >= 60
    assert set(differing) == KSERVE_REPOSITORY_DEVIATIONS, differing
    # the deviation is the documented one: their model_name = 1 is Triton's repository_name = 1
    assert differing["inference.RepositoryModelLoadRequest"]["1"][0][0] == "repository_name"
    assert differing["inference.RepositoryModelLoadRequest"]["1"][1][0] == "model_name"


def test_v2_service_matches_kserve(kserve_descriptors: dict[str, Any]) -> None:
    theirs = kserve_descriptors["services"]
    service = ours.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    mine = {f"/{service.full_name}/{m.name}": [m.input_type.full_name, m.output_type.full_name]
            for m in service.methods}
    assert "/inference.GRPCInferenceService/ModelInfer" in theirs
    shared = set(mine) & set(theirs)
    assert shared >= {f"/inference.GRPCInferenceService/{n}" for n in
                      ("ServerLive", "ServerReady", "ModelReady", "ServerMetadata", "ModelMetadata", "ModelInfer")}
    assert {p: mine[p] for p in shared} == {p: theirs[p] for p in shared}


# --------------------------------------------------------------------------- mmesh.* vs ModelMesh

# From ModelMesh's published model-runtime.proto and model-mesh.proto:
# message -> {field name: (number, type)}; "repeated X", "map<K, V>", "enum E", "msg M".
MODEL_RUNTIME_MESSAGES: dict[str, dict[str, tuple[int, str]]] = {
    "mmesh.LoadModelRequest": {"modelId": (1, "string"), "modelType": (2, "string"), "modelPath": (3, "string"),
                               "modelKey": (4, "string")},
    "mmesh.LoadModelResponse": {"sizeInBytes": (1, "uint64"), "maxConcurrency": (2, "uint32")},
    "mmesh.UnloadModelRequest": {"modelId": (1, "string")},
    "mmesh.UnloadModelResponse": {},
    "mmesh.PredictModelSizeRequest": {"modelId": (1, "string"), "modelType": (2, "string"),
                                      "modelPath": (3, "string"), "modelKey": (4, "string")},
    "mmesh.PredictModelSizeResponse": {"sizeInBytes": (1, "uint64")},
    "mmesh.ModelSizeRequest": {"modelId": (1, "string")},
    "mmesh.ModelSizeResponse": {"sizeInBytes": (1, "uint64")},
    "mmesh.RuntimeStatusRequest": {},
    "mmesh.RuntimeStatusResponse": {
        "status": (1, "enum mmesh.RuntimeStatusResponse.Status"),
        "capacityInBytes": (2, "uint64"),
        "maxLoadingConcurrency": (3, "uint32"),
        "modelLoadingTimeoutMs": (4, "uint32"),
        "defaultModelSizeInBytes": (5, "uint64"),
        "runtimeVersion": (6, "string"),
        "numericRuntimeVersion": (7, "uint64"),
        "methodInfos": (8, "map<string, msg mmesh.RuntimeStatusResponse.MethodInfo>"),
        "limitModelConcurrency": (9, "bool"),
        "allowAnyMethod": (10, "bool"),
    },
    "mmesh.RuntimeStatusResponse.MethodInfo": {"idInjectionPath": (1, "repeated uint32")},
    "mmesh.RuntimeStatusResponse.MethodInfosEntry": {
        "key": (1, "string"), "value": (2, "msg mmesh.RuntimeStatusResponse.MethodInfo")},
}
MODEL_RUNTIME_ENUMS = {"mmesh.RuntimeStatusResponse.Status": {"STARTING": 0, "READY": 1, "FAILING": 2}}
MODEL_RUNTIME_METHODS = {
    "loadModel": ("mmesh.LoadModelRequest", "mmesh.LoadModelResponse"),
    "unloadModel": ("mmesh.UnloadModelRequest", "mmesh.UnloadModelResponse"),
    "predictModelSize": ("mmesh.PredictModelSizeRequest", "mmesh.PredictModelSizeResponse"),
    "modelSize": ("mmesh.ModelSizeRequest", "mmesh.ModelSizeResponse"),
    "runtimeStatus": ("mmesh.RuntimeStatusRequest", "mmesh.RuntimeStatusResponse"),
}

MODEL_MESH_MESSAGES: dict[str, dict[str, tuple[int, str]]] = {
    "mmesh.RegisterModelRequest": {"modelId": (1, "string"), "modelInfo": (2, "msg mmesh.ModelInfo"),
                                   "loadNow": (3, "bool"), "sync": (4, "bool"), "lastUsedTime": (5, "uint64")},
    "mmesh.ModelInfo": {"type": (1, "string"), "path": (2, "string"), "key": (3, "string")},
    "mmesh.ModelStatusInfo": {
        "status": (1, "enum mmesh.ModelStatusInfo.ModelStatus"),
        "errors": (2, "repeated string"),
        "modelCopyInfos": (3, "repeated msg mmesh.ModelStatusInfo.ModelCopyInfo"),
    },
    "mmesh.ModelStatusInfo.ModelCopyInfo": {"location": (1, "string"),
                                            "copyStatus": (2, "enum mmesh.ModelStatusInfo.ModelStatus"),
                                            "time": (3, "uint64")},
    "mmesh.UnregisterModelRequest": {"modelId": (1, "string")},
    "mmesh.UnregisterModelResponse": {},
    "mmesh.GetStatusRequest": {"modelId": (1, "string")},
    "mmesh.EnsureLoadedRequest": {"modelId": (1, "string"), "lastUsedTime": (2, "uint64"), "sync": (4, "bool")},
    "mmesh.VModelStatusInfo": {
        "status": (1, "enum mmesh.VModelStatusInfo.VModelStatus"),
        "activeModelId": (2, "string"),
        "targetModelId": (3, "string"),
        "activeModelStatus": (4, "msg mmesh.ModelStatusInfo"),
        "targetModelStatus": (5, "msg mmesh.ModelStatusInfo"),
        "owner": (6, "string"),
    },
    "mmesh.DeleteVModelRequest": {"vModelId": (1, "string"), "owner": (2, "string")},
    "mmesh.DeleteVModelResponse": {},
    "mmesh.SetVModelRequest": {
        "vModelId": (1, "string"),
        "targetModelId": (2, "string"),
        "updateOnly": (3, "bool"),
        "modelInfo": (4, "msg mmesh.ModelInfo"),
        "autoDeleteTargetModel": (5, "bool"),
        "loadNow": (6, "bool"),
        "force": (7, "bool"),
        "sync": (8, "bool"),
        "expectedTargetModelId": (9, "string"),
        "owner": (10, "string"),
    },
    "mmesh.GetVModelStatusRequest": {"vModelId": (1, "string"), "owner": (2, "string")},
}
MODEL_MESH_ENUMS = {
    "mmesh.ModelStatusInfo.ModelStatus": {"NOT_FOUND": 0, "NOT_LOADED": 1, "LOADING": 2, "LOADED": 3,
                                          "LOADING_FAILED": 4, "UNKNOWN": 5},
    "mmesh.VModelStatusInfo.VModelStatus": {"NOT_FOUND": 0, "DEFINED": 1, "TRANSITIONING": 2,
                                            "TRANSITION_FAILED": 3, "UNKNOWN": 5},
}
MODEL_MESH_METHODS = {
    "registerModel": ("mmesh.RegisterModelRequest", "mmesh.ModelStatusInfo"),
    "unregisterModel": ("mmesh.UnregisterModelRequest", "mmesh.UnregisterModelResponse"),
    "getModelStatus": ("mmesh.GetStatusRequest", "mmesh.ModelStatusInfo"),
    "ensureLoaded": ("mmesh.EnsureLoadedRequest", "mmesh.ModelStatusInfo"),
    "setVModel": ("mmesh.SetVModelRequest", "mmesh.VModelStatusInfo"),
    "deleteVModel": ("mmesh.DeleteVModelRequest", "mmesh.DeleteVModelResponse"),
    "getVModelStatus": ("mmesh.GetVModelStatusRequest", "mmesh.VModelStatusInfo"),
}

_SCALARS = {
    FieldDescriptor.TYPE_STRING: "string",
    FieldDescriptor.TYPE_BYTES: "bytes",
    FieldDescriptor.TYPE_BOOL: "bool",
    FieldDescriptor.TYPE_UINT32: "uint32",
    FieldDescriptor.TYPE_UINT64: "uint64",
    FieldDescriptor.TYPE_INT32: "int32",
    FieldDescriptor.TYPE_INT64: "int64",
    FieldDescriptor.TYPE_DOUBLE: "double",
    FieldDescriptor.TYPE_FLOAT: "float",
}


def type_name(f: FieldDescriptor) -> str:
    if f.type == FieldDescriptor.TYPE_MESSAGE:
        entry = f.message_type
        if entry.GetOptions().map_entry:
            key, value = entry.fields_by_name["key"], entry.fields_by_name["value"]
            return f"map<{type_name(key)}, {type_name(value)}>"
        base = f"msg {entry.full_name}"
    elif f.type == FieldDescriptor.TYPE_ENUM:
        base = f"enum {f.enum_type.full_name}"
    else:
        base = _SCALARS[f.type]
    return f"repeated {base}" if f.label == FieldDescriptor.LABEL_REPEATED else base


def all_enums(file: FileDescriptor) -> dict[str, dict[str, int]]:
    enums = {e.full_name: {v.name: v.number for v in e.values} for e in file.enum_types_by_name.values()}
    for message in all_messages(file).values():
        for e in message.enum_types:
            enums[e.full_name] = {v.name: v.number for v in e.values}
    return enums


@pytest.mark.parametrize(
    ("module", "messages", "enums"),
    [(model_runtime_pb2, MODEL_RUNTIME_MESSAGES, MODEL_RUNTIME_ENUMS),
     (model_mesh_pb2, MODEL_MESH_MESSAGES, MODEL_MESH_ENUMS)],
    ids=["model_runtime", "model_mesh"],
)
def test_mmesh_messages_match_modelmesh(module: Any, messages: dict, enums: dict) -> None:
    assert module.DESCRIPTOR.package == "mmesh"
    found = all_messages(module.DESCRIPTOR)
    assert set(found) == set(messages)
    for name, expected in messages.items():
        actual = {f.name: (f.number, type_name(f)) for f in found[name].fields}
        assert actual == expected, name
    assert all_enums(module.DESCRIPTOR) == enums


def test_ensure_loaded_keeps_field_3_reserved() -> None:
    from google.protobuf import descriptor_pb2

    proto = descriptor_pb2.DescriptorProto()
    model_mesh_pb2.EnsureLoadedRequest.DESCRIPTOR.CopyToProto(proto)
    assert [(r.start, r.end) for r in proto.reserved_range] == [(3, 4)]


@pytest.mark.parametrize(
    ("module", "grpc_module", "service", "methods"),
    [(model_runtime_pb2, model_runtime_pb2_grpc, "ModelRuntime", MODEL_RUNTIME_METHODS),
     (model_mesh_pb2, model_mesh_pb2_grpc, "ModelMesh", MODEL_MESH_METHODS)],
    ids=["ModelRuntime", "ModelMesh"],
)
def test_mmesh_services_match_modelmesh(module: Any, grpc_module: Any, service: str, methods: dict) -> None:
    descriptor = module.DESCRIPTOR.services_by_name[service]
    assert descriptor.full_name == f"mmesh.{service}"
    actual = {m.name: (m.input_type.full_name, m.output_type.full_name) for m in descriptor.methods}
    assert actual == methods
    for m in descriptor.methods:
        assert not m.client_streaming and not m.server_streaming
    paths = stub_paths(getattr(grpc_module, f"{service}Stub"))
    assert set(paths) == {f"/mmesh.{service}/{name}" for name in methods}
    for name, (_, response) in methods.items():
        entry = paths[f"/mmesh.{service}/{name}"]
        assert entry["kind"] == "unary_unary"
        assert entry["response"].__self__.DESCRIPTOR.full_name == response
