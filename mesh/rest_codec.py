"""v2 REST (JSON) tensors and parameters <-> numpy and protobuf.

The JSON half of the REST front end's wire format, kept pure (numpy and
protos only, no I/O) so it can be tested exhaustively on its own. Rules (KServe
v2 / Triton REST):

* `data` is a JSON array in row-major order, either flat or nested exactly
  like `shape`; its element count must equal the product of `shape`.
* BOOL elements are JSON true/false; integer datatypes take JSON integers
  only (no 1.0, no true, nothing out of the datatype's range); FP16, FP32,
  FP64 and BF16 take any JSON number (FP16 included: JSON numbers, never raw
  bits); BYTES elements are JSON strings, carried as their UTF-8 bytes.
* Values a JSON number cannot spell (NaN, ±Infinity) use the `NaN` /
  `Infinity` tokens Python's json and Triton's server both read and write.

Everything wrong with a tensor raises `TensorCodecError` naming it, the same
exception family as the gRPC codec (protos/tensor_codec.py), whose datatype
table this module shares rather than repeats.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy

from protos import grpc_predict_v2_pb2 as v2
from protos.tensor_codec import DATATYPE_TO_DTYPE, TensorCodecError, datatype_of

JsonScalar = bool | int | float | str

_INT64 = (-(1 << 63), (1 << 63) - 1)
_UINT64_MAX = (1 << 64) - 1


def _allowed_types(datatype: str) -> tuple[frozenset[type], str]:
    """The Python types json.loads gives that a datatype accepts, and how to say so."""
    if datatype == "BOOL":
        return frozenset({bool}), "true/false"
    if datatype == "BYTES":
        return frozenset({str}), "strings"
    kind = DATATYPE_TO_DTYPE[datatype].kind
    if kind in ("i", "u"):
        return frozenset({int}), "integers"
    return frozenset({int, float}), "numbers"


class NotUtf8(TensorCodecError):
    """A BYTES element has no JSON (UTF-8 string) form; send it binary instead."""


# --------------------------------------------------------------------------- JSON -> numpy


def _flat_elements(name: str, data: Any, shape: list[int], count: int) -> list[Any]:
    """`data` as a flat row-major list: taken as is when flat; when nested,
    flattened level by level, every level having exactly its dimension."""
    if not isinstance(data, list):
        raise TensorCodecError(name, f"data must be a JSON array, got {type(data).__name__}", role="input")
    if len(shape) > 1 and data and isinstance(data[0], list):
        level: list[Any] = [data]
        for dim in shape:
            flat: list[Any] = []
            for item in level:
                if not isinstance(item, list) or len(item) != dim:
                    raise TensorCodecError(name, f"nested data does not match shape {shape}", role="input")
                flat.extend(item)
            level = flat
        return level
    if len(data) != count:
        raise TensorCodecError(name, f"shape {shape} needs {count} elements, data has {len(data)}", role="input")
    return data


def check_shape(name: str, shape: Any) -> list[int]:
    """A JSON shape: a list of non-negative integers."""
    if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
        raise TensorCodecError(name, f"shape must be a list of non-negative integers, got {shape!r}", role="input")
    return shape


def check_datatype(name: str, datatype: Any) -> str:
    if datatype not in DATATYPE_TO_DTYPE:
        raise TensorCodecError(
            name, f"unknown datatype {datatype!r} (one of {', '.join(DATATYPE_TO_DTYPE)})", role="input"
        )
    return datatype


def json_to_array(name: str, datatype: Any, shape: Any, data: Any) -> numpy.ndarray:
    """One input tensor's JSON `data` as a numpy array of `datatype`'s dtype
    and `shape`; BYTES become an object array of UTF-8 `bytes`."""
    datatype = check_datatype(name, datatype)
    shape = check_shape(name, shape)
    count = math.prod(shape)
    flat = _flat_elements(name, data, shape, count)
    allowed, spelled = _allowed_types(datatype)
    if not set(map(type, flat)) <= allowed:  # one C-speed pass; Python's bool is not an int here
        bad = next(value for value in flat if type(value) not in allowed)
        raise TensorCodecError(name, f"{datatype} data must be {spelled}, got {bad!r}", role="input")
    if datatype == "BYTES":
        out = numpy.empty(count, dtype=object)
        try:
            out[:] = [text.encode("utf-8") for text in flat]
        except UnicodeEncodeError as exc:  # a lone surrogate escape such as "\ud800"
            raise TensorCodecError(name, f"BYTES element is not valid Unicode: {exc.reason}", role="input") from None
        return out.reshape(shape)
    dtype = DATATYPE_TO_DTYPE[datatype]
    try:
        with numpy.errstate(over="ignore"):  # 1e39 as FP32 is inf, as a cast is
            out = numpy.array(flat, dtype=dtype)
    except OverflowError:
        info = numpy.iinfo(dtype)
        detail = f"value out of range for {datatype} [{info.min}, {info.max}]"
        raise TensorCodecError(name, detail, role="input") from None
    return out.reshape(shape)


# --------------------------------------------------------------------------- numpy -> JSON


def array_to_json(name: str, array: numpy.ndarray) -> list[JsonScalar]:
    """An output tensor's flat, row-major JSON `data`. Raises NotUtf8 for a
    BYTES element that is not UTF-8 (JSON strings cannot carry it)."""
    flat = numpy.asarray(array).ravel(order="C")
    datatype = datatype_of(flat.dtype)
    if datatype == "BYTES":
        out = []
        for item in flat.tolist():
            if isinstance(item, str):
                out.append(item)
                continue
            try:
                out.append(bytes(item).decode("utf-8"))
            except UnicodeDecodeError:
                raise NotUtf8(name, "BYTES element is not UTF-8 text", role="output") from None
        return out
    if datatype == "BF16":  # ml_dtypes scalars are no JSON numbers; every BF16 value is exact in FP32
        flat = flat.astype(numpy.float32)
    return flat.tolist()


# --------------------------------------------------------------------------- parameters


class RestFormatError(ValueError):
    """A REST message (not one tensor) is malformed: bad JSON, a missing or
    mistyped field, a parameter with no v2 form."""


def parameters_to_proto(where: str, params: Any, target: Any, *, skip: frozenset[str] = frozenset()) -> None:
    """Copy JSON `parameters` into a protobuf `map<string, InferParameter>`,
    leaving out the keys in `skip` (the binary extension's, consumed here)."""
    if params is None:
        return
    if not isinstance(params, dict):
        raise RestFormatError(f"{where}: parameters must be a JSON object")
    for key, value in params.items():
        if key in skip:
            continue
        if isinstance(value, bool):
            choice = "bool_param"
        elif isinstance(value, int):
            if _INT64[0] <= value <= _INT64[1]:
                choice = "int64_param"
            elif 0 <= value <= _UINT64_MAX:
                choice = "uint64_param"
            else:
                raise RestFormatError(f"{where}: parameter {key!r} is outside the 64-bit integer range")
        elif isinstance(value, float):
            choice = "double_param"
        elif isinstance(value, str):
            choice = "string_param"
        else:
            raise RestFormatError(f"{where}: parameter {key!r} must be a boolean, number or string")
        setattr(target[key], choice, value)


def parameters_to_json(params: Mapping[str, v2.InferParameter]) -> dict[str, JsonScalar]:
    """A protobuf parameter map as a JSON object (unset parameters left out)."""
    out: dict[str, JsonScalar] = {}
    for key, param in params.items():
        choice = param.WhichOneof("parameter_choice")
        if choice is not None:
            out[key] = getattr(param, choice)
    return out
