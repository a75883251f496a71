"""The `mmesh` command: `up` runs a local mesh; `register`, `models` and
`infer` talk to a running one over gRPC."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Optional

import grpc
import numpy as np
import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(help="mmesh: a multi-model serving mesh (KServe ModelMesh style).", no_args_is_help=True)
console = Console()

from sim.cli import sim_app  # noqa: E402  (the simulator's sub-commands: mmesh sim run|plan|trace)

app.add_typer(sim_app, name="sim")

TargetOpt = Annotated[str, typer.Option("--target", "-t", help="sidecar gRPC address")]
# TLS of the client commands: any of these switches the channel to TLS
TlsCaOpt = Annotated[
    Optional[Path], typer.Option("--tls-ca", envvar="MMESH_CLIENT_TLS_CA", help="CA (PEM) verifying the mesh; default: system CAs")
]
TlsCertOpt = Annotated[
    Optional[Path], typer.Option("--tls-cert", envvar="MMESH_CLIENT_TLS_CERT", help="client certificate (PEM), for mutual TLS")
]
TlsKeyOpt = Annotated[Optional[Path], typer.Option("--tls-key", envvar="MMESH_CLIENT_TLS_KEY", help="key of --tls-cert (PEM)")]


def _size(value: str) -> int:
    """'2GiB', '512MB', '1000' → bytes."""
    units = {"k": 10**3, "m": 10**6, "g": 10**9, "ki": 2**10, "mi": 2**20, "gi": 2**30}
    text = value.strip().lower().removesuffix("b")
    for suffix in sorted(units, key=len, reverse=True):
        if text.endswith(suffix):
            return int(float(text[: -len(suffix)]) * units[suffix])
    return int(text)


@dataclass(frozen=True)
class UpOptions:
    etcd: str | None
    etcd_port: int
    grpc_port: int
    metrics_port: int
    runtime: str
    capacity_bytes: int
    data_dir: Path
    examples: bool
    instances: int
    instance_id: str
    kv_prefix: str
    storage_config: Path | None = None
    rest_port: int = 0  # REST and probes: 0 = off
    probe_port: int = 0


@app.command()
def up(
    etcd: Annotated[Optional[str], typer.Option(help="etcd endpoint host:port; default: start an embedded etcd")] = None,
    etcd_port: Annotated[int, typer.Option(help="client port of the embedded etcd")] = 2379,
    grpc_port: Annotated[int, typer.Option(help="gRPC port (v2 inference + management) of the first sidecar")] = 8033,
    metrics_port: Annotated[int, typer.Option(help="Prometheus port of the first sidecar (0 = off)")] = 2112,
    rest_port: Annotated[int, typer.Option(help="REST v2 port of the first sidecar (0 = off)")] = 8008,
    probe_port: Annotated[int, typer.Option(help="probe port (/live, /ready) of the first sidecar (0 = off)")] = 8089,
    runtime: Annotated[str, typer.Option(help="'inprocess' or 'uds' (adapter in its own process)")] = "inprocess",
    capacity: Annotated[str, typer.Option(help="model memory per sidecar, e.g. 2GiB (default: from host memory)")] = "",
    data_dir: Annotated[Path, typer.Option(help="etcd data, example models, sockets")] = Path(".mmesh"),
    examples: Annotated[bool, typer.Option(help="generate and register the example models")] = True,
    instances: Annotated[int, typer.Option(help="sidecars to run, each with its own runtime")] = 1,
    instance_id: Annotated[str, typer.Option(help="id of the first sidecar (others get -1, -2, …)")] = "local-0",
    kv_prefix: Annotated[str, typer.Option(help="etcd key prefix of this mesh")] = "mmesh",
    storage_config: Annotated[
        Optional[Path],
        typer.Option(
            help="ModelMesh storage-config dir (one JSON file per storage key) for s3:// and http(s):// models",
            envvar=["STORAGE_CONFIG_DIR", "MMESH_STORAGE_CONFIG_DIR"],
        ),
    ] = None,
    log_level: Annotated[str, typer.Option()] = "WARNING",
    # logging
    log_format: Annotated[str, typer.Option(help="'text', or 'json' for JSON lines", envvar="MMESH_LOG_FORMAT")] = "text",
) -> None:
    """Run a local mesh: embedded etcd, N sidecars, example models. Ctrl-C or
    SIGTERM drains it (models copied to other sidecars of the mesh, in-flight
    requests finished); a second signal cuts the drain short."""
    from mesh.logs import configure

    try:
        configure(log_level, log_format)  # type: ignore[arg-type]  # checked there
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    if runtime not in ("inprocess", "uds"):
        raise typer.BadParameter("--runtime must be 'inprocess' or 'uds'")
    if instances < 1:
        raise typer.BadParameter("--instances must be at least 1")
    options = UpOptions(
        etcd, etcd_port, grpc_port, metrics_port, runtime, _size(capacity) if capacity else 0,
        data_dir.resolve(), examples, instances, instance_id, kv_prefix,
        storage_config.resolve() if storage_config else None,
        rest_port=rest_port, probe_port=probe_port,
    )
    asyncio.run(_up(options))


def _port_for(base: int, index: int) -> int:
    """The base port for the first sidecar; the next free one after it for the others."""
    if base == 0 or index == 0:
        return base
    from mesh.etcd_process import free_port

    candidate = base + index
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", candidate))
        except OSError:
            return free_port()
    return candidate


def _sidecar_id(first: str, index: int) -> str:
    """local-0 → local-1, local-2…; an id without a number gets one appended."""
    stem, _, number = first.rpartition("-")
    if stem and number.isdigit():
        return f"{stem}-{int(number) + index}"
    return first if index == 0 else f"{first}-{index}"


async def _up(o: UpOptions) -> None:
    from mesh.adapter_process import AdapterProcess
    from mesh.etcd_process import EtcdProcess
    from mesh.examples import write_examples
    from mesh.settings import MeshSettings
    from mesh.sidecar import Sidecar
    from protos import model_mesh_pb2 as mm

    etcd = None
    adapters: list[AdapterProcess] = []
    sidecars: list[Sidecar] = []
    try:
        etcd_endpoint = o.etcd
        if etcd_endpoint is None:
            etcd = EtcdProcess(client_port=o.etcd_port, data_dir=o.data_dir / "etcd").start()
            etcd_endpoint = etcd.endpoint
        for index in range(o.instances):
            instance_id = _sidecar_id(o.instance_id, index)
            runtime_target = "inprocess"
            models_dir = o.data_dir / "pulled" / instance_id  # each runtime's download cache
            storage_args = ("--storage-config-dir", str(o.storage_config)) if o.storage_config else ()
            if o.runtime == "uds":
                adapter = AdapterProcess(
                    o.data_dir / f"{instance_id}.sock", capacity_bytes=o.capacity_bytes,
                    models_dir=models_dir, extra_args=storage_args,
                ).start()
                adapters.append(adapter)
                runtime_target = adapter.target
            settings = MeshSettings(
                instance_id=instance_id,
                kv_prefix=o.kv_prefix,
                grpc_port=_port_for(o.grpc_port, index),
                metrics_port=_port_for(o.metrics_port, index),
                rest_port=_port_for(o.rest_port, index),
                probe_port=_port_for(o.probe_port, index),
                etcd_endpoints=etcd_endpoint,
                runtime=runtime_target,
                runtime_capacity_bytes=o.capacity_bytes,
                models_dir=str(models_dir),
                storage_config_dir=str(o.storage_config or ""),
            )
            sidecars.append(await Sidecar(settings).start())
        registered = []
        if o.examples:
            for model_id, path in write_examples(o.data_dir / "models").items():
                info = mm.ModelInfo(type="onnx", path=str(path))
                await sidecars[0].management.register(mm.RegisterModelRequest(modelId=model_id, modelInfo=info))
                registered.append(model_id)
        _print_banner(sidecars, etcd_endpoint, registered)
        stop = _stop_on_signals()
        await stop.wait()
        console.print("draining…")
        stop.clear()
        # drain: with an embedded etcd this process is the whole mesh, so
        # there is nowhere to copy models to
        await _drain(sidecars, migrate=o.etcd is not None, interrupt=stop)
    finally:
        for sidecar in reversed(sidecars):
            await sidecar.stop()
        for adapter in adapters:
            adapter.stop()
        if etcd is not None:
            etcd.stop()


def _stop_on_signals() -> asyncio.Event:
    """An event set by SIGINT or SIGTERM (each time: the second cuts a drain short)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    return stop


