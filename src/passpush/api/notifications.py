"""NotificationService: translate, delegate to the core, translate back."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc

from passpush.api.convert import (
    content_from_proto,
    datetime_of,
    event_to_proto,
    outcome_from_proto,
    schedule_state_from_proto,
    scheduled_to_proto,
    target_from_proto,
    ticket_to_proto,
)
from passpush.api.interceptors import current_project, current_scopes
from passpush.domain.auth import Scope
from passpush.domain.errors import InvalidArgument, PermissionDenied
from passpush.domain.model import CampaignTarget
from passpush.metrics import SUBSCRIBERS
from passpush.service.notifications import NotificationCore
from passpush.service.schedules import ScheduleCore
from passpush.service.status import EventStreams, TicketWatch
from passpush.v1 import notifications_pb2 as pb
from passpush.v1 import notifications_pb2_grpc as pb_grpc

Context = grpc.aio.ServicerContext[Any, Any]


class NotificationServicer(pb_grpc.NotificationServiceServicer):
    def __init__(
        self,
        core: NotificationCore,
        schedules: ScheduleCore,
        watch: TicketWatch,
        events: EventStreams,
    ) -> None:
        self._core = core
        self._schedules = schedules
        self._watch = watch
        self._events = events

    async def Send(self, request: pb.SendRequest, context: Context) -> pb.Ticket:
        ticket = await self._core.send(
            current_project(),
            target_from_proto(request.target, request.HasField("target")),
            content_from_proto(request.content, request.HasField("content")),
            request.request_id,
        )
        return ticket_to_proto(ticket)

    async def Delete(self, request: pb.DeleteRequest, context: Context) -> pb.Ticket:
        ticket = await self._core.delete(
            current_project(),
            target_from_proto(request.target, request.HasField("target")),
            request.request_id,
        )
        return ticket_to_proto(ticket)

    async def GetTicket(self, request: pb.GetTicketRequest, context: Context) -> pb.Ticket:
        ticket = await self._core.get_ticket(current_project(), request.id)
        return ticket_to_proto(ticket)

    async def Schedule(
        self, request: pb.ScheduleRequest, context: Context
    ) -> pb.ScheduledNotification:
        scheduled = await self._schedules.schedule(
            current_project(),
            target_from_proto(request.target, request.HasField("target")),
            content_from_proto(request.content, request.HasField("content")),
            datetime_of(request, "send_time"),
            request.request_id,
        )
        return scheduled_to_proto(scheduled)

    async def Cancel(self, request: pb.CancelRequest, context: Context) -> pb.ScheduledNotification:
        await self._check_campaign_key(request.id, Scope.NOTIFICATIONS_WRITE)
        return scheduled_to_proto(await self._schedules.cancel(current_project(), request.id))

    async def GetScheduled(
        self, request: pb.GetScheduledRequest, context: Context
    ) -> pb.ScheduledNotification:
        await self._check_campaign_key(request.id, Scope.NOTIFICATIONS_READ)
        return scheduled_to_proto(await self._schedules.get(current_project(), request.id))

    async def _check_campaign_key(self, schedule_id: str, scope: Scope) -> None:
        """A key let in by a campaigns scope alone (api/scopes.py) reaches campaigns' schedules
        only: the interceptor cannot tell from an id whose schedule it is."""
        if scope in current_scopes():
            return
        scheduled = await self._schedules.get(current_project(), schedule_id)
        if not isinstance(scheduled.target, CampaignTarget):
            raise PermissionDenied(
                f"this API key lacks the scope {scope.value!r}",
                reason="MISSING_SCOPE",
                scope=scope.value,
            )

    async def ListScheduled(
        self, request: pb.ListScheduledRequest, context: Context
    ) -> pb.ListScheduledResponse:
        state = schedule_state_from_proto(request.state)
        if state is None and request.state != pb.SCHEDULED_NOTIFICATION_STATE_UNSPECIFIED:
            raise InvalidArgument.field("state", "is not a state this server knows")
        page = await self._schedules.list(
            current_project(),
            state,
            target_from_proto(request.target, request.HasField("target")),
            request.page_size,
            request.page_token,
        )
        return pb.ListScheduledResponse(
            scheduled_notifications=[scheduled_to_proto(s) for s in page.items],
            next_page_token=page.next_page_token,
        )

    async def WatchTicket(  # type: ignore[override]
        self, request: pb.WatchTicketRequest, context: Context
    ) -> AsyncIterator[pb.Ticket]:
        with SUBSCRIBERS.labels("watch_ticket").track_inprogress():
            async for ticket in self._watch.watch(current_project(), request.id):
                yield ticket_to_proto(ticket)

    async def StreamDeliveryEvents(  # type: ignore[override]
        self, request: pb.StreamDeliveryEventsRequest, context: Context
    ) -> AsyncIterator[pb.DeliveryEvent]:
        outcomes = [outcome_from_proto(value) for value in request.outcomes]
        if None in outcomes:
            raise InvalidArgument.field(
                "outcomes", "must be DELIVERED, FAILED, SKIPPED or RETRYING"
            )
        events = self._events.stream(
            current_project(),
            ticket_id=request.ticket_id,
            after_sequence=request.after_sequence,
            target=target_from_proto(request.target, request.HasField("target")),
            outcomes=[o for o in outcomes if o is not None],
        )
        with SUBSCRIBERS.labels("delivery_events").track_inprogress():
            async for event in events:
                yield event_to_proto(event)
