"""Loopback servers for the puller tests: a static HTTP(S) file server with
fault injection, moto's S3 server, and a counting/fault-injecting proxy in
front of it. Everything binds 127.0.0.1 on a free port and stops with bounded
timeouts.
"""

from __future__ import annotations

import datetime
import http.client
import ssl
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

STOP_TIMEOUT_S = 10.0


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True


class LoopbackServer:
    """A ThreadingHTTPServer on 127.0.0.1:<free port> in a thread."""

    def __init__(self, handler: type[BaseHTTPRequestHandler], tls: ssl.SSLContext | None = None) -> None:
        self.httpd = _Server(("127.0.0.1", 0), handler)
        self.httpd.owner = self  # type: ignore[attr-defined]
        if tls is not None:
            self.httpd.socket = tls.wrap_socket(self.httpd.socket, server_side=True)
        self.port = self.httpd.server_address[1]
        self.scheme = "https" if tls else "http"
        self._thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def url(self) -> str:
        host = "localhost" if self.scheme == "https" else "127.0.0.1"
        return f"{self.scheme}://{host}:{self.port}"

    def start(self) -> "LoopbackServer":
        self._thread.start()
        return self

    def stop(self) -> None:
        stopper = threading.Thread(target=self.httpd.shutdown, daemon=True)
        stopper.start()
        stopper.join(STOP_TIMEOUT_S)
        self._thread.join(STOP_TIMEOUT_S)
        self.httpd.server_close()
        assert not self._thread.is_alive(), "server thread did not stop"

    def __enter__(self) -> "LoopbackServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# -- static file server ----------------------------------------------------------


@dataclass
class FileServerState:
    files: dict[str, bytes] = field(default_factory=dict)
    etag: bool = True
    require_headers: dict[str, str] = field(default_factory=dict)
    drop_gets: int = 0  # the next N GETs send half the body and close the connection
    fail_gets: int = 0  # the next N GETs answer 500
    head_status: int | None = None  # answer HEAD with this status instead
    gets: Counter[str] = field(default_factory=Counter)
    heads: Counter[str] = field(default_factory=Counter)
    seen_headers: list[dict[str, str]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


class _FileHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    @property
    def state(self) -> FileServerState:
        return self.server.owner.state  # type: ignore[attr-defined]

    def _preamble(self, method: str) -> bytes | None:
        st = self.state
        with st.lock:
            st.seen_headers.append(dict(self.headers.items()))
            (st.gets if method == "GET" else st.heads)[self.path] += 1
        for name, value in st.require_headers.items():
            if self.headers.get(name) != value:
                self._send_status(401)
                return None
        body = st.files.get(self.path.split("?", 1)[0])
        if body is None:
            self._send_status(404)
            return None
        return body

    def _send_status(self, code: int) -> None:
        self.send_response(code)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _headers(self, body: bytes) -> None:
        import hashlib

        self.send_header("Content-Length", str(len(body)))
        self.send_header("Content-Type", "application/octet-stream")
        if self.state.etag:
            self.send_header("ETag", '"' + hashlib.md5(body).hexdigest() + '"')

    def do_HEAD(self) -> None:  # noqa: N802
        body = self._preamble("HEAD")
        if body is None:
            return
        if self.state.head_status is not None:
            self._send_status(self.state.head_status)
            return
        self.send_response(200)
        self._headers(body)
        self.end_headers()

    def do_GET(self) -> None:  # noqa: N802
        body = self._preamble("GET")
        if body is None:
            return
        st = self.state
        with st.lock:
            fail = st.fail_gets > 0
            st.fail_gets -= int(fail)
            drop = not fail and st.drop_gets > 0
            st.drop_gets -= int(drop)
        if fail:
            self._send_status(500)
            return
        self.send_response(200)
        self._headers(body)
        self.end_headers()
        if drop:
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(2)
            return
        self.wfile.write(body)


class FileServer(LoopbackServer):
    def __init__(self, files: dict[str, bytes] | None = None, tls: ssl.SSLContext | None = None) -> None:
        self.state = FileServerState(files=dict(files or {}))
        super().__init__(_FileHandler, tls)


# -- TLS material ------------------------------------------------------------------


@dataclass
class TlsMaterial:
    ca_pem: str
    server_context: ssl.SSLContext


def make_tls(tmp: Path) -> TlsMaterial:
    """A throwaway CA and a server certificate for localhost/127.0.0.1 (cryptography)."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mmesh test CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    cert_file, key_file = tmp / "server.pem", tmp / "server.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert_file, key_file)
    return TlsMaterial(ca_pem=ca_cert.public_bytes(serialization.Encoding.PEM).decode(), server_context=ctx)


# -- S3: moto and a proxy in front of it ---------------------------------------------


class MotoS3:
    """moto's S3 in server mode on 127.0.0.1:<free port>."""

    def __init__(self) -> None:
        from moto.server import ThreadedMotoServer

        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)

    def start(self) -> "MotoS3":
        self.server.start()
        host, port = self.server.get_host_and_port()
        self.url = f"http://{host}:{port}"
        return self

    def stop(self) -> None:
        stopper = threading.Thread(target=self.server.stop, daemon=True)
        stopper.start()
        stopper.join(STOP_TIMEOUT_S)
        assert not stopper.is_alive(), "moto server did not stop"

    def client(self, endpoint: str | None = None) -> Any:
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3", endpoint_url=endpoint or self.url, region_name="us-east-1",
            aws_access_key_id="test-key", aws_secret_access_key="test-secret",
            config=Config(s3={"addressing_style": "path"}),
        )


