"""Health: the standard service's Check and List, and the HTTP server's /healthz and
/readyz, follow whether the database can be reached and written."""

from __future__ import annotations

from grpc_health.v1 import health_pb2, health_pb2_grpc

from passpush.api.server import SERVICE_NAMES, PasspushServer

from support import channel_with_key

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


async def test_list_answers_every_service_and_its_status(server: PasspushServer) -> None:
    async with channel_with_key(server.port, None) as channel:
        answer = await health_pb2_grpc.HealthStub(channel).List(health_pb2.HealthListRequest())

    statuses = {name: response.status for name, response in answer.statuses.items()}
    assert statuses == {name: SERVING for name in ("", *SERVICE_NAMES)}
