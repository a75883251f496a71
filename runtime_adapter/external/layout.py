"""The directories an external server reads models from, made safely.

Model ids come from users and may hold characters that are unsafe or
meaningful in a path (``/``, ``..``, ``:``, spaces, a leading dot that hides a
directory from MLServer's glob). Each id maps to one directory name that is
safe, stable and distinct per id, and every path we write is checked to stay
inside its root.
"""

from __future__ import annotations

import hashlib
import re
import shutil
from pathlib import Path

_SAFE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_UNSAFE_CHARS = re.compile(r"[^A-Za-z0-9._-]")
HASH_CHARS = 16


def safe_dir_name(model_id: str) -> str:
    """`model_id` itself when it is a plain name; otherwise its safe characters
    (truncated) plus a hash of the whole id, so distinct ids never share a
    directory and the name still hints at the model."""
    if _SAFE.fullmatch(model_id) and not model_id.endswith("."):
        return model_id
    digest = hashlib.sha256(model_id.encode("utf-8")).hexdigest()[:HASH_CHARS]
    readable = _UNSAFE_CHARS.sub("_", model_id).strip("._-")[:64]
    return f"{readable}-{digest}" if readable else f"m-{digest}"


def child_dir(root: Path, name: str) -> Path:
    """`root/name`, refusing any name that would leave `root`."""
    target = root / name
    if target.resolve().parent != root.resolve() or name in ("", ".", ".."):
        raise ValueError(f"{name!r} is not a plain directory name under {root}")
    return target


def fresh_dir(path: Path) -> Path:
    """An empty directory at `path` (a stale one from a previous load goes)."""
    remove(path)
    path.mkdir(parents=True)
    return path


def remove(path: Path) -> None:
    """Remove a file, symlink or directory tree; missing is fine. Symlinks are
    removed, never followed: they point at the user's model files."""
    if path.is_symlink() or path.is_file():
        path.unlink(missing_ok=True)
    elif path.is_dir():
        shutil.rmtree(path, ignore_errors=True)


def clear_dir(root: Path, keep: frozenset[str] = frozenset()) -> list[str]:
    """Empty `root` except the names in `keep`; returns what was removed."""
    if not root.is_dir():
        return []
    removed = []
    for entry in sorted(root.iterdir()):
        if entry.name not in keep:
            remove(entry)
            removed.append(entry.name)
    return removed


def link_contents(source: Path, target: Path, skip: frozenset[str] = frozenset()) -> None:
    """Symlink every entry of directory `source` into `target` (absolute links:
    the server may resolve them from another working directory)."""
    for entry in sorted(source.iterdir()):
        if entry.name not in skip:
            (target / entry.name).symlink_to(entry.absolute())
