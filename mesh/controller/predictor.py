"""An InferenceService in ModelMesh mode, read into what the mesh registers.

Field mapping follows ModelMesh's controller (modelmesh-serving
`inferenceservice_registry.go`), so users' YAML keeps its meaning:
`predictor.model.{modelFormat,runtime,storageUri,storage,protocolVersion}`
or the legacy `predictor.<framework>.storageUri`; `storageUri` xor
`storage.path`; the storage key from `storage.key`, else the annotation
`serving.kserve.io/secretKey`; the runtime from `model.runtime`, else (legacy
form) the annotation `serving.kserve.io/servingRuntime`.

Pure: no I/O. `InvalidSpec` carries the message written to the status."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

MODE_ANNOTATION = "serving.kserve.io/deploymentMode"
MODELMESH_MODE = "ModelMesh"
RUNTIME_ANNOTATION = "serving.kserve.io/servingRuntime"
SECRET_KEY_ANNOTATION = "serving.kserve.io/secretKey"
SCHEMA_PATH_ANNOTATION = "serving.kserve.io/schemaPath"
# The vModel owner, as ModelMesh's controller names InferenceService-made vModels.
OWNER = "isvc"
LEGACY_FRAMEWORKS = (
    "sklearn", "xgboost", "tensorflow", "pytorch", "onnx", "triton", "pmml", "lightgbm", "paddle", "huggingface",
)
HASH_CHARS = 10
AZURE_BLOB_HOST = ".blob.core.windows.net"


class InvalidSpec(ValueError):
    """The InferenceService cannot be served as written (status: InvalidSpec)."""


@dataclass(frozen=True)
class Predictor:
    """What one InferenceService asks the mesh for."""

    name: str
    namespace: str
    model_format: str  # lower-case, e.g. "onnx", "sklearn"
    format_version: str  # "" = any
    runtime: str  # the named runtime, "" = choose one
    protocol: str  # "" = any
    storage_uri: str  # exactly one of storage_uri / storage_path is set
    storage_path: str
    storage_key: str
    storage_params: Mapping[str, str] = field(default_factory=dict)
    schema_path: str = ""

    def spec_hash(self, runtime: str) -> str:
        """First 10 hex digits of the SHA-1 of everything that defines the
        model, including the runtime chosen for it: any change makes a new
        concrete model id, which is what turns an edit into a vModel transition."""
        doc = {
            "format": self.model_format, "version": self.format_version, "runtime": runtime,
            "protocol": self.protocol, "uri": self.storage_uri, "path": self.storage_path,
            "key": self.storage_key, "params": dict(sorted(self.storage_params.items())), "schema": self.schema_path,
        }
        return hashlib.sha1(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:HASH_CHARS]

    def concrete_model_id(self, runtime: str) -> str:
        """`<name>__isvc-<hash>`, ModelMesh's form (its status and tools parse it)."""
        return f"{self.name}__{OWNER}-{self.spec_hash(runtime)}"

    def model_type(self, runtime: str) -> str:
        """The mesh model type: the format, pinned to the chosen runtime's pods."""
        return f"{self.model_format}|rt:{runtime}"

    @property
    def model_path(self) -> str:
        """A storageUri goes to the mesh whole (its puller parses s3://, gs://,
        pvc://, http(s)://); a storage.path is relative to the storage key."""
        return self.storage_uri or self.storage_path

    @property
    def model_key(self) -> str:
        """A bare key name, or ModelMesh's JSON form (`storage_key`,
        `storage_params`, `schema_path`) when there is more to say."""
        if not self.storage_params and not self.schema_path:
            return self.storage_key
        doc: dict[str, Any] = {}
        if self.storage_key:
            doc["storage_key"] = self.storage_key
        if self.storage_params:
            doc["storage_params"] = dict(sorted(self.storage_params.items()))
        if self.schema_path:
            doc["schema_path"] = self.schema_path
        return json.dumps(doc, sort_keys=True, separators=(",", ":"))


def annotations(obj: Mapping[str, Any]) -> Mapping[str, str]:
    return obj.get("metadata", {}).get("annotations") or {}


def is_modelmesh(isvc: Mapping[str, Any]) -> bool:
    """Only InferenceServices annotated for ModelMesh are ours (KServe's own
    controller skips exactly these)."""
    return annotations(isvc).get(MODE_ANNOTATION) == MODELMESH_MODE


def _text(section: Mapping[str, Any], key: str, where: str) -> str:
    value = section.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise InvalidSpec(f"{where}.{key} must be a string, not {type(value).__name__}")
    return value.strip()


