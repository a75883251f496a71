"""Tests for protos.tensor_codec: round trips, zero-copy, malformed input, fuzzing, tritonclient interop."""

from __future__ import annotations

import importlib.util
import math
import pickle
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from protos import grpc_predict_v2_pb2 as pb
from protos.tensor_codec import (
    DATATYPE_TO_DTYPE,
    TensorCodecError,
    datatype_of,
    decode_inputs,
    decode_outputs,
    encode_inputs,
    encode_outputs,
)

ml_dtypes = pytest.importorskip("ml_dtypes")
BF16 = np.dtype(ml_dtypes.bfloat16)

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

NUMERIC = ["BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64",
           "FP16", "FP32", "FP64"]
ALL_DATATYPES = NUMERIC + ["BYTES", "BF16"]
# Unsigned integer view of the same width, for bit-exact comparison of float tensors.
BITS = {2: np.uint16, 4: np.uint32, 8: np.uint64}


def _bits(a: np.ndarray) -> np.ndarray:
    return a.view(BITS[a.dtype.itemsize])


def assert_same(expected: np.ndarray, got: np.ndarray, *, exact_bits: bool) -> None:
    """Shape, dtype and values equal; NaN == NaN; with exact_bits also NaN payloads and -0.0."""
    assert got.shape == expected.shape
    if expected.dtype.kind in ("U", "S", "O"):
        assert got.dtype == np.dtype(object)
        want = [e.encode() if isinstance(e, str) else bytes(e) for e in expected.ravel().tolist()]
        assert got.ravel().tolist() == want
        assert all(type(e) is bytes for e in got.ravel().tolist())
        return
    assert got.dtype == expected.dtype
    if expected.dtype == BF16 or expected.dtype.kind == "f":
        if exact_bits:
            np.testing.assert_array_equal(_bits(got), _bits(expected))
        else:  # typed fp32/fp64 go through Python floats: values (incl. NaN-ness) survive, payloads may not
            e64, g64 = expected.astype(np.float64), got.astype(np.float64)
            np.testing.assert_array_equal(np.isnan(g64), np.isnan(e64))
            np.testing.assert_array_equal(g64[~np.isnan(g64)], e64[~np.isnan(e64)])
    else:
        np.testing.assert_array_equal(got, expected)


# ---------------------------------------------------------------- strategies

shapes = hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4)


@st.composite
def tensors(draw: st.DrawFn, datatype: str | None = None) -> np.ndarray:
    datatype = datatype or draw(st.sampled_from(ALL_DATATYPES))
    shape = draw(shapes)
    if datatype == "BYTES":
        return draw(hnp.arrays(np.dtype(object), shape, elements=st.binary(max_size=12)))
    if datatype == "BF16":  # hypothesis has no bfloat16: draw every bit pattern (NaNs, infs, -0.0 included)
        return draw(hnp.arrays(np.uint16, shape)).view(BF16)
    return draw(hnp.arrays(DATATYPE_TO_DTYPE[datatype], shape))


tensor_dicts = st.dictionaries(st.text(max_size=8), tensors(), min_size=1, max_size=4)


def _roundtrip(direction: str, arrays: dict[str, np.ndarray], raw: bool) -> tuple[dict[str, np.ndarray], bool]:
    """Encode then decode through serialized bytes; returns (decoded, message used raw)."""
    if direction == "inputs":
        req = pb.ModelInferRequest()
        encode_inputs(req, arrays, raw=raw)
        req = pb.ModelInferRequest.FromString(req.SerializeToString())
        return decode_inputs(req), len(req.raw_input_contents) > 0
    resp = pb.ModelInferResponse()
    encode_outputs(resp, arrays, raw=raw)
    resp = pb.ModelInferResponse.FromString(resp.SerializeToString())
    return decode_outputs(resp), len(resp.raw_output_contents) > 0


# ---------------------------------------------------------------- datatype table


def test_datatype_table_covers_v2() -> None:
    expected = {"BOOL": np.bool_, "UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32,
                "UINT64": np.uint64, "INT8": np.int8, "INT16": np.int16, "INT32": np.int32,
                "INT64": np.int64, "FP16": np.float16, "FP32": np.float32, "FP64": np.float64,
                "BYTES": np.object_, "BF16": ml_dtypes.bfloat16}
    assert set(DATATYPE_TO_DTYPE) == set(expected)
    for name, dt in expected.items():
        assert DATATYPE_TO_DTYPE[name] == np.dtype(dt)
        assert datatype_of(np.dtype(dt)) == name


