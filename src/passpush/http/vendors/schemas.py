"""Types shared by the vendor request models: strict objects, and the server's limits."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

# The server's limits, so that the OpenAPI document states them (the server still checks).
from passpush.domain.validation import BODY_MAX, HEADER_MAX

__all__ = ["BODY_MAX", "HEADER_MAX", "StrictBody"]


class StrictBody(BaseModel):
    """A request body: unknown fields are refused (pydantic coerces no number into a string)."""

    model_config = ConfigDict(extra="forbid")
