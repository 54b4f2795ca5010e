"""Every failure answered in the shape of the vendor whose route was called.

Each vendor module gives one function from a CallFailed to its error body; the
handlers here turn gRPC failures, request validation (malformed JSON, wrong types,
unknown fields) and Starlette's own 404/405/401 into a CallFailed first, so each
vendor has exactly one mapping and no route can answer a bare 422 or 500.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from passpush.http.failures import CallFailed, validation_failure

log = logging.getLogger(__name__)

ErrorBody = Callable[[CallFailed], dict[str, Any]]


class VendorErrors:
    """Which error shape answers a path: the first vendor whose prefix it starts with."""

    def __init__(
        self,
        shapes: Sequence[tuple[str, ErrorBody]],
        fallback: ErrorBody,
    ) -> None:
        self._shapes = shapes
        self._fallback = fallback

    def respond(self, request: Request, failure: CallFailed) -> JSONResponse:
        path = request.url.path
        body = next((shape for prefix, shape in self._shapes if path.startswith(prefix)), None)
        headers = {"WWW-Authenticate": "Bearer"} if failure.status == 401 else None
        return JSONResponse((body or self._fallback)(failure), failure.status, headers=headers)

    def respond_to_http_error(self, request: Request, error: HTTPException) -> JSONResponse:
        """Starlette's own refusals (404, 405, 401, 413) in the vendor's shape."""
        status = HTTPStatus(error.status_code)
        reason = "UNAUTHENTICATED" if status == 401 else status.name
        return self.respond(request, CallFailed(status, reason, str(error.detail)))

    def install(self, app: FastAPI) -> None:
        async def call_failed(request: Request, error: Exception) -> JSONResponse:
            assert isinstance(error, CallFailed)
            return self.respond(request, error)

        async def invalid_request(request: Request, error: Exception) -> JSONResponse:
            assert isinstance(error, RequestValidationError)
            return self.respond(request, validation_failure(error.errors()))

        async def http_error(request: Request, error: Exception) -> JSONResponse:
            assert isinstance(error, HTTPException)
            return self.respond_to_http_error(request, error)

        async def unexpected(request: Request, error: Exception) -> JSONResponse:
            log.error("unexpected error in the HTTP shim", exc_info=error)
            failure = CallFailed(500, "INTERNAL", "internal error; the server log has the details")
            return self.respond(request, failure)

        app.add_exception_handler(CallFailed, call_failed)
        app.add_exception_handler(RequestValidationError, invalid_request)
        app.add_exception_handler(HTTPException, http_error)
        app.add_exception_handler(Exception, unexpected)
