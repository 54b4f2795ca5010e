"""Apple's PassKit web service: the routes a Wallet device calls at its pass's webServiceURL.

Unlike the vendor routes, these carry no API key: a device proves it holds a pass with
the pass's authentication token (`Authorization: ApplePass <token>`). So they call the
service core in-process (service/passkit.py) rather than the gRPC stubs, and only
translate: path, headers and body in; status, headers and body out.

A plain ASGI app rather than FastAPI routes: after a broadcast every holder's device
asks which passes changed and downloads one, and FastAPI's layers (middleware, routing,
dependency solving) were a quarter of a device request's time. One table, `ROUTES`,
serves the requests and writes their part of the OpenAPI document.
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import format_datetime, parsedate_to_datetime
from typing import Any, TypeVar
from urllib.parse import parse_qsl

from pydantic import BaseModel, ConfigDict, ValidationError

from passpush.domain.errors import (
    AlreadyExists,
    DomainError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    Unauthenticated,
    Unavailable,
)
from passpush.domain.passkit import MEDIA_TYPE
from passpush.http.body_limits import PASSKIT_LIMIT, PASSKIT_LOG_LIMIT
from passpush.http.failures import CallFailed, validation_failure
from passpush.http.text import Text
from passpush.service.passkit import PassKitCore
from passpush.store.faults import DATABASE_ERRORS, unavailable_from

log = logging.getLogger(__name__)

DEFAULT_PREFIX = "/passkit"
TAG = "Apple PassKit web service"

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


class PassKitError(BaseModel):
    """A PassKit error (a device only reads the status; the body is for people)."""

    reason: str
    message: str


class Registration(BaseModel):
    """A device's registration: the APNs token to push to (other keys are ignored)."""

    model_config = ConfigDict(extra="ignore")
    pushToken: Text


class SerialNumbers(BaseModel):
    serialNumbers: list[str]
    lastUpdated: str


class DeviceLogs(BaseModel):
    model_config = ConfigDict(extra="ignore")
    logs: list[Text]


def error_body(failure: CallFailed) -> dict[str, Any]:
    return {"reason": failure.reason, "message": failure.message}


_STATUS = {
    InvalidArgument: 400,
    Unauthenticated: 401,
    NotFound: 404,
    AlreadyExists: 409,
    FailedPrecondition: 409,
    Unavailable: 503,
}


def _failure(error: DomainError) -> CallFailed:
    status = next((s for kind, s in _STATUS.items() if isinstance(error, kind)), 500)
    field = error.violations[0].field if isinstance(error, InvalidArgument) else None
    return CallFailed(status, error.reason, error.message, field)


@dataclass(frozen=True)
class Request:
    """What a route reads of a device's request."""

    params: dict[str, str]  # from the path, by the names in the route's template
    headers: dict[bytes, bytes]  # lower-cased names; the last of a repeated header
    query: dict[str, str]
    body: bytes

    def header(self, name: bytes) -> str | None:
        value = self.headers.get(name)
        return value.decode("latin-1") if value is not None else None


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes = b""
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)


def _json(status: int, document: Any, headers: list[tuple[bytes, bytes]] | None = None) -> Response:
    body = json.dumps(document, separators=(",", ":")).encode()
    return Response(status, body, [(b"content-type", b"application/json"), *(headers or [])])


def _failed(failure: CallFailed) -> Response:
    challenge = [(b"www-authenticate", b"ApplePass")] if failure.status == 401 else []
    return _json(failure.status, error_body(failure), challenge)


def _authentication_token(request: Request) -> str | None:
    scheme, _, token = (request.header(b"authorization") or "").partition(" ")
    if scheme.lower() != "applepass":
        return None
    return token.strip() or None


M = TypeVar("M", bound=BaseModel)


def _parsed(model: type[M], body: bytes) -> M:
    try:
        return model.model_validate_json(body)
    except ValidationError as error:
        raise validation_failure(error.errors()) from None


async def register_device(core: PassKitCore, request: Request) -> Response:
    body = _parsed(Registration, request.body)
    p = request.params
    created = await core.register(
        p["passTypeIdentifier"],
        p["serialNumber"],
        p["deviceLibraryIdentifier"],
        body.pushToken,
        _authentication_token(request),
    )
    return Response(201 if created else 200)


async def updated_serial_numbers(core: PassKitCore, request: Request) -> Response:
    p = request.params
    updated = await core.updated_serials(
        p["deviceLibraryIdentifier"],
        p["passTypeIdentifier"],
        request.query.get("passesUpdatedSince"),
    )
    if updated is None:
        return Response(204)
    return _json(
        200, {"serialNumbers": updated.serial_numbers, "lastUpdated": updated.last_updated}
    )


