"""What a process reads from the settings before it can serve: the gateways to APNs and
Google Wallet (or the bundled fakes), the Apple signing material, and the TLS files; each
checked at start, so that a mistake shows now and not on a device."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy.ext.asyncio import AsyncEngine

from passpush.config import Settings, SigningFiles
from passpush.delivery.apple.gateway import ApnsConfig, ApnsGateway
from passpush.delivery.google.gateway import GoogleWalletConfig, GoogleWalletGateway
from passpush.domain.clock import utcnow
from passpush.domain.outcomes import APNS_NOT_CONFIGURED, GOOGLE_NOT_CONFIGURED
from passpush.domain.signing import AppleSigningPem, SigningMaterial, load_signing
from passpush.store.db import is_sqlite
from passpush.store.request_turns import SharedRequestTurns
from passpush.tls import TlsFiles, is_loopback

# Imported where used: the fakes by `serve --fakes` alone.
if TYPE_CHECKING:
    from passpush.fakes.apns import FakeApns
    from passpush.fakes.google import FakeGoogleWallet

log = logging.getLogger(__name__)


class Wallets:
    """The gateways to APNs and Google Wallet of a process that pushes, and the bundled
    fakes standing in for those without settings (`serve --fakes`)."""

    def __init__(self) -> None:
        self.apns: ApnsGateway | None = None
        self.google: GoogleWalletGateway | None = None
        self._fake_apns: FakeApns | None = None
        self._fake_google: FakeGoogleWallet | None = None

    async def open(self, settings: Settings, engine: AsyncEngine) -> bool:
        """False (having said why) when a gateway's settings cannot be used."""
        from passpush.fakes import apns as fake_apns
        from passpush.fakes import google as fake_google

        apns_config = settings.apns
        if apns_config is None and settings.fakes:
            self._fake_apns = fake = await fake_apns.start_bundled_fake(
                Path(settings.data_dir) / "fake-apns"
            )
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
        google_config = settings.google
        if google_config is None and settings.fakes:
            self._fake_google = wallet = await fake_google.start_bundled_fake(
                Path(settings.data_dir) / "fake-google"
            )
            google_config = GoogleWalletConfig(
                credentials_file=str(wallet.account.key_file),
                api_base=wallet.api_base,
                token_url=wallet.token_url,
                rate=settings.google_rate,
            )
            log.warning(
                "--fakes: sending to the bundled fake Google Wallet API at %s; Google "
                "deliveries reach no pass (set PASSPUSH_GOOGLE_CREDENTIALS for Google's)",
                wallet.api_base,
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
            self.apns = ApnsGateway(apns_config) if apns_config is not None else None
        except (OSError, ValueError) as error:
            log.error("cannot use the APNs settings (PASSPUSH_APNS_*): %s", error)
            return False
        try:
            if google_config is not None:
                # Replicas on one PostgreSQL database share each issuer's rate; SQLite is
                # one machine's, whose worker paces its own requests.
                shared = (
                    None
                    if is_sqlite(settings.database_url)
                    else SharedRequestTurns(engine, google_config.rate)
                )
                self.google = GoogleWalletGateway(google_config, shared)
        except (OSError, ValueError) as error:
            log.error("cannot use PASSPUSH_GOOGLE_CREDENTIALS: %s", error)
            return False
        log.info(
            "pushing to APNs at %s and the Google Wallet API at %s",
            apns_config.endpoint if apns_config else "none",
            google_config.api_base if google_config else "none",
        )
        return True

    async def close(self) -> None:
        if self.apns is not None:
            await self.apns.close()
        if self.google is not None:
            await self.google.close()
        if self._fake_apns is not None:
            await self._fake_apns.stop()
        if self._fake_google is not None:
            await self._fake_google.stop()


def warn_if_plaintext(settings: Settings) -> None:
    """Warns of each listen address other machines can reach while TLS is off."""
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


def tls_files(tls: TlsFiles | None) -> tuple[str, str] | None:
    """The HTTP server's certificate and key files: the gRPC server's."""
    return (tls.certificate, tls.private_key) if tls is not None else None


def default_signing(files: SigningFiles | None, *, quiet: bool = False) -> SigningMaterial | None:
    """The server's signing material, checked at start: a mistake shows now, not on a
    device. `quiet`: no warnings (an HTTP process, whose parent gave them)."""
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
