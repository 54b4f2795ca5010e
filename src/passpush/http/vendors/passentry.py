"""PassEntry: a notification on one pass, and wallet messaging batches of an entity.

Routes as in PassEntry's API reference (pass notification, entity wallet messaging),
answering JSON:API documents. A batch sent now is a ticket (its id is the ticket's
number); a batch with `scheduledAt` is a scheduled notification (its id is the
schedule's).
"""

from __future__ import annotations

import asyncio
import contextlib
from datetime import datetime
from typing import Any, Literal

import grpc
from fastapi import APIRouter, Request
from google.protobuf.timestamp_pb2 import Timestamp
from pydantic import BaseModel, Field

from passpush.domain.validation import ENTITY_GROUP_TAGS_MAX
from passpush.http.failures import CallFailed
from passpush.http.text import Text
from passpush.http.vendors.credentials import BearerKey
from passpush.http.vendors.rpc import Metadata, call, iso, timestamp
from passpush.http.vendors.schemas import BODY_MAX, StrictBody
from passpush.http.vendors.stubs import Service, Stubs
from passpush.v1 import notifications_pb2 as npb
from passpush.v1 import passes_pb2 as ppb

PREFIX = "/api/v1"

# A pass notification answers with its delivery status, as PassEntry's does: wait this
# long for the ticket to finish, then answer with whatever state it has reached.
DELIVERY_WAIT = 5.0


class ErrorSource(BaseModel):
    pointer: str


class ErrorObject(BaseModel):
    status: str
    code: str
    title: str
    detail: str
    source: ErrorSource | None = None


class Error(BaseModel):
    errors: list[ErrorObject]


def error_body(failure: CallFailed) -> dict[str, Any]:
    error: dict[str, Any] = {
        "status": str(failure.status),
        "code": failure.reason,
        "title": failure.reason.replace("_", " ").capitalize(),
        "detail": failure.message,
    }
    if failure.field:
        error["source"] = {"pointer": "/" + failure.field.replace(".", "/")}
    return {"errors": [error]}


_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": Error} for status in (400, 401, 403, 404, 409, 429)
}
router = APIRouter(prefix=PREFIX, tags=["PassEntry"], responses=_ERRORS)


# -- POST /api/v1/passes/{id}/notification ---------------------------------------------------


class NotificationText(StrictBody):
    message: Text = Field(min_length=1, max_length=BODY_MAX)


class PassNotificationBody(StrictBody):
    notification: NotificationText


class PassAttributes(BaseModel):
    downloadUrl: str | None
    passType: str
    deviceType: Literal["apple", "android"]
    createdAt: str | None
    status: str
    extId: str | None
    groupTag: str | None
    groupTags: list[str]
    passTemplateUuid: str
    latestMessage: str | None


class PassResource(BaseModel):
    id: str
    type: Literal["pass"]
    attributes: PassAttributes


class NotificationStatus(BaseModel):
    status: Literal["pending", "delivered", "partiallyDelivered", "failed", "skipped"]
    message: str


class PassMeta(BaseModel):
    notifications: NotificationStatus


class PassDocument(BaseModel):
    data: PassResource
    meta: PassMeta


PASS_STATUS = {
    ppb.PASS_STATUS_ACTIVE: "issued",
    ppb.PASS_STATUS_DRAFT: "draft",
    ppb.PASS_STATUS_REVOKED: "deactivated",
    ppb.PASS_STATUS_EXPIRED: "expired",
    ppb.PASS_STATUS_REMOVED: "removed",
}


@router.post("/passes/{id}/notification", response_model=PassDocument)
async def notify_pass(
    id: Text, body: PassNotificationBody, service: Service, key: BearerKey
) -> PassDocument:
    """Send a notification to one pass, by its UUID or its external id."""
    # Read the pass first: a key that cannot (no passes:read) is refused before anything is sent.
    the_pass = await call(service.passes.GetPass(ppb.GetPassRequest(id=id), metadata=key))
    request = npb.SendRequest(
        target=npb.Target(pass_id=the_pass.id), content=npb.Content(body=body.notification.message)
    )
    ticket = await call(service.notifications.Send(request, metadata=key))
    ticket = await _finished(service, key, ticket)
    the_pass = await call(service.passes.GetPass(ppb.GetPassRequest(id=the_pass.id), metadata=key))
    return PassDocument(
        data=PassResource(id=the_pass.id, type="pass", attributes=_pass_attributes(the_pass)),
        meta=PassMeta(notifications=_delivery_status(ticket)),
    )


