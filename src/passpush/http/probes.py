"""`/healthz` and `/readyz`: what a load balancer or an orchestrator asks the HTTP server.

`/healthz` (alive) answers 200 while the process serves HTTP at all. `/readyz` (ready)
answers 200 while the gRPC server's health service says SERVING (it has started, the
database can be reached and written, it is not shutting down) and 503 otherwise. Both are
answered before the vendor routes and their middleware: nothing is read or authenticated.
"""

from __future__ import annotations

from collections.abc import Callable

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

ALIVE = "/healthz"
READY = "/readyz"


class Probes:
    """The probes' paths answered here, the rest passed on to `rest`."""

    def __init__(self, ready: Callable[[], bool], rest: ASGIApp) -> None:
        self._ready = ready
        self._rest = rest

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path") if scope["type"] == "http" else None
        if path == ALIVE:
            response = JSONResponse({"status": "ALIVE"})
        elif path == READY:
            ready = self._ready()
            status = "SERVING" if ready else "NOT_SERVING"
            response = JSONResponse({"status": status}, status_code=200 if ready else 503)
        else:
            await self._rest(scope, receive, send)
            return
        await response(scope, receive, send)
