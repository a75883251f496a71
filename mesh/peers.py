"""gRPC channels to the other sidecars, for forwarding requests to where a
model is (or will be) loaded. One channel per peer endpoint, opened on first
use and closed when the peer leaves the instance table; an in-flight count
per peer feeds the power-of-two-choices pick between copies."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

import grpc

from mesh.errors import RuntimeUnavailable, error_from_status
from mesh.logs import REQUEST_ID_HEADER, current_request_id
from mesh.records import InstanceRecord
from mesh.tls import TlsMaterial, open_peer_channel
from mesh.views import TableView

if TYPE_CHECKING:
    from mesh.tls_reload import TlsReloader
from protos import grpc_predict_v2_pb2_grpc as v2_grpc
from runtime_adapter.server import MAX_MESSAGE_BYTES

T = TypeVar("T")

MODEL_ID_HEADER = "mm-model-id"
VMODEL_ID_HEADER = "mm-vmodel-id"
FORWARDED_HEADER = "mm-forwarded"  # set on hops between sidecars: serve here, never forward again
# How long a peer whose connection failed is passed over: long enough to cover
# a burst of requests, short next to the instance TTL (a live peer whose
# connection blipped is back in play soon; a dead one leaves with its lease).
UNREACHABLE_S = 3.0
RELOAD_CLOSE_GRACE_S = 30.0  # calls in flight on a channel made with the old certificate get this long


def hop_metadata(model_id: str, sender: str) -> tuple[tuple[str, str], ...]:
    """Headers of a request one sidecar sends another: the resolved model,
    who forwarded it (so the receiver serves it and never forwards again),
    and the request's id (so both sidecars' log lines carry the same one)."""
    request_id = current_request_id()
    if request_id is None:
        return ((MODEL_ID_HEADER, model_id), (FORWARDED_HEADER, sender))
    return ((MODEL_ID_HEADER, model_id), (FORWARDED_HEADER, sender), (REQUEST_ID_HEADER, request_id))


@dataclass(frozen=True)
class Peer:
    """A connection to one sidecar: its v2 stub, and raw calls for any method."""

    endpoint: str
    channel: grpc.aio.Channel
    v2: v2_grpc.GRPCInferenceServiceStub

    async def raw(self, method: str, payload: bytes, metadata, timeout: float) -> bytes:
        return await self.channel.unary_unary(method)(payload, metadata=metadata, timeout=timeout)


class Peers:
    def __init__(
        self, instances: TableView[InstanceRecord], tls: TlsMaterial | None = None, reloader: "TlsReloader | None" = None
    ) -> None:
        self._instances = instances
        # peers speak TLS (mutual, with the serving certificate) when this sidecar
        # does; with a reloader, always its latest material
        self._tls = tls
        self._reloader = reloader
        if reloader is not None:
            reloader.add_listener(self._on_tls_reload)
        self._peers: dict[str, Peer] = {}
        try:  # where channels live: built on the sidecar's loop
            self._loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            self._loop = None
        self.in_flight: Counter[str] = Counter()
        # peers whose connection just failed: instance -> (until, endpoint)
        self._unreachable: dict[str, tuple[float, str]] = {}
        instances.add_listener(self._on_instance_change)

    @property
    def any_unreachable(self) -> bool:
        return bool(self._unreachable)

    def reachable(self, instance_id: str) -> bool:
        """False for UNREACHABLE_S after a call to the peer failed for want of
        a connection. A peer that died keeps its instance record until its
        lease expires (up to the TTL); without this mark every request in
        that window would try it first and pay a failed connection."""
        mark = self._unreachable.get(instance_id)
        if mark is None:
            return True
        until, endpoint = mark
        record = self._instances.get(instance_id)
        if time.monotonic() >= until or record is None or record.endpoint != endpoint:
            del self._unreachable[instance_id]  # expired, or it came back elsewhere
            return True
        return False

    def _mark_if_disconnected(self, instance_id: str, peer: Peer) -> None:
        """Mark the peer when its channel is down (the transport failed), not
        when the peer answered UNAVAILABLE itself (say, its runtime is
        restarting): that is about one request, not the connection."""
        try:
            state = peer.channel.get_state(try_to_connect=False)
        except Exception:  # a closed channel: the instance is on its way out anyway
            return
        if state in (grpc.ChannelConnectivity.TRANSIENT_FAILURE, grpc.ChannelConnectivity.SHUTDOWN):
            self._unreachable[instance_id] = (time.monotonic() + UNREACHABLE_S, peer.endpoint)

    def _peer(self, instance_id: str) -> Peer:
        record = self._instances.get(instance_id)
        if record is None:
            raise RuntimeUnavailable(f"instance {instance_id!r} is not in the mesh")
        cached = self._peers.get(instance_id)
        if cached is not None and cached.endpoint == record.endpoint:
            return cached
        channel = open_peer_channel(
            record.endpoint,
            [
                ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ],
            self._reloader.material if self._reloader is not None else self._tls,
        )
        peer = Peer(record.endpoint, channel, v2_grpc.GRPCInferenceServiceStub(channel))
        self._peers[instance_id] = peer
        return peer

    async def call(self, instance_id: str, fn: Callable[[Peer], Awaitable[T]]) -> T:
        """Run `fn` against the peer; gRPC failures come back as MeshErrors
        (UNAVAILABLE when the peer cannot be reached)."""
        peer = self._peer(instance_id)
        self.in_flight[instance_id] += 1
        try:
            return await fn(peer)
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.UNAVAILABLE:
                self._mark_if_disconnected(instance_id, peer)
                raise RuntimeUnavailable(f"peer {instance_id} unreachable: {exc.details()}") from exc
            raise error_from_status(exc.code(), exc.details() or exc.code().name) from exc
        finally:
            self.in_flight[instance_id] -= 1
            if not self.in_flight[instance_id]:
                del self.in_flight[instance_id]

    def _on_tls_reload(self, material: TlsMaterial) -> None:
        """Renewed certificate (called from the reloader's thread): new channels
        present it; cached ones are dropped and closed after a grace period,
        so calls in flight on them finish."""
        loop = self._loop
        if loop is not None:
            loop.call_soon_threadsafe(self._drop_channels)

    def _drop_channels(self) -> None:
        old, self._peers = self._peers, {}
        for peer in old.values():
            asyncio.ensure_future(peer.channel.close(grace=RELOAD_CLOSE_GRACE_S))

    def _on_instance_change(self, instance_id: str, record: InstanceRecord | None) -> None:
        if record is None:
            cached = self._peers.pop(instance_id, None)
            if cached is not None:
                # closed in the background: in-flight calls on it fail over
                asyncio.ensure_future(cached.channel.close())

    async def close(self) -> None:
        for peer in self._peers.values():
            await peer.channel.close()
        self._peers.clear()