@app.command()
def sidecar(
    log_level: Annotated[str, typer.Option(envvar="MMESH_LOG_LEVEL")] = "INFO",
    log_format: Annotated[str, typer.Option(help="'text', or 'json' for JSON lines", envvar="MMESH_LOG_FORMAT")] = "text",
) -> None:
    """Run one sidecar configured from the environment (MM_*/MMESH_* variables
    and KV_STORE, as a Kubernetes pod sets them), against an etcd that runs
    elsewhere. SIGTERM drains it: its models are copied to other sidecars of
    the mesh and in-flight requests finish first."""
    from mesh.logs import configure

    try:
        configure(log_level, log_format)  # type: ignore[arg-type]  # checked there
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    asyncio.run(_run_sidecar())


async def _run_sidecar() -> None:
    from mesh.settings import MeshSettings
    from mesh.sidecar import Sidecar

    running = await Sidecar(MeshSettings()).start()
    try:
        stop = _stop_on_signals()
        await stop.wait()
        stop.clear()
        await _drain([running], migrate=True, interrupt=stop)
    finally:
        await running.stop()


@app.command()
def controller(
    log_level: Annotated[str, typer.Option(envvar="MMESH_LOG_LEVEL")] = "INFO",
    log_format: Annotated[str, typer.Option(help="'text', or 'json' for JSON lines", envvar="MMESH_LOG_FORMAT")] = "text",
) -> None:
    """Run the Kubernetes controller (configured from the environment: POD_NAMESPACE,
    POD_NAME, KV_STORE, MMESH_IMAGE, …; see deploy/controller): InferenceServices
    in ModelMesh mode become mesh vModels, ServingRuntimes become Deployments,
    and status is written back. Needs the k8s extra (the kubernetes client)."""
    from mesh.logs import configure

    try:
        configure(log_level, log_format)  # type: ignore[arg-type]  # checked there
        from mesh.controller.controller import run_controller
        from mesh.controller.settings import ControllerSettings
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    except ImportError as exc:
        console.print(f"[red]the controller needs the k8s extra[/]: pip install 'mmesh[k8s]' ({exc})")
        raise typer.Exit(2) from None
    asyncio.run(run_controller(ControllerSettings()))


