"""OAuth2 access tokens of a Google service account, for the Google Wallet gateway.

google-auth signs the JWT bearer grant and fetches the token, synchronously: so in a thread,
one refresh at a time, over a small httpx transport (no `requests` needed); tokens are cached
until shortly before they expire.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import google.auth.exceptions
import google.auth.transport
import httpx
from google.oauth2 import service_account

SCOPE = "https://www.googleapis.com/auth/wallet_object.issuer"
# Refresh a token this long before Google says it expires (at most half its lifetime).
REFRESH_MARGIN_SECONDS = 60.0


class ServiceAccountTokens:
    """OAuth2 access tokens of a service account (JWT bearer grant), cached until near expiry."""

    def __init__(self, credentials_file: str, token_url: str, timeout: float) -> None:
        # Raises at start-up on a missing or malformed key, not at the first delivery.
        credentials = service_account.Credentials.from_service_account_file(  # type: ignore[no-untyped-call]
            credentials_file, scopes=[SCOPE]
        )
        self._credentials = credentials.with_token_uri(token_url)
        self.client_email: str = self._credentials.service_account_email
        self._transport = _HttpxTokenTransport(timeout)
        self._lock = asyncio.Lock()
        self._token: str | None = None
        self._refresh_at = 0.0  # event loop time

    async def token(self) -> str:
        """A valid access token; raises google.auth.exceptions.GoogleAuthError."""
        loop = asyncio.get_running_loop()
        async with self._lock:  # one refresh at a time; the others wait for its token
            if self._token is None or loop.time() >= self._refresh_at:
                # google-auth's refresh is synchronous HTTP: off the event loop.
                await asyncio.to_thread(self._credentials.refresh, self._transport)
                self._token = str(self._credentials.token)
                self._refresh_at = loop.time() + _seconds_to_refresh(self._credentials.expiry)
            return self._token

    def forget(self, token: str) -> None:
        """Google refused `token` (revoked, or a clock off): the next caller fetches another."""
        if self._token == token:
            self._token = None

    def close(self) -> None:
        self._transport.close()


def _seconds_to_refresh(expiry: datetime | None) -> float:
    if expiry is None:
        return REFRESH_MARGIN_SECONDS
    left = (expiry.replace(tzinfo=UTC) - datetime.now(UTC)).total_seconds()
    return max(0.0, left - min(REFRESH_MARGIN_SECONDS, left / 2))


class _TokenResponse(google.auth.transport.Response):
    def __init__(self, response: httpx.Response) -> None:
        self._response = response

    @property
    def status(self) -> int:
        return self._response.status_code

    @property
    def headers(self) -> Mapping[str, str]:
        return self._response.headers

    @property
    def data(self) -> bytes:
        return self._response.content


class _HttpxTokenTransport(google.auth.transport.Request):
    """google-auth's HTTP transport over a synchronous httpx client (no `requests` needed)."""

    def __init__(self, timeout: float) -> None:
        self._client = httpx.Client(timeout=timeout)
        self._timeout = timeout

    def __call__(
        self,
        url: str,
        method: str = "GET",
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float | None = None,
        **kwargs: Any,
    ) -> google.auth.transport.Response:
        try:
            response = self._client.request(
                method, url, content=body, headers=headers, timeout=timeout or self._timeout
            )
        except httpx.HTTPError as error:
            raise google.auth.exceptions.TransportError(str(error)) from error  # type: ignore[no-untyped-call]
        return _TokenResponse(response)

    def close(self) -> None:
        self._client.close()
