"""Renewed certificates without a restart.

cert-manager (or any secret rotation) rewrites the mounted TLS files; Kubernetes
swaps a secret's files in one atomic symlink change. `TlsReloader` notices the
change (file mtimes and sizes, one `stat` per file) and re-reads the files
through `load_tls`, so a half-written or mismatched set is refused — logged,
and the current material kept — exactly as a bad set is refused at start.

What takes the new material, and when:
* the gRPC server: its credentials are gRPC's dynamic SSL credentials, whose
  fetcher gRPC calls at each new handshake; the fetcher checks the files, so a
  new connection gets the new certificate (and trust roots) at once;
* the REST server: its one `SSLContext` is re-loaded in place (certificate and
  key; CAs are added, none removed until a restart) by the periodic check
  (`run`, every `MMESH_TLS_RELOAD_S`);
* peers: channels opened from then on present the new certificate; cached
  channels are dropped on reload and closed after a grace period, so calls in
  flight on them finish.
Connections already open keep the certificate they were made with."""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

import grpc

from mesh.tls import ClientAuth, TlsConfigError, TlsMaterial, load_tls

if TYPE_CHECKING:
    from mesh.settings import MeshSettings

log = logging.getLogger(__name__)

Stamp = tuple[tuple[str, int, int], ...]


def _stamp(paths: list[str]) -> Stamp:
    """(path, mtime_ns, size) of each file; a missing file stamps as (path, 0, -1)."""
    out = []
    for path in paths:
        try:
            st = os.stat(path)  # follows the ..data symlink Kubernetes swaps
            out.append((path, st.st_mtime_ns, st.st_size))
        except OSError:
            out.append((path, 0, -1))
    return tuple(out)


class TlsReloader:
    def __init__(self, settings: "MeshSettings", material: TlsMaterial) -> None:
        self._settings = settings
        self._lock = threading.Lock()  # gRPC calls the fetcher on its own threads
        self._material = material
        self._paths = [material.cert_path, material.key_path]
        self._paths += [p.strip() for p in settings.tls_trust_cert_path.split(",") if p.strip()]
        self._stamp = _stamp(self._paths)
        self.version = 0  # bumped per reload
        self._served_grpc_version = 0
        self._ssl_context: ssl.SSLContext | None = None
        self._listeners: list[Callable[[TlsMaterial], None]] = []

    @property
    def material(self) -> TlsMaterial:
        return self._material

    def add_listener(self, listener: Callable[[TlsMaterial], None]) -> None:
        """Called (on the checking thread) with the new material after each reload."""
        self._listeners.append(listener)

    def check(self) -> bool:
        """Re-read the files if they changed; True when new material took effect."""
        stamp = _stamp(self._paths)
        with self._lock:
            if stamp == self._stamp:
                return False
            try:
                material = load_tls(self._settings)
            except TlsConfigError as exc:
                # mid-rotation or broken: keep serving what works, try again next time
                log.warning("TLS files changed but cannot be used yet; keeping the current certificate: %s", exc)
                return False
            if material is None:
                log.warning("TLS settings now turn TLS off; a restart is needed for that")
                self._stamp = stamp
                return False
            self._material, self._stamp = material, stamp
            self.version += 1
            context = self._ssl_context
            if context is not None:
                try:
                    context.load_cert_chain(material.cert_path, material.key_path)
                    if material.trust is not None:
                        context.load_verify_locations(cadata=material.trust.decode("ascii", "replace"))
                except (OSError, ssl.SSLError) as exc:  # the files moved on again since load_tls read them
                    log.warning("REST keeps its certificate until the next check: %s", exc)
                    self._stamp = ()  # look again next time
        log.info("TLS certificate reloaded from %s", material.cert_path)
        for listener in self._listeners:
            try:
                listener(material)
            except Exception:  # one listener must not stop the others
                log.exception("TLS reload listener failed")
        return True

    # ---- what servers use -------------------------------------------------------

    def grpc_server_credentials(self) -> grpc.ServerCredentials:
        """Dynamic credentials: gRPC asks `fetch` at each new handshake."""

        def configuration(material: TlsMaterial) -> grpc.ServerCertificateConfiguration:
            return grpc.ssl_server_certificate_configuration(
                [(material.private_key, material.cert_chain)], root_certificates=material.trust
            )

        def fetch() -> grpc.ServerCertificateConfiguration | None:
            self.check()
            with self._lock:
                if self.version == self._served_grpc_version:
                    return None  # unchanged
                self._served_grpc_version = self.version
                return configuration(self._material)

        return grpc.dynamic_ssl_server_credentials(
            configuration(self._material), fetch,
            require_client_authentication=self._material.client_auth is ClientAuth.REQUIRE,
        )

    def ssl_context(self) -> ssl.SSLContext:
        """The REST server's context, kept current in place by `check`."""
        with self._lock:
            if self._ssl_context is None:
                self._ssl_context = self._material.server_ssl_context()
            return self._ssl_context

    async def run(self, interval_s: float) -> None:
        """Check every `interval_s` (for REST and peers; gRPC checks on handshakes)."""
        while True:
            await asyncio.sleep(interval_s)
            await asyncio.to_thread(self.check)
