"""The sidecar's side of the model-runtime SPI, plus inference on the runtime.

Two implementations with one interface and the same error behaviour:
`InProcessRuntime` calls the adapter's `ModelRepository` on worker threads
(no serialization, no socket: the default of `mmesh up`), `GrpcRuntime`
talks to an adapter process over a Unix socket or TCP (the Kubernetes
default). Failures come out as `MeshError`s with the runtime's status code.
"""

from __future__ import annotations

import asyncio
from typing import Protocol

import grpc

from mesh.errors import MeshError, RuntimeCallError, RuntimeUnavailable, error_from_status
from protos import grpc_predict_v2_pb2 as v2
from protos import grpc_predict_v2_pb2_grpc as v2_grpc
from protos import model_runtime_pb2 as spi
from protos import model_runtime_pb2_grpc as spi_grpc
from runtime_adapter.errors import AdapterError
from runtime_adapter.repository import ModelRepository
from runtime_adapter.server import MAX_MESSAGE_BYTES, MODEL_ID_HEADER


class RuntimeClient(Protocol):
    async def status(self) -> spi.RuntimeStatusResponse: ...
    async def ready(self) -> bool: ...
    async def load(self, request: spi.LoadModelRequest, timeout_s: float) -> spi.LoadModelResponse: ...
    async def unload(self, model_id: str) -> None: ...
    async def predict_size(self, request: spi.PredictModelSizeRequest) -> int: ...
    async def infer(self, model_id: str, request: v2.ModelInferRequest, timeout_s: float) -> v2.ModelInferResponse: ...
    async def metadata(self, model_id: str, name: str) -> v2.ModelMetadataResponse: ...
    async def call_raw(self, method: str, payload: bytes, model_id: str, timeout_s: float) -> bytes: ...
    def type_labels(self) -> frozenset[str]: ...
    async def close(self) -> None: ...


class InProcessRuntime:
    """The adapter inside the sidecar's process; blocking calls go to threads."""

    def __init__(self, repository: ModelRepository) -> None:
        self.repository = repository

    async def _call(self, fn, *args):
        try:
            return await asyncio.to_thread(fn, *args)
        except AdapterError as exc:
            raise error_from_status(exc.code, exc.message) from exc

    async def status(self) -> spi.RuntimeStatusResponse:
        return await self._call(self.repository.runtime_status)

    async def ready(self) -> bool:
        """In this process: ready for as long as the process runs."""
        return True

    async def load(self, request: spi.LoadModelRequest, timeout_s: float) -> spi.LoadModelResponse:
        return await self._call(self.repository.load, request)

    async def unload(self, model_id: str) -> None:
        await self._call(self.repository.unload, model_id)

    async def predict_size(self, request: spi.PredictModelSizeRequest) -> int:
        return await self._call(self.repository.predict_size, request)

    async def infer(self, model_id: str, request: v2.ModelInferRequest, timeout_s: float) -> v2.ModelInferResponse:
        return await self._call(self.repository.infer, request, model_id)

    async def metadata(self, model_id: str, name: str) -> v2.ModelMetadataResponse:
        return await self._call(self.repository.metadata, model_id, name)

    def type_labels(self) -> frozenset[str]:
        """`mt:<type>` for each model type the built-in runtimes serve."""
        return frozenset(f"mt:{t}" for t in self.repository.model_types)

    async def call_raw(self, method: str, payload: bytes, model_id: str, timeout_s: float) -> bytes:
        raise RuntimeCallError(grpc.StatusCode.UNIMPLEMENTED, f"the built-in runtime serves the v2 API only, not {method}")

    async def close(self) -> None:
        """The repository's own clients (puller HTTP/S3 pools) go with it."""
        await asyncio.to_thread(self.repository.files.close)


class GrpcRuntime:
    """An adapter in another process, reached over `target`
    (``unix:///tmp/mmesh/grpc.sock`` or ``host:port``)."""

    def __init__(self, target: str) -> None:
        self.target = target
        self._channel = grpc.aio.insecure_channel(
            target,
            options=[
                ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ],
        )
        self._spi = spi_grpc.ModelRuntimeStub(self._channel)
        self._v2 = v2_grpc.GRPCInferenceServiceStub(self._channel)

    async def _call(self, method, request, *, timeout_s: float | None = None, model_id: str | None = None):
        metadata = ((MODEL_ID_HEADER, model_id),) if model_id else None
        try:
            return await method(request, timeout=timeout_s, metadata=metadata)
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.UNAVAILABLE:
                raise RuntimeUnavailable(f"runtime at {self.target} unreachable: {exc.details()}") from exc
            raise error_from_status(exc.code(), exc.details() or str(exc.code())) from exc

    async def wait_ready(self, timeout_s: float) -> spi.RuntimeStatusResponse:
        """Poll runtimeStatus until the adapter answers READY (ModelMesh polls
        every 2 s for up to 3 min; we poll faster and for as long as asked)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        last: MeshError | None = None
        while loop.time() < deadline:
            try:
                status = await self.status()
                if status.status == spi.RuntimeStatusResponse.READY:
                    return status
            except MeshError as exc:
                last = exc
            await asyncio.sleep(0.1)
        raise RuntimeUnavailable(f"runtime at {self.target} not ready after {timeout_s}s: {last}")

    async def status(self) -> spi.RuntimeStatusResponse:
        return await self._call(self._spi.runtimeStatus, spi.RuntimeStatusRequest(), timeout_s=10)

    async def ready(self, timeout_s: float = 2.0) -> bool:
        """The adapter's v2 ServerReady, for readiness probes: runtimeStatus
        cannot serve them, since an adapter purges its models when asked it
        (that call means "the sidecar restarted")."""
        try:
            response = await self._v2.ServerReady(v2.ServerReadyRequest(), timeout=timeout_s)
        except grpc.aio.AioRpcError:
            return False
        return response.ready

    async def load(self, request: spi.LoadModelRequest, timeout_s: float) -> spi.LoadModelResponse:
        return await self._call(self._spi.loadModel, request, timeout_s=timeout_s)

    async def unload(self, model_id: str) -> None:
        await self._call(self._spi.unloadModel, spi.UnloadModelRequest(modelId=model_id), timeout_s=60)

    async def predict_size(self, request: spi.PredictModelSizeRequest) -> int:
        response = await self._call(self._spi.predictModelSize, request, timeout_s=2)
        return response.sizeInBytes

    async def infer(self, model_id: str, request: v2.ModelInferRequest, timeout_s: float) -> v2.ModelInferResponse:
        return await self._call(self._v2.ModelInfer, request, timeout_s=timeout_s, model_id=model_id)

    async def metadata(self, model_id: str, name: str) -> v2.ModelMetadataResponse:
        return await self._call(
            self._v2.ModelMetadata, v2.ModelMetadataRequest(name=name), timeout_s=10, model_id=model_id
        )

    def type_labels(self) -> frozenset[str]:
        return frozenset()  # an external runtime's types come from the operator's MM_LABELS

    async def call_raw(self, method: str, payload: bytes, model_id: str, timeout_s: float) -> bytes:
        return await self._call(self._channel.unary_unary(method), payload, timeout_s=timeout_s, model_id=model_id)

    async def close(self) -> None:
        await self._channel.close()