async def _drain(sidecars, *, migrate: bool, interrupt: asyncio.Event) -> None:
    """Drain every sidecar at once (mesh/drain.py); `interrupt` (a second
    signal) cancels the drains, each of which still ends stopped."""
    drains = asyncio.gather(*(sidecar.drain(migrate=migrate) for sidecar in sidecars))
    interrupted = asyncio.ensure_future(interrupt.wait())
    try:
        await asyncio.wait({drains, interrupted}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (drains, interrupted):
            task.cancel()
        await asyncio.gather(drains, interrupted, return_exceptions=True)


def _print_banner(sidecars, etcd_endpoint: str, models: list[str]) -> None:
    first = sidecars[0]
    console.print(f"[bold green]mmesh is up[/]: {len(sidecars)} sidecar(s)")
    for sidecar in sidecars:
        metrics = f", metrics http://{sidecar.settings.host}:{sidecar.metrics_port}/metrics" if sidecar.metrics_port else ""
        console.print(f"  {sidecar.settings.instance_id:10s} v2 gRPC + management {sidecar.address}{metrics}", markup=False)
        if sidecar.rest_port or sidecar.probe_port:
            scheme = "https" if sidecar.tls else "http"
            rest = f"v2 REST {scheme}://{sidecar.settings.host}:{sidecar.rest_port}/v2" if sidecar.rest_port else ""
            probes = f"probes http://{sidecar.settings.host}:{sidecar.probe_port}/ready" if sidecar.probe_port else ""
            console.print(f"  {'':10s} {', '.join(filter(None, (rest, probes)))}", markup=False, soft_wrap=True)
    console.print(f"  etcd                 : {etcd_endpoint}")
    console.print(f"  runtime              : {first.settings.runtime}, capacity {first.loader.lru.capacity_bytes:,} bytes each")
    if models:
        console.print(f"  models               : {', '.join(models)}")
        console.print(
            f"try: mmesh infer add-one --data '[[1, 2, 3, 4]]' -t {first.address}\n"
            f"  or python -c \"import tritonclient.grpc as t, numpy as n; c=t.InferenceServerClient('{first.address}'); "
            "i=t.InferInput('x',[1,4],'FP32'); i.set_data_from_numpy(n.ones((1,4),n.float32)); "
            "print(c.infer('add-one',[i]).as_numpy('y'))\"",
            markup=False,
            soft_wrap=True,
        )
        if first.rest_port and not first.tls:
            console.print(
                f"  or curl -s http://{first.settings.host}:{first.rest_port}/v2/models/add-one/infer "
                "-d '{\"inputs\": [{\"name\": \"x\", \"shape\": [1, 4], \"datatype\": \"FP32\", \"data\": [1, 2, 3, 4]}]}'",
                markup=False,
                soft_wrap=True,
            )
    console.print("Ctrl-C stops it.")


def _channel(target: str, ca: Path | None = None, cert: Path | None = None, key: Path | None = None) -> grpc.Channel:
    """Plain text unless a TLS option is given (a TLS mesh refuses plain text)."""
    if ca is None and cert is None and key is None:
        return grpc.insecure_channel(target)
    from mesh.tls import TlsConfigError, client_channel_credentials

    try:
        credentials = client_channel_credentials(*(str(p) if p else None for p in (ca, cert, key)))
    except TlsConfigError as exc:
        raise typer.BadParameter(str(exc)) from None
    return grpc.secure_channel(target, credentials)


def _fail(exc: grpc.RpcError) -> None:
    console.print(f"[red]{exc.code().name}[/]: {exc.details()}")
    raise typer.Exit(1)


BULK_BATCH = 500


def _read_model_file(path: Path) -> list[dict]:
    """A JSON list of models, or JSON lines: {"modelId", "type", "path", "key", "minCopies"}."""
    text = path.read_text()
    try:
        entries = json.loads(text)
    except json.JSONDecodeError:
        entries = [json.loads(line) for line in text.splitlines() if line.strip()]
    if not isinstance(entries, list) or not all(isinstance(e, dict) and e.get("modelId") for e in entries):
        raise typer.BadParameter(f"{path}: expected a JSON list (or JSON lines) of objects with a modelId")
    return entries


@app.command()
def register(
    model_id: Annotated[Optional[str], typer.Argument(help="model id (omit with --from-file)")] = None,
    path: Annotated[str, typer.Option(help="model file or directory (or storage URI)")] = "",
    type: Annotated[str, typer.Option("--type", help="runtime type, e.g. onnx")] = "onnx",
    key: Annotated[str, typer.Option(help="storage key")] = "",
    min_copies: Annotated[int, typer.Option(help="copies to keep loaded whatever the traffic")] = 0,
    load_now: Annotated[bool, typer.Option(help="load it right away")] = False,
    from_file: Annotated[Optional[Path], typer.Option(help="register many: JSON list or JSON lines of models")] = None,
    target: TargetOpt = "127.0.0.1:8033",
    tls_ca: TlsCaOpt = None,
    tls_cert: TlsCertOpt = None,
    tls_key: TlsKeyOpt = None,
) -> None:
    """Register a model (or, with --from-file, many in bulk) with the mesh."""
    from protos import model_mesh_pb2 as mm
    from protos import model_mesh_pb2_grpc as mm_grpc
    from protos import mmesh_ext_pb2 as ext
    from protos import mmesh_ext_pb2_grpc as ext_grpc

    if from_file is not None:
        entries = _read_model_file(from_file)
    elif model_id and path:
        entries = [{"modelId": model_id, "type": type, "path": path, "key": key, "minCopies": min_copies}]
    else:
        raise typer.BadParameter("give MODEL_ID and --path, or --from-file")
    counts: dict[str, int] = {}
    with _channel(target, tls_ca, tls_cert, tls_key) as channel:
        stub = ext_grpc.ModelMeshExtensionsStub(channel)
        for start in range(0, len(entries), BULK_BATCH):
            batch = entries[start : start + BULK_BATCH]
            request = ext.RegisterModelsRequest(
                models=[
                    mm.RegisterModelRequest(
                        modelId=e["modelId"],
                        modelInfo=mm.ModelInfo(type=e.get("type", "onnx"), path=e.get("path", ""), key=e.get("key", "")),
                        loadNow=load_now,
                        sync=load_now,
                    )
                    for e in batch
                ],
                minCopies={e["modelId"]: int(e["minCopies"]) for e in batch if e.get("minCopies")},
            )
            try:
                response = stub.registerModels(request, timeout=600)
            except grpc.RpcError as exc:
                _fail(exc)
            for result in response.results:
                counts[result.code] = counts.get(result.code, 0) + 1
                if result.code != "OK":
                    console.print(f"{result.modelId}: {result.code} {result.message}", markup=False)
        if from_file is None and counts.get("OK"):
            status = mm_grpc.ModelMeshStub(channel).getModelStatus(mm.GetStatusRequest(modelId=model_id), timeout=30)
            console.print(f"{model_id}: {mm.ModelStatusInfo.ModelStatus.Name(status.status)}")
            for error in status.errors:
                console.print(f"  {error}", markup=False)
            return
    summary = ", ".join(f"{n} {code}" for code, n in sorted(counts.items()))
    console.print(f"{len(entries)} model(s): {summary}")
    if set(counts) - {"OK"}:
        raise typer.Exit(1)


@app.command()
def models(
    target: TargetOpt = "127.0.0.1:8033",
    page_size: int = 500,
    tls_ca: TlsCaOpt = None,
    tls_cert: TlsCertOpt = None,
    tls_key: TlsKeyOpt = None,
) -> None:
    """Table of registered models with status, size and copies."""
    from protos import model_mesh_pb2 as mm
    from protos import mmesh_ext_pb2 as ext
    from protos import mmesh_ext_pb2_grpc as ext_grpc

    table = Table("model", "type", "status", "size", "copies", "path")
    token, total = "", 0
    with _channel(target, tls_ca, tls_cert, tls_key) as channel:
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
    tls_ca: TlsCaOpt = None,
    tls_cert: TlsCertOpt = None,
    tls_key: TlsKeyOpt = None,
) -> None:
    """Send one input, print the outputs."""
    from protos import grpc_predict_v2_pb2 as v2
    from protos import grpc_predict_v2_pb2_grpc as v2_grpc
    from protos.tensor_codec import DATATYPE_TO_DTYPE, decode_outputs, encode_inputs

    with _channel(target, tls_ca, tls_cert, tls_key) as channel:
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