@pytest.mark.parametrize("dtype", ["<U3", "S4", "O", ">U2"])
def test_datatype_of_strings_are_bytes(dtype: str) -> None:
    assert datatype_of(np.dtype(dtype)) == "BYTES"


@pytest.mark.parametrize("dtype,name", [(">f4", "FP32"), (">i8", "INT64"), (">u2", "UINT16"), ("<f2", "FP16")])
def test_datatype_of_ignores_byte_order(dtype: str, name: str) -> None:
    assert datatype_of(np.dtype(dtype)) == name


@pytest.mark.parametrize("dtype", [np.complex64, np.complex128, "M8[s]", "m8[s]", "V8", np.longdouble])
def test_datatype_of_unsupported_raises_without_tensor_name(dtype: object) -> None:
    if np.dtype(dtype) == np.float64:  # platforms where longdouble is double
        pytest.skip("longdouble is float64 here")
    with pytest.raises(TensorCodecError) as info:
        datatype_of(np.dtype(dtype))
    assert info.value.tensor_name == ""
    assert str(np.dtype(dtype)) in str(info.value)


# ---------------------------------------------------------------- round trips


@pytest.mark.parametrize("direction", ["inputs", "outputs"])
@pytest.mark.parametrize("raw", [True, False])
@pytest.mark.parametrize("datatype", ALL_DATATYPES)
def test_roundtrip_each_datatype_fixed(datatype: str, raw: bool, direction: str) -> None:
    """Every datatype, both encodings, both directions, incl. a zero-size and a 0-d tensor."""
    if datatype == "BYTES":
        base = np.array([b"", b"a", b"\x00\xff", "é".encode(), b"x" * 300, b"z"], dtype=object)
    elif datatype == "BOOL":
        base = np.array([True, False, True, True, False, False])
    elif datatype in ("FP16", "FP32", "FP64", "BF16"):
        base = np.array([0.0, -0.0, 1.5, -np.inf, np.nan, 3.0]).astype(DATATYPE_TO_DTYPE[datatype])
    else:
        info = np.iinfo(DATATYPE_TO_DTYPE[datatype])
        base = np.array([info.min, info.max, 0, 1, info.max - 1, info.min + 1], dtype=DATATYPE_TO_DTYPE[datatype])
    arrays = {"m": base.reshape(2, 3), "empty": base[:0].reshape(0, 4), "scalar": base[:1].reshape(())}
    got, used_raw = _roundtrip(direction, arrays, raw)
    assert list(got) == ["m", "empty", "scalar"]
    assert used_raw == (raw or datatype in ("FP16", "BF16"))
    for name, arr in arrays.items():
        assert_same(arr, got[name], exact_bits=used_raw)


@SETTINGS
@given(arrays=tensor_dicts, raw=st.booleans(), direction=st.sampled_from(["inputs", "outputs"]))
def test_roundtrip_random(arrays: dict[str, np.ndarray], raw: bool, direction: str) -> None:
    got, used_raw = _roundtrip(direction, arrays, raw)
    needs_raw = any(a.dtype in (np.float16, BF16) for a in arrays.values())
    assert used_raw == (raw or needs_raw)
    assert list(got) == list(arrays)
    for name, arr in arrays.items():
        assert_same(arr, got[name], exact_bits=used_raw)


def test_roundtrip_noncontiguous_and_big_endian() -> None:
    a = np.arange(24, dtype=">f4").reshape(4, 6)[::2, ::3]  # big-endian, strided
    b = np.asfortranarray(np.arange(12, dtype=np.int16).reshape(3, 4))
    for raw in (True, False):
        got, _ = _roundtrip("outputs", {"a": a, "b": b}, raw)
        np.testing.assert_array_equal(got["a"], a.astype("<f4"))
        assert got["a"].dtype == np.float32
        np.testing.assert_array_equal(got["b"], b)
    req = pb.ModelInferRequest()
    encode_inputs(req, {"a": a}, raw=True)
    assert req.raw_input_contents[0] == np.ascontiguousarray(a, dtype="<f4").tobytes()
    assert req.raw_input_contents[0][:8] == struct.pack("<ff", 0.0, 3.0)  # explicit little-endian on the wire


