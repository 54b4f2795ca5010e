"""The one place where errors become gRPC statuses (google.rpc rich error model)."""

from __future__ import annotations

from typing import Any

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
    PermissionDenied,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
    Unimplemented,
)
from passpush.store.faults import unavailable_from

DOMAIN = "passpush"
# A status travels in trailers, and grpc's clients refuse trailers over 16 KiB: an error that
# names the caller's values (an unknown scope, a file name, ten thousand bad ids) keeps its
# first violations and the start of each text, so that the caller still gets the status.
_MAX_VIOLATIONS = 10
_MAX_FIELD = 200
_MAX_TEXT = 500
_MAX_MESSAGE = 1_000


def _cut(text: str, limit: int = _MAX_TEXT) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def as_domain_error(error: Exception) -> DomainError | None:
    """The domain error an exception stands for: itself, Unavailable for passing trouble of
    the database (store/faults.py tells which), or None for a fault of this server."""
    if isinstance(error, DomainError):
        return error
    return unavailable_from(error)


def status_for(error: DomainError) -> grpc.Status:
    """A rich status: always an ErrorInfo, plus the detail that fits the error."""
    details: list[Any] = [error_details_pb2.ErrorInfo(reason=error.reason, domain=DOMAIN)]
    match error:
        case InvalidArgument():
            code = code_pb2.INVALID_ARGUMENT
            violations = [
                error_details_pb2.BadRequest.FieldViolation(
                    field=_cut(v.field, _MAX_FIELD), description=_cut(v.description)
                )
                for v in error.violations[:_MAX_VIOLATIONS]
            ]
            if len(error.violations) > _MAX_VIOLATIONS:
                violations[
                    -1
                ].description += f" (and {len(error.violations) - _MAX_VIOLATIONS} more violations)"
            details.append(error_details_pb2.BadRequest(field_violations=violations))
        case NotFound() | AlreadyExists():
            code = code_pb2.NOT_FOUND if isinstance(error, NotFound) else code_pb2.ALREADY_EXISTS
            details.append(
                error_details_pb2.ResourceInfo(
                    resource_type=error.resource_type,
                    resource_name=_cut(error.resource_name),
                    description=_cut(error.message),
                )
            )
        case ResourceExhausted():
            code = code_pb2.RESOURCE_EXHAUSTED
            details.append(
                error_details_pb2.QuotaFailure(
                    violations=[
                        error_details_pb2.QuotaFailure.Violation(
                            subject=_cut(error.subject), description=_cut(error.message)
                        )
                    ]
                )
            )
        case Unauthenticated():
            code = code_pb2.UNAUTHENTICATED
        case PermissionDenied():
            code = code_pb2.PERMISSION_DENIED
            if error.scope:
                details[0].metadata["scope"] = error.scope
        case FailedPrecondition():
            code = code_pb2.FAILED_PRECONDITION
        case Unimplemented():
            code = code_pb2.UNIMPLEMENTED
        case Unavailable():
            code = code_pb2.UNAVAILABLE
        case _:
            code = code_pb2.INTERNAL
    return _status(code, _cut(error.message, _MAX_MESSAGE), details)


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