@dataclass
class ProxyState:
    upstream: tuple[str, int] = ("127.0.0.1", 0)
    fail_object_gets: int = 0  # the next N GETs of an object (not listings) answer 500
    delay_object_gets_s: float = 0.0  # stall object GETs (deadline tests)
    object_gets: Counter[str] = field(default_factory=Counter)
    ranged_gets: Counter[str] = field(default_factory=Counter)
    requests: list[tuple[str, str]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


_FAIL_XML = b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>InternalError</Code><Message>injected</Message></Error>'


class _ProxyHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    @property
    def state(self) -> ProxyState:
        return self.server.owner.state  # type: ignore[attr-defined]

    def _reply(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _forward(self) -> None:
        st = self.state
        path = self.path.split("?", 1)[0]
        is_object = path.count("/") >= 2 and not path.endswith("/")
        with st.lock:
            st.requests.append((self.command, self.path))
            fail = False
            if self.command == "GET" and is_object:
                st.object_gets[path] += 1
                if "Range" in self.headers:
                    st.ranged_gets[path] += 1
                if st.fail_object_gets > 0:
                    st.fail_object_gets -= 1
                    fail = True
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        if self.command == "GET" and is_object and st.delay_object_gets_s:
            time.sleep(st.delay_object_gets_s)
        if fail:
            self._reply(500, _FAIL_XML)
            return
        conn = http.client.HTTPConnection(*st.upstream, timeout=30)
        try:
            headers = {k: v for k, v in self.headers.items() if k.lower() not in ("connection", "keep-alive")}
            conn.request(self.command, self.path, body=body, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
            self.send_response(resp.status)
            for k, v in resp.getheaders():
                if k.lower() not in ("transfer-encoding", "connection", "content-length", "keep-alive"):
                    self.send_header(k, v)
            length_header = resp.getheader("Content-Length")
            self.send_header("Content-Length", length_header if self.command == "HEAD" and length_header else str(len(data)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)
        finally:
            conn.close()

    do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = _forward  # noqa: N815


class S3Proxy(LoopbackServer):
    """Counts object GETs (ranged ones too) and injects failures in front of moto."""

    def __init__(self, upstream_url: str, tls: ssl.SSLContext | None = None) -> None:
        host, port = upstream_url.rsplit("//", 1)[1].split(":")
        self.state = ProxyState(upstream=(host, int(port)))
        super().__init__(_ProxyHandler, tls)
