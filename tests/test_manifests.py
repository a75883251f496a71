"""The Kubernetes manifests under deploy/, checked offline.

- every YAML document parses, and every object of a built-in kind survives a
  round trip through the official `kubernetes` client's models: a misspelt or
  misplaced field would be dropped, the way the API server prunes it, so the
  test names the path it lost;
- the CRDs are valid apiextensions/v1 and structural, and every example and
  built-in runtime validates against their openAPIV3Schema with the API
  server's pruning semantics (nothing would be silently dropped);
- the controller's RBAC is least privilege and covers what the controller uses;
- the kustomizations reference what exists, and `kubectl kustomize` (when
  kubectl is installed) keeps cluster-scoped kinds out of namespaces;
- the Helm chart renders (a small offline renderer for the template subset the
  chart uses) into the same objects as the kustomize manifests;
- the Dockerfile / .dockerignore build what pyproject.toml installs.
"""

from __future__ import annotations

import copy
import functools
import json
import os
import re
import shlex
import shutil
import subprocess
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from kubernetes import client as k8s

from mesh.etcd_connection import parse_etcd_connection
from puller.storage_config import StorageConfig

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
CRDS = DEPLOY / "crds"
CHART = DEPLOY / "helm" / "mmesh"
TEMPLATES = CHART / "templates"
NAMESPACE = "modelmesh-serving"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
VERSION = PYPROJECT["project"]["version"]

# API groups whose kinds the kubernetes client has models for
BUILTIN_GROUPS = {"", "apps", "batch", "policy", "rbac.authorization.k8s.io", "apiextensions.k8s.io",
                  "networking.k8s.io", "coordination.k8s.io", "autoscaling"}
CLUSTER_SCOPED = {"Namespace", "CustomResourceDefinition", "ClusterRole", "ClusterRoleBinding", "ClusterServingRuntime"}
API = k8s.ApiClient()


# ---------------------------------------------------------------- loading


def yaml_files() -> list[Path]:
    """Every .yaml/.yml under deploy/ once (the chart's crds symlink is the same
    files as deploy/crds), except Helm templates, which are not YAML until rendered."""
    seen: dict[Path, Path] = {}
    for path in sorted(DEPLOY.rglob("*")):
        if path.suffix not in (".yaml", ".yml") or not path.is_file() or TEMPLATES in path.parents:
            continue
        seen.setdefault(path.resolve(), path)
    return sorted(seen.values())


LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


@functools.lru_cache(maxsize=None)
def _parsed(path: Path) -> tuple:
    return tuple(doc for doc in yaml.load_all(path.read_text(), Loader=LOADER) if doc is not None)


def documents(path: Path) -> list[dict]:
    """The YAML documents of a file (parsed once; each caller gets its own copy)."""
    return copy.deepcopy(list(_parsed(path)))


def objects(path: Path) -> list[dict]:
    """The Kubernetes objects of a file (not kustomizations, Chart.yaml, values.yaml)."""
    return [d for d in documents(path) if isinstance(d, dict) and "apiVersion" in d and "kind" in d
            and not d["apiVersion"].startswith("kustomize.config.k8s.io/")]


def all_objects() -> list[tuple[str, dict]]:
    return [(str(p.relative_to(ROOT)), o) for p in yaml_files() for o in objects(p)]


def group_of(obj: dict) -> str:
    return obj["apiVersion"].rpartition("/")[0]


def by_kind(objs: list[dict], kind: str) -> list[dict]:
    return [o for o in objs if o["kind"] == kind]


