"""NotificationService: translate, delegate to the core, translate back."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, NoReturn

import grpc

from passpush.api.convert import content_from_proto, target_from_proto, ticket_to_proto
from passpush.api.interceptors import current_project
from passpush.domain.errors import Unimplemented
from passpush.service.notifications import NotificationCore
from passpush.v1 import notifications_pb2 as pb
from passpush.v1 import notifications_pb2_grpc as pb_grpc

Context = grpc.aio.ServicerContext[Any, Any]


class NotificationServicer(pb_grpc.NotificationServiceServicer):
    def __init__(self, core: NotificationCore) -> None:
        self._core = core

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
        _not_yet("Schedule")

    async def Cancel(self, request: pb.CancelRequest, context: Context) -> pb.ScheduledNotification:
        _not_yet("Cancel")

    async def GetScheduled(
        self, request: pb.GetScheduledRequest, context: Context
    ) -> pb.ScheduledNotification:
        _not_yet("GetScheduled")

    async def ListScheduled(
        self, request: pb.ListScheduledRequest, context: Context
    ) -> pb.ListScheduledResponse:
        _not_yet("ListScheduled")

    async def WatchTicket(  # type: ignore[override]
        self, request: pb.WatchTicketRequest, context: Context
    ) -> AsyncIterator[pb.Ticket]:
        _not_yet("WatchTicket (poll GetTicket meanwhile)")
        yield pb.Ticket()  # pragma: no cover - makes this an async generator

    async def StreamDeliveryEvents(  # type: ignore[override]
        self, request: pb.StreamDeliveryEventsRequest, context: Context
    ) -> AsyncIterator[pb.DeliveryEvent]:
        _not_yet("StreamDeliveryEvents")
        yield pb.DeliveryEvent()  # pragma: no cover - makes this an async generator


def _not_yet(method: str) -> NoReturn:
    raise Unimplemented(f"{method} is part of the contract but not available in this release")
