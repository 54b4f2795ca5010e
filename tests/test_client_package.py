"""The passpush-client distribution, installed alone into a fresh virtualenv, calls a server.

The slow test of the suite (a venv and an install): it proves that the stubs and the client's
own declared dependencies suffice, at the oldest versions those declarations allow. uv, which
`make setup` puts beside this Python, installs it in 1.4 s where pip took 6.2 s (5 s of CPU
more, in a suite bound by its CPU; 2026-12-03).
"""

from __future__ import annotations

import os
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from passpush.app import Application
from passpush.v1 import passes_pb2_grpc

from processes import run
from support import World

CLIENT_DIR = Path(__file__).resolve().parents[1] / "clients" / "python"
UV = Path(sys.executable).parent / "uv"

# Run by the fresh venv's python in isolated mode (-I): nothing of this checkout on its path.
CLIENT_SCRIPT = """
import sys

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from passpush.v1 import notifications_pb2, passes_pb2, passes_pb2_grpc
from passpush.v1 import notifications_pb2_grpc

port, key = sys.argv[1:]
metadata = [("authorization", f"Bearer {key}")]
with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
    passes = passes_pb2_grpc.PassServiceStub(channel)
    listed = passes.ListTemplates(
        passes_pb2.ListTemplatesRequest(project_id="acme"), metadata=metadata
    )
    print("templates:", *[template.id for template in listed.templates])
    notifications = notifications_pb2_grpc.NotificationServiceStub(channel)
    try:
        notifications.GetTicket(notifications_pb2.GetTicketRequest(id=424242), metadata=metadata)
    except grpc.RpcError as error:
        info = error_details_pb2.ErrorInfo()
        for detail in rpc_status.from_call(error).details:
            if detail.Unpack(info):
                print("error:", error.code().name, info.reason)
print("stubs from:", passes_pb2.__file__)
"""


def oldest_allowed(pyproject: Path) -> list[str]:
    """Each dependency pinned to its declared floor (`name>=X` -> `name==X`)."""
    declared = tomllib.loads(pyproject.read_text())["project"]["dependencies"]
    pins = []
    for requirement in map(Requirement, declared):
        floors = [spec.version for spec in requirement.specifier if spec.operator == ">="]
        assert len(floors) == 1, f"{requirement} should declare one >= floor"
        pins.append(f"{requirement.name}=={floors[0]}")
    return pins


@pytest.mark.slow
# The database is beside the point here (the client only talks gRPC): SQLite alone.
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_client_installed_alone_calls_the_server(
    server: Application,
    api_key: str,
    passes: passes_pb2_grpc.PassServiceStub,
    tmp_path: Path,
) -> None:
    await World(passes).apple_template("loyalty")
    venv = tmp_path / "venv"
    # Without pip of its own (bootstrapping one took 5 s): uv installs into it.
    made = await run(sys.executable, "-m", "venv", "--without-pip", venv)
    assert made.returncode == 0, made.output
    python = venv / "bin" / "python"
    constraints = tmp_path / "oldest.txt"
    constraints.write_text("\n".join(oldest_allowed(CLIENT_DIR / "pyproject.toml")) + "\n")
    env = {name: value for name, value in os.environ.items() if name != "PYTHONPATH"}
    installed = await run(
        UV, "pip", "install", "--quiet", "--python", python,
        "--constraint", constraints, CLIENT_DIR, env=env, seconds=180,
    )  # fmt: skip
    assert installed.returncode == 0, installed.output

    script = tmp_path / "call.py"
    script.write_text(CLIENT_SCRIPT)
    called = await run(python, "-I", script, str(server.port), api_key, env=env)

    assert called.returncode == 0, called.output
    lines = called.stdout.splitlines()
    assert lines[:2] == ["templates: loyalty", "error: NOT_FOUND TICKET_NOT_FOUND"], called.output
    assert lines[2].startswith(f"stubs from: {venv}/lib/"), called.output