def test_strings_encode_as_utf8_bytes() -> None:
    arrays = {"u": np.array([["héllo", ""], ["日本", "x"]]),
              "o": np.array(["a", b"\xff", "ß"], dtype=object)}
    for raw in (True, False):
        got, _ = _roundtrip("outputs", arrays, raw)
        assert got["u"].tolist() == [["héllo".encode(), b""], ["日本".encode(), b"x"]]
        assert got["o"].tolist() == [b"a", b"\xff", "ß".encode()]
    resp = pb.ModelInferResponse()
    encode_outputs(resp, {"u": np.array(["é", "ab"])}, raw=True)
    assert resp.outputs[0].datatype == "BYTES"
    assert resp.raw_output_contents[0] == b"\x02\x00\x00\x00\xc3\xa9\x02\x00\x00\x00ab"


def test_fp16_forces_raw_for_all_outputs() -> None:
    resp = pb.ModelInferResponse()
    encode_outputs(resp, {"i": np.array([1, 2], np.int32), "h": np.array([0.5], np.float16)}, raw=False)
    assert len(resp.raw_output_contents) == 2
    assert not any(o.contents.ListFields() for o in resp.outputs)
    assert resp.raw_output_contents[0] == np.array([1, 2], "<i4").tobytes()
    assert resp.raw_output_contents[1] == np.array([0.5], "<f2").tobytes()
    assert [o.datatype for o in resp.outputs] == ["INT32", "FP16"]
    assert [list(o.shape) for o in resp.outputs] == [[2], [1]]


def test_typed_encoding_uses_the_v2_fields() -> None:
    resp = pb.ModelInferResponse()
    encode_outputs(resp, {"a": np.array([1, -2], np.int8), "b": np.array([7], np.uint64),
                          "c": np.array([True]), "d": np.array([b"q"], dtype=object)}, raw=False)
    assert len(resp.raw_output_contents) == 0
    assert list(resp.outputs[0].contents.int_contents) == [1, -2]
    assert list(resp.outputs[1].contents.uint64_contents) == [7]
    assert list(resp.outputs[2].contents.bool_contents) == [True]
    assert list(resp.outputs[3].contents.bytes_contents) == [b"q"]


def test_encode_raw_into_message_with_typed_tensors_is_refused() -> None:
    resp = pb.ModelInferResponse()
    encode_outputs(resp, {"a": np.array([1], np.int32)}, raw=False)
    with pytest.raises(ValueError, match="typed"):
        encode_outputs(resp, {"b": np.array([1], np.int32)}, raw=True)


def test_encode_appends_keeping_raw() -> None:
    resp = pb.ModelInferResponse()
    encode_outputs(resp, {"a": np.array([1], np.int32)}, raw=True)
    encode_outputs(resp, {"b": np.array([2], np.int32)}, raw=False)  # raw already in use -> stays raw
    assert len(resp.raw_output_contents) == 2
    got = decode_outputs(resp)
    assert got["a"].tolist() == [1] and got["b"].tolist() == [2]


# ---------------------------------------------------------------- zero copy


def test_raw_decode_is_zero_copy() -> None:
    arr = np.arange(12, dtype=np.float32).reshape(3, 4)
    req = pb.ModelInferRequest()
    encode_inputs(req, {"x": arr}, raw=True)
    got = decode_inputs(req)["x"]
    np.testing.assert_array_equal(got, arr)
    assert not got.flags.owndata
    assert not got.flags.writeable  # a view of immutable message bytes
    base = got
    while isinstance(base, np.ndarray):
        base = base.base
    assert isinstance(base, bytes)
    assert base == arr.tobytes()
    assert len(base) == got.nbytes  # the view spans exactly the raw entry, nothing was copied around it


def test_typed_decode_owns_its_data() -> None:
    req = pb.ModelInferRequest()
    encode_inputs(req, {"x": np.arange(3, dtype=np.float32)}, raw=False)
    got = decode_inputs(req)["x"]
    assert got.flags.writeable
    assert got.tolist() == [0.0, 1.0, 2.0]


# ---------------------------------------------------------------- decode specifics


def _request(*tensors: tuple[str, str, list[int]], raw: list[bytes] | None = None) -> pb.ModelInferRequest:
    req = pb.ModelInferRequest()
    for name, datatype, shape in tensors:
        t = req.inputs.add(name=name, datatype=datatype)
        t.shape.extend(shape)
    if raw is not None:
        req.raw_input_contents.extend(raw)
    return req


