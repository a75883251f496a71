"""Head to head with MLServer: the same ONNX file served by mmesh (one sidecar,
runtime in-process) and by MLServer 1.7 through a small custom runtime
(benchmarks/mlserver_onnx_runtime.py) that wraps the same onnxruntime session
(CPU, 1 intra-op and 1 inter-op thread, as mmesh builds it).

Every server is its own process tree: etcd + `mmesh up` (started as
bench_foundation does), and `mlserver start <dir>` from MLServer's own venv
(.venv-mlserver; its dependencies conflict with the KServe SDK), once per
`--workers` value of MLServer's `parallel_workers` (default "1,0": 1 is
MLServer's default, inference in one worker process behind the server's
event loop; 0 runs inference in the server process). MLServer runs with
`debug: false` (its default `true` writes an access-log line per request).

Load: this process is the client, separate from every server. One
tritonclient.grpc client per target keeps `--concurrency` requests in flight
with async_infer (closed loop: each response issues the next request) for
`--seconds`; the targets take turns round by round (the order rotates each
round) so that machine noise hits all alike. Per round we print throughput
and p50/p99 of each, and the largest share of the machine's CPUs that other
processes (or the hypervisor) took during the round; then, per target, the
medians across rounds, with CPU-ms per request of the server's process tree
and of the client, and the median of the per-round throughput ratios
mmesh/MLServer (target: mmesh >= 1.5x MLServer; headline = the first
`--workers` value, MLServer's default parallel_workers=1).

Usage: python benchmarks/bench_mlserver.py [--concurrency 8] [--rounds 6]
           [--seconds 2.5] [--width 1024] [--layers 4] [--workers 1,0] [--no-tiny]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import psutil
import tritonclient.grpc as triton

from bench_foundation import percentiles, register, start_mesh
from mesh.etcd_process import EtcdProcess, free_port
from mesh.examples import make_dense_model
from mesh.processes import stop_process

HERE = Path(__file__).resolve().parent
MLSERVER = HERE.parent / ".venv-mlserver" / "bin" / "mlserver"
RUNTIME = "mlserver_onnx_runtime.OnnxModel"


@dataclass
class Target:
    name: str
    address: str
    procs: list[psutil.Process]  # roots of the server's process tree
    client: triton.InferenceServerClient = field(init=False)

    def __post_init__(self) -> None:
        self.client = triton.InferenceServerClient(self.address)

    def cpu_seconds(self) -> dict[int, float]:
        """user+system CPU of every process in the tree, by pid."""
        out = {}
        for root in self.procs:
            for p in [root, *root.children(recursive=True)]:
                try:
                    t = p.cpu_times()
                    out[p.pid] = t.user + t.system
                except psutil.NoSuchProcess:
                    pass
        return out


@dataclass
class Round:
    requests: int
    wall_s: float
    latencies: list[float]
    server_cpu_s: float
    client_cpu_s: float
    machine_busy: float  # share of all CPUs busy during the round (any process, hypervisor steal included)
    others: float  # the part of it not used by this target's servers nor the client (other load, steal)

    @property
    def rps(self) -> float:
        return self.requests / self.wall_s


def closed_loop(client: triton.InferenceServerClient, model: str, inputs, concurrency: int, seconds: float):
    """`concurrency` requests in flight until `seconds` have passed; returns
    (latencies of completed requests, wall seconds from first send to last reply)."""
    lock = threading.Lock()
    done = threading.Event()
    latencies: list[float] = []
    errors: list[Exception] = []
    in_flight = [concurrency]
    deadline = time.perf_counter() + seconds

    def send() -> None:
        t0 = time.perf_counter()
        client.async_infer(model, inputs, lambda result, error: finished(t0, error))

    def finished(t0: float, error) -> None:
        now = time.perf_counter()
        with lock:
            if error is not None:
                errors.append(error)
            else:
                latencies.append(now - t0)
            again = now < deadline and not errors
            if not again:
                in_flight[0] -= 1
                if in_flight[0] == 0:
                    done.set()
        if again:
            send()

    started = time.perf_counter()
    for _ in range(concurrency):
        send()
    if not done.wait(seconds + 60):
        raise TimeoutError(f"{model}: requests still in flight 60 s after the end of the round")
    wall = time.perf_counter() - started
    if errors:
        raise RuntimeError(f"{model}: {errors[0]}")
    return latencies, wall


def measure(target: Target, model: str, inputs, concurrency: int, seconds: float) -> Round:
    cpu0, client0, machine0 = target.cpu_seconds(), time.process_time(), psutil.cpu_times()
    latencies, wall = closed_loop(target.client, model, inputs, concurrency, seconds)
    client_cpu = time.process_time() - client0
    machine1 = psutil.cpu_times()
    cpu1 = target.cpu_seconds()
    server_cpu = sum(cpu1[pid] - cpu0[pid] for pid in cpu1 if pid in cpu0)
    total = sum(machine1) - sum(machine0)
    idle = (machine1.idle + machine1.iowait) - (machine0.idle + machine0.iowait)
    busy = (total - idle) / total if total else 0.0
    others = max(0.0, busy - (server_cpu + client_cpu) / total) if total else 0.0
    return Round(len(latencies), wall, latencies, server_cpu, client_cpu, busy, others)


def check_mlserver_env(workers: list[int]) -> str:
    """MLServer 1.7.1's inference workers (parallel_workers >= 1) die at start
    with uvloop >= 0.22 ("There is no current event loop", SeldonIO/MLServer#2286,
    fixed after 1.7.1); say so instead of timing out."""
    out = subprocess.run([str(MLSERVER.parent / "python"), "-c",
                          "import mlserver, onnxruntime, uvloop; print(mlserver.__version__, onnxruntime.__version__, uvloop.__version__)"],
                         capture_output=True, text=True, check=True).stdout.split()
    mlserver_version, ort_version, uvloop_version = out
    if mlserver_version == "1.7.1" and tuple(int(v) for v in uvloop_version.split(".")[:2]) >= (0, 22) and any(workers):
        raise SystemExit(f"MLServer 1.7.1 with uvloop {uvloop_version}: parallel_workers >= 1 crashes (SeldonIO/MLServer#2286); "
                         "pin uvloop<0.22 in scripts/mlserver-requirements.txt, or pass --workers 0")
    return f"MLServer {mlserver_version} (onnxruntime {ort_version}, uvloop {uvloop_version})"


def start_mlserver(stack: ExitStack, root: Path, workers: int, models: dict[str, Path]) -> tuple[str, subprocess.Popen]:
    """`mlserver start` on a fresh folder: settings.json + one model-settings.json per model."""
    folder = root / f"mlserver-pw{workers}"
    grpc_port, http_port, metrics_port = free_port(), free_port(), free_port()
    settings = {
        "host": "127.0.0.1", "http_port": http_port, "grpc_port": grpc_port, "metrics_port": metrics_port,
        "parallel_workers": workers, "debug": False, "load_models_at_startup": True,
    }
    folder.mkdir(parents=True)
    (folder / "settings.json").write_text(json.dumps(settings, indent=2))
    for name, onnx_file in models.items():
        (folder / name).mkdir()
        (folder / name / "model-settings.json").write_text(json.dumps(
            {"name": name, "implementation": RUNTIME, "parameters": {"uri": str(onnx_file)}}, indent=2))
    log = open(folder / "mlserver.log", "wb")
    stack.callback(log.close)
    env = {**os.environ, "PYTHONPATH": str(HERE)}
    env.pop("VIRTUAL_ENV", None)
    proc = subprocess.Popen([str(MLSERVER), "start", str(folder)], cwd=folder, env=env, stdout=log,
                            stderr=subprocess.STDOUT)
    stack.callback(stop_process, proc, 20)  # SIGTERM, then SIGKILL
    address = f"127.0.0.1:{grpc_port}"
    client = triton.InferenceServerClient(address)
    deadline = time.monotonic() + 90
    while True:
        try:
            if all(client.is_model_ready(name) for name in models):
                break
        except triton.InferenceServerException:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            tail = (folder / "mlserver.log").read_text(errors="replace")[-3000:]
            raise RuntimeError(f"MLServer (parallel_workers={workers}) not ready (exit code {proc.poll()}):\n{tail}")
        time.sleep(0.2)
    client.close()
    return address, proc


def mesh_process(instance: str) -> psutil.Process:
    for child in psutil.Process().children():
        if "mesh.cli" in child.cmdline() and instance in child.cmdline():
            return child
    raise RuntimeError(f"no `mmesh up` child with instance id {instance}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--concurrency", type=int, default=8, help="requests in flight per target")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--seconds", type=float, default=2.5, help="load per target per round")
    parser.add_argument("--width", type=int, default=1024, help="dense model: width")
    parser.add_argument("--layers", type=int, default=4, help="dense model: layers")
    parser.add_argument("--workers", default="1,0", help="MLServer parallel_workers values; the first is the headline")
    parser.add_argument("--no-tiny", action="store_true", help="skip the 64x64x2 per-request-overhead model")
    args = parser.parse_args()
    workers = [int(w) for w in args.workers.split(",")]
    versions = check_mlserver_env(workers)
    print(f"bench_mlserver: {os.cpu_count()} CPUs, python {sys.version.split()[0]}, {time.strftime('%Y-%m-%d %H:%M')}; "
          f"{versions}")

    with tempfile.TemporaryDirectory(prefix="mmesh-bench-") as tmp, ExitStack() as stack:
        root = Path(tmp)
        shapes = {"dense": (args.width, args.layers)}
        if not args.no_tiny:
            shapes["tiny"] = (64, 2)
        models = {name: make_dense_model(root / "models" / name / "model.onnx", width=w, layers=n)
                  for name, (w, n) in shapes.items()}

        etcd = stack.enter_context(EtcdProcess(data_dir=root / "etcd"))
        mesh_address = start_mesh(stack, etcd.endpoint, "inprocess", "mlbench", root)
        for name, onnx_file in models.items():
            register(mesh_address, name, onnx_file.parent)
        targets = [Target("mmesh", mesh_address, [mesh_process("mlbench")])]
        for w in workers:
            address, proc = start_mlserver(stack, root, w, models)
            targets.append(Target(f"mlserver pw={w}", address, [psutil.Process(proc.pid)]))
        for t in targets:
            stack.callback(t.client.close)

        rng = np.random.default_rng(0)
        for model, (width, layers) in shapes.items():
            inp = triton.InferInput("x", [1, width], "FP32")
            inp.set_data_from_numpy(rng.standard_normal((1, width)).astype(np.float32))
            # same answer from every server (mmesh's first request also loads the model)
            answers = [t.client.infer(model, [inp]).as_numpy("y") for t in targets]
            for t, a in zip(targets[1:], answers[1:]):
                np.testing.assert_allclose(a, answers[0], rtol=1e-5, atol=1e-6, err_msg=t.name)
            for t in targets:  # warm up: connections, arenas, worker processes
                measure(t, model, [inp], args.concurrency, 0.5)

            params = layers * width * width
            print(f"\nmodel {model}: dense {width}x{width}x{layers} FP32 ({params:,} params, "
                  f"{models[model].stat().st_size / 1e6:.1f} MB), input [1,{width}]; "
                  f"{args.concurrency} in flight per target, {args.seconds:g} s per target per round, "
                  f"{args.rounds} rounds, order rotating")
            results: dict[str, list[Round]] = {t.name: [] for t in targets}
            for r in range(args.rounds):
                order = targets[r % len(targets):] + targets[:r % len(targets)]
                for t in order:
                    results[t.name].append(measure(t, model, [inp], args.concurrency, args.seconds))
                line = []
                for t in targets:
                    rd = results[t.name][-1]
                    p50, p99 = percentiles(rd.latencies)
                    line.append(f"{t.name} {rd.rps:6.0f}/s p50 {p50:6.2f} p99 {p99:6.2f}")
                ratio = results["mmesh"][-1].rps / results[targets[1].name][-1].rps
                others = max(results[t.name][-1].others for t in targets)
                print(f"  round {r + 1}: " + " | ".join(line) + f" | mmesh/{targets[1].name} {ratio:.2f} | others <= {others:.0%}")

            print(f"  median across {args.rounds} rounds (latency ms; CPU-ms per request: server process tree / client; "
                  f"machine: busy share of the {os.cpu_count()} CPUs, of which others = not these servers nor the client):")
            for t in targets:
                rounds = results[t.name]
                rps = float(np.median([rd.rps for rd in rounds]))
                p50 = float(np.median([percentiles(rd.latencies)[0] for rd in rounds]))
                p99 = float(np.median([percentiles(rd.latencies)[1] for rd in rounds]))
                scpu = float(np.median([rd.server_cpu_s / rd.requests for rd in rounds])) * 1e3
                ccpu = float(np.median([rd.client_cpu_s / rd.requests for rd in rounds])) * 1e3
                busy = float(np.median([rd.machine_busy for rd in rounds]))
                others = float(np.median([rd.others for rd in rounds]))
                print(f"    {t.name:14s} {rps:7.0f} req/s   p50 {p50:6.2f}   p99 {p99:6.2f}   "
                      f"CPU {scpu:5.3f} / {ccpu:5.3f}   machine {busy:4.0%} (others {others:3.0%})   ({sum(rd.requests for rd in rounds):,} requests)")
            for t in targets[1:]:
                ratios = [a.rps / b.rps for a, b in zip(results["mmesh"], results[t.name])]
                verdict = "met" if np.median(ratios) >= 1.5 else "MISSED"
                headline = f" (target >= 1.5: {verdict})" if t is targets[1] else ""
                print(f"    throughput mmesh / {t.name}: {np.median(ratios):.3f} median of per-round ratios "
                      f"[{min(ratios):.2f}-{max(ratios):.2f}]{headline}")


if __name__ == "__main__":
    main()
