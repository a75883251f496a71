"""Distributed-mesh benchmarks: peer forwarding and registry scale, measured
side by side in one run. Every sidecar is its own `mmesh up` process on one
etcd (started here); the client is this process.

(a) Peer forward: sidecars A and B; a 64x64x2 dense ONNX model registered and
    loaded on A only. One tritonclient.grpc client sends the same request to
    A (local hit) and to B (forwarded to A's copy) in interleaved rounds, so
    machine noise hits both alike. Copy scaling is switched off for these two
    processes (MMESH_SCALE_UP_RPS / MMESH_SCALE_UP_IN_FLIGHT), otherwise the
    traffic would make A add a copy on B after 5 s and B would stop
    forwarding; the benchmark checks that A still holds the only copy.
    Prints p50/p99 and forwarded/local (target p50 <= 2.2).

(b) Scale: a 3-sidecar mesh (default: three `mmesh up` processes, one view
    each; `--layout one-process` runs `mmesh up --instances 3`, three views in
    one process). N models (default 100,000) are registered with the bulk
    `registerModels` RPC in batches through the first sidecar:
      - registrations/s until the last batch returned (target >= 1,000/s), and
        until every view holds all N;
      - RSS growth per registered model of each sidecar process, before
        registration vs after every view holds N (target <= 2 KB per view);
      - a NEW sidecar process joining the mesh: seconds from process start
        until it serves and until listModels on it reports totalModels == N,
        next to the same start against an empty registry (what a start costs
        anyway), and its RSS per model over that empty sidecar's.

Usage: python benchmarks/bench_distributed.py [--requests 2000] [--rounds 10]
           [--models 100000] [--batch 1000] [--layout processes|one-process]
           [--skip-forward] [--skip-scale]
"""

from __future__ import annotations

import argparse
import asyncio
import os
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
from mesh.processes import stop_process
from mesh.records import InstanceRecord
from mesh.store import EtcdTable, connect_client
from protos import grpc_predict_v2_pb2 as v2
from protos import grpc_predict_v2_pb2_grpc as v2_grpc
from protos import model_mesh_pb2 as mm
from protos import model_mesh_pb2_grpc as mm_grpc
from protos import mmesh_ext_pb2 as ext
from protos import mmesh_ext_pb2_grpc as ext_grpc

NO_COPY_SCALING = {"MMESH_SCALE_UP_RPS": "1e12", "MMESH_SCALE_UP_IN_FLIGHT": "1000000000"}


def serving(address: str) -> bool:
    with grpc.insecure_channel(address) as channel:
        try:
            return v2_grpc.GRPCInferenceServiceStub(channel).ServerLive(v2.ServerLiveRequest(), timeout=1).live
        except grpc.RpcError:
            return False


class Sidecar:
    """One `mmesh up` process (with `instances` sidecars in it)."""

    def __init__(self, stack: ExitStack, etcd: str, prefix: str, name: str, data: Path, *, instances: int = 1,
                 env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.name = name
        cmd = [sys.executable, "-m", "mesh.cli", "up", "--etcd", etcd, "--kv-prefix", prefix, "--instance-id", f"{name}-0",
               "--grpc-port", str(self.port), "--metrics-port", "0", "--rest-port", "0", "--probe-port", "0",
               "--no-examples", "--instances", str(instances),
               "--data-dir", str(data / name)]
        self.started = time.perf_counter()
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, env={**os.environ, **(env or {})})
        stack.callback(stop_process, self.proc, 60)
        self.channel = grpc.insecure_channel(self.address, options=[("grpc.max_receive_message_length", 64 << 20)])
        stack.callback(self.channel.close)
        self.ext = ext_grpc.ModelMeshExtensionsStub(self.channel)
        self.mm = mm_grpc.ModelMeshStub(self.channel)

    def wait_serving(self, timeout_s: float = 300) -> float:
        """Seconds from process start until the first sidecar answers."""
        deadline = time.monotonic() + timeout_s
        while not serving(self.address):
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} did not start (exit code {self.proc.poll()})")
            time.sleep(0.02)
        return time.perf_counter() - self.started

    def rss(self) -> int:
        return psutil.Process(self.proc.pid).memory_info().rss

    def total(self, address: str | None = None) -> int:
        if address is None or address == self.address:
            return self.ext.listModels(ext.ListModelsRequest(pageSize=1), timeout=60).totalModels
        with grpc.insecure_channel(address) as channel:
            return ext_grpc.ModelMeshExtensionsStub(channel).listModels(ext.ListModelsRequest(pageSize=1), timeout=60).totalModels


def pct(samples: list[float]) -> tuple[float, float]:
    arr = np.array(samples) * 1e3
    return float(np.percentile(arr, 50)), float(np.percentile(arr, 99))