def test_fp16_and_bf16_accepted_from_fp32_contents() -> None:
    req = _request(("h", "FP16", [3]), ("b", "BF16", [2]))
    req.inputs[0].contents.fp32_contents.extend([1.5, -2.0, 1e6])  # 1e6 overflows fp16 -> inf
    req.inputs[1].contents.fp32_contents.extend([1.0, 3.0])
    got = decode_inputs(req)
    assert got["h"].dtype == np.float16 and got["h"].tolist() == [1.5, -2.0, float("inf")]
    assert got["b"].dtype == BF16 and got["b"].astype(np.float32).tolist() == [1.0, 3.0]


def test_bool_raw_nonzero_bytes_are_true() -> None:
    got = decode_inputs(_request(("b", "BOOL", [4]), raw=[b"\x00\x01\x02\xff"]))["b"]
    assert got.dtype == np.bool_
    assert got.tolist() == [False, True, True, True]
    assert got.view(np.uint8).tolist() == [0, 1, 1, 1]  # canonical numpy bools


def test_bytes_raw_framing_decodes() -> None:
    raw = b"\x03\x00\x00\x00abc" + b"\x00\x00\x00\x00" + b"\x01\x00\x00\x00\x00"
    got = decode_inputs(_request(("s", "BYTES", [3, 1]), raw=[raw]))["s"]
    assert got.shape == (3, 1) and got.dtype == object
    assert got.ravel().tolist() == [b"abc", b"", b"\x00"]


def test_inputs_order_preserved() -> None:
    req = _request(("z", "INT32", [1]), ("a", "INT32", [1]), ("m", "INT32", [1]),
                   raw=[struct.pack("<i", 1), struct.pack("<i", 2), struct.pack("<i", 3)])
    got = decode_inputs(req)
    assert list(got) == ["z", "a", "m"]
    assert [int(v[0]) for v in got.values()] == [1, 2, 3]


# ---------------------------------------------------------------- malformed input


def _raises(req: pb.ModelInferRequest, name: str, fragment: str) -> TensorCodecError:
    with pytest.raises(TensorCodecError) as info:
        decode_inputs(req)
    assert info.value.tensor_name == name
    assert f"input '{name}'" in str(info.value)
    assert fragment in str(info.value)
    return info.value


def test_raw_byte_length_mismatch_message() -> None:
    err = _raises(_request(("x", "FP32", [2, 3]), raw=[b"\0" * 20]), "x", "24 bytes")
    assert str(err) == "input 'x': shape [2, 3] × FP32 needs 24 bytes, got 20"
    assert isinstance(err, ValueError)


def test_unknown_datatype() -> None:
    _raises(_request(("x", "FP8", [1]), raw=[b"\0"]), "x", "unknown datatype 'FP8'")
    _raises(_request(("x", "fp32", [1]), raw=[b"\0" * 4]), "x", "unknown datatype")


def test_negative_dimension() -> None:
    _raises(_request(("x", "FP32", [2, -1]), raw=[b"\0" * 8]), "x", "negative")


def test_typed_element_count_mismatch() -> None:
    req = _request(("ok", "INT64", [1]), ("x", "FP32", [2, 2]))
    req.inputs[0].contents.int64_contents.append(5)
    req.inputs[1].contents.fp32_contents.extend([1.0, 2.0, 3.0])
    _raises(req, "x", "needs 4 FP32 values in fp32_contents, got 3")


def test_typed_missing_contents() -> None:
    _raises(_request(("x", "INT32", [2])), "x", "got 0")


def test_wrong_typed_field() -> None:
    req = _request(("x", "FP32", [2]))
    req.inputs[0].contents.int_contents.extend([1, 2])
    _raises(req, "x", "FP32 data must be in fp32_contents, got int_contents")


def test_extra_typed_field_alongside_right_one() -> None:
    req = _request(("x", "INT64", [1]))
    req.inputs[0].contents.int64_contents.append(1)
    req.inputs[0].contents.bytes_contents.append(b"junk")
    _raises(req, "x", "bytes_contents")


def test_int8_out_of_range_in_int_contents() -> None:
    req = _request(("x", "INT8", [2]))
    req.inputs[0].contents.int_contents.extend([1, 300])
    _raises(req, "x", "out of range for INT8")
    req = _request(("u", "UINT16", [1]))
    req.inputs[0].contents.uint_contents.append(70000)
    _raises(req, "u", "out of range for UINT16")


