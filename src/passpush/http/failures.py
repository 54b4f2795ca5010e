"""A request's failure, as both HTTP services answer it: its status, reason and message.

The vendor shim turns it into each vendor's error body (vendors/errors.py) and the PassKit
web service into Apple's (passkit/web_service.py); both read a request that did not
validate the same way.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


@dataclass
class CallFailed(Exception):
    """A request that failed, in the terms every error shape needs (each vendor's, Apple's)."""

    status: int  # the HTTP status
    reason: str  # UPPER_SNAKE_CASE, the ErrorInfo reason when the server gave one
    message: str
    field: str | None = None  # the first failing field, for a 400


def validation_failure(errors: Sequence[Any]) -> CallFailed:
    """A request that did not validate (pydantic's errors), as a 400 naming the field."""
    first = errors[0] if errors else {"loc": (), "msg": "invalid request"}
    location = [str(part) for part in first.get("loc", ())]
    if location[:1] in (["body"], ["query"], ["path"], ["header"]):
        location = location[1:]
    field = ".".join(location) or "body"
    if first.get("type") == "json_invalid":
        return CallFailed(400, "MALFORMED_JSON", "the body is not valid JSON", "body")
    return CallFailed(400, "INVALID_ARGUMENT", f"{field}: {first.get('msg', 'is invalid')}", field)
