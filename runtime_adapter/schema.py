"""KServe's model schema file, `_schema.json` in the model directory:
``{"inputs": [{"name", "datatype", "shape"}], "outputs": [...]}`` with v2
datatypes. ModelMesh's adapters merge it into the server's own model
configuration; we do the same (Triton `config.pbtxt` inputs/outputs, MLServer
`model-settings.json` inputs/outputs), since some backends cannot discover
their tensors themselves (TorchScript on Triton, most MLServer runtimes).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runtime_adapter.errors import AdapterError
from runtime_adapter.runtimes.base import TensorSpec

SCHEMA_FILE = "_schema.json"
V2_DATATYPES = frozenset({
    "BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64",
    "FP16", "FP32", "FP64", "BF16", "BYTES",
})


@dataclass(frozen=True)
class ModelSchema:
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    def as_metadata(self) -> dict[str, list[dict[str, Any]]]:
        """The JSON form again (MLServer's `MetadataTensor` has the same fields)."""
        return {
            role: [{"name": s.name, "datatype": s.datatype, "shape": list(s.shape)} for s in specs]
            for role, specs in (("inputs", self.inputs), ("outputs", self.outputs))
        }


def _tensor(doc: object, where: str) -> TensorSpec:
    if not isinstance(doc, dict):
        raise ValueError(f"{where} is not an object")
    name, datatype, shape = doc.get("name"), doc.get("datatype"), doc.get("shape")
    if not isinstance(name, str) or not name:
        raise ValueError(f"{where}.name must be a non-empty string")
    if datatype not in V2_DATATYPES:
        raise ValueError(f"{where}.datatype {datatype!r} is not a v2 datatype")
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= -1 for d in shape):
        raise ValueError(f"{where}.shape must be a list of integers (-1 = variable)")
    return TensorSpec(name=name, datatype=datatype, shape=tuple(shape))


def parse_schema(doc: object) -> ModelSchema:
    """Validate a decoded schema document; raises ValueError naming the field."""
    if not isinstance(doc, dict):
        raise ValueError("the schema is not a JSON object")
    parts = {}
    for role in ("inputs", "outputs"):
        items = doc.get(role, [])
        if not isinstance(items, list):
            raise ValueError(f"{role} must be a list")
        parts[role] = tuple(_tensor(item, f"{role}[{i}]") for i, item in enumerate(items))
    return ModelSchema(**parts)


def read_schema(model_path: Path) -> ModelSchema | None:
    """The schema of the model at `model_path` (a directory) or None when it
    has none. A schema that is present but broken fails the load
    (FAILED_PRECONDITION) instead of being silently ignored."""
    path = model_path / SCHEMA_FILE
    if not model_path.is_dir() or not path.is_file():
        return None
    try:
        return parse_schema(json.loads(path.read_text()))
    except (ValueError, OSError) as exc:  # JSONDecodeError is a ValueError
        raise AdapterError.failed_precondition(f"model schema {str(path)!r} is invalid: {exc}") from exc
