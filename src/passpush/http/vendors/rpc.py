"""How the shim reaches the gRPC service: the caller's key as metadata, failures decoded.

The shim holds no credentials of its own: each HTTP request's Bearer token, or its
HTTP Basic key:secret, becomes the `authorization: Bearer <key>` of its gRPC calls,
so the server authenticates and authorizes every call exactly as it would a stub's.
"""

from __future__ import annotations

from collections.abc import Awaitable
from datetime import UTC, datetime
from typing import TypeVar

import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from google.rpc import error_details_pb2, status_pb2

from passpush.http.failures import CallFailed

T = TypeVar("T")

Metadata = tuple[tuple[str, str], ...]

# Each vendor answers with its own body, but they agree on the HTTP status of each gRPC code.
HTTP_STATUS: dict[grpc.StatusCode, int] = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.FAILED_PRECONDITION: 409,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
}

CALL_TIMEOUT = 30.0  # seconds; every RPC the shim makes answers at once or fails


def metadata_for(key: str | None) -> Metadata:
    # gRPC metadata is printable ASCII; any other key cannot be valid, so it is sent as none.
    if not key or not (key.isascii() and key.isprintable()):
        return ()
    return (("authorization", f"Bearer {key}"),)


async def call(rpc: Awaitable[T]) -> T:
    """Awaits one RPC; a gRPC error becomes a CallFailed."""
    try:
        return await rpc
    except grpc.aio.AioRpcError as error:
        raise failure_of(error) from None


def failure_of(error: grpc.aio.AioRpcError) -> CallFailed:
    code = error.code()
    failure = CallFailed(HTTP_STATUS.get(code, 500), code.name, error.details() or code.name)
    for name, value in error.trailing_metadata() or ():
        if name == "grpc-status-details-bin" and isinstance(value, bytes):
            _read_details(status_pb2.Status.FromString(value), failure)
    if failure.status >= 500:
        failure.message = "the service could not answer; try again"  # nothing internal leaks
    return failure


def _read_details(status: status_pb2.Status, failure: CallFailed) -> None:
    for detail in status.details:
        info = error_details_pb2.ErrorInfo()
        bad_request = error_details_pb2.BadRequest()
        if detail.Unpack(info) and info.reason:
            failure.reason = info.reason
        elif detail.Unpack(bad_request) and bad_request.field_violations:
            violation = bad_request.field_violations[0]
            failure.field = violation.field
            failure.message = f"{violation.field}: {violation.description}"


def invalid(field: str, message: str) -> CallFailed:
    return CallFailed(400, "INVALID_ARGUMENT", f"{field}: {message}", field)


def timestamp(value: datetime | None, field: str) -> Timestamp | None:
    """A request's date-time as a Timestamp (naive means UTC); one out of range is a 400."""
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    result = Timestamp()
    try:
        result.FromDatetime(value.astimezone(UTC))
    except (OverflowError, ValueError):
        raise invalid(field, "is out of range") from None
    return result


def iso(value: Timestamp) -> str | None:
    """A Timestamp as the ISO 8601 the vendors write (`2026-03-26T12:00:00Z`); unset is None."""
    if not value.seconds and not value.nanos:
        return None
    return value.ToDatetime(UTC).isoformat().replace("+00:00", "Z")
