"""Which runtime serves an InferenceService.

A named runtime must exist, be usable (multiModel, not disabled, speaking the
predictor's protocol) and list the model's format (KServe checks this too;
ModelMesh does not, and the model then fails on pods that cannot load it).

Otherwise, among usable runtimes whose `supportedModelFormats` auto-select the
format (and version, when the predictor gives one), the highest `priority`
wins — KServe's field, which ModelMesh ignores, leaving the choice to chance
(modelmesh-serving #242). Ties go to a namespaced ServingRuntime over a
ClusterServingRuntime (the namespace's own choice), then to the name, so the
choice is deterministic and survives restarts. Pure: no I/O."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from mesh.controller.predictor import Predictor

SERVING_RUNTIME = "ServingRuntime"
CLUSTER_SERVING_RUNTIME = "ClusterServingRuntime"
# protocolVersion spellings that mean the same wire protocol
PROTOCOL_ALIASES = {"v2": {"v2", "grpc-v2"}, "grpc-v2": {"grpc-v2", "v2"}}


@dataclass(frozen=True)
class SupportedFormat:
    name: str
    version: str
    auto_select: bool
    priority: int | None

    def matches(self, model_format: str, version: str) -> bool:
        return self.name == model_format and (not version or not self.version or self.version == version)


@dataclass(frozen=True)
class RuntimeInfo:
    """The parts of a (Cluster)ServingRuntime that runtime choice reads."""

    name: str
    kind: str  # SERVING_RUNTIME or CLUSTER_SERVING_RUNTIME
    formats: tuple[SupportedFormat, ...]
    multi_model: bool
    disabled: bool
    protocols: tuple[str, ...]

    @classmethod
    def from_object(cls, obj: Mapping[str, Any]) -> "RuntimeInfo":
        spec = obj.get("spec") or {}
        formats = []
        for entry in spec.get("supportedModelFormats") or []:
            if isinstance(entry, Mapping) and entry.get("name"):
                priority = entry.get("priority")
                formats.append(SupportedFormat(
                    name=str(entry["name"]).lower(),
                    version=str(entry.get("version") or ""),
                    auto_select=bool(entry.get("autoSelect", False)),
                    priority=int(priority) if isinstance(priority, int) else None,
                ))
        return cls(
            name=obj["metadata"]["name"],
            kind=obj.get("kind", SERVING_RUNTIME),
            formats=tuple(formats),
            multi_model=bool(spec.get("multiModel", False)),
            disabled=bool(spec.get("disabled", False)),
            protocols=tuple(str(p) for p in spec.get("protocolVersions") or ()),
        )

    def speaks(self, protocol: str) -> bool:
        if not protocol:
            return True
        wanted = PROTOCOL_ALIASES.get(protocol, {protocol})
        return bool(wanted & set(self.protocols))

    def unusable_because(self, predictor: Predictor) -> str | None:
        if self.disabled:
            return f"{self.kind} {self.name!r} is disabled"
        if not self.multi_model:
            return f"{self.kind} {self.name!r} is not multiModel: ModelMesh mode needs multiModel: true"
        if not self.speaks(predictor.protocol):
            return f"{self.kind} {self.name!r} does not speak protocol {predictor.protocol!r} (it lists {list(self.protocols)})"
        return None

    def format_for(self, predictor: Predictor, *, auto_only: bool) -> SupportedFormat | None:
        for entry in self.formats:
            if entry.matches(predictor.model_format, predictor.format_version) and (entry.auto_select or not auto_only):
                return entry
        return None


@dataclass(frozen=True)
class Choice:
    runtime: RuntimeInfo | None
    reason: str  # why this one, or why none ("" when chosen by name)

    @property
    def found(self) -> bool:
        return self.runtime is not None


def _describe(predictor: Predictor) -> str:
    version = f" version {predictor.format_version}" if predictor.format_version else ""
    protocol = f" over {predictor.protocol}" if predictor.protocol else ""
    return f"model format {predictor.model_format!r}{version}{protocol}"


def _named(predictor: Predictor, runtimes: Sequence[RuntimeInfo]) -> Choice:
    for runtime in runtimes:  # namespaced first: a ServingRuntime shadows a ClusterServingRuntime of its name
        if runtime.name != predictor.runtime:
            continue
        problem = runtime.unusable_because(predictor)
        if problem is None and runtime.format_for(predictor, auto_only=False) is None:
            problem = f"{runtime.kind} {runtime.name!r} does not list {_describe(predictor)} in supportedModelFormats"
        return Choice(None, problem) if problem else Choice(runtime, "")
    return Choice(None, f"no ServingRuntime or ClusterServingRuntime named {predictor.runtime!r}")


def choose_runtime(predictor: Predictor, runtimes: Iterable[RuntimeInfo]) -> Choice:
    """`runtimes`: the namespace's ServingRuntimes and the ClusterServingRuntimes."""
    ordered = sorted(runtimes, key=lambda r: (r.kind != SERVING_RUNTIME, r.name))
    if predictor.runtime:
        return _named(predictor, ordered)
    candidates = []
    for runtime in ordered:
        entry = runtime.format_for(predictor, auto_only=True)
        if entry is not None and runtime.unusable_because(predictor) is None:
            candidates.append((-(entry.priority if entry.priority is not None else 0), len(candidates), runtime))
    if not candidates:
        return Choice(None, f"no usable runtime auto-selects {_describe(predictor)}")
    candidates.sort(key=lambda c: (c[0], c[1]))
    chosen = candidates[0][2]
    others = [c[2].name for c in candidates[1:]]
    why = f"highest priority among {[chosen.name, *others]}" if others else "the only runtime that auto-selects it"
    return Choice(chosen, why)
