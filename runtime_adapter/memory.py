"""Measured model memory: what loading a model really cost this process.

The mesh places models by the `sizeInBytes` a load reports (it keeps the
first measured size in the registry and plans with it from then on), so the
built-in runtimes (ONNX, TorchScript) report what a load added to this
process, not what the file weighs. (External servers hold models in their own
processes; `runtime_adapter.external` sizes those.)

Method
------
Host memory is the growth of this process's resident set size (RSS, via
psutil) across the runtime's own load call; GPU memory, where the model went
to a GPU, is the growth of this process's usage on the devices it uses, read
from NVML (see `runtime_adapter.gpu`: per-process where NVML can see our pid,
else device-wide). The reported size is ``max(host + gpu, floor)``, where the
floor is the runtime's conservative lower bound (the model file's bytes plus
its per-model overhead allowance, `runtimes.base.size_floor`): a model never
costs less than its weights, and small readings are mostly noise.

Why RSS, not USS/PSS or tracemalloc: tracemalloc sees only Python's allocator,
and the weights live in C++ allocations (ONNX Runtime, libtorch). USS and PSS
need a walk of /proc/self/smaps, milliseconds per call growing with the number
of mappings, and differ from RSS only in pages shared with other processes
(shared libraries, which a model load does not add). RSS is one cheap read of
/proc/self/statm and is what the kernel and the cgroup limit count.

Limits, and what we do about them
---------------------------------
* Anything else the process allocates or frees during the window is counted:
  other loads, inference tensors, gRPC buffers (the sidecar's in-process mode
  shares its process with the mesh). So the measured section is serialised by
  one process-wide lock held only around the runtime's load call (pulling files
  happens before it, outside). The mesh's load slots (`maxLoadingConcurrency`,
  2 by default) still overlap pulls and bookkeeping; runtime loads queue on the
  lock, and that wait counts towards the load timeout.
* Freed heap pages are reused: after an unload, the next load can fill pages
  the process already holds and show ~0 growth. We call glibc's
  ``malloc_trim(0)`` before the baseline and again before the after-reading:
  the first returns free pages to the kernel so the load must take new ones;
  the second drops the load's transient buffers (ONNX Runtime briefly holds
  the file's protobuf and pre-packed copies, about 3x the weights at peak), so
  we report what stays resident. Without glibc (musl, macOS) readings can be
  low, and the floor guards them.
* Python's cyclic GC is paused in the window (refcounting still runs), so a
  collection cannot free unrelated garbage there. We do not run a full
  ``gc.collect()`` per load: its cost grows with the heap (about 200 ms per
  million objects on the development machine) and the in-process sidecar
  holds the registry view; models are freed by refcounting when they close.
* A runtime's one-time start-up (ONNX Runtime's environment and thread
  pools, about 10 MB; a CUDA context, hundreds of MB) would be charged to the
  first model. Runtimes pass a `prepare` callback that does it inside the lock,
  before the baseline.
* No warm-up inference: we have no sample inputs (shapes may be unknown), and
  activation memory is per request and scales with the batch. That memory, and
  the load's transient peak, is what the capacity fraction left free for
  (`capacity.MODEL_MEMORY_FRACTION`) is for.
* Page granularity (4 KiB) and allocator slack make small models noisy (tens
  of KiB); the floor's overhead allowance sits above that noise.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import psutil

from runtime_adapter.gpu import gpu_snapshot, memory_delta

log = logging.getLogger(__name__)
T = TypeVar("T")

# Held only around a runtime's own load call: see the module docstring.
LOAD_MEASUREMENT_LOCK = threading.Lock()


def _load_malloc_trim() -> Callable[[], None] | None:
    """glibc's malloc_trim(0), or None where the C library has none."""
    name = ctypes.util.find_library("c")
    try:
        trim = ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):
        return None
    if trim is None:
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int

    def call() -> None:
        trim(0)

    return call


_malloc_trim = _load_malloc_trim()


def release_free_heap() -> None:
    """Hand free heap pages back to the kernel (no-op without glibc)."""
    if _malloc_trim is not None:
        _malloc_trim()


def rss_bytes() -> int:
    return int(psutil.Process().memory_info().rss)


@dataclass(frozen=True)
class Footprint:
    """What one load cost: host RSS growth and GPU growth (both clamped at 0),
    and the runtime's floor. `size_bytes` is what the SPI reports."""

    host_bytes: int
    gpu_bytes: int
    floor_bytes: int

    @property
    def measured_bytes(self) -> int:
        return self.host_bytes + self.gpu_bytes

    @property
    def size_bytes(self) -> int:
        return max(self.measured_bytes, self.floor_bytes)


def measure_load(
    load: Callable[[], T],
    *,
    floor_bytes: int,
    gpu_ordinals: Sequence[int] = (),
    prepare: Callable[[], None] | None = None,
    model_id: str = "",
) -> tuple[T, Footprint]:
    """Run `load` (blocking) in the serialised, measured section.

    floor_bytes: the runtime's lower bound for the model (file bytes + overhead).
    gpu_ordinals: CUDA ordinals the model is placed on (empty on the CPU).
    prepare: one-time runtime start-up to keep out of the measurement; runs
    under the lock before the baseline (it should make itself a no-op after
    the first call).
    """
    with LOAD_MEASUREMENT_LOCK:
        if prepare is not None:
            prepare()
        gc_was_enabled = gc.isenabled()
        gc.disable()
        try:
            release_free_heap()
            gpu_before = gpu_snapshot(gpu_ordinals)
            rss_before = rss_bytes()
            result = load()
            release_free_heap()
            rss_after = rss_bytes()
            gpu_after = gpu_snapshot(gpu_ordinals)
        finally:
            if gc_was_enabled:
                gc.enable()
    footprint = Footprint(
        host_bytes=max(rss_after - rss_before, 0),
        gpu_bytes=memory_delta(gpu_before, gpu_after),
        floor_bytes=floor_bytes,
    )
    log.debug(
        "model %s memory: host %d + gpu %d bytes measured, floor %d: reporting %d",
        model_id, footprint.host_bytes, footprint.gpu_bytes, floor_bytes, footprint.size_bytes,
    )
    return result, footprint
