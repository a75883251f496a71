"""TLS and mutual TLS on the sidecar's gRPC port, between peers, for the CLI
and the REST front end, with certificates made here (a CA, a server/peer
certificate for 127.0.0.1 and localhost, a client certificate, and one from
a CA the mesh does not trust)."""

from __future__ import annotations

import datetime
import ipaddress
import socket
import ssl
import subprocess
import sys
from dataclasses import dataclass, replace
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as triton
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from tritonclient.utils import InferenceServerException

from mesh.etcd_process import free_port
from mesh.settings import MeshSettings
from mesh.tls import TlsConfigError, load_tls, server_ssl_context
from protos import model_mesh_pb2 as mm
from protos import model_mesh_pb2_grpc as mm_grpc
from tests.helpers import metric, wait_for


# --- certificates ----------------------------------------------------------


@dataclass(frozen=True)
class Issued:
    cert: Path
    key: Path


def _write(path: Path, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate) -> Issued:
    key_path, cert_path = path.with_suffix(".key"), path.with_suffix(".crt")
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return Issued(cert_path, key_path)


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _certificate(subject: str, issuer: x509.Name, key: ec.EllipticCurvePrivateKey, *, ca: bool) -> x509.CertificateBuilder:
    """A day-long certificate for `key`; leaves carry both EKUs (peers present
    their serving certificate as a client certificate too)."""
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if ca:
        return builder.add_extension(x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True)
    return builder.add_extension(
        x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
    )


LOOPBACK_SANS = x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])


def self_signed(directory: Path, name: str) -> Issued:
    """A serving certificate that is its own trust anchor (no CA)."""
    key = ec.generate_private_key(ec.SECP256R1())
    cert = _certificate(name, _name(name), key, ca=False).add_extension(LOOPBACK_SANS, critical=False)
    return _write(directory / name, key, cert.sign(key, hashes.SHA256()))


class CertificateAuthority:
    """A throwaway CA that issues leaf certificates into a directory."""

    def __init__(self, directory: Path, name: str) -> None:
        self.directory = directory
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.name = _name(name)
        self.cert = _certificate(name, self.name, self.key, ca=True).sign(self.key, hashes.SHA256())
        self.files = _write(directory / name, self.key, self.cert)

    def issue(self, name: str, *, server: bool) -> Issued:
        """A leaf for `name`; server (and peer) certificates carry the SANs
        127.0.0.1 and localhost, where tests reach sidecars and peers each other."""
        key = ec.generate_private_key(ec.SECP256R1())
        builder = _certificate(name, self.name, key, ca=False)
        if server:
            builder = builder.add_extension(LOOPBACK_SANS, critical=False)
        return _write(self.directory / name, key, builder.sign(self.key, hashes.SHA256()))


@dataclass(frozen=True)
class Pki:
    ca: Path
    server: Issued
    client: Issued
    rogue_client: Issued  # signed by a CA the mesh does not trust
    self_signed: Issued

    def sidecar(self, client_auth: str = "none") -> dict[str, str]:
        """start_sidecar overrides for a TLS sidecar."""
        return {
            "tls_cert_path": str(self.server.cert),
            "tls_key_path": str(self.server.key),
            "tls_trust_cert_path": str(self.ca),
            "tls_client_auth": client_auth,
        }


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    directory = tmp_path_factory.mktemp("pki")
    ca, other = CertificateAuthority(directory, "mesh-ca"), CertificateAuthority(directory, "other-ca")
    return Pki(
        ca.files.cert, ca.issue("server", server=True), ca.issue("client", server=False),
        other.issue("rogue", server=False), self_signed(directory, "self-signed"),
    )


# --- clients ---------------------------------------------------------------


def tls_channel(address: str, pki: Pki, client: Issued | None = None) -> grpc.Channel:
    credentials = grpc.ssl_channel_credentials(
        pki.ca.read_bytes(),
        client.key.read_bytes() if client else None,
        client.cert.read_bytes() if client else None,
    )
    return grpc.secure_channel(address, credentials)


def register_tls(address: str, pki: Pki, model_id: str, path: Path) -> None:
    with tls_channel(address, pki, pki.client) as channel:
        request = mm.RegisterModelRequest(modelId=model_id, modelInfo=mm.ModelInfo(type="onnx", path=str(path)))
        mm_grpc.ModelMeshStub(channel).registerModel(request, timeout=60)


def triton_client(address: str, pki: Pki, client: Issued | None = None) -> triton.InferenceServerClient:
    return triton.InferenceServerClient(
        address,
        ssl=True,
        root_certificates=str(pki.ca),
        private_key=str(client.key) if client else None,
        certificate_chain=str(client.cert) if client else None,
    )


