"""What every remote backend tells the puller, and the contract it follows.

A pull is: `stat` (cheap: HEAD / list) → a Listing whose identity+version
names the artifact in the content-addressed cache → on a miss, `fetch` into
a private staging path. Backends never touch the cache, never retry (the
puller's policy does), and raise only PullError.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, TypeVar

from ..retry import Deadline

T_contra = TypeVar("T_contra", contravariant=True)


@dataclass(frozen=True)
class RemoteFile:
    """One object/file of an artifact."""

    rel: str  # path under the artifact root, "" when the artifact is this single file
    ref: str  # object key or URL
    size: int | None
    etag: str | None = None


@dataclass(frozen=True)
class Listing:
    """The artifact as the remote describes it right now."""

    identity: str  # where it comes from (endpoint/bucket/key or URL), never secrets
    name: str  # local name of the artifact (file or directory)
    is_dir: bool
    files: tuple[RemoteFile, ...]
    version: str | None  # None: unknown before download, the content is hashed instead

    @property
    def total_size(self) -> int | None:
        sizes = [f.size for f in self.files]
        return None if any(s is None for s in sizes) else sum(s for s in sizes if s is not None)


@dataclass(frozen=True)
class Fetched:
    downloaded_bytes: int
    version: str | None  # the version of the bytes actually fetched, when the backend knows it better than stat did


def version_of(parts: list[tuple[str, str | None, int | None]]) -> str:
    """A compact version string for a set of (rel path, etag, size) triples."""
    blob = json.dumps(sorted(parts, key=lambda p: p[0]), separators=(",", ":"))
    return "files-sha256:" + hashlib.sha256(blob.encode()).hexdigest()


def local_file(dest: Path, rel: str) -> Path:
    """Where a RemoteFile goes under `dest` (rel already validated by the backend)."""
    return dest if rel == "" else dest.joinpath(*rel.split("/"))


class Backend(Protocol[T_contra]):
    def flight_key(self, target: T_contra) -> str:
        """Concurrent pulls with equal keys share one download: source identity
        plus a hash of the credentials (so a pull never rides on another
        model's credentials)."""

    def stat(self, target: T_contra, deadline: Deadline) -> Listing: ...

    def fetch(self, target: T_contra, listing: Listing, dest: Path, deadline: Deadline) -> Fetched:
        """Download the listed artifact to `dest` (a file, or a directory for
        `listing.is_dir`), whose parent exists and is private to this call."""

    def close(self) -> None: ...
