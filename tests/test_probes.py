"""Kubernetes probes of a real sidecar: /live answers while the loop runs;
/ready is 200 only with etcd reachable, the runtime ready and this instance's
record in etcd, and turns 503 naming the failing condition otherwise (etcd
stopped, record deleted, shutdown begun)."""

from __future__ import annotations

import httpx
import pytest

from mesh.etcd_process import EtcdProcess, free_port
from tests.helpers import wait_for

TTL_S = 3  # instance lease: the publisher refreshes it every second


def probe(sidecar, path: str) -> httpx.Response:
    return httpx.get(f"http://127.0.0.1:{sidecar.probe_port}{path}", timeout=10)


def failing(sidecar) -> dict[str, str]:
    response = probe(sidecar, "/ready")
    if response.status_code == 200:
        assert response.json() == {"ready": True}
        return {}
    assert response.status_code == 503
    return response.json()["failing"]


@pytest.fixture
def sidecar(start_sidecar):
    return start_sidecar(probe_port=free_port(), instance_ttl_s=TTL_S)


def test_live_and_ready_when_all_is_well(sidecar):
    response = probe(sidecar, "/live")
    assert response.status_code == 200 and response.json() == {"live": True}
    assert failing(sidecar) == {}
    response = probe(sidecar, "/nothing")
    assert response.status_code == 404 and "error" in response.json()


def test_not_ready_while_the_instance_record_is_missing(sidecar, loop_thread):
    instance_id = sidecar.settings.instance_id
    loop_thread.run(sidecar.instances_table.delete(instance_id))
    wait_for(lambda: "registered" in failing(sidecar), 10, "the deletion to reach the probe")
    assert instance_id in failing(sidecar)["registered"]
    assert probe(sidecar, "/live").status_code == 200
    # written again (any state change republishes it), ready again
    loop_thread.run(sidecar.publisher.publish_now())
    wait_for(lambda: failing(sidecar) == {}, 10, "ready again")


def test_not_ready_once_shutdown_begins(sidecar, loop_thread):
    async def set_flag(value: bool) -> None:
        sidecar.shutting_down = value

    loop_thread.run(set_flag(True))
    assert failing(sidecar) == {"shutdown": "shutting down"}
    loop_thread.run(set_flag(False))
    assert failing(sidecar) == {}


def test_not_ready_while_etcd_is_down(start_sidecar, tmp_path):
    etcd = EtcdProcess(data_dir=tmp_path / "etcd-data").start()
    try:
        sidecar = start_sidecar(etcd_endpoints=etcd.endpoint, probe_port=free_port(), instance_ttl_s=TTL_S)
        assert failing(sidecar) == {}
        etcd.stop()
        took = wait_for(lambda: "etcd" in failing(sidecar), 10, "the probe to see etcd down")
        assert probe(sidecar, "/live").status_code == 200  # liveness never depends on etcd
        etcd.start()
        back = wait_for(lambda: failing(sidecar) == {}, 2 * TTL_S + 10, "ready after etcd came back")
        print(f"not ready {took:.1f} s after etcd stopped; ready {back:.1f} s after it restarted")
    finally:
        etcd.cleanup()
