"""Built-in TorchScript runtime (model types ``pytorch`` and ``torchscript``).

Loads `torch.jit.save` archives with `torch.jit.load` (eager checkpoints made
with plain `torch.save` are refused: they need their Python classes; script
or trace them first). torch is the optional ``torch`` extra, imported at the
first load only: the import costs seconds and hundreds of MB of RSS, which a
sidecar serving only ONNX should not pay.

Device: CUDA when torch sees a GPU and the operator allows it (`device` =
``auto`` or ``cuda``); the CPU otherwise, with a warning when ``cuda`` was
asked for. `select_torch_device` is the pure choice, tested without a GPU.

Model file: ``model.pt`` in a directory, else its only ``.pt``/``.pth``/
``.torchscript`` file, or the path itself.

Tensor metadata: TorchScript records no tensor types or shapes, so
* a schema file beside the model, ``_schema.json`` (ModelMesh's name) or
  ``schema.json``, in KServe's form (parsed by
  `runtime_adapter.schema`, which the external runtimes share)::

      {"inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}],
       "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 4]}]}

  gives exact inputs and outputs (either list may be left out); its
  inputs are bound to `forward`'s arguments by position (the names are the
  ones clients use), and their datatype and shape are checked per request;
* without one, inputs are `forward`'s argument names (after ``self``), all
  required, shown in metadata as datatype FP32 and shape ``[-1]`` (v2 cannot
  say "rank unknown"); they are guesses, so only names are checked and the
  model itself rejects a wrong dtype or shape (INVALID_ARGUMENT with torch's
  message). Outputs are named ``output__0``, ``output__1``… (Triton's
  convention) when `forward` returns a tensor or a tuple; a dict's keys name
  them, and are then known only at inference (metadata lists none).

Inference: inputs by name → positional `forward` arguments; run under
`torch.inference_mode()`; a tensor, a tuple/list of tensors or a dict of
tensors comes back as named numpy arrays (on the CPU).

Threads: `torch.set_num_threads(intra_op_threads)` at the first load. It is
process-wide (libtorch has one intra-op pool), so the first runtime's setting
wins; inter-op parallelism is set to 1 like the ONNX runtime's.

Model size: measured at load like ONNX's (`runtime_adapter.memory`), at
least ``file + MODULE_OVERHEAD_BYTES``: a TorchScript archive stores weights
uncompressed and `torch.jit.load` holds them once, so a 16 MiB-weight model
measures ~16.1 MiB on the CPU (the first load in a process ~1 MiB more:
libtorch's own one-time state, not primed away). On a GPU the weights move to
device memory, which NVML measures. `predict_size` estimates ``file ×
SIZE_FACTOR + MODULE_OVERHEAD_BYTES``: the extra 20% allows for the JIT's
optimized graphs made on the first calls, which the measurement (taken before
any call) does not see.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import grpc
import numpy as np

from protos.tensor_codec import DATATYPE_TO_DTYPE
from runtime_adapter.errors import AdapterError
from runtime_adapter.schema import ModelSchema, parse_schema
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

MODEL_TYPES = ("pytorch", "torchscript")
SUFFIXES = (".pt", ".pth", ".torchscript")
PREFERRED_FILE = "model.pt"
SIZE_FACTOR = 1.2
MODULE_OVERHEAD_BYTES = 256 * 1024
SCHEMA_FILES = ("_schema.json", "schema.json")
PLATFORM = "pytorch_libtorch"  # Triton's name for TorchScript models
_PREPARED: set[str] = set()  # "threads" and devices set up in this process; guarded by the measurement lock


def torch_available() -> bool:
    """Whether torch can be imported, without importing it (see the module docstring)."""
    if "torch" in sys.modules:
        return sys.modules["torch"] is not None
    try:
        return importlib.util.find_spec("torch") is not None
    except (ImportError, ValueError):
        return False


def select_torch_device(device: str, cuda_available: bool, gpu_count: int) -> str:
    """``cuda:0`` or ``cpu`` for the operator's `device` (`base.use_cuda`
    decides, and warns when ``cuda`` cannot be had)."""
    why_not = (
        "torch has no CUDA support" if not cuda_available
        else "no GPU is visible" if gpu_count <= 0
        else None
    )
    return "cuda:0" if use_cuda(device, why_not, log) else "cpu"


def _cuda_ordinals(device: str) -> list[int]:
    return [int(device.partition(":")[2] or 0)] if device.startswith("cuda") else []


@dataclass
class TorchScriptModel:
    """A loaded TorchScript module and how requests map onto its `forward`."""

    module: Any
    device: str
    size_bytes: int
    inputs: list[TensorSpec] = field(default_factory=list)
    outputs: list[TensorSpec] = field(default_factory=list)
    platform: str = PLATFORM
    footprint: Footprint | None = None  # what the load measured (size_bytes is reported)

    def infer(
        self, inputs: Mapping[str, np.ndarray], output_names: Sequence[str] | None
    ) -> dict[str, np.ndarray]:
        import torch

        check_inputs(self.inputs, inputs)
        args = [_to_torch(spec.name, inputs[spec.name], self.device) for spec in self.inputs]
        try:
            with torch.inference_mode():
                result = self.module(*args)
        except torch.cuda.OutOfMemoryError as exc:  # a RuntimeError too, but not the request's fault
            raise AdapterError(grpc.StatusCode.RESOURCE_EXHAUSTED, f"GPU out of memory: {_last_line(exc)}") from exc
        except RuntimeError as exc:  # the model accepted at load, so the inputs are at fault
            names = [spec.name for spec in self.inputs]
            raise AdapterError.invalid_argument(f"torch rejected the inputs {names}: {_last_line(exc)}") from exc
        produced = self._name_outputs(result)
        names = select_outputs(list(produced), output_names)
        return {name: produced[name] for name in names}

    def _name_outputs(self, result: object) -> dict[str, np.ndarray]:
        if isinstance(result, dict):
            return {str(key): _to_numpy(str(key), value) for key, value in result.items()}
        values = list(result) if isinstance(result, (tuple, list)) else [result]
        names = [spec.name for spec in self.outputs] or [f"output__{i}" for i in range(len(values))]
        if len(names) != len(values):
            raise AdapterError.internal(f"the model returned {len(values)} outputs, its metadata names {names}")
        return {name: _to_numpy(name, value) for name, value in zip(names, values)}

    def close(self) -> None:
        self.module = None
        if self.device.startswith("cuda"):
            import torch

            # give the caching allocator's blocks back, so the device (and the
            # next load's measurement) sees the memory as free
            torch.cuda.empty_cache()


def _last_line(exc: BaseException) -> str:
    """TorchScript errors carry a TorchScript traceback; the last line says what failed."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    return lines[-1] if lines else type(exc).__name__


