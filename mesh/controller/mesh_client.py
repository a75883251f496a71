"""Writes to the mesh: ModelMesh's management API over gRPC (setVModel,
deleteVModel), to any sidecar behind the mesh Service. Going through the API
rather than writing etcd keeps one owner of registry semantics (validation,
vModel transitions, auto-deleting the old concrete model, loadNow)."""

from __future__ import annotations

import grpc

from protos import model_mesh_pb2 as mm
from protos import model_mesh_pb2_grpc as mm_grpc

CALL_TIMEOUT_S = 10.0  # ModelMesh's controller uses 10 s too


class MeshClient:
    def __init__(self, target: str, credentials: grpc.ChannelCredentials | None = None) -> None:
        """`credentials`: TLS towards a mesh that serves it (None: plaintext)."""
        self.target = target
        self._credentials = credentials
        self._channel: grpc.aio.Channel | None = None
        self._stub: mm_grpc.ModelMeshStub | None = None

    @property
    def stub(self) -> mm_grpc.ModelMeshStub:
        """Made on first use, so the channel belongs to the event loop that uses it."""
        if self._stub is None:
            self._channel = (
                grpc.aio.secure_channel(self.target, self._credentials)
                if self._credentials is not None else grpc.aio.insecure_channel(self.target)
            )
            self._stub = mm_grpc.ModelMeshStub(self._channel)
        return self._stub

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()

    async def set_vmodel(self, request: mm.SetVModelRequest) -> mm.VModelStatusInfo:
        return await self.stub.setVModel(request, timeout=CALL_TIMEOUT_S)

    async def delete_vmodel(self, vmodel_id: str, owner: str) -> None:
        await self.stub.deleteVModel(mm.DeleteVModelRequest(vModelId=vmodel_id, owner=owner), timeout=CALL_TIMEOUT_S)


def mesh_credentials(ca: str, cert: str, key: str) -> grpc.ChannelCredentials | None:
    """TLS credentials when any of the three is set (the mesh's certificate
    must name the mesh Service, e.g. modelmesh-serving.<namespace>)."""
    if not (ca or cert or key):
        return None
    from mesh.tls import client_channel_credentials

    return client_channel_credentials(ca or None, cert or None, key or None)
