"""Apple's PassKit web service: the routes a Wallet device calls at its pass's webServiceURL.

Unlike the vendor routes, these carry no API key: a device proves it holds a pass with
the pass's authentication token (`Authorization: ApplePass <token>`). So they call the
service core in-process (service/passkit.py) rather than the gRPC stubs, and only
translate: path, headers and body in; status, headers and body out.
"""

from __future__ import annotations

from datetime import UTC, datetime
from email.utils import format_datetime, parsedate_to_datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Query, Request, Response
from fastapi.responses import JSONResponse
from fastapi.security import APIKeyHeader
from pydantic import BaseModel, ConfigDict

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
from passpush.http.rpc import CallFailed
from passpush.http.schemas import Text
from passpush.service.passkit import PassKitCore

DEFAULT_PREFIX = "/passkit"
TAG = "Apple PassKit web service"


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
_MALFORMED = {"model": PassKitError, "description": "The request is malformed"}
_UNAUTHORIZED = {
    "model": PassKitError,
    "description": "No pass of that type and serial number has the ApplePass token given",
}


def _failure(error: DomainError) -> CallFailed:
    status = next((s for kind, s in _STATUS.items() if isinstance(error, kind)), 500)
    field = error.violations[0].field if isinstance(error, InvalidArgument) else None
    return CallFailed(status, error.reason, error.message, field)


_apple_pass = APIKeyHeader(
    name="Authorization",
    scheme_name="ApplePass",
    auto_error=False,
    description="`Authorization: ApplePass <authenticationToken>`, the pass's token",
)


# Dependencies are `async def`: FastAPI runs a plain `def` one on a thread pool, a hop
# there and back on every device request.
async def _authentication_token(
    header: Annotated[str | None, Depends(_apple_pass)],
) -> str | None:
    scheme, _, token = (header or "").partition(" ")
    if scheme.lower() != "applepass":
        return None
    return token.strip() or None


async def _core(request: Request) -> PassKitCore:
    core: PassKitCore = request.app.state.passkit
    return core


AuthenticationToken = Annotated[str | None, Depends(_authentication_token)]
Core = Annotated[PassKitCore, Depends(_core)]

router = APIRouter(tags=[TAG])


@router.post(
    "/v1/devices/{deviceLibraryIdentifier}/registrations/{passTypeIdentifier}/{serialNumber}",
    summary="Register a device to receive push notifications for a pass",
    status_code=201,
    response_class=Response,
    responses={
        200: {"description": "The device was registered for the pass already"},
        201: {"description": "Registered"},
        400: _MALFORMED,
        401: _UNAUTHORIZED,
    },
)
async def register_device(
    deviceLibraryIdentifier: str,
    passTypeIdentifier: str,
    serialNumber: str,
    body: Registration,
    token: AuthenticationToken,
    core: Core,
) -> Response:
    try:
        created = await core.register(
            passTypeIdentifier, serialNumber, deviceLibraryIdentifier, body.pushToken, token
        )
    except DomainError as error:
        raise _failure(error) from None
    return Response(status_code=201 if created else 200)


@router.get(
    "/v1/devices/{deviceLibraryIdentifier}/registrations/{passTypeIdentifier}",
    summary="Get the serial numbers of a device's passes that changed",
    response_model=SerialNumbers,
    responses={204: {"description": "No pass changed (or none is registered)"}},
)
async def updated_serial_numbers(
    deviceLibraryIdentifier: str,
    passTypeIdentifier: str,
    core: Core,
    passesUpdatedSince: Annotated[
        str | None, Query(description="The `lastUpdated` of the device's previous call")
    ] = None,
) -> Response:
    updated = await core.updated_serials(
        deviceLibraryIdentifier, passTypeIdentifier, passesUpdatedSince
    )
    if updated is None:
        return Response(status_code=204)
    return JSONResponse(
        SerialNumbers(
            serialNumbers=updated.serial_numbers, lastUpdated=updated.last_updated
        ).model_dump()
    )


_PASS = "/v1/passes/{passTypeIdentifier}/{serialNumber}"


@router.get(
    _PASS,
    summary="Get the latest version of a pass",
    description="HEAD is answered too: the same status and headers, without the body.",
    response_class=Response,
    responses={
        200: {
            "description": "The signed pass",
            "content": {MEDIA_TYPE: {"schema": {"type": "string", "format": "binary"}}},
        },
        304: {"description": "Not modified since If-Modified-Since"},
        401: _UNAUTHORIZED,
        404: {"model": PassKitError, "description": "The pass has no content"},
        409: {"model": PassKitError, "description": "Nothing can sign the pass"},
    },
)
async def latest_pass(
    passTypeIdentifier: str,
    serialNumber: str,
    token: AuthenticationToken,
    core: Core,
    if_modified_since: Annotated[str | None, Header()] = None,
) -> Response:
    try:
        latest = await core.latest_pass(
            passTypeIdentifier, serialNumber, token, _http_date(if_modified_since)
        )
    except DomainError as error:
        raise _failure(error) from None
    headers = {"Last-Modified": format_datetime(latest.last_modified, usegmt=True)}
    if latest.pkpass is None:
        return Response(status_code=304, headers=headers)
    return Response(latest.pkpass, media_type=MEDIA_TYPE, headers=headers)


# Devices ask with HEAD too (developer.apple.com/forums/thread/765873): the GET's answer,
# whose body the server leaves out, keeping its Content-Length.
router.add_api_route(
    _PASS, latest_pass, methods=["HEAD"], response_class=Response, include_in_schema=False
)


@router.delete(
    "/v1/devices/{deviceLibraryIdentifier}/registrations/{passTypeIdentifier}/{serialNumber}",
    summary="Unregister a device from a pass",
    response_class=Response,
    responses={200: {"description": "Unregistered (or was not registered)"}, 401: _UNAUTHORIZED},
)
async def unregister_device(
    deviceLibraryIdentifier: str,
    passTypeIdentifier: str,
    serialNumber: str,
    token: AuthenticationToken,
    core: Core,
) -> Response:
    try:
        await core.unregister(passTypeIdentifier, serialNumber, deviceLibraryIdentifier, token)
    except DomainError as error:
        raise _failure(error) from None
    return Response(status_code=200)


@router.post(
    "/v1/log",
    summary="Log messages from devices",
    response_class=Response,
    responses={200: {"description": "Logged"}, 400: _MALFORMED},
)
async def device_log(body: DeviceLogs, core: Core) -> Response:
    core.record_device_logs(body.logs)
    return Response(status_code=200)


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
