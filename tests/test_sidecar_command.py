"""`mmesh sidecar` as a runtime pod's `mm` container runs it: configured
only from the environment (ModelMesh's KV_STORE etcd secret file, MM_* and
MMESH_* variables), ready on its probe port, serving, and draining to a
clean exit on SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import tritonclient.grpc as triton

from mesh.etcd_process import free_port
from mesh.processes import stop_process
from tests.helpers import answers_ok, register, wait_for


def test_the_sidecar_command_runs_from_the_environment_and_drains_on_sigterm(etcd, models_dir, tmp_path: Path):
    secret = tmp_path / "etcd_connection"
    secret.write_text(json.dumps({"endpoints": f"http://{etcd.endpoint}", "root_prefix": "pod-test"}))
    grpc_port, probe_port = free_port(), free_port()
    env = {
        **os.environ, "KV_STORE": f"etcd:{secret}", "MM_SVC_GRPC_PORT": str(grpc_port), "MMESH_PROBE_PORT": str(probe_port),
        "MMESH_REST_PORT": "0", "MMESH_METRICS_PORT": "0", "MM_INSTANCE_ID": "pod-0", "MM_LABELS": "rt:mmesh-onnx",
        "MMESH_DEVICE": "cpu", "SHUTDOWN_TIMEOUT_MS": "5000",
    }
    log = (tmp_path / "sidecar.log").open("w")
    proc = subprocess.Popen([sys.executable, "-m", "mesh.cli", "sidecar"], env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: answers_ok(f"http://127.0.0.1:{probe_port}/ready"), timeout_s=60, what="/ready")
        address = f"127.0.0.1:{grpc_port}"
        register(address, "pinned", models_dir / "dense-0", type="onnx|rt:mmesh-onnx")
        inp = triton.InferInput("x", [1, 64], "FP32")
        inp.set_data_from_numpy(np.ones((1, 64), np.float32))
        assert triton.InferenceServerClient(address).infer("pinned", [inp]).as_numpy("y").shape == (1, 64)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        stop_process(proc)
        log.close()