def _to_torch(name: str, array: np.ndarray, device: str) -> Any:
    import torch

    if array.dtype == object:
        raise AdapterError.invalid_argument(f"input {name!r}: BYTES tensors cannot be passed to a TorchScript model")
    if DATATYPE_TO_DTYPE.get("BF16") == array.dtype:
        tensor = torch.from_numpy(np.ascontiguousarray(array).view(np.int16).copy()).view(torch.bfloat16)
    else:
        # decoded raw tensors are read-only views of the request; torch wants writable memory
        tensor = torch.from_numpy(array if array.flags.writeable else array.copy())
    return tensor.to(device) if device != "cpu" else tensor


def _to_numpy(name: str, value: object) -> np.ndarray:
    import torch

    if isinstance(value, torch.Tensor):
        value = value.detach().cpu()
        if value.dtype == torch.bfloat16 and "BF16" in DATATYPE_TO_DTYPE:
            return value.view(torch.int16).numpy().view(DATATYPE_TO_DTYPE["BF16"])
        if value.dtype == torch.bfloat16:
            value = value.float()
        return value.numpy()
    if isinstance(value, (bool, int, float)):
        return np.asarray(value)
    raise AdapterError.internal(f"output {name!r} is a {type(value).__name__}, not a tensor")


def load_schema(model_file: Path) -> ModelSchema | None:
    """The schema beside `model_file` (``_schema.json`` first), None when there
    is none; a broken one fails the load rather than being silently ignored."""
    path = next((model_file.parent / n for n in SCHEMA_FILES if (model_file.parent / n).is_file()), None)
    if path is None:
        return None
    try:
        return parse_schema(json.loads(path.read_text()))
    except (ValueError, OSError) as exc:  # JSONDecodeError is a ValueError
        raise AdapterError.failed_precondition(f"model schema {str(path)!r} is invalid: {exc}") from exc


def _forward_inputs(module: Any) -> list[str]:
    """`forward`'s argument names after the module itself."""
    return [argument.name for argument in module.forward.schema.arguments[1:]]


