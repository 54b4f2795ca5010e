"""Server reflection, v1 and v1alpha, with the protos' comments: grpcurl (v1alpha) and
buf curl (v1) describe and call the server with no proto files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from passpush.app import Application

from processes import grpcurl, run

BUF = Path("node_modules/.bin/buf").absolute()

# Reflection answers from descriptors and never reads the database: SQLite alone.
pytestmark = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


async def test_grpcurl_describe_shows_the_protos_comments(server: Application) -> None:
    address = f"127.0.0.1:{server.port}"

    ticket = await grpcurl(address, "describe", "passpush.v1.Ticket")
    send = await grpcurl(address, "describe", "passpush.v1.NotificationService.Send")
    # What an error's details need to be printed: from the server's own descriptors.
    error_info = await grpcurl(address, "describe", "google.rpc.ErrorInfo")

    assert ticket.returncode == 0, ticket.output
    assert "// Ticket tracks one send or delete operation" in ticket.stdout
    assert "message Ticket {" in ticket.stdout
    assert send.returncode == 0, send.output
    assert "rpc Send ( .passpush.v1.SendRequest ) returns ( .passpush.v1.Ticket )" in send.stdout
    assert "//" in send.stdout  # the method's own comment
    assert error_info.returncode == 0, error_info.output


async def test_buf_curl_lists_and_calls_through_reflection_v1(server: Application) -> None:
    url = f"http://127.0.0.1:{server.port}"
    v1 = ("--protocol", "grpc", "--reflect-protocol", "grpc-v1")

    listed = await run(BUF, "curl", *v1, "--list-services", url, seconds=30)
    health = await run(
        BUF, "curl", *v1, "-d", "{}", f"{url}/grpc.health.v1.Health/Check", seconds=30
    )

    assert listed.returncode == 0, listed.output
    assert set(listed.stdout.split()) == {
        "passpush.v1.AdminService",
        "passpush.v1.NotificationService",
        "passpush.v1.PassService",
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
    }
    assert health.returncode == 0, health.output
    assert json.loads(health.stdout) == {"status": "SERVING"}


async def test_both_reflection_services_describe_themselves(server: Application) -> None:
    address = f"127.0.0.1:{server.port}"

    v1 = await grpcurl(address, "describe", "grpc.reflection.v1.ServerReflection")
    v1alpha = await grpcurl(address, "describe", "grpc.reflection.v1alpha.ServerReflection")

    for answer, package in ((v1, "v1"), (v1alpha, "v1alpha")):
        assert answer.returncode == 0, answer.output
        request = f".grpc.reflection.{package}.ServerReflectionRequest"
        assert f"rpc ServerReflectionInfo ( stream {request} )" in answer.stdout
