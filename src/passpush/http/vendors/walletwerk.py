"""WalletWerk campaigns: send now, schedule, list, read and cancel campaign notifications.

Routes as in WalletWerk's Notifications API reference (campaigns). Answers are
`{"success": true, "data": ...}`, errors `{"success": false, "error": {"code", "message"}}`;
over the campaign's cap the server's RESOURCE_EXHAUSTED becomes 429
NOTIFICATION_LIMIT_EXCEEDED. A campaigns:write / campaigns:read key is enough
(api/scopes.py accepts it for calls that target a campaign).
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any, Literal

from fastapi import APIRouter
from pydantic import BaseModel, Field

from passpush.http.failures import CallFailed
from passpush.http.text import Text
from passpush.http.vendors.credentials import BearerKey
from passpush.http.vendors.rpc import Metadata, call, iso, timestamp
from passpush.http.vendors.schemas import BODY_MAX, HEADER_MAX, StrictBody
from passpush.http.vendors.stubs import Service, Stubs
from passpush.v1 import notifications_pb2 as npb

PREFIX = "/campaigns"
LIST_PAGE_SIZE = 100


class ErrorDetail(BaseModel):
    code: str
    message: str


class Error(BaseModel):
    success: Literal[False]
    error: ErrorDetail


def error_body(failure: CallFailed) -> dict[str, Any]:
    return {"success": False, "error": {"code": failure.reason, "message": failure.message}}


_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": Error} for status in (400, 401, 403, 404, 409, 429)
}
router = APIRouter(prefix=PREFIX, tags=["WalletWerk campaigns"], responses=_ERRORS)


class NotificationBody(StrictBody):
    header: Text = Field(
        min_length=1, max_length=HEADER_MAX, description="Notification header/title."
    )
    body: Text = Field(min_length=1, max_length=BODY_MAX, description="Notification message body.")


class ScheduleBody(NotificationBody):
    scheduledFor: datetime = Field(
        description="ISO 8601 date-time to send at: in the future, at most 30 days away."
    )


class Status(StrEnum):
    pending = "pending"
    processing = "processing"
    sent = "sent"
    cancelled = "cancelled"
    failed = "failed"


STATE_OF_STATUS = {
    Status.pending: npb.SCHEDULED_NOTIFICATION_STATE_PENDING,
    Status.processing: npb.SCHEDULED_NOTIFICATION_STATE_PROCESSING,
    Status.sent: npb.SCHEDULED_NOTIFICATION_STATE_SENT,
    Status.cancelled: npb.SCHEDULED_NOTIFICATION_STATE_CANCELLED,
    Status.failed: npb.SCHEDULED_NOTIFICATION_STATE_FAILED,
}
STATUS_OF_STATE = {state: status for status, state in STATE_OF_STATUS.items()}


class SentNotification(BaseModel):
    ticketId: int
    campaignId: str
    header: str
    body: str
    status: Literal["sending"]
    createdAt: str | None


class ScheduledNotification(BaseModel):
    id: str
    campaignId: str
    header: str
    body: str
    status: Status
    scheduledFor: str | None
    ticketId: int | None
    failureReason: str | None
    createdAt: str | None
    updatedAt: str | None


class Sent(BaseModel):
    success: Literal[True]
    data: SentNotification


class Scheduled(BaseModel):
    success: Literal[True]
    data: ScheduledNotification


class ScheduledList(BaseModel):
    success: Literal[True]
    data: list[ScheduledNotification]


def _campaign(campaign_id: str) -> npb.Target:
    return npb.Target(campaign_id=campaign_id)


@router.post("/{campaignId}/notifications", response_model=Sent)
async def send(campaignId: Text, body: NotificationBody, service: Service, key: BearerKey) -> Sent:
    """Send a notification to every active recipient of a campaign (lifetime cap: 3)."""
    content = npb.Content(header=body.header, body=body.body)
    request = npb.SendRequest(target=_campaign(campaignId), content=content)
    ticket = await call(service.notifications.Send(request, metadata=key))
    return Sent(
        success=True,
        data=SentNotification(
            ticketId=ticket.id,
            campaignId=campaignId,
            header=body.header,
            body=body.body,
            status="sending",
            createdAt=iso(ticket.create_time),
        ),
    )


@router.post("/{campaignId}/notifications/schedule", status_code=201, response_model=Scheduled)
async def schedule(
    campaignId: Text, body: ScheduleBody, service: Service, key: BearerKey
) -> Scheduled:
    """Schedule a campaign notification (it counts against the cap until cancelled)."""
    request = npb.ScheduleRequest(
        target=_campaign(campaignId),
        content=npb.Content(header=body.header, body=body.body),
        send_time=timestamp(body.scheduledFor, "scheduledFor"),
    )
    scheduled = await call(service.notifications.Schedule(request, metadata=key))
    return Scheduled(success=True, data=_scheduled(scheduled))


@router.get("/{campaignId}/notifications/scheduled", response_model=ScheduledList)
async def list_scheduled(
    campaignId: Text, service: Service, key: BearerKey, status: Status | None = None
) -> ScheduledList:
    """The campaign's scheduled notifications, optionally only those in one status."""
    found: list[ScheduledNotification] = []
    token = ""
    while True:
        request = npb.ListScheduledRequest(
            target=_campaign(campaignId),
            state=STATE_OF_STATUS[status]
            if status
            else npb.SCHEDULED_NOTIFICATION_STATE_UNSPECIFIED,
            page_size=LIST_PAGE_SIZE,
            page_token=token,
        )
        page = await call(service.notifications.ListScheduled(request, metadata=key))
        found.extend(_scheduled(s) for s in page.scheduled_notifications)
        token = page.next_page_token
        if not token:
            return ScheduledList(success=True, data=found)


