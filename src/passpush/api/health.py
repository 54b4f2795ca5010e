"""The standard health service, with List."""

from __future__ import annotations

from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2


class HealthServicer(health.aio.HealthServicer):  # type: ignore[misc]
    """grpcio-health-checking's servicer, whose asyncio version answers List with
    UNIMPLEMENTED (and logs a traceback): List answers every registered service's status,
    as health.proto says."""

    async def List(
        self, request: health_pb2.HealthListRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> health_pb2.HealthListResponse:
        # A snapshot: the services are the server's few, set at start (no paging needed).
        return health_pb2.HealthListResponse(
            statuses={
                name: health_pb2.HealthCheckResponse(status=status)
                for name, status in self._server_status.items()
            }
        )
