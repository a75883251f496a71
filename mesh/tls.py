"""TLS for the sidecar, under ModelMesh's settings: `MM_TLS_KEY_CERT_PATH`
(certificate chain, PEM), `MM_TLS_PRIVATE_KEY_PATH` (its key), `MM_TLS_CLIENT_AUTH`
(none | optional | require) and `MM_TLS_TRUST_CERT_PATH` (CA certificates, PEM,
comma-separated paths allowed) that verify clients and peers.

One place reads and checks the files, at sidecar start and before anything
else starts, so a misconfigured pod fails at once with a message naming the
setting and the file, instead of at the first handshake. From them it builds
what each server and client needs:

- the gRPC server's credentials (`add_grpc_port`);
- the channel credentials peers use to forward to each other
  (`open_peer_channel`): every sidecar of a mesh shares one configuration, so a
  peer presents the serving certificate as its client certificate (mutual
  TLS), and verifies the other side with the trust CA, or, without one, with
  the serving certificate itself (enough for a self-signed certificate). Peers
  are dialled at their advertised host, which must be in the certificate's
  SANs, unless `MMESH_TLS_TARGET_NAME_OVERRIDE` names the host to check;
- an `ssl.SSLContext` for the aiohttp REST server (`server_ssl_context`;
  probes stay plain HTTP for kubelet);
- client credentials for the CLI (`client_channel_credentials`).

Plain text stays the default: with no certificate and no key, all of these
are None and servers and channels are insecure.

Files are checked at start; renewed files are picked up while running by
`mesh.tls_reload.TlsReloader` (new connections get the new certificate).

gRPC Python cannot ask for a client certificate without requiring one, so on
the gRPC port `optional` serves like `none` (a client certificate is not
asked for); the REST server asks for one and verifies it when it is sent.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import grpc

if TYPE_CHECKING:
    from mesh.settings import MeshSettings

ChannelOptions = Sequence[tuple[str, object]]

CERT_ENV = "MM_TLS_KEY_CERT_PATH"
KEY_ENV = "MM_TLS_PRIVATE_KEY_PATH"
CLIENT_AUTH_ENV = "MM_TLS_CLIENT_AUTH"
TRUST_ENV = "MM_TLS_TRUST_CERT_PATH"


class TlsConfigError(ValueError):
    """The TLS settings or files are unusable; the message names the setting."""


class ClientAuth(str, Enum):
    NONE = "none"
    OPTIONAL = "optional"
    REQUIRE = "require"

    @classmethod
    def parse(cls, value: str) -> "ClientAuth":
        try:
            return cls((value or "none").strip().lower())
        except ValueError:
            choices = "|".join(member.value for member in cls)
            raise TlsConfigError(f"{CLIENT_AUTH_ENV}={value!r}: expected one of {choices}") from None


def _read(path: str, setting: str) -> bytes:
    """A PEM file's bytes, or an error that says which setting points where."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise TlsConfigError(f"{setting}={path}: cannot read: {exc.strerror or exc}") from None
    if b"-----BEGIN " not in data:
        raise TlsConfigError(f"{setting}={path}: not a PEM file")
    return data


def _read_all(paths: str, setting: str) -> bytes:
    """Several PEM files (comma-separated paths) as one bundle."""
    return b"\n".join(_read(p.strip(), setting) for p in paths.split(",") if p.strip())


