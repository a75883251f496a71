"""Scenario files: what the simulator runs, validated before anything runs.

A scenario is YAML (or JSON) with these sections; every key is checked, an
unknown key is an error that names the key, where it is, and what is allowed
there (a typo must not silently fall back to a default):

``pods``        pod groups: ``count``, ``memory`` ('4GiB'), optional ``zone``, ``labels``
``runtimes``    per model type: ``load_fixed_ms`` + size ÷ ``bandwidth`` (bytes/s);
                ``_default`` applies to types without an entry
``models``      model groups: ``count``, ``type``, ``size`` (fixed '256MiB' or
                ``{median, sigma, min, max}`` lognormal), ``inference_ms``
                (fixed or ``{median, sigma}``), ``min_copies``
``traffic``     generated requests: ``rate`` (mean req/s), ``duration_s``,
                ``zipf_alpha``, ``pattern`` (poisson | bursty | diurnal) with
                ``bursty``/``diurnal`` settings, optional ``drift``
``trace``       instead of ``traffic``: replay a recorded CSV/JSONL trace
``mesh``        the sidecar settings the simulation mirrors (hop latency,
                loading slots, copy scaling, ...)
``failures``    pods that die at given times (and optionally come back)
``cost``        for the planner: cost = pods × (per_pod + per_gib × GiB per pod)
``report``      sampling interval, pod counts for the hit-ratio-vs-pods plot

A model larger than every pod is an **error** (raised when the model sizes
are drawn, see ``sim.workload``): it could never load, so every request for
it would fail and the run would measure the scenario's mistake, not the mesh.
Cap lognormal sizes with ``size.max`` to avoid it.
"""

from __future__ import annotations

import types
import typing
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    model_validator,
)

from sim.units import parse_size

__all__ = [
    "CopyScaling",
    "Cost",
    "Failure",
    "LatencyDist",
    "MeshConfig",
    "ModelGroup",
    "PodGroup",
    "PodSpec",
    "Runtime",
    "Scenario",
    "ScenarioError",
    "SizeDist",
    "Trace",
    "Traffic",
    "load_scenario",
    "parse_scenario",
]


class ScenarioError(ValueError):
    """A scenario that cannot run; the message lists every problem found."""


def _size(value: Any) -> int:
    return parse_size(value)


