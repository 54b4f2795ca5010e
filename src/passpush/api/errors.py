"""The one place where errors become gRPC statuses (google.rpc rich error model)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from passpush.domain.errors import (
    AlreadyExists,
    DomainError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    Unimplemented,
)

log = logging.getLogger(__name__)

DOMAIN = "passpush"


def status_for(error: DomainError) -> grpc.Status:
    """A rich status: always an ErrorInfo, plus the detail that fits the error."""
    details: list[Any] = [error_details_pb2.ErrorInfo(reason=error.reason, domain=DOMAIN)]
    match error:
        case InvalidArgument():
            code = code_pb2.INVALID_ARGUMENT
            details.append(
                error_details_pb2.BadRequest(
                    field_violations=[
                        error_details_pb2.BadRequest.FieldViolation(
                            field=v.field, description=v.description
                        )
                        for v in error.violations
                    ]
                )
            )
        case NotFound() | AlreadyExists():
            code = code_pb2.NOT_FOUND if isinstance(error, NotFound) else code_pb2.ALREADY_EXISTS
            details.append(
                error_details_pb2.ResourceInfo(
                    resource_type=error.resource_type,
                    resource_name=error.resource_name,
                    description=error.message,
                )
            )
        case ResourceExhausted():
            code = code_pb2.RESOURCE_EXHAUSTED
            details.append(
                error_details_pb2.QuotaFailure(
                    violations=[
                        error_details_pb2.QuotaFailure.Violation(
                            subject=error.subject, description=error.message
                        )
                    ]
                )
            )
        case FailedPrecondition():
            code = code_pb2.FAILED_PRECONDITION
        case Unimplemented():
            code = code_pb2.UNIMPLEMENTED
        case _:
            code = code_pb2.INTERNAL
    return _status(code, error.message, details)


def internal_status() -> grpc.Status:
    info = error_details_pb2.ErrorInfo(reason="INTERNAL", domain=DOMAIN)
    return _status(code_pb2.INTERNAL, "internal error; the server log has the details", [info])


def _status(code: int, message: str, details: list[Any]) -> grpc.Status:
    packed = []
    for detail in details:
        any_detail = any_pb2.Any()
        any_detail.Pack(detail)
        packed.append(any_detail)
    status: grpc.Status = rpc_status.to_status(
        status_pb2.Status(code=code, message=message, details=packed)
    )
    return status


async def _abort(context: grpc.aio.ServicerContext[Any, Any], error: Exception) -> None:
    if isinstance(error, DomainError):
        await context.abort_with_status(status_for(error))
    log.exception("unexpected error in %s", type(error).__name__, exc_info=error)
    await context.abort_with_status(internal_status())


if TYPE_CHECKING:
    Handler = grpc.RpcMethodHandler[Any, Any]  # generic only in the type stubs


class ErrorInterceptor(grpc.aio.ServerInterceptor):
    """Turns DomainError into its rich status, and anything else into a bare INTERNAL.

    No traceback ever reaches the wire; unexpected errors are logged here.
    """

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler | None:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        common: dict[str, Any] = {
            "request_deserializer": handler.request_deserializer,
            "response_serializer": handler.response_serializer,
        }
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(_unary(handler.unary_unary), **common)
        if handler.stream_unary:
            return grpc.stream_unary_rpc_method_handler(_unary(handler.stream_unary), **common)
        if handler.unary_stream:
            behavior: Any = handler.unary_stream  # async generators, whatever the stubs say
            return grpc.unary_stream_rpc_method_handler(_streaming(behavior), **common)
        behavior = handler.stream_stream
        return grpc.stream_stream_rpc_method_handler(_streaming(behavior), **common)


def _unary(behavior: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    async def guarded(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        try:
            return await behavior(request, context)
        except grpc.aio.AbortError:
            raise
        except Exception as error:
            await _abort(context, error)

    return guarded


def _streaming(behavior: Callable[..., AsyncIterator[Any]]) -> Callable[..., AsyncIterator[Any]]:
    async def guarded(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        try:
            async for response in behavior(request, context):
                yield response
        except grpc.aio.AbortError:
            raise
        except Exception as error:
            await _abort(context, error)

    return guarded
