"""S3-compatible object stores (AWS, MinIO, IBM COS, Ceph) with boto3.

- Path-style addressing and an explicit `endpoint_url`, as ModelMesh does, so
  MinIO-style servers without wildcard DNS work.
- Listing respects `/` boundaries: `models/mnist` is the object `models/mnist`
  or the keys under `models/mnist/`, never `models/mnist2`. Keys ending in `/`
  (directory markers) are skipped; 0-byte objects are kept (an empty
  `__init__.py` is part of a model; ModelMesh's skipping them broke such models).
  When keys exist under `prefix/`, the artifact is that directory (an object
  named exactly `prefix` is then ignored); otherwise it is the single object
  `prefix` (one list + one HEAD).
- Downloads go through s3transfer's TransferManager (boto3's own transfer
  layer): objects above `multipart_threshold` are fetched as parallel ranged
  GETs, many small objects in parallel, all within `max_concurrency` threads.
  Each object's ETag from the listing is passed along, so ranged GETs carry
  If-Match and a changing object fails (retryably) instead of mixing versions.
- botocore's and s3transfer's own retries are OFF (one attempt each): the
  puller's retry policy (retry.py) is the only one, with one deadline.
- One client per (credentials hash, purpose); boto3 clients are thread-safe.
"""

from __future__ import annotations

import collections
import logging
import threading
from pathlib import Path
from typing import Any

import boto3
import botocore.exceptions as bex
from boto3.s3.transfer import TransferConfig, create_transfer_manager
from botocore.config import Config
from s3transfer.exceptions import CancelledError, RetriesExceededError
from s3transfer.subscribers import BaseSubscriber

from ..errors import PullError
from ..retry import Deadline
from ..safe_paths import split_relative
from ..source import DEFAULT_NAME
from ..storage_config import StorageEntry
from ..targets import S3Target
from .base import Fetched, Listing, RemoteFile, local_file, version_of
from .tls import ca_bundle_file

log = logging.getLogger(__name__)

_NOT_FOUND = {"NoSuchKey", "NoSuchBucket", "NotFound", "404"}
_DENIED = {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "Forbidden", "403", "401", "AllAccessDisabled"}
# boto3 sessions are not thread-safe, and each one loads the service model
# anew (~0.3 s): one shared session, used under a lock, makes clients cheap.
_SESSION_LOCK = threading.Lock()
_SESSION: boto3.session.Session | None = None


def _new_client(config: Config, **kwargs: Any) -> Any:
    global _SESSION
    with _SESSION_LOCK:
        if _SESSION is None:
            _SESSION = boto3.session.Session()
        return _SESSION.client("s3", config=config, **kwargs)


_RETRYABLE = {"SlowDown", "Throttling", "ThrottlingException", "RequestTimeout", "RequestTimeTooSkewed",
              "InternalError", "ServiceUnavailable", "PreconditionFailed", "412", "503", "500"}


