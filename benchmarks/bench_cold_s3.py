"""Cold start from S3: a registered model that lives in an S3-compatible store,
time to its first response through the mesh, against the bare minimum a
hand-written loader would do in the same run.

  mesh:     register s3://bucket/key (storage-config key) → first tritonclient
            infer: puller download + measured ONNX Runtime load + the request.
  baseline: a fresh Python process: boto3 `download_file` (its default
            parallel transfer) + `InferenceSession` + one run.

Both read the same objects from one moto S3 server on loopback (a new object
key per repetition, so the mesh's content-addressed cache never hits) and the
sidecar runs in its own process (`mmesh up`). Prints the ratio per size
(target <= 1.2) and the download MB/s of both.

Usage: python benchmarks/bench_cold_s3.py [--sizes 50,500] [--reps 3]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from contextlib import ExitStack
from pathlib import Path

import grpc
import numpy as np
import tritonclient.grpc as triton

from bench_foundation import start_mesh
from mesh.etcd_process import EtcdProcess
from mesh.examples import make_dense_model
from protos import model_mesh_pb2 as mm
from protos import model_mesh_pb2_grpc as mm_grpc

WIDTH = 2048  # 16 MiB per layer
KEY, SECRET = "bench-key", "bench-secret"

BASELINE = textwrap.dedent(
    """
    import json, sys, tempfile, time
    import boto3, numpy as np, onnxruntime as ort
    from botocore.config import Config
    endpoint, bucket, key, width = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="bench-key",
                      aws_secret_access_key="bench-secret", config=Config(s3={"addressing_style": "path"}))
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        s3.download_file(bucket, key, tmp + "/model.onnx")
        t1 = time.perf_counter()
        opts = ort.SessionOptions(); opts.intra_op_num_threads = 1; opts.inter_op_num_threads = 1
        session = ort.InferenceSession(tmp + "/model.onnx", sess_options=opts, providers=["CPUExecutionProvider"])
        session.run(None, {"x": np.ones((1, width), np.float32)})
        t2 = time.perf_counter()
    print(json.dumps({"download_s": t1 - t0, "total_s": t2 - t0}))
    """
)


def first_response_s(address: str, model_id: str, path: str) -> float:
    """Register (no load) and time the first inference, which loads the model."""
    stub = mm_grpc.ModelMeshStub(grpc.insecure_channel(address))
    stub.registerModel(
        mm.RegisterModelRequest(modelId=model_id, modelInfo=mm.ModelInfo(type="onnx", path=path, key="bench")),
        timeout=30,
    )
    client = triton.InferenceServerClient(address)
    x = triton.InferInput("x", [1, WIDTH], "FP32")
    x.set_data_from_numpy(np.ones((1, WIDTH), np.float32))
    t0 = time.perf_counter()
    client.infer(model_id, [x], client_timeout=600)
    elapsed = time.perf_counter() - t0
    client.close()
    stub.unregisterModel(mm.UnregisterModelRequest(modelId=model_id), timeout=30)
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="50,500", help="model sizes in MB (comma-separated)")
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    from moto.server import ThreadedMotoServer

    with tempfile.TemporaryDirectory(prefix="mmesh-bench-") as tmp, ExitStack() as stack:
        root = Path(tmp)
        moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        moto.start()
        stack.callback(moto.stop)
        host, port = moto.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        import boto3
        from botocore.config import Config

        s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id=KEY,
                          aws_secret_access_key=SECRET, config=Config(s3={"addressing_style": "path"}))
        bucket = "bench"
        s3.create_bucket(Bucket=bucket)
        config_dir = root / "storage-config"
        config_dir.mkdir()
        (config_dir / "bench").write_text(json.dumps({
            "type": "s3", "access_key_id": KEY, "secret_access_key": SECRET, "endpoint_url": endpoint,
            "region": "us-east-1", "bucket": bucket,
        }))
        os.environ["MMESH_STORAGE_CONFIG_DIR"] = str(config_dir)  # inherited by `mmesh up`
        etcd = stack.enter_context(EtcdProcess())
        mesh = start_mesh(stack, etcd.endpoint, "inprocess", "s3", root)

        # warm-up: the sidecar's first pull and load pay one-time costs (boto3
        # client and imports, ONNX Runtime's start-up) that the baseline's
        # timer also leaves out
        warm = make_dense_model(root / "warm" / "model.onnx", width=WIDTH, layers=1)
        s3.upload_file(str(warm), bucket, "models/warm/model.onnx")
        first_response_s(mesh, "warm-up", f"s3://{bucket}/models/warm/model.onnx")

        print(f"cold start from S3 (moto on loopback), dense {WIDTH}-wide ONNX, median of {args.reps}")
        for size_mb in (int(s) for s in args.sizes.split(",")):
            layers = max(1, round(size_mb * 1e6 / (WIDTH * WIDTH * 4)))
            model = make_dense_model(root / f"m{size_mb}" / "model.onnx", width=WIDTH, layers=layers)
            mb = model.stat().st_size / 1e6
            mesh_s, base_s, base_dl = [], [], []
            for rep in range(args.reps):
                key = f"models/{size_mb}-{rep}-{uuid.uuid4().hex[:6]}/model.onnx"
                s3.upload_file(str(model), bucket, key)
                mesh_s.append(first_response_s(mesh, f"cold-{size_mb}-{rep}", f"s3://{bucket}/{key}"))
                out = subprocess.run(
                    [sys.executable, "-c", BASELINE, endpoint, bucket, key, str(WIDTH)],
                    capture_output=True, text=True, check=True,
                )
                result = json.loads(out.stdout)
                base_s.append(result["total_s"])
                base_dl.append(result["download_s"])
                s3.delete_object(Bucket=bucket, Key=key)
            m, b = float(np.median(mesh_s)), float(np.median(base_s))
            dl = float(np.median(base_dl))
            print(
                f"  {mb:6.1f} MB: mesh first response {m * 1e3:8.0f} ms   boto3 download + load + run {b * 1e3:8.0f} ms"
                f"   ratio {m / b:.2f} (target <= 1.2)   boto3 download {mb / dl:6.0f} MB/s"
                f"   mesh end to end {mb / m:6.0f} MB/s"
            )
            print(f"          per rep mesh {[round(v, 2) for v in mesh_s]} s, baseline {[round(v, 2) for v in base_s]} s")
            model.unlink()


if __name__ == "__main__":
    main()
