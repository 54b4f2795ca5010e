"""The `passpush` command: serve, migrate, keys; send and watch (console.py)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import importlib.metadata
import logging
import os
import sys
from typing import TYPE_CHECKING, Any, NoReturn

from passpush import console, importer
from passpush.domain.auth import SCOPE_ALIASES, ApiKey, Scope

# The server's modules (2 s of imports) are imported by the commands that need them, so that
# `passpush --help` and the client commands start at once.
if TYPE_CHECKING:
    from passpush.config import Settings

log = logging.getLogger("passpush")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="passpush", description="Push notifications to Apple Wallet and Google Wallet passes."
    )
    parser.add_argument(
        "--version", action="version", version=f"passpush {importlib.metadata.version('passpush')}"
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve_parser = commands.add_parser(
        "serve", help="start the gRPC server, the HTTP shim and the delivery worker"
    )
    serve_parser.add_argument(
        "--role",
        metavar="ROLE",
        help="what this process runs: api (the gRPC and HTTP servers), worker (the delivery "
        "worker, fan-outs, schedules, retention) or all (default; also PASSPUSH_ROLE)",
    )
    serve_parser.add_argument(
        "--fakes",
        action="store_true",
        help="for a wallet without credentials, push to a bundled local fake (a demo: "
        "nothing reaches a device); without it, its deliveries fail (also PASSPUSH_FAKES=1)",
    )
    # Internal: what `serve` runs in each HTTP process (http/processes.py).
    child_parser = commands.add_parser("serve-http")
    child_parser.add_argument("--listen-fd", type=int, required=True)
    child_parser.add_argument("--connections-fd", type=int, required=True)
    child_parser.add_argument("--slot", type=int, required=True)
    child_parser.add_argument("--grpc-target", required=True)
    migrate_parser = commands.add_parser(
        "migrate", help="bring the database schema up to date (or to a given revision)"
    )
    migrate_parser.add_argument(
        "--to",
        default="head",
        metavar="REVISION",
        help="upgrade or downgrade to this revision (0001, 0002, ...; base: no schema; "
        "default: head, the newest)",
    )
    _add_keys_commands(commands)
    console.add_commands(commands)
    importer.add_command(commands)
    args = parser.parse_args(argv)
    if args.command in ("send", "watch", "failures"):
        # A client of a running server: no settings, no logging set-up of its own.
        try:
            sys.exit(asyncio.run(console.run(args)))
        # Ctrl-C cancels the command's task (console.py): what goes on is said already.
        except (KeyboardInterrupt, asyncio.CancelledError):
            sys.exit(130)
    if args.command == "import":
        with contextlib.suppress(KeyboardInterrupt, asyncio.CancelledError):  # Ctrl-C
            sys.exit(asyncio.run(importer.run(args)))
        sys.exit("passpush: import interrupted: the passes sent so far are imported")
    from passpush.config import Role, Settings
    from passpush.database_checks import DATABASE_ERRORS, DatabaseUnusable, trouble
    from passpush.domain.errors import DomainError
    from passpush.logs import configure_logging

    try:
        configure_logging(os.environ)
        settings = Settings.from_env()
    except ValueError as error:
        _refuse(str(error))
    # alembic's lines say what a migration does; not what it sets up on its import.
    logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)
    if args.command == "migrate":
        _migrate(settings.database_url, args.to)
    elif args.command == "serve":
        if args.fakes:
            settings = dataclasses.replace(settings, fakes=True)
        if args.role is not None:
            try:
                settings = dataclasses.replace(settings, role=Role.parse(args.role, "--role"))
            except ValueError as error:
                _refuse(str(error))
        with contextlib.suppress(KeyboardInterrupt):
            sys.exit(asyncio.run(serve(settings)))
    elif args.command == "serve-http":
        with contextlib.suppress(KeyboardInterrupt):
            sys.exit(asyncio.run(serve_http(settings, args)))
    elif args.command == "keys":
        try:
            asyncio.run(keys(settings, args))
        except DomainError as error:
            sys.exit(f"passpush keys: {error.message}")
        except DatabaseUnusable as error:
            _refuse(str(error))
        except DATABASE_ERRORS as error:  # the database went away on the way
            _refuse(trouble(error, settings.database_url))


def _refuse(message: str) -> NoReturn:
    """Exits with status 2: the command could not run, for the reason given."""
    print(f"passpush: {message}", file=sys.stderr)
    sys.exit(2)


def _migrate(database_url: str, target: str) -> None:
    from passpush.database_checks import DATABASE_ERRORS, shown, trouble
    from passpush.store import migrate, schema_revision

    try:
        now = migrate.migrate_to(database_url, target)
    except migrate.UnknownRevision as error:
        _refuse(str(error))
    except DATABASE_ERRORS as error:
        _refuse(trouble(error, database_url))
    head = schema_revision.head()
    if now == head:
        print(f"database is up to date ({shown(database_url)})")
    else:
        print(f"database is at revision {now}, head is {head} ({shown(database_url)})")


def _add_keys_commands(commands: Any) -> None:
    keys_parser = commands.add_parser("keys", help="create, list and revoke API keys")
    actions = keys_parser.add_subparsers(dest="action", required=True)
    create = actions.add_parser(
        "create", help="create a key (and its project if needed); prints the key once"
    )
    create.add_argument("--project", required=True, help="the project the key acts in")
    create.add_argument(
        "--scopes",
        required=True,
        help="comma-separated: " + ", ".join([*Scope, *SCOPE_ALIASES]),
    )
    create.add_argument("--name", default="", help="a name to tell keys apart")
    create.add_argument(
        "--if-none",
        action="store_true",
        help="create nothing when the database holds any key already (first-run setup)",
    )
    listing = actions.add_parser("list", help="list a project's keys (never their secrets)")
    listing.add_argument("--project", required=True)
    revoke = actions.add_parser("revoke", help="revoke a key: its calls fail from now on")
    revoke.add_argument("key_id", help="the key's id, the part before the dot (ppk_...)")


async def keys(settings: Settings, args: argparse.Namespace) -> None:
    from passpush.database_checks import open_migrated
    from passpush.domain.clock import utcnow
    from passpush.service.keys import KeyCore
    from passpush.store.db import make_sessions

    engine = await open_migrated(settings.database_url)
    core = KeyCore(make_sessions(engine), clock=utcnow)
    try:
        if args.action == "create":
            if args.if_none and await core.any_keys():
                print("API keys exist already; make another with: passpush keys create ...")
                return
            key, plaintext = await core.create_key(
                args.project, args.name, args.scopes.split(","), create_project=True
            )
            print(f"API key {key.id} for project {key.project_id!r}, scopes {_scopes(key)}.")
            print("It is shown only now. Send it as metadata `authorization: Bearer <key>`:")
            print(plaintext)
        elif args.action == "list":
            page = await core.list_keys(args.project, 1000, "")
            for key in page.items:
                state = f"revoked {key.revoke_time:%Y-%m-%d}" if key.revoke_time else "live"
                print(f"{key.id}  {state:18}  {_scopes(key)}  {key.name}")
        elif args.action == "revoke":
            key = await core.revoke_key_as_operator(args.key_id)
            print(f"API key {key.id} of project {key.project_id!r} is revoked.")
    finally:
        await engine.dispose()


def _scopes(key: ApiKey) -> str:
    return ",".join(sorted(key.scopes))


async def serve(settings: Settings) -> int:
    """`passpush serve`: the application (passpush/app/) for the settings' role."""
    from passpush.app import serving

    return await serving.serve(settings)


async def serve_http(settings: Settings, args: argparse.Namespace) -> int:
    """One HTTP process of `serve` (passpush/app/serving.py)."""
    from passpush.app import serving

    shared = (args.listen_fd, args.connections_fd, args.slot)
    return await serving.serve_http(settings, shared, args.grpc_target)


if __name__ == "__main__":
    main()
