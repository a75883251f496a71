"""v2 gRPC front end of the sidecar: wire messages in, `DataPlane` calls out."""

from __future__ import annotations

import grpc

from mesh.dataplane import SERVER_NAME, DataPlane, server_version
from mesh.grpc_errors import serve_call
from mesh.logs import bind_request
from mesh.metrics import MeshMetrics
from mesh.peers import FORWARDED_HEADER
from protos import grpc_predict_v2_pb2 as v2
from protos import grpc_predict_v2_pb2_grpc as v2_grpc


def _headers(context: grpc.aio.ServicerContext) -> dict[str, str | bytes]:
    return {key: value for key, value in (context.invocation_metadata() or ())}


class InferenceFrontend(v2_grpc.GRPCInferenceServiceServicer):
    def __init__(self, dataplane: DataPlane, metrics: MeshMetrics, is_ready) -> None:
        self.dataplane = dataplane
        self.metrics = metrics
        self._is_ready = is_ready

    def _begin(self, context: grpc.aio.ServicerContext, request_id: str = "") -> dict[str, str | bytes]:
        """The call's headers, after starting its log context (request id: the
        v2 `id`, else the x-request-id header, else a new one)."""
        headers = _headers(context)
        bind_request(request_id, headers, self.dataplane.instance_id)
        return headers

    async def ServerLive(self, request, context) -> v2.ServerLiveResponse:
        return v2.ServerLiveResponse(live=True)

    async def ServerReady(self, request, context) -> v2.ServerReadyResponse:
        return v2.ServerReadyResponse(ready=self._is_ready())

    async def ServerMetadata(self, request, context) -> v2.ServerMetadataResponse:
        return v2.ServerMetadataResponse(name=SERVER_NAME, version=server_version(), extensions=["model_repository"])

    async def ModelReady(self, request: v2.ModelReadyRequest, context) -> v2.ModelReadyResponse:
        async def work() -> v2.ModelReadyResponse:
            model_id = await self.dataplane.resolve(request.name, self._begin(context))
            return v2.ModelReadyResponse(ready=await self.dataplane.model_ready(model_id))

        return await serve_call(context, self.metrics, "ModelReady", work())

    async def ModelMetadata(self, request: v2.ModelMetadataRequest, context) -> v2.ModelMetadataResponse:
        async def work() -> v2.ModelMetadataResponse:
            headers = self._begin(context)
            model_id = await self.dataplane.resolve(request.name, headers)
            return await self.dataplane.metadata(model_id, request.name or model_id, forwarded=FORWARDED_HEADER in headers)

        return await serve_call(context, self.metrics, "ModelMetadata", work())

    async def ModelInfer(self, request: v2.ModelInferRequest, context) -> v2.ModelInferResponse:
        async def work() -> v2.ModelInferResponse:
            headers = self._begin(context, request.id)
            model_id = await self.dataplane.resolve(request.model_name, headers)
            self.metrics.request_size.observe(request.ByteSize())
            response = await self.dataplane.infer(model_id, request, forwarded=FORWARDED_HEADER in headers)
            self.metrics.response_size.observe(response.ByteSize())
            return response

        return await serve_call(context, self.metrics, "ModelInfer", work())
