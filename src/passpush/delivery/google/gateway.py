"""The Google Wallet gateway: the REST calls that put passpush's messages on pass objects
and classes.

Thin over httpx: one AsyncClient (HTTP/1.1 keep-alive connections, timeouts); a service
account's access tokens (tokens.py); and turns for each issuer's requests (pacing.py), which
keep them under Google's requests per second. Like the APNs gateway it returns Google's
answers as they are: what an answer means for a delivery is domain/outcomes.py's to say,
retrying it is the worker's.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import google.auth.exceptions
import httpx

from passpush.delivery.google.pacing import ProcessRequestTurns, RequestTurns
from passpush.delivery.google.tokens import ServiceAccountTokens
from passpush.metrics import GOOGLE_SECONDS
from passpush.store.faults import DATABASE_ERRORS

log = logging.getLogger(__name__)

GOOGLE_API_BASE = "https://walletobjects.googleapis.com"
GOOGLE_TOKEN_URL = "https://oauth2.googleapis.com/token"
TIMEOUT = "Timeout"
CONNECTION_ERROR = "ConnectionError"
TURN_UNAVAILABLE = "RequestTurnUnavailable"  # the database handing out the turns unreachable
_NO_TURN: tuple[type[Exception], ...] = (*DATABASE_ERRORS, OSError)


@dataclass(frozen=True)
class GoogleWalletConfig:
    """Where the Google Wallet API is and how to authenticate to it."""

    credentials_file: str | None = None  # a service account's JSON key
    api_base: str = GOOGLE_API_BASE
    token_url: str = GOOGLE_TOKEN_URL
    rate: float = 20.0  # requests per second per issuer (Google allows ~20), all replicas together
    request_timeout: float = 10.0  # seconds, per request
    max_connections: int = 20


@dataclass(frozen=True)
class GoogleAnswer:
    """Google's answer to one request."""

    status: int  # HTTP status; 0 when no answer came (TIMEOUT, CONNECTION_ERROR)
    reason: str  # Google's error reason ("resourceNotFound", ...); "" on success
    message: str = ""  # Google's error message, for the operator's log
    body: Mapping[str, Any] = field(default_factory=dict)  # a successful answer's JSON
    retry_after: float = 0.0  # seconds, from a Retry-After header

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300