@pytest.mark.parametrize("raw,fragment", [
    (b"\x01\x00\x00\x00a\x0a\x00\x00\x00abc", "element 1 declares 10 bytes, only 3 remain"),  # payload cut
    (b"\x04\x00\x00\x00abcd\x02\x00", "element 1 length header truncated"),  # second header cut
    (b"\x01\x00\x00\x00a\x01\x00\x00\x00b\x01\x00\x00\x00c", "after the 2 expected"),  # one element too many
    (b"\x01\x00\x00\x00a\x01\x00\x00\x00bZ", "1 bytes after"),           # trailing garbage
    (b"\x00\x00", "BYTES needs 2 elements"),                             # hopelessly short
])
def test_bytes_framing_errors(raw: bytes, fragment: str) -> None:
    _raises(_request(("s", "BYTES", [2]), raw=[raw]), "s", fragment)


def test_duplicate_input_names() -> None:
    req = _request(("x", "INT32", [1]), ("x", "INT32", [1]), raw=[b"\0" * 4, b"\0" * 4])
    _raises(req, "x", "duplicate")


def test_raw_entry_count_mismatch_names_first_uncovered_input() -> None:
    req = _request(("a", "INT32", [1]), ("b", "INT32", [1]), raw=[b"\0" * 4])
    _raises(req, "b", "1 raw contents entries for 2")
    _raises(_request(("a", "INT32", [1]), raw=[b"\0" * 4, b"\0" * 4]), "a", "2 raw contents entries for 1")


def test_raw_and_typed_contents_together() -> None:
    req = _request(("a", "INT32", [1]), ("b", "INT32", [1]), raw=[b"\0" * 4, b"\0" * 4])
    req.inputs[1].contents.int_contents.append(3)
    _raises(req, "b", "typed contents")


def test_unrepresentable_shape() -> None:
    _raises(_request(("x", "FP32", [0, 2**62]), raw=[b""]), "x", "not representable")
    _raises(_request(("x", "FP32", [1] * 70), raw=[b"\0" * 4]), "x", "not representable")
    _raises(_request(("x", "FP32", [2**40, 2**40]), raw=[b"\0" * 4]), "x", "bytes, got 4")


def test_output_errors_say_output() -> None:
    resp = pb.ModelInferResponse()
    t = resp.outputs.add(name="y", datatype="FP64")
    t.shape.append(2)
    resp.raw_output_contents.append(b"\0" * 8)
    with pytest.raises(TensorCodecError, match=r"^output 'y': shape \[2\] × FP64 needs 16 bytes, got 8$") as info:
        decode_outputs(resp)
    assert info.value.tensor_name == "y"


def test_encode_unsupported_dtype_names_tensor() -> None:
    resp = pb.ModelInferResponse()
    with pytest.raises(TensorCodecError, match="^output 'c': numpy dtype complex64") as info:
        encode_outputs(resp, {"c": np.zeros(2, np.complex64)}, raw=True)
    assert info.value.tensor_name == "c"
    req = pb.ModelInferRequest()
    with pytest.raises(TensorCodecError, match="^input 'o': BYTES element of type int"):
        encode_inputs(req, {"o": np.array([b"a", 3], dtype=object)}, raw=False)


# ---------------------------------------------------------------- fuzz

datatype_strings = st.one_of(st.sampled_from(ALL_DATATYPES), st.text(max_size=6))
dims = st.one_of(st.integers(0, 4), st.integers(-3, 6), st.integers(-(2**63), 2**63 - 1))


@st.composite
def raw_payloads(draw: st.DrawFn) -> bytes:
    """Random bytes, or BYTES-style framing that is well formed, truncated or padded."""
    if draw(st.booleans()):
        return draw(st.binary(max_size=64))
    elems = draw(st.lists(st.binary(max_size=6), max_size=6))
    framed = b"".join(struct.pack("<I", len(e)) + e for e in elems)
    cut = draw(st.integers(-3, 3))
    return framed[:cut] if cut < 0 else framed + b"\0" * cut


