"""Settings from PASSPUSH_* environment variables (DESIGN.md, "Configuration")."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from passpush.delivery.apns import ApnsConfig
from passpush.store.db import DEFAULT_DATABASE_URL

APPLE_APNS_ENDPOINT = "api.push.apple.com:443"


@dataclass(frozen=True)
class Settings:
    database_url: str = DEFAULT_DATABASE_URL
    grpc_address: str = "127.0.0.1:50051"
    http_address: str = "127.0.0.1:8080"
    # None: no APNs endpoint and no credentials, so `serve` starts the bundled fake APNs.
    apns: ApnsConfig | None = None
    data_dir: str = "var"
    shutdown_grace: float = 10.0  # seconds SIGTERM gives in-flight work to finish

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> Settings:
        def get(name: str) -> str | None:
            return env.get(f"PASSPUSH_{name}") or None

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
            )
        return cls(
            database_url=get("DATABASE_URL") or DEFAULT_DATABASE_URL,
            grpc_address=get("GRPC_ADDRESS") or cls.grpc_address,
            http_address=get("HTTP_ADDRESS") or cls.http_address,
            apns=apns,
            data_dir=get("DATA_DIR") or cls.data_dir,
            shutdown_grace=float(get("SHUTDOWN_GRACE") or cls.shutdown_grace),
        )
