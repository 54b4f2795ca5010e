"""The caller's API key, read from the request the way each vendor sends it."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends
from fastapi.security import (
    HTTPAuthorizationCredentials,
    HTTPBasic,
    HTTPBasicCredentials,
    HTTPBearer,
)

from passpush.http.vendors.rpc import Metadata, metadata_for

# auto_error=False: a missing key still reaches the server, which answers UNAUTHENTICATED
# like it would to a stub, and the vendor's error shape carries that 401.
_bearer = HTTPBearer(auto_error=False, description="`Authorization: Bearer ppk_<id>.<secret>`")
_basic = HTTPBasic(
    auto_error=False, description="HTTP Basic with the key id as user and its secret as password"
)


async def _bearer_key(
    bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Metadata:
    return metadata_for(bearer.credentials if bearer else None)


async def _bearer_or_basic_key(
    bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    basic: Annotated[HTTPBasicCredentials | None, Depends(_basic)],
) -> Metadata:
    if bearer:
        return metadata_for(bearer.credentials)
    if basic:
        # A key is `ppk_<id>.<secret>`: Basic sends the id as user and the secret as password.
        key = f"{basic.username}.{basic.password}" if basic.password else basic.username
        return metadata_for(key)
    return metadata_for(None)


BearerKey = Annotated[Metadata, Depends(_bearer_key)]
BearerOrBasicKey = Annotated[Metadata, Depends(_bearer_or_basic_key)]
