"""Run the adapter as its own process: ``python -m runtime_adapter --listen unix:///tmp/mmesh/grpc.sock``.

``--runtime builtin`` (the default) serves models in this process;
``--runtime mlserver`` / ``triton`` fronts an external v2 server at
``--runtime-endpoint`` that shares ``--models-dir`` with us (see
`runtime_adapter.external`).

Stops cleanly on SIGTERM/SIGINT (in-flight calls get a short grace period).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
from pathlib import Path

from runtime_adapter.external.factory import SERVERS, build_external_repository
from runtime_adapter.factory import build_repository
from runtime_adapter.model_files import build_model_files
from runtime_adapter.repository import ModelRepository
from runtime_adapter.server import build_server


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m runtime_adapter")
    parser.add_argument("--listen", default=os.environ.get("MMESH_RUNTIME_LISTEN", "unix:///tmp/mmesh/grpc.sock"))
    parser.add_argument("--capacity-bytes", type=int, default=int(os.environ.get("MMESH_RUNTIME_CAPACITY_BYTES", 0)))
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default=os.environ.get("MMESH_DEVICE", "auto"))
    parser.add_argument("--intra-op-threads", type=int, default=1)
    parser.add_argument("--log-level", default="INFO")
    parser.add_argument(
        "--runtime", choices=("builtin", *SERVERS), default=os.environ.get("MMESH_RUNTIME_KIND", "builtin"),
        help="builtin: models in this process; otherwise the external server to front",
    )
    parser.add_argument(
        "--runtime-endpoint",
        default=os.environ.get("MMESH_RUNTIME_ENDPOINT", f"127.0.0.1:{os.environ.get('RUNTIME_PORT', '8001')}"),
        help="the external server's v2 gRPC endpoint (ModelMesh's RUNTIME_PORT)",
    )
    parser.add_argument(
        "--models-dir", type=Path, default=_env_path("MMESH_MODELS_DIR", "ROOT_MODEL_DIR") or Path("/models"),
        help="the volume shared with external servers; pulled models are cached in <dir>/_cache",
    )
    parser.add_argument(
        "--runtime-pid", type=int, default=None,
        help="the external server's pid, to measure model sizes (default: found by its port when local)",
    )
    storage = parser.add_argument_group("model storage (the puller)")
    storage.add_argument(
        "--storage-config-dir", type=Path, default=_env_path("STORAGE_CONFIG_DIR", "MMESH_STORAGE_CONFIG_DIR"),
        help="the mounted storage-config secret: one JSON file per storage key",
    )
    storage.add_argument("--pvc-mounts-dir", type=Path, default=Path(os.environ.get("PVC_MOUNTS_DIR", "/pvc_mounts")))
    storage.add_argument("--cache-budget-bytes", type=int, default=0, help="disk budget of the download cache (0: none)")
    storage.add_argument("--pull-deadline-s", type=float, default=600.0, help="a pull's own deadline")
    return parser.parse_args(argv)


def _env_path(*names: str) -> Path | None:
    for name in names:
        if os.environ.get(name):
            return Path(os.environ[name])
    return None


def build(args: argparse.Namespace) -> ModelRepository:
    files = build_model_files(
        args.models_dir,
        storage_config_dir=args.storage_config_dir,
        pvc_mounts_dir=args.pvc_mounts_dir,
        disk_budget_bytes=args.cache_budget_bytes,
        pull_deadline_s=args.pull_deadline_s,
    )
    if args.runtime == "builtin":
        return build_repository(
            args.capacity_bytes or None, device=args.device, intra_op_threads=args.intra_op_threads, files=files
        )
    return build_external_repository(
        args.runtime, args.runtime_endpoint, args.models_dir,
        pid=args.runtime_pid, capacity_bytes=args.capacity_bytes or None, files=files,
    )


async def serve(args: argparse.Namespace) -> None:
    if args.listen.startswith("unix://"):
        sock = Path(args.listen.removeprefix("unix://"))
        sock.parent.mkdir(parents=True, exist_ok=True)
        sock.unlink(missing_ok=True)
    repository = build(args)
    server = build_server(repository, args.listen)
    await server.start()
    logging.getLogger("runtime_adapter").info("runtime adapter listening on %s", args.listen)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(grace=2)
    repository.files.close()


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    asyncio.run(serve(args))


if __name__ == "__main__":
    main()