async def latest_pass(core: PassKitCore, request: Request) -> Response:
    p = request.params
    latest = await core.latest_pass(
        p["passTypeIdentifier"],
        p["serialNumber"],
        _authentication_token(request),
        _http_date(request.header(b"if-modified-since")),
    )
    headers = [(b"last-modified", format_datetime(latest.last_modified, usegmt=True).encode())]
    if latest.pkpass is None:
        return Response(304, headers=headers)
    return Response(200, latest.pkpass, [(b"content-type", MEDIA_TYPE.encode()), *headers])


async def unregister_device(core: PassKitCore, request: Request) -> Response:
    p = request.params
    await core.unregister(
        p["passTypeIdentifier"],
        p["serialNumber"],
        p["deviceLibraryIdentifier"],
        _authentication_token(request),
    )
    return Response(200)


async def device_log(core: PassKitCore, request: Request) -> Response:
    core.record_device_logs(_parsed(DeviceLogs, request.body).logs)
    return Response(200)


Handler = Callable[[PassKitCore, Request], Awaitable[Response]]
_MALFORMED = (400, "The request is malformed", PassKitError)
_UNAUTHORIZED = (
    401,
    "No pass of that type and serial number has the ApplePass token given",
    PassKitError,
)
_REGISTRATION = "/v1/devices/{deviceLibraryIdentifier}/registrations/{passTypeIdentifier}"


@dataclass(frozen=True)
class Route:
    """A route of the service, and what the OpenAPI document says of it."""

    method: str
    path: str  # under the prefix; `{name}` is one path segment
    handler: Handler
    summary: str
    responses: tuple[tuple[int, str, type[BaseModel] | None], ...]
    body: type[BaseModel] | None = None
    body_limit: int = PASSKIT_LIMIT
    query: tuple[tuple[str, str], ...] = ()  # optional query parameters: name, description
    authenticated: bool = False  # by the pass's ApplePass token
    description: str = ""

    @functools.cached_property  # matched against every request's path
    def segments(self) -> list[str]:
        return self.path.split("/")


ROUTES = (
    Route(
        "POST",
        _REGISTRATION + "/{serialNumber}",
        register_device,
        "Register a device to receive push notifications for a pass",
        (
            (200, "The device was registered for the pass already", None),
            (201, "Registered", None),
            _MALFORMED,
            _UNAUTHORIZED,
        ),
        body=Registration,
        authenticated=True,
    ),
    Route(
        "GET",
        _REGISTRATION,
        updated_serial_numbers,
        "Get the serial numbers of a device's passes that changed",
        (
            (200, "The serial numbers, and the tag to ask from next time", SerialNumbers),
            (204, "No pass changed (or none is registered)", None),
        ),
        query=(("passesUpdatedSince", "The `lastUpdated` of the device's previous call"),),
    ),
    Route(
        "GET",
        "/v1/passes/{passTypeIdentifier}/{serialNumber}",
        latest_pass,
        "Get the latest version of a pass",
        (
            (200, "The signed pass", None),
            (304, "Not modified since If-Modified-Since", None),
            _UNAUTHORIZED,
            (404, "The pass has no content", PassKitError),
            (409, "Nothing can sign the pass", PassKitError),
        ),
        authenticated=True,
        description="HEAD is answered too: the same status and headers, without the body.",
    ),
    Route(
        "DELETE",
        _REGISTRATION + "/{serialNumber}",
        unregister_device,
        "Unregister a device from a pass",
        ((200, "Unregistered (or was not registered)", None), _UNAUTHORIZED),
        authenticated=True,
    ),
    Route(
        "POST",
        "/v1/log",
        device_log,
        "Log messages from devices",
        ((200, "Logged", None), _MALFORMED),
        body=DeviceLogs,
        body_limit=PASSKIT_LOG_LIMIT,
    ),
)


class PassKitService:
    """The ASGI app of the routes in `ROUTES` under `prefix`; anything else under the
    prefix is 404 (405 for a known path's other methods), in the PassKit error shape."""

    def __init__(self, core: PassKitCore, prefix: str = DEFAULT_PREFIX) -> None:
        self.core = core
        self.prefix = prefix

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            response = await self._answer(scope, receive)
        except CallFailed as failure:
            response = _failed(failure)
        except DomainError as error:
            response = _failed(_failure(error))
        except Exception as error:
            response = _failed(_unexpected(error))
        headers = response.headers
        if response.status not in (204, 304):  # these have no body to measure
            headers = [(b"content-length", str(len(response.body)).encode()), *headers]
        await send({"type": "http.response.start", "status": response.status, "headers": headers})
        # HEAD: the GET's status and headers (its Content-Length too), without the body.
        body = b"" if scope["method"] == "HEAD" else response.body
        await send({"type": "http.response.body", "body": body})

    async def _answer(self, scope: Scope, receive: Receive) -> Response:
        segments = scope["path"][len(self.prefix) :].split("/")
        method = "GET" if scope["method"] == "HEAD" else scope["method"]
        allowed: list[str] = []
        for route in ROUTES:
            params = _match(route.segments, segments)
            if params is None:
                continue
            if route.method != method:
                allowed.append(route.method)
                continue
            headers = dict(scope["headers"])
            body = await _body(headers, receive, route.body_limit) if route.body else b""
            query = dict(parse_qsl(scope["query_string"].decode("latin-1")))
            return await route.handler(self.core, Request(params, headers, query, body))
        if allowed:
            allow = ", ".join([*allowed, "HEAD"] if "GET" in allowed else allowed)
            failure = CallFailed(405, "METHOD_NOT_ALLOWED", "Method Not Allowed")
            response = _failed(failure)
            response.headers.append((b"allow", allow.encode()))
            return response
        raise CallFailed(404, "NOT_FOUND", "Not Found")


