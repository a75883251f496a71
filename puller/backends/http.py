"""HTTP(S) models: one file per URL, fetched with httpx.

Version identity comes from the response's ETag (or Last-Modified) plus
Content-Length, so a HEAD can tell whether the cached copy is current without
a GET. A server that answers HEAD with 403/405/501 (presigned GET URLs,
minimal servers) still works: the GET's own headers (or a hash of the body)
name the version. Bodies are checked against Content-Length; a short body is a
retryable failure, never a cached file.
"""

from __future__ import annotations

import hashlib
import logging
import ssl
import threading
from pathlib import Path
from urllib.parse import urlsplit

import httpx

from ..errors import PullError
from ..retry import Deadline
from ..source import http_file_name
from ..storage_config import StorageEntry
from ..targets import HttpTarget
from .base import Fetched, Listing, RemoteFile
from .tls import ssl_context

log = logging.getLogger(__name__)

_CHUNK = 1 << 20
_CONNECT_TIMEOUT_S = 10.0
_READ_TIMEOUT_S = 30.0


def _status_error(status: int, where: str) -> PullError:
    if status == 404 or status == 410:
        return PullError("not_found", f"{where}: HTTP {status}, the model file does not exist")
    if status in (401, 403):
        return PullError("denied", f"{where}: HTTP {status}, access denied (check the storage config headers)")
    if status == 429 or status >= 500 or status == 408:
        return PullError("unavailable", f"{where}: HTTP {status} from the server", retryable=True)
    return PullError("unavailable", f"{where}: unexpected HTTP {status}")


def _version(headers: httpx.Headers) -> str | None:
    length = headers.get("content-length")
    if headers.get("content-encoding", "identity") != "identity":
        return None  # the length is of an encoding, not of the file
    etag = headers.get("etag")
    if etag:
        return f"etag:{etag}|len:{length}"
    modified = headers.get("last-modified")
    if modified and length is not None:
        return f"modified:{modified}|len:{length}"
    return None


def _content_length(headers: httpx.Headers) -> int | None:
    value = headers.get("content-length")
    if value is None or headers.get("content-encoding", "identity") != "identity":
        return None
    try:
        return int(value)
    except ValueError:
        return None


class HttpBackend:
    """Fetches HttpTargets; one httpx.Client per distinct storage entry (headers, CA)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._clients: dict[str, httpx.Client] = {}

    def close(self) -> None:
        with self._lock:
            clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            client.close()

    def flight_key(self, target: HttpTarget) -> str:
        return f"http|{target.url}|{target.entry.fingerprint() if target.entry else '-'}"

    def _client(self, entry: StorageEntry | None) -> httpx.Client:
        key = entry.fingerprint() if entry else "-"
        with self._lock:
            client = self._clients.get(key)
            if client is not None:
                return client
        verify: ssl.SSLContext | bool = True
        headers: dict[str, str] = {"Accept-Encoding": "identity"}
        if entry is not None:
            where = f"storage {entry.key!r}" if entry.key else "storage_params"
            if entry.get("client_certificate") or entry.get("client_key"):
                raise PullError("unsupported", f"{where}: TLS client certificates are not supported yet")
            pem = entry.str_field("certificate")
            if pem:
                verify = ssl_context(pem, where=where)
            headers.update(entry.headers)
        client = httpx.Client(verify=verify, headers=headers, follow_redirects=True)
        with self._lock:
            existing = self._clients.setdefault(key, client)
        if existing is not client:
            client.close()
        return existing

    def _where(self, target: HttpTarget) -> str:
        return target.describe()

    def _transport_error(self, exc: Exception, target: HttpTarget, deadline: Deadline, doing: str) -> PullError:
        where = self._where(target)
        text = str(exc)
        if target.entry is not None:
            text = target.entry.scrub(text)
        if deadline.expired():
            return deadline.error(f"{doing} {where}")
        if "CERTIFICATE_VERIFY_FAILED" in text or isinstance(exc, ssl.SSLError):
            return PullError("unavailable", f"{where}: TLS verification failed ({text}); set 'certificate' in the storage config")
        if isinstance(exc, (httpx.InvalidURL, httpx.UnsupportedProtocol)):
            return PullError("invalid", f"{where}: {text}")
        return PullError("unavailable", f"{where}: {type(exc).__name__} while {doing} ({text})", retryable=True)

    def _timeout(self, deadline: Deadline) -> httpx.Timeout:
        return httpx.Timeout(
            connect=deadline.timeout(_CONNECT_TIMEOUT_S),
            read=deadline.timeout(_READ_TIMEOUT_S),
            write=deadline.timeout(_READ_TIMEOUT_S),
            pool=deadline.timeout(_CONNECT_TIMEOUT_S),
        )

    def stat(self, target: HttpTarget, deadline: Deadline) -> Listing:
        name = http_file_name(urlsplit(target.url).path)
        client = self._client(target.entry)
        try:
            resp = client.head(target.url, timeout=self._timeout(deadline))
        except (httpx.HTTPError, ssl.SSLError, OSError) as exc:
            raise self._transport_error(exc, target, deadline, "asking for") from None
        size: int | None = None
        version: str | None = None
        if resp.status_code in (404, 410) or resp.status_code == 429 or resp.status_code >= 500:
            raise _status_error(resp.status_code, self._where(target))
        if resp.is_success:
            size = _content_length(resp.headers)
            version = _version(resp.headers)
        # other statuses (403 on presigned GET URLs, 405, 501): the GET decides
        return Listing(
            identity=f"http|{target.url}",
            name=name,
            is_dir=False,
            files=(RemoteFile(rel="", ref=target.url, size=size),),
            version=version,
        )

    def fetch(self, target: HttpTarget, listing: Listing, dest: Path, deadline: Deadline) -> Fetched:
        where = self._where(target)
        client = self._client(target.entry)
        digest = hashlib.sha256()
        received = 0
        try:
            with client.stream("GET", target.url, timeout=self._timeout(deadline)) as resp:
                if not resp.is_success:
                    raise _status_error(resp.status_code, where)
                expected = _content_length(resp.headers)
                version = _version(resp.headers)
                with open(dest, "xb") as fh:
                    for chunk in resp.iter_bytes(_CHUNK):
                        fh.write(chunk)
                        digest.update(chunk)
                        received += len(chunk)
                        deadline.check(f"downloading {where}")
                wire_bytes = resp.num_bytes_downloaded
        except PullError:
            raise
        except (httpx.HTTPError, ssl.SSLError) as exc:
            raise self._transport_error(exc, target, deadline, "downloading") from None
        except OSError as exc:
            raise PullError("unavailable", f"{where}: local write failed ({exc.strerror})") from None
        if expected is not None and wire_bytes != expected:
            raise PullError(
                "unavailable", f"{where}: connection ended after {wire_bytes} of {expected} bytes", retryable=True
            )
        log.debug("fetched %s (%d bytes)", where, received)
        return Fetched(downloaded_bytes=received, version=version or f"sha256:{digest.hexdigest()}")
