"""The vendor shim as one FastAPI app: the three vendors' routes, each failure in its
vendor's shape, bodies bounded, and every call made through one gRPC channel."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import grpc
from fastapi import FastAPI

from passpush.http.body_limits import VENDOR_LIMIT, BodyLimits
from passpush.http.vendors import airship, passentry, walletwerk
from passpush.http.vendors.errors import VendorErrors
from passpush.http.vendors.stubs import Stubs


def create_vendor_app(grpc_target: str, *, title: str, description: str) -> FastAPI:
    """The Airship, PassEntry and WalletWerk routes, calling the gRPC server at
    `grpc_target` (`host:port`)."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with grpc.aio.insecure_channel(grpc_target) as channel:
            app.state.stubs = Stubs.over(channel)
            yield

    app = FastAPI(title=title, version="1", description=description, lifespan=lifespan)
    for router in (airship.router, passentry.router, walletwerk.router):
        app.include_router(router)
    errors = VendorErrors(
        [
            (passentry.PREFIX + "/", passentry.error_body),  # /api/v1 before Airship's /v1
            (airship.PREFIX + "/", airship.error_body),
            (walletwerk.PREFIX + "/", walletwerk.error_body),
        ],
        fallback=airship.error_body,
    )
    errors.install(app)
    app.add_middleware(
        BodyLimits, limit_for=lambda _: VENDOR_LIMIT, refuse=errors.respond_to_http_error
    )
    app.openapi = lambda: _without_422(app)  # type: ignore[method-assign]
    return app


def _without_422(app: FastAPI) -> dict[str, Any]:
    """The OpenAPI document without FastAPI's default 422: the shim answers a request it
    cannot validate with a 400 in the vendor's shape, which each route declares."""
    if app.openapi_schema is None:
        document = FastAPI.openapi(app)
        for operations in document["paths"].values():
            for operation in operations.values():
                operation["responses"].pop("422", None)
        components = document.setdefault("components", {})
        for unused in ("HTTPValidationError", "ValidationError"):
            components.get("schemas", {}).pop(unused, None)
        app.openapi_schema = document
    return app.openapi_schema
