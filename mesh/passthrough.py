"""Any gRPC method, as ModelMesh allows: a unary call to a method the mesh
does not serve itself, carrying `mm-model-id` / `mm-vmodel-id` (or `-bin`),
is routed like an inference request and handed to the runtime as opaque
bytes — no decoding — with the model id written into the request where the
runtime's `methodInfos[method].idInjectionPath` says.

So TF-Serving-style or custom runtime APIs work through the mesh unchanged.
The runtime's own SPI (`mmesh.ModelRuntime`) is never reachable this way.
"""

from __future__ import annotations

import grpc

from mesh.dataplane import DataPlane
from mesh.errors import InvalidInput, RuntimeCallError
from mesh.grpc_errors import serve_call
from mesh.logs import bind_request
from mesh.metrics import MeshMetrics
from mesh.peers import FORWARDED_HEADER, MODEL_ID_HEADER, VMODEL_ID_HEADER
from mesh.proto_splice import SpliceError, splice_string
from protos import model_runtime_pb2 as spi

BLOCKED_PREFIX = "/mmesh.ModelRuntime/"


class MethodPolicy:
    """Which methods the runtime accepts, from its runtimeStatus."""

    def __init__(self, status: spi.RuntimeStatusResponse) -> None:
        self.allow_any = status.allowAnyMethod or not status.methodInfos
        self.injection = {name.lstrip("/"): list(info.idInjectionPath) for name, info in status.methodInfos.items()}

    def check(self, method: str) -> list[int]:
        """The id injection path of an allowed method; raises if not allowed."""
        name = method.lstrip("/")
        if method.startswith(BLOCKED_PREFIX):
            raise RuntimeCallError(grpc.StatusCode.PERMISSION_DENIED, f"{method} is internal to the mesh")
        if name not in self.injection and not self.allow_any:
            raise RuntimeCallError(grpc.StatusCode.UNIMPLEMENTED, f"the runtime does not serve {method}")
        return self.injection.get(name, [])


class PassthroughHandler(grpc.GenericRpcHandler):
    def __init__(self, dataplane: DataPlane, policy: MethodPolicy, metrics: MeshMetrics) -> None:
        self.dataplane = dataplane
        self.policy = policy
        self.metrics = metrics

    def service(self, handler_call_details: grpc.HandlerCallDetails):
        method = handler_call_details.method

        async def call(payload: bytes, context: grpc.aio.ServicerContext) -> bytes:
            return await serve_call(context, self.metrics, "passthrough", self._route(method, payload, context))

        # request/response stay bytes: no (de)serializer
        return grpc.unary_unary_rpc_method_handler(call)

    async def _route(self, method: str, payload: bytes, context: grpc.aio.ServicerContext) -> bytes:
        headers = {key: value for key, value in (context.invocation_metadata() or ())}
        bind_request("", headers, self.dataplane.instance_id)
        if not any(h in headers for h in (MODEL_ID_HEADER, f"{MODEL_ID_HEADER}-bin", VMODEL_ID_HEADER, f"{VMODEL_ID_HEADER}-bin")):
            raise InvalidInput(f"{method}: not a mesh method; name the model with the mm-model-id or mm-vmodel-id header")
        path = self.policy.check(method)
        model_id = await self.dataplane.resolve("", headers)
        if path:
            try:
                payload = splice_string(payload, path, model_id)
            except SpliceError as exc:
                raise InvalidInput(f"{method}: cannot write the model id at field path {path}: {exc}") from exc
        return await self.dataplane.call_raw(method, payload, model_id, forwarded=FORWARDED_HEADER in headers)