class GoogleWalletGateway:
    """The Google Wallet API calls passpush makes on pass objects and classes: each takes a
    resource's type and id, an object's ("offerObject", "issuer.pass") or a class's
    ("offerClass", "issuer.offers"), which Google's paths treat alike."""

    def __init__(self, config: GoogleWalletConfig, turns: RequestTurns | None = None) -> None:
        """`turns` paces the requests of each issuer (by default within this process)."""
        self.config = config
        self._tokens = (
            ServiceAccountTokens(config.credentials_file, config.token_url, config.request_timeout)
            if config.credentials_file
            else None
        )
        self._turns = turns or ProcessRequestTurns(config.rate)
        self._client = httpx.AsyncClient(
            base_url=config.api_base.rstrip("/"),
            timeout=config.request_timeout,
            limits=httpx.Limits(
                max_connections=config.max_connections,
                max_keepalive_connections=config.max_connections,
            ),
            headers={"content-type": "application/json"},
        )

    @property
    def has_credentials(self) -> bool:
        return self._tokens is not None

    @property
    def client_email(self) -> str:
        return self._tokens.client_email if self._tokens is not None else ""

    async def add_message(
        self, object_type: str, object_id: str, message: Mapping[str, Any]
    ) -> GoogleAnswer:
        """POST …/{objectType}/{objectId}/addMessage: adds `message` to the object."""
        path = f"{_object_path(object_type, object_id)}/addMessage"
        return await self._call(_issuer_of(object_id), "POST", path, {"message": message})

    async def get_object(self, object_type: str, object_id: str) -> GoogleAnswer:
        return await self._call(_issuer_of(object_id), "GET", _object_path(object_type, object_id))

    async def set_messages(
        self, object_type: str, object_id: str, messages: list[Mapping[str, Any]]
    ) -> GoogleAnswer:
        """PATCH the object's `messages` to exactly `messages`; its other fields stay."""
        path = _object_path(object_type, object_id)
        return await self._call(_issuer_of(object_id), "PATCH", path, {"messages": messages})

    async def close(self) -> None:
        await self._client.aclose()
        if self._tokens is not None:
            self._tokens.close()

    async def _call(
        self, issuer: str, method: str, path: str, body: Mapping[str, Any] | None = None
    ) -> GoogleAnswer:
        if self._tokens is None:
            raise RuntimeError("no Google service account configured")
        for first_try in (True, False):
            try:
                token = await self._tokens.token()
            except google.auth.exceptions.GoogleAuthError as error:
                return _token_failure(error)
            try:
                await self._turns.wait_turn(issuer)
            except _NO_TURN as error:
                # No turn, no request (it could break the rate): no answer, tried again.
                log.warning("no Google request turn: %s", type(error).__name__)
                return GoogleAnswer(0, TURN_UNAVAILABLE, type(error).__name__)
            started = time.perf_counter()
            try:
                response = await self._client.request(
                    method, path, json=body, headers={"authorization": f"Bearer {token}"}
                )
            except httpx.TimeoutException:
                return GoogleAnswer(0, TIMEOUT)
            except httpx.TransportError as error:
                return GoogleAnswer(0, CONNECTION_ERROR, type(error).__name__)
            finally:
                GOOGLE_SECONDS.labels(method).observe(time.perf_counter() - started)
            if response.status_code == 401 and first_try:
                # A cached token Google no longer takes: once more with a fresh one.
                self._tokens.forget(token)
                continue
            return _answer(response)
        raise AssertionError("unreachable")  # pragma: no cover


def _issuer_of(object_id: str) -> str:
    """The issuer of an object id (`issuerId.objectSuffix`): Google's rate is per issuer."""
    return object_id.partition(".")[0]


def _object_path(object_type: str, object_id: str) -> str:
    return f"/walletobjects/v1/{quote(object_type, safe='')}/{quote(object_id, safe='')}"


def _answer(response: httpx.Response) -> GoogleAnswer:
    try:
        body = response.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        body = {}
    if response.is_success:
        return GoogleAnswer(response.status_code, "", body=body)
    # Google's error shape: {"error": {"code", "message", "status", "errors": [{"reason"}]}}
    error = body.get("error")
    reason, message = "", ""
    if isinstance(error, dict):
        message = str(error.get("message", ""))
        details = error.get("errors")
        if isinstance(details, list) and details and isinstance(details[0], dict):
            reason = str(details[0].get("reason", ""))
        reason = reason or str(error.get("status", ""))
    return GoogleAnswer(
        response.status_code,
        reason or f"HTTP{response.status_code}",
        message[:500],
        retry_after=_retry_after(response.headers.get("retry-after")),
    )


def _retry_after(value: str | None) -> float:
    try:
        return max(0.0, float(value)) if value else 0.0
    except ValueError:  # an HTTP date: the backoff decides
        return 0.0


def _token_failure(error: google.auth.exceptions.GoogleAuthError) -> GoogleAnswer:
    """The token endpoint's refusal as an answer: 401 when it will refuse again, else none."""
    if isinstance(error, google.auth.exceptions.RefreshError) and not error.retryable:
        return GoogleAnswer(401, "TokenRefused", _describe_token_error(error))
    return GoogleAnswer(0, "TokenUnavailable", _describe_token_error(error))


def _describe_token_error(error: Exception) -> str:
    # The first argument is google-auth's message; the second the endpoint's JSON, e.g.
    # {"error": "invalid_grant", "error_description": "..."}, which holds no secret.
    return str(error.args[0])[:500] if error.args else type(error).__name__
