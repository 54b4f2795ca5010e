"""The `passpush` command: serve, migrate."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from pathlib import Path

from sqlalchemy.engine import make_url

from passpush.api.server import PasspushServer
from passpush.config import Settings
from passpush.delivery.apns import ApnsConfig, ApnsGateway
from passpush.fakes.apns import FakeApns, start_bundled_fake
from passpush.service.clock import utcnow
from passpush.store import migrate
from passpush.store.db import is_sqlite, make_engine, make_sessions
from passpush.store.outbox import Outbox

log = logging.getLogger("passpush")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="passpush", description="Push notifications to Apple Wallet and Google Wallet passes."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("serve", help="start the gRPC server and the delivery worker")
    commands.add_parser("migrate", help="bring the database schema up to date")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    settings = Settings.from_env()
    if args.command == "migrate":
        migrate.upgrade(settings.database_url)
        print(f"database is up to date ({_safe_url(settings.database_url)})")
    elif args.command == "serve":
        with contextlib.suppress(KeyboardInterrupt):
            sys.exit(asyncio.run(serve(settings)))


async def serve(settings: Settings) -> int:
    engine = make_engine(settings.database_url)
    if not await migrate.is_up_to_date(engine):
        log.error("the database schema is not up to date: run `passpush migrate` first")
        await engine.dispose()
        return 2
    sessions = make_sessions(engine)
    fake: FakeApns | None = None
    apns_config = settings.apns
    if apns_config is None:
        fake = await start_bundled_fake(Path(settings.data_dir) / "fake-apns")
        apns_config = ApnsConfig(endpoint=fake.endpoint, ca_file=str(fake.tls.ca_file))
        log.warning(
            "no APNs credentials configured: pushing to the bundled fake APNs at %s "
            "(set PASSPUSH_APNS_CERT or PASSPUSH_APNS_KEY_FILE for Apple's)",
            fake.endpoint,
        )
    gateway = ApnsGateway(apns_config)
    server = PasspushServer(sessions, gateway, address=settings.grpc_address, clock=utcnow)
    if is_sqlite(settings.database_url):
        # SQLite serves one process: leases left by a crashed run are ours to take back now.
        async with sessions.begin() as session:
            await Outbox(session).release()
    await server.start()
    log.info(
        "passpush gRPC listening on %s (APNs at %s)", settings.grpc_address, apns_config.endpoint
    )

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    log.info("shutting down: finishing in-flight work (up to %.0f s)", settings.shutdown_grace)
    await server.stop(settings.shutdown_grace)
    await gateway.close()
    if fake is not None:
        await fake.stop()
    await engine.dispose()
    return 0


def _safe_url(url: str) -> str:
    """The URL without its password, for logs."""
    return make_url(url).render_as_string(hide_password=True)


if __name__ == "__main__":
    main()
