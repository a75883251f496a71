"""Failures the mesh must ride out: a sidecar killed with SIGKILL under load,
and etcd stopped for 10 s."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import tritonclient.grpc as triton

from mesh.etcd_process import EtcdProcess, free_port
from mesh.records import InstanceRecord
from mesh.store import EtcdTable, RegistryStore
from tests.helpers import register, status, wait_for

TTL_S = 3




def log_path(data_dir: Path, instance_id: str) -> Path:
    """Each mesh process logs here (INFO), so a failure can show what it did."""
    data_dir.mkdir(parents=True, exist_ok=True)
    return data_dir / f"{instance_id}.log"


def log_tails(data_dir: Path, instance_ids: list[str], lines: int = 40) -> str:
    return "\n".join(
        f"--- {i} ---\n" + "\n".join(log_path(data_dir, i).read_text(errors="replace").splitlines()[-lines:])
        for i in instance_ids
    )


def start_mesh_process(etcd: str, prefix: str, instance_id: str, data_dir: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = dict(os.environ, MMESH_INSTANCE_TTL_S=str(TTL_S))
    proc = subprocess.Popen(
        [sys.executable, "-m", "mesh.cli", "up", "--etcd", etcd, "--kv-prefix", prefix, "--instance-id", instance_id,
         "--grpc-port", str(port), "--metrics-port", "0", "--rest-port", "0", "--probe-port", "0", "--no-examples",
         "--data-dir", str(data_dir / instance_id), "--log-level", "INFO"],
        stdout=subprocess.DEVNULL, stderr=log_path(data_dir, instance_id).open("wb"), env=env,
    )
    address = f"127.0.0.1:{port}"
    client = triton.InferenceServerClient(address)

    def live() -> bool:
        try:
            return client.is_server_live()
        except Exception:
            return False

    wait_for(live, 60, f"{instance_id} to serve")
    return proc, address


def infer(address: str, model_id: str) -> np.ndarray:
    inp = triton.InferInput("x", [1, 64], "FP32")
    inp.set_data_from_numpy(np.ones((1, 64), np.float32))
    return triton.InferenceServerClient(address).infer(model_id, [inp], client_timeout=30).as_numpy("y")


def etcd_state(endpoint: str, prefix: str) -> tuple[set[str], dict[str, set[str]]]:
    """(live instance ids, model id -> instances named in its record), read from etcd."""

    async def read():
        registry = RegistryStore(endpoint, prefix)
        instances = EtcdTable(registry.client, prefix, "instances", InstanceRecord.from_json)
        try:
            live, _ = await instances.list()
            records, _ = await registry.list()
        finally:
            await registry.close()
        named = {r.model_id: set(r.instances) | set(r.loading) | set(r.failures) for r in records}
        return {i.instance_id for i in live}, named

    return asyncio.run(read())


def test_sigkill_under_load_loses_no_request(etcd, models_dir, tmp_path):
    prefix = f"kill-{uuid.uuid4().hex[:6]}"
    procs: list[subprocess.Popen] = []
    try:
        addresses = []
        for i in range(3):
            proc, address = start_mesh_process(etcd.endpoint, prefix, f"k-{i}", tmp_path)
            procs.append(proc)
            addresses.append(address)
        a, b, c = addresses
        wait_for(lambda: len(etcd_state(etcd.endpoint, prefix)[0]) == 3, 20, "three instances")
        models = [f"km{i}" for i in range(6)]
        for i, model_id in enumerate(models):
            register(a, model_id, models_dir / f"dense-{i % 5}")
        # half the models load on the victim (it has room, and receives them)
        for model_id in models[:3]:
            infer(c, model_id)
        for model_id in models[3:]:
            infer(a, model_id)
        want = {m: infer(a, m) for m in models}

        failures: list[str] = []
        served = [0]
        stop = threading.Event()

        def load_loop(entry: str) -> None:
            deadline = time.monotonic() + 30
            n = 0
            while not stop.is_set() and time.monotonic() < deadline and n < 2000:
                model_id = models[n % len(models)]
                n += 1
                try:
                    np.testing.assert_allclose(infer(entry, model_id), want[model_id], rtol=1e-5)
                    served[0] += 1
                except Exception as exc:
                    failures.append(f"{model_id} via {entry}: {exc}")
                time.sleep(0.005)

        threads = [threading.Thread(target=load_loop, args=(entry,)) for entry in (a, b)]
        for t in threads:
            t.start()
        time.sleep(1.0)
        procs[2].send_signal(signal.SIGKILL)
        procs[2].wait(10)
        killed_at = time.monotonic()
        gone = wait_for(
            lambda: "k-2" not in etcd_state(etcd.endpoint, prefix)[0]
            and not any("k-2" in named for named in etcd_state(etcd.endpoint, prefix)[1].values()),
            2 * TTL_S + 2, "the dead instance to leave etcd",
        )
        time.sleep(1.0)  # keep the load going past the clean-up
        stop.set()
        for t in threads:
            t.join(60)
        assert not failures, f"{failures[:5]}\n{log_tails(tmp_path, ['k-0', 'k-1'])}"
        assert served[0] > 100
        assert time.monotonic() - killed_at - 1.0 <= 2 * TTL_S + 2
        # every model is still served, and no status names the dead instance
        for model_id in models:
            info = status(a, model_id)
            assert "k-2" not in {c.location for c in info.modelCopyInfos}
            assert info.status == 3
        print(f"dead instance gone from etcd {gone:.1f}s after SIGKILL; {served[0]} requests served, 0 failed")
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(20)
                except subprocess.TimeoutExpired:
                    proc.kill()


def test_etcd_down_for_ten_seconds(start_sidecar, loop_thread, models_dir, tmp_path):
    etcd = EtcdProcess(data_dir=tmp_path / "etcd-data").start()
    try:
        sidecars = [start_sidecar(etcd_endpoints=etcd.endpoint, instance_ttl_s=TTL_S) for _ in range(2)]
        wait_for(lambda: all(len(s.instances) == 2 for s in sidecars), 10, "instances")
        for i in range(3):
            register(sidecars[i % 2].address, f"e{i}", models_dir / f"dense-{i}")
        for i in range(3):
            infer(sidecars[i % 2].address, f"e{i}")
        for s in sidecars:
            loop_thread.run(s.recorder.flush())
        resyncs_before = [s.view.resyncs for s in sidecars]

        etcd.stop()
        down_until = time.monotonic() + 10
        served = 0
        while time.monotonic() < down_until:
            for s in sidecars:
                for i in range(3):
                    infer(s.address, f"e{i}")  # raises on any failure
                    served += 1
            time.sleep(0.05)
        assert served > 50
        etcd.start()

        wait_for(lambda: all(s.view.resyncs > r for s, r in zip(sidecars, resyncs_before)), 30, "views to resync")
        register(sidecars[1].address, "after", models_dir / "dense-3")
        wait_for(lambda: all(s.view.get("after") is not None for s in sidecars), 10, "new registration everywhere")
        records, _ = loop_thread.run(sidecars[0].store.list())
        assert {r.model_id for r in records} == {"e0", "e1", "e2", "after"}  # nothing lost
        wait_for(lambda: all(len(s.instances) == 2 for s in sidecars), 2 * TTL_S + 5, "instances back")
        for s in sidecars:
            for i in range(3):
                infer(s.address, f"e{i}")
            infer(s.address, "after")
    finally:
        etcd.cleanup()
