"""Routing overhead and cold start of one sidecar, measured side by side.

Every server runs in its own process (the client's GIL must not slow them):
  (a) `mmesh up` with the ONNX runtime in-process,
  (b) `mmesh up --runtime uds` (adapter process behind a Unix socket),
  (c) the runtime adapter's own v2 gRPC server, called directly.
One tritonclient.grpc client sends the same request to each, in interleaved
rounds so that machine noise hits all three alike; we print p50/p99 and the
ratios a/c and b/c (target a/c <= 1.2).

Cold start: time to the first response for a registered, unloaded model,
divided by (onnxruntime.InferenceSession creation + one run) timed inside a
fresh Python process (target <= 1.2). Models are generated here.

Usage: python benchmarks/bench_foundation.py [--requests 2000] [--cold-reps 5]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import textwrap
import time
from contextlib import ExitStack
from pathlib import Path

import grpc
import numpy as np
import tritonclient.grpc as triton

from mesh.etcd_process import EtcdProcess, free_port
from mesh.examples import make_dense_model
from protos import grpc_predict_v2_pb2 as v2
from protos import grpc_predict_v2_pb2_grpc as v2_grpc
from protos import model_mesh_pb2 as mm
from protos import model_mesh_pb2_grpc as mm_grpc
from protos import model_runtime_pb2 as spi
from protos import model_runtime_pb2_grpc as spi_grpc


def wait_serving(address: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    stub = v2_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(address))
    while time.monotonic() < deadline:
        try:
            if stub.ServerLive(v2.ServerLiveRequest(), timeout=1).live:
                return
        except grpc.RpcError:
            time.sleep(0.1)
    raise TimeoutError(address)


def start_mesh(
    stack: ExitStack, etcd: str, runtime: str, name: str, data_dir: Path, extra_args: tuple[str, ...] = ()
) -> str:
    """One `mmesh up` process; REST and probes off unless `extra_args` turn them on."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "mesh.cli", "up", "--etcd", etcd, "--grpc-port", str(port), "--metrics-port", "0",
         "--rest-port", "0", "--probe-port", "0",
         "--runtime", runtime, "--no-examples", "--instance-id", name, "--kv-prefix", f"bench-{name}",
         "--data-dir", str(data_dir / name), *extra_args],
        stdout=subprocess.DEVNULL,
    )
    stack.callback(lambda: (proc.terminate(), proc.wait(20)))
    address = f"127.0.0.1:{port}"
    wait_serving(address)
    return address


def register(address: str, model_id: str, path: Path) -> None:
    stub = mm_grpc.ModelMeshStub(grpc.insecure_channel(address))
    stub.registerModel(
        mm.RegisterModelRequest(modelId=model_id, modelInfo=mm.ModelInfo(type="onnx", path=str(path))), timeout=60
    )


def percentiles(samples: list[float]) -> tuple[float, float]:
    arr = np.array(samples) * 1e3
    return float(np.percentile(arr, 50)), float(np.percentile(arr, 99))


def latency_round(client: triton.InferenceServerClient, model: str, inputs, n: int, headers=None) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        client.infer(model, inputs, headers=headers)
        out.append(time.perf_counter() - t0)
    return out


