"""A content-addressed download cache shared by every model on this node.

Layout under `cache_dir`:
  objects/<digest>/entry.json      what it is (name, size, source) — its mtime is the last use
  objects/<digest>/data/<name>     the artifact: a file, or a directory mirroring object keys
  tmp/<random>/                    downloads in progress (and entries being deleted)

`digest` = sha256(source identity, local name, version identity), so two
model ids pointing at one artifact share one copy, and a changed remote
object gets a new entry. An entry appears only by renaming a complete
staging directory into `objects/` (atomic on one filesystem): a crash or a
failed download leaves debris only in `tmp/`, which is wiped at start. One
Puller (one process) owns a cache_dir at a time.

References are by model id (in memory): an entry used by a model is never
deleted. When the last model releases an entry it is deleted at once
(ModelMesh's "unload cleans up"), unless `retain_released` keeps it as an
evictable LRU entry. Entries found on disk at start (from before a restart)
are unreferenced and reusable. With a disk budget, making room evicts
unreferenced entries, least recently used first; if referenced entries alone
exceed the budget the pull still proceeds (the model must load) and a
warning is logged.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from .backends.local import disk_size
from .safe_paths import safe_name

log = logging.getLogger(__name__)

_ENTRY_FILE = "entry.json"
_DATA_DIR = "data"


def artifact_digest(identity: str, name: str, version: str) -> str:
    blob = json.dumps({"source": identity, "name": name, "version": version}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


@dataclass(frozen=True)
class CacheEntry:
    """A snapshot of one cached artifact (for callers and tests)."""

    digest: str
    path: Path
    size_bytes: int
    refs: frozenset[str]
    last_used: float


@dataclass
class _Entry:
    digest: str
    name: str
    size: int
    last_used: float
    refs: set[str] = field(default_factory=set)


class Staging:
    """A private directory for one download; `dest(name)` is where the artifact goes."""

    def __init__(self, root: Path, reserved: int) -> None:
        self.root = root
        self.reserved = reserved  # budget bytes held for this download until commit/exit
        self.committed = False

    def dest(self, name: str) -> Path:
        return self.root / _DATA_DIR / safe_name(name, what="artifact name")


class ContentCache:
    def __init__(self, cache_dir: Path, *, budget_bytes: int | None = None, retain_released: bool = False) -> None:
        self.root = Path(cache_dir)
        self.objects = self.root / "objects"
        self.tmp = self.root / "tmp"
        self.budget_bytes = budget_bytes
        self.retain_released = retain_released
        self._lock = threading.Lock()
        self._entries: dict[str, _Entry] = {}
        self._by_model: dict[str, str] = {}
        self._reserved = 0
        self.objects.mkdir(parents=True, exist_ok=True)
        if self.tmp.exists():
            shutil.rmtree(self.tmp, ignore_errors=True)
        self.tmp.mkdir(parents=True, exist_ok=True)
        self._scan()

    # -- start-up ------------------------------------------------------------

    def _scan(self) -> None:
        """Adopt complete entries left by an earlier process; drop anything else."""
        for d in self.objects.iterdir():
            entry = self._load_entry(d)
            if entry is None:
                log.warning("removing malformed cache entry %s", d.name)
                self._empty([self._trash(d)])
            else:
                self._entries[entry.digest] = entry
        if self._entries:
            log.info("cache %s: %d entries, %d bytes from before", self.root, len(self._entries), self.total_bytes())

    def _load_entry(self, d: Path) -> _Entry | None:
        try:
            if len(d.name) != 64 or int(d.name, 16) < 0:
                return None
            meta_path = d / _ENTRY_FILE
            meta = json.loads(meta_path.read_text())
            name = safe_name(meta["name"])
            if not (d / _DATA_DIR / name).exists():
                return None
            return _Entry(digest=d.name, name=name, size=int(meta["size"]), last_used=meta_path.stat().st_mtime)
        except Exception:  # noqa: BLE001 - anything unreadable is discarded
            return None

    # -- lookups -------------------------------------------------------------

    def _snapshot(self, e: _Entry) -> CacheEntry:
        return CacheEntry(e.digest, self.objects / e.digest / _DATA_DIR / e.name, e.size, frozenset(e.refs), e.last_used)

    def entries(self) -> list[CacheEntry]:
        with self._lock:
            return [self._snapshot(e) for e in self._entries.values()]

    def total_bytes(self) -> int:
        return sum(e.size for e in self._entries.values())

    def acquire(self, digest: str, model_id: str) -> CacheEntry | None:
        """The entry `digest`, now referenced by `model_id`; None on a miss."""
        trash: list[Path] = []
        with self._lock:
            entry = self._entries.get(digest)
            if entry is None:
                return None
            trash += self._ref(entry, model_id)
            snap = self._snapshot(entry)
        self._empty(trash)
        return snap

    # -- downloads -----------------------------------------------------------

    @contextmanager
    def staging(self, expected_bytes: int | None) -> Iterator[Staging]:
        """A staging directory, with room made for `expected_bytes` under the budget.

        Removed on exit unless committed.
        """
        expected = max(0, expected_bytes or 0)
        with self._lock:
            trash = self._make_room(expected)
            self._reserved += expected
        self._empty(trash)
        staging = Staging(self.tmp / f"dl-{uuid.uuid4().hex}", expected)
        (staging.root / _DATA_DIR).mkdir(parents=True)
        try:
            yield staging
        finally:
            with self._lock:
                self._reserved -= staging.reserved
                staging.reserved = 0
            if not staging.committed:
                shutil.rmtree(staging.root, ignore_errors=True)

    def commit(self, staging: Staging, digest: str, name: str, model_id: str, source: str) -> CacheEntry:
        """Move a complete download into place as entry `digest`, referenced by `model_id`.

        If the entry appeared meanwhile (same content fetched by another
        flight), the staging copy is discarded and the existing one is used.
        """
        size = disk_size(staging.dest(name))
        meta = {"name": name, "size": size, "source": source, "created": time.time()}
        (staging.root / _ENTRY_FILE).write_text(json.dumps(meta))
        trash: list[Path] = []
        with self._lock:
            self._reserved -= staging.reserved  # the bytes now count as an entry (or are dropped)
            staging.reserved = 0
            entry = self._entries.get(digest)
            if entry is None:
                os.rename(staging.root, self.objects / digest)
                staging.committed = True
                entry = _Entry(digest=digest, name=name, size=size, last_used=time.time())
                self._entries[digest] = entry
            trash += self._ref(entry, model_id)
            trash += self._make_room(0)
            snap = self._snapshot(entry)
        self._empty(trash)
        return snap

    # -- references ----------------------------------------------------------

    def release(self, model_id: str) -> None:
        with self._lock:
            trash = self._unref(model_id)
        self._empty(trash)

    def release_all(self) -> None:
        with self._lock:
            trash: list[Path] = []
            for model_id in list(self._by_model):
                trash += self._unref(model_id)
        self._empty(trash)

    def references(self, model_id: str) -> str | None:
        with self._lock:
            return self._by_model.get(model_id)

    # -- internals (call with the lock held; return directories to delete) ---

    def _ref(self, entry: _Entry, model_id: str) -> list[Path]:
        trash: list[Path] = []
        if self._by_model.get(model_id) != entry.digest:
            trash += self._unref(model_id)
            self._by_model[model_id] = entry.digest
            entry.refs.add(model_id)
        entry.last_used = time.time()
        try:
            os.utime(self.objects / entry.digest / _ENTRY_FILE)
        except OSError:
            pass
        return trash

    def _unref(self, model_id: str) -> list[Path]:
        digest = self._by_model.pop(model_id, None)
        entry = self._entries.get(digest) if digest else None
        if entry is None:
            return []
        entry.refs.discard(model_id)
        if entry.refs:
            return []
        if not self.retain_released:
            return [self._remove(entry, "released by its last model")]
        return self._make_room(0)

    def _make_room(self, incoming: int) -> list[Path]:
        if self.budget_bytes is None:
            return []
        trash: list[Path] = []
        used = self.total_bytes() + self._reserved
        for entry in sorted(self._entries.values(), key=lambda e: e.last_used):
            if used + incoming <= self.budget_bytes:
                break
            if entry.refs:
                continue
            used -= entry.size
            trash.append(self._remove(entry, "evicted (LRU) to stay within the disk budget"))
        if used + incoming > self.budget_bytes:
            log.warning(
                "cache %s over its disk budget: %d bytes in use/reserved + %d incoming > %d; "
                "proceeding (every remaining entry is used by a model)",
                self.root, used, incoming, self.budget_bytes,
            )
        return trash

    def _remove(self, entry: _Entry, why: str) -> Path:
        del self._entries[entry.digest]
        log.info("cache entry %s (%d bytes) %s", entry.digest[:12], entry.size, why)
        return self._trash(self.objects / entry.digest)

    def _trash(self, d: Path) -> Path:
        """Rename out of objects/ at once (atomic); the slow delete happens later."""
        target = self.tmp / f"rm-{uuid.uuid4().hex}"
        try:
            os.rename(d, target)
        except OSError:
            return d
        return target

    @staticmethod
    def _empty(trash: list[Path]) -> None:
        for d in trash:
            shutil.rmtree(d, ignore_errors=True)
