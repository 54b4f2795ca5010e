"""PASSPUSH_* variables: which APNs the server talks to, and how it authenticates."""

from __future__ import annotations

import os

import pytest

from passpush.config import APPLE_APNS_ENDPOINT, Settings, SigningFiles
from passpush.store.db import DEFAULT_DATABASE_URL


def test_defaults_use_sqlite_and_no_wallet_and_no_fakes() -> None:
    settings = Settings.from_env({})
    assert settings.database_url == DEFAULT_DATABASE_URL
    assert settings.grpc_address == "127.0.0.1:50051"
    assert settings.apns is None and settings.google is None
    assert not settings.fakes  # Apple and Google deliveries fail, naming the settings


def test_the_bundled_fakes_are_asked_for_explicitly() -> None:
    assert Settings.from_env({"PASSPUSH_FAKES": "1"}).fakes
    assert Settings.from_env({"PASSPUSH_FAKES": "true"}).fakes
    assert not Settings.from_env({"PASSPUSH_FAKES": "0"}).fakes
    with pytest.raises(ValueError, match="PASSPUSH_FAKES"):
        Settings.from_env({"PASSPUSH_FAKES": "maybe"})


def test_certificate_auth_goes_to_apple_unless_an_endpoint_is_named() -> None:
    settings = Settings.from_env({"PASSPUSH_APNS_CERT": "/secrets/pass.pem"})
    assert settings.apns is not None
    assert (settings.apns.endpoint, settings.apns.cert_file) == (
        APPLE_APNS_ENDPOINT,
        "/secrets/pass.pem",
    )


def test_token_auth_and_a_named_endpoint_with_its_ca() -> None:
    settings = Settings.from_env(
        {
            "PASSPUSH_APNS_ENDPOINT": "127.0.0.1:2197",
            "PASSPUSH_APNS_CA_FILE": "/tmp/ca.pem",
            "PASSPUSH_APNS_KEY_FILE": "/secrets/AuthKey.p8",
            "PASSPUSH_APNS_KEY_ID": "ABC123DEFG",
            "PASSPUSH_APNS_TEAM_ID": "TEAM123456",
            "PASSPUSH_DATABASE_URL": "postgresql+asyncpg://postgres@127.0.0.1/test",
        }
    )
    apns = settings.apns
    assert apns is not None
    assert (apns.endpoint, apns.ca_file) == ("127.0.0.1:2197", "/tmp/ca.pem")
    assert (apns.key_file, apns.key_id, apns.team_id) == (
        "/secrets/AuthKey.p8",
        "ABC123DEFG",
        "TEAM123456",
    )
    assert apns.cert_file is None
    assert settings.database_url.startswith("postgresql+asyncpg://")


def test_worker_tuning_comes_from_the_environment() -> None:
    settings = Settings.from_env(
        {
            "PASSPUSH_WORKER_BATCH_SIZE": "50",
            "PASSPUSH_WORKER_LEASE_SECONDS": "2.5",
            "PASSPUSH_WORKER_IN_FLIGHT": "20",
            "PASSPUSH_APNS_CONNECTIONS": "2",
            "PASSPUSH_APNS_ENDPOINT": "127.0.0.1:2197",
        }
    )
    assert (settings.worker.batch_size, settings.worker.max_in_flight) == (50, 20)
    assert settings.worker.lease.total_seconds() == 2.5
    assert settings.apns is not None and settings.apns.max_connections == 2


def test_transient_failures_are_retried_for_an_hour_unless_configured() -> None:
    assert Settings.from_env({}).worker.retry.budget == 3600.0
    settings = Settings.from_env({"PASSPUSH_RETRY_BUDGET": "7200"})
    assert settings.worker.retry.budget == 7200.0


def test_the_passkit_web_service_is_under_a_prefix_of_the_http_address_by_default() -> None:
    default = Settings.from_env({"PASSPUSH_HTTP_ADDRESS": "127.0.0.1:9000"})
    moved = Settings.from_env(
        {
            "PASSPUSH_PASSKIT_PREFIX": "wallet/",
            "PASSPUSH_PASSKIT_URL": "https://passes.example.com/wallet/",
        }
    )

    assert (default.passkit_prefix, default.passkit_url) == (
        "/passkit",
        "http://127.0.0.1:9000/passkit",
    )
    assert (moved.passkit_prefix, moved.passkit_url) == (
        "/wallet",
        "https://passes.example.com/wallet",
    )
    with pytest.raises(ValueError, match="PASSPUSH_PASSKIT_PREFIX"):
        Settings.from_env({"PASSPUSH_PASSKIT_PREFIX": "/"})