@dataclass(frozen=True)
class TlsMaterial:
    """The checked TLS files of one sidecar and the credentials built from them."""

    cert_path: str
    key_path: str
    cert_chain: bytes
    private_key: bytes
    trust: bytes | None  # CA bundle verifying clients and peers; None: no client auth
    client_auth: ClientAuth
    target_name_override: str = ""

    def server_credentials(self) -> grpc.ServerCredentials:
        return grpc.ssl_server_credentials(
            [(self.private_key, self.cert_chain)],
            root_certificates=self.trust,
            require_client_auth=self.client_auth is ClientAuth.REQUIRE,
        )

    def peer_credentials(self) -> grpc.ChannelCredentials:
        """A peer presents the serving certificate (peers of a mesh share one
        configuration) and verifies the other side with the trust CA, or with
        the serving certificate itself when there is no CA (self-signed)."""
        return grpc.ssl_channel_credentials(
            root_certificates=self.trust or self.cert_chain,
            private_key=self.private_key,
            certificate_chain=self.cert_chain,
        )

    def peer_channel_options(self) -> list[tuple[str, object]]:
        if not self.target_name_override:
            return []
        return [("grpc.ssl_target_name_override", self.target_name_override)]

    def server_ssl_context(self) -> ssl.SSLContext:
        """For aiohttp: same certificate; client certificates verified against
        the trust CA only (never the system store, which would let any
        publicly signed certificate through)."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(self.cert_path, self.key_path)
        if self.trust is not None:
            context.load_verify_locations(cadata=self.trust.decode("ascii", "replace"))
        context.verify_mode = {
            ClientAuth.NONE: ssl.CERT_NONE,
            ClientAuth.OPTIONAL: ssl.CERT_OPTIONAL,
            ClientAuth.REQUIRE: ssl.CERT_REQUIRED,
        }[self.client_auth]
        return context


def load_tls(settings: "MeshSettings") -> TlsMaterial | None:
    """The sidecar's TLS material, or None for plain text. Raises
    TlsConfigError for half or inconsistent settings and unusable files."""
    cert_path, key_path = settings.tls_cert_path, settings.tls_key_path
    trust_path = settings.tls_trust_cert_path
    client_auth = ClientAuth.parse(settings.tls_client_auth)
    if not cert_path and not key_path:
        if trust_path or client_auth is not ClientAuth.NONE:
            raise TlsConfigError(f"{TRUST_ENV}/{CLIENT_AUTH_ENV} need {CERT_ENV} and {KEY_ENV} (TLS is off without them)")
        return None
    if not cert_path or not key_path:
        missing = CERT_ENV if not cert_path else KEY_ENV
        raise TlsConfigError(f"TLS needs both {CERT_ENV} and {KEY_ENV}; {missing} is not set")
    if client_auth is not ClientAuth.NONE and not trust_path:
        raise TlsConfigError(f"{CLIENT_AUTH_ENV}={client_auth.value} needs {TRUST_ENV} (the CA that signs client certificates)")
    material = TlsMaterial(
        cert_path=cert_path,
        key_path=key_path,
        cert_chain=_read(cert_path, CERT_ENV),
        private_key=_read(key_path, KEY_ENV),
        trust=_read_all(trust_path, TRUST_ENV) if trust_path else None,
        client_auth=client_auth,
        target_name_override=settings.tls_target_name_override,
    )
    try:
        material.server_ssl_context()  # OpenSSL checks the PEMs and that the key matches the certificate
    except ssl.SSLError as exc:
        raise TlsConfigError(
            f"{CERT_ENV}={cert_path}, {KEY_ENV}={key_path}"
            + (f", {TRUST_ENV}={trust_path}" if trust_path else "")
            + f": unusable certificate, key or CA ({exc.reason or exc})"
        ) from None
    return material


def server_ssl_context(settings: "MeshSettings") -> ssl.SSLContext | None:
    """The SSLContext for the REST server (aiohttp's `ssl_context`), or None
    for plain HTTP. The probe port stays plain HTTP: kubelet's probes present
    no client certificate, so mutual TLS there would fail every probe."""
    material = load_tls(settings)
    return material.server_ssl_context() if material else None


def add_grpc_port(server: grpc.aio.Server, address: str, tls: TlsMaterial | None) -> int:
    """Bind the sidecar's gRPC port, with TLS when configured; the bound port (0 on failure)."""
    if tls is None:
        return server.add_insecure_port(address)
    return server.add_secure_port(address, tls.server_credentials())


def open_peer_channel(target: str, options: ChannelOptions, tls: TlsMaterial | None) -> grpc.aio.Channel:
    """A channel to another sidecar, secured like this sidecar's own server."""
    if tls is None:
        return grpc.aio.insecure_channel(target, options=list(options))
    return grpc.aio.secure_channel(target, tls.peer_credentials(), options=[*options, *tls.peer_channel_options()])


def client_channel_credentials(ca_path: str | None, cert_path: str | None, key_path: str | None) -> grpc.ChannelCredentials:
    """Credentials of a client (the CLI): verify the server with `ca_path`
    (default: the system's CAs), and present a certificate for mutual TLS."""
    if bool(cert_path) != bool(key_path):
        raise TlsConfigError("a client certificate needs its key: give both --tls-cert and --tls-key")
    return grpc.ssl_channel_credentials(
        root_certificates=_read_all(ca_path, "--tls-ca") if ca_path else None,
        private_key=_read(key_path, "--tls-key") if key_path else None,
        certificate_chain=_read(cert_path, "--tls-cert") if cert_path else None,
    )
