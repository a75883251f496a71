"""Any gRPC method through the mesh: a custom runtime (a real gRPC server in
this test, speaking the model-runtime SPI plus a method of its own) receives
the caller's bytes untouched but for the model id the mesh writes in, on
whichever sidecar holds the model."""

from __future__ import annotations

import time
from concurrent import futures

import grpc
import pytest

from mesh.etcd_process import free_port
from protos import grpc_predict_v2_pb2 as v2
from protos import model_runtime_pb2 as spi
from protos import model_runtime_pb2_grpc as spi_grpc
from tests.helpers import register

ECHO = "/demo.Echo/Shout"  # request: ModelMetadataRequest; the runtime echoes what it got


class CustomRuntime(spi_grpc.ModelRuntimeServicer):
    """A runtime nobody in the mesh knows the API of."""

    def __init__(self) -> None:
        self.loaded: set[str] = set()
        self.calls: list[tuple[str, str]] = []  # (model id header, name field)

    def runtimeStatus(self, request, context):
        self.loaded.clear()
        return spi.RuntimeStatusResponse(
            status=spi.RuntimeStatusResponse.READY,
            capacityInBytes=1 << 30,
            maxLoadingConcurrency=1,
            modelLoadingTimeoutMs=10_000,
            defaultModelSizeInBytes=1 << 20,
            methodInfos={ECHO.lstrip("/"): spi.RuntimeStatusResponse.MethodInfo(idInjectionPath=[1])},
        )

    def loadModel(self, request, context):
        self.loaded.add(request.modelId)
        return spi.LoadModelResponse(sizeInBytes=1 << 20)

    def unloadModel(self, request, context):
        self.loaded.discard(request.modelId)
        return spi.UnloadModelResponse()

    def predictModelSize(self, request, context):
        return spi.PredictModelSizeResponse(sizeInBytes=1 << 20)

    def shout(self, payload: bytes, context) -> bytes:
        model_id = dict(context.invocation_metadata()).get("mm-model-id", "")
        request = v2.ModelMetadataRequest.FromString(payload)
        self.calls.append((model_id, request.name))
        if model_id not in self.loaded:
            context.abort(grpc.StatusCode.NOT_FOUND, f"{model_id} not loaded")
        return v2.ModelMetadataResponse(name=request.name, platform=f"echo:{request.version}").SerializeToString()


def start_runtime() -> tuple[grpc.Server, CustomRuntime, str]:
    runtime = CustomRuntime()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    spi_grpc.add_ModelRuntimeServicer_to_server(runtime, server)
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler("demo.Echo", {"Shout": grpc.unary_unary_rpc_method_handler(runtime.shout)}),)
    )
    port = free_port()
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    return server, runtime, f"127.0.0.1:{port}"


def test_custom_method_is_routed_with_the_model_id_injected(start_sidecar, loop_thread):
    servers = []
    try:
        (s1, rt1, addr1), (s2, rt2, addr2) = start_runtime(), start_runtime()
        servers += [s1, s2]
        a = start_sidecar(runtime=addr1)
        b = start_sidecar(runtime=addr2)
        deadline = time.monotonic() + 10
        while not (len(a.instances) == 2 and len(b.instances) == 2):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        register(a.address, "custom-model", "/models/whatever", type="custom")

        def shout(address: str, headers) -> v2.ModelMetadataResponse:
            call = grpc.insecure_channel(address).unary_unary(ECHO)
            payload = v2.ModelMetadataRequest(name="caller-wrote-this", version="7").SerializeToString()
            return v2.ModelMetadataResponse.FromString(call(payload, metadata=headers, timeout=30))

        got = shout(a.address, (("mm-model-id", "custom-model"),))
        assert got.name == "custom-model" and got.platform == "echo:7"  # id injected, the rest untouched
        assert rt1.loaded == {"custom-model"}  # loaded on demand where the request arrived
        # through the other sidecar: forwarded to the copy as raw bytes (once
        # b has heard of the copy; the copy state reaches etcd asynchronously)
        deadline = time.monotonic() + 10
        while a.settings.instance_id not in b.view.get("custom-model").instances:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        got = shout(b.address, (("mm-model-id", "custom-model"),))
        assert got.name == "custom-model"
        assert rt2.loaded == set() and len(rt1.calls) == 2

        with pytest.raises(grpc.RpcError) as err:  # no model named
            shout(a.address, ())
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        with pytest.raises(grpc.RpcError) as err:  # not in the runtime's methodInfos allow-list
            grpc.insecure_channel(a.address).unary_unary("/demo.Echo/Other")(b"", metadata=(("mm-model-id", "custom-model"),), timeout=10)
        assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED
        with pytest.raises(grpc.RpcError) as err:  # the runtime's SPI is not reachable through the mesh
            grpc.insecure_channel(a.address).unary_unary("/mmesh.ModelRuntime/unloadModel")(
                spi.UnloadModelRequest(modelId="custom-model").SerializeToString(),
                metadata=(("mm-model-id", "custom-model"),), timeout=10,
            )
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert rt1.loaded == {"custom-model"}
    finally:
        for server in servers:
            server.stop(grace=None)
