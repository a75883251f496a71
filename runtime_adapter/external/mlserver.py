"""MLServer behind the SPI (model types sklearn, xgboost, lightgbm, mlflow, and
`mlserver` for a directory with its own `model-settings.json`).

MLServer runs with `model_repository_root` = `<models_dir>/_mlserver_models`
and `load_models_at_startup: false`; for each model we write
`_mlserver_models/<safe id>/model-settings.json` naming the model by its mesh
id, then load it with RepositoryModelLoad(model_name=<id>) — MLServer finds
it by scanning the root for that name. Paths in the settings are absolute, as
the file no longer sits next to the model; they must be valid in MLServer's
container too, which is why both mount the models volume at the same path.
"""

from __future__ import annotations

import json
import os
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runtime_adapter.errors import AdapterError
from runtime_adapter.external.base import ExternalServer
from runtime_adapter.schema import read_schema
from runtime_adapter.runtimes.base import resolve_model_file

SETTINGS_FILE = "model-settings.json"
NATIVE_TYPE = "mlserver"


@dataclass(frozen=True)
class Flavour:
    """How MLServer serves one model type: its runtime class and model files
    (no suffixes: the model is a directory, e.g. an MLflow model)."""

    implementation: str
    preferred: tuple[str, ...] = ()
    suffixes: tuple[str, ...] = ()


FLAVOURS: dict[str, Flavour] = {
    "sklearn": Flavour("mlserver_sklearn.SKLearnModel", ("model.joblib", "model.pkl", "model.pickle"),
                       (".joblib", ".pkl", ".pickle")),
    "xgboost": Flavour("mlserver_xgboost.XGBoostModel", ("model.bst", "model.json", "model.ubj"),
                       (".bst", ".json", ".ubj")),
    "lightgbm": Flavour("mlserver_lightgbm.LightGBMModel", ("model.bst", "model.txt"), (".bst", ".txt")),
    "mlflow": Flavour("mlserver_mlflow.MLflowRuntime"),
}


def _model_uri(flavour: Flavour, source: Path) -> Path:
    if not flavour.suffixes:
        if not source.is_dir():
            raise AdapterError.failed_precondition(f"model path {str(source)!r} must be a directory")
        return source
    if source.is_dir():
        for name in flavour.preferred:
            if (source / name).is_file():
                return source / name
    return resolve_model_file(source, flavour.suffixes, flavour.preferred[0])


def generated_settings(model_id: str, model_type: str, source: Path) -> dict[str, Any]:
    """model-settings.json for a bare model file (or MLflow directory)."""
    flavour = FLAVOURS.get(model_type)
    if flavour is None:
        raise AdapterError.failed_precondition(
            f"model type {model_type!r} needs a {SETTINGS_FILE} in {str(source)!r}"
        )
    return {
        "name": model_id,
        "implementation": flavour.implementation,
        "parameters": {"uri": str(_model_uri(flavour, source))},
    }


def native_settings(path: Path, model_id: str) -> dict[str, Any]:
    """The user's model-settings.json, renamed to the mesh id, with a relative
    (or missing) `parameters.uri` made absolute against its own directory."""
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise AdapterError.failed_precondition(f"{str(path)!r} is not readable JSON: {exc}") from exc
    parameters = doc.setdefault("parameters", {}) if isinstance(doc, dict) else None
    if not isinstance(parameters, dict):
        raise AdapterError.failed_precondition(f"{str(path)!r} must be an object with an object 'parameters'")
    doc["name"] = model_id
    uri = parameters.get("uri")
    if not uri:
        parameters["uri"] = str(path.parent)
    else:
        parsed = urllib.parse.urlparse(str(uri))
        if parsed.scheme in ("", "file") and not os.path.isabs(parsed.path):
            parameters["uri"] = os.path.normpath(path.parent / parsed.path)
    return doc


class MLServer(ExternalServer):
    kind = "mlserver"
    layout_dir_name = "_mlserver_models"
    model_types = (*FLAVOURS, NATIVE_TYPE)
    # `mlserver start <dir>` reads the server's own settings from <dir>
    keep_on_clear = frozenset({"settings.json"})

    def write_layout(self, model_id: str, model_type: str, source: Path, target: Path) -> str:
        native = source / SETTINGS_FILE
        if native.is_file():
            settings = native_settings(native, model_id)
        else:
            settings = generated_settings(model_id, model_type, source)
        schema = read_schema(source)
        if schema is not None and not settings.get("inputs") and not settings.get("outputs"):
            settings.update(schema.as_metadata())
        (target / SETTINGS_FILE).write_text(json.dumps(settings, indent=2))
        return model_id