def _unexpected(error: Exception) -> CallFailed:
    """503 for the database out of reach (no driver text on the wire), else a logged 500."""
    unavailable = unavailable_from(error) if isinstance(error, DATABASE_ERRORS) else None
    if unavailable is not None:
        log.warning("answered %s: %r", unavailable.reason, error)
        return CallFailed(503, unavailable.reason, unavailable.message)
    log.error("unexpected error in the PassKit web service", exc_info=error)
    return CallFailed(500, "INTERNAL", "internal error; the server log has the details")


def _match(template: list[str], segments: list[str]) -> dict[str, str] | None:
    """The path's parameters if it has the template's shape (each `{name}` one segment,
    not empty), else None."""
    if len(template) != len(segments):
        return None
    params: dict[str, str] = {}
    for expected, given in zip(template, segments, strict=True):
        if expected.startswith("{"):
            if not given:
                return None
            params[expected[1:-1]] = given
        elif expected != given:
            return None
    return params


async def _body(headers: dict[bytes, bytes], receive: Receive, limit: int) -> bytes:
    """The request body, refused with 413 past `limit` bytes: at once when Content-Length
    says so, else once that many have arrived."""
    declared = headers.get(b"content-length", b"")
    if declared.isdigit() and int(declared) > limit:
        raise _too_large(limit)
    chunks: list[bytes] = []
    received = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break  # the device went away: nothing will read the answer
        chunk = message.get("body", b"")
        received += len(chunk)
        if received > limit:
            raise _too_large(limit)
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


def _too_large(limit: int) -> CallFailed:
    return CallFailed(
        413, "REQUEST_ENTITY_TOO_LARGE", f"the request body must be at most {limit} bytes"
    )


def _http_date(value: str | None) -> datetime | None:
    """An HTTP date in any of its three formats (`Wed, 21 Oct 2015 07:28:00 GMT`, RFC 850's,
    asctime's); anything else is as if absent, and so is a date still to come: no copy was
    served then (RFC 2616 14.25), and answering 304 to it would hide every change until it."""
    if not value:
        return None
    try:
        parsed = parsedate_to_datetime(value)
        parsed = parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)
    except (TypeError, ValueError, IndexError, OverflowError):  # 9999-12-31 at -2359 too
        return None
    return None if parsed > datetime.now(UTC) else parsed


def openapi_paths(prefix: str) -> dict[str, Any]:
    """The routes' part of the OpenAPI document (schemas under #/components/schemas)."""
    paths: dict[str, Any] = {}
    for route in ROUTES:
        parameters = [
            {"name": segment[1:-1], "in": "path", "required": True, "schema": {"type": "string"}}
            for segment in route.segments
            if segment.startswith("{")
        ]
        parameters += [
            {"name": name, "in": "query", "required": False, "description": text,
             "schema": {"type": "string"}}
            for name, text in route.query
        ]  # fmt: skip
        operation: dict[str, Any] = {
            "tags": [TAG],
            "summary": route.summary,
            "operationId": route.handler.__name__,
            "parameters": parameters,
            "responses": {
                str(status): _described(status, text, model, route)
                for status, text, model in route.responses
            },
        }
        if route.authenticated:
            operation["security"] = [{"ApplePass": []}]
        if route.description:
            operation["description"] = route.description
        if route.body is not None:
            operation["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": _reference(route.body)}},
            }
        paths.setdefault(prefix + route.path, {})[route.method.lower()] = operation
    return paths


def openapi_components() -> dict[str, Any]:
    """The schemas and the security scheme that `openapi_paths` refers to."""
    models = (PassKitError, Registration, SerialNumbers, DeviceLogs)
    return {
        "schemas": {model.__name__: model.model_json_schema() for model in models},
        "securitySchemes": {
            "ApplePass": {
                "type": "apiKey",
                "in": "header",
                "name": "Authorization",
                "description": "`Authorization: ApplePass <authenticationToken>`, the pass's token",
            }
        },
    }


def _described(
    status: int, text: str, model: type[BaseModel] | None, route: Route
) -> dict[str, Any]:
    if route.handler is latest_pass and status == 200:
        return {
            "description": text,
            "content": {MEDIA_TYPE: {"schema": {"type": "string", "format": "binary"}}},
        }
    if model is None:
        return {"description": text}
    return {"description": text, "content": {"application/json": {"schema": _reference(model)}}}


def _reference(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{model.__name__}"}
