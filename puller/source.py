"""Parsing a registered model's `modelPath` + `modelKey` (pure: no I/O, no secrets read).

The mesh calls `parse_model_source` at registration so a malformed or unsafe
path/key is refused there (INVALID_ARGUMENT) instead of failing every load
later. What needs the storage config (credentials, a bucket or URL from a
storage key, the default key) is left to `targets.resolve_target` at pull time.

Accepted model paths:
  s3://bucket/key-or-prefix     gs://bucket/path (recognised; served only with the gcs extra)
  http(s)://host/path/file      pvc://claim-name/path
  file:///absolute/path         /absolute/path (used in place when there is no storage key/type)
  relative/path                 inside the storage named by the model key (s3 bucket, http url, pvc)
Accepted model keys: "", a storage key name, or ModelMesh's JSON
`{"storage_key": ..., "storage_params": {...}, ...}` (other fields ignored).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit

from .errors import PullError
from .safe_paths import safe_name, split_relative
from .storage_config import KNOWN_TYPES, PUBLIC_FIELDS, redact_url, validate_key_name

_SCHEME_RE = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
_SCHEME_TYPES = {"s3": "s3", "gs": "gcs", "http": "http", "https": "http", "pvc": "pvc", "file": "file"}
BUCKET_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,254}$")
_PVC_RE = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")

DEFAULT_NAME = "model"


@dataclass(frozen=True, repr=False)
class ModelSource:
    """A parsed model location.

    type: the storage type known without the storage config (from the URI
      scheme or `storage_params.type`); None means the storage key decides.
    path: the object key/prefix (s3, gcs), the path inside the claim (pvc),
      the absolute local path (file, plain absolute), or the path inside the
      keyed storage (plain relative); "" is the whole bucket/claim.
    is_dir: the path ended in "/" (a prefix, never a single object).
    """

    model_path: str
    type: str | None
    path: str
    bucket: str | None = None
    pvc_name: str | None = None
    url: str | None = None
    storage_key: str | None = None
    storage_params: Mapping[str, str] = field(default_factory=dict, hash=False)
    is_dir: bool = False
    from_uri: bool = False

    @property
    def is_local(self) -> bool:
        """Used in place, without storage config: file:// or a plain absolute
        path with neither a storage key nor a storage type."""
        if not self.path.startswith("/"):
            return False
        return self.type == "file" or (not self.from_uri and self.storage_key is None and self.type is None)

    def __repr__(self) -> str:
        params = {k: (v if k.split(".")[0] in PUBLIC_FIELDS else "***") for k, v in self.storage_params.items()}
        url = redact_url(self.url) if self.url else None
        return (
            f"ModelSource(type={self.type!r}, path={self.path!r}, bucket={self.bucket!r}, pvc_name={self.pvc_name!r}, "
            f"url={url!r}, storage_key={self.storage_key!r}, storage_params={params!r}, is_dir={self.is_dir})"
        )

    __str__ = __repr__


def _relative(path: str, what: str) -> tuple[str, bool]:
    """A validated relative path without its trailing slash, and whether it had one."""
    is_dir = path.endswith("/")
    stripped = path[:-1] if is_dir else path
    split_relative(stripped, what=what)
    return stripped, is_dir


def _absolute(path: str, what: str) -> str:
    if path == "/" or not path.startswith("/"):
        raise PullError("invalid", f"{what} {path!r} must be an absolute path below /")
    body = path[1:].rstrip("/")
    split_relative(body, what=what)
    return "/" + body


def http_file_name(url_path: str) -> str:
    """The local file name of an http model: the URL path's (decoded) basename."""
    if url_path in ("", "/"):
        return DEFAULT_NAME
    return safe_name(unquote(url_path.rsplit("/", 1)[-1]), what="file name of the URL")


def parse_http_url(url: str) -> str:
    """A validated http(s) URL naming one file (query kept, fragment dropped)."""
    try:
        parts = urlsplit(url)
        hostname = parts.hostname
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError as exc:
        raise PullError("invalid", f"model URL {redact_url(url)!r} is malformed ({exc})") from None
    if not hostname:
        raise PullError("invalid", f"model URL {redact_url(url)!r} has no host")
    if parts.username is not None or parts.password is not None:
        raise PullError("invalid", "model URLs must not carry credentials; put them in the storage config (headers)")
    path = parts.path
    if path not in ("", "/"):
        if path.endswith("/"):
            raise PullError(
                "invalid",
                f"model URL {redact_url(url)!r} ends in '/': an http(s) model is one file (directories are not supported)",
            )
        segments = path[1:].split("/")
        for seg in segments:
            decoded = unquote(seg)
            if seg == "" or decoded in (".", "..") or "\x00" in decoded:
                raise PullError("invalid", f"model URL {redact_url(url)!r} has an unsafe path segment {seg!r}")
        http_file_name(path)
    return url.split("#", 1)[0]


