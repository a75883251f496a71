"""The Puller: model path + key in, local path out.

Called by the runtime adapter before a load (on a worker thread; blocking is
fine). It parses the source, resolves the storage config, and either returns
a local path in place (local files, PVC mounts) or brings the artifact into
the content-addressed cache: stat, cache hit or one download shared by every
concurrent pull of the same source with the same credentials, retries with
back-off inside the pull deadline. Every model id holds a reference on what
it pulled until `release`.
"""

from __future__ import annotations

import concurrent.futures
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .backends.base import Listing
from .backends.http import HttpBackend
from .backends.local import check_local, disk_size
from .backends.s3 import S3Backend
from .cache import CacheEntry, ContentCache, artifact_digest
from .errors import PullError
from .retry import Deadline, RetryPolicy, call_with_retries
from .source import parse_model_source
from .storage_config import StorageConfig
from .targets import HttpTarget, LocalTarget, S3Target, Target, resolve_target

log = logging.getLogger(__name__)

MiB = 1 << 20


@dataclass(frozen=True)
class PullerConfig:
    """Settings of a Puller. `retain_released` and `remote_size_timeout_s` are
    additions to the original contract (defaults keep its behaviour)."""

    cache_dir: Path
    storage_config_dir: Path | None = None
    pvc_mounts_dir: Path = Path("/pvc_mounts")
    disk_budget_bytes: int | None = None
    pull_deadline_s: float = 600.0
    max_attempts: int = 5
    backoff_initial_s: float = 0.2
    backoff_max_s: float = 5.0
    s3_concurrency: int = 8
    s3_multipart_threshold_bytes: int = 16 * MiB
    #: keep an artifact no model references any more (evictable under the
    #: budget) instead of deleting it at once
    retain_released: bool = False
    remote_size_timeout_s: float = 2.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if self.pull_deadline_s <= 0 or self.remote_size_timeout_s <= 0:
            raise ValueError("pull_deadline_s and remote_size_timeout_s must be positive")
        if self.backoff_initial_s < 0 or self.backoff_max_s < self.backoff_initial_s:
            raise ValueError("need 0 <= backoff_initial_s <= backoff_max_s")
        if self.s3_concurrency < 1 or self.s3_multipart_threshold_bytes < 1:
            raise ValueError("s3_concurrency and s3_multipart_threshold_bytes must be positive")
        if self.disk_budget_bytes is not None and self.disk_budget_bytes < 0:
            raise ValueError("disk_budget_bytes must be None or >= 0")


@dataclass(frozen=True)
class PulledModel:
    path: Path  # the local file or directory to give the runtime
    size_bytes: int  # bytes on disk
    downloaded_bytes: int  # 0 on a cache hit or a local path
    cache_key: str | None  # the cache digest; None for local/pvc paths


class _Flight:
    """One in-progress download that concurrent pulls of the same source wait on."""

    def __init__(self) -> None:
        self._done = threading.Event()
        self.digest: str | None = None
        self.error: PullError | None = None

    def finish(self, digest: str | None, error: PullError | None) -> None:
        self.digest, self.error = digest, error
        self._done.set()

    def wait(self, deadline: Deadline, what: str) -> str:
        if not self._done.wait(deadline.remaining()):
            raise deadline.error(f"waiting for the shared download of {what}")
        if self.error is not None:
            raise self.error.copy()
        assert self.digest is not None
        return self.digest


