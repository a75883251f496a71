"""A renewed certificate is served without a restart: gRPC (at the next
handshake), REST (at the next check) and peers; a half-written rotation is
refused and the current certificate kept."""

from __future__ import annotations

import shutil
import ssl
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as triton

from mesh.etcd_process import free_port
from protos import grpc_predict_v2_pb2 as v2
from protos import grpc_predict_v2_pb2_grpc as v2_grpc
from protos import model_mesh_pb2 as mm
from protos import model_mesh_pb2_grpc as mm_grpc
from tests.helpers import wait_for
from tests.test_tls import CertificateAuthority, Issued


def install(issued: Issued, cert: Path, key: Path) -> None:
    """Replace both files at once, as Kubernetes swaps a secret's files."""
    for source, target in ((issued.cert, cert), (issued.key, key)):
        staged = target.with_suffix(".new")
        shutil.copyfile(source, staged)
        staged.replace(target)


def grpc_live(address: str, ca: Path) -> bool:
    """A fresh connection that trusts only `ca` can call the server."""
    credentials = grpc.ssl_channel_credentials(ca.read_bytes())
    try:
        with grpc.secure_channel(address, credentials) as channel:
            return v2_grpc.GRPCInferenceServiceStub(channel).ServerLive(v2.ServerLiveRequest(), timeout=5).live
    except grpc.RpcError:
        return False


def rest_live(url: str, ca: Path) -> bool:
    context = ssl.create_default_context(cafile=str(ca))
    try:
        with httpx.Client(verify=context, timeout=5) as client:  # a new connection each time
            return client.get(f"{url}/v2/health/live").status_code == 200
    except httpx.TransportError:
        return False


@pytest.fixture
def cas(tmp_path: Path) -> tuple[CertificateAuthority, CertificateAuthority]:
    return CertificateAuthority(tmp_path, "old-ca"), CertificateAuthority(tmp_path, "new-ca")


def test_a_renewed_certificate_is_served_without_a_restart(start_sidecar, tmp_path, cas):
    old_ca, new_ca = cas
    cert, key = tmp_path / "tls.crt", tmp_path / "tls.key"
    install(old_ca.issue("server-1", server=True), cert, key)
    sidecar = start_sidecar(tls_cert_path=str(cert), tls_key_path=str(key), tls_reload_s=0.2, rest_port=free_port())
    url = f"https://127.0.0.1:{sidecar.rest_port}"
    assert grpc_live(sidecar.address, old_ca.files.cert) and rest_live(url, old_ca.files.cert)

    install(new_ca.issue("server-2", server=True), cert, key)
    wait_for(lambda: grpc_live(sidecar.address, new_ca.files.cert), timeout_s=10, what="gRPC serving the new certificate")
    wait_for(lambda: rest_live(url, new_ca.files.cert), timeout_s=10, what="REST serving the new certificate")
    assert not grpc_live(sidecar.address, old_ca.files.cert) and not rest_live(url, old_ca.files.cert)
    assert sidecar.tls.cert_path == str(cert) and sidecar.tls_reloader.version >= 1


def test_a_half_written_rotation_keeps_the_current_certificate(start_sidecar, tmp_path, cas):
    old_ca, new_ca = cas
    cert, key = tmp_path / "tls.crt", tmp_path / "tls.key"
    install(old_ca.issue("server-1", server=True), cert, key)
    sidecar = start_sidecar(tls_cert_path=str(cert), tls_key_path=str(key), tls_reload_s=0.1)
    half = new_ca.issue("server-2", server=True)
    shutil.copyfile(half.cert, cert)  # the certificate is new, the key still the old one: a mismatch
    assert not sidecar.tls_reloader.check()
    assert grpc_live(sidecar.address, old_ca.files.cert)
    shutil.copyfile(half.key, key)  # the rotation completes
    wait_for(lambda: grpc_live(sidecar.address, new_ca.files.cert), timeout_s=10, what="the completed rotation")


def test_peers_forward_across_a_rotation_on_fresh_channels(start_sidecar, tmp_path, cas, models_dir):
    """Two sidecars on mutual TLS, trusting both CAs (a rotation's bundle),
    share the rotated files: after the reload the cached peer channel is
    dropped, and forwarding goes on over a new one with the new certificate."""
    old_ca, new_ca = cas
    cert, key, bundle = tmp_path / "tls.crt", tmp_path / "tls.key", tmp_path / "trust.pem"
    bundle.write_bytes(old_ca.files.cert.read_bytes() + new_ca.files.cert.read_bytes())
    install(old_ca.issue("server-1", server=True), cert, key)
    client_cert = old_ca.issue("client", server=False)
    tls = dict(tls_cert_path=str(cert), tls_key_path=str(key), tls_trust_cert_path=str(bundle),
               tls_client_auth="require", tls_reload_s=0.1)
    a, b = start_sidecar(**tls), start_sidecar(**tls)
    wait_for(lambda: len(a.instances) == 2, what="instances")

    def client(address: str) -> triton.InferenceServerClient:
        return triton.InferenceServerClient(address, ssl=True, root_certificates=str(bundle),
                                            private_key=str(client_cert.key), certificate_chain=str(client_cert.cert))

    inp = triton.InferInput("x", [1, 64], "FP32")
    inp.set_data_from_numpy(np.ones((1, 64), np.float32))
    with grpc.secure_channel(b.address, grpc.ssl_channel_credentials(bundle.read_bytes(), client_cert.key.read_bytes(),
                                                                     client_cert.cert.read_bytes())) as channel:
        mm_grpc.ModelMeshStub(channel).registerModel(mm.RegisterModelRequest(
            modelId="on-b", modelInfo=mm.ModelInfo(type="onnx", path=str(models_dir / "dense-0"))), timeout=30)
    client(b.address).infer("on-b", [inp])
    wait_for(lambda: a.view.get("on-b") is not None and b.settings.instance_id in a.view.get("on-b").instances,
             what="a sees b's copy")
    client(a.address).infer("on-b", [inp])  # forwarded: a opens a channel to b
    first_channel = a.peers._peers[b.settings.instance_id].channel

    install(new_ca.issue("server-2", server=True), cert, key)
    wait_for(lambda: a.tls_reloader.version >= 1 and b.tls_reloader.version >= 1, what="both reloaded")
    wait_for(lambda: b.settings.instance_id not in a.peers._peers, what="a's cached channel dropped")
    client(a.address).infer("on-b", [inp])  # forwarded again, on a new channel
    assert a.peers._peers[b.settings.instance_id].channel is not first_channel
    assert not a.loader.try_peek("on-b")  # it was b's copy that answered
