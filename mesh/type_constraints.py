"""Which instances may load which model types: ModelMesh's
MM_TYPE_CONSTRAINTS, JSON of `{"<model type>": {"required": [labels…]},
"_default": {…}}`. An instance qualifies when it carries every required
label; `preferred` is accepted and not used yet.

A model type may also carry labels itself, as ModelMesh's controller writes
them: `onnx|rt:mmesh-onnx` is format `onnx`, to be loaded only where the
label `rt:mmesh-onnx` is (the runtime the Kubernetes controller chose for it).
Parts with a label prefix (`rt:`, `mt:`, `pv:`) are required labels; the one
other part is the format the runtime adapter is asked to load. So one mesh
can hold several runtimes that serve the same format and still honour each
model's choice of runtime, which one constraint per format cannot express."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

DEFAULT_KEY = "_default"
LABEL_PREFIXES = ("rt:", "mt:", "pv:")


def split_model_type(model_type: str) -> tuple[str, frozenset[str]]:
    """`"onnx|rt:x"` → `("onnx", {"rt:x"})`. Without a plain part, the format
    comes from an `mt:<format>[:<version>]` label (`"mt:onnx:1|pv:grpc-v2"` →
    `"onnx"`); a type with neither keeps itself as the format."""
    parts = [part.strip() for part in model_type.split("|") if part.strip()]
    labels = frozenset(part for part in parts if part.startswith(LABEL_PREFIXES))
    plain = [part for part in parts if not part.startswith(LABEL_PREFIXES)]
    if plain:
        return plain[0], labels
    for label in sorted(labels):
        if label.startswith("mt:"):
            return label[3:].split(":", 1)[0], labels
    return model_type, labels


def runtime_model_type(model_type: str) -> str:
    """What the runtime adapter is asked to load: the format part."""
    return split_model_type(model_type)[0]


@dataclass(frozen=True)
class TypeConstraints:
    required: dict[str, frozenset[str]] = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str) -> "TypeConstraints":
        if not text.strip():
            return cls()
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"MM_TYPE_CONSTRAINTS is not JSON: {exc}") from exc
        if not isinstance(doc, dict):
            raise ValueError("MM_TYPE_CONSTRAINTS must be a JSON object of model type -> {required: [labels]}")
        required = {}
        for model_type, spec in doc.items():
            labels = spec.get("required", []) if isinstance(spec, dict) else None
            if not isinstance(labels, list) or not all(isinstance(label, str) for label in labels):
                raise ValueError(f"MM_TYPE_CONSTRAINTS[{model_type!r}].required must be a list of labels")
            required[model_type] = frozenset(labels)
        return cls(required)

    def labels_for(self, model_type: str) -> frozenset[str]:
        """Labels an instance needs for `model_type`: the constraint of the
        whole type if one is configured, else the format's (or `_default`)
        plus the labels the type carries itself."""
        if model_type in self.required:
            return self.required[model_type]
        fmt, labels = split_model_type(model_type)
        return self.required.get(fmt, self.required.get(DEFAULT_KEY, frozenset())) | labels
