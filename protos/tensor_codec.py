"""v2 (Open Inference Protocol) tensors <-> numpy.

One codec serves both ends of the wire: the mesh sidecar and the runtime
adapter decode requests / encode responses (server side), while the CLI,
benchmarks and tests encode requests / decode responses (client side). Both
directions go through the same two per-tensor helpers, `_decode_tensor` and
`_encode_tensor`, so the wire format is defined in exactly one place. This
module deliberately imports nothing from `mesh/` or `runtime_adapter/`.

Wire rules implemented (KServe v2 / Triton):

* A tensor's data travels either as typed `contents` (one repeated field per
  datatype family) or as one `raw_*_contents` entry per tensor, in tensor
  order. If raw is used for any tensor it is used for all of them, and no
  tensor may then also carry typed contents.
* Raw data is little-endian, C order. BOOL is one byte per element. BYTES is a
  sequence of (uint32 little-endian length, payload) records.
* FP16 and BF16 have no typed field; they may be *received* in
  `fp32_contents` (cast on decode) but are always *sent* raw, which forces raw
  for the whole message.

Every malformed tensor raises `TensorCodecError` (a `ValueError`) naming the
tensor; callers map it to gRPC INVALID_ARGUMENT. No other exception type
escapes the decoders for malformed input.

Decoded raw numeric tensors are zero-copy, *read-only* views of the message's
bytes (`numpy.frombuffer`); copy them (`arr.copy()`) before writing in place.
"""

from __future__ import annotations

import math
import struct
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import numpy

from protos import grpc_predict_v2_pb2 as pb

try:  # BF16 has no native numpy dtype; ml_dtypes supplies one (as tritonclient does).
    import ml_dtypes

    _BF16: numpy.dtype | None = numpy.dtype(ml_dtypes.bfloat16)
except ImportError:  # pragma: no cover - ml_dtypes ships with the dev/runtime deps
    _BF16 = None

__all__ = [
    "DATATYPE_TO_DTYPE",
    "TensorCodecError",
    "datatype_of",
    "decode_inputs",
    "decode_outputs",
    "encode_inputs",
    "encode_outputs",
]


class TensorCodecError(ValueError):
    """A tensor cannot be decoded or encoded.

    Subclasses ValueError because the cause is always bad data, never a bug in
    the codec; the message always starts with ``<role> '<tensor name>': `` so a
    client can tell which tensor was wrong from the gRPC status alone.
    ``tensor_name`` is "" only when no tensor is involved (``datatype_of``
    called directly, or raw entries in a message that has no tensors at all).
    """

    def __init__(self, tensor_name: str, detail: str, *, role: str = "tensor") -> None:
        self.tensor_name = tensor_name
        self.detail = detail
        self.role = role
        # role "tensor" with no name is datatype_of's context-free error; a tensor that is
        # really named "" (malformed request) still gets the "input '': " prefix.
        named = bool(tensor_name) or role != "tensor"
        super().__init__(f"{role} '{tensor_name}': {detail}" if named else detail)


DATATYPE_TO_DTYPE: dict[str, numpy.dtype] = {
    "BOOL": numpy.dtype(numpy.bool_),
    "UINT8": numpy.dtype(numpy.uint8),
    "UINT16": numpy.dtype(numpy.uint16),
    "UINT32": numpy.dtype(numpy.uint32),
    "UINT64": numpy.dtype(numpy.uint64),
    "INT8": numpy.dtype(numpy.int8),
    "INT16": numpy.dtype(numpy.int16),
    "INT32": numpy.dtype(numpy.int32),
    "INT64": numpy.dtype(numpy.int64),
    "FP16": numpy.dtype(numpy.float16),
    "FP32": numpy.dtype(numpy.float32),
    "FP64": numpy.dtype(numpy.float64),
    "BYTES": numpy.dtype(object),
}
if _BF16 is not None:
    DATATYPE_TO_DTYPE["BF16"] = _BF16

