"""Default model capacity of a runtime, from the memory this process may use.

The mesh places models against `capacityInBytes` from runtimeStatus. When the
operator does not configure it, we take the container's cgroup memory limit
(v2 `memory.max`, else v1 `memory.limit_in_bytes`) or, outside a container, the
host's physical memory, and keep a fraction for models: the rest is for the
interpreter, gRPC buffers and request tensors.
"""

from __future__ import annotations

from pathlib import Path

import psutil

CGROUP_LIMIT_FILES = (
    Path("/sys/fs/cgroup/memory.max"),
    Path("/sys/fs/cgroup/memory/memory.limit_in_bytes"),
)
# cgroup v1 reports "no limit" as a huge page-aligned number
_NO_LIMIT_THRESHOLD = 1 << 60
MODEL_MEMORY_FRACTION = 0.6


def cgroup_memory_limit(files: tuple[Path, ...] = CGROUP_LIMIT_FILES) -> int | None:
    """The container's memory limit in bytes, or None when there is none."""
    for path in files:
        try:
            text = path.read_text().strip()
        except OSError:
            continue
        if text == "max":
            return None
        try:
            value = int(text)
        except ValueError:
            continue
        return value if value < _NO_LIMIT_THRESHOLD else None
    return None


def default_capacity_bytes(fraction: float = MODEL_MEMORY_FRACTION) -> int:
    """Bytes of model memory to offer when no capacity is configured."""
    total = psutil.virtual_memory().total
    limit = cgroup_memory_limit()
    if limit is not None:
        total = min(total, limit)
    return int(total * fraction)