def test_the_signing_key_may_share_the_certificates_file_but_the_wwdr_is_required() -> None:
    shared = Settings.from_env(
        {"PASSPUSH_APPLE_SIGNING_CERT": "/s/pass.pem", "PASSPUSH_APPLE_SIGNING_WWDR": "/s/w.pem"}
    )
    separate = Settings.from_env(
        {
            "PASSPUSH_APPLE_SIGNING_CERT": "/s/pass.pem",
            "PASSPUSH_APPLE_SIGNING_KEY": "/s/key.pem",
            "PASSPUSH_APPLE_SIGNING_WWDR": "/s/w.pem",
        }
    )

    assert Settings.from_env({}).apple_signing is None
    assert shared.apple_signing == SigningFiles("/s/pass.pem", "/s/pass.pem", "/s/w.pem")
    assert separate.apple_signing == SigningFiles("/s/pass.pem", "/s/key.pem", "/s/w.pem")
    with pytest.raises(ValueError, match="PASSPUSH_APPLE_SIGNING_WWDR"):
        Settings.from_env({"PASSPUSH_APPLE_SIGNING_CERT": "/s/pass.pem"})


def test_without_google_credentials_there_is_no_google_config() -> None:
    settings = Settings.from_env({"PASSPUSH_GOOGLE_RATE": "5"})
    assert settings.google is None and settings.google_rate == 5


def test_google_credentials_go_to_google_unless_endpoints_are_named() -> None:
    google = Settings.from_env({"PASSPUSH_GOOGLE_CREDENTIALS": "/secrets/sa.json"}).google
    assert google is not None
    assert (google.credentials_file, google.api_base, google.token_url, google.rate) == (
        "/secrets/sa.json",
        "https://walletobjects.googleapis.com",
        "https://oauth2.googleapis.com/token",
        20.0,
    )
    named = Settings.from_env(
        {
            "PASSPUSH_GOOGLE_CREDENTIALS": "/secrets/sa.json",
            "PASSPUSH_GOOGLE_API_BASE": "http://127.0.0.1:8095",
            "PASSPUSH_GOOGLE_TOKEN_URL": "http://127.0.0.1:8095/token",
            "PASSPUSH_GOOGLE_RATE": "10",
        }
    ).google
    assert named is not None
    assert (named.api_base, named.token_url, named.rate) == (
        "http://127.0.0.1:8095",
        "http://127.0.0.1:8095/token",
        10.0,
    )


def test_the_grpc_message_limit_defaults_to_4_mib() -> None:
    assert Settings.from_env({}).grpc_max_message_bytes == 4 * 1024 * 1024
    named = Settings.from_env({"PASSPUSH_GRPC_MAX_MESSAGE_BYTES": "8388608"})
    assert named.grpc_max_message_bytes == 8 * 1024 * 1024
    with pytest.raises(ValueError, match="PASSPUSH_GRPC_MAX_MESSAGE_BYTES"):
        Settings.from_env({"PASSPUSH_GRPC_MAX_MESSAGE_BYTES": "0"})


def test_http_runs_in_one_lower_priority_process_per_cpu_unless_configured() -> None:
    defaults = Settings.from_env({})
    tuned = Settings.from_env({"PASSPUSH_HTTP_PROCESSES": "0", "PASSPUSH_HTTP_NICE": "5"})

    idle = Settings.from_env({"PASSPUSH_HTTP_NICE": "idle"})

    assert (defaults.http_processes, defaults.http_nice) == (os.cpu_count() or 1, "idle")
    assert (tuned.http_processes, tuned.http_nice) == (0, 5)
    assert idle.http_nice == "idle"
    for name, value in [("HTTP_PROCESSES", "-1"), ("HTTP_PROCESSES", "65"), ("HTTP_NICE", "20")]:
        with pytest.raises(ValueError, match=f"PASSPUSH_{name}"):
            Settings.from_env({f"PASSPUSH_{name}": value})


