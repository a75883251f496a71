"""Small ONNX models made by code: the examples `mmesh up` serves and the
models the tests and benchmarks load (nothing binary is committed).

Opset and IR version are pinned low enough for every onnxruntime we support.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

OPSET = 17
IR_VERSION = 8


def _save(graph, path: Path) -> Path:
    import onnx
    from onnx import helper

    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="mmesh")
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def make_add_model(path: Path, width: int = 4, addend: float = 1.0) -> Path:
    """y = x + addend for FP32 x of shape [batch, width]."""
    from onnx import TensorProto, helper, numpy_helper

    const = numpy_helper.from_array(np.full((width,), addend, dtype=np.float32), name="addend")
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "addend"], ["y"])],
        "add",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", width])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", width])],
        initializer=[const],
    )
    return _save(graph, path)


def make_dense_model(path: Path, width: int = 16, layers: int = 1, seed: int = 0) -> Path:
    """y = relu(x·W1)·…·Wn: the file (and memory) size is set by width and layers,
    about layers × width² × 4 bytes — how tests and benchmarks get models of a
    known size."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    nodes, inits, current = [], [], "x"
    for i in range(layers):
        weight = numpy_helper.from_array(
            (rng.standard_normal((width, width)) / np.sqrt(width)).astype(np.float32), name=f"w{i}"
        )
        inits.append(weight)
        out = "y" if i == layers - 1 else f"h{i}"
        matmul_out = f"m{i}" if i < layers - 1 else out
        nodes.append(helper.make_node("MatMul", [current, f"w{i}"], [matmul_out]))
        if i < layers - 1:
            nodes.append(helper.make_node("Relu", [matmul_out], [out]))
        current = out
    graph = helper.make_graph(
        nodes,
        "dense",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", width])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", width])],
        initializer=inits,
    )
    return _save(graph, path)


def make_string_model(path: Path) -> Path:
    """Identity over a string tensor: exercises v2 BYTES end to end."""
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["text"], ["echo"])],
        "echo",
        [helper.make_tensor_value_info("text", TensorProto.STRING, ["batch"])],
        [helper.make_tensor_value_info("echo", TensorProto.STRING, ["batch"])],
    )
    return _save(graph, path)


def make_identity_model(path: Path, datatype: str = "FP32") -> Path:
    """y = x for a rank-2 tensor of any size of one v2 datatype: the model the
    wire tests and benchmarks send every datatype (and large tensors) through."""
    from onnx import TensorProto, helper

    onnx_type = {
        "BOOL": TensorProto.BOOL, "UINT8": TensorProto.UINT8, "UINT16": TensorProto.UINT16,
        "UINT32": TensorProto.UINT32, "UINT64": TensorProto.UINT64, "INT8": TensorProto.INT8,
        "INT16": TensorProto.INT16, "INT32": TensorProto.INT32, "INT64": TensorProto.INT64,
        "FP16": TensorProto.FLOAT16, "FP32": TensorProto.FLOAT, "FP64": TensorProto.DOUBLE,
        "BF16": TensorProto.BFLOAT16, "BYTES": TensorProto.STRING,
    }[datatype]
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        f"identity-{datatype.lower()}",
        [helper.make_tensor_value_info("x", onnx_type, ["rows", "cols"])],
        [helper.make_tensor_value_info("y", onnx_type, ["rows", "cols"])],
    )
    return _save(graph, path)


EXAMPLES = {
    "add-one": lambda d: make_add_model(d / "add-one" / "model.onnx"),
    "dense-64": lambda d: make_dense_model(d / "dense-64" / "model.onnx", width=64, layers=2),
    "echo-text": lambda d: make_string_model(d / "echo-text" / "model.onnx"),
}


def write_examples(directory: Path) -> dict[str, Path]:
    """Generate the example models under `directory` (once); returns id → dir."""
    paths = {}
    for model_id, make in EXAMPLES.items():
        target = directory / model_id
        if not (target / "model.onnx").exists():
            make(directory)
        paths[model_id] = target
    return paths
