"""Records stored in etcd: a model's registry record at `<prefix>/registry/<id>`,
an instance's record at `<prefix>/instances/<id>`, and a vModel (alias) at
`<prefix>/vmodels/<id>`.

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
    refs: int = 0  # vModels pointing at it (active or target); blocks unregistering
    auto_delete: bool = False  # created by setVModel: deleted when no vModel refers to it
    min_copies: int = 0  # copies kept loaded whatever the traffic (pinned)
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
        if self.auto_delete:
            doc["ad"] = True
        if self.min_copies:
            doc["mc"] = self.min_copies
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
            auto_delete=doc.get("ad", False),
            min_copies=doc.get("mc", 0),
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


@dataclass(slots=True)
class InstanceRecord:
    """One sidecar, at `<prefix>/instances/<id>`, written under its session
    lease: when the sidecar dies the lease expires and the record vanishes
    from every view. Placement reads capacity, use and LRU age from here."""

    instance_id: str
    endpoint: str
    zone: str = ""
    labels: tuple[str, ...] = ()
    capacity_bytes: int = 0
    used_bytes: int = 0
    lru_ms: int = 0  # last use of its least recently used model; 0 = empty
    count: int = 0  # models loaded
    loading: int = 0  # loads in progress
    req_rate: float = 0.0  # requests per second, recent
    start_ms: int = 0
    shutting_down: bool = False
    mod_revision: int = 0

    @property
    def record_id(self) -> str:
        return self.instance_id

    def same_state(self, other: "InstanceRecord") -> bool:
        return replace(self, mod_revision=0) == replace(other, mod_revision=0)

    def to_json(self) -> bytes:
        doc = {
            "e": self.endpoint, "z": self.zone, "lb": list(self.labels), "c": self.capacity_bytes,
            "u": self.used_bytes, "lru": self.lru_ms, "n": self.count, "l": self.loading,
            "r": round(self.req_rate, 3), "st": self.start_ms, "sd": self.shutting_down,
        }
        return json.dumps(doc, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, instance_id: str, data: bytes, mod_revision: int = 0) -> "InstanceRecord":
        doc = json.loads(data)
        return cls(
            instance_id=instance_id, endpoint=doc["e"], zone=doc.get("z", ""), labels=tuple(doc.get("lb", ())),
            capacity_bytes=doc.get("c", 0), used_bytes=doc.get("u", 0), lru_ms=doc.get("lru", 0),
            count=doc.get("n", 0), loading=doc.get("l", 0), req_rate=doc.get("r", 0.0),
            start_ms=doc.get("st", 0), shutting_down=doc.get("sd", False), mod_revision=mod_revision,
        )

    def copy(self) -> "InstanceRecord":
        return replace(self)


@dataclass(slots=True)
class VModelRecord:
    """An alias that routes to `active`; while `target` differs, the mesh is
    loading the target before it flips the alias over."""

    vmodel_id: str
    active: str
    target: str
    owner: str = ""
    failed: bool = False  # the target failed to load: the transition waits for a retry
    mod_revision: int = 0

    @property
    def record_id(self) -> str:
        return self.vmodel_id

    @property
    def transitioning(self) -> bool:
        return self.active != self.target

    def to_json(self) -> bytes:
        doc: dict[str, object] = {"a": self.active, "t": self.target}
        if self.owner:
            doc["o"] = self.owner
        if self.failed:
            doc["f"] = True
        return json.dumps(doc, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, vmodel_id: str, data: bytes, mod_revision: int = 0) -> "VModelRecord":
        doc = json.loads(data)
        return cls(vmodel_id, doc["a"], doc["t"], doc.get("o", ""), doc.get("f", False), mod_revision)

    def copy(self) -> "VModelRecord":
        return replace(self)
