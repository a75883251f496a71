"""`mmesh up` as a user runs it (embedded etcd, example models), driven by the
other `mmesh` commands, and stopped with Ctrl-C (SIGINT)."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mesh.etcd_process import free_port

MMESH = [sys.executable, "-m", "mesh.cli"]


def run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([*MMESH, *args], capture_output=True, text=True, timeout=timeout)


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture
def mesh_up(tmp_path: Path):
    grpc_port, metrics_port, etcd_port = free_port(), free_port(), free_port()
    log = (tmp_path / "up.log").open("w+")
    proc = subprocess.Popen(
        [*MMESH, "up", "--grpc-port", str(grpc_port), "--metrics-port", str(metrics_port),
         "--rest-port", str(free_port()), "--probe-port", str(free_port()),
         "--etcd-port", str(etcd_port), "--data-dir", str(tmp_path / "data")],
        stdout=log, stderr=subprocess.STDOUT, text=True,
    )
    deadline = time.monotonic() + 90
    try:
        while "Ctrl-C stops it" not in (tmp_path / "up.log").read_text():
            assert proc.poll() is None, (tmp_path / "up.log").read_text()
            assert time.monotonic() < deadline, "mmesh up did not come up"
            time.sleep(0.2)
        yield proc, f"127.0.0.1:{grpc_port}", etcd_port, tmp_path / "up.log"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        log.close()


def test_up_serves_examples_and_stops_cleanly_on_ctrl_c(mesh_up, tmp_path):
    proc, target, etcd_port, log = mesh_up
    banner = log.read_text()
    assert target in banner and "add-one" in banner
    assert "v2 REST http://127.0.0.1:" in banner and "probes http://127.0.0.1:" in banner

    out = run("infer", "add-one", "--data", "[[1, 2, 3, 4]]", "-t", target)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "y = [[2.0, 3.0, 4.0, 5.0]]" in out.stdout

    out = run("infer", "echo-text", "--data", '["hi"]', "-t", target)
    assert "echo = [b'hi']" in out.stdout, out.stdout

    models_dir = tmp_path / "data" / "models"
    out = run("register", "second-add", "--path", str(models_dir / "add-one"), "--load-now", "-t", target)
    assert out.returncode == 0 and "LOADED" in out.stdout, out.stdout + out.stderr

    bulk = tmp_path / "bulk.json"
    bulk.write_text(json.dumps([
        {"modelId": "bulk-a", "path": str(models_dir / "add-one")},
        {"modelId": "bulk-b", "path": str(models_dir / "dense-64"), "minCopies": 1},
        {"modelId": "add-one", "path": "/somewhere/else"},
    ]))
    out = run("register", "--from-file", str(bulk), "-t", target)
    assert out.returncode == 1  # one conflicting definition
    assert "add-one: ALREADY_EXISTS" in out.stdout and "2 OK" in out.stdout, out.stdout

    out = run("models", "-t", target)
    assert out.returncode == 0
    rows = {line.split("│")[1].strip(): line for line in out.stdout.splitlines() if line.count("│") > 3}
    assert set(rows) >= {"add-one", "dense-64", "echo-text", "second-add"}
    assert "LOADED" in rows["add-one"] and "NOT_LOADED" in rows["dense-64"]
    assert "6 models registered" in out.stdout

    out = run("infer", "missing", "--data", "[[1]]", "-t", target)
    assert out.returncode == 1 and "NOT_FOUND" in out.stdout

    proc.send_signal(signal.SIGINT)
    assert proc.wait(30) == 0
    assert not port_open(etcd_port), "embedded etcd still running after Ctrl-C"