class S3Backend:
    def __init__(self, *, concurrency: int, multipart_threshold: int, ca_dir: Path) -> None:
        self._concurrency = max(1, concurrency)
        self._threshold = max(1, multipart_threshold)
        self._ca_dir = ca_dir
        self._lock = threading.Lock()
        self._clients: dict[tuple[str, str], Any] = {}

    def close(self) -> None:
        with self._lock:
            clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            client.close()

    # -- clients -------------------------------------------------------------

    def flight_key(self, target: S3Target) -> str:
        return f"s3|{self._endpoint(target.entry)}|{target.bucket}|{target.key}|{target.is_dir}|" + (
            target.entry.fingerprint() if target.entry else "-"
        )

    @staticmethod
    def _endpoint(entry: StorageEntry | None) -> str:
        return (entry.str_field("endpoint_url") if entry else None) or "aws"

    def _client(self, entry: StorageEntry | None, *, quick: bool = False) -> Any:
        """A client for `entry`; `quick` ones have short timeouts (remote_size)."""
        key = (entry.fingerprint() if entry else "-", "quick" if quick else "pull")
        with self._lock:
            client = self._clients.get(key)
        if client is not None:
            return client
        kwargs: dict[str, Any] = {}
        where = f"storage {entry.key!r}" if entry and entry.key else "storage_params"
        if entry is not None:
            access = entry.str_field("access_key_id")
            secret = entry.str_field("secret_access_key")
            if bool(access) != bool(secret):
                raise PullError("invalid", f"{where}: access_key_id and secret_access_key must be given together")
            if access:
                kwargs["aws_access_key_id"] = access
                kwargs["aws_secret_access_key"] = secret
            if entry.str_field("endpoint_url"):
                kwargs["endpoint_url"] = entry.str_field("endpoint_url")
            pem = entry.str_field("certificate")
            if pem:
                kwargs["verify"] = ca_bundle_file(pem, self._ca_dir, where=where)
        region = (entry.str_field("region") if entry else None) or "us-east-1"
        config = Config(
            region_name=region,
            signature_version="s3v4",
            s3={"addressing_style": "path"},
            retries={"total_max_attempts": 1, "mode": "standard"},
            connect_timeout=2 if quick else 10,
            read_timeout=2 if quick else 30,
            max_pool_connections=self._concurrency + 2,
        )
        try:
            client = _new_client(config, **kwargs)
        except ValueError as exc:  # e.g. a malformed endpoint_url
            raise PullError("invalid", f"{where}: {type(exc).__name__} creating the S3 client: {exc}") from None
        with self._lock:
            return self._clients.setdefault(key, client)

    # -- errors --------------------------------------------------------------

    def _error(self, exc: BaseException, target: S3Target, deadline: Deadline, doing: str, ref: str | None = None) -> PullError:
        where = f"s3://{target.bucket}/{ref if ref is not None else target.key}"
        scrub = target.entry.scrub if target.entry else (lambda s: s)
        if isinstance(exc, RetriesExceededError) and exc.last_exception is not None:
            exc = exc.last_exception
        if isinstance(exc, PullError):
            return exc
        if isinstance(exc, CancelledError) or deadline.expired():
            return deadline.error(f"{doing} {where}")
        if isinstance(exc, bex.ClientError):
            err = exc.response.get("Error", {})
            code = str(err.get("Code", ""))
            status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
            msg = scrub(str(err.get("Message") or code or "no message"))
            text = f"{where}: {code or status} while {doing}: {msg}"
            if code in _NOT_FOUND or status == 404:
                return PullError("not_found", text)
            if code in _DENIED or status in (401, 403):
                return PullError("denied", text)
            if code in _RETRYABLE or status >= 500 or status in (408, 412, 429):
                return PullError("unavailable", text, retryable=True)
            return PullError("unavailable", text)
        if isinstance(exc, bex.NoCredentialsError):
            return PullError("denied", f"{where}: no S3 credentials (set access_key_id/secret_access_key in the storage config)")
        if isinstance(exc, bex.ParamValidationError):
            return PullError("invalid", f"{where}: {scrub(str(exc))}")
        if isinstance(exc, bex.SSLError) and "CERTIFICATE_VERIFY_FAILED" in str(exc):
            return PullError("unavailable", f"{where}: TLS verification of the endpoint failed; set 'certificate' "
                                            "(the CA's PEM) in the storage config")
        if isinstance(exc, (bex.HTTPClientError, bex.ConnectionError, bex.ResponseStreamingError,
                            bex.IncompleteReadError, bex.ReadTimeoutError)):
            return PullError("unavailable", f"{where}: {type(exc).__name__} while {doing}: {scrub(str(exc))}", retryable=True)
        if isinstance(exc, OSError):
            return PullError("unavailable", f"{where}: local write failed ({exc.strerror or exc})")
        return PullError("unavailable", f"{where}: {type(exc).__name__} while {doing}: {scrub(str(exc))}")

    # -- stat ----------------------------------------------------------------

    def _list(self, client: Any, target: S3Target, prefix: str, deadline: Deadline) -> list[RemoteFile]:
        files: list[RemoteFile] = []
        paginator = client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=target.bucket, Prefix=prefix, PaginationConfig={"PageSize": 1000}):
            deadline.check(f"listing s3://{target.bucket}/{prefix}")
            for obj in page.get("Contents", []):
                key = obj["Key"]
                if key.endswith("/") or not key.startswith(prefix):
                    continue  # directory markers
                rel = key[len(prefix):]
                split_relative(rel, what=f"object key {key!r} under s3://{target.bucket}/{prefix}")
                files.append(RemoteFile(rel=rel, ref=key, size=int(obj["Size"]), etag=obj.get("ETag")))
        _check_no_file_dir_clash(files, f"s3://{target.bucket}/{prefix}")
        return files

    def stat(self, target: S3Target, deadline: Deadline, *, quick: bool = False) -> Listing:
        client = self._client(target.entry, quick=quick)
        identity = f"s3|{self._endpoint(target.entry)}|{target.bucket}|{target.key}"
        prefix = f"{target.key}/" if target.key else ""
        name = target.key.rsplit("/", 1)[-1] if target.key else DEFAULT_NAME
        try:
            files = self._list(client, target, prefix, deadline)
            if files:
                return Listing(identity=identity + "/", name=name, is_dir=True, files=tuple(files),
                               version=version_of([(f.rel, f.etag, f.size) for f in files]))
            if target.key and not target.is_dir:
                head = client.head_object(Bucket=target.bucket, Key=target.key)
                size = int(head["ContentLength"])
                etag = head.get("ETag")
                return Listing(identity=identity, name=name, is_dir=False,
                               files=(RemoteFile(rel="", ref=target.key, size=size, etag=etag),),
                               version=version_of([("", etag, size)]))
        except PullError:
            raise
        except Exception as exc:  # noqa: BLE001 - mapped to PullError, nothing else escapes
            raise self._error(exc, target, deadline, "listing") from None
        raise PullError("not_found", f"s3://{target.bucket}/{prefix or target.key}: no objects found")

    # -- fetch ---------------------------------------------------------------

    def fetch(self, target: S3Target, listing: Listing, dest: Path, deadline: Deadline) -> Fetched:
        client = self._client(target.entry)
        config = TransferConfig(
            multipart_threshold=self._threshold,
            multipart_chunksize=self._threshold,
            max_concurrency=self._concurrency,
            num_download_attempts=1,
            use_threads=True,
            preferred_transfer_client="classic",
        )
        tracker = _Tracker()
        futures = []
        if listing.is_dir:
            dest.mkdir()
        manager = create_transfer_manager(client, config)
        finished = False
        try:
            for f in listing.files:
                path = local_file(dest, f.rel)
                path.parent.mkdir(parents=True, exist_ok=True)
                subscriber = _Provide(f, len(futures), tracker)
                futures.append((f, manager.download(target.bucket, f.ref, str(path), subscribers=[subscriber])))
            for _ in futures:
                # in completion order, so the first failure is reported at once
                index = tracker.next_done(deadline.remaining())
                if index is None:
                    raise deadline.error(f"downloading {target.describe()}")
                f, future = futures[index]
                try:
                    future.result()
                except Exception as exc:  # noqa: BLE001
                    raise self._error(exc, target, deadline, "downloading", ref=f.ref) from None
            finished = True
        finally:
            if finished:
                manager.shutdown()
            else:
                # Cancel, but do not wait for parts blocked on the network (up to
                # read_timeout): the pull reports now, the threads end on their own
                # and the staging directory they wrote to is deleted by the caller.
                # (Futures are cancelled one by one: s3transfer 0.19's
                # shutdown(cancel=True) passes its arguments in the wrong order.)
                for _f, future in futures:
                    future.cancel()
                threading.Thread(target=manager.shutdown, name="s3-cancel", daemon=True).start()
        for f in listing.files:
            size = local_file(dest, f.rel).stat().st_size
            if f.size is not None and size != f.size:
                raise PullError("unavailable", f"s3://{target.bucket}/{f.ref}: got {size} of {f.size} bytes", retryable=True)
        return Fetched(downloaded_bytes=tracker.bytes, version=None)


