"""GPU discovery and GPU memory readings that degrade to "no GPU" whenever
anything is missing.

pynvml (the `gpu` extra) reports devices and their memory; without it, without
a driver, or with CUDA_VISIBLE_DEVICES empty, we report none and the runtimes
stay on the CPU, and memory measurement counts host memory only.

Everything that decides something is a pure function of an `nvml` module
object (pynvml or a test's fake), the CUDA_VISIBLE_DEVICES value and a pid, so
it is tested without a GPU:

* `cuda_to_nvml_indices` maps CUDA ordinals (what a runtime is told: ``cuda:0``)
  to NVML device indices (what NVML reads), through CUDA_VISIBLE_DEVICES.
  NVML numbers devices by PCI bus id; CUDA numbers the visible ones fastest
  first unless ``CUDA_DEVICE_ORDER=PCI_BUS_ID``. The two orders agree on the
  usual homogeneous GPU node (ties break by bus id); on a mixed node set
  ``CUDA_DEVICE_ORDER=PCI_BUS_ID`` for the readings to name the right device.
  MIG instances (``MIG-…`` entries) are not resolved: their memory is not
  measured.
* `read_device` takes one reading of a device: this process's usage from
  `nvmlDeviceGetComputeRunningProcesses`, and the device-wide used memory.
* `memory_delta` prefers the per-process difference and falls back to the
  device-wide difference where NVML cannot see our pid (a container with its
  own PID namespace: NVML lists host pids) or does not report per-process
  usage (it then says None, e.g. on Windows WDDM or some vGPU setups). The
  device-wide difference also counts other processes' allocations in the
  window, so it is the noisier of the two.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from types import ModuleType

log = logging.getLogger(__name__)


def load_nvml() -> ModuleType | None:
    """The pynvml module, or None when the `gpu` extra is not installed."""
    try:
        import pynvml  # type: ignore[import-not-found]
    except ImportError:
        return None
    return pynvml


@contextlib.contextmanager
def nvml_session(nvml: ModuleType | None) -> Iterator[bool]:
    """nvmlInit/nvmlShutdown around a block; yields whether NVML is usable.

    NVML counts init calls, so nested sessions (and other libraries' own) are safe.
    """
    if nvml is None:
        yield False
        return
    try:
        nvml.nvmlInit()
    except Exception as exc:  # pynvml raises NVMLError subclasses without a driver
        log.debug("NVML unavailable: %s", exc)
        yield False
        return
    try:
        yield True
    finally:
        try:
            nvml.nvmlShutdown()
        except Exception:
            pass


def _device_uuids(nvml: ModuleType, count: int) -> list[str]:
    uuids = []
    for index in range(count):
        uuid = nvml.nvmlDeviceGetUUID(nvml.nvmlDeviceGetHandleByIndex(index))
        uuids.append(uuid.decode() if isinstance(uuid, bytes) else str(uuid))
    return uuids


def visible_nvml_indices(visible: str | None, count: int, uuids: Sequence[str] | None = None) -> list[int]:
    """NVML index of each device CUDA shows this process, in CUDA ordinal order.

    Follows CUDA's reading of CUDA_VISIBLE_DEVICES: unset means every device;
    entries are indices or (prefixes of) ``GPU-`` UUIDs; the list ends at the
    first entry that names no device (so ``-1`` hides all) or repeats one.
    `uuids` (NVML order) is needed only for UUID entries; without it they end
    the list too.
    """
    if visible is None:
        return list(range(count))
    indices: list[int] = []
    for entry in (e.strip() for e in visible.split(",")):
        index = _entry_index(entry, count, uuids)
        if index is None or index in indices:
            break
        indices.append(index)
    return indices


def _entry_index(entry: str, count: int, uuids: Sequence[str] | None) -> int | None:
    if entry.isdigit():
        index = int(entry)
        return index if index < count else None
    if entry.startswith("GPU-") and uuids:
        matches = [i for i, uuid in enumerate(uuids) if uuid.startswith(entry)]
        return matches[0] if len(matches) == 1 else None
    return None


def _needs_uuids(visible: str | None) -> bool:
    return visible is not None and any(e.strip().startswith("GPU-") for e in visible.split(","))


def _visible_indices(nvml: ModuleType, visible: str | None) -> list[int]:
    """Within an NVML session: the visible devices' NVML indices."""
    count = int(nvml.nvmlDeviceGetCount())
    uuids = _device_uuids(nvml, count) if _needs_uuids(visible) else None
    return visible_nvml_indices(visible, count, uuids)


def _cuda_visible_devices() -> str | None:
    return os.environ.get("CUDA_VISIBLE_DEVICES")


def visible_gpu_count() -> int:
    """Number of NVIDIA GPUs this process may use; 0 when none or unknown."""
    visible = _cuda_visible_devices()
    if visible is not None and visible.strip() in ("", "-1"):
        return 0  # decided without loading NVML
    nvml = load_nvml()
    with nvml_session(nvml) as usable:
        if not usable:
            return 0
        assert nvml is not None
        try:
            return len(_visible_indices(nvml, visible))
        except Exception as exc:
            log.debug("NVML device count failed: %s", exc)
            return 0


def cuda_to_nvml_indices(ordinals: Sequence[int], visible_indices: Sequence[int]) -> list[int]:
    """NVML indices of the CUDA ordinals a model uses; ordinals CUDA does not
    show this process are dropped (nothing to measure there)."""
    return sorted({visible_indices[o] for o in ordinals if 0 <= o < len(visible_indices)})


@dataclass(frozen=True)
class DeviceMemory:
    """One reading of one device.

    process_bytes: this pid's usage; 0 when NVML does not list the pid, None
    when NVML could not say (call failed, or it reports usage as unavailable).
    listed: whether NVML listed the pid at all.
    device_bytes: the device's used memory, None when unreadable.
    """

    process_bytes: int | None
    listed: bool
    device_bytes: int | None


def read_device(nvml: ModuleType, index: int, pid: int) -> DeviceMemory:
    """Within an NVML session: this process's and the device's used memory."""
    try:
        handle = nvml.nvmlDeviceGetHandleByIndex(index)
    except Exception as exc:
        log.debug("NVML handle for device %d failed: %s", index, exc)
        return DeviceMemory(None, False, None)
    process_bytes: int | None
    listed = False
    try:
        mine = [p for p in nvml.nvmlDeviceGetComputeRunningProcesses(handle) if p.pid == pid]
        listed = bool(mine)
        used = [getattr(p, "usedGpuMemory", None) for p in mine]
        process_bytes = None if any(u is None for u in used) else sum(int(u) for u in used)
    except Exception as exc:
        log.debug("NVML process list of device %d failed: %s", index, exc)
        process_bytes = None
    try:
        device_bytes: int | None = int(nvml.nvmlDeviceGetMemoryInfo(handle).used)
    except Exception as exc:
        log.debug("NVML memory info of device %d failed: %s", index, exc)
        device_bytes = None
    return DeviceMemory(process_bytes, listed, device_bytes)


def gpu_snapshot(
    ordinals: Sequence[int],
    *,
    nvml: ModuleType | None = None,
    pid: int | None = None,
    visible: str | None = None,
) -> dict[int, DeviceMemory]:
    """Readings of the devices behind `ordinals` (CUDA ordinals the model uses),
    by NVML index; empty when there is nothing to read or NVML is unusable.

    nvml/pid/visible default to pynvml, this process and CUDA_VISIBLE_DEVICES.
    """
    if not ordinals:
        return {}
    nvml = nvml if nvml is not None else load_nvml()
    visible = visible if visible is not None else _cuda_visible_devices()
    pid = pid if pid is not None else os.getpid()
    with nvml_session(nvml) as usable:
        if not usable:
            return {}
        assert nvml is not None
        try:
            indices = cuda_to_nvml_indices(ordinals, _visible_indices(nvml, visible))
        except Exception as exc:
            log.debug("NVML device discovery failed: %s", exc)
            return {}
        return {index: read_device(nvml, index, pid) for index in indices}


def memory_delta(before: dict[int, DeviceMemory], after: dict[int, DeviceMemory]) -> int:
    """Bytes the process gained on the devices between two snapshots (never negative).

    Per device: this process's growth where NVML lists our pid after the load
    and the before-reading is known (an unlisted pid before means no context
    yet, i.e. 0); else the device-wide growth; else 0.
    """
    total = 0
    for index, now in after.items():
        then = before.get(index)
        if then is None:
            continue
        if now.listed and now.process_bytes is not None and then.process_bytes is not None:
            grown = now.process_bytes - then.process_bytes
        elif now.device_bytes is not None and then.device_bytes is not None:
            grown = now.device_bytes - then.device_bytes
        else:
            grown = 0
        total += max(grown, 0)
    return total
