"""Small blocking helpers the end-to-end tests share: register models and
read status through the management API, and scrape Prometheus metrics."""

from __future__ import annotations

import re
import urllib.request
from pathlib import Path

import grpc

from protos import model_mesh_pb2 as mm
from protos import model_mesh_pb2_grpc as mm_grpc


def management(address: str) -> mm_grpc.ModelMeshStub:
    return mm_grpc.ModelMeshStub(grpc.insecure_channel(address))


def register(address: str, model_id: str, path: Path | str, type: str = "onnx", **flags: bool) -> mm.ModelStatusInfo:
    request = mm.RegisterModelRequest(modelId=model_id, modelInfo=mm.ModelInfo(type=type, path=str(path)), **flags)
    return management(address).registerModel(request, timeout=60)


def status(address: str, model_id: str) -> mm.ModelStatusInfo:
    return management(address).getModelStatus(mm.GetStatusRequest(modelId=model_id), timeout=10)


def status_name(address: str, model_id: str) -> str:
    return mm.ModelStatusInfo.ModelStatus.Name(status(address, model_id).status)


def metric(port: int, name: str) -> float:
    """Sum of every sample of `name` (all label sets) on a /metrics endpoint."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    total = 0.0
    for line in text.splitlines():
        match = re.match(rf"^{re.escape(name)}(\{{[^}}]*\}})? (\S+)$", line)
        if match:
            total += float(match.group(2))
    return total