# The repeated field of InferTensorContents that carries each datatype. FP16 and
# BF16 are accepted from fp32_contents on decode but never encoded typed.
_TYPED_FIELD: dict[str, str] = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}
_DECODE_ONLY_TYPED_FIELD: dict[str, str] = {"FP16": "fp32_contents", "BF16": "fp32_contents"}
# numpy dtype of the protobuf field's values (before narrowing to the datatype).
_FIELD_DTYPE: dict[str, numpy.dtype] = {
    "bool_contents": numpy.dtype(numpy.bool_),
    "int_contents": numpy.dtype(numpy.int32),
    "int64_contents": numpy.dtype(numpy.int64),
    "uint_contents": numpy.dtype(numpy.uint32),
    "uint64_contents": numpy.dtype(numpy.uint64),
    "fp32_contents": numpy.dtype(numpy.float32),
    "fp64_contents": numpy.dtype(numpy.float64),
    "bytes_contents": numpy.dtype(object),
}

_INT_KIND_NAMES = {("i", 1): "INT8", ("i", 2): "INT16", ("i", 4): "INT32", ("i", 8): "INT64",
                   ("u", 1): "UINT8", ("u", 2): "UINT16", ("u", 4): "UINT32", ("u", 8): "UINT64",
                   ("f", 2): "FP16", ("f", 4): "FP32", ("f", 8): "FP64"}
_BYTES_HEADER = struct.Struct("<I")


def _little_endian(dtype: numpy.dtype) -> numpy.dtype:
    """The wire (little-endian) form of a datatype's dtype; identical on LE hosts."""
    if dtype.byteorder in ("|", "<") or (dtype.byteorder == "=" and sys.byteorder == "little"):
        return dtype
    return dtype.newbyteorder("<")


_WIRE_DTYPE: dict[str, numpy.dtype] = {dt: _little_endian(d) for dt, d in DATATYPE_TO_DTYPE.items()}


def datatype_of(dtype: numpy.dtype) -> str:
    """The v2 datatype name for a numpy dtype (any byte order).

    Strings (``<U``, ``S``, numpy 2 ``StringDType``) and object arrays map to
    BYTES because v2 has no separate string type. Raises TensorCodecError with
    ``tensor_name == ""`` for dtypes v2 cannot carry (complex, datetime, void,
    float128, ...), so a single ``except TensorCodecError`` covers both this
    and the per-tensor errors; the encoders re-raise it with the tensor name.
    """
    try:
        dtype = numpy.dtype(dtype)
    except TypeError as exc:
        raise TensorCodecError("", f"{dtype!r} is not a numpy dtype") from exc
    if _BF16 is not None and dtype == _BF16:
        return "BF16"
    if dtype.kind == "b":
        return "BOOL"
    if dtype.kind in ("U", "S", "O", "T"):
        return "BYTES"
    name = _INT_KIND_NAMES.get((dtype.kind, dtype.itemsize))
    if name is None:
        raise TensorCodecError("", f"numpy dtype {dtype} has no v2 datatype")
    return name


# --------------------------------------------------------------------------- decode


def _decode_bytes_raw(name: str, role: str, buf: bytes, count: int) -> numpy.ndarray:
    """Parse `count` (uint32 LE length, payload) records that must fill `buf` exactly."""
    if count > len(buf) // _BYTES_HEADER.size:  # cheap bound before looping
        raise TensorCodecError(
            name, f"BYTES needs {count} elements of >= 4 bytes each, got {len(buf)} bytes", role=role)
    out = numpy.empty(count, dtype=object)
    view = memoryview(buf)
    offset = 0
    for i in range(count):
        if offset + _BYTES_HEADER.size > len(buf):
            raise TensorCodecError(name, f"BYTES element {i} length header truncated at byte {offset}", role=role)
        (length,) = _BYTES_HEADER.unpack_from(view, offset)
        offset += _BYTES_HEADER.size
        if offset + length > len(buf):
            raise TensorCodecError(
                name, f"BYTES element {i} declares {length} bytes, only {len(buf) - offset} remain", role=role)
        out[i] = bytes(view[offset:offset + length])
        offset += length
    if offset != len(buf):
        raise TensorCodecError(
            name, f"BYTES data has {len(buf) - offset} bytes after the {count} expected elements", role=role)
    return out


def _decode_raw(name: str, role: str, datatype: str, shape: list[int], count: int, raw: bytes) -> numpy.ndarray:
    """Flat array from raw bytes; numeric types are zero-copy views of `raw`."""
    if datatype == "BYTES":
        return _decode_bytes_raw(name, role, raw, count)
    wire = _WIRE_DTYPE[datatype]
    needed = count * wire.itemsize
    if len(raw) != needed:
        detail = f"shape {shape} × {datatype} needs {needed} bytes, got {len(raw)}"
        raise TensorCodecError(name, detail, role=role)
    flat = numpy.frombuffer(raw, dtype=wire, count=count)
    if datatype == "BOOL":
        as_u8 = flat.view(numpy.uint8)
        if count and as_u8.max() > 1:  # any nonzero byte is true; normalise so numpy bools stay canonical
            flat = as_u8 != 0
    return flat