def dense_input() -> triton.InferInput:
    inp = triton.InferInput("x", [1, 64], "FP32")
    inp.set_data_from_numpy(np.ones((1, 64), np.float32))
    return inp


# --- gRPC ------------------------------------------------------------------


def test_tls_sidecar_serves_tritonclient_and_refuses_plain_text(start_sidecar, pki, models_dir):
    sidecar = start_sidecar(**pki.sidecar())
    register_tls(sidecar.address, pki, "add", models_dir / "add")
    client = triton_client(sidecar.address, pki)
    assert client.is_server_live()
    inp = triton.InferInput("x", [1, 4], "FP32")
    inp.set_data_from_numpy(np.arange(4, dtype=np.float32).reshape(1, 4))
    np.testing.assert_array_equal(client.infer("add", [inp]).as_numpy("y"), [[1, 2, 3, 4]])

    with pytest.raises(InferenceServerException):
        triton.InferenceServerClient(sidecar.address).is_server_live(client_timeout=5)


def test_mutual_tls_requires_a_client_certificate_from_the_trusted_ca(start_sidecar, pki):
    sidecar = start_sidecar(**pki.sidecar("require"))
    assert triton_client(sidecar.address, pki, pki.client).is_server_live()
    for refused in (None, pki.rogue_client):
        with pytest.raises(InferenceServerException):
            triton_client(sidecar.address, pki, refused).is_server_live(client_timeout=5)


def test_optional_client_auth_accepts_clients_with_and_without_a_certificate(start_sidecar, pki):
    sidecar = start_sidecar(**pki.sidecar("optional"))
    assert triton_client(sidecar.address, pki).is_server_live()
    assert triton_client(sidecar.address, pki, pki.client).is_server_live()


def assert_forwarded_between(a, b, register_on_a, client_for) -> None:
    """A model loaded on `a` and requested through `b` is served by `a`, via b."""
    wait_for(lambda: len(a.instances) == 2 and len(b.instances) == 2, what="instances")
    register_on_a("fw")
    first = client_for(a).infer("fw", [dense_input()]).as_numpy("y")
    assert "fw" in a.loader.copies
    wait_for(lambda: a.settings.instance_id in (b.view.get("fw").instances if b.view.get("fw") else {}), what="copy record")
    second = client_for(b).infer("fw", [dense_input()]).as_numpy("y")
    np.testing.assert_array_equal(first, second)
    assert "fw" not in b.loader.copies  # b forwarded to a over TLS instead of loading it
    assert metric(b.metrics_port, "mmesh_forwarded_requests_total") == 1


def test_peers_forward_over_mutual_tls(start_sidecar, pki, models_dir):
    a = start_sidecar(metrics_port=free_port(), **pki.sidecar("require"))
    b = start_sidecar(metrics_port=free_port(), **pki.sidecar("require"))
    assert_forwarded_between(
        a, b, lambda model_id: register_tls(a.address, pki, model_id, models_dir / "dense-1"),
        lambda sidecar: triton_client(sidecar.address, pki, pki.client),
    )


def test_peers_trust_a_self_signed_certificate_without_a_ca(start_sidecar, pki, models_dir):
    own = {"tls_cert_path": str(pki.self_signed.cert), "tls_key_path": str(pki.self_signed.key)}
    a, b = start_sidecar(metrics_port=free_port(), **own), start_sidecar(metrics_port=free_port(), **own)
    as_ca = replace(pki, ca=pki.self_signed.cert)  # clients trust it as their CA
    assert_forwarded_between(
        a, b, lambda model_id: register_tls(a.address, as_ca, model_id, models_dir / "dense-1"),
        lambda sidecar: triton_client(sidecar.address, as_ca),
    )


def test_cli_talks_to_a_tls_mesh(start_sidecar, pki, models_dir):
    sidecar = start_sidecar(**pki.sidecar("require"))
    tls = ["--tls-ca", str(pki.ca), "--tls-cert", str(pki.client.cert), "--tls-key", str(pki.client.key)]

    def mmesh(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "mesh.cli", *args, "-t", sidecar.address], capture_output=True, text=True, timeout=120)

    registered = mmesh("register", "add", "--path", str(models_dir / "add"), *tls)
    assert registered.returncode == 0, registered.stdout + registered.stderr
    listed = mmesh("models", *tls)
    assert listed.returncode == 0 and "add" in listed.stdout, listed.stdout + listed.stderr
    out = mmesh("infer", "add", "--data", "[[1, 2, 3, 4]]", *tls)
    assert out.returncode == 0 and "[[2.0, 3.0, 4.0, 5.0]]" in out.stdout, out.stdout + out.stderr
    assert mmesh("models", "--tls-ca", str(pki.ca)).returncode != 0  # no client certificate: refused


