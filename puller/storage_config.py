"""ModelMesh's `storage-config` secret: reading it, resolving a model's key, and
keeping the secrets in it out of logs.

The secret is mounted as a directory with one file per storage key, each
holding a JSON object such as
`{"type": "s3", "access_key_id": ..., "secret_access_key": ..., "endpoint_url": ..., "region": ..., "bucket": ...}`.
Kubernetes updates a mounted secret in place (an atomic symlink swap), so
files are re-read when their stat changes; an unchanged file costs one
`os.stat` per resolve.

Key resolution follows ModelMesh's puller: an explicit `storage_key` must
exist; without one, `default_<type>` (when the type is known from the URI or
`storage_params`) and then `default` are tried, and a missing default is not
an error. `storage_params` are applied on top (string values; `a.b` dotted
keys set nested fields such as `headers.Authorization`). The type must be
known in the end.

Secrets never leave this module in readable form: `StorageEntry.__repr__`
shows only the public fields, error messages name keys and fields but never
values, and `StorageEntry.scrub` removes secret values from any text (used on
messages that come back from storage servers).
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import threading
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from .errors import PullError

log = logging.getLogger(__name__)

#: storage types this package knows; gcs and azure are recognised but not served
KNOWN_TYPES = frozenset({"s3", "http", "pvc", "file", "gcs", "azure"})

#: fields whose values are shown by repr (everything else is redacted)
PUBLIC_FIELDS = frozenset({"type", "endpoint_url", "region", "bucket", "url", "name", "account_name", "container"})

_KEY_RE = re.compile(r"^[A-Za-z0-9_][-._A-Za-z0-9]{0,252}$")


def validate_key_name(key: str) -> str:
    """A storage key usable as a file name in the mounted secret, or PullError(invalid).

    Kubernetes secret keys are `[-._a-zA-Z0-9]+`; names starting with a dot
    are refused too (the mount's own `..data` links live there), which also
    rules out `..` and every path separator.
    """
    if not isinstance(key, str) or not _KEY_RE.match(key):
        raise PullError("invalid", f"storage key {key!r} is not a valid key name (letters, digits, '-', '_', '.'; not starting with '.')")
    return key


def redact_url(url: str) -> str:
    """A URL fit for logs: user info and query string (presigned signatures) removed."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        if parts.port:
            host = f"{host}:{parts.port}"
    except ValueError:
        return "<unparseable url>"
    query = "<redacted>" if parts.query else ""
    return urlunsplit((parts.scheme, host, parts.path, query, ""))


def _normalize_headers(value: Any, key: str | None) -> dict[str, str]:
    """ModelMesh accepts headers as a dict, a "K: V" string, or a list of such strings."""
    where = f"storage config entry {key!r}" if key else "storage_params"
    if isinstance(value, Mapping):
        return {str(k): str(v) for k, v in value.items()}
    if isinstance(value, str):
        lines = [ln for ln in value.splitlines() if ln.strip()]
    elif isinstance(value, list) and all(isinstance(v, str) for v in value):
        lines = list(value)
    else:
        raise PullError("invalid", f"'headers' of {where} must be an object, a 'Name: value' string or a list of them")
    headers: dict[str, str] = {}
    for i, line in enumerate(lines):
        name, sep, val = line.partition(":")
        if not sep or not name.strip():
            raise PullError("invalid", f"header #{i + 1} of {where} is not of the form 'Name: value'")
        headers[name.strip()] = val.strip()
    return headers


class StorageEntry:
    """One resolved storage: its type and provider fields (secrets included).

    Immutable. `repr`/`str` redact everything but the public fields.
    """

    __slots__ = ("key", "type", "_fields")

    def __init__(self, key: str | None, type: str, fields: Mapping[str, Any]) -> None:
        self.key = key
        self.type = type
        self._fields: Mapping[str, Any] = MappingProxyType(dict(fields))

    def get(self, name: str, default: Any = None) -> Any:
        return self._fields.get(name, default)

    def str_field(self, name: str) -> str | None:
        """A field that must be a string when present (PullError(invalid) otherwise)."""
        value = self._fields.get(name)
        if value is None or value == "":
            return None
        if not isinstance(value, str):
            raise PullError("invalid", f"field {name!r} of storage {self._where()} must be a string")
        return value

    @property
    def headers(self) -> Mapping[str, str]:
        return self._fields.get("headers") or {}

    def fingerprint(self) -> str:
        """A stable hash of type and every field (credentials included): two
        entries with the same fingerprint can share clients and downloads."""
        blob = json.dumps({"type": self.type, "fields": dict(self._fields)}, sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:32]

    def secret_values(self) -> list[str]:
        """Every value that must not appear in logs or messages."""
        secrets: list[str] = []
        for name, value in self._fields.items():
            if name == "headers":
                secrets.extend(v for v in self.headers.values() if v)
            elif name == "url" and isinstance(value, str):
                parts = urlsplit(value)
                secrets.extend(s for s in (parts.password, parts.username, parts.query) if s)
            elif name not in PUBLIC_FIELDS and isinstance(value, str) and value:
                secrets.append(value)
        # longest first so a secret containing another is removed whole
        return sorted({s for s in secrets if len(s) >= 3}, key=len, reverse=True)

    def scrub(self, text: str) -> str:
        """`text` with every secret value replaced by `***` (for server messages)."""
        for secret in self.secret_values():
            text = text.replace(secret, "***")
        return text

    def _where(self) -> str:
        return repr(self.key) if self.key else "(from storage_params)"

    def __repr__(self) -> str:
        shown = []
        for name in sorted(self._fields):
            value = self._fields[name]
            if name == "url" and isinstance(value, str):
                shown.append(f"url={redact_url(value)!r}")
            elif name == "headers":
                shown.append(f"headers={{{', '.join(f'{k!r}: ***' for k in sorted(self.headers))}}}")
            elif name == "certificate" and isinstance(value, str):
                shown.append(f"certificate=<PEM, {len(value)} chars>")
            elif name in PUBLIC_FIELDS:
                shown.append(f"{name}={value!r}")
            else:
                shown.append(f"{name}=***")
        return f"StorageEntry(key={self.key!r}, type={self.type!r}, {', '.join(shown)})"

    __str__ = __repr__

    def __reduce__(self) -> Any:  # pragma: no cover - keep secrets out of pickles by accident
        raise TypeError("StorageEntry holds secrets and is not picklable")


def _apply_params(merged: dict[str, Any], params: Mapping[str, str]) -> None:
    """storage_params over the entry: `name` sets a field, `a.b` a nested one."""
    for name, value in params.items():
        parent, dot, child = name.partition(".")
        if not dot:
            merged[name] = value
            continue
        if not parent or not child:
            raise PullError("invalid", f"storage_params key {name!r} is malformed")
        target = merged.get(parent)
        if target is None:
            target = merged[parent] = {}
        if not isinstance(target, dict):
            raise PullError("invalid", f"storage_params key {name!r}: field {parent!r} is not an object")
        target[child] = value


class StorageConfig:
    """The mounted `storage-config` directory (None: no storage config at all).

    Thread-safe; files are parsed again only when their stat changes.
    """

    def __init__(self, directory: Path | None) -> None:
        self.directory = Path(directory) if directory is not None else None
        self._lock = threading.Lock()
        self._cache: dict[str, tuple[tuple[int, int, int], dict[str, Any]]] = {}

    def __repr__(self) -> str:
        return f"StorageConfig(directory={str(self.directory) if self.directory else None!r})"

    def keys(self) -> list[str]:
        """Storage keys present (for diagnostics; names only)."""
        if self.directory is None or not self.directory.is_dir():
            return []
        return sorted(p.name for p in self.directory.iterdir() if _KEY_RE.match(p.name) and p.is_file())

    def read(self, key: str) -> dict[str, Any] | None:
        """The raw JSON object of `key`, None when the key is absent."""
        validate_key_name(key)
        if self.directory is None:
            return None
        path = self.directory / key
        try:
            st = path.stat()
        except (FileNotFoundError, NotADirectoryError):
            with self._lock:
                self._cache.pop(key, None)
            return None
        stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
        with self._lock:
            cached = self._cache.get(key)
        if cached is not None and cached[0] == stamp:
            return dict(cached[1])
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        except (IsADirectoryError, PermissionError, UnicodeDecodeError) as exc:
            raise PullError("invalid", f"storage config entry {key!r} cannot be read ({type(exc).__name__})") from None
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as exc:
            # exc.msg/lineno/colno only: the document itself may be a secret
            raise PullError(
                "invalid", f"storage config entry {key!r} is not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})"
            ) from None
        if not isinstance(raw, dict):
            raise PullError("invalid", f"storage config entry {key!r} must be a JSON object")
        log.info("storage config entry %r (re)read", key)
        with self._lock:
            self._cache[key] = (stamp, raw)
        return dict(raw)

    def resolve(
        self,
        storage_key: str | None,
        storage_params: Mapping[str, str] | None = None,
        type_hint: str | None = None,
    ) -> StorageEntry | None:
        """The storage a model uses, or None when nothing is configured for it.

        `type_hint` is the type implied by the model path's scheme (`s3://` →
        s3); an entry of another type is an error for an explicit key and is
        skipped for a default one.
        """
        params = dict(storage_params or {})
        wanted = params.get("type") or type_hint
        if type_hint and params.get("type") and params["type"] != type_hint:
            raise PullError("invalid", f"storage_params type {params['type']!r} conflicts with the {type_hint}:// model path")
        raw: dict[str, Any] | None = None
        used: str | None = None
        if storage_key:
            raw = self.read(storage_key)
            if raw is None:
                where = f"in {self.directory}" if self.directory else "(no storage config directory is configured)"
                raise PullError("invalid", f"storage key {storage_key!r} not found {where}")
            used = storage_key
        else:
            for candidate in ([f"default_{wanted}", "default"] if wanted else ["default"]):
                found = self.read(candidate)
                if found is None:
                    continue
                if wanted and found.get("type") not in (None, wanted):
                    continue
                raw, used = found, candidate
                break
        if raw is None and not params:
            return None
        merged = dict(raw or {})
        if "headers" in merged:
            merged["headers"] = _normalize_headers(merged["headers"], used)
        _apply_params(merged, params)
        if "headers" in merged:
            merged["headers"] = _normalize_headers(merged["headers"], used)
        if "default_bucket" in merged:
            default_bucket = merged.pop("default_bucket")
            merged.setdefault("bucket", default_bucket)
        stype = merged.pop("type", None) or wanted
        where = f"storage config entry {used!r}" if used else "storage_params"
        if not stype:
            raise PullError("invalid", f"storage type is missing ({where} has no 'type')")
        if not isinstance(stype, str) or stype not in KNOWN_TYPES:
            raise PullError("invalid", f"{where} has unknown storage type {stype!r} (known: {', '.join(sorted(KNOWN_TYPES))})")
        if type_hint and stype != type_hint:
            raise PullError("invalid", f"{where} is of type {stype!r} but the model path is a {type_hint}:// path")
        return StorageEntry(used, stype, merged)

