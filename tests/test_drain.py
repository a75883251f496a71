"""Graceful drain (mesh/drain.py): a sidecar told to stop hands its models
to peers before it unloads them, keeps serving meanwhile, and leaves the
mesh without a failed request or a cold load.

Two tests: the order of the steps, in process (copies are requested before
anything unloads; a load asked of a draining sidecar goes to a peer), and
the real thing — three `mmesh up` processes under steady load, SIGTERM to
one of them.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from datetime import datetime
from pathlib import Path

import numpy as np
import tritonclient.grpc as triton

from mesh.drain import DrainConfig, Drainer
from mesh.etcd_process import free_port
from tests.helpers import register, status, wait_for
from tests.test_failures import etcd_state

TTL_S = 3
GRACE_S = 12.0


def infer_with(client: triton.InferenceServerClient, model_id: str) -> np.ndarray:
    inp = triton.InferInput("x", [1, 64], "FP32")
    inp.set_data_from_numpy(np.ones((1, 64), np.float32))
    return client.infer(model_id, [inp], client_timeout=30).as_numpy("y")


def test_drain_copies_out_before_unloading_and_routes_loads_away(start_sidecar, loop_thread, models_dir):
    a = start_sidecar(instance_ttl_s=TTL_S)  # the one that drains
    b = start_sidecar(instance_ttl_s=TTL_S)
    wait_for(lambda: len(a.instances) == 2 and len(b.instances) == 2, what="instances")
    held = [f"held-{i}" for i in range(3)]
    for i, model_id in enumerate(held):
        register(a.address, model_id, models_dir / f"dense-{i}")
    register(a.address, "late", models_dir / "dense-3")
    client_a = triton.InferenceServerClient(a.address)
    for model_id in held:
        infer_with(client_a, model_id)
    assert all(a.loader.try_peek(m) for m in held) and not b.loader.copies

    events: list[tuple[str, str]] = []
    load_on, unload = a.router.load_on, a.loader.unload

    async def recording_load_on(instance_id: str, model_id: str) -> None:
        events.append(("copy asked", model_id))
        await load_on(instance_id, model_id)
        events.append(("copied", model_id))

    async def recording_unload(model_id: str, *args, **kwargs) -> None:
        events.append(("unload", model_id))
        await unload(model_id, *args, **kwargs)

    a.router.load_on, a.loader.unload = recording_load_on, recording_unload

    async def announce() -> None:
        a.shutting_down = True
        await Drainer(a, DrainConfig(grace_s=20)).announce()

    loop_thread.run(announce())
    assert not client_a.is_server_ready()  # the probe turns not-ready at once
    wait_for(lambda: (r := b.instances.get(a.settings.instance_id)) is not None and r.shutting_down, what="b sees a draining")
    # a model asked of the draining sidecar is served, but loaded on the peer
    infer_with(client_a, "late")
    assert b.loader.try_peek("late") and "late" not in a.loader.copies
    infer_with(client_a, held[0])  # what a holds, it still serves itself
    assert not events

    report = loop_thread.run(a.drain(grace_s=20))
    assert report is not None and report.copied == {m: b.settings.instance_id for m in held}
    assert all(b.loader.try_peek(m) for m in held)
    first_unload = next(i for i, (what, _) in enumerate(events) if what == "unload")
    assert {m for what, m in events[:first_unload] if what == "copied"} == set(held), events
    assert {m for what, m in events if what == "unload"} == set(held)
    # the record is revoked with the lease, not left to expire
    wait_for(lambda: len(b.instances) == 1, timeout_s=TTL_S - 1, what="a's instance record to go")
    client_b = triton.InferenceServerClient(b.address)
    for model_id in held + ["late"]:
        infer_with(client_b, model_id)
    assert b.loader.load_count == len(held) + 1  # one load each: no cold load after the drain


# ---- three processes, SIGTERM under load ----------------------------------------


def start_process(etcd: str, prefix: str, instance_id: str, tmp_path: Path) -> tuple[subprocess.Popen, str, Path]:
    """`mmesh up` for one sidecar, JSON logs (with one line per request) to a file."""
    port = free_port()
    env = dict(
        os.environ,
        MMESH_INSTANCE_TTL_S=str(TTL_S),
        MMESH_DRAIN_GRACE_S=str(GRACE_S),
        MM_LOG_EACH_INVOKE="true",
        MMESH_SCALE_UP_RPS="1e9",  # no copies from the copy scaler: every load below is the drain's
        MMESH_SCALE_UP_IN_FLIGHT="1000000",
    )
    log_path = tmp_path / f"{instance_id}.log"
    with log_path.open("w") as log_file:
        proc = subprocess.Popen(
            [sys.executable, "-m", "mesh.cli", "up", "--etcd", etcd, "--kv-prefix", prefix, "--instance-id", instance_id,
             "--grpc-port", str(port), "--metrics-port", "0", "--rest-port", "0", "--probe-port", "0", "--no-examples",
             "--data-dir", str(tmp_path / instance_id), "--log-level", "INFO", "--log-format", "json"],
            stdout=subprocess.DEVNULL, stderr=log_file, env=env,
        )
    return proc, f"127.0.0.1:{port}", log_path


def read_log(path: Path) -> list[dict]:
    lines = []
    for line in path.read_text().splitlines():
        try:
            doc = json.loads(line)
        except ValueError:
            continue
        if isinstance(doc, dict) and "timestamp" in doc:
            doc["at"] = datetime.fromisoformat(doc["timestamp"])
            lines.append(doc)
    return lines


def live(address: str) -> bool:
    try:
        return triton.InferenceServerClient(address).is_server_live()
    except Exception:
        return False


def ready(client: triton.InferenceServerClient) -> bool:
    try:
        return client.is_server_ready()
    except Exception:
        return False


def test_sigterm_under_load_loses_no_request(etcd, models_dir, tmp_path):
    prefix = f"drain-{uuid.uuid4().hex[:6]}"
    ids = ["d-0", "d-1", "d-2"]
    procs: list[subprocess.Popen] = []
    try:
        started = [start_process(etcd.endpoint, prefix, i, tmp_path) for i in ids]
        procs = [p for p, _, _ in started]
        a, b, c = (address for _, address, _ in started)
        logs = {i: path for i, (_, _, path) in zip(ids, started)}
        for address in (a, b, c):
            wait_for(lambda: live(address), 60, f"{address} to serve")
        wait_for(lambda: len(etcd_state(etcd.endpoint, prefix)[0]) == 3, 20, "three instances")
        models = [f"dm{i}" for i in range(6)]
        for i, model_id in enumerate(models):
            register(a, model_id, models_dir / f"dense-{i % 5}")
        on_victim, elsewhere = models[:4], models[4:]
        victim = triton.InferenceServerClient(c)
        for model_id in on_victim:  # c has room and receives them: loaded there
            infer_with(victim, model_id)
        first = triton.InferenceServerClient(a)
        for model_id in elsewhere:
            infer_with(first, model_id)
        wait_for(
            lambda: all(etcd_state(etcd.endpoint, prefix)[1][m] == {"d-2"} for m in on_victim), 10, "c's copies recorded"
        )
        want = {m: infer_with(first, m) for m in models}

        failures: list[str] = []
        served = [0, 0, 0]
        stop = threading.Event()

        def load(index: int) -> None:
            """Steady requests for every model through one sidecar. The thread
            for the one that is terminated stands in for a Kubernetes Service:
            once the sidecar reports not-ready it sends to the others."""
            clients = [triton.InferenceServerClient(address) for address in (a, b, c)]
            gone, n = False, 0  # gone: (the terminated one's thread) it reported not-ready
            while not stop.is_set() and n < 5000:
                if index == 2 and not gone:
                    gone = not ready(clients[2])
                entry = n % 2 if gone else index
                model_id = models[n % len(models)]
                n += 1
                try:
                    np.testing.assert_allclose(infer_with(clients[entry], model_id), want[model_id], rtol=1e-5)
                    served[index] += 1
                except Exception as exc:
                    failures.append(f"{model_id} via {'abc'[entry]}: {exc}")
                time.sleep(0.002)

        threads = [threading.Thread(target=load, args=(i,)) for i in range(3)]
        for t in threads:
            t.start()
        time.sleep(1.5)
        before = sum(served)
        procs[2].send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        rc = procs[2].wait(GRACE_S + 10)
        exit_s = time.monotonic() - signalled
        live_ids, named = etcd_state(etcd.endpoint, prefix)  # at once: the lease was revoked, not left to expire
        during = sum(served) - before
        time.sleep(1.0)  # and the survivors keep serving everything
        stop.set()
        for t in threads:
            t.join(30)

        assert not failures, failures[:5]
        assert rc == 0
        assert exit_s <= GRACE_S
        assert "d-2" not in live_ids and not any("d-2" in where for where in named.values())
        # c's models were copied to a survivor before c unloaded them, and
        # nobody loaded them cold: exactly one load each, the drain's
        victim_log = read_log(logs["d-2"])
        copies = {d["model_id"]: d for d in victim_log if d.get("event") == "drain_copy"}
        unloads = {d["model_id"]: d for d in victim_log if d.get("event") == "unload"}
        assert set(copies) == set(on_victim)
        for model_id in on_victim:
            assert copies[model_id]["at"] <= unloads[model_id]["at"]
        survivor_loads = [d for i in ids[:2] for d in read_log(logs[i]) if d.get("event") == "load"]
        for model_id in on_victim:
            loads = [d for d in survivor_loads if d["model_id"] == model_id]
            assert [d["instance_id"] for d in loads] == [copies[model_id]["target"]], loads
            info = status(a, model_id)
            assert info.status == 3 and {c.location for c in info.modelCopyInfos} == {copies[model_id]["target"]}
        drain_start = next(d["at"] for d in victim_log if d.get("event") == "drain_start")
        served_while_draining = sum(1 for d in victim_log if d.get("event") == "request" and d["at"] >= drain_start)
        print(
            f"\nSIGTERM under load: {sum(served)} requests, 0 failed ({during} while c drained; c itself served "
            f"{served_while_draining} after SIGTERM); c exited with 0 after {exit_s:.1f}s (grace {GRACE_S:.0f}s); "
            f"copies: { {m: d['target'] for m, d in copies.items()} }"
        )
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(GRACE_S + 5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(5)