@st.composite
def fuzz_requests(draw: st.DrawFn) -> pb.ModelInferRequest:
    req = pb.ModelInferRequest()
    n = draw(st.integers(1, 3))
    for _ in range(n):
        t = req.inputs.add(name=draw(st.sampled_from(["a", "b", "c", ""])), datatype=draw(datatype_strings))
        t.shape.extend(draw(st.lists(dims, max_size=4)))
        if draw(st.integers(0, 3)) == 0:  # occasionally typed contents, possibly in the wrong field
            field = draw(st.sampled_from(["bool_contents", "int_contents", "int64_contents", "uint_contents",
                                          "uint64_contents", "fp32_contents", "fp64_contents", "bytes_contents"]))
            values = {
                "bool_contents": st.booleans(), "int_contents": st.integers(-(2**31), 2**31 - 1),
                "int64_contents": st.integers(-(2**63), 2**63 - 1), "uint_contents": st.integers(0, 2**32 - 1),
                "uint64_contents": st.integers(0, 2**64 - 1), "fp32_contents": st.floats(width=32),
                "fp64_contents": st.floats(), "bytes_contents": st.binary(max_size=4),
            }[field]
            getattr(t.contents, field).extend(draw(st.lists(values, max_size=6)))
    if draw(st.booleans()):
        req.raw_input_contents.extend(draw(st.lists(raw_payloads(), min_size=n - 1, max_size=n + 1)))
    return req


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(req=fuzz_requests())
def test_fuzz_decode_only_raises_codec_error(req: pb.ModelInferRequest) -> None:
    try:
        got = decode_inputs(req)
    except TensorCodecError as exc:
        assert exc.tensor_name in {t.name for t in req.inputs}
        assert str(exc).startswith(f"input '{exc.tensor_name}': ")
        return
    assert list(got) == [t.name for t in req.inputs]
    for t in req.inputs:
        assert got[t.name].shape == tuple(t.shape)
        assert got[t.name].dtype == DATATYPE_TO_DTYPE[t.datatype]


MUTATIONS = ["none", "datatype", "dim", "raw_len", "typed_field", "rename", "drop_raw", "raw_to_typed"]


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(arrays=tensor_dicts, raw=st.booleans(), mutation=st.sampled_from(MUTATIONS), data=st.data())
def test_fuzz_mutated_valid_request(arrays: dict[str, np.ndarray], raw: bool, mutation: str,
                                    data: st.DataObject) -> None:
    """A valid request with one corruption decodes to the right shapes or raises TensorCodecError."""
    req = pb.ModelInferRequest()
    encode_inputs(req, arrays, raw=raw)
    i = data.draw(st.integers(0, len(req.inputs) - 1))
    t = req.inputs[i]
    if mutation == "datatype":
        t.datatype = data.draw(datatype_strings)
    elif mutation == "dim":
        t.shape.append(data.draw(dims))
    elif mutation == "raw_len" and req.raw_input_contents:
        body = req.raw_input_contents[i]
        req.raw_input_contents[i] = body[: data.draw(st.integers(0, len(body)))] + data.draw(st.binary(max_size=5))
    elif mutation == "typed_field":
        t.contents.int64_contents.extend(data.draw(st.lists(st.integers(-5, 5), min_size=1, max_size=3)))
    elif mutation == "rename":
        t.name = req.inputs[0].name
    elif mutation == "drop_raw" and req.raw_input_contents:
        del req.raw_input_contents[i]
    elif mutation == "raw_to_typed" and req.raw_input_contents:  # typed contents claimed as raw bytes
        req.raw_input_contents[i] = t.contents.SerializeToString()
    try:
        got = decode_inputs(req)
    except TensorCodecError as exc:
        assert mutation != "none"
        assert exc.tensor_name in {x.name for x in req.inputs}
        assert str(exc).startswith(f"input '{exc.tensor_name}': ")
        return
    assert list(got) == [x.name for x in req.inputs]
    for x in req.inputs:
        assert got[x.name].shape == tuple(x.shape)
        assert got[x.name].dtype == DATATYPE_TO_DTYPE[x.datatype]


@settings(max_examples=200, deadline=None)
@given(datatype=datatype_strings, shape=st.lists(dims, max_size=3), data=st.data())
def test_fuzz_single_raw_tensor(datatype: str, shape: list[int], data: st.DataObject) -> None:
    """Random bytes, framing, or (half the time) a payload of exactly the expected size."""
    itemsize = DATATYPE_TO_DTYPE[datatype].itemsize if datatype in NUMERIC + ["BF16"] else 0
    count = math.prod(shape)
    if itemsize and 0 <= count <= 64 and min(shape, default=0) >= 0 and data.draw(st.booleans()):
        raw = data.draw(st.binary(min_size=count * itemsize, max_size=count * itemsize))
    else:
        raw = data.draw(raw_payloads())
    req = _request(("t", datatype, shape), raw=[raw])
    try:
        got = decode_inputs(req)["t"]
    except TensorCodecError as exc:
        assert exc.tensor_name == "t" and str(exc).startswith("input 't': ")
        return
    assert got.shape == tuple(shape)
    assert got.dtype == DATATYPE_TO_DTYPE[datatype]
    if datatype != "BYTES":
        assert got.nbytes == len(raw)
        if datatype != "BOOL":  # BOOL normalises nonzero bytes to 1
            assert got.tobytes() == raw