Bytes = Annotated[int, BeforeValidator(_size)]
PositiveBytes = Annotated[Bytes, Field(gt=0)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SizeDist(_Strict):
    """Lognormal model sizes: ``median`` and ``sigma`` (of ln size), clipped to [min, max]."""

    median: PositiveBytes
    sigma: float = Field(0.0, ge=0)
    min: Bytes | None = None
    max: PositiveBytes | None = None

    @model_validator(mode="after")
    def _bounds(self) -> "SizeDist":
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min ({self.min}) is larger than max ({self.max})")
        return self


def _size_kind(value: Any) -> str:
    return "dist" if isinstance(value, (dict, SizeDist)) else "fixed"


SizeSpec = Annotated[
    Union[Annotated[PositiveBytes, Tag("fixed")], Annotated[SizeDist, Tag("dist")]],
    Discriminator(_size_kind),
]


class LatencyDist(_Strict):
    """Lognormal times in ms: ``median`` and ``sigma`` (of ln time)."""

    median: float = Field(gt=0)
    sigma: float = Field(0.0, ge=0)


def _latency_kind(value: Any) -> str:
    return "dist" if isinstance(value, (dict, LatencyDist)) else "fixed"


def _fixed_latency(value: Any) -> Any:
    return {"median": value, "sigma": 0.0} if isinstance(value, (int, float)) and not isinstance(value, bool) else value


LatencySpec = Annotated[LatencyDist, BeforeValidator(_fixed_latency)]


class PodGroup(_Strict):
    count: int = Field(1, ge=1)
    memory: PositiveBytes
    zone: str = ""
    labels: list[str] = []


class Runtime(_Strict):
    """Load time of one model = ``load_fixed_ms`` + size ÷ ``bandwidth`` (bytes per second)."""

    load_fixed_ms: float = Field(100.0, ge=0)
    bandwidth: PositiveBytes = 1 << 30


class ModelGroup(_Strict):
    count: int = Field(ge=1)
    type: str = "default"
    size: SizeSpec
    inference_ms: LatencySpec = LatencyDist(median=10.0)
    min_copies: int = Field(0, ge=0)


class Bursty(_Strict):
    """On-off traffic: exponential on/off periods; ``rate`` stays the long-run mean."""

    on_s: float = Field(10.0, gt=0)
    off_s: float = Field(30.0, gt=0)
    off_fraction: float = Field(0.0, ge=0, lt=1)  # off-period rate as a fraction of the on rate


class Diurnal(_Strict):
    """rate × (1 + amplitude · sin(2π (t − peak_at_s) / period_s + π/2))."""

    period_s: float = Field(86_400.0, gt=0)
    amplitude: float = Field(0.5, ge=0, le=1)
    peak_at_s: float = 0.0


class Drift(_Strict):
    """Popularity drift: every ``interval_s``, ``swaps`` random pairs of Zipf ranks trade places."""

    interval_s: float = Field(gt=0)
    swaps: int = Field(1, ge=1)


class Traffic(_Strict):
    rate: float = Field(gt=0)
    duration_s: float = Field(gt=0)
    zipf_alpha: float = Field(1.0, gt=0)
    pattern: Literal["poisson", "bursty", "diurnal"] = "poisson"
    bursty: Bursty | None = None
    diurnal: Diurnal | None = None
    drift: Drift | None = None

    @model_validator(mode="after")
    def _pattern_settings(self) -> "Traffic":
        for name in ("bursty", "diurnal"):
            if getattr(self, name) is not None and self.pattern != name:
                raise ValueError(f"'{name}' settings given but pattern is '{self.pattern}'")
        return self


class Trace(_Strict):
    """Replay of a recorded trace (see ``sim.trace`` for the accepted formats)."""

    path: str
    time_unit: Literal["auto", "s", "ms"] = "auto"
    default_size: SizeSpec = 256 << 20  # for models whose size the trace does not give
    default_type: str = "default"
    inference_ms: LatencySpec = LatencyDist(median=10.0)
    limit: int | None = Field(None, ge=1)  # replay only the first N requests


class CopyScaling(_Strict):
    """The sidecar's copy-scaling settings (same names as mesh settings)."""

    enabled: bool = True
    interval_s: float = Field(5.0, gt=0)
    scale_up_rps: float = Field(33.0, gt=0)
    scale_up_in_flight: int = Field(16, ge=1)
    copy_idle_s: float = Field(600.0, ge=0)


class MeshConfig(_Strict):
    hop_ms: float = Field(1.0, ge=0)  # one forward to a peer
    max_loading_concurrency: int = Field(2, ge=1)
    capacity_wait_s: float = Field(30.0, ge=0)
    # Model each request's in-flight time (acquire/release around inference):
    # exact protection of busy models from eviction and in-flight-driven copy
    # scaling, at roughly half the simulation speed.
    concurrency: bool = False
    # How often peers' published instance records refresh their LRU age (the
    # sidecar's publisher refreshes every min(5 s, lease TTL / 3)).
    view_refresh_s: float = Field(10 / 3, gt=0)
    # A changed instance record is rewritten at most this often (the publisher's min_interval_s).
    publish_interval_s: float = Field(0.1, ge=0)
    copies: CopyScaling = CopyScaling()
    type_constraints: dict[str, list[str]] = {}  # model type (or _default) → required pod labels


class Failure(_Strict):
    at_s: float = Field(ge=0)
    pod: int = Field(ge=0)  # index into the expanded pod list (pod-000 is 0)
    recover_after_s: float | None = Field(None, gt=0)


class Cost(_Strict):
    per_pod: float = Field(0.0, ge=0)
    per_gib: float = Field(1.0, ge=0)

    def of(self, pods: int, memory_bytes: int) -> float:
        return pods * (self.per_pod + self.per_gib * memory_bytes / 2**30)


class ReportConfig(_Strict):
    sample_interval_s: float = Field(10.0, gt=0)
    pod_counts: list[Annotated[int, Field(ge=1)]] | None = None  # for the hit-ratio-vs-pods plot


class PodSpec(typing.NamedTuple):
    pod_id: str
    memory: int
    zone: str
    labels: frozenset[str]


class Scenario(_Strict):
    name: str = ""
    seed: int = 0
    pods: list[PodGroup] = Field(min_length=1)
    runtimes: dict[str, Runtime] = {}
    models: list[ModelGroup] = []
    traffic: Traffic | None = None
    trace: Trace | None = None
    mesh: MeshConfig = MeshConfig()
    failures: list[Failure] = []
    cost: Cost = Cost()
    report: ReportConfig = ReportConfig()

    @model_validator(mode="after")
    def _consistent(self) -> "Scenario":
        if (self.traffic is None) == (self.trace is None):
            raise ValueError("give exactly one of 'traffic' (generated requests) or 'trace' (replay)")
        if self.traffic is not None and not self.models:
            raise ValueError("'traffic' needs a 'models' section (the population requests pick from)")
        for i, failure in enumerate(self.failures):
            if failure.pod >= self.total_pods:
                raise ValueError(f"failures[{i}].pod = {failure.pod}, but there are only {self.total_pods} pods")
        return self

    @property
    def total_pods(self) -> int:
        return sum(group.count for group in self.pods)

    def pod_specs(self) -> list[PodSpec]:
        """Pods expanded from their groups; ids sort in pod order (pod-000, pod-001, ...)."""
        width = max(3, len(str(self.total_pods - 1)))
        specs: list[PodSpec] = []
        for group in self.pods:
            for _ in range(group.count):
                specs.append(PodSpec(f"pod-{len(specs):0{width}d}", group.memory, group.zone, frozenset(group.labels)))
        return specs

    def runtime_for(self, model_type: str) -> Runtime:
        return self.runtimes.get(model_type) or self.runtimes.get("_default") or Runtime()

    def with_pods(self, count: int, memory: int | None = None) -> "Scenario":
        """The same scenario on ``count`` pods of one group (the planner's knob)."""
        if len(self.pods) != 1:
            raise ScenarioError(
                f"the planner varies one pod group, but this scenario has {len(self.pods)}; "
                "describe the pods as a single group"
            )
        group = self.pods[0].model_copy(update={"count": count, **({"memory": memory} if memory else {})})
        failures = [f for f in self.failures if f.pod < count]
        return self.model_copy(update={"pods": [group], "failures": failures})


# ------------------------------------------------------------------ loading


def load_scenario(path: str | Path) -> Scenario:
    """Read and validate a scenario file; relative trace paths resolve against its folder."""
    import yaml  # here, not at module level: `mmesh` mounts `sim` and must start without PyYAML

    path = Path(path)
    try:
        doc = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ScenarioError(f"cannot read scenario {path}: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise ScenarioError(f"{path}: not valid YAML: {exc}") from None
    scenario = parse_scenario(doc, source=str(path))
    if scenario.trace is not None and not Path(scenario.trace.path).is_absolute():
        trace = scenario.trace.model_copy(update={"path": str((path.parent / scenario.trace.path).resolve())})
        scenario = scenario.model_copy(update={"trace": trace})
    if not scenario.name:
        scenario = scenario.model_copy(update={"name": path.stem})
    return scenario


def parse_scenario(doc: Any, *, source: str = "scenario") -> Scenario:
    """Validate a parsed document; ScenarioError lists every problem with its location."""
    if not isinstance(doc, dict):
        raise ScenarioError(f"{source}: expected a mapping of sections (pods, models, traffic, ...), got {type(doc).__name__}")
    try:
        return Scenario.model_validate(doc)
    except ValidationError as exc:
        lines = [_describe(error) for error in exc.errors()]
        raise ScenarioError(f"{source}: {len(lines)} problem(s):\n  " + "\n  ".join(lines)) from None


def _describe(error: Any) -> str:
    loc = [part for part in error["loc"] if part not in ("fixed", "dist")]
    where = _format_loc(loc)
    if error["type"] == "extra_forbidden":
        allowed = _allowed_keys(loc[:-1])
        hint = f" (allowed here: {', '.join(allowed)})" if allowed else ""
        parent = _format_loc(loc[:-1]) or "the top level"
        return f"unknown key {loc[-1]!r} in {parent}{hint}"
    message = str(error["msg"]).removeprefix("Value error, ")
    value = error.get("input")
    if isinstance(value, (int, float, str)) and not isinstance(value, bool) and "got " not in message and (not isinstance(value, str) or repr(value) not in message):
        message += f" (got {value!r})"
    return f"{where or 'scenario'}: {message}"


def _format_loc(loc: list[Any]) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _allowed_keys(loc: list[Any]) -> list[str]:
    """Field names of the model at ``loc`` (walking Scenario's annotations), for hints."""
    model: Any = Scenario
    for part in loc:
        if isinstance(part, int):
            continue  # a list index
        if isinstance(model, _DictOf):
            model = model.model  # a dict key, e.g. a runtime's name
            continue
        if not (isinstance(model, type) and issubclass(model, BaseModel)) or part not in model.model_fields:
            return []
        model = _model_in(model.model_fields[part].annotation)
    if isinstance(model, type) and issubclass(model, BaseModel):
        return list(model.model_fields)
    return []


def _model_in(annotation: Any) -> Any:
    """The BaseModel inside list[...] / dict[str, ...] / X | None / Annotated[...]."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is Annotated:
        return _model_in(args[0])
    if origin in (list, Union, types.UnionType):
        for arg in args:
            found = _model_in(arg)
            if found is not None:
                return found
    if origin is dict:
        return _DictOf(_model_in(args[1]))
    return None


class _DictOf:
    """Marks a ``dict[str, Model]`` while walking a location: the next part is a key."""

    def __init__(self, model: Any) -> None:
        self.model = model
