"""What the server's interceptors share: each wraps a method's handler once, the first
time the method is called, and the wrapped handler keeps the original's kind and codecs."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

import grpc

if TYPE_CHECKING:
    Handler = grpc.RpcMethodHandler[Any, Any]  # generic only in the type stubs

Context = grpc.aio.ServicerContext[Any, Any]
UnaryBehavior = Callable[..., Awaitable[Any]]  # answers one response
StreamBehavior = Callable[..., AsyncIterator[Any]]  # yields responses


class WrappingInterceptor(grpc.aio.ServerInterceptor):
    """Calls `wrap` once per method and answers with what it made ever after: the server's
    handlers never change, and wrapping on every call cost more than the interceptor's work."""

    def __init__(self) -> None:
        self._wrapped: dict[str, Handler] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler | None:
        method = handler_call_details.method
        wrapped = self._wrapped.get(method)
        if wrapped is not None:
            return wrapped
        handler = await continuation(handler_call_details)
        if handler is None:
            return None  # an unknown method: gRPC answers UNIMPLEMENTED
        wrapped = self._wrapped[method] = self.wrap(handler, method)
        return wrapped

    def wrap(self, handler: Handler, method: str) -> Handler:
        raise NotImplementedError


def rebuilt(
    handler: Handler,
    unary: Callable[[UnaryBehavior], UnaryBehavior],
    streaming: Callable[[StreamBehavior], StreamBehavior],
    request_deserializer: Callable[[bytes], Any] | None = None,
) -> Handler:
    """The handler of the same kind with its behavior wrapped: by `unary` when it answers
    one response, by `streaming` when it streams them."""
    common: dict[str, Any] = {
        "request_deserializer": request_deserializer or handler.request_deserializer,
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
