"""A no-op grpc.aio NotificationService: Send answers an empty Ticket at once.

The ceiling for unary Send throughput on this machine with this client:

    python -m benchmarks.noop_server    # prints "LISTENING <port>", serves until SIGTERM
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from typing import Any

import grpc

from passpush.v1 import notifications_pb2 as pb
from passpush.v1 import notifications_pb2_grpc as pb_grpc


class NoopNotifications(pb_grpc.NotificationServiceServicer):
    async def Send(self, request: pb.SendRequest, context: Any) -> pb.Ticket:
        return pb.Ticket()


async def main() -> None:
    server = grpc.aio.server()
    # Only Send is served; the other methods answer UNIMPLEMENTED, as the base class does.
    servicer = NoopNotifications()  # type: ignore[abstract]
    pb_grpc.add_NotificationServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(f"LISTENING {port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    await server.stop(1)


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main())
