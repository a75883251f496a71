"""GPU discovery that degrades to "no GPU" whenever anything is missing.

pynvml (the `gpu` extra) reports devices and their memory; without it, without
a driver, or with CUDA_VISIBLE_DEVICES empty, we report none and the runtimes
stay on the CPU.
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)


def visible_gpu_count() -> int:
    """Number of NVIDIA GPUs this process may use; 0 when none or unknown."""
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        return 0
    try:
        import pynvml  # type: ignore[import-not-found]
    except ImportError:
        return 0
    try:
        pynvml.nvmlInit()
    except Exception as exc:  # pynvml raises NVMLError subclasses without a driver
        log.debug("NVML unavailable: %s", exc)
        return 0
    try:
        count = int(pynvml.nvmlDeviceGetCount())
    except Exception as exc:
        log.debug("NVML device count failed: %s", exc)
        return 0
    finally:
        try:
            pynvml.nvmlShutdown()
        except Exception:
            pass
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible:
        return min(count, len([d for d in visible.split(",") if d.strip()]))
    return count
