"""Types shared by the vendor request models: strict objects and text gRPC can carry."""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict

# The server's limits, so that the OpenAPI document states them (the server still checks).
from passpush.domain.validation import BODY_MAX, HEADER_MAX

__all__ = ["BODY_MAX", "HEADER_MAX", "StrictBody", "Text"]


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


class StrictBody(BaseModel):
    """A request body: unknown fields are refused (pydantic coerces no number into a string)."""

    model_config = ConfigDict(extra="forbid")