def _derived_outputs(module: Any) -> list[TensorSpec]:
    """Output specs from `forward`'s return type: one for a tensor, one per
    element of a tuple, none (known at inference) for lists and dicts."""
    import torch

    returns = module.forward.schema.returns
    kind = returns[0].type if returns else None
    if isinstance(kind, torch.TupleType):
        count = len(kind.elements())
    elif isinstance(kind, (torch.ListType, torch.DictType)):
        count = 0
    else:
        count = 1
    return [TensorSpec(f"output__{i}", "FP32", (-1,), exact=False) for i in range(count)]


def tensor_metadata(module: Any, schema: ModelSchema | None) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """Inputs and outputs from the schema, or derived from `forward` (see the module docstring)."""
    arguments = _forward_inputs(module)
    if schema is None or not schema.inputs:
        inputs = [TensorSpec(name, "FP32", (-1,), exact=False) for name in arguments]
    else:
        if len(schema.inputs) != len(arguments):
            raise AdapterError.failed_precondition(
                f"the schema lists {len(schema.inputs)} inputs but forward takes {len(arguments)} ({arguments})"
            )
        bytes_inputs = [spec.name for spec in schema.inputs if spec.datatype == "BYTES"]
        if bytes_inputs:
            raise AdapterError.failed_precondition(
                f"schema inputs {bytes_inputs} are BYTES, which TorchScript models cannot take"
            )
        inputs = list(schema.inputs)
    outputs = list(schema.outputs) if schema is not None and schema.outputs else _derived_outputs(module)
    return inputs, outputs


@dataclass
class TorchScriptRuntime:
    """Loads TorchScript archives with `torch.jit.load`."""

    device: str = "auto"
    intra_op_threads: int = 1
    model_type: str = MODEL_TYPES[0]

    def predict_size(self, path: Path) -> int:
        model_file = resolve_model_file(path, SUFFIXES, PREFERRED_FILE)
        return estimate_size(model_file, SIZE_FACTOR, MODULE_OVERHEAD_BYTES)

    def load(self, model_id: str, path: Path) -> TorchScriptModel:
        model_file = resolve_model_file(path, SUFFIXES, PREFERRED_FILE)
        schema = load_schema(model_file)
        try:
            import torch
        except ImportError as exc:  # installed but broken: torch_available() said yes
            raise AdapterError.failed_precondition(f"model {model_id!r}: torch cannot be imported: {exc}") from exc
        device = select_torch_device(self.device, torch.cuda.is_available(), torch.cuda.device_count())
        module, footprint = measure_load(
            lambda: self._module(model_id, model_file, device),
            floor_bytes=size_floor(model_file, MODULE_OVERHEAD_BYTES),
            gpu_ordinals=_cuda_ordinals(device),
            prepare=lambda: self._prepare(device),
            model_id=model_id,
        )
        inputs, outputs = tensor_metadata(module, schema)
        log.info("model %s loaded on %s", model_id, device)
        return TorchScriptModel(module, device, footprint.size_bytes, inputs, outputs, footprint=footprint)

    def _module(self, model_id: str, model_file: Path, device: str) -> Any:
        import torch

        try:
            module = torch.jit.load(str(model_file), map_location=device)
        except Exception as exc:  # RuntimeError from the archive reader, pickle errors, …
            raise AdapterError.failed_precondition(
                f"model {model_id!r}: {model_file.name} is not a loadable TorchScript model "
                f"(torch.jit.save archive): {_last_line(exc)}"
            ) from exc
        if not hasattr(module, "forward"):
            raise AdapterError.failed_precondition(f"model {model_id!r}: {model_file.name} has no forward method")
        return module.eval()

    def _prepare(self, device: str) -> None:
        """Once per process, before the first measured load: thread settings,
        and on a GPU (once per device) the CUDA context and caching allocator
        (hundreds of MB that no single model should be charged for)."""
        import torch

        if "threads" not in _PREPARED:
            _PREPARED.add("threads")
            torch.set_num_threads(max(1, self.intra_op_threads))
            try:
                torch.set_num_interop_threads(1)
            except RuntimeError:  # settable only before any inter-op work ran
                log.debug("torch inter-op threads were already set")
        if device.startswith("cuda") and device not in _PREPARED:
            _PREPARED.add(device)
            torch.zeros(1, device=device)
            torch.cuda.synchronize(device)
