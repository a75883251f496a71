"""The Grafana dashboard and ServiceMonitor in deploy/monitoring: every metric
a panel queries is one a real sidecar exports (so renaming a metric breaks
this test, not a dashboard in production), label filters use labels those
metrics have, and the manifests carry what Grafana and the Prometheus
Operator need."""

from __future__ import annotations

import json
import re
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as triton
import yaml

from mesh.etcd_process import free_port
from mesh.settings import MeshSettings
from tests.helpers import register, wait_for

MONITORING = Path(__file__).resolve().parents[1] / "deploy" / "monitoring"
DATASOURCE_REFS = {"${datasource}", "$datasource", "${DS_PROMETHEUS}"}
# labels Prometheus (and the Operator's ServiceMonitor) puts on every target
TARGET_LABELS = {"instance", "job", "namespace", "pod", "service", "container", "endpoint"}
PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "offset", "bool", "and", "or", "unless", "inf", "nan"}


@pytest.fixture(scope="module")
def dashboard() -> dict:
    return json.loads((MONITORING / "grafana-dashboard.json").read_text())


def all_panels(panels: list[dict]) -> Iterator[dict]:
    """Every panel, including those inside (collapsed) rows."""
    for panel in panels:
        yield panel
        yield from all_panels(panel.get("panels", []))


def expressions(dashboard: dict) -> list[tuple[str, str]]:
    return [(p["title"], t["expr"]) for p in all_panels(dashboard["panels"]) for t in p.get("targets", [])]


def _strip(expr: str) -> str:
    """The expression without strings, label matchers, grouping clauses,
    range selectors and Grafana variables: what is left names metrics and functions."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    expr = re.sub(r"\{[^}]*\}", " ", expr)
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr)
    expr = re.sub(r"\[[^\]]*\]", " ", expr)
    return re.sub(r"\$\{?\w+\}?", " ", expr)


def metric_names(expr: str) -> set[str]:
    """Identifiers that are not followed by '(' (functions, aggregations) nor PromQL words."""
    stripped = _strip(expr)
    names = set()
    for match in re.finditer(r"(?<![\w.])[a-zA-Z_:][\w:]*", stripped):
        if match.group() in PROMQL_WORDS or stripped[match.end():].lstrip().startswith("("):
            continue
        names.add(match.group())
    return names


def label_names(expr: str) -> set[str]:
    """Labels the expression filters or groups by."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    labels = set()
    for matchers in re.findall(r"\{([^}]*)\}", expr):
        labels |= set(re.findall(r"(\w+)\s*(?:=~|!~|!=|=)", matchers))
    for grouping in re.findall(r"\b(?:by|without|on|ignoring)\s*\(([^)]*)\)", expr):
        labels |= {label.strip() for label in grouping.split(",") if label.strip()}
    return labels


def test_promql_parsing_helpers():
    expr = 'histogram_quantile(0.95, sum by (le, code) (rate(a_bucket{x=~"$y", code!="OK"}[$__rate_interval]))) / b_total * 1e3'
    assert metric_names(expr) == {"a_bucket", "b_total"}
    assert label_names(expr) == {"le", "code", "x"}


