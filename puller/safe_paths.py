"""The single place where untrusted relative paths meet the local filesystem.

Object keys listed by a server, the path part of `pvc://name/path`, relative
model paths and storage-config key names all come from outside. Every join of
such a string under a local root goes through `safe_join`, so "does this stay
inside the root?" is answered (and tested, with hypothesis) once.

The rules are deliberately stricter than the filesystem: no `.`/`..`
segments, no empty segments (`a//b`), no absolute paths, no backslashes (a
Windows separator that some tools put in object keys) and no NUL or other
control characters. A string breaking them is rejected, never "cleaned up",
so two different remote names can never map to one local file.
"""

from __future__ import annotations

import os
from pathlib import Path

from .errors import PullError


def split_relative(rel: str, *, what: str = "path") -> list[str]:
    """The segments of a relative `/`-separated path, or PullError(invalid).

    An empty string is the root itself (no segments).
    """
    if rel == "":
        return []
    if any(ord(ch) < 0x20 or ch == "\x7f" for ch in rel):
        raise PullError("invalid", f"{what} {rel!r} contains control characters")
    if "\\" in rel:
        raise PullError("invalid", f"{what} {rel!r} contains a backslash")
    if rel.startswith("/"):
        raise PullError("invalid", f"{what} {rel!r} must be relative")
    segments = rel.split("/")
    for seg in segments:
        if seg == "":
            raise PullError("invalid", f"{what} {rel!r} has an empty path segment")
        if seg in (".", ".."):
            raise PullError("invalid", f"{what} {rel!r} has a '{seg}' segment (path traversal is not allowed)")
    return segments


def safe_join(root: Path, *parts: str, what: str = "path") -> Path:
    """`root / part1 / part2 ...`, guaranteed to stay inside `root`.

    Each part may hold several `/`-separated segments; all of them obey the
    rules of this module. The result is lexically inside `root` (symlinks are
    not resolved: a symlink placed inside the root by its owner, as on a PVC,
    is the owner's business).
    """
    result = Path(root)
    for part in parts:
        for seg in split_relative(part, what=what):
            result = result / seg
    root_norm = os.path.normpath(os.fspath(root))
    result_norm = os.path.normpath(os.fspath(result))
    if os.path.commonpath([root_norm, result_norm]) != root_norm:  # pragma: no cover - defence in depth
        raise PullError("invalid", f"{what} {'/'.join(parts)!r} escapes {root}")
    return result


def safe_name(name: str, *, what: str = "name") -> str:
    """A single path segment (a file or directory name) or PullError(invalid)."""
    segments = split_relative(name, what=what)
    if len(segments) != 1:
        raise PullError("invalid", f"{what} {name!r} must be a single path segment")
    return segments[0]
