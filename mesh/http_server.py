"""One aiohttp application served on one port of the sidecar's event loop:
the REST front end and the probe endpoints each run one.

The port is claimed before the app is served (a taken port fails at once,
before the sidecar starts anything else); `stop` closes the listener, lets
requests in flight finish for up to the grace period, and closes keep-alive
connections, so no server outlives its sidecar. Errors leave as the v2 REST
error body, `{"error": "<message>"}`, for aiohttp's own refusals too
(unknown route, wrong method, body too large), so clients see one format.
"""

from __future__ import annotations

import json
import socket
import ssl
from collections.abc import Awaitable, Callable

from aiohttp import web

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def json_response(document: object, status: int = 200) -> web.Response:
    return web.Response(body=json.dumps(document).encode(), status=status, content_type="application/json")


def error_response(status: int, message: str) -> web.Response:
    """The v2 REST error: `{"error": message}` with the HTTP status."""
    return json_response({"error": message}, status)


@web.middleware
async def json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """aiohttp's HTTP errors (404 no route, 405, 413) in the v2 error format."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        response = error_response(exc.status, (exc.text or exc.reason).removeprefix(f"{exc.status}: "))
        if "Allow" in exc.headers:  # a 405 says what would have worked
            response.headers["Allow"] = exc.headers["Allow"]
        return response


class HttpServer:
    """One port: claimed (bound and listening) when constructed, served once
    `serve` is given the app. Claiming first lets a sidecar fail on a taken
    port before it starts anything else; connections that arrive in between
    wait in the listen backlog."""

    def __init__(self, host: str, port: int) -> None:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        # SO_REUSEADDR (restarts need no wait), never SO_REUSEPORT (a second sidecar must fail)
        self._socket = socket.create_server((host, port), family=family, backlog=128)
        self.port: int = self._socket.getsockname()[1]
        self._runner: web.AppRunner | None = None

    async def serve(
        self, app: web.Application, *, ssl_context: ssl.SSLContext | None = None, grace_s: float = 2.0
    ) -> None:
        runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=grace_s)
        await runner.setup()
        self._runner = runner
        await web.SockSite(runner, self._socket, ssl_context=ssl_context).start()

    async def stop(self) -> None:
        """Stop listening, let requests in flight finish (up to the grace
        period given to `serve`), close every connection."""
        if self._runner is not None:
            await self._runner.cleanup()
        self._socket.close()