def scrape(port: int) -> dict[str, set[str]]:
    """Sample name → label names, from a live /metrics endpoint."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    series: dict[str, set[str]] = {}
    for line in text.splitlines():
        match = re.match(r"^([a-zA-Z_:][\w:]*)(?:\{([^}]*)\})? ", line)
        if match:
            series.setdefault(match.group(1), set()).update(re.findall(r'(\w+)="', match.group(2) or ""))
    return series


@pytest.fixture
def exported(start_sidecar, models_dir) -> dict[str, set[str]]:
    """What two real sidecars export after a load and a forwarded request, so
    histograms and labelled counters have samples (labelled series appear
    only once used)."""
    a, b = start_sidecar(metrics_port=free_port()), start_sidecar(metrics_port=free_port())
    wait_for(lambda: len(a.instances) == 2 and len(b.instances) == 2, what="instances")
    register(a.address, "dash", models_dir / "dense-0")
    inp = triton.InferInput("x", [1, 64], "FP32")
    inp.set_data_from_numpy(np.ones((1, 64), np.float32))
    triton.InferenceServerClient(a.address).infer("dash", [inp])  # a cache miss and a load on a
    wait_for(lambda: a.settings.instance_id in (b.view.get("dash").instances if b.view.get("dash") else {}), what="copy record")
    triton.InferenceServerClient(b.address).infer("dash", [inp])  # forwarded by b
    series: dict[str, set[str]] = {}
    for sidecar in (a, b):
        for name, labels in scrape(sidecar.metrics_port).items():
            series.setdefault(name, set()).update(labels)
    assert "mmesh_forwarded_requests_total" in series  # the forward happened
    return series


def test_every_panel_queries_metrics_and_labels_a_sidecar_exports(dashboard, exported):
    exprs = expressions(dashboard)
    assert len(exprs) >= 20
    used = set()
    for title, expr in exprs:
        names = metric_names(expr)
        assert names, f"{title}: no metric in {expr!r}"
        missing = names - exported.keys()
        assert not missing, f"{title}: {sorted(missing)} not exported by a sidecar"
        known_labels = set().union(*(exported[name] for name in names)) | TARGET_LABELS
        assert label_names(expr) <= known_labels, f"{title}: unknown labels {label_names(expr) - known_labels}"
        used |= names
    # the families the issue asks for all have a panel
    for family in (
        "modelmesh_api_request_milliseconds_bucket", "modelmesh_cache_miss_milliseconds_count",
        "modelmesh_loadmodel_milliseconds_bucket", "modelmesh_unloadmodel_milliseconds_count", "modelmesh_model_evicted_total",
        "modelmesh_instance_capacity_bytes", "modelmesh_instance_used_bytes", "modelmesh_models_loaded_total",
        "modelmesh_models_managed_total", "mmesh_forwarded_requests_total", "mmesh_requests_waiting_for_load",
    ):
        assert family in used, family


def test_dashboard_structure(dashboard):
    panels = list(all_panels(dashboard["panels"]))
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    assert dashboard["uid"] and dashboard["title"]
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    for panel in panels:
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] in DATASOURCE_REFS, panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] in DATASOURCE_REFS, panel["title"]
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
    for name in ("namespace", "instance"):
        assert variables[name]["datasource"]["uid"] in DATASOURCE_REFS


def test_servicemonitor_has_what_the_prometheus_operator_requires():
    documents = [d for d in yaml.safe_load_all((MONITORING / "servicemonitor.yaml").read_text()) if d]
    assert len(documents) == 1
    monitor = documents[0]
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1" and monitor["kind"] == "ServiceMonitor"
    assert monitor["metadata"]["name"]
    assert monitor["spec"]["selector"]["matchLabels"] == {"app.kubernetes.io/name": "mmesh"}
    endpoints = monitor["spec"]["endpoints"]
    assert endpoints and all(e["port"] == "prometheus" and e["path"] == "/metrics" for e in endpoints)
    assert MeshSettings.model_fields["metrics_port"].default == 2112  # the port the contract names


def test_mmesh_services_in_deploy_keep_the_label_contract():
    """Any Service manifest under deploy/ labelled for the ServiceMonitor names its metrics port 'prometheus'."""
    services = [
        doc
        for path in sorted(MONITORING.parent.rglob("*.yaml"))
        for doc in yaml.safe_load_all(path.read_text())
        if isinstance(doc, dict) and doc.get("kind") == "Service"
        and (doc.get("metadata", {}).get("labels") or {}).get("app.kubernetes.io/name") == "mmesh"
    ]
    if not services:
        pytest.skip("no Service manifest labelled app.kubernetes.io/name: mmesh under deploy/ yet")
    for service in services:
        ports = {p.get("name"): p for p in service["spec"]["ports"]}
        assert "prometheus" in ports, service["metadata"]["name"]
