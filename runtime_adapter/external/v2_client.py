"""A blocking v2 gRPC client for an external server (MLServer, Triton).

It speaks the v2 inference service plus its repository extension
(RepositoryIndex / RepositoryModelLoad / RepositoryModelUnload, which both
servers put on `inference.GRPCInferenceService`), over our own generated stubs.
Every call has a timeout, and every gRPC failure leaves as an `AdapterError`
whose code tells the mesh what happened:

* UNAVAILABLE stays UNAVAILABLE, so the mesh reports the runtime unreachable
  rather than blaming the model;
* a refused load is FAILED_PRECONDITION with the server's own message (the
  model, not the request, is at fault; the mesh backs off from this instance);
* unloading a model the server does not know is success: MLServer answers
  NOT_FOUND (1.x) or INVALID_ARGUMENT (older), Triton NOT_FOUND;
* inference and metadata keep the server's code (NOT_FOUND, INVALID_ARGUMENT…).

Calls are blocking because the repository runs on worker threads already.
"""

from __future__ import annotations

import grpc

from protos import grpc_predict_v2_pb2 as v2
from protos import grpc_predict_v2_pb2_grpc as v2_grpc
from runtime_adapter.errors import AdapterError
from runtime_adapter.server import MAX_MESSAGE_BYTES

GONE_ON_UNLOAD = frozenset({grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT})
# a load that timed out or found no server is not the model's fault
NOT_A_LOAD_FAILURE = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})


def _status(exc: grpc.RpcError) -> tuple[grpc.StatusCode, str]:
    """Code and details of a failed call (a sync stub's errors are also `grpc.Call`s)."""
    if isinstance(exc, grpc.Call):
        code = exc.code()
        return code, exc.details() or str(code)
    return grpc.StatusCode.UNKNOWN, str(exc)


class V2Client:
    """One channel to the server at `endpoint` (``host:port`` or ``unix:///path``)."""

    def __init__(self, endpoint: str, *, label: str = "external runtime", infer_timeout_s: float = 120.0) -> None:
        self.endpoint = endpoint
        self.label = label
        self.infer_timeout_s = infer_timeout_s
        self._channel = grpc.insecure_channel(
            endpoint,
            options=[
                ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ],
        )
        self._stub = v2_grpc.GRPCInferenceServiceStub(self._channel)

    def close(self) -> None:
        self._channel.close()

    def _error(self, exc: grpc.RpcError, what: str) -> AdapterError:
        code, details = _status(exc)
        if code == grpc.StatusCode.UNAVAILABLE:
            return AdapterError(code, f"{self.label} at {self.endpoint} unreachable ({what}): {details}")
        return AdapterError(code, f"{self.label} {what}: {details}")

    # ---- health and identity ---------------------------------------------

    def server_ready(self, timeout_s: float = 2.0) -> bool:
        """False while the server is down or starting; never raises for that."""
        try:
            return self._stub.ServerReady(v2.ServerReadyRequest(), timeout=timeout_s).ready
        except grpc.RpcError as exc:
            if _status(exc)[0] in NOT_A_LOAD_FAILURE:
                return False
            raise self._error(exc, "ServerReady") from exc

    def server_metadata(self, timeout_s: float = 5.0) -> v2.ServerMetadataResponse:
        try:
            return self._stub.ServerMetadata(v2.ServerMetadataRequest(), timeout=timeout_s)
        except grpc.RpcError as exc:
            raise self._error(exc, "ServerMetadata") from exc

    # ---- repository extension --------------------------------------------

    def repository_index(
        self, *, ready_only: bool, timeout_s: float = 10.0
    ) -> list[v2.RepositoryIndexResponse.ModelIndex]:
        try:
            response = self._stub.RepositoryIndex(v2.RepositoryIndexRequest(ready=ready_only), timeout=timeout_s)
        except grpc.RpcError as exc:
            raise self._error(exc, "RepositoryIndex") from exc
        return list(response.models)

    def load_model(self, name: str, timeout_s: float) -> None:
        try:
            self._stub.RepositoryModelLoad(v2.RepositoryModelLoadRequest(model_name=name), timeout=timeout_s)
        except grpc.RpcError as exc:
            code, details = _status(exc)
            if code in NOT_A_LOAD_FAILURE:
                raise self._error(exc, f"load of {name!r}") from exc
            raise AdapterError.failed_precondition(f"{self.label} could not load {name!r}: {details}") from exc

    def unload_model(self, name: str, timeout_s: float = 60.0) -> bool:
        """True when the server unloaded the model, False when it did not have it."""
        try:
            self._stub.RepositoryModelUnload(v2.RepositoryModelUnloadRequest(model_name=name), timeout=timeout_s)
        except grpc.RpcError as exc:
            if _status(exc)[0] in GONE_ON_UNLOAD:
                return False
            raise self._error(exc, f"unload of {name!r}") from exc
        return True

    # ---- data plane --------------------------------------------------------

    def infer(self, request: v2.ModelInferRequest, timeout_s: float | None = None) -> v2.ModelInferResponse:
        try:
            return self._stub.ModelInfer(request, timeout=timeout_s or self.infer_timeout_s)
        except grpc.RpcError as exc:
            raise self._error(exc, f"inference on {request.model_name!r}") from exc

    def model_metadata(self, name: str, timeout_s: float = 10.0) -> v2.ModelMetadataResponse:
        try:
            return self._stub.ModelMetadata(v2.ModelMetadataRequest(name=name), timeout=timeout_s)
        except grpc.RpcError as exc:
            raise self._error(exc, f"metadata of {name!r}") from exc
