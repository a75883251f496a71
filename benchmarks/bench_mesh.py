"""Distributed-mesh benchmarks, measured side by side in one run.

(a) Peer forward: two `mmesh up` processes on one etcd; a small ONNX model
    loaded on A only. One tritonclient.grpc client sends the same request to
    A (local hit) and to B (forwarded to A's copy), in interleaved rounds.
    Prints p50/p99 and forwarded/local (target <= 2.2 at p50).
(b) Scale: `mmesh up --instances 3` (one process, three sidecars with three
    registry views); bulk-register N models (default 100,000): registrations/s
    (target >= 1,000/s) and RSS growth per registered model per view (target
    <= 2 KB); then a fourth sidecar process joins and we time until its view
    holds all N (listModels totalModels).

Usage: python benchmarks/bench_mesh.py [--requests 2000] [--models 100000]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

import grpc
import numpy as np
import psutil
import tritonclient.grpc as triton

from mesh.etcd_process import EtcdProcess, free_port
from mesh.examples import make_dense_model
from protos import grpc_predict_v2_pb2 as v2
from protos import grpc_predict_v2_pb2_grpc as v2_grpc
from protos import model_mesh_pb2 as mm
from protos import model_mesh_pb2_grpc as mm_grpc
from protos import mmesh_ext_pb2 as ext
from protos import mmesh_ext_pb2_grpc as ext_grpc


def serving(address: str) -> bool:
    stub = v2_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(address))
    try:
        return stub.ServerLive(v2.ServerLiveRequest(), timeout=1).live
    except grpc.RpcError:
        return False


def start_up(stack: ExitStack, etcd: str, prefix: str, name: str, data: Path, instances: int = 1) -> tuple[subprocess.Popen, list[str]]:
    base = free_port()
    cmd = [sys.executable, "-m", "mesh.cli", "up", "--etcd", etcd, "--kv-prefix", prefix, "--instance-id", f"{name}-0",
           "--grpc-port", str(base), "--metrics-port", "0", "--no-examples", "--instances", str(instances),
           "--data-dir", str(data / name)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
    stack.callback(lambda: (proc.terminate(), proc.wait(60)))
    first = f"127.0.0.1:{base}"
    deadline = time.monotonic() + 120
    while not serving(first):
        if time.monotonic() > deadline or proc.poll() is not None:
            raise RuntimeError(f"{name} did not start")
        time.sleep(0.1)
    return proc, [first]


def pct(samples: list[float]) -> tuple[float, float]:
    arr = np.array(samples) * 1e3
    return float(np.percentile(arr, 50)), float(np.percentile(arr, 99))


def bench_forward(args, root: Path, etcd: str) -> None:
    with ExitStack() as stack:
        _, (a,) = start_up(stack, etcd, "fwd", "a", root)
        _, (b,) = start_up(stack, etcd, "fwd", "b", root)
        model = make_dense_model(root / "fwd-model" / "model.onnx", width=64, layers=2)
        mm_grpc.ModelMeshStub(grpc.insecure_channel(a)).registerModel(
            mm.RegisterModelRequest(modelId="fwd", modelInfo=mm.ModelInfo(type="onnx", path=str(model.parent)),
                                    loadNow=True, sync=True), timeout=60)
        inp = triton.InferInput("x", [1, 64], "FP32")
        inp.set_data_from_numpy(np.ones((1, 64), np.float32))
        clients = {"local (A)": triton.InferenceServerClient(a), "forwarded (B->A)": triton.InferenceServerClient(b)}
        for client in clients.values():
            for _ in range(200):
                client.infer("fwd", [inp])
        samples = {k: [] for k in clients}
        per_round = max(1, args.requests // args.rounds)
        for _ in range(args.rounds):
            for name, client in clients.items():
                for _ in range(per_round):
                    t0 = time.perf_counter()
                    client.infer("fwd", [inp])
                    samples[name].append(time.perf_counter() - t0)
        stats = {k: pct(v) for k, v in samples.items()}
        print(f"peer forward, {per_round * args.rounds} requests each, dense 64x64x2 FP32, tritonclient.grpc")
        for name, (p50, p99) in stats.items():
            print(f"  {name:18s} p50 {p50:7.3f} ms   p99 {p99:7.3f} ms")
        (l50, l99), (f50, f99) = stats["local (A)"], stats["forwarded (B->A)"]
        print(f"  ratio forwarded/local p50 {f50 / l50:.2f}  p99 {f99 / l99:.2f}   (target p50 <= 2.2)")


def bench_scale(args, root: Path, etcd: str) -> None:
    with ExitStack() as stack:
        proc, (first,) = start_up(stack, etcd, "scale", "s", root, instances=3)
        time.sleep(1.0)
        rss_before = psutil.Process(proc.pid).memory_info().rss
        stub = ext_grpc.ModelMeshExtensionsStub(grpc.insecure_channel(first))
        started = time.perf_counter()
        for start in range(0, args.models, args.batch):
            batch = [
                mm.RegisterModelRequest(modelId=f"model-{i:06d}", modelInfo=mm.ModelInfo(type="onnx", path=f"/models/m{i % 97}"))
                for i in range(start, min(args.models, start + args.batch))
            ]
            response = stub.registerModels(ext.RegisterModelsRequest(models=batch), timeout=600)
            bad = [r for r in response.results if r.code != "OK"]
            if bad:
                raise RuntimeError(f"registration failed: {bad[:3]}")
        elapsed = time.perf_counter() - started
        # all three views must hold every model before memory is read
        total = lambda address: stub_for(address).listModels(ext.ListModelsRequest(pageSize=1), timeout=60).totalModels  # noqa: E731
        deadline = time.monotonic() + 300
        while total(first) < args.models and time.monotonic() < deadline:
            time.sleep(0.5)
        time.sleep(2.0)
        rss_after = psutil.Process(proc.pid).memory_info().rss
        per_model = (rss_after - rss_before) / args.models
        print(f"scale: {args.models:,} models registered through 1 of 3 sidecars (one process, 3 views)")
        print(f"  registration        {args.models / elapsed:9,.0f} models/s   ({elapsed:.1f} s; target >= 1,000/s)")
        print(f"  RSS growth          {per_model:9,.0f} bytes/model for 3 views = {per_model / 3:,.0f} bytes/model/view (target <= 2048)")
        # a new sidecar builds its view from etcd
        t0 = time.perf_counter()
        _, (late,) = start_up(stack, etcd, "scale", "late", root)
        while total(late) < args.models:
            time.sleep(0.05)
        print(f"  new sidecar         {time.perf_counter() - t0:9.2f} s from process start to a view of {args.models:,} models")


def stub_for(address: str) -> ext_grpc.ModelMeshExtensionsStub:
    return ext_grpc.ModelMeshExtensionsStub(grpc.insecure_channel(address))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--models", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--skip-forward", action="store_true")
    parser.add_argument("--skip-scale", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="mmesh-bench-") as tmp, EtcdProcess(data_dir=Path(tmp) / "etcd") as etcd:
        root = Path(tmp)
        if not args.skip_forward:
            bench_forward(args, root, etcd.endpoint)
        if not args.skip_scale:
            bench_scale(args, root, etcd.endpoint)


if __name__ == "__main__":
    main()
