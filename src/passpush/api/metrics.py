"""The server interceptor that counts every gRPC call by method and status code, and times
the unary-response ones (a stream's time is how long its subscriber stayed)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

import grpc

from passpush.api.handlers import Context, WrappingInterceptor, rebuilt
from passpush.metrics import RPC_SECONDS, RPCS

if TYPE_CHECKING:
    from passpush.api.handlers import Handler


class RpcMetricsInterceptor(WrappingInterceptor):
    def wrap(self, handler: Handler, method: str) -> Handler:
        return _measured(handler, method)


def _measured(handler: Handler, method: str) -> Handler:
    service, _, name = method.lstrip("/").rpartition("/")
    seconds = RPC_SECONDS.labels(service, name)
    # The children of the counter by code, made as codes first appear (labels() locks).
    counters: dict[grpc.StatusCode, Any] = {}

    def finished(context: Context, error: BaseException | None) -> None:
        code = context.code()
        if code is None:
            code = grpc.StatusCode.OK
            if isinstance(error, asyncio.CancelledError | GeneratorExit):
                code = grpc.StatusCode.CANCELLED  # the client went away, or its deadline
            elif error is not None and not isinstance(error, grpc.aio.AbortError):
                code = grpc.StatusCode.UNKNOWN
        counter = counters.get(code)
        if counter is None:
            counter = counters[code] = RPCS.labels(service, name, code.name)
        counter.inc()

    def unary(behavior: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        async def run(request: Any, context: Context) -> Any:
            started = time.perf_counter()
            error: BaseException | None = None
            try:
                return await behavior(request, context)
            except BaseException as raised:
                error = raised
                raise
            finally:
                seconds.observe(time.perf_counter() - started)
                finished(context, error)

        return run

    def streaming(behavior: Callable[..., AsyncIterator[Any]]) -> Callable[..., AsyncIterator[Any]]:
        async def run(request: Any, context: Context) -> AsyncIterator[Any]:
            error: BaseException | None = None
            try:
                async for response in behavior(request, context):
                    yield response
            except BaseException as raised:
                error = raised
                raise
            finally:
                finished(context, error)

        return run

    return rebuilt(handler, unary, streaming)
