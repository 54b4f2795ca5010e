"""The APNs gateway: sends Apple Wallet pass pushes and returns APNs' answers as they are.

Over the connection pool (pool.py) and the fixed aioapns protocol (protocol.py). Retrying
429/5xx and lost connections, and what an answer means for a delivery, is the Apple
deliverer's (deliverer.py).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from dataclasses import dataclass

from aioapns.common import NotificationRequest
from aioapns.connection import AuthorizationHeaderProvider, JWTAuthorizationHeaderProvider
from aioapns.exceptions import ConnectionClosed
from aioapns.exceptions import ConnectionError as ApnsConnectError
from h2.exceptions import ProtocolError

from passpush.delivery.apple.pool import ApnsConnectionPool
from passpush.delivery.apple.protocol import (
    ApnsRequestTimeout,
    WalletApnsProtocol,
    protocol_class_for,
)
from passpush.metrics import APNS_SECONDS

logger = logging.getLogger(__name__)

TIMEOUT = "Timeout"
CONNECTION_LOST = "ConnectionLost"


@dataclass(frozen=True)
class ApnsConfig:
    """Where APNs is and how to authenticate.

    Neither credential means no client auth, which only a non-Apple endpoint (the bundled fake)
    accepts; against Apple's hosts the gateway refuses it at once.
    """

    endpoint: str = "api.push.apple.com:443"  # host:port ([v6]:port)
    ca_file: str | None = None  # CA bundle to trust instead of the system's (tests, fakes)
    cert_file: str | None = None  # PEM certificate + key: Pass Type ID certificate auth
    key_file: str | None = None  # .p8 key: token auth, with key_id and team_id
    key_id: str | None = None
    team_id: str | None = None
    max_connections: int = 4
    request_timeout: float = 10.0  # seconds, per push, from sending to APNs' answer


@dataclass(frozen=True)
class PushOutcome:
    """APNs' answer to one push."""

    status: int  # HTTP status from APNs; 0 when no answer came (connection lost, timeout)
    reason: str  # APNs' reason ("BadDeviceToken", ...); "" on 200; TIMEOUT / CONNECTION_LOST

    @property
    def delivered(self) -> bool:
        return self.status == 200


class ApnsGateway:
    """Sends Wallet pass pushes to APNs and reports each answer as a PushOutcome."""

    def __init__(self, config: ApnsConfig) -> None:
        if config.max_connections < 1:
            raise ValueError("APNs max_connections must be at least 1")
        if config.request_timeout <= 0:
            raise ValueError("APNs request_timeout must be positive")
        host, port = _parse_endpoint(config.endpoint)
        auth_provider = _token_auth(config)
        if config.cert_file is None and auth_provider is None and _is_apple(host):
            raise ValueError(
                f"APNs at {config.endpoint} needs credentials: a Pass Type ID certificate "
                "(cert_file) or a .p8 key (key_file, key_id, team_id)"
            )
        self._config = config
        self._protocol_class = protocol_class_for(host, port, config.request_timeout)
        self._ssl_context = _ssl_context(config)
        self._auth_provider = auth_provider
        self._pool: ApnsConnectionPool | None = None  # made on first push, inside the running loop
        self._closed = False

    async def push(self, device_token: str, topic: str) -> PushOutcome:
        """Push the Wallet update to one device; APNs' answer, or status 0 when none came."""
        # A Wallet pass push is an empty JSON dictionary; the device then asks the PassKit web
        # service what changed. No apns-push-type or priority: Apple's defaults suit Wallet.
        request = NotificationRequest(device_token, {}, apns_topic=topic)
        short_token = device_token[:8]
        started = time.perf_counter()
        try:
            # Not pool.send_notification: it re-sends on a lost connection (up to 5 times,
            # sleeping 1 s); retrying is the delivery worker's call, made on the outcome.
            connection = await self._connection_pool().acquire()
            result = await connection.send_notification(request)
        except ApnsRequestTimeout:
            logger.warning(
                "APNs push to %s… got no answer within %s s",
                short_token,
                self._protocol_class.REQUEST_TIMEOUT,
            )
            return PushOutcome(0, TIMEOUT)
        except (ConnectionClosed, ApnsConnectError, ProtocolError) as error:
            logger.warning("APNs push to %s… got no answer: %r", short_token, error)
            return PushOutcome(0, CONNECTION_LOST)
        finally:
            APNS_SECONDS.observe(time.perf_counter() - started)
        return PushOutcome(int(result.status or 0), result.description or "")

    async def close(self) -> None:
        """Close the connections; pushes still in flight end as CONNECTION_LOST."""
        self._closed = True
        pool, self._pool = self._pool, None
        if pool is None:
            return
        closing = [c.closed for c in pool.connections if isinstance(c, WalletApnsProtocol)]
        pool.close()
        if closing:  # let the TLS shutdowns finish so no transport outlives the gateway
            await asyncio.wait(closing, timeout=1.0)

    def _connection_pool(self) -> ApnsConnectionPool:
        if self._closed:
            raise RuntimeError("the APNs gateway is closed")
        if self._pool is None:
            self._pool = ApnsConnectionPool(
                self._protocol_class,
                self._ssl_context,
                self._auth_provider,
                self._config.max_connections,
            )
        return self._pool


def _parse_endpoint(endpoint: str) -> tuple[str, int]:
    host, separator, port = endpoint.rpartition(":")
    if not separator or not host or not port.isdigit():
        raise ValueError(f"APNs endpoint must be host:port, got {endpoint!r}")
    return host.removeprefix("[").removesuffix("]"), int(port)


def _is_apple(host: str) -> bool:
    return host == "push.apple.com" or host.endswith(".push.apple.com")


def _ssl_context(config: ApnsConfig) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=config.ca_file)
    context.set_alpn_protocols(["h2"])
    if config.cert_file is not None:
        context.load_cert_chain(config.cert_file)  # certificate auth happens in the handshake
    return context


def _token_auth(config: ApnsConfig) -> AuthorizationHeaderProvider | None:
    """A JWT header provider for token auth, or None when no key is configured."""
    token_settings = (config.key_file, config.key_id, config.team_id)
    if all(setting is None for setting in token_settings):
        return None
    if any(setting is None for setting in token_settings):
        raise ValueError("APNs token auth needs key_file, key_id and team_id together")
    if config.cert_file is not None:
        raise ValueError("configure APNs certificate auth or token auth, not both")
    assert config.key_file is not None
    with open(config.key_file, encoding="ascii") as key_file:
        key = key_file.read()
    # One provider for all connections: APNs refuses tokens refreshed too often.
    provider: AuthorizationHeaderProvider = JWTAuthorizationHeaderProvider(
        key, config.key_id, config.team_id
    )
    try:
        provider.get_header()  # a bad key fails here, not on the first push
    except Exception as error:
        raise ValueError(f"APNs key {config.key_file} cannot sign tokens: {error}") from error
    return provider
