"""Request bodies bounded per route: a body over its route's limit is refused with 413
before the server reads it whole.

A pure ASGI middleware, so that it sees the request before any route reads its body:
a Content-Length over the limit is answered at once, without reading a byte of the body;
a body without one (chunked) is counted as it arrives and refused once it passes the
limit. uvicorn drops whatever of the body still comes after the answer. The connection is
not closed at once: a close with unread data resets it, and the client, still sending,
would lose the 413.
"""

from __future__ import annotations

from collections.abc import Callable

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

KIB = 1024
PASSKIT_LOG_LIMIT = 64 * KIB  # POST {prefix}/v1/log: a device's log lines
PASSKIT_LIMIT = 4 * KIB  # the other PassKit routes: a registration's {"pushToken"} at most
VENDOR_LIMIT = 1024 * KIB  # the vendor routes: a notification and its target


class BodyTooLarge(HTTPException):
    def __init__(self, limit: int) -> None:
        super().__init__(413, f"the request body must be at most {limit} bytes")


class BodyLimits:
    """Refuses request bodies over `limit_for(path)` bytes; `refuse` shapes the 413."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        limit_for: Callable[[str], int],
        refuse: Callable[[Request, HTTPException], Response],
    ) -> None:
        self.app = app
        self._limit_for = limit_for
        self._refuse = refuse

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self._limit_for(scope["path"])
        declared = _content_length(scope)
        if declared is not None and declared > limit:
            response = self._refuse(Request(scope), BodyTooLarge(limit))
            await response(scope, receive, send)
            return
        received = 0

        async def counted_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(limit)  # the app's error handlers answer it
            return message

        await self.app(scope, counted_receive, send)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            return int(value) if value.isdigit() else None
    return None
