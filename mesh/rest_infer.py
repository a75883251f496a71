"""v2 REST infer bodies <-> `ModelInferRequest` / `ModelInferResponse`.

Pure (no I/O), so the front end can run it on a worker thread for large
payloads. Handles the JSON form and Triton's binary tensor data extension:

* A body may start with a JSON header of `Inference-Header-Content-Length`
  bytes, followed by the binary data of every input whose parameters carry
  `binary_data_size`, in input order, each in the v2 raw format
  (little-endian, row-major; BYTES as 4-byte little-endian length + bytes).
* Outputs are sent binary when asked per output (`parameters.binary_data`)
  or for all outputs that do not say (`parameters.binary_data_output` on the
  request); a BYTES output that is not UTF-8 text has no JSON form and is sent
  binary whatever was asked. Binary outputs carry `binary_data_size`.

The raw v2 format and the binary extension's are the same bytes, so every
input goes into the gRPC request as `raw_input_contents` (binary ones without
decoding) and binary outputs are the response's raw contents as they are.
The extension's own parameters are consumed here; all others pass through to
the gRPC message's `parameters` and back.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from protos import grpc_predict_v2_pb2 as v2
from protos.tensor_codec import TensorCodecError, decode_inputs, decode_outputs, encode_inputs, encode_outputs
from mesh.rest_codec import (
    NotUtf8,
    RestFormatError,
    array_to_json,
    check_datatype,
    check_shape,
    json_to_array,
    parameters_to_json,
    parameters_to_proto,
)

HEADER_LENGTH = "Inference-Header-Content-Length"
BINARY_SIZE = "binary_data_size"  # input and output parameter
BINARY_OUTPUT = "binary_data"  # requested output parameter
BINARY_ALL_OUTPUTS = "binary_data_output"  # request parameter
# the extension's parameters describe the HTTP framing: consumed here, not passed on
_REQUEST_SKIP = frozenset({BINARY_ALL_OUTPUTS})
_INPUT_SKIP = frozenset({BINARY_SIZE})
_OUTPUT_SKIP = frozenset({BINARY_OUTPUT})
JSON_TYPE = "application/json"
BINARY_TYPE = "application/octet-stream"


@dataclass(frozen=True)
class OutputFormat:
    """Which outputs the client wants in binary form."""

    binary_default: bool = False
    binary: dict[str, bool] = field(default_factory=dict)

    def is_binary(self, name: str) -> bool:
        return self.binary.get(name, self.binary_default)


@dataclass(frozen=True)
class RestBody:
    """A response body; `header_length` is set when binary data follows the JSON."""

    body: bytes
    header_length: int | None = None

    @property
    def content_type(self) -> str:
        return JSON_TYPE if self.header_length is None else BINARY_TYPE


# --------------------------------------------------------------------------- request


def _split(body: bytes, header_length: str | None) -> tuple[bytes, memoryview]:
    """The JSON header and the binary data after it."""
    if header_length is None:
        return body, memoryview(b"")
    try:
        length = int(header_length)
    except ValueError:
        raise RestFormatError(f"{HEADER_LENGTH} must be an integer, got {header_length!r}") from None
    if not 0 <= length <= len(body):
        raise RestFormatError(f"{HEADER_LENGTH} {length} is outside the {len(body)}-byte body")
    view = memoryview(body)
    return bytes(view[:length]), view[length:]


def _load_json(text: bytes) -> dict[str, Any]:
    try:
        document = json.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RestFormatError(f"malformed JSON: {exc}") from None
    if not isinstance(document, dict):
        raise RestFormatError("the request must be a JSON object")
    return document


_JSON_NAMES = {str: "string", list: "array"}


def _field(where: str, document: dict[str, Any], key: str, kind: type, default: Any = None) -> Any:
    value = document.get(key, default)
    if not isinstance(value, kind):
        raise RestFormatError(f"{where}: {key!r} must be a JSON {_JSON_NAMES[kind]}")
    return value


def _binary_size(name: str, params: Any) -> int | None:
    size = params.get(BINARY_SIZE) if isinstance(params, dict) else None
    if size is None:
        return None
    if type(size) is not int or size < 0:
        raise TensorCodecError(name, f"{BINARY_SIZE} must be a non-negative integer, got {size!r}", role="input")
    return size


def _add_binary_input(request: v2.ModelInferRequest, name: str, spec: dict[str, Any], chunk: memoryview) -> None:
    """Append an input given in binary form, after checking its bytes against
    its datatype and shape (decoded on a one-tensor message: the decoder is
    the one the runtime uses, and names the tensor)."""
    tensor = v2.ModelInferRequest.InferInputTensor(
        name=name, datatype=check_datatype(name, spec.get("datatype")), shape=check_shape(name, spec.get("shape"))
    )
    data = bytes(chunk)
    decode_inputs(v2.ModelInferRequest(inputs=[tensor], raw_input_contents=[data]))
    request.inputs.append(tensor)
    request.raw_input_contents.append(data)


def _objects(document: dict[str, Any], key: str, required: bool) -> list[dict[str, Any]]:
    """`inputs` / `outputs`: a list of JSON objects."""
    items = _field("request", document, key, list, None if required else [])
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            raise RestFormatError(f"{key}[{index}] must be a JSON object")
    return items


def _flag(where: str, params: dict[str, Any] | None, key: str) -> bool | None:
    """A true/false parameter of the binary extension, None when not given."""
    value = params.get(key) if params else None
    if value is not None and not isinstance(value, bool):
        raise RestFormatError(f"{where}: {key} must be true or false")
    return value


def _add_inputs(request: v2.ModelInferRequest, specs: list[dict[str, Any]], binary: memoryview) -> None:
    """Every input as raw contents: JSON data encoded, binary data as sent
    (each input's slice of the binary part, in input order)."""
    offset = 0
    for index, spec in enumerate(specs):
        name = _field(f"inputs[{index}]", spec, "name", str)
        size = _binary_size(name, spec.get("parameters"))
        if size is None:
            if "data" not in spec:
                raise TensorCodecError(name, f"has neither data nor {BINARY_SIZE}", role="input")
            array = json_to_array(name, spec.get("datatype"), spec.get("shape"), spec["data"])
            encode_inputs(request, {name: array}, raw=True)
        else:
            if "data" in spec:
                raise TensorCodecError(name, f"has both data and {BINARY_SIZE}", role="input")
            if offset + size > len(binary):
                detail = f"{BINARY_SIZE} {size} runs past the binary data ({len(binary) - offset} bytes left)"
                raise TensorCodecError(name, detail, role="input")
            _add_binary_input(request, name, spec, binary[offset : offset + size])
            offset += size
        params = spec.get("parameters")
        parameters_to_proto(f"input {name!r}", params, request.inputs[-1].parameters, skip=_INPUT_SKIP)
    if offset != len(binary):
        raise RestFormatError(f"{len(binary) - offset} bytes of binary data after the inputs that declare {BINARY_SIZE}")


def _add_outputs(request: v2.ModelInferRequest, specs: list[dict[str, Any]]) -> dict[str, bool]:
    """The requested outputs; returns those that said binary or not."""
    binary: dict[str, bool] = {}
    for index, spec in enumerate(specs):
        name = _field(f"outputs[{index}]", spec, "name", str)
        params = spec.get("parameters")
        parameters_to_proto(f"output {name!r}", params, request.outputs.add(name=name).parameters, skip=_OUTPUT_SKIP)
        wanted = _flag(f"output {name!r}", params, BINARY_OUTPUT)
        if wanted is not None:
            binary[name] = wanted
    return binary


def parse_infer_request(
    body: bytes, header_length: str | None, model_name: str, model_version: str = ""
) -> tuple[v2.ModelInferRequest, OutputFormat]:
    """A REST infer body as the gRPC request the data plane takes, and how the
    client wants the outputs. Raises RestFormatError or TensorCodecError."""
    header, binary = _split(body, header_length)
    document = _load_json(header)
    request = v2.ModelInferRequest(model_name=model_name, model_version=model_version)
    request.id = _field("request", document, "id", str, "")
    params = document.get("parameters")
    parameters_to_proto("request", params, request.parameters, skip=_REQUEST_SKIP)
    binary_default = bool(_flag("request", params, BINARY_ALL_OUTPUTS))
    _add_inputs(request, _objects(document, "inputs", required=True), binary)
    binary_by_name = _add_outputs(request, _objects(document, "outputs", required=False))
    return request, OutputFormat(binary_default, binary_by_name)


# --------------------------------------------------------------------------- response


def _raw_output(response: v2.ModelInferResponse, index: int, name: str, array: Any) -> bytes:
    """An output's bytes in the binary extension's (= v2 raw) format."""
    if response.raw_output_contents:
        return response.raw_output_contents[index]
    scratch = v2.ModelInferResponse()
    encode_outputs(scratch, {name: array}, raw=True)
    return scratch.raw_output_contents[0]


def render_infer_response(response: v2.ModelInferResponse, output_format: OutputFormat) -> RestBody:
    """The REST body for a gRPC response: JSON, with binary data appended for
    the outputs sent binary."""
    arrays = decode_outputs(response)
    outputs: list[dict[str, Any]] = []
    chunks: list[bytes] = []
    for index, tensor in enumerate(response.outputs):
        entry: dict[str, Any] = {"name": tensor.name, "datatype": tensor.datatype, "shape": list(tensor.shape)}
        params = parameters_to_json(tensor.parameters)
        binary = output_format.is_binary(tensor.name)
        if not binary:
            try:
                entry["data"] = array_to_json(tensor.name, arrays[tensor.name])
            except NotUtf8:
                binary = True
        if binary:
            chunk = _raw_output(response, index, tensor.name, arrays[tensor.name])
            params[BINARY_SIZE] = len(chunk)
            chunks.append(chunk)
        if params:
            entry["parameters"] = params
        outputs.append(entry)
    document: dict[str, Any] = {"model_name": response.model_name}
    if response.model_version:
        document["model_version"] = response.model_version
    if response.id:
        document["id"] = response.id
    params = parameters_to_json(response.parameters)
    if params:
        document["parameters"] = params
    document["outputs"] = outputs
    header = json.dumps(document, separators=(",", ":")).encode()
    if not chunks:
        return RestBody(header)
    return RestBody(b"".join([header, *chunks]), len(header))

