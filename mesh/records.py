"""The registry record of one model, as stored in etcd at `<prefix>/registry/<id>`.

JSON with short keys (tens of thousands of records live in every sidecar's
view, so bytes count). Copy state is explicit — `loading` and `instances` are
separate maps — unlike ModelMesh, which infers "loaded" from load-time
statistics and reports copies as UNKNOWN.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace


@dataclass(slots=True)
class ModelRecord:
    model_id: str
    type: str
    path: str = ""
    key: str = ""
    size_bytes: int = 0  # measured at the last load; 0 = never loaded
    instances: dict[str, int] = field(default_factory=dict)  # instance -> loaded at (ms)
    loading: dict[str, int] = field(default_factory=dict)  # instance -> load started (ms)
    failures: dict[str, tuple[int, str]] = field(default_factory=dict)  # instance -> (at ms, message)
    last_used_ms: int = 0
    refs: int = 0
    mod_revision: int = 0  # etcd's, not stored in the value

    @property
    def record_id(self) -> str:
        return self.model_id

    def same_definition(self, other: "ModelRecord") -> bool:
        """ModelMesh rejects re-registration with different type/path/key."""
        return (self.type, self.path, self.key) == (other.type, other.path, other.key)

    def to_json(self) -> bytes:
        doc: dict[str, object] = {"t": self.type}
        if self.path:
            doc["p"] = self.path
        if self.key:
            doc["k"] = self.key
        if self.size_bytes:
            doc["s"] = self.size_bytes
        if self.instances:
            doc["i"] = self.instances
        if self.loading:
            doc["l"] = self.loading
        if self.failures:
            doc["f"] = {k: [at, msg] for k, (at, msg) in self.failures.items()}
        if self.last_used_ms:
            doc["u"] = self.last_used_ms
        if self.refs:
            doc["r"] = self.refs
        return json.dumps(doc, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, model_id: str, data: bytes, mod_revision: int = 0) -> "ModelRecord":
        doc = json.loads(data)
        return cls(
            model_id=model_id,
            type=doc["t"],
            path=doc.get("p", ""),
            key=doc.get("k", ""),
            size_bytes=doc.get("s", 0),
            instances=doc.get("i", {}),
            loading=doc.get("l", {}),
            failures={k: (v[0], v[1]) for k, v in doc.get("f", {}).items()},
            last_used_ms=doc.get("u", 0),
            refs=doc.get("r", 0),
            mod_revision=mod_revision,
        )

    def copy(self) -> "ModelRecord":
        """A deep-enough copy for read-modify-write (maps are copied)."""
        return replace(
            self,
            instances=dict(self.instances),
            loading=dict(self.loading),
            failures=dict(self.failures),
        )
