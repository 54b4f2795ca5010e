"""Settings from PASSPUSH_* environment variables (DESIGN.md, "Configuration")."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta

from passpush.api.server import DEFAULT_MAX_MESSAGE_BYTES
from passpush.delivery.apns import ApnsConfig
from passpush.delivery.google import GOOGLE_API_BASE, GOOGLE_TOKEN_URL, GoogleWalletConfig
from passpush.delivery.worker import WorkerSettings
from passpush.domain.outcomes import RetryPolicy
from passpush.metrics import DEFAULT_METRICS_ADDRESS
from passpush.service.keys import DEFAULT_CACHE_SECONDS
from passpush.service.status import DEFAULT_EVENT_RETENTION
from passpush.store.db import DEFAULT_DATABASE_URL

APPLE_APNS_ENDPOINT = "api.push.apple.com:443"
DEFAULT_PASSKIT_PREFIX = "/passkit"


@dataclass(frozen=True)
class SigningFiles:
    """The server's default pass signing material: PEM files (the key may be in the
    certificate's file)."""

    certificate: str
    private_key: str
    wwdr_certificate: str


@dataclass(frozen=True)
class Settings:
    database_url: str = DEFAULT_DATABASE_URL
    grpc_address: str = "127.0.0.1:50051"
    # The largest gRPC request taken in, in bytes; larger ones are RESOURCE_EXHAUSTED.
    grpc_max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    http_address: str = "127.0.0.1:8080"
    # How many processes serve HTTP (the shim and the PassKit web service), beside the gRPC
    # server's; 0 serves it in the gRPC server's process. By default one per CPU: devices
    # fetching passes after a broadcast is CPU work (a signature each) for every core.
    http_processes: int = field(default_factory=lambda: os.cpu_count() or 1)
    # The nice value the HTTP processes add to their own: the API and the pushes come first.
    http_nice: int = 10
    # None: no APNs endpoint and no credentials: Apple deliveries fail, naming the settings
    # (or, with `fakes`, go to the bundled fake APNs).
    apns: ApnsConfig | None = None
    data_dir: str = "var"
    shutdown_grace: float = 10.0  # seconds SIGTERM gives in-flight work to finish
    worker: WorkerSettings = field(default_factory=WorkerSettings)
    apns_connections: int = 4
    # None: neither Google credentials nor an API base: Google deliveries fail, naming the
    # settings (or, with `fakes`, go to the bundled fake Google Wallet API).
    google: GoogleWalletConfig | None = None
    # Start the bundled fakes for the wallets without settings (`serve --fakes`, `make run`):
    # a demo or a test, whose deliveries leave nothing on a device.
    fakes: bool = False
    # Google Wallet API requests per second per issuer: of this process on SQLite, of every
    # replica together on PostgreSQL.
    google_rate: float = 20.0
    # How long a live API key is trusted without reading it again: a revocation from the
    # CLI or another replica reaches this server within that time.
    key_cache_seconds: float = DEFAULT_CACHE_SECONDS
    # How long delivery events stay readable by StreamDeliveryEvents.
    event_retention: timedelta = DEFAULT_EVENT_RETENTION
    # Where the HTTP server serves the PassKit web service, and the public URL of that
    # place, written into every pass as its webServiceURL.
    passkit_prefix: str = DEFAULT_PASSKIT_PREFIX
    passkit_url: str = f"http://127.0.0.1:8080{DEFAULT_PASSKIT_PREFIX}"
    # None: no default; only templates with their own material can be signed.
    apple_signing: SigningFiles | None = None
    # Where /metrics is served (host:port); empty: nowhere.
    metrics_address: str = DEFAULT_METRICS_ADDRESS

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> Settings:
        def get(name: str) -> str | None:
            return env.get(f"PASSPUSH_{name}") or None

        def flag(name: str) -> bool:
            value = (get(name) or "0").lower()
            if value not in ("0", "1", "true", "false"):
                raise ValueError(f"PASSPUSH_{name} must be 1 or 0, got {value!r}")
            return value in ("1", "true")

        def number(name: str, default: float) -> float:
            value = get(name)
            return default if value is None else float(value)

        defaults = WorkerSettings()
        worker = WorkerSettings(
            batch_size=int(number("WORKER_BATCH_SIZE", defaults.batch_size)),
            max_in_flight=int(number("WORKER_IN_FLIGHT", defaults.max_in_flight)),
            lease=timedelta(seconds=number("WORKER_LEASE_SECONDS", defaults.lease.seconds)),
            poll_interval=number("WORKER_POLL_SECONDS", defaults.poll_interval),
            retry=RetryPolicy(budget=number("RETRY_BUDGET", defaults.retry.budget)),
        )
        apns_connections = int(number("APNS_CONNECTIONS", cls.apns_connections))
        endpoint = get("APNS_ENDPOINT")
        credentials = get("APNS_CERT") or get("APNS_KEY_FILE")
        apns = None
        if endpoint or credentials:
            apns = ApnsConfig(
                endpoint=endpoint or APPLE_APNS_ENDPOINT,
                ca_file=get("APNS_CA_FILE"),
                cert_file=get("APNS_CERT"),
                key_file=get("APNS_KEY_FILE"),
                key_id=get("APNS_KEY_ID"),
                team_id=get("APNS_TEAM_ID"),
                max_connections=apns_connections,
            )
        http_address = get("HTTP_ADDRESS") or cls.http_address
        prefix = "/" + (get("PASSKIT_PREFIX") or DEFAULT_PASSKIT_PREFIX).strip("/")
        if prefix == "/":
            raise ValueError("PASSPUSH_PASSKIT_PREFIX must name a path, such as /passkit")
        signing = None
        certificate, wwdr = get("APPLE_SIGNING_CERT"), get("APPLE_SIGNING_WWDR")
        if certificate or wwdr or get("APPLE_SIGNING_KEY"):
            if not (certificate and wwdr):
                raise ValueError(
                    "PASSPUSH_APPLE_SIGNING_CERT and PASSPUSH_APPLE_SIGNING_WWDR go together "
                    "(and PASSPUSH_APPLE_SIGNING_KEY, unless the key is in the CERT file)"
                )
            signing = SigningFiles(certificate, get("APPLE_SIGNING_KEY") or certificate, wwdr)
        http_processes = int(number("HTTP_PROCESSES", os.cpu_count() or 1))
        if not 0 <= http_processes <= 64:
            raise ValueError("PASSPUSH_HTTP_PROCESSES must be 0 to 64 (0: in the gRPC process)")
        http_nice = int(number("HTTP_NICE", cls.http_nice))
        if not 0 <= http_nice <= 19:
            raise ValueError("PASSPUSH_HTTP_NICE must be 0 to 19")
        max_message_bytes = int(number("GRPC_MAX_MESSAGE_BYTES", cls.grpc_max_message_bytes))
        if max_message_bytes < 1:
            raise ValueError("PASSPUSH_GRPC_MAX_MESSAGE_BYTES must be a positive number of bytes")
        google_rate = number("GOOGLE_RATE", cls.google_rate)
        google_credentials = get("GOOGLE_CREDENTIALS")
        google_api_base = get("GOOGLE_API_BASE")
        google = None
        if google_credentials or google_api_base:
            google = GoogleWalletConfig(
                credentials_file=google_credentials,
                api_base=google_api_base or GOOGLE_API_BASE,
                token_url=get("GOOGLE_TOKEN_URL") or GOOGLE_TOKEN_URL,
                rate=google_rate,
            )
        # Unlike the others, set and empty means something: no metrics.
        metrics_address = env.get("PASSPUSH_METRICS_ADDRESS", DEFAULT_METRICS_ADDRESS).strip()
        if metrics_address and not _is_host_port(metrics_address):
            raise ValueError(
                "PASSPUSH_METRICS_ADDRESS must be host:port, such as 127.0.0.1:9464 "
                f"(empty: no metrics), got {metrics_address!r}"
            )
        return cls(
            database_url=get("DATABASE_URL") or DEFAULT_DATABASE_URL,
            grpc_address=get("GRPC_ADDRESS") or cls.grpc_address,
            grpc_max_message_bytes=max_message_bytes,
            http_address=http_address,
            http_processes=http_processes,
            http_nice=http_nice,
            apns=apns,
            data_dir=get("DATA_DIR") or cls.data_dir,
            shutdown_grace=number("SHUTDOWN_GRACE", cls.shutdown_grace),
            worker=worker,
            apns_connections=apns_connections,
            google=google,
            google_rate=google_rate,
            fakes=flag("FAKES"),
            key_cache_seconds=number("KEY_CACHE_SECONDS", cls.key_cache_seconds),
            event_retention=timedelta(
                days=number("EVENT_RETENTION_DAYS", DEFAULT_EVENT_RETENTION.days)
            ),
            passkit_prefix=prefix,
            passkit_url=(get("PASSKIT_URL") or f"http://{http_address}{prefix}").rstrip("/"),
            apple_signing=signing,
            metrics_address=metrics_address,
        )


def _is_host_port(address: str) -> bool:
    host, _, port = address.rpartition(":")
    return bool(host) and port.isdigit() and int(port) <= 65535
