"""Airship Wallet: send and delete pass notifications, and read tickets.

Routes as in Airship Wallet's Push Notifications reference: POST and DELETE
`.../notify` on a pass, a pass by template and external id, a segment, a tag and a
template (by id or `id/{templateExternalId}`); each answers `200 {"ticketId": n}`.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field

from passpush.http.failures import CallFailed
from passpush.http.text import Text
from passpush.http.vendors.credentials import BearerOrBasicKey
from passpush.http.vendors.rpc import call, iso, timestamp
from passpush.http.vendors.schemas import BODY_MAX, HEADER_MAX, StrictBody
from passpush.http.vendors.stubs import Service
from passpush.v1 import notifications_pb2 as npb

PREFIX = "/v1"


class Notification(StrictBody):
    label: Text | None = Field(
        None, max_length=HEADER_MAX, description="Optional header for the message."
    )
    value: Text = Field(
        min_length=1, max_length=BODY_MAX, description="The body of the notification message."
    )
    startTime: datetime | None = Field(None, description="GOOGLE ONLY: when it appears.")
    endTime: datetime | None = Field(None, description="GOOGLE ONLY: when it disappears.")


TicketStatus = Literal["PENDING", "IN_PROGRESS", "COMPLETED", "FAILED", "CANCELLED"]


class TicketId(BaseModel):
    ticketId: int = Field(description="An identifier for this operation.")


class Ticket(BaseModel):
    ID: int
    createdAt: str | None
    status: TicketStatus
    children: list[Any]


class ErrorDetails(BaseModel):
    reason: str
    field: str | None


class Error(BaseModel):
    ok: Literal[False]
    error: str
    error_code: int
    details: ErrorDetails


def error_body(failure: CallFailed) -> dict[str, Any]:
    return {
        "ok": False,
        "error": failure.message,
        "error_code": failure.status * 100,  # Airship's five-digit codes: 40000, 40400, ...
        "details": {"reason": failure.reason, "field": failure.field},
    }


_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": Error} for status in (400, 401, 403, 404, 409, 429)
}
router = APIRouter(prefix=PREFIX, tags=["Airship Wallet"], responses=_ERRORS)

TICKET_STATUS: dict[int, TicketStatus] = {
    npb.TICKET_STATE_PENDING: "PENDING",
    npb.TICKET_STATE_RUNNING: "IN_PROGRESS",
    npb.TICKET_STATE_SUCCEEDED: "COMPLETED",
    npb.TICKET_STATE_PARTIALLY_FAILED: "COMPLETED",  # done: the failures are per device
    npb.TICKET_STATE_FAILED: "FAILED",
    npb.TICKET_STATE_CANCELLED: "CANCELLED",
}


async def _send(
    service: Service, key: BearerOrBasicKey, target: npb.Target, body: Notification
) -> TicketId:
    content = npb.Content(
        header=body.label or "",
        body=body.value,
        display_start=timestamp(body.startTime, "startTime"),
        display_end=timestamp(body.endTime, "endTime"),
    )
    request = npb.SendRequest(target=target, content=content)
    ticket = await call(service.notifications.Send(request, metadata=key))
    return TicketId(ticketId=ticket.id)


async def _delete(service: Service, key: BearerOrBasicKey, target: npb.Target) -> TicketId:
    ticket = await call(
        service.notifications.Delete(npb.DeleteRequest(target=target), metadata=key)
    )
    return TicketId(ticketId=ticket.id)


def _pass(pass_id: str) -> npb.Target:
    return npb.Target(pass_id=pass_id)


def _external_pass(template_id: str, external_id: str) -> npb.Target:
    return npb.Target(
        external_pass=npb.ExternalPass(template_id=template_id, pass_external_id=external_id)
    )


def _segment(project_id: str, segment_id: str, template_id: str | None) -> npb.Target:
    ref = npb.SegmentRef(
        project_id=project_id, segment_id=segment_id, template_id=template_id or ""
    )
    return npb.Target(segment=ref)


def _tag(tag: str, template_id: str) -> npb.Target:
    return npb.Target(tag=npb.TagRef(tag=tag, template_id=template_id))


def _template(template_id: str) -> npb.Target:
    return npb.Target(template=npb.TemplateRef(template_id=template_id))


def _template_external(external_id: str) -> npb.Target:
    return npb.Target(template=npb.TemplateRef(template_external_id=external_id))


SENT = "Notification is being sent; `ticketId` looks up the operation."
DELETED = "Notification is being deleted; `ticketId` looks up the operation."
# An empty templateId is refused, not read as "every template": a legacy caller's empty
# variable must not widen a send to all the passes carrying the tag or in the segment.
TemplateQuery = Annotated[Text, Query(min_length=1, description="The template of the passes.")]
OptionalTemplateQuery = Annotated[
    Text | None,
    Query(min_length=1, description="The template of the passes; leave it out for every one."),
]


@router.post(
    "/pass/{passId}/notify", response_model=TicketId, responses={200: {"description": SENT}}
)
async def send_to_pass(
    passId: Text, body: Notification, service: Service, key: BearerOrBasicKey
) -> TicketId:
    """Send a notification to a pass."""
    return await _send(service, key, _pass(passId), body)


@router.delete(
    "/pass/{passId}/notify", response_model=TicketId, responses={200: {"description": DELETED}}
)
async def delete_from_pass(passId: Text, service: Service, key: BearerOrBasicKey) -> TicketId:
    """Remove the notification from a pass."""
    return await _delete(service, key, _pass(passId))


@router.post("/pass/template/{templateId}/id/{passExternalId}/notify", response_model=TicketId)
async def send_to_external_pass(
    templateId: Text,
    passExternalId: Text,
    body: Notification,
    service: Service,
    key: BearerOrBasicKey,
) -> TicketId:
    """Send a notification to a pass named by its template and external id."""
    return await _send(service, key, _external_pass(templateId, passExternalId), body)


@router.delete("/pass/template/{templateId}/id/{passExternalId}/notify", response_model=TicketId)
async def delete_from_external_pass(
    templateId: Text, passExternalId: Text, service: Service, key: BearerOrBasicKey
) -> TicketId:
    """Remove the notification from a pass named by its template and external id."""
    return await _delete(service, key, _external_pass(templateId, passExternalId))


@router.post("/segments/{projectId}/{segmentId}/notify", response_model=TicketId)
async def send_to_segment(
    projectId: Text,
    segmentId: Text,
    templateId: TemplateQuery,
    body: Notification,
    service: Service,
    key: BearerOrBasicKey,
) -> TicketId:
    """Send a notification to the passes of a segment."""
    return await _send(service, key, _segment(projectId, segmentId, templateId), body)


@router.delete("/segments/{projectId}/{segmentId}/notify", response_model=TicketId)
async def delete_from_segment(
    projectId: Text,
    segmentId: Text,
    service: Service,
    key: BearerOrBasicKey,
    templateId: OptionalTemplateQuery = None,
) -> TicketId:
    """Remove the notification from the passes of a segment."""
    return await _delete(service, key, _segment(projectId, segmentId, templateId))


@router.post("/tag/{tag}/notify", response_model=TicketId)
async def send_to_tag(
    tag: Text,
    templateId: TemplateQuery,
    body: Notification,
    service: Service,
    key: BearerOrBasicKey,
) -> TicketId:
    """Send a notification to the passes carrying a tag."""
    return await _send(service, key, _tag(tag, templateId), body)


@router.delete("/tag/{tag}/notify", response_model=TicketId)
async def delete_from_tag(
    tag: Text, templateId: TemplateQuery, service: Service, key: BearerOrBasicKey
) -> TicketId:
    """Remove the notification from the passes carrying a tag."""
    return await _delete(service, key, _tag(tag, templateId))


@router.post("/template/{templateId}/notify", response_model=TicketId)
async def send_to_template(
    templateId: Text, body: Notification, service: Service, key: BearerOrBasicKey
) -> TicketId:
    """Send a notification to every pass of a template."""
    return await _send(service, key, _template(templateId), body)


@router.delete("/template/{templateId}/notify", response_model=TicketId)
async def delete_from_template(
    templateId: Text, service: Service, key: BearerOrBasicKey
) -> TicketId:
    """Remove the notification from every pass of a template."""
    return await _delete(service, key, _template(templateId))


@router.post("/template/id/{templateExternalId}/notify", response_model=TicketId)
async def send_to_external_template(
    templateExternalId: Text, body: Notification, service: Service, key: BearerOrBasicKey
) -> TicketId:
    """Send a notification to every pass of a template named by its external id."""
    return await _send(service, key, _template_external(templateExternalId), body)


@router.delete("/template/id/{templateExternalId}/notify", response_model=TicketId)
async def delete_from_external_template(
    templateExternalId: Text, service: Service, key: BearerOrBasicKey
) -> TicketId:
    """Remove the notification from every pass of a template named by its external id."""
    return await _delete(service, key, _template_external(templateExternalId))


@router.get("/ticket/{ticketId}", response_model=Ticket)
async def get_ticket(ticketId: int, service: Service, key: BearerOrBasicKey) -> Ticket:
    """The state of a send or delete operation; `status` is `COMPLETED` once it is done."""
    if not 0 < ticketId < 2**63:
        raise CallFailed(404, "TICKET_NOT_FOUND", f"ticket {ticketId} does not exist")
    ticket = await call(
        service.notifications.GetTicket(npb.GetTicketRequest(id=ticketId), metadata=key)
    )
    return Ticket(
        ID=ticket.id,
        createdAt=iso(ticket.create_time),
        status=TICKET_STATUS.get(ticket.state, "PENDING"),
        children=[],
    )
