"""ModelMesh's etcd connection secret (KV_STORE=etcd:<file>) configures the
sidecar, and a file mmesh cannot honour is refused, not half-applied."""

from __future__ import annotations

import json

import pytest

from mesh.etcd_connection import parse_etcd_connection, read_kv_store
from mesh.settings import MeshSettings


def test_modelmesh_secret_sets_endpoints_and_prefix(tmp_path, monkeypatch):
    file = tmp_path / "etcd_connection"
    file.write_text(json.dumps({"endpoints": "http://etcd:2379, http://etcd-2:2379/", "root_prefix": "/modelmesh-serving/"}))
    monkeypatch.setenv("KV_STORE", f"etcd:{file}")
    settings = MeshSettings()
    assert settings.etcd_endpoints == "etcd:2379,etcd-2:2379"
    assert settings.kv_prefix == "modelmesh-serving"


@pytest.mark.parametrize(
    "text, message",
    [
        ("not json", "not JSON"),
        ('{"root_prefix": "x"}', '"endpoints"'),
        ('{"endpoints": "http://e:2379", "password": "p"}', "password"),
        ('{"endpoints": "https://e:2379"}', "https"),
    ],
)
def test_bad_connection_files_are_refused(text, message):
    with pytest.raises(ValueError, match=message):
        parse_etcd_connection(text)


def test_kv_store_must_name_an_etcd_file(tmp_path):
    with pytest.raises(ValueError, match="etcd:"):
        read_kv_store("zookeeper:/x")
    with pytest.raises(ValueError, match="cannot be read"):
        read_kv_store(f"etcd:{tmp_path / 'missing'}")


def test_the_controller_reads_the_same_secret_and_finds_the_mesh_service(tmp_path, monkeypatch):
    from mesh.controller.settings import ControllerSettings

    file = tmp_path / "etcd_connection"
    file.write_text(json.dumps({"endpoints": "http://etcd:2379", "root_prefix": "modelmesh-serving"}))
    monkeypatch.setenv("KV_STORE", f"etcd:{file}")
    monkeypatch.setenv("POD_NAMESPACE", "team-a")
    settings = ControllerSettings()
    assert (settings.etcd_endpoints, settings.kv_prefix) == ("etcd:2379", "modelmesh-serving")
    assert settings.mesh_endpoint == "modelmesh-serving.team-a:8033"
    assert settings.pod_settings().namespace == "team-a"