async def _finished(service: Stubs, key: Metadata, ticket: npb.Ticket) -> npb.Ticket:
    """The ticket once it is done, or as it stands after DELIVERY_WAIT."""
    stream = service.notifications.WatchTicket(npb.WatchTicketRequest(id=ticket.id), metadata=key)
    latest = ticket
    with contextlib.suppress(TimeoutError, grpc.aio.AioRpcError):
        async with asyncio.timeout(DELIVERY_WAIT):
            async for latest in stream:  # noqa: B007 - the last one is the answer
                pass
    stream.cancel()
    return latest


def _delivery_status(ticket: npb.Ticket) -> NotificationStatus:
    counts = ticket.counts
    if counts.pending or ticket.state in (npb.TICKET_STATE_PENDING, npb.TICKET_STATE_RUNNING):
        return NotificationStatus(status="pending", message="Being delivered")
    if counts.delivered and counts.failed:
        return NotificationStatus(status="partiallyDelivered", message="Delivered to some devices")
    if counts.delivered:
        return NotificationStatus(status="delivered", message="Delivered successfully")
    if counts.failed:
        return NotificationStatus(status="failed", message="Delivery failed")
    return NotificationStatus(status="skipped", message="The pass is not active or has no device")


def _pass_attributes(p: ppb.Pass) -> PassAttributes:
    return PassAttributes(
        downloadUrl=None,
        passType="generic",
        deviceType="android" if p.google_object_id else "apple",
        createdAt=iso(p.create_time),
        status=PASS_STATUS.get(p.status, "issued"),
        extId=p.external_id or None,
        groupTag=p.group_tags[0] if p.group_tags else None,
        groupTags=list(p.group_tags),
        passTemplateUuid=p.template_id,
        latestMessage=p.notification.body if p.HasField("notification") else None,
    )


# -- wallet messaging batches ------------------------------------------------------------------


class Segment(StrictBody):
    groupTag: Text


class Batch(StrictBody):
    message: Text = Field(min_length=1, max_length=BODY_MAX)
    segments: list[Segment] = Field(default_factory=list, max_length=ENTITY_GROUP_TAGS_MAX)
    scheduledAt: datetime | None = None


class BatchBody(StrictBody):
    batch: Batch


BatchStatus = Literal[
    "validating", "scheduled", "sending", "successful", "completedWithErrors", "failed", "cancelled"
]


class BatchAttributes(BaseModel):
    name: str
    status: BatchStatus
    tag: str | None
    content: str
    scheduledAt: str | None


class BatchResource(BaseModel):
    id: str
    type: Literal["walletMessaging"]
    attributes: BatchAttributes


class BatchLinks(BaseModel):
    self: str


class BatchDocument(BaseModel):
    data: BatchResource
    links: BatchLinks


TICKET_BATCH_STATUS: dict[int, BatchStatus] = {
    npb.TICKET_STATE_PENDING: "sending",
    npb.TICKET_STATE_RUNNING: "sending",
    npb.TICKET_STATE_SUCCEEDED: "successful",
    npb.TICKET_STATE_PARTIALLY_FAILED: "completedWithErrors",
    npb.TICKET_STATE_FAILED: "failed",
    npb.TICKET_STATE_CANCELLED: "cancelled",
}
SCHEDULE_BATCH_STATUS: dict[int, BatchStatus] = {
    npb.SCHEDULED_NOTIFICATION_STATE_PENDING: "scheduled",
    npb.SCHEDULED_NOTIFICATION_STATE_PROCESSING: "sending",
    npb.SCHEDULED_NOTIFICATION_STATE_CANCELLED: "cancelled",
    npb.SCHEDULED_NOTIFICATION_STATE_FAILED: "failed",
}


