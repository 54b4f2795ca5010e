"""The server interceptor that counts every gRPC call by method and status code, and times
the unary-response ones (a stream's time is how long its subscriber stayed)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

import grpc

from passpush.metrics import RPC_SECONDS, RPCS

if TYPE_CHECKING:
    Handler = grpc.RpcMethodHandler[Any, Any]  # generic only in the type stubs

Context = grpc.aio.ServicerContext[Any, Any]


class RpcMetricsInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self) -> None:
        # The measured handler of each method, made once: the server's handlers never change.
        self._measured: dict[str, Handler] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler | None:
        method = handler_call_details.method
        measured = self._measured.get(method)
        if measured is not None:
            return measured
        handler = await continuation(handler_call_details)
        if handler is None:
            return None  # an unknown method: gRPC answers UNIMPLEMENTED, uncounted
        measured = self._measured[method] = _measured(handler, method)
        return measured


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

    common: dict[str, Any] = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(unary(handler.unary_unary), **common)
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(unary(handler.stream_unary), **common)
    if handler.unary_stream:
        generator: Any = handler.unary_stream  # an async generator, whatever the stubs say
        return grpc.unary_stream_rpc_method_handler(streaming(generator), **common)
    generator = handler.stream_stream
    return grpc.stream_stream_rpc_method_handler(streaming(generator), **common)
