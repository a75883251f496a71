"""What a built-in runtime provides to the adapter's model repository.

A runtime turns a model path into a `LoadedModel`; the repository does the
bookkeeping (ids, sizes, capacity, cancellation) the same way for all of them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Protocol, Sequence

import numpy as np

from protos.tensor_codec import datatype_of
from runtime_adapter.errors import AdapterError


@dataclass(frozen=True)
class TensorSpec:
    """A model input or output as v2 metadata describes it (-1 = variable dim)."""

    name: str
    datatype: str
    shape: tuple[int, ...]


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


class Runtime(Protocol):
    model_type: str

    def load(self, model_id: str, path: Path) -> LoadedModel:
        """Load the model at `path` (blocking). Raises AdapterError."""
        ...

    def predict_size(self, path: Path) -> int:
        """A quick conservative size estimate before loading."""
        ...


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
