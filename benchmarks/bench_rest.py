"""REST v2 against gRPC on the same sidecar, and JSON against the binary
tensor extension for a 1 MB tensor.

One `mmesh up` process (in-process ONNX runtime, REST on), started by
`bench_foundation.start_mesh` so the sidecar has the machine's other cores to
itself. The benchmark process is the client: tritonclient.grpc and
tritonclient.http (what a user would run; their own encode/decode cost is in
the figures, as it is in a user's latency), one request at a time, in
interleaved rounds so that machine noise hits every target alike.

1. Small request (dense 64x64x2 FP32, input [1,64]): gRPC, REST with JSON
   tensors, REST with binary tensors; prints p50/p99 and REST p50 / gRPC p50.
2. 1 MB tensor (Identity FP32 [1, 262144]): REST JSON, REST binary, gRPC;
   prints p50s and JSON / binary.

Usage: python benchmarks/bench_rest.py [--requests 1500] [--rounds 10] [--big-requests 40]
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from contextlib import ExitStack
from datetime import datetime, timezone
from pathlib import Path

import httpx
import numpy as np
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton_http

from bench_foundation import percentiles, register, start_mesh
from mesh.etcd_process import EtcdProcess, free_port
from mesh.examples import make_dense_model, make_identity_model

BIG = 262144  # FP32 elements: 1 MiB


def wait_rest(port: int, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/v2/health/ready", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"REST port {port}")


def targets(grpc_client, http_client, model: str, x: np.ndarray, output: str):
    """name -> a zero-argument call doing one inference that way."""
    g = triton_grpc.InferInput("x", list(x.shape), "FP32")
    g.set_data_from_numpy(x)
    calls = {"grpc": lambda: grpc_client.infer(model, [g])}
    for name, binary in (("rest_json", False), ("rest_binary", True)):
        h = triton_http.InferInput("x", list(x.shape), "FP32")
        h.set_data_from_numpy(x, binary_data=binary)
        out = [triton_http.InferRequestedOutput(output, binary_data=binary)]
        calls[name] = lambda h=h, out=out: http_client.infer(model, [h], outputs=out)
    return calls


def check_same(calls, output: str, want: np.ndarray) -> None:
    for name, call in calls.items():
        got = call().as_numpy(output)
        np.testing.assert_allclose(got, want, rtol=1e-6, err_msg=name)


def run_rounds(calls, per_round: int, rounds: int) -> dict[str, list[float]]:
    samples: dict[str, list[float]] = {name: [] for name in calls}
    order = list(calls)
    for r in range(rounds):
        for name in order[r % len(order):] + order[: r % len(order)]:  # rotate who goes first
            call = calls[name]
            for _ in range(per_round):
                t0 = time.perf_counter()
                call()
                samples[name].append(time.perf_counter() - t0)
    return samples


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=1500, help="small requests per target (split in rounds)")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--big-requests", type=int, default=40, help="1 MB requests per target (split in rounds)")
    args = parser.parse_args()
    started = time.perf_counter()
    print(
        f"bench_rest: {os.cpu_count()} CPUs, python {platform.python_version()}, "
        f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC"
    )

    with tempfile.TemporaryDirectory(prefix="mmesh-bench-rest-") as tmp, ExitStack() as stack:
        root = Path(tmp)
        dense = make_dense_model(root / "hot" / "model.onnx", width=64, layers=2)
        ident = make_identity_model(root / "ident" / "model.onnx", "FP32")
        etcd = stack.enter_context(EtcdProcess())
        rest_port = free_port()
        address = start_mesh(stack, etcd.endpoint, "inprocess", "rest", root, ("--rest-port", str(rest_port)))
        wait_rest(rest_port)
        register(address, "hot", dense.parent)
        register(address, "ident", ident.parent)
        grpc_client = triton_grpc.InferenceServerClient(address)
        http_client = triton_http.InferenceServerClient(f"127.0.0.1:{rest_port}", network_timeout=120)
        stack.callback(http_client.close)
        stack.callback(grpc_client.close)

        # 1. small request: REST vs gRPC
        x = np.random.default_rng(0).standard_normal((1, 64)).astype(np.float32)
        calls = targets(grpc_client, http_client, "hot", x, "y")
        check_same(calls, "y", calls["grpc"]().as_numpy("y"))
        run_rounds(calls, 100, 1)  # warm up: load, connections, ORT arenas
        per_round = max(1, args.requests // args.rounds)
        stats = {name: percentiles(s) for name, s in run_rounds(calls, per_round, args.rounds).items()}
        g50, g99 = stats["grpc"]
        print(f"small request, dense 64x64x2 FP32 [1,64], {per_round * args.rounds} requests per target, "
              f"{args.rounds} interleaved rounds, one at a time, tritonclient grpc/http")
        for name, (p50, p99) in stats.items():
            print(f"  {name:12s} p50 {p50:7.3f} ms   p99 {p99:7.3f} ms   p50 / grpc p50 {p50 / g50:5.2f}")

        # 2. 1 MB tensor: JSON vs binary over REST (gRPC for reference)
        big = np.random.default_rng(1).standard_normal((1, BIG)).astype(np.float32)
        calls = targets(grpc_client, http_client, "ident", big, "y")
        check_same(calls, "y", big)
        run_rounds(calls, 2, 1)
        rounds = min(args.rounds, args.big_requests)
        per_round = max(1, args.big_requests // rounds)
        big_stats = {name: percentiles(s) for name, s in run_rounds(calls, per_round, rounds).items()}
        print(f"1 MB tensor, Identity FP32 [1,{BIG}] in and out, {per_round * rounds} requests per target, "
              f"{rounds} interleaved rounds")
        for name, (p50, p99) in big_stats.items():
            print(f"  {name:12s} p50 {p50:8.2f} ms   p99 {p99:8.2f} ms")
        json50, bin50 = big_stats["rest_json"][0], big_stats["rest_binary"][0]
        print(f"  REST JSON p50 / REST binary p50 {json50 / bin50:.1f}   "
              f"REST binary p50 / gRPC p50 {bin50 / big_stats['grpc'][0]:.2f}")
    print(f"total {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