def _decode_typed(name: str, role: str, datatype: str, shape: list[int], count: int,
                  contents: pb.InferTensorContents) -> numpy.ndarray:
    """Flat array from the typed InferTensorContents field that matches `datatype`."""
    field = _TYPED_FIELD.get(datatype) or _DECODE_ONLY_TYPED_FIELD[datatype]
    stray = [fd.name for fd, _ in contents.ListFields() if fd.name != field]
    if stray:
        raise TensorCodecError(
            name, f"{datatype} data must be in {field}, got {', '.join(sorted(stray))}", role=role)
    values = getattr(contents, field)
    if len(values) != count:
        raise TensorCodecError(
            name, f"shape {shape} needs {count} {datatype} values in {field}, got {len(values)}", role=role)
    flat = numpy.fromiter(values, dtype=_FIELD_DTYPE[field], count=count)
    target = DATATYPE_TO_DTYPE[datatype]
    if flat.dtype == target:
        return flat
    if target.kind in ("i", "u"):  # INT8/16, UINT8/16 ride in 32-bit fields: reject, don't wrap
        info = numpy.iinfo(target)
        if count and (flat.min() < info.min or flat.max() > info.max):
            raise TensorCodecError(
                name, f"{field} value out of range for {datatype} [{info.min}, {info.max}]", role=role)
    with numpy.errstate(over="ignore"):  # FP16/BF16 from fp32: overflow to inf, as a cast does
        return flat.astype(target)


def _decode_tensor(name: str, datatype: str, shape: Sequence[int], contents: pb.InferTensorContents,
                   raw: bytes | None, *, role: str = "input") -> numpy.ndarray:
    """Decode one tensor from either its typed `contents` or its `raw` bytes (not None).

    Shared by decode_inputs and decode_outputs; `role` only labels errors.
    """
    shape = list(shape)
    if datatype not in DATATYPE_TO_DTYPE:
        hint = " (BF16 needs the ml_dtypes package)" if datatype == "BF16" else ""
        raise TensorCodecError(name, f"unknown datatype {datatype!r}{hint}", role=role)
    if any(d < 0 for d in shape):
        raise TensorCodecError(name, f"shape {shape} has a negative dimension", role=role)
    count = math.prod(shape)
    if raw is not None:
        flat = _decode_raw(name, role, datatype, shape, count, raw)
    else:
        flat = _decode_typed(name, role, datatype, shape, count, contents)
    try:
        return flat.reshape(shape)
    except ValueError as exc:  # e.g. > 64 dims, or [0, 2**62] overflowing numpy's size limit
        raise TensorCodecError(name, f"shape {shape} is not representable: {exc}", role=role) from exc


def _decode_all(tensors: Sequence[Any], raw_contents: Sequence[bytes], role: str) -> dict[str, numpy.ndarray]:
    """Decode a request's inputs or a response's outputs, enforcing the raw-for-all rule."""
    out: dict[str, numpy.ndarray] = {}
    use_raw = len(raw_contents) > 0
    if use_raw and len(raw_contents) != len(tensors):
        # Name the first tensor without raw data, or the last one if there are extra entries.
        culprit = tensors[min(len(raw_contents), len(tensors) - 1)].name if tensors else ""
        raise TensorCodecError(
            culprit, f"{len(raw_contents)} raw contents entries for {len(tensors)} {role}s", role=role)
    for i, tensor in enumerate(tensors):
        if tensor.name in out:
            raise TensorCodecError(tensor.name, f"duplicate {role} name", role=role)
        if use_raw and tensor.contents.ListFields():
            raise TensorCodecError(
                tensor.name, "carries typed contents although raw contents are used", role=role)
        out[tensor.name] = _decode_tensor(tensor.name, tensor.datatype, tensor.shape, tensor.contents,
                                          raw_contents[i] if use_raw else None, role=role)
    return out


