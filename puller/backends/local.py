"""Local files, file:// and PVC mounts: used in place, never copied or cached.

The runtime reads the path directly; we only check it exists and measure it
(the size feeds the runtime's model-size estimate, as ModelMesh's
disk_size_bytes does, following symlinks so PVC-backed models count).
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import PullError


def disk_size(path: Path) -> int:
    """Bytes of a file, or of every file under a directory (symlinked files followed)."""
    if path.is_file():
        return path.stat().st_size
    total = 0
    for dirpath, _dirnames, filenames in os.walk(path):
        for name in filenames:
            try:
                total += os.stat(os.path.join(dirpath, name)).st_size
            except FileNotFoundError:  # a dangling symlink or a file removed meanwhile
                continue
    return total


def check_local(path: Path) -> int:
    """The size of an existing local model, or PullError(not_found)."""
    try:
        if not path.exists():
            raise PullError("not_found", f"model path {str(path)!r} does not exist")
        return disk_size(path)
    except PermissionError:
        raise PullError("denied", f"model path {str(path)!r} is not readable") from None
