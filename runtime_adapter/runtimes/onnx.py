"""Built-in ONNX Runtime runtime (model type ``onnx``).

Execution provider: CUDA when the GPU build of onnxruntime is installed, a GPU
is visible and the operator allows it (`device` = ``auto`` or ``cuda``); the
CPU provider otherwise. The choice is a pure function (`select_providers`) so
it is tested without a GPU, and it is logged at load.

Model size: *measured* at load (`runtime_adapter.memory`): the RSS growth of
the session's creation (plus GPU memory when on CUDA), reported as at least
the floor ``file + SESSION_OVERHEAD_BYTES`` (`base.size_floor`). On the CPU
the steady state is about the initializers' bytes plus ~100 KiB (a 16 MiB-
weight model measures ~16.1 MiB), so the floor usually stands; measurement
shows where a model costs more than its file says: weights in external data
files, a CUDA session, graph rewrites that materialise bigger constants. The
transient peak while a session is built (about 3x the weights: protobuf and
pre-packed copies) is not reported. ONNX Runtime's one-time environment set-up
(about 10 MB) is done before the first measured load with a tiny in-memory
model, so it is not charged to a real one.

`predict_size` (before any load) estimates ``file × SIZE_FACTOR +
SESSION_OVERHEAD_BYTES``: initializers are nearly all of an ONNX file and are
held once; the extra 10% leans to over-estimating until the first measured
load replaces the estimate.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from runtime_adapter.errors import AdapterError
from runtime_adapter.gpu import visible_gpu_count
from runtime_adapter.memory import Footprint, measure_load
from runtime_adapter.runtimes.base import (
    TensorSpec,
    check_inputs,
    estimate_size,
    resolve_model_file,
    select_outputs,
    size_floor,
    use_cuda,
)

log = logging.getLogger(__name__)

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
SESSION_OVERHEAD_BYTES = 256 * 1024
SIZE_FACTOR = 1.1
SUFFIXES = (".onnx",)
PREFERRED_FILE = "model.onnx"
_PREPARED: set[tuple[str, ...]] = set()
# A serialized three-node model for the priming session: y = relu(x·w + b)
# over FP32 [n, 2], with a 2×2 identity `w` and a zero `b` as initializers (IR 8,
# opset 17). It holds initializers and the commonest kernels (MatMul, Add,
# Relu) so that their first-use set-up (kernel registration, the initializer
# allocator, pre-packing) is paid here and not charged to the first real model:
# an Identity-only priming left about 1 MiB of that on one CI machine's first
# load. Spelled out so the runtime need not import `onnx` (about 9 MiB and
# 130 ms); tests/test_memory_measurement.py rebuilds it with onnx.helper.
PRIMING_MODEL = (
    b'\x08\x08:\x94\x01\n\x11\n\x01x\n\x01w\x12\x01m"\x06MatMul\n\x0e\n\x01m\n\x01b\x12\x01a"\x03Add'
    b'\n\x0c\n\x01a\x12\x01y"\x04Relu\x12\x05prime*\x1b\x08\x02\x08\x02\x10\x01B\x01wJ\x10\x00\x00\x80?'
    b'\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x80?*\x11\x08\x02\x10\x01B\x01bJ\x08\x00\x00\x00\x00'
    b'\x00\x00\x00\x00Z\x14\n\x01x\x12\x0f\n\r\x08\x01\x12\t\n\x03\x12\x01n\n\x02\x08\x02b\x14\n\x01y'
    b'\x12\x0f\n\r\x08\x01\x12\t\n\x03\x12\x01n\n\x02\x08\x02B\x04\n\x00\x10\x11'
)

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
    """Execution providers for a session, in ONNX Runtime's priority order
    (`base.use_cuda` decides, and warns when ``cuda`` cannot be had)."""
    why_not = (
        "onnxruntime has no CUDA provider" if CUDA not in available
        else "no GPU is visible" if gpu_count <= 0
        else None
    )
    return [CUDA, CPU] if use_cuda(device, why_not, log) else [CPU]


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
    footprint: Footprint | None = None  # what the load measured (size_bytes is reported)

    def infer(
        self, inputs: Mapping[str, np.ndarray], output_names: Sequence[str] | None
    ) -> dict[str, np.ndarray]:
        from onnxruntime.capi import onnxruntime_pybind11_state as ort_errors

        check_inputs(self.inputs, inputs)
        names = select_outputs([spec.name for spec in self.outputs], output_names)
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
        model_file = resolve_model_file(path, SUFFIXES, PREFERRED_FILE)
        return estimate_size(model_file, SIZE_FACTOR, SESSION_OVERHEAD_BYTES)

    def load(self, model_id: str, path: Path) -> OnnxModel:
        import onnxruntime as ort

        model_file = resolve_model_file(path, SUFFIXES, PREFERRED_FILE)
        providers = select_providers(self.device, ort.get_available_providers(), visible_gpu_count())
        session, footprint = measure_load(
            lambda: self._session(model_id, model_file, providers),
            floor_bytes=size_floor(model_file, SESSION_OVERHEAD_BYTES),
            gpu_ordinals=[0] if CUDA in providers else [],  # the CUDA provider's default device_id
            prepare=lambda: self._prepare(providers),
            model_id=model_id,
        )
        used = session.get_providers()
        log.info("model %s loaded with providers %s (asked %s)", model_id, used, providers)
        return OnnxModel(
            session=session,
            size_bytes=footprint.size_bytes,
            inputs=[_spec(i) for i in session.get_inputs()],
            outputs=[_spec(o) for o in session.get_outputs()],
            providers=used,
            footprint=footprint,
        )

    def _options(self) -> object:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = self.intra_op_threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        return options

    def _session(self, model_id: str, model_file: Path, providers: list[str]) -> object:
        import onnxruntime as ort

        try:
            return ort.InferenceSession(str(model_file), sess_options=self._options(), providers=providers)
        except Exception as exc:  # ORT raises its own types for bad/unsupported files
            raise AdapterError.failed_precondition(
                f"model {model_id!r}: {model_file.name} is not a loadable ONNX model: {exc}"
            ) from exc

    def _prepare(self, providers: list[str]) -> None:
        """Once per process and provider list: build a throwaway session of a
        one-node model, so ONNX Runtime's process-wide set-up (and, on a GPU,
        the CUDA provider library and context) is not measured as the first
        model's. Runs under the measurement lock, which guards `_PREPARED`."""
        key = tuple(providers)
        if key in _PREPARED:
            return
        import onnxruntime as ort

        _PREPARED.add(key)
        try:
            ort.InferenceSession(PRIMING_MODEL, sess_options=self._options(), providers=providers)
        except Exception as exc:  # only a measurement refinement: never fail a load for it
            log.debug("onnxruntime warm-up session failed: %s", exc)


def _spec(node: object) -> TensorSpec:
    ort_type = getattr(node, "type")
    datatype = ORT_TYPE_TO_DATATYPE.get(ort_type)
    if datatype is None:
        raise AdapterError.failed_precondition(
            f"tensor {getattr(node, 'name')!r} has type {ort_type}, which v2 cannot carry"
        )
    return TensorSpec(getattr(node, "name"), datatype, _dims(getattr(node, "shape")))
