"""The `passpush` command: serve, migrate, keys; send and watch (console.py)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import functools
import gc
import importlib.metadata
import logging
import os
import signal
import socket
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn
from urllib.parse import urlsplit

from passpush import console, importer
from passpush.domain.auth import SCOPE_ALIASES, ApiKey, Scope

# The server's modules (2 s of imports) are imported by the commands that need them, so that
# `passpush --help` and the client commands start at once.
if TYPE_CHECKING:
    from passpush.api.server import PasspushServer
    from passpush.config import Settings, SigningFiles
    from passpush.delivery.apns import ApnsGateway
    from passpush.delivery.google import GoogleWalletGateway
    from passpush.domain.signing import SigningMaterial
    from passpush.fakes import google as fake_google
    from passpush.fakes.apns import FakeApns
    from passpush.http.app import HttpServer
    from passpush.http.processes import HttpProcesses
    from passpush.tls import ServerTls, TlsFiles

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
        "--fakes",
        action="store_true",
        help="for a wallet without credentials, push to a bundled local fake (a demo: "
        "nothing reaches a device); without it, its deliveries fail (also PASSPUSH_FAKES=1)",
    )
    # Internal: what `serve` runs in each HTTP process (http/processes.py).
    child_parser = commands.add_parser("serve-http")
    child_parser.add_argument("--listen-fd", type=int, required=True)
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
        except KeyboardInterrupt:
            sys.exit(130)  # what goes on without us is said already
    if args.command == "import":
        with contextlib.suppress(KeyboardInterrupt):
            sys.exit(asyncio.run(importer.run(args)))
        sys.exit("passpush: import interrupted: the passes sent so far are imported")
    from passpush.config import Settings
    from passpush.database_checks import DATABASE_ERRORS, DatabaseUnusable, trouble
    from passpush.domain.errors import DomainError
    from passpush.logs import configure_logging

    try:
        configure_logging(os.environ)
        settings = Settings.from_env()
    except ValueError as error:
        _refuse(str(error))
    if args.command != "migrate":  # alembic's lines on reading the schema's revision
        logging.getLogger("alembic").setLevel(logging.WARNING)
    if args.command == "migrate":
        _migrate(settings.database_url, args.to)
    elif args.command == "serve":
        if args.fakes:
            settings = dataclasses.replace(settings, fakes=True)
        with contextlib.suppress(KeyboardInterrupt):
            sys.exit(asyncio.run(serve(settings)))
    elif args.command == "serve-http":
        with contextlib.suppress(KeyboardInterrupt):
            sys.exit(asyncio.run(serve_http(settings, args.listen_fd, args.grpc_target)))
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
    from passpush.store import migrate

    try:
        now = migrate.migrate_to(database_url, target)
    except migrate.UnknownRevision as error:
        _refuse(str(error))
    except DATABASE_ERRORS as error:
        _refuse(trouble(error, database_url))
    if now == migrate.head():
        print(f"database is up to date ({shown(database_url)})")
    else:
        print(f"database is at revision {now}, head is {migrate.head()} ({shown(database_url)})")


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
    """`passpush serve`, with its metrics on their own address (metrics.py says why)."""
    from passpush.metrics import serve_metrics

    metrics = None
    if settings.metrics_address:
        try:
            metrics = serve_metrics(settings.metrics_address)
        except OSError as error:
            log.error(
                "cannot serve metrics on PASSPUSH_METRICS_ADDRESS %s: %s",
                settings.metrics_address,
                error.strerror or error,
            )
            return 2
        host = settings.metrics_address.rpartition(":")[0]
        log.info("passpush metrics at http://%s:%d/metrics", host, metrics.port)
    try:
        return await _serve(settings, measure_outbox=metrics is not None)
    finally:
        if metrics is not None:
            await asyncio.to_thread(metrics.close)


async def _serve(settings: Settings, *, measure_outbox: bool) -> int:
    from passpush.api.server import PasspushServer
    from passpush.database_checks import DatabaseUnusable, open_migrated
    from passpush.delivery.apns import ApnsConfig, ApnsGateway
    from passpush.delivery.google import GoogleWalletConfig, GoogleWalletGateway
    from passpush.domain.clock import utcnow
    from passpush.domain.errors import DomainError
    from passpush.domain.outcomes import APNS_NOT_CONFIGURED, GOOGLE_NOT_CONFIGURED
    from passpush.fakes import google as fake_google
    from passpush.fakes.apns import start_bundled_fake
    from passpush.http.app import HttpServer, create_app
    from passpush.outbox.leases import release_leases
    from passpush.service.passkit import PassKitSettings
    from passpush.store.connectors.session import run_on_session
    from passpush.store.db import is_sqlite, make_sessions
    from passpush.store.request_turns import SharedRequestTurns
    from passpush.store.schedules import ScheduleStore
    from passpush.tls import load_server_tls

    try:
        default_signing = _default_signing(settings.apple_signing)
    except (OSError, DomainError) as error:
        message = error.message if isinstance(error, DomainError) else str(error)
        log.error("cannot load PASSPUSH_APPLE_SIGNING_CERT, _KEY, _WWDR: %s", message)
        return 2
    tls: ServerTls | None = None
    try:
        tls = load_server_tls(settings.tls) if settings.tls is not None else None
    except ValueError as error:
        log.error("cannot use the TLS settings: %s", error)
        return 2
    warn_if_plaintext(settings)
    if urlsplit(settings.passkit_url).scheme.lower() != "https":
        log.warning(
            "PASSPUSH_PASSKIT_URL is %s, not https://: it is every pass's webServiceURL, and "
            "devices call only https:// ones (an iPhone calls plain HTTP only with Developer "
            "settings' Allow HTTP Services), so passes will not register or update",
            settings.passkit_url,
        )
    try:
        engine = await open_migrated(settings.database_url)
    except DatabaseUnusable as error:
        log.error("%s", error)
        return 2
    sessions = make_sessions(engine)
    fake: FakeApns | None = None
    apns_config = settings.apns
    if apns_config is None and settings.fakes:
        fake = await start_bundled_fake(Path(settings.data_dir) / "fake-apns")
        apns_config = ApnsConfig(
            endpoint=fake.endpoint,
            ca_file=str(fake.tls.ca_file),
            max_connections=settings.apns_connections,
        )
        log.warning(
            "--fakes: pushing to the bundled fake APNs at %s; Apple deliveries reach no "
            "device (set PASSPUSH_APNS_CERT or PASSPUSH_APNS_KEY_FILE for Apple's)",
            fake.endpoint,
        )
    elif apns_config is None:
        log.warning(
            "no APNs credentials: Apple deliveries will fail with %s "
            "(or run `passpush serve --fakes` to push to a bundled fake)",
            APNS_NOT_CONFIGURED,
        )
    fake_wallet: fake_google.FakeGoogleWallet | None = None
    google_config = settings.google
    if google_config is None and settings.fakes:
        fake_wallet = await fake_google.start_bundled_fake(Path(settings.data_dir) / "fake-google")
        google_config = GoogleWalletConfig(
            credentials_file=str(fake_wallet.account.key_file),
            api_base=fake_wallet.api_base,
            token_url=fake_wallet.token_url,
            rate=settings.google_rate,
        )
        log.warning(
            "--fakes: sending to the bundled fake Google Wallet API at %s; Google "
            "deliveries reach no pass (set PASSPUSH_GOOGLE_CREDENTIALS for Google's)",
            fake_wallet.api_base,
        )
    elif google_config is None:
        log.warning(
            "no Google Wallet credentials: Google deliveries will fail with %s "
            "(or run `passpush serve --fakes` to send to a bundled fake)",
            GOOGLE_NOT_CONFIGURED,
        )
    elif google_config.credentials_file is None:
        log.error(
            "PASSPUSH_GOOGLE_API_BASE is set but PASSPUSH_GOOGLE_CREDENTIALS is not: Google "
            "Wallet deliveries will fail with %s",
            GOOGLE_NOT_CONFIGURED,
        )
    try:
        gateway = ApnsGateway(apns_config) if apns_config is not None else None
    except (OSError, ValueError) as error:
        log.error("cannot use the APNs settings (PASSPUSH_APNS_*): %s", error)
        await _close_gateways(None, None, fake, fake_wallet)
        await engine.dispose()
        return 2
    try:
        google = None
        if google_config is not None:
            # Replicas on one PostgreSQL database share each issuer's rate; SQLite is one
            # server's, which paces its own requests.
            shared = (
                None
                if is_sqlite(settings.database_url)
                else SharedRequestTurns(engine, google_config.rate)
            )
            google = GoogleWalletGateway(google_config, shared)
    except (OSError, ValueError) as error:
        log.error("cannot use PASSPUSH_GOOGLE_CREDENTIALS: %s", error)
        await _close_gateways(gateway, None, fake, fake_wallet)
        await engine.dispose()
        return 2
    try:
        server = PasspushServer(
            sessions,
            gateway,
            google,
            address=settings.grpc_address,
            clock=utcnow,
            worker_settings=settings.worker,
            key_cache_seconds=settings.key_cache_seconds,
            event_retention=settings.event_retention,
            passkit=PassKitSettings(settings.passkit_url, default_signing),
            max_message_bytes=settings.grpc_max_message_bytes,
            measure_outbox=measure_outbox,
            credentials=tls.grpc_credentials() if tls is not None else None,
        )
    except OSError:  # the gRPC address cannot be listened on
        log.error(
            "cannot serve gRPC on %s (PASSPUSH_GRPC_ADDRESS): %s",
            settings.grpc_address,
            _why_not_listening(settings.grpc_address),
        )
        await _close_gateways(gateway, google, fake, fake_wallet)
        await engine.dispose()
        return 2
    if is_sqlite(settings.database_url):
        # SQLite serves one process: leases and claims left by a crashed run are ours now.
        async with sessions.begin() as session:
            await run_on_session(session, release_leases())
            await ScheduleStore(session).release_claims()
    # Taken from here on: a SIGTERM while the HTTP processes start stops everything cleanly.
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    # The HTTP processes start first where the gRPC port is known: the server reports
    # SERVING once they are up, so that their start (a Python importing the whole server,
    # each) does not take the CPU from the first Sends and pushes.
    grpc_port = int(settings.grpc_address.rpartition(":")[2] or 0)
    http: HttpServer | HttpProcesses | None = None
    if settings.http_processes and grpc_port:
        grpc_target = server.local_target or _dial(settings.grpc_address, grpc_port)
        http = _http_processes(settings, grpc_target, server)
        if not await _start_http(http, settings):
            await _close_gateways(gateway, google, fake, fake_wallet)
            await engine.dispose()
            return 2
    try:
        await server.start()
    except BaseException:
        if http is not None:
            await http.stop(0)
        raise
    log.info(
        "passpush gRPC listening on %s (APNs at %s, Google Wallet API at %s)",
        settings.grpc_address,
        apns_config.endpoint if apns_config else "none",
        google_config.api_base if google_config else "none",
    )
    if http is None:
        # The shim calls the gRPC server like any client, over the port it just bound; the
        # PassKit routes (devices, no API key) call the service directly.
        grpc_target = server.local_target or _dial(settings.grpc_address, server.port)
        if settings.http_processes:
            http = _http_processes(settings, grpc_target, server)
        else:
            app = create_app(
                grpc_target, server.passkit, settings.passkit_prefix, lambda: server.serving
            )
            http = HttpServer(app, settings.http_address, tls_files=_tls_files(settings.tls))
        if not await _start_http(http, settings):
            await server.stop(0)
            await _close_gateways(gateway, google, fake, fake_wallet)
            await engine.dispose()
            return 2
    log.info(
        "passpush HTTP shim listening on %s (%s); PassKit web service at %s (webServiceURL %s)",
        settings.http_address,
        f"{settings.http_processes} processes" if settings.http_processes else "in-process",
        settings.passkit_prefix,
        settings.passkit_url,
    )

    # What start-up made (SQLAlchemy's metadata, protobuf descriptors, the servers) lives as
    # long as the process: frozen, a full collection skips it, and a call's latency does not
    # include a walk over every object the process has.
    gc.collect()
    gc.freeze()
    await stop.wait()
    log.info("shutting down: finishing in-flight work (up to %.0f s)", settings.shutdown_grace)
    await http.stop(settings.shutdown_grace)
    await server.stop(settings.shutdown_grace)
    await _close_gateways(gateway, google, fake, fake_wallet)
    await engine.dispose()
    return 0


async def serve_http(settings: Settings, listen_fd: int, grpc_target: str) -> int:
    """One HTTP process of `serve`: the shim and the PassKit web service on the socket the
    parent listens on, until SIGTERM or until the parent is gone."""
    from passpush.domain.clock import utcnow
    from passpush.domain.errors import DomainError
    from passpush.http.app import HttpServer, create_app
    from passpush.http.processes import (
        READY,
        ParentFetchSink,
        ParentPipe,
        ParentReadiness,
        ParentRegistrar,
        follow_parent,
        lower_priority,
    )
    from passpush.http.sockets import inherited_listener
    from passpush.service.passkit import PassKitCore, PassKitSettings, PassPackager
    from passpush.store.connectors import connect
    from passpush.store.db import make_engine, make_sessions

    lower_priority(settings.http_nice)
    try:
        default_signing = _default_signing(settings.apple_signing, quiet=True)
    except (OSError, DomainError):
        default_signing = None  # the parent said why, and refused to start
    engine = make_engine(settings.database_url)
    sessions = make_sessions(engine)
    parent = await ParentPipe.open()
    registrar = ParentRegistrar(parent)
    passkit = PassKitCore(
        sessions,
        connect(engine),
        PassPackager(PassKitSettings(settings.passkit_url, default_signing)),
        clock=utcnow,
        fetch_sink=ParentFetchSink(parent),  # the parent records them
        registrar=registrar,  # and writes the registrations
    )
    readiness = ParentReadiness()  # the parent tells it
    app = create_app(grpc_target, passkit, settings.passkit_prefix, readiness)
    http = HttpServer(
        app, settings.http_address, inherited_listener(listen_fd), _tls_files(settings.tls)
    )
    await http.start()
    parent.tell(READY)
    gc.collect()
    gc.freeze()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)

    # The parent holds our stdin open: at its end (even a SIGKILL) we stop too, instead of
    # keeping its port.
    following = asyncio.create_task(follow_parent(registrar, readiness, stop.set))
    await stop.wait()
    await http.stop(settings.shutdown_grace)
    following.cancel()
    await passkit.close()
    await engine.dispose()
    return 0


def warn_if_plaintext(settings: Settings) -> None:
    """Warns of each listen address other machines can reach while TLS is off."""
    from passpush.tls import is_loopback

    if settings.tls is not None:
        return
    for setting, address in (
        ("PASSPUSH_GRPC_ADDRESS", settings.grpc_address),
        ("PASSPUSH_HTTP_ADDRESS", settings.http_address),
    ):
        if not is_loopback(address):
            log.warning(
                "%s is %s, not a loopback address, and TLS is off: API keys and pass "
                "tokens cross the network in plaintext (set PASSPUSH_TLS_CERT and "
                "PASSPUSH_TLS_KEY, or serve behind a proxy that terminates TLS)",
                setting,
                address,
            )


def _tls_files(tls: TlsFiles | None) -> tuple[str, str] | None:
    """The HTTP server's certificate and key files: the gRPC server's."""
    return (tls.certificate, tls.private_key) if tls is not None else None


def _default_signing(files: SigningFiles | None, *, quiet: bool = False) -> SigningMaterial | None:
    """The server's signing material, checked at start: a mistake shows now, not on a
    device. `quiet`: no warnings (an HTTP process, whose parent gave them)."""
    from passpush.domain.clock import utcnow
    from passpush.domain.signing import AppleSigningPem, load_signing

    if files is None:
        if quiet:
            return None
        log.warning(
            "no PASSPUSH_APPLE_SIGNING_CERT: only templates with their own apple_signing "
            "can serve passes"
        )
        return None
    pem = AppleSigningPem(
        Path(files.certificate).read_text(),
        Path(files.private_key).read_text(),
        Path(files.wwdr_certificate).read_text(),
    )
    material = load_signing(pem, field="apple_signing")
    if material.expire_time <= utcnow() and not quiet:
        log.warning(
            "the Pass Type ID certificate of PASSPUSH_APPLE_SIGNING_CERT expired on %s: "
            "devices will refuse the passes it signs",
            material.expire_time.date(),
        )
    return material


async def _close_gateways(
    apns: ApnsGateway | None,
    google: GoogleWalletGateway | None,
    fake_apns: FakeApns | None,
    fake_wallet: fake_google.FakeGoogleWallet | None,
) -> None:
    if apns is not None:
        await apns.close()
    if google is not None:
        await google.close()
    if fake_apns is not None:
        await fake_apns.stop()
    if fake_wallet is not None:
        await fake_wallet.stop()


def _http_processes(settings: Settings, grpc_target: str, server: PasspushServer) -> HttpProcesses:
    from passpush.http.processes import HttpProcesses

    processes = HttpProcesses(
        settings.http_address,
        settings.http_processes,
        functools.partial(_http_child_command, grpc_target),
        on_fetched=server.fetches.add,
        on_register=server.passkit.write_registration,
    )
    processes.tell_serving(server.serving)
    server.on_serving.append(processes.tell_serving)  # their /readyz
    return processes


async def _start_http(http: HttpServer | HttpProcesses, settings: Settings) -> bool:
    try:
        await http.start()
    except OSError as error:
        log.error("cannot serve HTTP on %s: %s", settings.http_address, error)
        return False
    return True


def _http_child_command(grpc_target: str, listen_fd: int) -> list[str]:
    """`passpush serve-http` by this Python; it reads the same PASSPUSH_* settings."""
    command = [sys.executable, "-m", "passpush.cli", "serve-http"]
    return [*command, f"--listen-fd={listen_fd}", f"--grpc-target={grpc_target}"]


def _dial(listen_address: str, port: int) -> str:
    """Where a local client reaches a server listening on `listen_address`."""
    host = listen_address.rpartition(":")[0]
    if host in ("", "0.0.0.0", "[::]", "localhost"):
        host = "127.0.0.1"
    return f"{host}:{port}"


def _why_not_listening(address: str) -> str:
    """The system's reason that `address` cannot be listened on (grpc does not say)."""
    host, _, port = address.rpartition(":")
    host = host.strip("[]")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        with socket.create_server((host, int(port)), family=family):
            return "gRPC could not listen there"
    except OSError as error:  # its text names the address again: the errno's alone
        return os.strerror(error.errno) if error.errno else str(error)


if __name__ == "__main__":
    main()
