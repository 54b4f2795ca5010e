"""Domain errors: what went wrong, in terms a caller can act on.

Transports map each class to a status exactly once (gRPC in api/errors.py);
nothing here knows about gRPC or HTTP.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class FieldViolation:
    """One invalid field: its path in the request (`content.body`) and why."""

    field: str
    description: str


class DomainError(Exception):
    """Base of every error a caller can cause; `reason` is UPPER_SNAKE_CASE."""

    reason: str = "ERROR"

    def __init__(self, message: str, *, reason: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if reason is not None:
            self.reason = reason


class InvalidArgument(DomainError):
    """The request is malformed; `violations` name each bad field."""

    reason = "INVALID_ARGUMENT"

    def __init__(self, violations: list[FieldViolation], *, reason: str | None = None) -> None:
        summary = "; ".join(f"{v.field}: {v.description}" for v in violations)
        super().__init__(f"invalid request: {summary}", reason=reason)
        self.violations = violations

    @classmethod
    def field(cls, field: str, description: str) -> InvalidArgument:
        return cls([FieldViolation(field, description)])


class NotFound(DomainError):
    """A named resource does not exist (or is not the caller's to see)."""

    def __init__(self, resource_type: str, resource_name: str) -> None:
        super().__init__(f"{resource_type} {resource_name!r} not found")
        self.resource_type = resource_type
        self.resource_name = resource_name
        self.reason = f"{resource_type.upper()}_NOT_FOUND"


class AlreadyExists(DomainError):
    """A resource with that id (or idempotency key) already exists."""

    def __init__(
        self, resource_type: str, resource_name: str, *, reason: str | None = None
    ) -> None:
        super().__init__(
            f"{resource_type} {resource_name!r} already exists",
            reason=reason or f"{resource_type.upper()}_ALREADY_EXISTS",
        )
        self.resource_type = resource_type
        self.resource_name = resource_name


class FailedPrecondition(DomainError):
    """The resource is not in a state that allows the operation."""

    reason = "FAILED_PRECONDITION"


class ResourceExhausted(DomainError):
    """A quota or cap is used up; `subject` names what is capped."""

    reason = "RESOURCE_EXHAUSTED"

    def __init__(self, message: str, *, subject: str, reason: str | None = None) -> None:
        super().__init__(message, reason=reason)
        self.subject = subject


class Unauthenticated(DomainError):
    """No credentials, or credentials that are not (or no longer) valid."""

    reason = "UNAUTHENTICATED"


class PermissionDenied(DomainError):
    """Valid credentials that do not allow the operation; `scope` names what is missing."""

    reason = "PERMISSION_DENIED"

    def __init__(self, message: str, *, reason: str | None = None, scope: str = "") -> None:
        super().__init__(message, reason=reason)
        self.scope = scope


class Unimplemented(DomainError):
    """The operation is declared in the contract but not built yet."""

    reason = "NOT_IMPLEMENTED"


class Unavailable(DomainError):
    """The server cannot go on with the call now (it is shutting down): retry, elsewhere."""

    reason = "UNAVAILABLE"
