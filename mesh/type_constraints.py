"""Which instances may load which model types: ModelMesh's
MM_TYPE_CONSTRAINTS, JSON of `{"<model type>": {"required": [labels…]},
"_default": {…}}`. An instance qualifies when it carries every required
label; `preferred` is accepted and not used yet."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

DEFAULT_KEY = "_default"


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
        return self.required.get(model_type, self.required.get(DEFAULT_KEY, frozenset()))