@router.post("/entities/{id}/messaging/wallet", status_code=202, response_model=BatchDocument)
async def message_entity(
    id: Text, body: BatchBody, request: Request, service: Service, key: BearerKey
) -> BatchDocument:
    """Send a wallet message to an entity's passes (optionally those with a group tag), now or
    at `scheduledAt`. The batch answers `validating`; GET its `links.self` to follow it."""
    batch = body.batch
    target = npb.Target(
        entity=npb.EntityRef(entity_id=id, group_tags=[s.groupTag for s in batch.segments])
    )
    content = npb.Content(body=batch.message)
    send_time = timestamp(batch.scheduledAt, "batch.scheduledAt")
    if send_time is None:
        send = npb.SendRequest(target=target, content=content)
        ticket = await call(service.notifications.Send(send, metadata=key))
        batch_id, created, scheduled_at = str(ticket.id), ticket.create_time, None
    else:
        schedule = npb.ScheduleRequest(target=target, content=content, send_time=send_time)
        scheduled = await call(service.notifications.Schedule(schedule, metadata=key))
        batch_id, created, scheduled_at = scheduled.id, scheduled.create_time, iso(send_time)
    return _batch(request, batch_id, "validating", batch.message, created, scheduled_at)


@router.get("/batches/{id}", response_model=BatchDocument)
async def get_batch(id: Text, request: Request, service: Service, key: BearerKey) -> BatchDocument:
    """A wallet messaging batch and how far it has gone."""
    # A batch sent at once is its ticket (an int64: at most 19 ASCII digits).
    if id.isascii() and id.isdigit() and len(id) <= 19 and 0 < int(id) < 2**63:
        with contextlib.suppress(TicketNotFound):
            ticket = await _ticket(service, key, int(id))
            _check_is_batch(id, ticket.target)
            status = TICKET_BATCH_STATUS.get(ticket.state, "sending")
            return _batch(request, id, status, ticket.content.body, ticket.create_time, None)
    scheduled = await call(
        service.notifications.GetScheduled(npb.GetScheduledRequest(id=id), metadata=key)
    )
    _check_is_batch(id, scheduled.target)
    status = SCHEDULE_BATCH_STATUS.get(scheduled.state, "sending")
    if scheduled.state == npb.SCHEDULED_NOTIFICATION_STATE_SENT:
        ticket = await call(
            service.notifications.GetTicket(
                npb.GetTicketRequest(id=scheduled.ticket_id), metadata=key
            )
        )
        status = TICKET_BATCH_STATUS.get(ticket.state, "sending")
    content = scheduled.content.body
    return _batch(request, id, status, content, scheduled.create_time, iso(scheduled.send_time))


class TicketNotFound(Exception):
    pass


def _check_is_batch(batch_id: str, target: npb.Target) -> None:
    """Only entity messages are batches; another send of the project is no batch."""
    if target.WhichOneof("target") != "entity":
        raise CallFailed(404, "BATCH_NOT_FOUND", f"batch {batch_id} does not exist")


async def _ticket(service: Stubs, key: Metadata, ticket_id: int) -> npb.Ticket:
    try:
        return await call(
            service.notifications.GetTicket(npb.GetTicketRequest(id=ticket_id), metadata=key)
        )
    except CallFailed as failure:
        if failure.status == 404:
            raise TicketNotFound from None  # then the id may be a schedule's
        raise


def _batch(
    request: Request,
    batch_id: str,
    status: BatchStatus,
    content: str,
    created: Timestamp,
    scheduled_at: str | None,
) -> BatchDocument:
    created_at = iso(created) or ""
    return BatchDocument(
        data=BatchResource(
            id=batch_id,
            type="walletMessaging",
            attributes=BatchAttributes(
                name=f"Wallet message {created_at[:10]}".strip(),
                status=status,
                tag=None,
                content=content,
                scheduledAt=scheduled_at,
            ),
        ),
        links=BatchLinks(self=str(request.url_for("get_batch", id=batch_id))),
    )
