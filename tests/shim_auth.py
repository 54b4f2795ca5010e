"""Authorization headers for the HTTP shim's tests."""

from __future__ import annotations

import base64


def basic(key: str) -> str:
    """HTTP Basic credentials for a passpush key: its id as user, its secret as password."""
    key_id, _, secret = key.partition(".")
    return "Basic " + base64.b64encode(f"{key_id}:{secret}".encode()).decode()


def bearer(key: str) -> str:
    return f"Bearer {key}"