BARE_LOAD = textwrap.dedent(
    """
    import json, sys, time
    import numpy as np
    import onnxruntime as ort
    opts = ort.SessionOptions(); opts.intra_op_num_threads = 1; opts.inter_op_num_threads = 1
    t0 = time.perf_counter()
    s = ort.InferenceSession(sys.argv[1], sess_options=opts, providers=["CPUExecutionProvider"])
    s.run(None, {"x": np.ones((1, int(sys.argv[2])), np.float32)})
    print(json.dumps(time.perf_counter() - t0))
    """
)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=2000, help="requests per target (split in rounds)")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--cold-reps", type=int, default=5)
    parser.add_argument("--cold-width", type=int, default=1024, help="dense width of the cold-start model")
    parser.add_argument("--cold-layers", type=int, default=8)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="mmesh-bench-") as tmp, ExitStack() as stack:
        root = Path(tmp)
        hot = make_dense_model(root / "hot" / "model.onnx", width=64, layers=2)
        etcd = stack.enter_context(EtcdProcess())
        mesh_a = start_mesh(stack, etcd.endpoint, "inprocess", "a", root)
        mesh_b = start_mesh(stack, etcd.endpoint, "uds", "b", root)
        adapter_port = free_port()
        # (c): the adapter's own server on TCP, like a client would reach a runtime
        direct = subprocess.Popen(
            [sys.executable, "-m", "runtime_adapter", "--listen", f"127.0.0.1:{adapter_port}", "--device", "cpu",
             "--log-level", "WARNING"]
        )
        stack.callback(lambda: (direct.terminate(), direct.wait(20)))
        mesh_c = f"127.0.0.1:{adapter_port}"
        wait_serving(mesh_c)
        spi_stub = spi_grpc.ModelRuntimeStub(grpc.insecure_channel(mesh_c))
        spi_stub.runtimeStatus(spi.RuntimeStatusRequest(), timeout=10)
        spi_stub.loadModel(spi.LoadModelRequest(modelId="hot", modelType="onnx", modelPath=str(hot)), timeout=60)
        for address in (mesh_a, mesh_b):
            register(address, "hot", hot.parent)

        x = np.random.default_rng(0).standard_normal((1, 64)).astype(np.float32)
        inp = triton.InferInput("x", [1, 64], "FP32")
        inp.set_data_from_numpy(x)
        targets = {"a_mesh_inprocess": mesh_a, "b_mesh_uds": mesh_b, "c_runtime_direct": mesh_c}
        clients = {k: triton.InferenceServerClient(v) for k, v in targets.items()}
        for client in clients.values():  # warm up: loads, connections, ORT arenas
            latency_round(client, "hot", [inp], 200)
        samples: dict[str, list[float]] = {k: [] for k in targets}
        per_round = max(1, args.requests // args.rounds)
        for _ in range(args.rounds):
            for name, client in clients.items():
                samples[name] += latency_round(client, "hot", [inp], per_round)
        stats = {name: percentiles(s) for name, s in samples.items()}
        c50, c99 = stats["c_runtime_direct"]
        print(f"routing overhead, {per_round * args.rounds} requests each, dense 64x64x2 FP32, tritonclient.grpc")
        for name, (p50, p99) in stats.items():
            print(f"  {name:18s} p50 {p50:7.3f} ms   p99 {p99:7.3f} ms")
        print(f"  ratio a/c p50 {stats['a_mesh_inprocess'][0] / c50:.2f}  p99 {stats['a_mesh_inprocess'][1] / c99:.2f}   (target p50 <= 1.2)")
        print(f"  ratio b/c p50 {stats['b_mesh_uds'][0] / c50:.2f}  p99 {stats['b_mesh_uds'][1] / c99:.2f}")

        # cold start
        cold_model = make_dense_model(root / "cold" / "model.onnx", width=args.cold_width, layers=args.cold_layers)
        mb = cold_model.stat().st_size / 1e6
        xc = triton.InferInput("x", [1, args.cold_width], "FP32")
        xc.set_data_from_numpy(np.ones((1, args.cold_width), np.float32))
        mesh_cold, bare = [], []
        for rep in range(args.cold_reps):
            model_id = f"cold-{rep}"
            register(mesh_a, model_id, cold_model.parent)
            t0 = time.perf_counter()
            clients["a_mesh_inprocess"].infer(model_id, [xc])
            mesh_cold.append(time.perf_counter() - t0)
            out = subprocess.run(
                [sys.executable, "-c", BARE_LOAD, str(cold_model), str(args.cold_width)],
                capture_output=True, text=True, check=True,
            )
            bare.append(json.loads(out.stdout))
        m, b = float(np.median(mesh_cold)) * 1e3, float(np.median(bare)) * 1e3
        print(f"cold start, {mb:.1f} MB model, median of {args.cold_reps}")
        print(f"  mesh first response {m:8.1f} ms   bare session+run {b:8.1f} ms   ratio {m / b:.2f}   (target <= 1.2)")


if __name__ == "__main__":
    main()
