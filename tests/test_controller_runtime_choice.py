"""Runtime choice: priority honoured (ModelMesh ignores it), namespaced
before cluster runtimes, and clear reasons when nothing fits."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from mesh.controller.predictor import Predictor
from mesh.controller.runtime_choice import RuntimeInfo, choose_runtime


def predictor(fmt: str = "onnx", version: str = "", runtime: str = "", protocol: str = "") -> Predictor:
    return Predictor("m", "ns", fmt, version, runtime, protocol, "s3://b/m", "", "")


def runtime(name: str, *formats: dict, kind: str = "ClusterServingRuntime", **spec) -> RuntimeInfo:
    body = {"supportedModelFormats": list(formats), "multiModel": True, "protocolVersions": ["grpc-v2"], **spec}
    return RuntimeInfo.from_object({"kind": kind, "metadata": {"name": name}, "spec": body})


def fmt(name: str = "onnx", version: str = "1", auto: bool = True, priority: int | None = None) -> dict:
    entry = {"name": name, "version": version, "autoSelect": auto}
    if priority is not None:
        entry["priority"] = priority
    return entry


def test_highest_priority_wins_whatever_the_order():
    low, high = runtime("a-low", fmt(priority=1)), runtime("z-high", fmt(priority=5))
    for runtimes in ([low, high], [high, low]):
        choice = choose_runtime(predictor(), runtimes)
        assert choice.runtime.name == "z-high" and "a-low" in choice.reason


def test_a_namespaced_runtime_wins_a_tie_and_shadows_a_cluster_one_of_its_name():
    cluster = runtime("mmesh-onnx", fmt(priority=2))
    local = runtime("my-onnx", fmt(priority=2), kind="ServingRuntime")
    assert choose_runtime(predictor(), [cluster, local]).runtime.name == "my-onnx"
    shadow = runtime("mmesh-onnx", fmt(name="sklearn"), kind="ServingRuntime")
    named = choose_runtime(predictor(runtime="mmesh-onnx"), [cluster, shadow])
    assert named.runtime is None and "does not list" in named.reason


def test_auto_select_version_protocol_disabled_and_multimodel_filter_candidates():
    runtimes = [
        runtime("not-auto", fmt(auto=False, priority=9)),
        runtime("v2-only", fmt(version="2", priority=8)),
        runtime("disabled", fmt(priority=7), disabled=True),
        runtime("single", fmt(priority=6), multiModel=False),
        runtime("rest-only", fmt(priority=5), protocolVersions=["v1"]),
        runtime("fits", fmt(priority=1)),
    ]
    assert choose_runtime(predictor(version="1", protocol="v2"), runtimes).runtime.name == "fits"


def test_no_supporting_runtime_says_what_was_asked():
    choice = choose_runtime(predictor("tensorflow", "2"), [runtime("mmesh-onnx", fmt())])
    assert choice.runtime is None
    assert "'tensorflow' version 2" in choice.reason


def test_a_named_runtime_need_not_auto_select_but_must_exist_and_be_usable():
    manual = runtime("manual", fmt(auto=False))
    assert choose_runtime(predictor(runtime="manual"), [manual]).runtime.name == "manual"
    assert "no ServingRuntime or ClusterServingRuntime named 'ghost'" in choose_runtime(predictor(runtime="ghost"), [manual]).reason
    disabled = runtime("manual", fmt(), disabled=True)
    assert "disabled" in choose_runtime(predictor(runtime="manual"), [disabled]).reason


@given(st.lists(st.tuples(st.integers(0, 5), st.booleans()), min_size=1, max_size=8, unique_by=lambda t: t))
def test_the_choice_is_a_top_priority_candidate_and_independent_of_order(entries):
    runtimes = [runtime(f"r{i}", fmt(priority=p or None), kind="ServingRuntime" if ns else "ClusterServingRuntime")
                for i, (p, ns) in enumerate(entries)]
    chosen = choose_runtime(predictor(), runtimes).runtime
    assert chosen is not None
    best = max(p for p, _ in entries)
    assert (chosen.formats[0].priority or 0) == best
    assert choose_runtime(predictor(), list(reversed(runtimes))).runtime == chosen
