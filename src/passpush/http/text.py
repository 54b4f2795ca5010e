"""Text a request may carry, in the vendor routes and the PassKit web service alike."""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator


def _plain_text(value: str) -> str:
    # Protobuf strings are UTF-8 and PostgreSQL text has no NUL: refuse both here, as a 400.
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("must be valid Unicode text") from None
    return value


Text = Annotated[str, AfterValidator(_plain_text)]
