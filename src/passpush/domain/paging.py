"""AIP-158 pagination: page sizes and opaque page tokens."""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from passpush.domain.errors import InvalidArgument
from passpush.domain.validation import unstorable

DEFAULT_PAGE_SIZE = 50
PAGE_TOKEN_MAX = 1_024  # the server's tokens are far shorter
MAX_PAGE_SIZE = 1000


def page_size(requested: int) -> int:
    if requested < 0:
        raise InvalidArgument.field("page_size", "must not be negative")
    return min(requested or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)


def encode_token(after: str) -> str:
    return base64.urlsafe_b64encode(json.dumps({"after": after}).encode()).decode()


def decode_token(token: str) -> str:
    """The key to list after; "" for the first page."""
    if not token:
        return ""
    if len(token) > PAGE_TOKEN_MAX:
        raise InvalidArgument.field("page_token", f"must be at most {PAGE_TOKEN_MAX} characters")
    try:
        data = json.loads(base64.urlsafe_b64decode(token.encode()))
        after = data["after"]
    except (ValueError, KeyError, TypeError, binascii.Error, RecursionError):
        raise InvalidArgument.field("page_token", "is not a token this server issued") from None
    if not isinstance(after, str) or unstorable(after):
        raise InvalidArgument.field("page_token", "is not a token this server issued")
    return after


T = TypeVar("T")


@dataclass(frozen=True)
class Page(Generic[T]):
    items: Sequence[T]
    next_page_token: str


def page_of(items: Sequence[T], limit: int, key: Callable[[T], str]) -> Page[T]:
    """Cuts a page from `limit + 1` items; the extra one tells whether more follow."""
    if len(items) > limit:
        return Page(items[:limit], encode_token(key(items[limit - 1])))
    return Page(items, "")
