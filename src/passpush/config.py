"""Settings from PASSPUSH_* environment variables (docs/configuration.md)."""

from __future__ import annotations

import enum
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Literal
from urllib.parse import urlsplit

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from passpush.api.server import DEFAULT_MAX_MESSAGE_BYTES
from passpush.delivery.apple.gateway import ApnsConfig
from passpush.delivery.google.gateway import GOOGLE_API_BASE, GOOGLE_TOKEN_URL, GoogleWalletConfig
from passpush.delivery.worker import WorkerSettings
from passpush.domain.outcomes import RetryPolicy
from passpush.metrics import DEFAULT_METRICS_ADDRESS
from passpush.service.keys import DEFAULT_CACHE_SECONDS
from passpush.service.status import DEFAULT_EVENT_RETENTION
from passpush.store.db import DEFAULT_DATABASE_URL
from passpush.tls import TlsFiles

APPLE_APNS_ENDPOINT = "api.push.apple.com:443"
DEFAULT_PASSKIT_PREFIX = "/passkit"


class Role(enum.StrEnum):
    """What a `passpush serve` process runs (passpush/app/ says what each holds)."""

    API = "api"  # the gRPC and HTTP servers: accepts Sends, answers reads, serves devices
    WORKER = "worker"  # the delivery worker and the loops beside it: pushes, no port
    ALL = "all"  # both in one process

    @property
    def serves_api(self) -> bool:
        return self is not Role.WORKER

    @property
    def runs_worker(self) -> bool:
        return self is not Role.API

    @classmethod
    def parse(cls, value: str, name: str) -> Role:
        """`value` as a role; ValueError naming `name` (a setting or an option) if none."""
        try:
            return cls(value.strip().lower())
        except ValueError:
            roles = ", ".join(r.value for r in cls)
            raise ValueError(f"{name} must be one of {roles}, got {value!r}") from None


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
    # How the HTTP processes yield the CPU to the API, the pushes and the database: "idle"
    # (Linux's SCHED_IDLE: they run when nothing else wants the CPU), or a nice value to add.
    http_nice: int | Literal["idle"] = "idle"
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
    # None: the gRPC and HTTP ports speak plaintext (`serve` warns unless on loopback).
    tls: TlsFiles | None = None
    # What this process runs (`serve --role` wins over PASSPUSH_ROLE).
    role: Role = Role.ALL

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> Settings:
        def get(name: str) -> str | None:
            return env.get(f"PASSPUSH_{name}") or None

        def flag(name: str) -> bool:
            value = (get(name) or "0").lower()
            if value not in ("0", "1", "true", "false"):
                raise ValueError(f"PASSPUSH_{name} must be 1 or 0, got {value!r}")
            return value in ("1", "true")

        def number(name: str, default: float, *, unit: str = "", above_zero: bool = False) -> float:
            """A finite number, above 0 or at least 0; `unit` names it in the message."""
            value = get(name)
            if value is None:
                return default
            try:
                parsed = float(value)
            except ValueError:
                parsed = math.nan
            if not math.isfinite(parsed) or parsed < 0 or (above_zero and parsed == 0):
                of_unit = f" of {unit}" if unit else ""
                bound = "above 0" if above_zero else "of 0 or more"
                raise ValueError(
                    f"PASSPUSH_{name} must be a number{of_unit} {bound}, got {value!r}"
                )
            return parsed

        def whole(name: str, default: int, minimum: int = 1, maximum: int | None = None) -> int:
            value = get(name)
            if value is None:
                return default
            try:
                parsed = int(value)
            except ValueError:
                parsed = minimum - 1
            if parsed < minimum or (maximum is not None and parsed > maximum):
                takes = (
                    f"of {minimum} or more" if maximum is None else f"from {minimum} to {maximum}"
                )
                raise ValueError(f"PASSPUSH_{name} must be a whole number {takes}, got {value!r}")
            return parsed

        def address(name: str, default: str) -> str:
            value = get(name) or default
            _host, colon, port = value.rpartition(":")
            if not (colon and port.isdigit() and int(port) <= 65535):
                example = f"0.0.0.0:{default.rpartition(':')[2]}"
                raise ValueError(
                    f"PASSPUSH_{name} must be HOST:PORT (such as {example}; port 0: any free "
                    f"one), got {value!r}"
                )
            return value

        defaults = WorkerSettings()
        worker = WorkerSettings(
            batch_size=whole("WORKER_BATCH_SIZE", defaults.batch_size),
            max_in_flight=whole("WORKER_IN_FLIGHT", defaults.max_in_flight),
            lease=timedelta(
                seconds=number(
                    "WORKER_LEASE_SECONDS", defaults.lease.seconds, unit="seconds", above_zero=True
                )
            ),
            poll_interval=number(
                "WORKER_POLL_SECONDS", defaults.poll_interval, unit="seconds", above_zero=True
            ),
            retry=RetryPolicy(budget=number("RETRY_BUDGET", defaults.retry.budget, unit="seconds")),
        )
        apns_connections = whole("APNS_CONNECTIONS", cls.apns_connections)
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
        http_address = address("HTTP_ADDRESS", cls.http_address)
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
        tls = None
        tls_cert, tls_key, client_ca = get("TLS_CERT"), get("TLS_KEY"), get("TLS_CLIENT_CA")
        if tls_cert or tls_key or client_ca:
            if not (tls_cert and tls_key):
                raise ValueError(
                    "PASSPUSH_TLS_CERT and PASSPUSH_TLS_KEY go together "
                    "(and PASSPUSH_TLS_CLIENT_CA needs them)"
                )
            tls = TlsFiles(tls_cert, tls_key, client_ca)
        http_processes = whole("HTTP_PROCESSES", os.cpu_count() or 1, minimum=0, maximum=64)
        http_nice = _http_nice(get("HTTP_NICE"))
        max_message_bytes = whole("GRPC_MAX_MESSAGE_BYTES", cls.grpc_max_message_bytes)
        google_rate = number("GOOGLE_RATE", cls.google_rate, above_zero=True)
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
        scheme = "https" if tls else "http"
        passkit_url = (get("PASSKIT_URL") or f"{scheme}://{http_address}{prefix}").rstrip("/")
        if urlsplit(passkit_url).scheme.lower() not in ("http", "https"):
            raise ValueError(
                "PASSPUSH_PASSKIT_URL must be an http:// or https:// URL (devices need "
                f"https://), got {passkit_url!r}"
            )
        # Unlike the others, set and empty means something: no metrics.
        metrics_address = env.get("PASSPUSH_METRICS_ADDRESS", DEFAULT_METRICS_ADDRESS).strip()
        if metrics_address:
            metrics_address = address("METRICS_ADDRESS", DEFAULT_METRICS_ADDRESS)
        return cls(
            database_url=_database_url(get("DATABASE_URL") or DEFAULT_DATABASE_URL),
            grpc_address=address("GRPC_ADDRESS", cls.grpc_address),
            grpc_max_message_bytes=max_message_bytes,
            http_address=http_address,
            http_processes=http_processes,
            http_nice=http_nice,
            apns=apns,
            data_dir=get("DATA_DIR") or cls.data_dir,
            shutdown_grace=number("SHUTDOWN_GRACE", cls.shutdown_grace, unit="seconds"),
            worker=worker,
            apns_connections=apns_connections,
            google=google,
            google_rate=google_rate,
            fakes=flag("FAKES"),
            key_cache_seconds=number("KEY_CACHE_SECONDS", cls.key_cache_seconds, unit="seconds"),
            event_retention=timedelta(
                days=number(
                    "EVENT_RETENTION_DAYS",
                    DEFAULT_EVENT_RETENTION.days,
                    unit="days",
                    above_zero=True,
                )
            ),
            passkit_prefix=prefix,
            passkit_url=passkit_url,
            apple_signing=signing,
            metrics_address=metrics_address,
            tls=tls,
            role=Role.parse(get("ROLE") or Role.ALL.value, "PASSPUSH_ROLE"),
        )


# The drivers passpush installs; another (psycopg2's `postgresql://`) fails only when used.
DATABASE_DRIVERS = ("sqlite+aiosqlite", "postgresql+asyncpg")


def _http_nice(value: str | None) -> int | Literal["idle"]:
    if value is None or value == "idle":
        return "idle"
    if value.isdigit() and int(value) <= 19:
        return int(value)
    raise ValueError(
        f"PASSPUSH_HTTP_NICE must be idle or a whole number from 0 to 19, got {value!r}"
    )


def _database_url(value: str) -> str:
    takes = "sqlite+aiosqlite:///FILE or postgresql+asyncpg://USER:PASSWORD@HOST:PORT/DATABASE"
    try:
        url = make_url(value)
    except ArgumentError:
        # Not echoed: it may hold a password.
        raise ValueError(f"PASSPUSH_DATABASE_URL must be {takes}; it is not a URL") from None
    if url.drivername not in DATABASE_DRIVERS:
        shown = url.render_as_string(hide_password=True)
        raise ValueError(f"PASSPUSH_DATABASE_URL must be {takes}, got {shown!r}")
    return value
