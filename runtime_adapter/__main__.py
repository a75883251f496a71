"""Run the adapter as its own process: ``python -m runtime_adapter --listen unix:///tmp/mmesh/grpc.sock``.

Stops cleanly on SIGTERM/SIGINT (in-flight calls get a short grace period).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
from pathlib import Path

from runtime_adapter.factory import build_repository
from runtime_adapter.server import build_server


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m runtime_adapter")
    parser.add_argument("--listen", default=os.environ.get("MMESH_RUNTIME_LISTEN", "unix:///tmp/mmesh/grpc.sock"))
    parser.add_argument("--capacity-bytes", type=int, default=int(os.environ.get("MMESH_RUNTIME_CAPACITY_BYTES", 0)))
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default=os.environ.get("MMESH_DEVICE", "auto"))
    parser.add_argument("--intra-op-threads", type=int, default=1)
    parser.add_argument("--log-level", default="INFO")
    return parser.parse_args(argv)


async def serve(args: argparse.Namespace) -> None:
    if args.listen.startswith("unix://"):
        sock = Path(args.listen.removeprefix("unix://"))
        sock.parent.mkdir(parents=True, exist_ok=True)
        sock.unlink(missing_ok=True)
    repository = build_repository(
        args.capacity_bytes or None, device=args.device, intra_op_threads=args.intra_op_threads
    )
    server = build_server(repository, args.listen)
    await server.start()
    logging.getLogger("runtime_adapter").info("runtime adapter listening on %s", args.listen)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(grace=2)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    asyncio.run(serve(args))


if __name__ == "__main__":
    main()