class Puller:
    def __init__(self, config: PullerConfig) -> None:
        self.config = config
        self.storage = StorageConfig(config.storage_config_dir)
        self.cache = ContentCache(
            Path(config.cache_dir), budget_bytes=config.disk_budget_bytes, retain_released=config.retain_released
        )
        self._policy = RetryPolicy(config.max_attempts, config.backoff_initial_s, config.backoff_max_s)
        self._http = HttpBackend()
        self._s3 = S3Backend(
            concurrency=config.s3_concurrency,
            multipart_threshold=config.s3_multipart_threshold_bytes,
            ca_dir=Path(config.cache_dir) / "ca",
        )
        self._lock = threading.Lock()
        self._flights: dict[str, _Flight] = {}
        self._size_pool = concurrent.futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix="puller-size")

    def __repr__(self) -> str:
        return f"Puller(cache_dir={str(self.config.cache_dir)!r}, storage={self.storage!r})"

    def close(self) -> None:
        """Close HTTP/S3 clients (cached artifacts stay on disk)."""
        self._size_pool.shutdown(wait=False, cancel_futures=True)
        self._http.close()
        self._s3.close()

    def __enter__(self) -> "Puller":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- public API ----------------------------------------------------------

    def pull(self, model_id: str, model_path: str, model_key: str = "") -> PulledModel:
        """Make the model available locally and hold a reference for `model_id`."""
        if not isinstance(model_id, str) or not model_id:
            raise PullError("invalid", "model id must be a non-empty string")
        started = time.monotonic()
        deadline = Deadline(self.config.pull_deadline_s)
        source = parse_model_source(model_path, model_key)
        target = resolve_target(source, self.storage, self.config.pvc_mounts_dir)
        if isinstance(target, LocalTarget):
            size = check_local(target.path)
            self.cache.release(model_id)  # in case this id held a cached artifact before
            return PulledModel(path=target.path, size_bytes=size, downloaded_bytes=0, cache_key=None)
        log.info("pulling %s for model %s", target.describe(), model_id)
        try:
            pulled = self._pull_shared(model_id, target, deadline)
        except PullError as err:
            log.warning("pull of %s for model %s failed: %s", target.describe(), model_id, err)
            raise
        log.info(
            "pulled %s for model %s: %d bytes on disk, %d downloaded, %.2f s",
            target.describe(), model_id, pulled.size_bytes, pulled.downloaded_bytes, time.monotonic() - started,
        )
        return pulled

    def release(self, model_id: str) -> None:
        """Drop `model_id`'s reference (idempotent); see ContentCache for what happens to the artifact."""
        self.cache.release(model_id)

    def release_all(self) -> None:
        self.cache.release_all()

    def cache_entries(self) -> list[CacheEntry]:
        """What is cached now (introspection for tests and diagnostics)."""
        return self.cache.entries()

    def remote_size(self, model_path: str, model_key: str = "") -> int | None:
        """The artifact's size from a HEAD/listing, bounded in time; None when unknown. Never raises."""
        timeout = self.config.remote_size_timeout_s
        try:
            future = self._size_pool.submit(self._remote_size, model_path, model_key, timeout)
            return future.result(timeout=timeout + 0.5)
        except Exception as exc:  # noqa: BLE001 - a size hint must never fail a caller
            log.debug("remote size of a model unknown: %s", exc)
            return None

    # -- internals -----------------------------------------------------------

    def _remote_size(self, model_path: str, model_key: str, timeout: float) -> int | None:
        source = parse_model_source(model_path, model_key)
        target = resolve_target(source, self.storage, self.config.pvc_mounts_dir)
        if isinstance(target, LocalTarget):
            return disk_size(target.path) if target.path.exists() else None
        deadline = Deadline(timeout, what="remote size")
        if isinstance(target, S3Target):
            return self._s3.stat(target, deadline, quick=True).total_size
        return self._http.stat(target, deadline).total_size

    def _backend(self, target: Target) -> Any:
        return self._s3 if isinstance(target, S3Target) else self._http

    def _pull_shared(self, model_id: str, target: S3Target | HttpTarget, deadline: Deadline) -> PulledModel:
        """Single flight: the first pull of a source downloads, the others wait and share."""
        key = self._backend(target).flight_key(target)
        while True:
            with self._lock:
                flight = self._flights.get(key)
                leader = flight is None
                if leader:
                    flight = self._flights[key] = _Flight()
            assert flight is not None
            if leader:
                try:
                    pulled = self._pull_with_retries(model_id, target, deadline)
                except PullError as err:
                    flight.finish(None, err)
                    raise
                except Exception as exc:
                    log.exception("unexpected failure pulling %s", target.describe())
                    err = PullError("unavailable", f"{target.describe()}: unexpected {type(exc).__name__}")
                    flight.finish(None, err)
                    raise err from None
                except BaseException:
                    flight.finish(None, PullError("unavailable", f"{target.describe()}: the download was interrupted"))
                    raise
                else:
                    flight.finish(pulled.cache_key, None)
                    return pulled
                finally:
                    with self._lock:
                        self._flights.pop(key, None)
            digest = flight.wait(deadline, target.describe())
            entry = self.cache.acquire(digest, model_id)
            if entry is not None:
                return PulledModel(entry.path, entry.size_bytes, 0, entry.digest)
            # evicted between the download and our reference (rare): pull again

    def _pull_with_retries(self, model_id: str, target: S3Target | HttpTarget, deadline: Deadline) -> PulledModel:
        backend = self._backend(target)

        def attempt(n: int) -> PulledModel:
            listing: Listing = backend.stat(target, deadline)
            if listing.version is not None:
                entry = self.cache.acquire(artifact_digest(listing.identity, listing.name, listing.version), model_id)
                if entry is not None:
                    log.debug("cache hit for %s (%s)", target.describe(), entry.digest[:12])
                    return PulledModel(entry.path, entry.size_bytes, 0, entry.digest)
            with self.cache.staging(listing.total_size) as staging:
                fetched = backend.fetch(target, listing, staging.dest(listing.name), deadline)
                version = fetched.version or listing.version
                assert version is not None, "a backend must name the version of what it fetched"
                digest = artifact_digest(listing.identity, listing.name, version)
                entry = self.cache.commit(staging, digest, listing.name, model_id, target.describe())
            return PulledModel(entry.path, entry.size_bytes, fetched.downloaded_bytes, entry.digest)

        return call_with_retries(attempt, self._policy, deadline, describe=f"pull of {target.describe()}")