# Every setting that takes a number, with a value it refuses and what its message says it takes.
NUMBERS = [
    ("GRPC_MAX_MESSAGE_BYTES", "4MiB", "a whole number of 1 or more"),
    ("HTTP_PROCESSES", "two", "a whole number from 0 to 64"),
    ("HTTP_NICE", "5.5", "idle or a whole number from 0 to 19"),
    ("SHUTDOWN_GRACE", "-1", "a number of seconds of 0 or more"),
    ("WORKER_BATCH_SIZE", "abc", "a whole number of 1 or more"),
    ("WORKER_IN_FLIGHT", "0", "a whole number of 1 or more"),
    ("WORKER_LEASE_SECONDS", "0", "a number of seconds above 0"),
    ("WORKER_POLL_SECONDS", "nan", "a number of seconds above 0"),
    ("RETRY_BUDGET", "1h", "a number of seconds of 0 or more"),
    ("APNS_CONNECTIONS", "", None),  # empty is unset
    ("APNS_CONNECTIONS", "-2", "a whole number of 1 or more"),
    ("GOOGLE_RATE", "inf", "a number above 0"),
    ("EVENT_RETENTION_DAYS", "a week", "a number of days above 0"),
    ("KEY_CACHE_SECONDS", "-5", "a number of seconds of 0 or more"),
]


@pytest.mark.parametrize(("name", "value", "takes"), NUMBERS)
def test_a_bad_number_names_its_setting_and_what_it_takes(
    name: str, value: str, takes: str | None
) -> None:
    if takes is None:
        Settings.from_env({f"PASSPUSH_{name}": value})
        return
    with pytest.raises(ValueError) as refused:
        Settings.from_env({f"PASSPUSH_{name}": value})
    assert str(refused.value) == f"PASSPUSH_{name} must be {takes}, got {value!r}"


@pytest.mark.parametrize("name", ["GRPC_ADDRESS", "HTTP_ADDRESS"])
@pytest.mark.parametrize("value", ["localhost", "localhost:http", "127.0.0.1:65536"])
def test_a_listen_address_is_host_and_port(name: str, value: str) -> None:
    with pytest.raises(ValueError, match=f"^PASSPUSH_{name} must be HOST:PORT"):
        Settings.from_env({f"PASSPUSH_{name}": value})
    assert Settings.from_env({f"PASSPUSH_{name}": "[::]:0"})


def test_the_database_url_names_a_driver_passpush_has_and_hides_its_password() -> None:
    for url in ("postgresql://app:s3cret@db/passpush", "mysql+aiomysql://db/x", "not a url"):
        with pytest.raises(ValueError, match=r"^PASSPUSH_DATABASE_URL must be") as refused:
            Settings.from_env({"PASSPUSH_DATABASE_URL": url})
        assert "s3cret" not in str(refused.value)
    named = "postgresql+asyncpg://app:s3cret@db:5432/passpush"
    assert Settings.from_env({"PASSPUSH_DATABASE_URL": named}).database_url == named


def test_the_passkit_url_is_an_http_url() -> None:
    with pytest.raises(ValueError, match=r"^PASSPUSH_PASSKIT_URL must be an http"):
        Settings.from_env({"PASSPUSH_PASSKIT_URL": "passes.example.com/passkit"})


def test_metrics_are_served_on_their_own_address_unless_it_is_set_empty() -> None:
    assert Settings.from_env({}).metrics_address == "127.0.0.1:9464"
    moved = Settings.from_env({"PASSPUSH_METRICS_ADDRESS": "0.0.0.0:9100"})
    assert moved.metrics_address == "0.0.0.0:9100"
    assert Settings.from_env({"PASSPUSH_METRICS_ADDRESS": ""}).metrics_address == ""
    for bad in ("9464", "localhost", "127.0.0.1:http", "127.0.0.1:70000"):
        with pytest.raises(ValueError, match=r"^PASSPUSH_METRICS_ADDRESS must be HOST:PORT"):
            Settings.from_env({"PASSPUSH_METRICS_ADDRESS": bad})
