"""The `mmesh` command: `up` runs a local mesh; `register`, `models` and
`infer` talk to a running one over gRPC."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
from pathlib import Path
from typing import Annotated, Optional

import grpc
import numpy as np
import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(help="mmesh: a multi-model serving mesh (KServe ModelMesh style).", no_args_is_help=True)
console = Console()

TargetOpt = Annotated[str, typer.Option("--target", "-t", help="sidecar gRPC address")]


def _size(value: str) -> int:
    """'2GiB', '512MB', '1000' → bytes."""
    units = {"k": 10**3, "m": 10**6, "g": 10**9, "ki": 2**10, "mi": 2**20, "gi": 2**30}
    text = value.strip().lower().removesuffix("b")
    for suffix in sorted(units, key=len, reverse=True):
        if text.endswith(suffix):
            return int(float(text[: -len(suffix)]) * units[suffix])
    return int(text)


@app.command()
def up(
    etcd: Annotated[Optional[str], typer.Option(help="etcd endpoint host:port; default: start an embedded etcd")] = None,
    etcd_port: Annotated[int, typer.Option(help="client port of the embedded etcd")] = 2379,
    grpc_port: Annotated[int, typer.Option(help="gRPC port (v2 inference + management)")] = 8033,
    metrics_port: Annotated[int, typer.Option(help="Prometheus port (0 = off)")] = 2112,
    runtime: Annotated[str, typer.Option(help="'inprocess' or 'uds' (adapter in its own process)")] = "inprocess",
    capacity: Annotated[str, typer.Option(help="model memory, e.g. 2GiB (default: from host memory)")] = "",
    data_dir: Annotated[Path, typer.Option(help="etcd data, example models, sockets")] = Path(".mmesh"),
    examples: Annotated[bool, typer.Option(help="generate and register the example models")] = True,
    instance_id: Annotated[str, typer.Option(help="this sidecar's id in the mesh")] = "local-0",
    kv_prefix: Annotated[str, typer.Option(help="etcd key prefix of this mesh")] = "mmesh",
    log_level: Annotated[str, typer.Option()] = "WARNING",
) -> None:
    """Run a local mesh: embedded etcd, one sidecar, example models. Ctrl-C stops it."""
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s")
    capacity_bytes = _size(capacity) if capacity else 0
    asyncio.run(_up(etcd, etcd_port, grpc_port, metrics_port, runtime, capacity_bytes, data_dir, examples, instance_id, kv_prefix))


async def _up(
    etcd_endpoint, etcd_port, grpc_port, metrics_port, runtime, capacity, data_dir: Path, examples: bool, instance_id: str, kv_prefix: str
) -> None:
    from mesh.adapter_process import AdapterProcess
    from mesh.etcd_process import EtcdProcess
    from mesh.examples import write_examples
    from mesh.settings import MeshSettings
    from mesh.sidecar import Sidecar
    from protos import model_mesh_pb2 as mm

    data_dir = data_dir.resolve()
    etcd = adapter = sidecar = None
    try:
        if etcd_endpoint is None:
            etcd = EtcdProcess(client_port=etcd_port, data_dir=data_dir / "etcd").start()
            etcd_endpoint = etcd.endpoint
        runtime_target = "inprocess"
        if runtime == "uds":
            adapter = AdapterProcess(data_dir / f"{instance_id}.sock", capacity_bytes=capacity).start()
            runtime_target = adapter.target
        elif runtime != "inprocess":
            raise typer.BadParameter("--runtime must be 'inprocess' or 'uds'")
        settings = MeshSettings(
            instance_id=instance_id,
            kv_prefix=kv_prefix,
            grpc_port=grpc_port,
            metrics_port=metrics_port,
            etcd_endpoints=etcd_endpoint,
            runtime=runtime_target,
            runtime_capacity_bytes=capacity,
        )
        sidecar = await Sidecar(settings).start()
        registered = []
        if examples:
            for model_id, path in write_examples(data_dir / "models").items():
                info = mm.ModelInfo(type="onnx", path=str(path))
                await sidecar.management.register(mm.RegisterModelRequest(modelId=model_id, modelInfo=info))
                registered.append(model_id)
        _print_banner(sidecar, etcd_endpoint, registered)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        console.print("stopping…")
    finally:
        if sidecar is not None:
            await sidecar.stop()
        if adapter is not None:
            adapter.stop()
        if etcd is not None:
            etcd.stop()


def _print_banner(sidecar, etcd_endpoint: str, models: list[str]) -> None:
    console.print(f"[bold green]mmesh is up[/] (instance {sidecar.settings.instance_id})")
    console.print(f"  v2 gRPC + management : {sidecar.address}")
    if sidecar.metrics_port:
        console.print(f"  metrics              : http://{sidecar.settings.host}:{sidecar.metrics_port}/metrics")
    console.print(f"  etcd                 : {etcd_endpoint}")
    console.print(f"  runtime              : {sidecar.settings.runtime}, capacity {sidecar.loader.lru.capacity_bytes:,} bytes")
    if models:
        console.print(f"  models               : {', '.join(models)}")
        console.print(
            f"try: mmesh infer add-one --data '[[1, 2, 3, 4]]' -t {sidecar.address}\n"
            f"  or python -c \"import tritonclient.grpc as t, numpy as n; c=t.InferenceServerClient('{sidecar.address}'); "
            "i=t.InferInput('x',[1,4],'FP32'); i.set_data_from_numpy(n.ones((1,4),n.float32)); "
            "print(c.infer('add-one',[i]).as_numpy('y'))\"",
            markup=False,
            soft_wrap=True,
        )
    console.print("Ctrl-C stops it.")


def _channel(target: str) -> grpc.Channel:
    return grpc.insecure_channel(target)


def _fail(exc: grpc.RpcError) -> None:
    console.print(f"[red]{exc.code().name}[/]: {exc.details()}")
    raise typer.Exit(1)


@app.command()
def register(
    model_id: str,
    path: Annotated[str, typer.Option(help="model file or directory (or storage URI)")],
    type: Annotated[str, typer.Option("--type", help="runtime type, e.g. onnx")] = "onnx",
    key: Annotated[str, typer.Option(help="storage key")] = "",
    load_now: Annotated[bool, typer.Option(help="load it right away")] = False,
    target: TargetOpt = "127.0.0.1:8033",
) -> None:
    """Register a model with the mesh."""
    from protos import model_mesh_pb2 as mm
    from protos import model_mesh_pb2_grpc as mm_grpc

    with _channel(target) as channel:
        stub = mm_grpc.ModelMeshStub(channel)
        request = mm.RegisterModelRequest(
            modelId=model_id, modelInfo=mm.ModelInfo(type=type, path=path, key=key), loadNow=load_now, sync=load_now
        )
        try:
            status = stub.registerModel(request, timeout=120)
        except grpc.RpcError as exc:
            _fail(exc)
    console.print(f"{model_id}: {mm.ModelStatusInfo.ModelStatus.Name(status.status)}")
    for error in status.errors:
        console.print(f"  [red]{error}[/]")


@app.command()
def models(target: TargetOpt = "127.0.0.1:8033", page_size: int = 500) -> None:
    """Table of registered models with status, size and copies."""
    from protos import model_mesh_pb2 as mm
    from protos import mmesh_ext_pb2 as ext
    from protos import mmesh_ext_pb2_grpc as ext_grpc

    table = Table("model", "type", "status", "size", "copies", "path")
    token, total = "", 0
    with _channel(target) as channel:
        stub = ext_grpc.ModelMeshExtensionsStub(channel)
        while True:
            try:
                page = stub.listModels(ext.ListModelsRequest(pageToken=token, pageSize=page_size), timeout=30)
            except grpc.RpcError as exc:
                _fail(exc)
            for m in page.models:
                table.add_row(
                    m.modelId, m.modelInfo.type, mm.ModelStatusInfo.ModelStatus.Name(m.status.status),
                    f"{m.sizeInBytes:,}" if m.sizeInBytes else "-", str(m.copies), m.modelInfo.path,
                )
            total = page.totalModels
            token = page.nextPageToken
            if not token:
                break
    console.print(table)
    console.print(f"{total} models registered")


@app.command()
def infer(
    model_id: str,
    data: Annotated[str, typer.Option(help="input as JSON, e.g. '[[1,2,3,4]]'")],
    input_name: Annotated[Optional[str], typer.Option(help="input tensor (default: the model's first)")] = None,
    datatype: Annotated[Optional[str], typer.Option(help="v2 datatype (default: the model's)")] = None,
    target: TargetOpt = "127.0.0.1:8033",
) -> None:
    """Send one input, print the outputs."""
    from protos import grpc_predict_v2_pb2 as v2
    from protos import grpc_predict_v2_pb2_grpc as v2_grpc
    from protos.tensor_codec import DATATYPE_TO_DTYPE, decode_outputs, encode_inputs

    with _channel(target) as channel:
        stub = v2_grpc.GRPCInferenceServiceStub(channel)
        try:
            if input_name is None or datatype is None:
                meta = stub.ModelMetadata(v2.ModelMetadataRequest(name=model_id), timeout=120)
                first = meta.inputs[0]
                input_name, datatype = input_name or first.name, datatype or first.datatype
            dtype = DATATYPE_TO_DTYPE.get(datatype)
            if dtype is None:
                raise typer.BadParameter(f"unknown datatype {datatype}")
            values = json.loads(data)
            array = np.array(values, dtype=object if datatype == "BYTES" else dtype)
            request = v2.ModelInferRequest(model_name=model_id)
            encode_inputs(request, {input_name: array}, raw=True)
            response = stub.ModelInfer(request, timeout=120)
        except grpc.RpcError as exc:
            _fail(exc)
    for name, value in decode_outputs(response).items():
        console.print(f"{name} = {value.tolist()!r}", markup=False)


if __name__ == "__main__":
    app()
