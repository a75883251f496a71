"""gRPC front door of the adapter: the SPI and v2 inference on one server.

Used when the adapter runs as its own process (Unix socket, the Kubernetes
default) and as the "runtime's own v2 server" baseline in benchmarks. Each
handler hands the blocking work to a thread and maps `AdapterError` to its
gRPC status in one place.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Callable, TypeVar

import grpc

from protos import grpc_predict_v2_pb2 as v2
from protos import grpc_predict_v2_pb2_grpc as v2_grpc
from protos import model_runtime_pb2 as spi
from protos import model_runtime_pb2_grpc as spi_grpc
from runtime_adapter.errors import AdapterError
from runtime_adapter.repository import ModelRepository

log = logging.getLogger(__name__)
T = TypeVar("T")

MODEL_ID_HEADER = "mm-model-id"
MAX_MESSAGE_BYTES = 256 * 1024 * 1024
SERVER_OPTIONS = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    # gRPC binds with SO_REUSEPORT by default: a second server on a taken port
    # would start "successfully" and share its traffic; fail loudly instead
    ("grpc.so_reuseport", 0),
]


async def _call(context: grpc.aio.ServicerContext, fn: Callable[..., T], *args: object) -> T:
    try:
        return await asyncio.to_thread(fn, *args)
    except AdapterError as exc:
        await context.abort(exc.code, exc.message)
        raise  # unreachable: abort raises


def _model_id(context: grpc.aio.ServicerContext, fallback: str) -> str:
    """The mesh names the concrete model in `mm-model-id`; plain v2 clients use the field."""
    for key, value in context.invocation_metadata() or ():
        if key == MODEL_ID_HEADER:
            return value if isinstance(value, str) else value.decode()
    return fallback


class RuntimeServicer(spi_grpc.ModelRuntimeServicer):
    def __init__(self, repository: ModelRepository) -> None:
        self.repository = repository

    async def loadModel(self, request: spi.LoadModelRequest, context) -> spi.LoadModelResponse:
        return await _call(context, self.repository.load, request)

    async def unloadModel(self, request: spi.UnloadModelRequest, context) -> spi.UnloadModelResponse:
        await _call(context, self.repository.unload, request.modelId)
        return spi.UnloadModelResponse()

    async def predictModelSize(self, request, context) -> spi.PredictModelSizeResponse:
        size = await _call(context, self.repository.predict_size, request)
        return spi.PredictModelSizeResponse(sizeInBytes=size)

    async def modelSize(self, request: spi.ModelSizeRequest, context) -> spi.ModelSizeResponse:
        size = await _call(context, self.repository.model_size, request.modelId)
        return spi.ModelSizeResponse(sizeInBytes=size)

    async def runtimeStatus(self, request, context) -> spi.RuntimeStatusResponse:
        return await _call(context, self.repository.runtime_status)


class InferenceServicer(v2_grpc.GRPCInferenceServiceServicer):
    """v2 data plane over the models this adapter holds (no loading on demand:
    that is the mesh's job)."""

    def __init__(self, repository: ModelRepository) -> None:
        self.repository = repository

    async def ServerLive(self, request, context) -> v2.ServerLiveResponse:
        return v2.ServerLiveResponse(live=True)

    async def ServerReady(self, request, context) -> v2.ServerReadyResponse:
        return v2.ServerReadyResponse(ready=True)

    async def ServerMetadata(self, request, context) -> v2.ServerMetadataResponse:
        return v2.ServerMetadataResponse(name="mmesh-runtime-adapter", version="2", extensions=[])

    async def ModelReady(self, request: v2.ModelReadyRequest, context) -> v2.ModelReadyResponse:
        return v2.ModelReadyResponse(ready=self.repository.is_ready(_model_id(context, request.name)))

    async def ModelMetadata(self, request: v2.ModelMetadataRequest, context) -> v2.ModelMetadataResponse:
        model_id = _model_id(context, request.name)
        return await _call(context, self.repository.metadata, model_id, request.name or model_id)

    async def ModelInfer(self, request: v2.ModelInferRequest, context) -> v2.ModelInferResponse:
        return await _call(context, self.repository.infer, request, _model_id(context, request.model_name))

    async def RepositoryIndex(self, request, context) -> v2.RepositoryIndexResponse:
        index = v2.RepositoryIndexResponse.ModelIndex
        return v2.RepositoryIndexResponse(
            models=[index(name=m, state="READY") for m in self.repository.loaded_ids()]
        )


def build_server(repository: ModelRepository, address: str) -> grpc.aio.Server:
    """A grpc.aio server with both services bound to `address`
    (``unix:///path`` or ``host:port``); the caller starts and stops it."""
    server = grpc.aio.server(options=SERVER_OPTIONS)
    spi_grpc.add_ModelRuntimeServicer_to_server(RuntimeServicer(repository), server)
    v2_grpc.add_GRPCInferenceServiceServicer_to_server(InferenceServicer(repository), server)
    if server.add_insecure_port(address) == 0 and not address.startswith("unix:"):
        raise OSError(f"could not bind {address}")
    return server