# ---------------------------------------------------------------- tritonclient interop
# tritonclient's generated service_pb2 declares the same `inference.*` symbols as our
# grpc_predict_v2_pb2, and protobuf refuses to load both into one process ("duplicate
# symbol 'inference.ServerLiveRequest'"). So the tritonclient side runs in a child
# interpreter and the two sides exchange serialized messages, exactly as over the wire.

_TRITON_CHILD = r"""
import pickle, sys
import ml_dtypes  # noqa: F401  (unpickling BF16 arrays)
import tritonclient.grpc as g
from tritonclient.grpc import service_pb2
from tritonclient.utils import np_to_triton_dtype
mode, path_in, path_out = sys.argv[1:]
if mode == "request":
    with open(path_in, "rb") as f:
        arrays = pickle.load(f)
    req = service_pb2.ModelInferRequest(model_name="m")
    for name, arr in arrays.items():
        inp = g.InferInput(name, list(arr.shape), np_to_triton_dtype(arr.dtype))
        inp.set_data_from_numpy(arr)
        req.inputs.append(inp._get_tensor())
        req.raw_input_contents.append(inp._get_content())
    with open(path_out, "wb") as f:
        f.write(req.SerializeToString())
else:
    with open(path_in, "rb") as f:
        resp = service_pb2.ModelInferResponse.FromString(f.read())
    result = g.InferResult(resp)
    with open(path_out, "wb") as f:
        pickle.dump({o.name: result.as_numpy(o.name) for o in resp.outputs}, f)
"""

requires_tritonclient = pytest.mark.skipif(
    importlib.util.find_spec("tritonclient") is None, reason="tritonclient not installed")

INTEROP = {
    "f32": np.array([[1.5, -0.0, np.nan], [np.inf, 3.25, -7.0]], np.float32),
    "i64": np.array([-(2**63), 2**63 - 1, 0, 42], np.int64),
    "s": np.array([[b"hello", b""], [b"\x00\xffbin", "é".encode()]], dtype=object),
    "h": np.array([0.5, -65504.0, np.nan], np.float16),
    "bf": np.array([1.0, -2.5, 3.0e38], np.float32).astype(BF16),
    "b": np.array([True, False, True]),
    "empty": np.zeros((0, 3), np.int32),
}


def _triton(mode: str, payload: bytes, tmp_path: Path) -> bytes:
    src, dst = tmp_path / f"{mode}.in", tmp_path / f"{mode}.out"
    src.write_bytes(payload)
    proc = subprocess.run([sys.executable, "-c", _TRITON_CHILD, mode, str(src), str(dst)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return dst.read_bytes()


@requires_tritonclient
def test_tritonclient_request_decodes(tmp_path: Path) -> None:
    req = pb.ModelInferRequest.FromString(_triton("request", pickle.dumps(INTEROP), tmp_path))
    assert [t.datatype for t in req.inputs] == ["FP32", "INT64", "BYTES", "FP16", "BF16", "BOOL", "INT32"]
    got = decode_inputs(req)
    assert list(got) == list(INTEROP)
    for name, arr in INTEROP.items():
        assert_same(arr, got[name], exact_bits=True)


@requires_tritonclient
def test_tritonclient_reads_our_response(tmp_path: Path) -> None:
    resp = pb.ModelInferResponse(model_name="m")
    encode_outputs(resp, {**INTEROP, "u": np.array(["héllo", "x"])}, raw=True)
    got = pickle.loads(_triton("response", resp.SerializeToString(), tmp_path))
    assert list(got) == [*INTEROP, "u"]
    for name, arr in INTEROP.items():
        if arr.dtype == object:
            assert got[name].shape == arr.shape and got[name].tolist() == arr.tolist()
        else:
            assert_same(arr, got[name], exact_bits=True)
    assert got["u"].tolist() == ["héllo".encode(), b"x"]
