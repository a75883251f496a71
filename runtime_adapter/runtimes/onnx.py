"""Built-in ONNX Runtime runtime (model type ``onnx``).

Execution provider: CUDA when the GPU build of onnxruntime is installed, a GPU
is visible and the operator allows it (`device` = ``auto`` or ``cuda``); the
CPU provider otherwise. The choice is a pure function (`select_providers`) so
it is tested without a GPU, and it is logged at load.

Model size: *estimated*, not measured. ONNX Runtime keeps a model's
initializers (weights) in memory once, and they make up nearly all of an
ONNX file, so we report ``file size + SESSION_OVERHEAD_BYTES``. The estimate is
deterministic, which keeps placement predictable; measuring the RSS/GPU delta
is left to the measured-memory work (it is noisy while other loads run).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from runtime_adapter.errors import AdapterError
from runtime_adapter.gpu import visible_gpu_count
from runtime_adapter.runtimes.base import TensorSpec, check_inputs, resolve_model_file

log = logging.getLogger(__name__)

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
DEVICES = ("auto", "cpu", "cuda")
SESSION_OVERHEAD_BYTES = 256 * 1024

ORT_TYPE_TO_DATATYPE = {
    "tensor(bool)": "BOOL",
    "tensor(uint8)": "UINT8",
    "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64",
    "tensor(int8)": "INT8",
    "tensor(int16)": "INT16",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(float16)": "FP16",
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
    "tensor(bfloat16)": "BF16",
    "tensor(string)": "BYTES",
}


def select_providers(device: str, available: Sequence[str], gpu_count: int) -> list[str]:
    """Execution providers for a session, in ONNX Runtime's priority order.

    ``cuda`` asked for but impossible (CPU-only onnxruntime or no GPU) degrades
    to the CPU with a warning rather than failing every load.
    """
    if device not in DEVICES:
        raise ValueError(f"device must be one of {DEVICES}, got {device!r}")
    cuda_possible = CUDA in available and gpu_count > 0
    if device == "cpu" or not cuda_possible:
        if device == "cuda":
            why = "onnxruntime has no CUDA provider" if CUDA not in available else "no GPU is visible"
            log.warning("device=cuda requested but %s; using the CPU", why)
        return [CPU]
    return [CUDA, CPU]


def _dims(shape: Sequence[object]) -> tuple[int, ...]:
    """ORT reports symbolic or unknown dims as strings/None; v2 says -1."""
    return tuple(d if isinstance(d, int) and d >= 0 else -1 for d in shape)


@dataclass
class OnnxModel:
    """A loaded ONNX Runtime session."""

    session: object
    size_bytes: int
    inputs: list[TensorSpec] = field(default_factory=list)
    outputs: list[TensorSpec] = field(default_factory=list)
    providers: list[str] = field(default_factory=list)
    platform: str = "onnxruntime_onnx"

    def infer(
        self, inputs: Mapping[str, np.ndarray], output_names: Sequence[str] | None
    ) -> dict[str, np.ndarray]:
        from onnxruntime.capi import onnxruntime_pybind11_state as ort_errors

        check_inputs(self.inputs, inputs)
        known_outputs = [spec.name for spec in self.outputs]
        names = list(output_names) if output_names else known_outputs
        unknown = [n for n in names if n not in known_outputs]
        if unknown:
            raise AdapterError.invalid_argument(
                f"unknown output(s) {unknown}; the model produces {known_outputs}"
            )
        feed = {name: _to_ort(array) for name, array in inputs.items()}
        try:
            results = self.session.run(names, feed)  # type: ignore[attr-defined]
        except (ort_errors.InvalidArgument, ort_errors.InvalidGraph) as exc:
            raise AdapterError.invalid_argument(f"onnxruntime rejected the input: {exc}") from exc
        except ort_errors.Fail as exc:
            raise AdapterError.invalid_argument(f"onnxruntime failed on the input: {exc}") from exc
        return dict(zip(names, results))

    def close(self) -> None:
        # ORT frees the session when the last reference goes
        self.session = None


def _to_ort(array: np.ndarray) -> np.ndarray:
    """v2 BYTES arrive as bytes objects; ORT string tensors want str."""
    if array.dtype == object:
        return np.vectorize(
            lambda v: v.decode("utf-8", "replace") if isinstance(v, bytes) else v, otypes=[object]
        )(array) if array.size else array
    return array


@dataclass
class OnnxRuntime:
    """Loads `.onnx` files into ONNX Runtime sessions."""

    device: str = "auto"
    intra_op_threads: int = 1
    model_type: str = "onnx"

    def predict_size(self, path: Path) -> int:
        model_file = resolve_model_file(path, (".onnx",), "model.onnx")
        return model_file.stat().st_size + SESSION_OVERHEAD_BYTES

    def load(self, model_id: str, path: Path) -> OnnxModel:
        import onnxruntime as ort

        model_file = resolve_model_file(path, (".onnx",), "model.onnx")
        providers = select_providers(self.device, ort.get_available_providers(), visible_gpu_count())
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.intra_op_threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        try:
            session = ort.InferenceSession(str(model_file), sess_options=options, providers=providers)
        except Exception as exc:  # ORT raises its own types for bad/unsupported files
            raise AdapterError.failed_precondition(
                f"model {model_id!r}: {model_file.name} is not a loadable ONNX model: {exc}"
            ) from exc
        used = session.get_providers()
        log.info("model %s loaded with providers %s (asked %s)", model_id, used, providers)
        return OnnxModel(
            session=session,
            size_bytes=model_file.stat().st_size + SESSION_OVERHEAD_BYTES,
            inputs=[_spec(i) for i in session.get_inputs()],
            outputs=[_spec(o) for o in session.get_outputs()],
            providers=used,
        )


def _spec(node: object) -> TensorSpec:
    ort_type = getattr(node, "type")
    datatype = ORT_TYPE_TO_DATATYPE.get(ort_type)
    if datatype is None:
        raise AdapterError.failed_precondition(
            f"tensor {getattr(node, 'name')!r} has type {ort_type}, which v2 cannot carry"
        )
    return TensorSpec(getattr(node, "name"), datatype, _dims(getattr(node, "shape")))
