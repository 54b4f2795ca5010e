"""deploy/: the Dockerfile and compose.yaml run what the docs document.

No image can be built or pulled here, so the files are read (the Dockerfile by Docker's own
parser, compose.yaml as YAML, nginx.conf's few lines by pattern) and held against the real
CLI, the settings passpush takes, and docs/configuration.md. The image's entrypoint is run as it is.
"""

from __future__ import annotations

import os
import re
import sqlite3
from pathlib import Path
from typing import Any

import dockerfile
import pytest
import yaml

from passpush.config import Settings

from processes import BIN_DIR, PASSPUSH, run

ROOT = Path(__file__).parents[1]
DEPLOY = ROOT / "deploy"
SETTINGS_DOC = (ROOT / "docs" / "configuration.md").read_text()
DEFAULTS = Settings.from_env({})
GRPC_PORT = DEFAULTS.grpc_address.rpartition(":")[2]
HTTP_PORT = DEFAULTS.http_address.rpartition(":")[2]


def image() -> tuple[dockerfile.Command, ...]:
    return dockerfile.parse_file(str(DEPLOY / "Dockerfile"))


def instructions(name: str) -> list[dockerfile.Command]:
    return [command for command in image() if command.cmd == name]


def image_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for command in instructions("ENV"):
        env.update(zip(command.value[::2], command.value[1::2], strict=True))
    return env


def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    return loaded


def interpolated(value: str) -> str:
    """compose's `${NAME:-default}` with nothing set: the default."""
    return re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", value)


def replicas() -> dict[str, dict[str, Any]]:
    """The services that run `passpush serve`: the image's, with its own entrypoint."""
    return {
        name: service
        for name, service in compose()["services"].items()
        if service.get("image") == "passpush" and "entrypoint" not in service
    }


def commands_in_help(help_text: str) -> set[str]:
    listing = help_text.split("COMMAND\n", 2)[-1].split("\n\n")[0]
    return {line.split()[0] for line in listing.splitlines() if line.strip()}


def passpush_commands(argv: list[str]) -> set[str]:
    """The passpush commands an exec-form command line runs, directly or in `sh -c`."""
    if argv[:2] == ["sh", "-c"]:
        return set(re.findall(r"(?:^|&&|;|\bexec)\s*passpush ([a-z][a-z-]*)", argv[2]))
    return {argv[1]} if argv[0] == "passpush" else set()


def test_the_image_is_slim_python_3_11_and_runs_as_a_user() -> None:
    [base] = instructions("FROM")
    [user] = instructions("USER")

    assert base.value[0].startswith("python:3.11-slim")
    assert user.value[0] not in ("root", "0")
    assert [i.cmd for i in image()].index("USER") < [i.cmd for i in image()].index("ENTRYPOINT")


def test_the_image_copies_what_the_repository_has_and_installs_it() -> None:
    copied = [i.value[0] for i in instructions("COPY")]
    [install] = [i for i in instructions("RUN") if "pip install" in i.value[0]]

    for source in copied:
        assert (ROOT / source).exists(), f"COPY {source}: not in the repository"
    # The server and the stubs it pins, each a project of the repository.
    installed = install.value[0].split("&&")[0].split()[2:]
    assert sorted(installed) == [".", "./clients/python"], install.original
    for project in installed:
        assert (ROOT / project / "pyproject.toml").exists()


async def test_every_passpush_command_they_run_is_one_the_cli_has() -> None:
    shown = await run(PASSPUSH, "--help")
    assert shown.returncode == 0, shown.output
    known = commands_in_help(shown.stdout)
    assert {"serve", "migrate"} <= known, shown.stdout

    argvs = [list(i.value) for i in image() if i.cmd in ("ENTRYPOINT", "CMD") and i.value]
    for service in compose()["services"].values():
        argvs += [service[key] for key in ("entrypoint", "command") if key in service]
    used = {name for argv in argvs for name in passpush_commands(argv)}

    assert used and used <= known, f"{used - known} are not passpush commands"
    assert {"migrate", "serve"} <= used