def _check_no_file_dir_clash(files: list[RemoteFile], where: str) -> None:
    """`a/b` and `a/b/c` cannot both exist on a filesystem; refuse instead of picking one."""
    names = {f.rel for f in files}
    for f in files:
        parts = f.rel.split("/")
        for i in range(1, len(parts)):
            parent = "/".join(parts[:i])
            if parent in names:
                raise PullError("invalid", f"{where}: object {parent!r} is both a file and a directory prefix")


class _Tracker:
    """Bytes received, and the indices of finished transfers in completion order."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._done: collections.deque[int] = collections.deque()
        self.bytes = 0

    def progress(self, n: int) -> None:
        with self._cond:
            self.bytes += n

    def done(self, index: int) -> None:
        with self._cond:
            self._done.append(index)
            self._cond.notify_all()

    def next_done(self, timeout: float) -> int | None:
        """The next finished transfer's index, or None on timeout."""
        with self._cond:
            if not self._cond.wait_for(lambda: bool(self._done), timeout=timeout):
                return None
            return self._done.popleft()


class _Provide(BaseSubscriber):
    """Tells s3transfer the size and ETag we listed (no extra HEAD per object;
    ranged GETs get If-Match) and reports progress and completion."""

    def __init__(self, f: RemoteFile, index: int, tracker: _Tracker) -> None:
        self._f = f
        self._index = index
        self._tracker = tracker

    def on_queued(self, future: Any, **kwargs: Any) -> None:
        if self._f.size is not None:
            future.meta.provide_transfer_size(self._f.size)
        if self._f.etag:
            future.meta.provide_object_etag(self._f.etag)

    def on_progress(self, future: Any, bytes_transferred: int, **kwargs: Any) -> None:
        self._tracker.progress(bytes_transferred)

    def on_done(self, future: Any, **kwargs: Any) -> None:
        self._tracker.done(self._index)
