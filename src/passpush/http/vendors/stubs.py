"""The gRPC stubs every route calls, over one channel to the local server."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

import grpc
from fastapi import Depends, Request

from passpush.v1 import notifications_pb2_grpc, passes_pb2_grpc


@dataclass(frozen=True)
class Stubs:
    notifications: notifications_pb2_grpc.NotificationServiceAsyncStub
    passes: passes_pb2_grpc.PassServiceAsyncStub

    @classmethod
    def over(cls, channel: grpc.aio.Channel) -> Stubs:
        # Over an aio channel the generated stubs are the async ones (their overloaded __new__).
        return cls(
            notifications_pb2_grpc.NotificationServiceStub(channel),
            passes_pb2_grpc.PassServiceStub(channel),
        )


def _stubs(request: Request) -> Stubs:
    stubs: Stubs = request.app.state.stubs
    return stubs


Service = Annotated[Stubs, Depends(_stubs)]
