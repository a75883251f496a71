"""What a built-in runtime provides to the adapter's model repository.

A runtime turns a model path into a `LoadedModel`; the repository does the
bookkeeping (ids, sizes, capacity, cancellation) the same way for all of them.

Sizes: a built-in runtime *measures* a model's footprint at load
(`runtime_adapter.memory.measure_load`) and reports ``max(measured, floor)``
with `size_floor` (file bytes + the runtime's per-model overhead) as the
floor. Before a load, `predict_size` can only estimate: `estimate_size`
scales the file by a per-runtime factor, and the mesh uses that only until
the first measured load of the model.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Protocol, Sequence

import numpy as np

from protos import grpc_predict_v2_pb2 as v2
from protos.tensor_codec import datatype_of
from runtime_adapter.errors import AdapterError


@dataclass(frozen=True)
class TensorSpec:
    """A model input or output as v2 metadata describes it (-1 = variable dim).

    exact=False marks a guess (a TorchScript model without a schema has no
    tensor types): metadata shows it, but `check_inputs` checks only the name
    and leaves datatype and shape to the model.
    """

    name: str
    datatype: str
    shape: tuple[int, ...]
    exact: bool = True


class LoadedModel(Protocol):
    platform: str
    inputs: Sequence[TensorSpec]
    outputs: Sequence[TensorSpec]
    size_bytes: int

    def infer(
        self, inputs: Mapping[str, np.ndarray], output_names: Sequence[str] | None
    ) -> dict[str, np.ndarray]:
        """Run the model (blocking; called on a worker thread)."""
        ...

    def close(self) -> None:
        """Release the model's memory."""
        ...


class ForwardingModel(Protocol):
    """A model held by another process (MLServer, Triton: `runtime_adapter.external`)
    that takes whole v2 messages. The repository hands requests over as they
    came, with no numpy decode/encode: the other server decodes them anyway.
    The repository tells the two kinds apart by the presence of `infer_v2`."""

    size_bytes: int

    def infer_v2(self, request: v2.ModelInferRequest, model_id: str) -> v2.ModelInferResponse:
        """Forward `request` (blocking); the response names the model as the request did."""
        ...

    def metadata_v2(self, model_id: str, name: str) -> v2.ModelMetadataResponse:
        """The server's metadata for the model, named `name`."""
        ...

    def close(self) -> None:
        """Unload the model from the other process."""
        ...


class BackingServer(Protocol):
    """The process behind external runtimes. It outlives the sidecar, so what
    it still holds when the sidecar (re)starts must go, as the repository's
    own models do on runtimeStatus."""

    def start_clean(self) -> bool:
        """Wait (bounded) for the server, then unload everything it holds and
        clear its model directory; False while it is not ready yet."""
        ...


class Runtime(Protocol):
    model_type: str

    def load(self, model_id: str, path: Path) -> LoadedModel | ForwardingModel:
        """Load the model at `path` (blocking). Raises AdapterError."""
        ...

    def predict_size(self, path: Path) -> int:
        """A quick conservative size estimate before loading."""
        ...


DEVICES = ("auto", "cpu", "cuda")


def use_cuda(device: str, why_not: str | None, log: logging.Logger) -> bool:
    """Whether a runtime puts models on the GPU, for the operator's `device`
    (``auto``/``cpu``/``cuda``) and why CUDA is impossible here (None when it
    is possible). ``cuda`` asked for but impossible degrades to the CPU with a
    warning on the runtime's `log` rather than failing every load; ``auto``
    degrades silently."""
    if device not in DEVICES:
        raise ValueError(f"device must be one of {DEVICES}, got {device!r}")
    if device == "cpu":
        return False
    if why_not is not None:
        if device == "cuda":
            log.warning("device=cuda requested but %s; using the CPU", why_not)
        return False
    return True


def size_floor(model_file: Path, overhead_bytes: int) -> int:
    """The least size a runtime reports for a model: its file's bytes (the
    weights, which a loaded model holds at least once) plus the runtime's
    per-model overhead allowance.

    The allowance is deliberately above what small models measure (ONNX
    Runtime sessions of tiny models hold about 70 KiB, TorchScript modules
    less): at that scale RSS readings are page-granular noise (±60 KiB seen),
    and a floor above the noise keeps small models' sizes deterministic while
    any real growth beyond weights + allowance is still measured and reported.
    """
    return model_file.stat().st_size + overhead_bytes


def estimate_size(model_file: Path, factor: float, overhead_bytes: int) -> int:
    """A pre-load size estimate: ``file bytes × factor + overhead`` (at least
    `size_floor` for factor ≥ 1, so a measured load rarely grows a model)."""
    return int(model_file.stat().st_size * factor) + overhead_bytes


def resolve_model_file(path: Path, suffixes: Sequence[str], preferred_name: str) -> Path:
    """Find the model file: `path` itself, or inside a directory the preferred
    name (e.g. `model.onnx`), else the only file with a matching suffix.

    Raises FAILED_PRECONDITION-coded errors, since no load was attempted.
    """
    if path.is_file():
        return path
    if not path.exists():
        raise AdapterError.failed_precondition(f"model path {str(path)!r} does not exist")
    if not path.is_dir():
        raise AdapterError.failed_precondition(f"model path {str(path)!r} is not a file or directory")
    preferred = path / preferred_name
    if preferred.is_file():
        return preferred
    candidates = sorted(p for p in path.iterdir() if p.is_file() and p.suffix in suffixes)
    if len(candidates) == 1:
        return candidates[0]
    if not candidates:
        raise AdapterError.failed_precondition(
            f"no {'/'.join(suffixes)} model file in directory {str(path)!r}"
        )
    names = ", ".join(p.name for p in candidates)
    raise AdapterError.failed_precondition(
        f"directory {str(path)!r} holds several model files ({names}); name one or use {preferred_name!r}"
    )


def check_inputs(
    specs: Sequence[TensorSpec], inputs: Mapping[str, np.ndarray]
) -> None:
    """Reject unknown or missing inputs and wrong datatypes/ranks with INVALID_ARGUMENT
    before the runtime sees them, so clients get a message naming the tensor."""
    by_name = {spec.name: spec for spec in specs}
    for name, array in inputs.items():
        spec = by_name.get(name)
        if spec is None:
            raise AdapterError.invalid_argument(
                f"unknown input {name!r}; the model takes {sorted(by_name)}"
            )
        if not spec.exact:
            continue
        got = datatype_of(array.dtype)
        if got != spec.datatype:
            raise AdapterError.invalid_argument(
                f"input {name!r}: datatype {got} does not match the model's {spec.datatype}"
            )
        if len(spec.shape) != array.ndim or any(
            want not in (-1, have) for want, have in zip(spec.shape, array.shape)
        ):
            raise AdapterError.invalid_argument(
                f"input {name!r}: shape {list(array.shape)} does not match the model's {list(spec.shape)}"
            )
    missing = [name for name in by_name if name not in inputs]
    if missing:
        raise AdapterError.invalid_argument(f"missing input(s) {missing}")


def select_outputs(known: Sequence[str], requested: Sequence[str] | None) -> list[str]:
    """The outputs to return: those requested (all known ones when none are),
    rejecting unknown names with INVALID_ARGUMENT."""
    names = list(requested) if requested else list(known)
    unknown = [n for n in names if n not in known]
    if unknown:
        raise AdapterError.invalid_argument(f"unknown output(s) {unknown}; the model produces {list(known)}")
    return names
