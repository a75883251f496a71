"""ModelMesh's etcd connection secret, so the same `model-serving-etcd`
secret drives mmesh: `KV_STORE=etcd:<file>`, where the file (the secret's
`etcd_connection` key, mounted) is JSON such as
`{"endpoints": "http://etcd:2379", "root_prefix": "modelmesh-serving"}`.

Only what mmesh uses is read (endpoints, root prefix); a file that asks for
TLS or a user is refused rather than silently connected without them."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

UNSUPPORTED_FIELDS = ("userid", "password", "certificate", "certificate_file", "client_key", "client_key_file")


@dataclass(frozen=True)
class EtcdConnection:
    endpoints: str  # comma-separated host:port, scheme stripped
    root_prefix: str


def parse_etcd_connection(text: str, source: str = "etcd_connection") -> EtcdConnection:
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{source} is not JSON: {exc}") from exc
    if not isinstance(doc, dict) or not isinstance(doc.get("endpoints"), str) or not doc["endpoints"].strip():
        raise ValueError(f'{source} must be a JSON object with "endpoints" (e.g. "http://etcd:2379")')
    asked = [name for name in UNSUPPORTED_FIELDS if doc.get(name)]
    if asked:
        raise ValueError(f"{source} sets {', '.join(asked)}: etcd TLS/auth is not supported yet")
    endpoints = []
    for endpoint in doc["endpoints"].split(","):
        endpoint = endpoint.strip()
        if endpoint.startswith("https://"):
            raise ValueError(f"{source}: https etcd endpoints are not supported yet ({endpoint})")
        endpoints.append(endpoint.removeprefix("http://").rstrip("/"))
    prefix = str(doc.get("root_prefix") or "").strip("/")
    return EtcdConnection(",".join(endpoints), prefix)


def read_kv_store(value: str) -> EtcdConnection:
    """`etcd:<path to the etcd_connection file>` → its connection."""
    kind, _, path = value.partition(":")
    if kind != "etcd" or not path:
        raise ValueError(f"KV_STORE must look like 'etcd:/path/to/etcd_connection', not {value!r}")
    file = Path(path)
    try:
        text = file.read_text()
    except OSError as exc:
        raise ValueError(f"KV_STORE file {path} cannot be read: {exc}") from exc
    return parse_etcd_connection(text, source=str(file))


class KvStoreSettings(Protocol):
    kv_store: str
    etcd_endpoints: str
    kv_prefix: str


def apply_kv_store(settings: KvStoreSettings) -> None:
    """Replace `etcd_endpoints`/`kv_prefix` from `kv_store` when set (once:
    `kv_store` is cleared so a copy of the settings does not re-read it)."""
    if not settings.kv_store:
        return
    connection = read_kv_store(settings.kv_store)
    settings.etcd_endpoints = connection.endpoints
    if connection.root_prefix:
        settings.kv_prefix = connection.root_prefix
    settings.kv_store = ""
