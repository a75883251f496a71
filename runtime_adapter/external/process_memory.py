"""Memory of another process, for sizing models that live in an external server.

An external server (MLServer, Triton) holds its models in its own process,
and MLServer may hold them again in worker processes, so the figure that
matters is the resident set of the server's whole process tree. We can read
it only when the process is visible from here: the operator names its pid
(`--runtime-pid`), or it listens on a loopback/local port of this host and
shares our PID namespace (in Kubernetes: `shareProcessNamespace: true`).
Otherwise callers fall back to an estimate.
"""

from __future__ import annotations

import logging
import socket
from typing import Iterable

import psutil

log = logging.getLogger(__name__)

LISTEN = psutil.CONN_LISTEN
_ANY_ADDRESS = {"0.0.0.0", "::", ""}


def tree_rss_bytes(pid: int) -> int | None:
    """RSS of `pid` and all its descendants, or None when `pid` is gone or
    not readable. Children that exit while we count are skipped."""
    try:
        root = psutil.Process(pid)
        processes = [root, *root.children(recursive=True)]
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None
    total = 0
    for process in processes:
        try:
            total += process.memory_info().rss
        except psutil.NoSuchProcess:
            if process is root:
                return None
        except psutil.AccessDenied:
            return None
    return total


def _local_addresses(host: str) -> set[str]:
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return set()
    return {str(info[4][0]) for info in infos}


def is_local_host(host: str) -> bool:
    """Whether `host` names this machine (loopback or one of our addresses)."""
    if host in ("localhost", "127.0.0.1", "::1") or host in _ANY_ADDRESS:
        return True
    addresses = _local_addresses(host)
    if not addresses:
        return False
    ours = {addr.address for addrs in psutil.net_if_addrs().values() for addr in addrs}
    return bool(addresses & ours) or any(a.startswith("127.") for a in addresses)


def split_host_port(endpoint: str) -> tuple[str, int] | None:
    """``host:port`` / ``[v6]:port`` → (host, port); None for unix sockets and
    anything without a port."""
    if endpoint.startswith("unix:"):
        return None
    endpoint = endpoint.removeprefix("dns:///").removeprefix("ipv4:").removeprefix("ipv6:")
    host, sep, port = endpoint.rpartition(":")
    if not sep or not port.isdigit():
        return None
    return host.strip("[]"), int(port)


def listening_pid(port: int, connections: Iterable[object] | None = None) -> int | None:
    """The pid of the process listening on TCP `port` on this host, when we
    may see it (another user's or namespace's socket shows no pid)."""
    try:
        conns = connections if connections is not None else psutil.net_connections(kind="tcp")
    except (psutil.AccessDenied, OSError) as exc:
        log.debug("cannot list sockets: %s", exc)
        return None
    for conn in conns:
        laddr = getattr(conn, "laddr", None)
        if getattr(conn, "status", None) == LISTEN and laddr and laddr.port == port:
            pid = getattr(conn, "pid", None)
            if pid:
                return int(pid)
    return None


class ServerProcess:
    """Finds the external server's process (given pid, or the one listening on
    the endpoint's port) and reads its tree's RSS.

    A discovered pid is looked up again when its process goes away (the
    server's container restarted); a pid the operator named is not replaced.
    """

    def __init__(self, endpoint: str, pid: int | None = None) -> None:
        self.endpoint = endpoint
        self._explicit_pid = pid
        self._pid = pid

    @property
    def pid(self) -> int | None:
        if self._pid is not None and psutil.pid_exists(self._pid):
            return self._pid
        if self._explicit_pid is not None:
            return None
        self._pid = self._discover()
        return self._pid

    def _discover(self) -> int | None:
        address = split_host_port(self.endpoint)
        if address is None or not is_local_host(address[0]):
            return None
        pid = listening_pid(address[1])
        if pid is not None:
            log.info("external server at %s is process %d; model sizes are measured", self.endpoint, pid)
        return pid

    def rss_bytes(self) -> int | None:
        pid = self.pid
        return tree_rss_bytes(pid) if pid is not None else None
