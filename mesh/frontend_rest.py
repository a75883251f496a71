"""v2 REST front end of the sidecar (KServe v2 / Open Inference Protocol over
HTTP, with Triton's binary tensor data extension): HTTP in, `DataPlane`
calls out, on the sidecar's own event loop.

Like the gRPC front end it only translates: a REST infer body becomes the
same `ModelInferRequest` the gRPC clients send (mesh/rest_infer.py), routed
by the same `DataPlane.resolve` (vModel names, `mm-model-id` /
`mm-vmodel-id` headers) and answered by the same `infer`/`metadata`/
`model_ready`. `MeshError`s become `{"error": ...}` with their
`http_status` here and nowhere else; calls are timed under the same metric
and method names as gRPC's.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from aiohttp import web

from mesh.dataplane import SERVER_NAME, DataPlane, server_version
from mesh.logs import bind_request, request_id_var
from mesh.errors import InvalidInput, MeshError
from mesh.http_server import error_response, json_errors, json_response
from mesh.metrics import MeshMetrics
from mesh.peers import FORWARDED_HEADER
from mesh.rest_codec import RestFormatError
from mesh.rest_infer import HEADER_LENGTH, parse_infer_request, render_infer_response
from protos import grpc_predict_v2_pb2 as v2
from protos.tensor_codec import TensorCodecError
from runtime_adapter.server import MAX_MESSAGE_BYTES

log = logging.getLogger(__name__)
T = TypeVar("T")

# Above this many bytes, converting between JSON/binary and protobuf runs on a
# worker thread: a 1 MB JSON tensor takes a few hundred milliseconds each way, and
# the loop also serves gRPC, etcd watches and probes.
OFFLOAD_BYTES = 64 * 1024
EXTENSIONS = ["binary_tensor_data"]


async def _convert(size: int, fn: Callable[..., T], *args: Any) -> T:
    """Run a pure conversion inline when small, on a worker thread when large."""
    if size > OFFLOAD_BYTES:
        return await asyncio.to_thread(fn, *args)
    return fn(*args)


def _model(request: web.Request) -> tuple[str, str]:
    """(name, version) from the path; the mesh keeps one version per model,
    so a version is passed through and otherwise ignored."""
    return request.match_info["name"], request.match_info.get("version", "")


class RestFrontend:
    def __init__(self, dataplane: DataPlane, metrics: MeshMetrics, is_ready: Callable[[], bool]) -> None:
        self.dataplane = dataplane
        self.metrics = metrics
        self._is_ready = is_ready

    def app(self) -> web.Application:
        # a body as large as a gRPC message may be
        app = web.Application(client_max_size=MAX_MESSAGE_BYTES, middlewares=[json_errors])
        app.router.add_get("/v2/health/live", self.server_live)
        app.router.add_get("/v2/health/ready", self.server_ready)
        app.router.add_get("/v2", self.server_metadata)
        for model in ("/v2/models/{name}", "/v2/models/{name}/versions/{version}"):
            app.router.add_get(model, self.model_metadata)
            app.router.add_get(f"{model}/ready", self.model_ready)
            app.router.add_post(f"{model}/infer", self.model_infer)
        return app

    async def _serve(self, method: str, work: Awaitable[web.Response], request: web.Request) -> web.Response:
        """The REST twin of `grpc_errors.serve_call`: timed under `method`,
        MeshErrors mapped by their `http_status`; log lines carry the request
        id (`x-request-id`, else a new one; an infer body's `id` replaces it)."""
        bind_request("", request.headers, self.dataplane.instance_id)
        try:
            with self.metrics.api_call(method):
                return await work
        except MeshError as exc:
            return error_response(exc.http_status, exc.message)
        except Exception as exc:
            log.exception("REST %s failed", method)
            return error_response(500, f"internal error: {exc!r}")

    # ---- server -------------------------------------------------------------

    async def server_live(self, request: web.Request) -> web.Response:
        return json_response({"live": True})

    async def server_ready(self, request: web.Request) -> web.Response:
        """200 when ready, a 4xx otherwise, as the v2 REST spec says."""
        ready = self._is_ready()
        return json_response({"ready": ready}, 200 if ready else 400)

    async def server_metadata(self, request: web.Request) -> web.Response:
        return json_response({"name": SERVER_NAME, "version": server_version(), "extensions": EXTENSIONS})

    # ---- models -------------------------------------------------------------

    async def model_ready(self, request: web.Request) -> web.Response:
        async def work() -> web.Response:
            name, _ = _model(request)
            model_id = await self.dataplane.resolve(name, request.headers)
            ready = await self.dataplane.model_ready(model_id)
            return json_response({"name": name, "ready": ready}, 200 if ready else 400)

        return await self._serve("ModelReady", work(), request)

    async def model_metadata(self, request: web.Request) -> web.Response:
        async def work() -> web.Response:
            name, _ = _model(request)
            headers = request.headers
            model_id = await self.dataplane.resolve(name, headers)
            meta = await self.dataplane.metadata(model_id, name or model_id, forwarded=FORWARDED_HEADER in headers)
            return json_response(_metadata_json(meta))

        return await self._serve("ModelMetadata", work(), request)

    async def model_infer(self, request: web.Request) -> web.Response:
        body = await request.read()  # before the timer, as gRPC times from the whole message

        async def work() -> web.Response:
            name, version = _model(request)
            headers = request.headers
            model_id = await self.dataplane.resolve(name, headers)
            self.metrics.request_size.observe(len(body))
            try:
                message, output_format = await _convert(
                    len(body), parse_infer_request, body, headers.get(HEADER_LENGTH), name, version
                )
            except (RestFormatError, TensorCodecError) as exc:
                raise InvalidInput(str(exc)) from exc
            if message.id:
                request_id_var.set(message.id)
            response = await self.dataplane.infer(model_id, message, forwarded=FORWARDED_HEADER in headers)
            out = await _convert(response.ByteSize(), render_infer_response, response, output_format)
            self.metrics.response_size.observe(len(out.body))
            reply = web.Response(body=out.body, content_type=out.content_type)
            if out.header_length is not None:
                reply.headers[HEADER_LENGTH] = str(out.header_length)
            return reply

        return await self._serve("ModelInfer", work(), request)


def _metadata_json(meta: v2.ModelMetadataResponse) -> dict[str, Any]:
    """Model metadata in the v2 REST form (shapes as numbers, not the strings
    protobuf's JSON mapping gives int64)."""

    def tensors(specs: Any) -> list[dict[str, Any]]:
        return [{"name": t.name, "datatype": t.datatype, "shape": list(t.shape)} for t in specs]

    return {
        "name": meta.name,
        "versions": list(meta.versions),
        "platform": meta.platform,
        "inputs": tensors(meta.inputs),
        "outputs": tensors(meta.outputs),
    }