# --- configuration ---------------------------------------------------------


def test_modelmesh_environment_variables_configure_tls(monkeypatch, pki):
    for name, value in {
        "MM_TLS_KEY_CERT_PATH": pki.server.cert, "MM_TLS_PRIVATE_KEY_PATH": pki.server.key,
        "MM_TLS_CLIENT_AUTH": "REQUIRE", "MM_TLS_TRUST_CERT_PATH": pki.ca,
    }.items():
        monkeypatch.setenv(name, str(value))
    tls = load_tls(MeshSettings())
    assert tls is not None and tls.client_auth.value == "require" and tls.trust == pki.ca.read_bytes()
    assert server_ssl_context(MeshSettings()).verify_mode == ssl.CERT_REQUIRED  # REST asks for client certificates
    for name in ("MM_TLS_KEY_CERT_PATH", "MM_TLS_PRIVATE_KEY_PATH", "MM_TLS_CLIENT_AUTH", "MM_TLS_TRUST_CERT_PATH"):
        monkeypatch.delenv(name)
    assert load_tls(MeshSettings()) is None and server_ssl_context(MeshSettings()) is None  # plain text is the default


def _misconfigurations(pki: Pki, tmp: Path) -> dict[str, tuple[dict[str, str], str]]:
    """name → (settings, words the error must contain)."""
    good = pki.sidecar()
    (tmp / "junk.pem").write_text("not a certificate\n")
    return {
        "missing key file": ({**good, "tls_key_path": str(tmp / "absent.key")}, "MM_TLS_PRIVATE_KEY_PATH"),
        "key of another certificate": ({**good, "tls_key_path": str(pki.client.key)}, "MM_TLS_KEY_CERT_PATH"),
        "certificate is not PEM": ({**good, "tls_cert_path": str(tmp / "junk.pem")}, "not a PEM file"),
        "cert without key": ({**good, "tls_key_path": ""}, "MM_TLS_PRIVATE_KEY_PATH is not set"),
        "require without a CA": ({**good, "tls_trust_cert_path": "", "tls_client_auth": "require"}, "MM_TLS_TRUST_CERT_PATH"),
        "unknown client auth": ({**good, "tls_client_auth": "sometimes"}, "MM_TLS_CLIENT_AUTH"),
    }


@pytest.mark.parametrize(
    "case",
    ["missing key file", "key of another certificate", "certificate is not PEM", "cert without key", "require without a CA", "unknown client auth"],
)
def test_misconfigured_tls_fails_start_clearly_and_leaves_nothing_running(start_sidecar, pki, tmp_path, case):
    overrides, words = _misconfigurations(pki, tmp_path)[case]
    metrics_port = free_port()
    with pytest.raises(TlsConfigError, match=words):
        start_sidecar(metrics_port=metrics_port, **overrides)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", metrics_port))  # the metrics port was never taken (or was released)
    survivor = start_sidecar()  # same etcd prefix: the failed one left no instance record
    assert set(survivor.instances.ids()) == {survivor.settings.instance_id}


# --- REST ------------------------------------------------------------------


@pytest.fixture
def rest_over_tls(start_sidecar, pki, models_dir) -> str:
    """The https URL of a mutual-TLS sidecar's own REST front end, with a model."""
    sidecar = start_sidecar(rest_port=free_port(), **pki.sidecar("require"))
    register_tls(sidecar.address, pki, "add", models_dir / "add")
    return f"https://127.0.0.1:{sidecar.rest_port}"


def https_client(pki: Pki, client: Issued | None) -> httpx.Client:
    context = ssl.create_default_context(cafile=str(pki.ca))
    if client is not None:
        context.load_cert_chain(str(client.cert), str(client.key))
    return httpx.Client(verify=context, timeout=10)


def test_rest_serves_mutual_tls(rest_over_tls, pki):
    body = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}
    with https_client(pki, pki.client) as client:
        response = client.post(f"{rest_over_tls}/v2/models/add/infer", json=body)
        assert response.status_code == 200, response.text
        assert response.json()["outputs"][0]["data"] == [2, 3, 4, 5]
    for refused in (None, pki.rogue_client):
        with https_client(pki, refused) as client, pytest.raises(httpx.TransportError):
            client.get(f"{rest_over_tls}/v2/health/live")
    with httpx.Client(timeout=10) as plain, pytest.raises(httpx.TransportError):
        plain.get(rest_over_tls.replace("https://", "http://") + "/v2/health/live")