def _model_section(predictor: Mapping[str, Any]) -> tuple[Mapping[str, Any], str, bool]:
    """(the section holding storage fields, its format name, whether legacy)."""
    model = predictor.get("model")
    legacy = [name for name in LEGACY_FRAMEWORKS if predictor.get(name) is not None]
    if model is not None and legacy:
        raise InvalidSpec(f"spec.predictor.model cannot be combined with spec.predictor.{legacy[0]}")
    if len(legacy) > 1:
        raise InvalidSpec(f"spec.predictor sets more than one framework: {', '.join(legacy)}")
    if model is not None:
        if not isinstance(model, Mapping):
            raise InvalidSpec("spec.predictor.model must be an object")
        model_format = model.get("modelFormat") or {}
        name = _text(model_format, "name", "spec.predictor.model.modelFormat") if isinstance(model_format, Mapping) else ""
        if not name:
            raise InvalidSpec("spec.predictor.model.modelFormat.name is required")
        return model, name, False
    if legacy:
        section = predictor[legacy[0]]
        if not isinstance(section, Mapping):
            raise InvalidSpec(f"spec.predictor.{legacy[0]} must be an object")
        return section, legacy[0], True
    raise InvalidSpec("spec.predictor has no model: set predictor.model (modelFormat, storageUri or storage)")


def _storage_params(storage: Mapping[str, Any]) -> dict[str, str]:
    params = storage.get("parameters") or {}
    if not isinstance(params, Mapping) or not all(isinstance(v, str) for v in params.values()):
        raise InvalidSpec("spec.predictor.model.storage.parameters must map names to strings")
    return {str(k): v for k, v in params.items()}


def predictor_from_isvc(isvc: Mapping[str, Any]) -> Predictor:
    """Read an InferenceService; raises InvalidSpec with the reason."""
    metadata = isvc.get("metadata") or {}
    predictor = (isvc.get("spec") or {}).get("predictor")
    if not isinstance(predictor, Mapping):
        raise InvalidSpec("spec.predictor is required")
    section, model_format, legacy = _model_section(predictor)
    where = "spec.predictor." + ("model" if not legacy else model_format)
    storage = section.get("storage") or {}
    if not isinstance(storage, Mapping):
        raise InvalidSpec(f"{where}.storage must be an object")
    uri = _text(section, "storageUri", where)
    path = _text(storage, "path", f"{where}.storage")
    if bool(uri) == bool(path):
        raise InvalidSpec(f"{where} must have exactly one of storageUri and storage.path")
    params = _storage_params(storage)
    if uri:
        uri, path, params = _split_azure_blob(uri, path, params)
    notes = annotations(isvc)
    runtime = _text(section, "runtime", where) or (notes.get(RUNTIME_ANNOTATION, "").strip() if legacy else "")
    return Predictor(
        name=str(metadata.get("name", "")),
        namespace=str(metadata.get("namespace", "")),
        model_format=model_format.lower(),
        format_version=_text(section.get("modelFormat") or {}, "version", f"{where}.modelFormat") if not legacy else "",
        runtime=runtime,
        protocol="" if _text(section, "protocolVersion", where) in ("", "unknown") else _text(section, "protocolVersion", where),
        storage_uri=uri,
        storage_path=path,
        storage_key=_text(storage, "key", f"{where}.storage") or notes.get(SECRET_KEY_ANNOTATION, "").strip(),
        storage_params=params,
        schema_path=_text(storage, "schemaPath", f"{where}.storage") or notes.get(SCHEMA_PATH_ANNOTATION, "").strip(),
    )


def _split_azure_blob(uri: str, path: str, params: dict[str, str]) -> tuple[str, str, dict[str, str]]:
    """`https://<account>.blob.core.windows.net/<container>/<path>` is Azure
    blob storage, not a plain HTTP file (ModelMesh's reading): it becomes
    storage parameters (which override `storage.parameters`) and a path, so
    the puller fetches it as Azure (or says which extra it needs)."""
    parts = urlsplit(uri)
    host = parts.hostname or ""
    if parts.scheme not in ("http", "https") or not host.endswith(AZURE_BLOB_HOST):
        return uri, path, params
    container, _, rest = parts.path.lstrip("/").partition("/")
    if not container:
        raise InvalidSpec(f"storageUri {uri!r} names no blob container")
    azure = {"type": "azure", "account_name": host.split(".", 1)[0], "container": container}
    return "", rest, {**params, **azure}


def vmodel_of(model_id: str) -> str | None:
    """The InferenceService a concrete model id belongs to (`<name>__isvc-<hash>`)."""
    name, sep, rest = model_id.rpartition(f"__{OWNER}-")
    if not sep or not name or len(rest) != HASH_CHARS:
        return None
    return name