@router.get("/{campaignId}/notifications/{notificationId}", response_model=Scheduled)
async def get_scheduled(
    campaignId: Text, notificationId: Text, service: Service, key: BearerKey
) -> Scheduled:
    """One scheduled notification of the campaign."""
    scheduled = await _of_campaign(service, key, campaignId, notificationId)
    return Scheduled(success=True, data=_scheduled(scheduled))


@router.delete("/{campaignId}/notifications/{notificationId}", response_model=Scheduled)
async def cancel(
    campaignId: Text, notificationId: Text, service: Service, key: BearerKey
) -> Scheduled:
    """Cancel a scheduled notification; only a pending one can be cancelled (else 409)."""
    await _of_campaign(service, key, campaignId, notificationId)
    cancelled = await call(
        service.notifications.Cancel(npb.CancelRequest(id=notificationId), metadata=key)
    )
    return Scheduled(success=True, data=_scheduled(cancelled))


async def _of_campaign(
    service: Stubs, key: Metadata, campaign_id: str, notification_id: str
) -> npb.ScheduledNotification:
    """The schedule, if it belongs to this campaign: another's is not found under this path."""
    request = npb.GetScheduledRequest(id=notification_id)
    scheduled = await call(service.notifications.GetScheduled(request, metadata=key))
    if scheduled.target.campaign_id != campaign_id:
        raise CallFailed(
            404,
            "SCHEDULED_NOTIFICATION_NOT_FOUND",
            f"campaign {campaign_id} has no notification {notification_id}",
        )
    return scheduled


def _scheduled(s: npb.ScheduledNotification) -> ScheduledNotification:
    return ScheduledNotification(
        id=s.id,
        campaignId=s.target.campaign_id,
        header=s.content.header,
        body=s.content.body,
        status=STATUS_OF_STATE.get(s.state, Status.pending),
        scheduledFor=iso(s.send_time),
        ticketId=s.ticket_id or None,
        failureReason=s.failure_reason or None,
        createdAt=iso(s.create_time),
        updatedAt=iso(s.update_time),
    )