def decode_inputs(request: pb.ModelInferRequest) -> dict[str, numpy.ndarray]:
    """Server side: the request's input tensors as numpy arrays, in `inputs` order.

    Raw numeric inputs are read-only zero-copy views; BYTES inputs are object
    arrays of `bytes`. Raises TensorCodecError for any malformed input.
    """
    return _decode_all(request.inputs, request.raw_input_contents, "input")


def decode_outputs(response: pb.ModelInferResponse) -> dict[str, numpy.ndarray]:
    """Client side mirror of decode_inputs for a response's output tensors."""
    return _decode_all(response.outputs, response.raw_output_contents, "output")


# --------------------------------------------------------------------------- encode


def _bytes_elements(name: str, role: str, array: numpy.ndarray) -> list[bytes]:
    """BYTES tensor elements in C order; str is UTF-8 encoded, other objects rejected."""
    elements = []
    for item in array.ravel(order="C").tolist():
        if isinstance(item, bytes):
            elements.append(item)
        elif isinstance(item, str):
            elements.append(item.encode("utf-8"))
        elif isinstance(item, (bytearray, memoryview)):
            elements.append(bytes(item))
        else:
            raise TensorCodecError(
                name, f"BYTES element of type {type(item).__name__} (need bytes or str)", role=role)
    return elements


def _encode_tensor(tensor: Any, name: str, array: Any, *, raw: bool, role: str = "output") -> bytes | None:
    """Fill one InferInputTensor/InferOutputTensor and return its raw bytes (or None if typed).

    Shared by encode_inputs and encode_outputs; the caller has already decided
    `raw` for the whole message (see `_needs_raw`).
    """
    array = numpy.asarray(array)
    datatype = _datatype_for(name, role, array)
    tensor.name = name
    tensor.datatype = datatype
    tensor.shape.extend(array.shape)
    if datatype == "BYTES":
        elements = _bytes_elements(name, role, array)
        if not raw:
            tensor.contents.bytes_contents.extend(elements)
            return None
        if any(len(e) > 0xFFFFFFFF for e in elements):
            raise TensorCodecError(name, "BYTES element longer than 4 GiB - 1 cannot be framed", role=role)
        return b"".join(part for e in elements for part in (_BYTES_HEADER.pack(len(e)), e))
    if not raw:
        getattr(tensor.contents, _TYPED_FIELD[datatype]).extend(array.ravel(order="C").tolist())
        return None
    return numpy.ascontiguousarray(array, dtype=_WIRE_DTYPE[datatype]).tobytes()


def _datatype_for(name: str, role: str, array: numpy.ndarray) -> str:
    """datatype_of, re-raised with the tensor's name."""
    try:
        return datatype_of(array.dtype)
    except TensorCodecError as exc:
        raise TensorCodecError(name, exc.detail, role=role) from None


def _encode_all(tensors: Any, raw_contents: Any, arrays: Mapping[str, Any], *, raw: bool, role: str) -> None:
    """Append `arrays` to a message's tensor list, raw for all tensors when any needs it."""
    arrays = {name: numpy.asarray(a) for name, a in arrays.items()}
    no_typed_field = any(_datatype_for(n, role, a) not in _TYPED_FIELD for n, a in arrays.items())
    use_raw = raw or no_typed_field or len(raw_contents) > 0
    if use_raw and len(raw_contents) != len(tensors):
        # Programming error (message already holds typed tensors), not bad data.
        raise ValueError(f"cannot add raw {role}s to a message whose existing {role}s are typed")
    for name, array in arrays.items():
        data = _encode_tensor(tensors.add(), name, array, raw=use_raw, role=role)
        if use_raw:
            raw_contents.append(data)


def encode_outputs(response: pb.ModelInferResponse, outputs: Mapping[str, numpy.ndarray], *, raw: bool) -> None:
    """Server side: append `outputs` (in mapping order) to `response`.

    With raw=False typed contents are used unless some output (FP16, BF16) has
    no typed field, in which case every output goes raw, as v2 requires.
    Strings become UTF-8 BYTES. Raises TensorCodecError naming the output for
    arrays v2 cannot carry (complex dtypes, object arrays holding non-strings).
    """
    _encode_all(response.outputs, response.raw_output_contents, outputs, raw=raw, role="output")


def encode_inputs(request: pb.ModelInferRequest, inputs: Mapping[str, numpy.ndarray], *, raw: bool) -> None:
    """Client side mirror of encode_outputs for a request's input tensors."""
    _encode_all(request.inputs, request.raw_input_contents, inputs, raw=raw, role="input")
