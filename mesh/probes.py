"""Kubernetes probes of the sidecar, on their own port (ModelMesh's 8089):

* `GET /live`: 200 while the process's event loop answers; nothing else is
  asked, so a slow etcd or runtime never gets a live pod restarted.
* `GET /ready`: 200 only when every readiness condition holds, else 503 with
  a JSON body naming the ones that fail. The conditions read signals the
  sidecar keeps anyway (the instance publisher's last etcd round trip, the
  watch-fed instance view) plus one bounded call to the runtime, so a probe
  never costs an etcd request.

The probe server starts first and stops last, so `/live` answers while the
sidecar starts (runtime wait, etcd sync) and `/ready` turns 503 as soon as
shutdown begins. It serves plain HTTP even when the mesh uses TLS: kubelet's
probes present no client certificate.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING

from aiohttp import web

from mesh.http_server import json_errors, json_response

if TYPE_CHECKING:
    from mesh.sidecar import Sidecar

# A condition: None when it holds, else why not (one line, for the 503 body).
Check = Callable[[], Awaitable[str | None]]
CHECK_TIMEOUT_S = 2.0


async def _run(check: Check) -> str | None:
    try:
        return await asyncio.wait_for(check(), CHECK_TIMEOUT_S)
    except asyncio.TimeoutError:
        return f"no answer within {CHECK_TIMEOUT_S} s"
    except Exception as exc:  # a probe reports, it never fails with a 500
        return f"check failed: {exc!r}"


def probe_app(
    checks: Mapping[str, Check], live_paths: tuple[str, ...] = ("/live",), ready_paths: tuple[str, ...] = ("/ready",)
) -> web.Application:
    """Live and ready endpoints (the controller serves them as /healthz, /readyz)."""
    async def live(request: web.Request) -> web.Response:
        return json_response({"live": True})

    async def ready(request: web.Request) -> web.Response:
        results = await asyncio.gather(*(_run(check) for check in checks.values()))
        failing = {name: why for name, why in zip(checks, results) if why is not None}
        if failing:
            return json_response({"ready": False, "failing": failing}, 503)
        return json_response({"ready": True})

    app = web.Application(middlewares=[json_errors])
    for path in live_paths:
        app.router.add_get(path, live)
    for path in ready_paths:
        app.router.add_get(path, ready)
    return app


def sidecar_checks(sidecar: "Sidecar") -> dict[str, Check]:
    """The readiness conditions of one sidecar, each tolerant of a sidecar
    still starting (its parts appear one by one in `Sidecar._start`)."""

    async def started() -> str | None:
        if getattr(sidecar, "publisher", None) is None or getattr(sidecar, "leader", None) is None:
            return "starting"
        return None

    async def not_shutting_down() -> str | None:
        loader = getattr(sidecar, "loader", None)
        if sidecar.shutting_down or getattr(loader, "draining", False):
            return "shutting down"
        return None

    async def etcd() -> str | None:
        publisher = getattr(sidecar, "publisher", None)
        return "starting" if publisher is None else publisher.etcd_problem()

    async def runtime() -> str | None:
        client = getattr(sidecar, "runtime", None)
        if client is None:
            return "starting"
        return None if await client.ready() else "the model runtime does not report ready"

    async def registered() -> str | None:
        instances = getattr(sidecar, "instances", None)
        instance_id = sidecar.settings.instance_id
        if instances is None or instances.get(instance_id) is None:
            return f"instance record {instance_id!r} is not in etcd"
        return None

    return {
        "started": started,
        "shutdown": not_shutting_down,
        "etcd": etcd,
        "runtime": runtime,
        "registered": registered,
    }