async def test_the_entrypoint_migrates_then_serves_with_its_arguments(tmp_path: Path) -> None:
    [entrypoint] = instructions("ENTRYPOINT")
    assert entrypoint.json, "exec form: the server gets the container's signals"
    env = {**os.environ, **image_env(), "PATH": f"{BIN_DIR}:{os.environ['PATH']}"}
    env["PASSPUSH_DATABASE_URL"] = f"sqlite+aiosqlite:///{tmp_path / 'passpush.db'}"
    env["PASSPUSH_DATA_DIR"] = str(tmp_path)

    # `docker run passpush --help`: the arguments after the image go to serve.
    result = await run(*entrypoint.value, "--help", env=env)

    assert result.returncode == 0, result.output
    migrated, served = result.stdout.split("\n", 1)
    assert migrated.startswith("database is up to date"), result.stdout
    assert served.startswith("usage: passpush serve"), result.stdout
    with sqlite3.connect(tmp_path / "passpush.db") as db:
        assert db.execute("SELECT count(*) FROM alembic_version").fetchone() == (1,)


def set_settings() -> list[tuple[str, str, str]]:
    """Every PASSPUSH_* variable the files set: where, the name, the value."""
    found = [("Dockerfile", name, value) for name, value in image_env().items()]
    for service_name, service in compose()["services"].items():
        for name, value in (service.get("environment") or {}).items():
            found.append((f"compose service {service_name}", name, interpolated(str(value))))
    return [(where, name, value) for where, name, value in found if name.startswith("PASSPUSH_")]


def test_every_setting_they_set_is_taken_by_passpush_and_documented() -> None:
    found = set_settings()
    assert {name for _, name, _ in found} >= {"PASSPUSH_DATABASE_URL", "PASSPUSH_GRPC_ADDRESS"}

    for where, name, value in found:
        assert f"| `{name}`" in SETTINGS_DOC, f"{where}: {name} is not in docs/configuration.md"
        # Taken: it parses, and it changes what the server runs with.
        assert Settings.from_env({name: value}) != DEFAULTS, f"{where}: {name} changes nothing"


@pytest.mark.parametrize("where", ["Dockerfile", "compose"])
def test_the_servers_listen_on_the_default_ports_on_every_interface(where: str) -> None:
    envs = [image_env()]
    if where == "compose":
        envs = [service["environment"] for service in replicas().values()]
    assert envs
    for env in envs:
        assert env["PASSPUSH_GRPC_ADDRESS"] == f"0.0.0.0:{GRPC_PORT}"
        assert env["PASSPUSH_HTTP_ADDRESS"] == f"0.0.0.0:{HTTP_PORT}"
    [exposed] = instructions("EXPOSE")
    assert set(exposed.value) == {GRPC_PORT, HTTP_PORT}


def test_one_proxy_gives_the_replicas_one_address_for_grpc_and_http() -> None:
    services = compose()["services"]
    [proxy] = [s for s in services.values() if str(s.get("image", "")).startswith("nginx")]
    conf = (DEPLOY / "nginx.conf").read_text()
    names = sorted(replicas())

    assert len(names) == 2
    assert sorted(proxy["ports"]) == sorted(
        [f"{GRPC_PORT}:{GRPC_PORT}", f"{HTTP_PORT}:{HTTP_PORT}"]
    )
    assert "./nginx.conf:/etc/nginx/nginx.conf:ro" in proxy["volumes"]
    upstreams = dict(re.findall(r"upstream (\w+) \{([^}]*)\}", conf))
    for upstream, port in (("passpush_grpc", GRPC_PORT), ("passpush_http", HTTP_PORT)):
        servers = re.findall(r"server ([\w.-]+:\d+);", upstreams[upstream])
        assert sorted(servers) == [f"{name}:{port}" for name in names]
    listens = re.findall(r"listen (\d+);", conf)
    assert sorted(listens) == sorted([GRPC_PORT, HTTP_PORT])
    # gRPC is proxied as gRPC (HTTP/2 both ways), HTTP as HTTP.
    assert "grpc_pass grpc://passpush_grpc;" in conf and "http2 on;" in conf
    assert "proxy_pass http://passpush_http;" in conf


def test_the_replicas_start_after_the_schema_is_migrated_once() -> None:
    services = compose()["services"]
    migrations = [s for s in services.values() if s.get("entrypoint") == ["passpush", "migrate"]]

    assert len(migrations) == 1
    for name, replica in replicas().items():
        waits = replica["depends_on"]
        assert any(
            services[other].get("entrypoint") == ["passpush", "migrate"]
            and condition == {"condition": "service_completed_successfully"}
            for other, condition in waits.items()
        ), name
