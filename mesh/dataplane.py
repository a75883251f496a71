"""The protocol-agnostic data plane: infer, metadata, readiness.

The gRPC and REST front ends only translate wire messages
into these calls; errors leave as `MeshError`s and are mapped to the wire in
one place per protocol.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Mapping
from importlib.metadata import PackageNotFoundError, version

from mesh.copy_recorder import CopyState
from mesh.errors import InvalidInput, MeshError, ModelNotFound
from mesh.loader import LocalCopy
from mesh.logs import bind_model
from mesh.payloads import INFER_METHOD, PayloadProcessors
from mesh.peers import MODEL_ID_HEADER, VMODEL_ID_HEADER, Peer, hop_metadata
from mesh.router import Router
from mesh.vmodels import VModels
from protos import grpc_predict_v2_pb2 as v2
from protos.tensor_codec import TensorCodecError, decode_inputs

SERVER_NAME = "mmesh"


def server_version() -> str:
    """The installed package's version (what ServerMetadata reports on every protocol)."""
    try:
        return version("mmesh")
    except PackageNotFoundError:
        return "dev"


def header(headers: Mapping[str, str | bytes], name: str) -> str | None:
    """A header as text; the `-bin` form (base64 on the wire, bytes here) counts too."""
    value = headers.get(name)
    if value is None:
        value = headers.get(f"{name}-bin")
    if isinstance(value, bytes):
        value = value.decode("utf-8")
    return value or None


async def _validate_inputs(request: v2.ModelInferRequest) -> None:
    """Decode once before a load is spent on a malformed request; on a worker
    thread, since typed contents are copied and may be large."""
    try:
        await asyncio.to_thread(decode_inputs, request)
    except TensorCodecError as exc:
        raise InvalidInput(str(exc)) from exc


class DataPlane:
    def __init__(
        self, router: Router, request_timeout_s: float, instance_id: str = "", vmodels: VModels | None = None,
        payloads: PayloadProcessors | None = None,
    ) -> None:
        self.payloads = payloads  # payload logging: None = off, and free
        self.router = router
        self.metrics = router.metrics
        self.vmodels = vmodels
        self.runtime = router.loader.runtime
        self.request_timeout_s = request_timeout_s
        self.instance_id = instance_id

    async def resolve(self, model_name: str, headers: Mapping[str, str | bytes]) -> str:
        """The concrete model a request is for (and, from here on, in its log
        lines). Headers win over the message field, as in ModelMesh; a name
        that is no model but a vModel (an InferenceService name, say) resolves
        to the vModel's active model. Views answer; etcd is read only for a
        name neither view knows."""
        model_id = await self._resolve(model_name, headers)
        bind_model(model_id)
        return model_id

    async def _resolve(self, model_name: str, headers: Mapping[str, str | bytes]) -> str:
        model_id = header(headers, MODEL_ID_HEADER)
        if model_id:
            return model_id
        vmodel_id = header(headers, VMODEL_ID_HEADER)
        if vmodel_id:
            if self.vmodels is None:
                raise ModelNotFound(f"vModel {vmodel_id!r} is not defined")
            return await self.vmodels.active_model(vmodel_id)
        if not model_name:
            raise InvalidInput("no model named: set model_name or the mm-model-id header")
        if self.vmodels is None or self.router.view.get(model_name) is not None:
            return model_name
        try:
            return await self.vmodels.active_model(model_name)
        except ModelNotFound:
            return model_name  # the router's registry lookup decides

    def _hop_metadata(self, model_id: str) -> tuple[tuple[str, str], ...]:
        return hop_metadata(model_id, self.instance_id)

    async def infer(
        self, model_id: str, request: v2.ModelInferRequest, *, forwarded: bool = False
    ) -> v2.ModelInferResponse:
        async def local(copy: LocalCopy) -> v2.ModelInferResponse:
            started = time.perf_counter()
            code = "OK"
            try:
                return await self.runtime.infer(model_id, request, self.request_timeout_s)
            except MeshError as exc:
                code = exc.code.name
                raise
            finally:
                self.metrics.invoke_model_ms.labels("ModelInfer", code).observe((time.perf_counter() - started) * 1e3)

        async def remote(peer: Peer) -> v2.ModelInferResponse:
            return await peer.v2.ModelInfer(request, metadata=self._hop_metadata(model_id), timeout=self.request_timeout_s)

        def route() -> Awaitable[v2.ModelInferResponse]:
            return self.router.route(
                model_id, local, remote, forwarded=forwarded, before_load=lambda: _validate_inputs(request)
            )

        if self.payloads is None or forwarded:  # payloads are recorded where a request enters the mesh
            return await route()
        return await self.payloads.observe(model_id, INFER_METHOD, request.model_name, request, route)

    async def metadata(self, model_id: str, name: str, *, forwarded: bool = False) -> v2.ModelMetadataResponse:
        """Loads the model if needed (its signature comes from the runtime) and
        keeps the answer with the copy, so repeat calls cost nothing."""

        async def local(copy: LocalCopy) -> v2.ModelMetadataResponse:
            if copy.metadata is None:
                copy.metadata = await self.runtime.metadata(model_id, model_id)
            response = v2.ModelMetadataResponse()
            response.CopyFrom(copy.metadata)
            response.name = name or model_id
            return response

        async def remote(peer: Peer) -> v2.ModelMetadataResponse:
            request = v2.ModelMetadataRequest(name=name or model_id)
            return await peer.v2.ModelMetadata(request, metadata=self._hop_metadata(model_id), timeout=self.request_timeout_s)

        return await self.router.route(model_id, local, remote, forwarded=forwarded)

    async def call_raw(self, method: str, payload: bytes, model_id: str, *, forwarded: bool) -> bytes:
        """Any other method, as opaque bytes (see mesh/passthrough.py)."""

        async def local(copy: LocalCopy) -> bytes:
            return await self.runtime.call_raw(method, payload, model_id, self.request_timeout_s)

        async def remote(peer: Peer) -> bytes:
            return await peer.raw(method, payload, self._hop_metadata(model_id), self.request_timeout_s)

        def route() -> Awaitable[bytes]:
            return self.router.route(model_id, local, remote, forwarded=forwarded)

        if self.payloads is None or forwarded:
            return await route()
        return await self.payloads.observe(model_id, method.lstrip("/"), "", payload, route)

    async def model_ready(self, model_id: str) -> bool:
        """Ready = servable now or on demand: registered and not in a failure
        back-off. A mesh loads on first use, so "not loaded yet" is still ready."""
        await self.router.record(model_id)
        copy = self.router.loader.copies.get(model_id)
        if copy is not None and copy.state is CopyState.LOADED:
            return True
        return self.router.loader.failure_of(model_id) is None
