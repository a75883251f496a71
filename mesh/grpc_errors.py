"""The single place where mesh errors become gRPC statuses; each external
call is timed under ModelMesh's `modelmesh_api_request_milliseconds` by
`MeshMetrics.api_call`, which the REST front end uses too."""

from __future__ import annotations

import logging
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
    try:
        with metrics.api_call(method):
            return await work
    except MeshError as exc:
        await context.abort(exc.code, exc.message)
        raise  # unreachable: abort raises
    except grpc.aio.AbortError:
        raise
    except Exception as exc:
        log.exception("%s failed", method)
        await context.abort(grpc.StatusCode.INTERNAL, f"internal error: {exc!r}")
        raise
