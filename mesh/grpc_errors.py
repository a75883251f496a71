"""The single place where mesh errors become gRPC statuses, and where each
external call is timed under ModelMesh's `modelmesh_api_request_milliseconds`."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable
from typing import TypeVar

import grpc

from mesh.errors import MeshError
from mesh.metrics import MeshMetrics

log = logging.getLogger(__name__)
T = TypeVar("T")


async def serve_call(
    context: grpc.aio.ServicerContext, metrics: MeshMetrics, method: str, work: Awaitable[T]
) -> T:
    started = time.perf_counter()
    code = grpc.StatusCode.OK
    try:
        return await work
    except MeshError as exc:
        code = exc.code
        await context.abort(exc.code, exc.message)
        raise  # unreachable: abort raises
    except Exception as exc:
        if isinstance(exc, grpc.aio.AbortError):
            raise
        code = grpc.StatusCode.INTERNAL
        log.exception("%s failed", method)
        await context.abort(grpc.StatusCode.INTERNAL, f"internal error: {exc!r}")
        raise
    finally:
        metrics.api_request_ms.labels(method, code.name).observe((time.perf_counter() - started) * 1e3)