def copies(sidecar: Sidecar, model_id: str) -> list[str]:
    status = sidecar.mm.getModelStatus(mm.GetStatusRequest(modelId=model_id), timeout=10)
    return sorted(c.location for c in status.modelCopyInfos if c.copyStatus == mm.ModelStatusInfo.LOADED)


def bench_forward(args, root: Path, etcd: str) -> None:
    with ExitStack() as stack:
        a = Sidecar(stack, etcd, "fwd", "a", root, env=NO_COPY_SCALING)
        b = Sidecar(stack, etcd, "fwd", "b", root, env=NO_COPY_SCALING)
        a.wait_serving(), b.wait_serving()
        model = make_dense_model(root / "fwd-model" / "model.onnx", width=64, layers=2)
        a.mm.registerModel(
            mm.RegisterModelRequest(modelId="fwd", modelInfo=mm.ModelInfo(type="onnx", path=str(model.parent)),
                                    loadNow=True, sync=True), timeout=60)
        deadline = time.monotonic() + 30
        while copies(b, "fwd") != ["a-0"]:  # B's view knows where the copy is
            if time.monotonic() > deadline:
                raise RuntimeError(f"B does not see A's copy: {copies(b, 'fwd')}")
            time.sleep(0.05)
        inp = triton.InferInput("x", [1, 64], "FP32")
        inp.set_data_from_numpy(np.random.default_rng(0).standard_normal((1, 64)).astype(np.float32))
        clients = {"local (to A)": triton.InferenceServerClient(a.address),
                   "forwarded (B->A)": triton.InferenceServerClient(b.address)}
        outputs = {name: client.infer("fwd", [inp]).as_numpy("y") for name, client in clients.items()}
        np.testing.assert_array_equal(*outputs.values())
        for client in clients.values():  # warm up: connections, peer channel, ORT arenas
            for _ in range(200):
                client.infer("fwd", [inp])
        samples: dict[str, list[float]] = {k: [] for k in clients}
        per_round = max(1, args.requests // args.rounds)
        for _ in range(args.rounds):
            for name, client in clients.items():
                for _ in range(per_round):
                    t0 = time.perf_counter()
                    client.infer("fwd", [inp])
                    samples[name].append(time.perf_counter() - t0)
        where = copies(a, "fwd")
        if where != ["a-0"]:
            raise RuntimeError(f"the model gained copies during the run ({where}): B did not only forward")
        stats = {k: pct(v) for k, v in samples.items()}
        print(f"(a) peer forward: {per_round * args.rounds} requests each, {args.rounds} interleaved rounds, "
              f"dense 64x64x2 FP32, tritonclient.grpc; 2 `mmesh up` processes, one copy (on A) before and after")
        for name, (p50, p99) in stats.items():
            print(f"  {name:18s} p50 {p50:7.3f} ms   p99 {p99:7.3f} ms")
        (l50, l99), (f50, f99) = stats["local (to A)"], stats["forwarded (B->A)"]
        verdict = "met" if f50 / l50 <= 2.2 else "MISSED"
        print(f"  ratio forwarded/local  p50 {f50 / l50:.2f}  p99 {f99 / l99:.2f}   (target p50 <= 2.2: {verdict})")


async def _instance_endpoints(etcd: str, prefix: str) -> list[str]:
    client = connect_client(etcd)
    try:
        records, _ = await EtcdTable(client, prefix, "instances", InstanceRecord.from_json).list()
    finally:
        await client.close()
    return sorted(r.endpoint for r in records)


def bench_scale(args, root: Path, etcd: str) -> None:
    n = args.models
    with ExitStack() as stack:
        if args.layout == "one-process":
            procs = [Sidecar(stack, etcd, "scale", "s", root, instances=3)]
            procs[0].wait_serving()
            deadline = time.monotonic() + 60
            while len(endpoints := asyncio.run(_instance_endpoints(etcd, "scale"))) < 3:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"only {endpoints} registered")
                time.sleep(0.1)
            views = [(procs[0], e) for e in endpoints]
            layout = "`mmesh up --instances 3`: one process, three sidecars (three views) in it"
        else:
            procs = [Sidecar(stack, etcd, "scale", f"s{k}", root) for k in range(3)]
            for p in procs:
                p.wait_serving()
            views = [(p, p.address) for p in procs]
            layout = "three `mmesh up` processes, one sidecar (one view) each"
        time.sleep(2.0)  # let start-up allocations settle before the baseline
        rss_before = [p.rss() for p in procs]
        entry = procs[0]
        # who burns the CPU while registering: the sidecar processes, etcd, this client
        etcd_proc = next(c for c in psutil.Process().children() if c.name() == "etcd")
        cpu_of = {**{p.name: psutil.Process(p.proc.pid) for p in procs}, "etcd": etcd_proc, "client": psutil.Process()}
        cpu_before = {k: sum(v.cpu_times()[:2]) for k, v in cpu_of.items()}

        started = time.perf_counter()
        for start in range(0, n, args.batch):
            batch = [
                mm.RegisterModelRequest(modelId=f"model-{i:06d}", modelInfo=mm.ModelInfo(type="onnx", path=f"/models/m{i % 97}"))
                for i in range(start, min(n, start + args.batch))
            ]
            response = entry.ext.registerModels(ext.RegisterModelsRequest(models=batch), timeout=600)
            bad = [r for r in response.results if r.code != "OK"]
            if bad:
                raise RuntimeError(f"registration failed: {bad[:3]}")
        registered = time.perf_counter() - started
        cpu = {k: sum(v.cpu_times()[:2]) - cpu_before[k] for k, v in cpu_of.items()}
        deadline = time.monotonic() + 600
        for proc, address in views:
            while proc.total(address) < n:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"view at {address} stuck at {proc.total(address)} of {n}")
                time.sleep(0.05)
        everywhere = time.perf_counter() - started
        time.sleep(2.0)
        rss_after = [p.rss() for p in procs]

        print(f"(b) scale: {n:,} models, bulk registerModels in batches of {args.batch:,} through one sidecar; "
              f"mesh of {layout}")
        print(f"  registration   {n / registered:9,.0f} models/s   ({registered:.1f} s until the last batch returned; "
              f"target >= 1,000/s: {'met' if n / registered >= 1000 else 'MISSED'})")
        print(f"                 {n / everywhere:9,.0f} models/s   ({everywhere:.1f} s until all 3 views held {n:,})")
        print(f"                 CPU seconds while registering ({os.cpu_count()} CPUs, {registered:.1f} s wall): "
              + ", ".join(f"{k} {v:.1f}" for k, v in cpu.items()))
        views_per_proc = 3 // len(procs)
        per_view = []
        for p, before, after in zip(procs, rss_before, rss_after):
            growth = (after - before) / n
            per_view.append(growth / views_per_proc)
            note = " (receives the registrations)" if p is entry else ""
            shared = f" / {views_per_proc} views = {growth / views_per_proc:,.0f} bytes/model/view" if views_per_proc > 1 else ""
            print(f"  RSS {p.name:10s} {before / 2**20:7.1f} -> {after / 2**20:7.1f} MiB: {growth:6,.0f} bytes/model{shared}{note}")
        worst = max(per_view)
        print(f"  RSS growth per model per view: max {worst:,.0f} bytes (target <= 2,048: {'met' if worst <= 2048 else 'MISSED'})")

        # a new sidecar process: first against an empty registry (the cost of any start), then joining this mesh
        empty = Sidecar(stack, etcd, "scale-empty", "empty", root)
        empty_serving = empty.wait_serving()
        time.sleep(1.0)
        empty_rss = empty.rss()
        late = Sidecar(stack, etcd, "scale", "late", root)
        late_serving = late.wait_serving(600)
        while late.total() < n:
            time.sleep(0.02)
        late_view = time.perf_counter() - late.started
        time.sleep(1.0)
        late_rss = late.rss()
        print(f"  new sidecar    {late_serving:6.2f} s from process start to serving, {late_view:.2f} s to totalModels == {n:,} "
              f"(same start, empty registry: {empty_serving:.2f} s; difference {late_view - empty_serving:.2f} s)")
        print(f"                 its RSS {late_rss / 2**20:.1f} MiB vs {empty_rss / 2**20:.1f} MiB empty: "
              f"{(late_rss - empty_rss) / n:,.0f} bytes/model for a view built from a listing")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=2000, help="requests per target in (a), split in rounds")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--models", type=int, default=100_000, help="models registered in (b)")
    parser.add_argument("--batch", type=int, default=1000, help="models per registerModels call")
    parser.add_argument("--layout", choices=("processes", "one-process"), default="processes")
    parser.add_argument("--skip-forward", action="store_true")
    parser.add_argument("--skip-scale", action="store_true")
    args = parser.parse_args()
    print(f"bench_distributed: {os.cpu_count()} CPUs, python {sys.version.split()[0]}, {time.strftime('%Y-%m-%d %H:%M')}")
    with tempfile.TemporaryDirectory(prefix="mmesh-bench-") as tmp, EtcdProcess(data_dir=Path(tmp) / "etcd") as etcd:
        root = Path(tmp)
        if not args.skip_forward:
            bench_forward(args, root, etcd.endpoint)
        if not args.skip_scale:
            bench_scale(args, root, etcd.endpoint)


if __name__ == "__main__":
    main()
