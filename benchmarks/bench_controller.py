"""Controller benchmark: how soon an InferenceService's status says Loaded,
with mmesh's push-fed status next to ModelMesh's polling, in one run.

Both variants run the same controller against the same loopback Kubernetes
REST server (tests/kube_api.py) and a real etcd-backed mesh sidecar (in this
process, ONNX in-process runtime, models on a PVC-style local dir):

  push  mmesh as shipped: the mesh's etcd tables are watched, so a copy that
        finishes loading queues the InferenceService at once.
  poll  ModelMesh's behaviour, emulated: no mesh watch; a reconcile that finds
        the model not yet Loaded (or failed) requeues it after 1 s
        (modelmesh-serving's predictor controller).

N InferenceServices (distinct small dense ONNX models) are applied one after
another, each once the one before is Loaded; a sampler reads the status every
2 ms from the API server's store. Prints, per variant, apply→Loaded and the
status lag (the copy's loaded time in the registry → status Loaded), p50/p90/
max, the poll/push ratios, and status writes per InferenceService (API load).

Usage: python benchmarks/bench_controller.py [--isvcs 30] [--rounds 2]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mesh.controller.controller import Controller  # noqa: E402
from mesh.controller.reconciler import ISVC  # noqa: E402
from mesh.controller.settings import ControllerSettings  # noqa: E402
from mesh.etcd_process import EtcdProcess  # noqa: E402
from mesh.examples import make_dense_model  # noqa: E402
from mesh.settings import MeshSettings  # noqa: E402
from mesh.sidecar import Sidecar  # noqa: E402
from tests.kube_api import FakeKubeApi  # noqa: E402

NS = "bench"
POLL_S = 1.0  # modelmesh-serving requeues a Loading predictor every second
ROOT = Path(__file__).resolve().parent.parent


def isvc(name: str, uri: str) -> dict:
    return {
        "apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService",
        "metadata": {"name": name, "namespace": NS, "annotations": {"serving.kserve.io/deploymentMode": "ModelMesh"}},
        "spec": {"predictor": {"model": {"modelFormat": {"name": "onnx"}, "storageUri": uri}}},
    }


def as_modelmesh_polls(controller: Controller) -> None:
    """Emulate ModelMesh: no mesh watch; requeue after 1 s until Loaded."""
    controller.state._on_change = lambda name: None  # the push, cut
    reconcile = controller.reconciler.reconcile_isvc

    async def polling(name: str) -> None:
        await reconcile(name)
        obj = controller.informers["isvcs"].get(f"{NS}/{name}")
        if obj is not None and controller.state.vmodel_status(name).activeModelStatus.status != 3:  # not LOADED
            controller.queue.add_after(ISVC + name, POLL_S)

    controller.reconciler.reconcile_isvc = polling  # type: ignore[method-assign]


def active_state(kube: FakeKubeApi, name: str) -> str:
    obj = kube.get("inferenceservices", name, NS) or {}
    return (((obj.get("status") or {}).get("modelStatus") or {}).get("states") or {}).get("activeModelState", "")


def run_variant(variant: str, round_no: int, n: int, models: Path, etcd: EtcdProcess, loop: asyncio.AbstractEventLoop) -> tuple[list[float], list[float], int]:
    def on_loop(coro, timeout: float = 120):
        return asyncio.run_coroutine_threadsafe(coro, loop).result(timeout)

    prefix = f"bench-{variant}-{round_no}"
    runtime = yaml.safe_load((ROOT / "deploy" / "runtimes" / "mmesh-onnx.yaml").read_text())
    with FakeKubeApi(bookmark_interval_s=1.0) as kube:
        kube.apply("clusterservingruntimes", runtime)
        settings = MeshSettings(
            instance_id=f"{prefix}-0", grpc_port=0, metrics_port=0, rest_port=0, probe_port=0,
            etcd_endpoints=etcd.endpoint, kv_prefix=prefix, device="cpu", labels="rt:mmesh-onnx",
            pvc_mounts_dir=str(models.parent),
        )
        sidecar = on_loop(Sidecar(settings).start())
        controller_settings = ControllerSettings(
            namespace=NS, identity="bench", etcd_endpoints=etcd.endpoint, kv_prefix=prefix,
            mesh_endpoint=sidecar.address, health_port=0, watch_timeout_s=30,
        )

        async def start() -> Controller:
            controller = await Controller(controller_settings, kube.api_client()).start()
            if variant == "poll":
                as_modelmesh_polls(controller)
            return controller

        controller = on_loop(start())
        while not controller.elector.is_leader:
            time.sleep(0.01)
        latencies, lags = [], []
        for i in range(n):  # one at a time: each latency is one model's, not a queue's
            name = f"m{i:03d}"
            applied = time.time()
            kube.apply("inferenceservices", isvc(name, f"pvc://{models.name}/{name}"))
            deadline = time.monotonic() + 30
            while active_state(kube, name) != "Loaded":
                if time.monotonic() > deadline:
                    raise SystemExit(f"{variant}: {name} never reached Loaded")
                time.sleep(0.002)
            seen = time.time()
            record = sidecar.view.get(sidecar.vmodel_view.get(name).active)
            loaded_at = max(record.instances.values()) / 1000  # when the copy finished loading (ms epoch)
            latencies.append(seen - applied)
            lags.append(seen - loaded_at)
        writes = kube.count("PUT", "inferenceservices", "status")
        on_loop(controller.stop())
        on_loop(sidecar.stop(grace_s=0.5))
    return latencies, lags, writes


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--isvcs", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    with tempfile.TemporaryDirectory() as tmp, EtcdProcess() as etcd:
        models = Path(tmp) / "models"
        for i in range(args.isvcs):
            make_dense_model(models / f"m{i:03d}" / "model.onnx", width=64, layers=2, seed=i)
        results: dict[str, list[float]] = {"push": [], "poll": []}
        lags: dict[str, list[float]] = {"push": [], "poll": []}
        writes: dict[str, int] = {"push": 0, "poll": 0}
        for round_no in range(args.rounds):  # interleaved, so machine noise hits both alike
            for variant in ("push", "poll"):
                latencies, lag, count = run_variant(variant, round_no, args.isvcs, models, etcd, loop)
                results[variant] += latencies
                lags[variant] += lag
                writes[variant] += count
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)

    def row(variant: str, values: dict[str, list[float]]) -> str:
        ms = np.array(values[variant]) * 1000
        return f"  {variant:5s} p50 {np.percentile(ms, 50):7.1f} ms  p90 {np.percentile(ms, 90):7.1f} ms  max {ms.max():7.1f} ms"

    print(f"{args.isvcs} InferenceServices applied one after another, {args.rounds} rounds per variant")
    print("apply → status Loaded:")
    print(row("push", results))
    print(row("poll", results))
    print("copy loaded → status Loaded (the status lag):")
    print(row("push", lags))
    print(row("poll", lags))
    for variant in ("push", "poll"):
        print(f"  {variant:5s} status writes per InferenceService: {writes[variant] / (args.rounds * args.isvcs):.2f}")
    p50 = np.percentile(results["poll"], 50) / np.percentile(results["push"], 50)
    lag50 = np.percentile(lags["poll"], 50) / np.percentile(lags["push"], 50)
    print(f"poll/push: apply→Loaded p50 {p50:.1f}x, status lag p50 {lag50:.1f}x")


if __name__ == "__main__":
    main()