def _scalar_params(raw: Any, prefix: str = "") -> dict[str, str]:
    """storage_params as ModelMesh's map[string]string (nested objects become dotted keys)."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise PullError("invalid", "modelKey storage_params must be a JSON object")
    out: dict[str, str] = {}
    for k, v in raw.items():
        name = f"{prefix}{k}"
        if not isinstance(k, str) or not k or k.startswith(".") or k.endswith("."):
            raise PullError("invalid", f"modelKey storage_params key {name!r} is malformed")
        if isinstance(v, dict):
            out.update(_scalar_params(v, prefix=f"{name}."))
        elif isinstance(v, bool):
            out[name] = "true" if v else "false"
        elif isinstance(v, (str, int, float)):
            out[name] = str(v)
        elif v is None:
            continue
        else:
            raise PullError("invalid", f"modelKey storage_params value of {name!r} must be a string")
    return out


def parse_model_key(model_key: str) -> tuple[str | None, dict[str, str]]:
    """(storage_key or None, storage_params) from a modelKey."""
    if model_key is None or not model_key.strip():
        return None, {}
    text = model_key.strip()
    if not text.startswith("{"):
        return validate_key_name(text), {}
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise PullError("invalid", f"modelKey is not valid JSON ({exc.msg} at column {exc.colno})") from None
    if not isinstance(obj, dict):
        raise PullError("invalid", "modelKey JSON must be an object")
    key = obj.get("storage_key")
    if key is not None and not isinstance(key, str):
        raise PullError("invalid", "modelKey storage_key must be a string")
    params = _scalar_params(obj.get("storage_params"))
    legacy_bucket = obj.get("bucket")  # old ModelMesh keys carried the bucket at the top level
    if isinstance(legacy_bucket, str) and legacy_bucket and "bucket" not in params:
        params["bucket"] = legacy_bucket
    if "type" in params and params["type"] not in KNOWN_TYPES:
        raise PullError(
            "invalid", f"modelKey storage_params type {params['type']!r} is unknown (known: {', '.join(sorted(KNOWN_TYPES))})"
        )
    return (validate_key_name(key) if key else None), params


def parse_model_source(model_path: str, model_key: str = "") -> ModelSource:
    """Validate and split a modelPath/modelKey pair; PullError(reason="invalid") if malformed or unsafe."""
    if not isinstance(model_path, str) or not model_path.strip():
        raise PullError("invalid", "model path is empty")
    if not isinstance(model_key, str) and model_key is not None:
        raise PullError("invalid", "model key must be a string")
    path = model_path.strip()
    if any(ord(ch) < 0x20 or ch == "\x7f" for ch in path):
        raise PullError("invalid", "model path contains control characters")
    storage_key, params = parse_model_key(model_key or "")
    param_type = params.get("type")
    common: dict[str, Any] = {
        "model_path": model_path,
        "storage_key": storage_key,
        "storage_params": params,
    }

    m = _SCHEME_RE.match(path)
    if m is None:
        if path.startswith("/"):
            return ModelSource(type=param_type, path=_absolute(path, "model path"), is_dir=path.endswith("/"), **common)
        rel, is_dir = _relative(path, "model path")
        if rel == "":
            raise PullError("invalid", "model path is empty")
        return ModelSource(type=param_type, path=rel, is_dir=is_dir, **common)

    scheme = m.group(1).lower()
    stype = _SCHEME_TYPES.get(scheme)
    if stype is None:
        raise PullError(
            "invalid", f"model path scheme {scheme!r} is not supported (use s3://, http(s)://, pvc://, file://, gs:// or a path)"
        )
    if param_type and param_type != stype:
        raise PullError("invalid", f"storage_params type {param_type!r} conflicts with the {scheme}:// model path")
    rest = path[m.end():]
    if stype == "http":
        return ModelSource(type="http", path="", url=parse_http_url(path), from_uri=True, **common)
    if stype == "file":
        host, slash, fpath = rest.partition("/")
        if host not in ("", "localhost") or not slash:
            raise PullError("invalid", f"file:// model path {model_path!r} must be file:///absolute/path")
        return ModelSource(type="file", path=_absolute(unquote("/" + fpath), "model path"), from_uri=True, **common)
    # s3, gs, pvc: <container>/<relative path>; not URL-parsed, since '?' and '#' are legal in object keys
    container, _, rel_path = rest.partition("/")
    rel, is_dir = _relative(rel_path, "model path")
    if stype == "pvc":
        if not _PVC_RE.match(container):
            raise PullError("invalid", f"pvc:// model path {model_path!r} does not start with a valid claim name")
        return ModelSource(type="pvc", path=rel, pvc_name=container, is_dir=is_dir, from_uri=True, **common)
    if not BUCKET_RE.match(container) or ".." in container:
        raise PullError("invalid", f"{scheme}:// model path {model_path!r} does not start with a valid bucket name")
    return ModelSource(type=stype, path=rel, bucket=container, is_dir=is_dir, from_uri=True, **common)