def one(objs: list[dict], kind: str, name: str) -> dict:
    found = [o for o in objs if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
    return found[0]


def dir_objects(folder: str) -> list[dict]:
    return [o for p in sorted((DEPLOY / folder).glob("*.yaml")) for o in objects(p)]


def crd_schemas() -> dict[tuple[str, str], dict]:
    """(apiVersion, kind) → the openAPIV3Schema of that served version."""
    out = {}
    for path in sorted(CRDS.glob("*.yaml")):
        for crd in objects(path):
            if crd["kind"] != "CustomResourceDefinition":
                continue
            for version in crd["spec"]["versions"]:
                out[(f"{crd['spec']['group']}/{version['name']}", crd["spec"]["names"]["kind"])] = version["schema"]["openAPIV3Schema"]
    return out


# ---------------------------------------------------------------- k8s model round trip


def model_class(obj: dict) -> str:
    version = obj["apiVersion"].rpartition("/")[2]
    return version[0].upper() + version[1:] + obj["kind"]


def lost_fields(before: Any, after: Any, path: str = "") -> list[str]:
    """Paths of `before` that `after` lacks or changed."""
    if isinstance(before, dict):
        if not isinstance(after, dict):
            return [f"{path or '.'} (became {type(after).__name__})"]
        out = []
        for key, value in before.items():
            if key not in after:
                out.append(f"{path}.{key}")
            else:
                out += lost_fields(value, after[key], f"{path}.{key}")
        return out
    if isinstance(before, list):
        if not isinstance(after, list) or len(after) != len(before):
            return [f"{path} (list changed)"]
        return [p for i, (b, a) in enumerate(zip(before, after)) for p in lost_fields(b, a, f"{path}[{i}]")]
    return [] if before == after else [f"{path} ({before!r} -> {after!r})"]


def round_trip(obj: dict) -> list[str]:
    """Fields of a built-in object that the kubernetes client's model drops."""
    name = model_class(obj)
    assert hasattr(k8s, name), f"the kubernetes client has no model {name} for {obj['apiVersion']} {obj['kind']}"
    model = API._ApiClient__deserialize(copy.deepcopy(obj), name)
    return lost_fields(obj, API.sanitize_for_serialization(model))


# ---------------------------------------------------------------- CRD schema → JSON Schema with pruning


def to_jsonschema(node: dict) -> dict:
    """An openAPIV3Schema node as JSON Schema, with the API server's pruning
    made strict: an object with `properties` and neither
    x-kubernetes-preserve-unknown-fields nor additionalProperties accepts no
    other field (the server would silently drop it)."""
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key.startswith("x-kubernetes-") or key in ("nullable", "description"):
            continue
        if key == "properties":
            out[key] = {name: to_jsonschema(sub) for name, sub in value.items()}
        elif key in ("items", "additionalProperties") and isinstance(value, dict):
            out[key] = to_jsonschema(value)
        else:
            out[key] = value
    if node.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if node.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    if "properties" in node and not node.get("x-kubernetes-preserve-unknown-fields") and "additionalProperties" not in node:
        out["additionalProperties"] = False
    return out


def pruned_fields(value: Any, schema: dict, path: str = "") -> list[str]:
    """Paths the API server would drop from `value` under `schema` (pruning)."""
    if isinstance(value, dict) and schema.get("type") == "object":
        props = schema.get("properties") or {}
        extra = schema.get("additionalProperties")
        out = []
        for key, sub in value.items():
            here = f"{path}.{key}"
            if path == "" and key in ("apiVersion", "kind", "metadata"):
                continue  # always kept; metadata is ObjectMeta, checked by the server itself
            if key in props:
                out += pruned_fields(sub, props[key], here)
            elif isinstance(extra, dict):
                out += pruned_fields(sub, extra, here)
            elif not schema.get("x-kubernetes-preserve-unknown-fields"):
                out.append(here)
        return out
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [p for i, v in enumerate(value) for p in pruned_fields(v, schema["items"], f"{path}[{i}]")]
    return []


def validate_custom_object(obj: dict, schemas: dict) -> None:
    key = (obj["apiVersion"], obj["kind"])
    assert key in schemas, f"no CRD in deploy/crds serves {key}"
    schema = schemas[key]
    assert pruned_fields(obj, schema) == [], f"{obj['kind']} {obj['metadata'].get('name')}: fields the API server would drop"
    errors = sorted(jsonschema.Draft7Validator(to_jsonschema(schema)).iter_errors(obj), key=lambda e: list(e.path))
    assert not errors, "; ".join(f"{'.'.join(map(str, e.path))}: {e.message}" for e in errors)


# ---------------------------------------------------------------- the offline Helm renderer


ACTION = re.compile(r"{{(-?)\s*(.*?)\s*(-?)}}", re.S)


def _tokens(text: str) -> list[list]:
    tokens: list[list] = []
    pos = 0
    for m in ACTION.finditer(text):
        tokens.append(["text", text[pos:m.start()]])
        tokens.append(["action", m.group(2), m.group(1) == "-", m.group(3) == "-"])
        pos = m.end()
    tokens.append(["text", text[pos:]])
    for i, token in enumerate(tokens):  # {{- and -}} eat the whitespace beside them
        if token[0] == "action":
            if token[2]:
                tokens[i - 1][1] = tokens[i - 1][1].rstrip()
            if token[3]:
                tokens[i + 1][1] = tokens[i + 1][1].lstrip()
    return tokens


def _parse(tokens: list[list], i: int, stops: tuple[str, ...]) -> tuple[list, int, str | None]:
    nodes: list = []
    while i < len(tokens):
        kind, body = tokens[i][0], tokens[i][1]
        if kind == "text":
            nodes.append(("text", body))
            i += 1
            continue
        word = body.split()[0] if body.split() else ""
        if body.startswith("/*"):
            i += 1
        elif word == "if":
            then, i, stop = _parse(tokens, i + 1, ("else", "end"))
            otherwise: list = []
            if stop == "else":
                otherwise, i, stop = _parse(tokens, i, ("end",))
            assert stop == "end", f"unclosed {{{{ {body} }}}}"
            nodes.append(("if", body[2:].strip(), then, otherwise))
        elif word == "define":
            inner, i, stop = _parse(tokens, i + 1, ("end",))
            assert stop == "end", f"unclosed {{{{ {body} }}}}"
            nodes.append(("define", shlex.split(body)[1], inner))
        elif word in stops:
            return nodes, i + 1, word
        else:
            assert word not in ("else", "end", "range", "with"), f"unsupported or stray {{{{ {body} }}}}"
            nodes.append(("expr", body))
            i += 1
    return nodes, i, None


class Renderer:
    """The chart's template subset: {{ .Values.a.b }}, .Release.*, .Chart.*,
    if/else/end, define/include, and the functions toYaml, nindent, indent,
    quote. A value the templates name but values.yaml lacks is an error."""

    def __init__(self, values: dict, namespace: str = "mmesh-test", release: str = "mmesh") -> None:
        chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
        self.ctx = {
            "Values": values,
            "Release": {"Namespace": namespace, "Name": release, "Service": "Helm"},
            "Chart": {"Name": chart["name"], "Version": chart["version"], "AppVersion": chart["appVersion"]},
        }
        self.defines: dict[str, list] = {}
        for helper in sorted(TEMPLATES.glob("_*.tpl")):
            self._render(_parse(_tokens(helper.read_text()), 0, ())[0], self.ctx)

    def render(self, path: Path) -> str:
        nodes, _, stop = _parse(_tokens(path.read_text()), 0, ())
        assert stop is None, f"{path.name}: stray {{{{ {stop} }}}}"
        return self._render(nodes, self.ctx)

    def _render(self, nodes: list, ctx: Any) -> str:
        out = []
        for node in nodes:
            if node[0] == "text":
                out.append(node[1])
            elif node[0] == "define":
                self.defines[node[1]] = node[2]
            elif node[0] == "if":
                out.append(self._render(node[2] if self._pipeline(node[1], ctx) else node[3], ctx))
            else:
                value = self._pipeline(node[1], ctx)
                assert value is not None, f"{{{{ {node[1]} }}}} is empty"
                out.append(str(value).lower() if isinstance(value, bool) else str(value))
        return "".join(out)

    def _term(self, term: str, ctx: Any) -> Any:
        if term == ".":
            return ctx
        if term.startswith("."):
            value = ctx
            for part in term[1:].split("."):
                assert isinstance(value, dict) and part in value, f"{term}: {part!r} is not set"
                value = value[part]
            return value
        return int(term) if term.isdigit() else term

    def _pipeline(self, expr: str, ctx: Any) -> Any:
        result: Any = None
        for n, stage in enumerate(expr.split("|")):
            words = shlex.split(stage)
            args = [self._term(w, ctx) for w in words[1:]] + ([result] if n else [])
            name = words[0]
            if name.startswith(".") and len(words) == 1 and n == 0:
                result = self._term(name, ctx)
            elif name == "include":
                result = self._render(self.defines[args[0]], args[1])
            elif name == "toYaml":
                result = yaml.safe_dump(args[0], default_flow_style=False, sort_keys=True).rstrip("\n")
            elif name in ("nindent", "indent"):
                text = "\n".join(" " * args[0] + line for line in str(args[1]).split("\n"))
                result = "\n" + text if name == "nindent" else text
            elif name == "quote":
                result = json.dumps(str(args[0]))
            else:
                raise AssertionError(f"the offline renderer does not know {name!r} (in {{{{ {expr} }}}})")
        return result


def chart_values() -> dict:
    return yaml.safe_load((CHART / "values.yaml").read_text())


def render_chart(values: dict) -> list[dict]:
    renderer = Renderer(values)
    docs = []
    for template in sorted(TEMPLATES.iterdir()):
        if template.name.startswith("_") or template.suffix not in (".yaml", ".yml"):
            continue
        text = renderer.render(template)
        try:
            docs += [d for d in yaml.safe_load_all(text) if d is not None]
        except yaml.YAMLError as exc:
            raise AssertionError(f"{template.name} renders to invalid YAML: {exc}\n{text}") from None
    return docs


def all_on(values: dict) -> dict:
    values = copy.deepcopy(values)
    values["etcd"]["quickstart"] = values["minio"]["quickstart"] = values["runtimes"]["enabled"] = True
    values["monitoring"]["serviceMonitor"] = True
    return values


def all_off(values: dict) -> dict:
    values = copy.deepcopy(values)
    values["etcd"]["quickstart"] = values["minio"]["quickstart"] = values["runtimes"]["enabled"] = False
    values["monitoring"]["serviceMonitor"] = False
    return values


# ================================================================ tests: parsing and models


def test_every_yaml_document_under_deploy_parses():
    files = yaml_files()
    assert len(files) >= 15
    for path in files:
        try:
            docs = documents(path)
        except yaml.YAMLError as exc:
            pytest.fail(f"{path.relative_to(ROOT)}: {exc}")
        assert docs, f"{path.relative_to(ROOT)} is empty"
        for doc in objects(path):
            assert doc["metadata"].get("name"), f"{path.relative_to(ROOT)}: a {doc['kind']} without a name"


def test_builtin_kinds_round_trip_through_the_kubernetes_models():
    checked = set()
    for where, obj in all_objects():
        if group_of(obj) not in BUILTIN_GROUPS:
            continue
        lost = round_trip(obj)
        assert not lost, f"{where}: {obj['kind']} {obj['metadata']['name']} loses {lost}"
        checked.add(obj["kind"])
    assert {"Deployment", "Service", "ServiceAccount", "Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding",
            "Secret", "Namespace", "CustomResourceDefinition"} <= checked


def test_the_round_trip_catches_a_misspelt_field():
    deployment = one(dir_objects("controller"), "Deployment", "mmesh-controller")
    broken = copy.deepcopy(deployment)
    broken["spec"]["template"]["spec"]["containers"][0]["imagePullPolice"] = "Always"
    assert round_trip(broken) == [".spec.template.spec.containers[0].imagePullPolice"]


def test_objects_are_namespaced_where_they_must_be():
    for where, obj in all_objects():
        if where.startswith("deploy/examples/"):
            assert "namespace" not in obj["metadata"], f"{where}: examples go to the namespace kubectl is told"
        elif obj["kind"] in CLUSTER_SCOPED:
            assert "namespace" not in obj["metadata"], f"{where}: {obj['kind']} is cluster-scoped"


# ================================================================ tests: CRDs


def _schema_nodes(node: dict, path: str = "") -> Iterator[tuple[str, dict]]:
    yield path, node
    for name, sub in (node.get("properties") or {}).items():
        yield from _schema_nodes(sub, f"{path}.{name}")
    if isinstance(node.get("items"), dict):
        yield from _schema_nodes(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from _schema_nodes(node["additionalProperties"], f"{path}{{}}")


def _crds() -> list[dict]:
    crds = [o for p in sorted(CRDS.glob("*.yaml")) for o in objects(p)]
    assert {c["kind"] for c in crds} == {"CustomResourceDefinition"}
    return crds


def test_crds_are_the_kserve_kinds():
    crds = {c["metadata"]["name"]: c for c in _crds()}
    assert set(crds) == {"inferenceservices.serving.kserve.io", "servingruntimes.serving.kserve.io",
                         "clusterservingruntimes.serving.kserve.io"}
    isvc = crds["inferenceservices.serving.kserve.io"]["spec"]
    assert (isvc["scope"], [v["name"] for v in isvc["versions"]]) == ("Namespaced", ["v1beta1"])
    assert "isvc" in isvc["names"]["shortNames"]
    assert crds["servingruntimes.serving.kserve.io"]["spec"]["scope"] == "Namespaced"
    assert crds["clusterservingruntimes.serving.kserve.io"]["spec"]["scope"] == "Cluster"
    for crd in crds.values():
        spec = crd["spec"]
        assert crd["metadata"]["name"] == f"{spec['names']['plural']}.{spec['group']}" and spec["group"] == "serving.kserve.io"
        assert sum(v["storage"] for v in spec["versions"]) == 1 and all(v["served"] for v in spec["versions"])
        for version in spec["versions"]:
            assert version["subresources"] == {"status": {}}, crd["metadata"]["name"]
    # the two runtime kinds share one spec
    sr, csr = (crds[f"{k}.serving.kserve.io"]["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
               for k in ("servingruntimes", "clusterservingruntimes"))
    assert sr == csr


def test_crds_are_structural_apiextensions_v1():
    allowed = {"type", "format", "description", "properties", "items", "additionalProperties", "required", "enum",
               "minimum", "maximum", "minLength", "maxLength", "pattern", "minItems", "maxItems", "default",
               "nullable", "x-kubernetes-preserve-unknown-fields", "x-kubernetes-int-or-string",
               "x-kubernetes-list-type", "x-kubernetes-list-map-keys", "x-kubernetes-map-type", "x-kubernetes-validations"}
    for crd in _crds():
        name = crd["metadata"]["name"]
        assert round_trip(crd) == [], name
        for version in crd["spec"]["versions"]:
            root = version["schema"]["openAPIV3Schema"]
            assert root["type"] == "object"
            assert root["properties"]["metadata"] == {"type": "object"}, "metadata may not be restricted beyond name"
            for path, node in _schema_nodes(root):
                where = f"{name} {path or '(root)'}"
                assert set(node) <= allowed, f"{where}: {set(node) - allowed}"
                assert node.get("type") in ("object", "array", "string", "integer", "number", "boolean"), f"{where}: no type"
                if node["type"] == "object":
                    assert not ("properties" in node and "additionalProperties" in node), where
                    assert node.get("additionalProperties") is not False, f"{where}: additionalProperties: false is not allowed in v1"
                if node["type"] == "array":
                    assert isinstance(node.get("items"), dict), f"{where}: an array needs an items schema"
                for field in node.get("required", []):
                    assert field in node.get("properties", {}), f"{where}: required {field} is not a property"


def _json_path_in_schema(schema: dict, json_path: str) -> bool:
    node = schema
    for part in re.sub(r"\[[^\]]*\]", "[]", json_path).strip(".").split("."):
        arrays = part.count("[]")
        node = (node.get("properties") or {}).get(part.replace("[]", ""))
        if node is None:
            return False
        for _ in range(arrays):
            node = node["items"]
    return True


def test_printer_columns_point_at_fields_the_schema_keeps():
    for crd in _crds():
        for version in crd["spec"]["versions"]:
            for column in version["additionalPrinterColumns"]:
                assert column["type"] in ("integer", "number", "string", "boolean", "date")
                path = column["jsonPath"]
                if path != ".metadata.creationTimestamp":
                    assert _json_path_in_schema(version["schema"]["openAPIV3Schema"], path), (crd["metadata"]["name"], path)
    isvc = next(c for c in _crds() if c["spec"]["names"]["kind"] == "InferenceService")
    columns = {c["name"].upper(): c["jsonPath"] for c in isvc["spec"]["versions"][0]["additionalPrinterColumns"]}
    assert columns == {
        "URL": ".status.url",
        "READY": '.status.conditions[?(@.type=="Ready")].status',
        "ACTIVE MODEL STATE": ".status.modelStatus.states.activeModelState",
        "TARGET": ".status.modelStatus.states.targetModelState",
        "RUNTIME": ".status.modelStatus.runtime",
        "AGE": ".metadata.creationTimestamp",
    }


def test_isvc_status_keeps_what_the_controller_writes():
    """A status written through the status subresource with these fields is
    stored whole (KServe's ModelMesh status plus mmesh's modelStatus.runtime)."""
    status = {
        "observedGeneration": 3,
        "url": "grpc://modelmesh-serving.modelmesh-serving:8033",
        "address": {"url": "grpc://modelmesh-serving.modelmesh-serving:8033"},
        "components": {"predictor": {"url": "grpc://x:8033", "grpcUrl": "grpc://x:8033", "restUrl": "http://x:8008"}},
        "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": "2024-01-01T00:00:00Z"},
                       {"type": "PredictorReady", "status": "True", "reason": "", "message": ""}],
        "modelStatus": {
            "transitionStatus": "UpToDate",
            "states": {"activeModelState": "Loaded", "targetModelState": ""},
            "copies": {"failedCopies": 0, "totalCopies": 2},
            "lastFailureInfo": {"location": "abc123", "reason": "ModelLoadFailed", "message": "boom",
                                "modelRevisionName": "m__isvc-0123456789", "time": "2024-01-01T00:00:00Z"},
            "runtime": "mmesh-onnx",
        },
    }
    isvc = objects(DEPLOY / "examples" / "onnx-isvc.yaml")[0] | {"status": status}
    validate_custom_object(isvc, crd_schemas())


def test_custom_objects_validate_against_the_crds():
    schemas = crd_schemas()
    checked = set()
    for where, obj in all_objects():
        if group_of(obj) == "serving.kserve.io":
            try:
                validate_custom_object(obj, schemas)
            except AssertionError as exc:
                pytest.fail(f"{where}: {exc}")
            checked.add(obj["kind"])
    assert checked == {"InferenceService", "ServingRuntime", "ClusterServingRuntime"}


def test_validation_catches_what_the_api_server_would_prune_or_reject():
    schemas = crd_schemas()
    isvc = objects(DEPLOY / "examples" / "sklearn-isvc.yaml")[0]
    misspelt = copy.deepcopy(isvc)
    misspelt["spec"]["predictor"]["model"]["storageURI"] = "s3://b/m"
    assert pruned_fields(misspelt, schemas[("serving.kserve.io/v1beta1", "InferenceService")]) == [".spec.predictor.model.storageURI"]
    # pod-level predictor fields are passed through, not pruned
    passthrough = copy.deepcopy(isvc)
    passthrough["spec"]["predictor"]["minReplicas"] = 1
    validate_custom_object(passthrough, schemas)
    wrong_type = copy.deepcopy(isvc)
    wrong_type["spec"]["predictor"]["model"]["modelFormat"] = "sklearn"
    with pytest.raises(AssertionError):
        validate_custom_object(wrong_type, schemas)
    runtime = objects(DEPLOY / "runtimes" / "mmesh-onnx.yaml")[0]
    bad = copy.deepcopy(runtime)
    bad["spec"]["supportedModelFormats"][0]["priorty"] = 3
    assert pruned_fields(bad, schemas[("serving.kserve.io/v1alpha1", "ClusterServingRuntime")]) == [".spec.supportedModelFormats[0].priorty"]


# ================================================================ tests: runtimes and examples


def _runtimes() -> list[dict]:
    return by_kind(dir_objects("runtimes"), "ClusterServingRuntime") + by_kind(dir_objects("examples"), "ServingRuntime")


def test_builtin_runtimes():
    runtimes = {r["metadata"]["name"]: r["spec"] for r in by_kind(dir_objects("runtimes"), "ClusterServingRuntime")}
    assert set(runtimes) == {"mmesh-onnx", "mmesh-torchscript", "mlserver-1.x"}
    formats = {name: {(f["name"], f.get("version"), f.get("autoSelect"), f.get("priority")) for f in spec["supportedModelFormats"]}
               for name, spec in runtimes.items()}
    assert formats == {
        "mmesh-onnx": {("onnx", "1", True, 2)},
        "mmesh-torchscript": {("pytorch", "1", True, 2)},
        "mlserver-1.x": {("sklearn", "0", True, None), ("xgboost", "1", True, None), ("lightgbm", "3", True, None)},
    }
    for name, spec in runtimes.items():
        assert spec["multiModel"] is True and spec["protocolVersions"] == ["grpc-v2"] and spec["grpcEndpoint"] == "port:8085", name
        names = [c["name"] for c in spec["containers"]]
        assert not {"mm", "rest-proxy", "puller"} & set(names), f"{name}: reserved container name"
    for name in ("mmesh-onnx", "mmesh-torchscript"):
        spec = runtimes[name]
        assert spec["grpcDataEndpoint"] == "port:8085" and "builtInAdapter" not in spec
        (container,) = spec["containers"]
        assert container["image"] == f"mmesh:{VERSION}"
        args = container["command"]
        assert args[:3] == ["python", "-m", "runtime_adapter"]
        flags = dict(zip(args[3::2], args[4::2]))
        assert flags == {"--runtime": "builtin", "--listen": "0.0.0.0:8085", "--models-dir": "/models",
                         "--storage-config-dir": "/storage-config"}
        res = container["resources"]
        assert res["requests"]["memory"] == res["limits"]["memory"], "capacity comes from the memory limit"
    mlserver = runtimes["mlserver-1.x"]
    assert mlserver["grpcDataEndpoint"] == "port:8001"
    adapter = mlserver["builtInAdapter"]
    assert adapter["serverType"] == "mlserver" and adapter["runtimeManagementPort"] == 8001
    (container,) = mlserver["containers"]
    assert container["name"] == adapter["serverType"] and container["image"].startswith("seldonio/mlserver:1.")
    env = {e["name"]: e["value"] for e in container["env"]}
    from runtime_adapter.external.mlserver import MLServer  # the layout dir the adapter writes

    assert env["MLSERVER_MODELS_DIR"] == f"/models/{MLServer.layout_dir_name}"
    assert env["MLSERVER_GRPC_PORT"] == str(adapter["runtimeManagementPort"]) == mlserver["grpcDataEndpoint"].removeprefix("port:")
    assert env["MLSERVER_LOAD_MODELS_AT_STARTUP"] == "false" and env["MLSERVER_HTTP_PORT"] == "8002"
    assert env["MLSERVER_MODEL_NAME"]


def _selected_runtime(predictor: dict, runtimes: list[dict]) -> str | None:
    """KServe's rule as mmesh applies it: a named runtime, else the
    auto-selectable runtime for the format with the highest priority."""
    model = predictor.get("model")
    if model is None:
        (framework,) = [k for k in predictor if isinstance(predictor[k], dict)]
        model = {"modelFormat": {"name": framework}, **predictor[framework]}
    if model.get("runtime"):
        return model["runtime"]
    best = None
    for runtime in runtimes:
        if runtime["spec"].get("disabled"):
            continue
        for fmt in runtime["spec"]["supportedModelFormats"]:
            if fmt["name"] == model["modelFormat"]["name"] and fmt.get("autoSelect"):
                if best is None or fmt.get("priority", 0) > best[0]:
                    best = (fmt.get("priority", 0), runtime["metadata"]["name"])
    return best and best[1]


def test_example_inference_services_are_modelmesh_ones_with_a_runtime():
    runtimes = _runtimes()
    names = {r["metadata"]["name"] for r in runtimes}
    chosen = {}
    for isvc in by_kind(dir_objects("examples"), "InferenceService"):
        name = isvc["metadata"]["name"]
        assert isvc["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "ModelMesh", name
        predictor = isvc["spec"]["predictor"]
        (spec,) = [v for v in predictor.values() if isinstance(v, dict)]
        assert bool(spec.get("storageUri")) != bool((spec.get("storage") or {}).get("path")), f"{name}: storageUri xor storage.path"
        chosen[name] = _selected_runtime(predictor, runtimes)
        assert chosen[name] in names, f"{name}: no runtime serves it"
    assert chosen == {
        "example-sklearn-isvc": "mlserver-1.x",
        "example-sklearn-isvc-uri": "mlserver-1.x",
        "example-sklearn-isvc-legacy": "mlserver-1.x",
        "onnx-example": "mmesh-onnx",
        "onnx-example-runtime": "mmesh-onnx",
    }


# ================================================================ tests: controller, RBAC, quickstart


def _allows(rules: list[dict], group: str, resource: str, verb: str) -> bool:
    return any(group in r.get("apiGroups", []) and resource in r.get("resources", []) and verb in r.get("verbs", [])
               for r in rules)


NAMESPACED_NEEDS = {
    ("serving.kserve.io", "inferenceservices"): {"get", "list", "watch"},
    ("serving.kserve.io", "inferenceservices/status"): {"get", "update", "patch"},
    ("serving.kserve.io", "servingruntimes"): {"get", "list", "watch"},
    ("apps", "deployments"): {"get", "list", "watch", "create", "update", "patch", "delete"},
    ("", "services"): {"get", "list", "watch", "create", "update", "patch", "delete"},
    ("coordination.k8s.io", "leases"): {"get", "create", "update"},
    ("", "events"): {"create", "patch"},
}


def check_rbac(objs: list[dict], cluster_role: str) -> None:
    role = one(objs, "Role", "mmesh-controller")
    cluster = one(objs, "ClusterRole", cluster_role)
    for rules in (role["rules"], cluster["rules"]):
        for rule in rules:
            for field in ("apiGroups", "resources", "verbs"):
                assert "*" not in rule.get(field, []), f"wildcard {field} in {rule}"
            assert "secrets" not in rule["resources"], "the controller reads no secrets through the API"
            assert not {"escalate", "bind", "impersonate"} & set(rule["verbs"])
            assert not rule.get("nonResourceURLs")
    for (group, resource), verbs in NAMESPACED_NEEDS.items():
        for verb in verbs:
            assert _allows(role["rules"], group, resource, verb), f"the Role lacks {verb} {group}/{resource}"
    granted = {(g, r, v) for rule in role["rules"] for g in rule["apiGroups"] for r in rule["resources"] for v in rule["verbs"]}
    needed = {(g, r, v) for (g, r), verbs in NAMESPACED_NEEDS.items() for v in verbs}
    extra = granted - needed - {("events.k8s.io", "events", v) for v in ("create", "patch")}
    assert not extra, f"the Role grants more than the controller uses: {sorted(extra)}"
    assert cluster["rules"] == [{"apiGroups": ["serving.kserve.io"], "resources": ["clusterservingruntimes"],
                                 "verbs": ["get", "list", "watch"]}]
    for binding_kind, role_kind, role_name in (("RoleBinding", "Role", "mmesh-controller"), ("ClusterRoleBinding", "ClusterRole", cluster_role)):
        (binding,) = by_kind(objs, binding_kind)
        assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": role_kind, "name": role_name}
        assert [(s["kind"], s["name"]) for s in binding["subjects"]] == [("ServiceAccount", "mmesh-controller")]
    accounts = {sa["metadata"]["name"]: sa for sa in by_kind(objs, "ServiceAccount")}
    assert set(accounts) == {"mmesh-controller", "mmesh"}
    assert accounts["mmesh"]["automountServiceAccountToken"] is False


def test_controller_rbac_is_least_privilege_and_complete():
    check_rbac(dir_objects("controller"), "mmesh-controller")


def check_controller(objs: list[dict]) -> dict:
    deployment = one(objs, "Deployment", "mmesh-controller")
    pod = deployment["spec"]["template"]["spec"]
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["selector"]["matchLabels"].items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    assert pod["serviceAccountName"] == "mmesh-controller" and pod["securityContext"]["runAsNonRoot"] is True
    (container,) = pod["containers"]
    assert container["command"] == ["mmesh", "controller"] and container["imagePullPolicy"] == "IfNotPresent"
    env = {e["name"]: e for e in container["env"]}
    assert env["POD_NAMESPACE"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
    assert env["POD_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert env["KV_STORE"]["value"] == "etcd:/opt/mmesh/etcd/etcd_connection"
    assert env["MMESH_IMAGE"]["value"] == container["image"]
    assert env["MMESH_SERVICE_NAME"]["value"] == "modelmesh-serving"
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": 8081}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": 8081}
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    res = container["resources"]
    assert res["requests"] == {"cpu": "50m", "memory": "96Mi"} and res["limits"] == {"cpu": "1", "memory": "512Mi"}
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    etcd = mounts["etcd-config"]
    assert etcd["mountPath"] == "/opt/mmesh/etcd" and etcd["readOnly"] is True
    assert volumes["etcd-config"]["secret"]["secretName"] == "model-serving-etcd"
    # the metrics Service follows deploy/monitoring's label contract
    service = one(objs, "Service", "mmesh-controller-metrics")
    assert service["metadata"]["labels"]["app.kubernetes.io/name"] == "mmesh"
    assert service["spec"]["selector"].items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    (port,) = service["spec"]["ports"]
    assert port["name"] == "prometheus" and port["targetPort"] in [p["name"] for p in container["ports"]]
    assert {p["name"]: p["containerPort"] for p in container["ports"]} == {"metrics": 8081}
    return container


def test_controller_deployment():
    container = check_controller(dir_objects("controller"))
    assert container["image"] == f"mmesh:{VERSION}"


def test_quickstart_secrets_are_what_mmesh_reads(tmp_path):
    objs = dir_objects("quickstart")
    etcd = one(objs, "Secret", "model-serving-etcd")
    connection = parse_etcd_connection(etcd["stringData"]["etcd_connection"])
    assert (connection.endpoints, connection.root_prefix) == ("etcd:2379", "modelmesh-serving")
    service = one(objs, "Service", "etcd")
    assert service["spec"]["ports"][0]["port"] == 2379
    assert one(objs, "Deployment", "etcd")["spec"]["template"]["spec"]["containers"][0]["image"].startswith("quay.io/coreos/etcd:v3.5.")
    storage = one(objs, "Secret", "storage-config")
    for key, text in storage["stringData"].items():
        (tmp_path / key).write_text(text)
    entry = StorageConfig(tmp_path).resolve("localMinIO")
    assert entry is not None and entry.type == "s3" and entry.get("endpoint_url") == "http://minio:9000"


# ================================================================ tests: kustomize


def _kustomizations() -> list[Path]:
    return sorted(p for p in DEPLOY.rglob("kustomization.yaml") if CHART not in p.parents)


def test_kustomizations_reference_what_exists():
    for path in _kustomizations():
        doc = yaml.safe_load(path.read_text())
        for entry in doc.get("resources", []):
            target = (path.parent / entry).resolve()
            assert target.is_file() or (target / "kustomization.yaml").is_file(), f"{path.relative_to(ROOT)}: {entry}"
        if path.parent != DEPLOY / "quickstart":
            listed = {(path.parent / e).resolve() for e in doc.get("resources", [])}
            present = {p.resolve() for p in path.parent.glob("*.yaml") if p.name != "kustomization.yaml"}
            assert present <= listed, f"{path.relative_to(ROOT)} leaves out {sorted(str(p) for p in present - listed)}"
    quickstart = yaml.safe_load((DEPLOY / "quickstart" / "kustomization.yaml").read_text())
    assert {"../crds", "../controller", "../runtimes"} <= set(quickstart["resources"])
    # a namespace: here would be stamped on the ClusterServingRuntimes too
    assert "namespace" not in quickstart


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
def test_kubectl_kustomize_builds_the_quickstart():
    built = subprocess.run(["kubectl", "kustomize", str(DEPLOY / "quickstart")], capture_output=True, text=True, timeout=60)
    assert built.returncode == 0, built.stderr
    objs = [d for d in yaml.safe_load_all(built.stdout) if d]
    kinds = {(o["kind"], o["metadata"]["name"]) for o in objs}
    assert {("Namespace", NAMESPACE), ("Deployment", "mmesh-controller"), ("Deployment", "etcd"),
            ("Secret", "model-serving-etcd"), ("Secret", "storage-config"), ("ClusterServingRuntime", "mmesh-onnx"),
            ("CustomResourceDefinition", "inferenceservices.serving.kserve.io")} <= kinds
    for obj in objs:
        if obj["kind"] in CLUSTER_SCOPED:
            assert "namespace" not in obj["metadata"], f"{obj['kind']} {obj['metadata']['name']} got a namespace"
        else:
            assert obj["metadata"].get("namespace") == NAMESPACE, f"{obj['kind']} {obj['metadata']['name']}"
    for binding in by_kind(objs, "RoleBinding") + by_kind(objs, "ClusterRoleBinding"):
        assert all(s["namespace"] == NAMESPACE for s in binding["subjects"])
    # CRDs first: kubectl applies in this order
    assert [o["kind"] for o in objs].index("CustomResourceDefinition") < [o["kind"] for o in objs].index("ClusterServingRuntime")


# ================================================================ tests: Helm chart


def test_chart_metadata():
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["apiVersion"] == "v2" and chart["name"] == "mmesh" and chart["type"] == "application"
    assert re.fullmatch(r"\d+\.\d+\.\d+", chart["version"])
    assert chart["appVersion"] == VERSION
    values = chart_values()
    assert values["image"] == {"repository": "mmesh", "tag": VERSION, "pullPolicy": "IfNotPresent"}
    assert values["serviceName"] == "modelmesh-serving"


def test_chart_crds_are_deploy_crds_without_the_kustomization():
    crds = CHART / "crds"
    assert crds.is_symlink() and os.readlink(crds) == "../../crds"
    assert Path(os.path.realpath(crds)) == CRDS.resolve()
    ignored = [line.strip() for line in (CHART / ".helmignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")]
    assert "kustomization.yaml" in ignored
    for path in sorted(crds.iterdir()):
        if path.name in ignored:
            continue
        assert [o["kind"] for o in objects(path)] == ["CustomResourceDefinition"], path.name


def test_chart_templates_are_not_yaml_files():
    """Templates are .yml: other tests read every deploy/**/*.yaml as YAML, and
    a template is not YAML until rendered. Helm renders any extension."""
    for path in TEMPLATES.iterdir():
        assert path.suffix in (".yml", ".tpl", ".txt"), path.name


@pytest.mark.parametrize("variant", ["defaults", "all-on", "all-off"])
def test_chart_renders_into_valid_objects(variant):
    values = {"defaults": chart_values, "all-on": lambda: all_on(chart_values()), "all-off": lambda: all_off(chart_values())}[variant]()
    objs = render_chart(values)
    schemas = crd_schemas()
    for obj in objs:
        where = f"{obj['kind']} {obj['metadata']['name']}"
        if group_of(obj) in BUILTIN_GROUPS:
            assert round_trip(obj) == [], where
        elif group_of(obj) == "serving.kserve.io":
            validate_custom_object(obj, schemas)
        if obj["kind"] in CLUSTER_SCOPED:
            assert "namespace" not in obj["metadata"], where
        else:
            assert obj["metadata"]["namespace"] == "mmesh-test", where
    kinds = {(o["kind"], o["metadata"]["name"]) for o in objs}
    assert (("ClusterServingRuntime", "mmesh-onnx") in kinds) == values["runtimes"]["enabled"]
    assert (("Deployment", "etcd") in kinds) == values["etcd"]["quickstart"]
    assert (("Deployment", "minio") in kinds) == values["minio"]["quickstart"]
    assert (("ServiceMonitor", "mmesh") in kinds) == values["monitoring"]["serviceMonitor"]
    check_rbac(objs, "mmesh-controller-mmesh-test")
    check_controller(objs)


def _strip(obj: dict) -> dict:
    """An object without what legitimately differs between Helm and kustomize."""
    obj = copy.deepcopy(obj)
    obj["metadata"].pop("labels", None)
    obj["metadata"].pop("namespace", None)
    for subject in obj.get("subjects", []):
        subject.pop("namespace", None)
    spec = obj.get("spec", {})
    if "template" in spec:
        spec["template"]["metadata"].pop("labels", None)
        spec["selector"]["matchLabels"].pop("app.kubernetes.io/instance", None)
    if obj["kind"] == "Service":
        spec.get("selector", {}).pop("app.kubernetes.io/instance", None)
    return obj


def test_chart_and_kustomize_manifests_agree():
    """The chart's objects are deploy/'s, so the two install routes cannot drift."""
    kustomize = {(o["kind"], o["metadata"]["name"]): o
                 for folder in ("controller", "runtimes", "quickstart") for o in dir_objects(folder)}
    helm = {(o["kind"], o["metadata"]["name"]): o for o in render_chart(all_on(chart_values()))}
    for kind, name in [("Role", "mmesh-controller"), ("ClusterRole", "mmesh-controller")]:
        ours = kustomize[(kind, name)]["rules"]
        theirs = helm[(kind, "mmesh-controller-mmesh-test" if kind == "ClusterRole" else name)]["rules"]
        assert ours == theirs, kind
    for key in [("Deployment", "mmesh-controller"), ("Service", "mmesh-controller-metrics"), ("Deployment", "etcd"),
                ("Service", "etcd"), ("Deployment", "minio"), ("Service", "minio"), ("ServiceAccount", "mmesh"),
                ("ServiceAccount", "mmesh-controller"), ("ClusterServingRuntime", "mmesh-onnx"),
                ("ClusterServingRuntime", "mmesh-torchscript"), ("ClusterServingRuntime", "mlserver-1.x")]:
        assert _strip(helm[key]) == _strip(kustomize[key]), key
    for name in ("model-serving-etcd", "storage-config"):
        ours, theirs = (d[("Secret", name)]["stringData"] for d in (kustomize, helm))
        assert {k: json.loads(v) for k, v in ours.items()} == {k: json.loads(v) for k, v in theirs.items()}, name
    monitor = yaml.safe_load((DEPLOY / "monitoring" / "servicemonitor.yaml").read_text())
    assert helm[("ServiceMonitor", "mmesh")]["spec"] == monitor["spec"]


def test_the_renderer_refuses_an_unknown_value():
    values = chart_values()
    del values["serviceName"]
    with pytest.raises(AssertionError, match="serviceName"):
        render_chart(values)


# ================================================================ tests: image


def _images(node: Any) -> Iterator[str]:
    """Every container image an object names (and the controller's MMESH_IMAGE)."""
    if isinstance(node, dict):
        if isinstance(node.get("image"), str):
            yield node["image"]
        if node.get("name") == "MMESH_IMAGE":
            yield node["value"]
        for value in node.values():
            yield from _images(value)
    elif isinstance(node, list):
        for value in node:
            yield from _images(value)


def test_images_follow_the_project_version():
    images = {image for _, obj in all_objects() for image in _images(obj)}
    ours = {image for image in images if image.split(":")[0] == "mmesh"}
    assert ours == {f"mmesh:{VERSION}"}
    assert all(":" in image and not image.endswith(":latest") or "minio" in image for image in images), images


def test_dockerfile_builds_one_image_for_every_command():
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^ARG PYTHON_IMAGE=python:3\.11-slim$", dockerfile, re.M)
    extras = re.search(r"^ARG EXTRAS=(\S+)$", dockerfile, re.M).group(1).split(",")
    assert "k8s" in extras and set(extras) <= set(PYPROJECT["project"]["optional-dependencies"])
    assert '".[${EXTRAS}]"' in dockerfile
    user = re.findall(r"^USER (\S+)$", dockerfile, re.M)
    assert user and user[-1].split(":")[0].isdigit() and user[-1].split(":")[0] != "0", "a numeric non-root user"
    assert re.search(r"^ENTRYPOINT \[\]$", dockerfile, re.M) and re.search(r'^CMD \["mmesh", "--help"\]$', dockerfile, re.M)
    assert "mmesh" in PYPROJECT["project"]["scripts"]


def test_dockerignore_lets_in_every_installed_package_and_nothing_local():
    lines = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    assert lines[0] == "*", "an allow-list"
    allowed = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    packages = {p.rstrip("*") for p in PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"]}
    assert packages | {"pyproject.toml", PYPROJECT["project"]["readme"]} <= allowed
    assert not {".venv", ".venv-mlserver", ".mmesh", "tests", ".git"} & allowed
