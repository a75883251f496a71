"""A structural check of a v2 request before it is forwarded.

External servers classify malformed tensors inconsistently (MLServer 1.7
answers INTERNAL for contents that do not fill the shape or an unknown
datatype), while the built-in runtimes answer INVALID_ARGUMENT. Checking the
structure here keeps one answer for one mistake, without decoding: it only
counts elements and bytes, so large tensors cost nothing extra. Whether the
tensors suit the model (names, feature counts) is still the server's call.
"""

from __future__ import annotations

import math

from protos import grpc_predict_v2_pb2 as v2
from protos.tensor_codec import DATATYPE_TO_DTYPE
from runtime_adapter.errors import AdapterError
from runtime_adapter.schema import V2_DATATYPES

_ITEMSIZE = {name: dtype.itemsize for name, dtype in DATATYPE_TO_DTYPE.items() if name != "BYTES"}
_ITEMSIZE.setdefault("BF16", 2)


def _typed_count(contents: v2.InferTensorContents) -> int:
    return sum(len(values) for _field, values in contents.ListFields())


def check_request(request: v2.ModelInferRequest) -> None:
    """Raise INVALID_ARGUMENT naming the first malformed input tensor."""
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise AdapterError.invalid_argument(
            f"{len(raw)} raw_input_contents entries for {len(request.inputs)} inputs"
        )
    for index, tensor in enumerate(request.inputs):
        where = f"input {tensor.name!r}"
        if tensor.datatype not in V2_DATATYPES:
            raise AdapterError.invalid_argument(f"{where}: unknown datatype {tensor.datatype!r}")
        if any(d < 0 for d in tensor.shape):
            raise AdapterError.invalid_argument(f"{where}: negative dimension in shape {list(tensor.shape)}")
        count = math.prod(tensor.shape)
        typed = _typed_count(tensor.contents)
        if raw:
            if typed:
                raise AdapterError.invalid_argument(f"{where}: both raw and typed contents")
            itemsize = _ITEMSIZE.get(tensor.datatype)
            if itemsize is not None and len(raw[index]) != count * itemsize:
                raise AdapterError.invalid_argument(
                    f"{where}: {len(raw[index])} raw bytes for shape {list(tensor.shape)} of {tensor.datatype}"
                    f" (expected {count * itemsize})"
                )
        elif typed != count:
            raise AdapterError.invalid_argument(
                f"{where}: {typed} values for shape {list(tensor.shape)} ({count} elements)"
            )
