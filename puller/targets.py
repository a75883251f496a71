"""From a parsed ModelSource plus the storage config to what a backend fetches.

This is the step that reads the storage config (credentials, a bucket or URL
from a key, `default` keys); parsing stays pure in source.py and fetching
stays in backends/. Each target says everything its backend needs and
nothing else.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from .errors import PullError
from .safe_paths import safe_join, safe_name
from .source import BUCKET_RE, ModelSource, parse_http_url
from .storage_config import StorageConfig, StorageEntry, redact_url

_EXTRAS = {"gcs": ("gcs", "google-cloud-storage", "google.cloud.storage"), "azure": ("azure", "azure-storage-blob", "azure.storage.blob")}


@dataclass(frozen=True)
class LocalTarget:
    """A file or directory used in place (local path, file://, PVC mount)."""

    path: Path

    def describe(self) -> str:
        return str(self.path)


@dataclass(frozen=True, repr=False)
class S3Target:
    bucket: str
    key: str  # object key or prefix without a trailing slash; "" = whole bucket
    is_dir: bool  # the path ended in "/": only a prefix matches
    entry: StorageEntry | None  # None: boto3's default credential chain and endpoint

    def describe(self) -> str:
        return f"s3://{self.bucket}/{self.key}{'/' if self.is_dir else ''}"

    def __repr__(self) -> str:
        return f"S3Target({self.describe()!r}, entry={self.entry!r})"


@dataclass(frozen=True, repr=False)
class HttpTarget:
    url: str
    entry: StorageEntry | None  # None: a public URL, no headers, system CAs

    def describe(self) -> str:
        return redact_url(self.url)

    def __repr__(self) -> str:
        return f"HttpTarget({self.describe()!r}, entry={self.entry!r})"


Target = LocalTarget | S3Target | HttpTarget


def unsupported_type(stype: str) -> PullError:
    extra, dist, module = _EXTRAS[stype]
    try:
        installed = importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        installed = False
    if installed:
        return PullError("unsupported", f"storage type {stype} is not supported yet (only s3, http(s), pvc and local files are)")
    return PullError("unsupported", f"storage type {stype} needs the `{extra}` extra ({dist}), and is not supported yet by this build")


def _require(entry: StorageEntry | None, field: str, why: str) -> str:
    value = entry.str_field(field) if entry is not None else None
    if not value:
        raise PullError("invalid", why)
    return value


def resolve_target(source: ModelSource, storage: StorageConfig, pvc_mounts_dir: Path) -> Target:
    """The concrete location of `source`; PullError(invalid/unsupported) when it cannot have one."""
    if source.is_local:
        return LocalTarget(Path(source.path))
    if source.type == "pvc" and source.pvc_name:  # pvc://name/path needs no storage config
        return LocalTarget(safe_join(pvc_mounts_dir, source.pvc_name, source.path, what="pvc path"))

    uri_type = source.type if source.from_uri else None
    entry = storage.resolve(source.storage_key, source.storage_params, type_hint=uri_type)
    stype = entry.type if entry is not None else source.type
    # a plain path is relative to the storage (a leading "/" included, as in ModelMesh)
    rel = source.path.lstrip("/") if not source.from_uri else source.path
    if stype is None:
        raise PullError(
            "invalid",
            f"model path {source.model_path!r} is relative but no storage is configured for it "
            "(give a storage key, storage_params.type, or a full URI)",
        )
    if stype in _EXTRAS:
        raise unsupported_type(stype)
    if stype == "s3":
        bucket = source.bucket or _require(
            entry, "bucket", f"no bucket for model path {source.model_path!r}: use s3://bucket/path or set 'bucket' in the storage config"
        )
        if not BUCKET_RE.match(bucket) or ".." in bucket:
            raise PullError("invalid", f"bucket name {bucket!r} is not valid")
        return S3Target(bucket=bucket, key=rel, is_dir=source.is_dir, entry=entry)
    if stype == "http":
        if source.url:
            return HttpTarget(url=source.url, entry=entry)
        base = _require(entry, "url", f"storage {entry.key if entry else ''!r} of type http has no 'url'")
        if source.is_dir:
            raise PullError("invalid", f"model path {source.model_path!r} ends in '/': an http(s) model is one file")
        url = parse_http_url(base.rstrip("/") + "/" + quote(rel))
        return HttpTarget(url=url, entry=entry)
    if stype == "pvc":
        name = _require(entry, "name", "storage of type pvc has no claim 'name'")
        return LocalTarget(safe_join(pvc_mounts_dir, safe_name(name, what="pvc claim name"), rel, what="pvc path"))
    if stype == "file":
        if not source.path.startswith("/"):
            raise PullError("invalid", f"storage type file needs an absolute model path, not {source.model_path!r}")
        return LocalTarget(Path(source.path))
    raise PullError("unsupported", f"storage type {stype!r} is not supported")  # pragma: no cover - KNOWN_TYPES is closed
