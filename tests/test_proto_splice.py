"""The id splicer against real protobuf parsing (hypothesis): the spliced
field holds the id and every other field is intact."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mesh.proto_splice import SpliceError, splice_string
from protos import grpc_predict_v2_pb2 as v2

names = st.text(max_size=20)


@settings(max_examples=200, deadline=None)
@given(model_name=names, version=names, request_id=names, new_id=names, n_inputs=st.integers(0, 3))
def test_top_level_field(model_name, version, request_id, new_id, n_inputs):
    request = v2.ModelInferRequest(model_name=model_name, model_version=version, id=request_id)
    for i in range(n_inputs):
        request.inputs.add(name=f"in{i}", datatype="FP32", shape=[1, i])
    request.raw_input_contents.extend([b"\x00\x01" * i for i in range(n_inputs)])
    spliced = v2.ModelInferRequest.FromString(splice_string(request.SerializeToString(), [1], new_id))
    expected = v2.ModelInferRequest()
    expected.CopyFrom(request)
    expected.model_name = new_id
    assert spliced == expected


@settings(max_examples=100, deadline=None)
@given(name=names, new_id=names, with_outer=st.booleans())
def test_nested_path_creates_or_rewrites(name, new_id, with_outer):
    # ModelInferResponse.outputs (5) -> InferOutputTensor.name (1)
    response = v2.ModelInferResponse(model_name="m")
    if with_outer:
        response.outputs.add(name=name, datatype="FP32", shape=[2])
    spliced = v2.ModelInferResponse.FromString(splice_string(response.SerializeToString(), [5, 1], new_id))
    assert spliced.model_name == "m"
    assert [o.name for o in spliced.outputs] == [new_id]
    if with_outer:
        assert spliced.outputs[0].datatype == "FP32" and list(spliced.outputs[0].shape) == [2]


def test_rejects_a_path_through_a_scalar():
    request = v2.ModelInferRequest(model_name="m")
    request.inputs.add(name="x", datatype="FP32", shape=[3])
    with pytest.raises(SpliceError):
        splice_string(request.SerializeToString(), [5, 3, 1], "id")  # shape is packed ints, then not a message
    with pytest.raises(SpliceError):
        splice_string(b"\x0a\x05ab", [1], "id")  # length past the end
