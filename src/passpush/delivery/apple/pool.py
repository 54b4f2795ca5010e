"""The APNs connection pool: aioapns' pool, spreading pushes over connections opened as the load
grows, with passpush's protocol, TLS context and optional auth header."""

from __future__ import annotations

import asyncio
import logging
import ssl
from functools import partial

from aioapns.connection import (
    APNsBaseClientProtocol,
    APNsBaseConnectionPool,
    AuthorizationHeaderProvider,
)
from aioapns.exceptions import ConnectionError as ApnsConnectError

from passpush.delivery.apple.protocol import WalletApnsProtocol

logger = logging.getLogger(__name__)

# Pushes in flight on every connection before the pool opens another (up to max_connections):
# h2's cost per push grows with the streams open on its connection.
SPREAD_ABOVE_IN_FLIGHT = 50
RETRY_SPREADING_AFTER = 10.0  # seconds, after failing to open another connection


class ApnsConnectionPool(APNsBaseConnectionPool):
    """aioapns' pool, connecting with our protocol class, TLS context and (optional) auth header.

    One pool serves all three modes: certificate auth lives in the TLS context, token auth in
    the header provider, and with neither (the bundled fake) connections carry no credential.
    aioapns' own pools cannot express the last one: each insists on a certificate or a key.
    """

    def __init__(
        self,
        protocol_class: type[WalletApnsProtocol],
        ssl_context: ssl.SSLContext,
        auth_provider: AuthorizationHeaderProvider | None,
        max_connections: int,
    ) -> None:
        super().__init__(max_connections=max_connections)
        self.protocol_class = protocol_class
        self._connect_timeout = protocol_class.REQUEST_TIMEOUT
        self.ssl_context = ssl_context
        self._auth_provider = auth_provider
        self._spread_again_at = 0.0  # loop time; later after opening a connection failed

    async def acquire(self) -> APNsBaseClientProtocol:
        """The connection with the fewest pushes in flight; first another, while all carry many.

        aioapns' own acquire fills one connection up to 1,000 streams before it opens the next,
        and once all are full polls every 10 ms, logging a warning each time. Here a push that
        finds every stream taken waits for one of its connection's (send_notification).
        """
        if self._wants_another_connection():
            async with self._lock:  # one connection opened at a time
                if self._wants_another_connection():
                    await self._open_another()
        return min(self._open_connections(), key=lambda c: (c.is_busy, len(c.exchanges)))

    def _open_connections(self) -> list[WalletApnsProtocol]:
        return [c for c in self.connections if isinstance(c, WalletApnsProtocol)]

    def _wants_another_connection(self) -> bool:
        connections = self._open_connections()
        if connections and self.loop.time() < self._spread_again_at:
            return False
        return len(connections) < self.max_connections and all(
            len(c.exchanges) >= SPREAD_ABOVE_IN_FLIGHT for c in connections
        )

    async def _open_another(self) -> None:
        try:
            connection = await self.create_connection()
        except Exception as error:
            if not self.connections:
                logger.error("could not connect to APNs: %r", error)
                raise ApnsConnectError() from error
            logger.warning("could not open another APNs connection, using the open ones: %r", error)
            # Not on every push meanwhile: they would queue behind failing connects.
            self._spread_again_at = self.loop.time() + RETRY_SPREADING_AFTER
            return
        self.connections.append(connection)
        logger.info("APNs connection opened (%d open)", len(self.connections))

    async def create_connection(self) -> APNsBaseClientProtocol:
        protocol_factory = partial(
            self.protocol_class,
            "",  # default topic: unused, every push names its own
            self.loop,
            self.discard_connection,  # type: ignore[arg-type]  # aioapns types it NoReturn
            self._auth_provider,
        )
        # Bounded like a push: an APNs that is unreachable without refusing (packets dropped,
        # a handshake never answered) would hold every push behind the pool's lock for the
        # OS's connect timeout or asyncio's minute of TLS handshake.
        async with asyncio.timeout(self._connect_timeout):
            _, protocol = await self.loop.create_connection(
                protocol_factory,
                host=self.protocol_class.APNS_SERVER,
                port=self.protocol_class.APNS_PORT,
                ssl=self.ssl_context,
            )
        return protocol
