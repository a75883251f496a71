"""A stop step that hangs (a server waiting on a client that never answers)
does not hang shutdown: it is given up after its bound, and the steps after
it still run."""

from __future__ import annotations

import asyncio
import time

import mesh.sidecar as sidecar_module


def test_a_hanging_stop_step_is_bounded_and_the_rest_still_stop(start_sidecar, loop_thread, monkeypatch):
    sidecar = start_sidecar()
    monkeypatch.setattr(sidecar_module, "STOP_STEP_TIMEOUT_S", 0.5)
    closed = []

    async def hang() -> None:
        await asyncio.sleep(3600)

    async def record_close() -> None:
        closed.append(True)

    monkeypatch.setattr(sidecar.loader, "unload_all", hang)
    monkeypatch.setattr(sidecar.runtime, "close", record_close)
    started = time.monotonic()
    loop_thread.run(sidecar.stop(grace_s=0.1), timeout=20)
    assert time.monotonic() - started < 5
    assert closed == [True]  # a step after the hanging one ran
