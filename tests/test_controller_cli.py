"""`mmesh controller` as its Deployment runs it: configured from the
environment (POD_NAMESPACE, POD_NAME, KV_STORE with ModelMesh's etcd secret
file), the cluster from a kubeconfig, /healthz and /readyz served, leading
(Lease taken) and a clean exit on SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import yaml

from mesh.etcd_process import free_port
from mesh.processes import stop_process
from tests.helpers import answers_ok, wait_for
from tests.kube_api import FakeKubeApi


def test_the_controller_command_serves_probes_leads_and_stops_on_sigterm(etcd, tmp_path: Path):
    with FakeKubeApi(bookmark_interval_s=0.2) as kube:
        kubeconfig = tmp_path / "kubeconfig"
        kubeconfig.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": "test",
            "clusters": [{"name": "test", "cluster": {"server": kube.url}}],
            "users": [{"name": "test", "user": {}}],
            "contexts": [{"name": "test", "context": {"cluster": "test", "user": "test"}}],
        }))
        secret = tmp_path / "etcd_connection"
        secret.write_text(json.dumps({"endpoints": f"http://{etcd.endpoint}", "root_prefix": "cli-test"}))
        port = free_port()
        env = {
            **os.environ, "KUBECONFIG": str(kubeconfig), "POD_NAMESPACE": "team-a", "POD_NAME": "controller-0",
            "KV_STORE": f"etcd:{secret}", "MMESH_HEALTH_PORT": str(port), "MMESH_MESH_ENDPOINT": "127.0.0.1:1",
        }
        env.pop("KUBERNETES_SERVICE_HOST", None)
        log = (tmp_path / "controller.log").open("w")
        proc = subprocess.Popen([sys.executable, "-m", "mesh.cli", "controller"], env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_for(lambda: answers_ok(f"http://127.0.0.1:{port}/readyz"), timeout_s=30, what="/readyz")
            assert answers_ok(f"http://127.0.0.1:{port}/healthz")
            wait_for(lambda: (kube.get("leases", "mmesh-controller-leader", "team-a") or {}).get("spec", {}).get("holderIdentity") == "controller-0",
                     timeout_s=10, what="the lease taken")
            assert "mmesh_controller" in httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=1).text
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=20) == 0
            lease = kube.get("leases", "mmesh-controller-leader", "team-a")
            assert lease["spec"]["holderIdentity"] == ""  # released on the way out
        finally:
            stop_process(proc)
            log.close()
