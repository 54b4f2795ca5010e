"""TLS for the server's own ports: its PEM files, checked at start, and what gRPC takes.

The files are read and checked here, once, so that a wrong path, a file that holds no
certificate or key, or a key of another certificate stops `passpush serve` with a message
naming the setting, rather than a handshake failing later or a traceback.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization

_SPKI = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


@dataclass(frozen=True)
class TlsFiles:
    """The server's certificate (its chain, leaf first) and key, PEM files; with
    `client_ca`, gRPC callers must present a certificate that CA issued."""

    certificate: str
    private_key: str
    client_ca: str | None = None


@dataclass(frozen=True)
class ServerTls:
    """The contents of the TLS files, checked."""

    files: TlsFiles
    certificate_chain: bytes
    private_key: bytes
    client_ca: bytes | None

    def grpc_credentials(self) -> grpc.ServerCredentials:
        return grpc.ssl_server_credentials(
            [(self.private_key, self.certificate_chain)],
            root_certificates=self.client_ca,
            require_client_auth=self.client_ca is not None,
        )


def load_server_tls(files: TlsFiles) -> ServerTls:
    """Reads and checks the files; ValueError naming the setting when one is wrong."""
    chain = _read("PASSPUSH_TLS_CERT", files.certificate)
    key = _read("PASSPUSH_TLS_KEY", files.private_key)
    certificates = _certificates("PASSPUSH_TLS_CERT", files.certificate, chain)
    try:
        private_key = serialization.load_pem_private_key(key, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise ValueError(
            f"PASSPUSH_TLS_KEY: {files.private_key} holds no unencrypted PEM private key"
        ) from None
    certified_key = certificates[0].public_key().public_bytes(*_SPKI)
    if private_key.public_key().public_bytes(*_SPKI) != certified_key:
        raise ValueError(
            f"PASSPUSH_TLS_KEY: {files.private_key} is not the key of the certificate in "
            f"PASSPUSH_TLS_CERT ({files.certificate})"
        )
    client_ca = None
    if files.client_ca is not None:
        client_ca = _read("PASSPUSH_TLS_CLIENT_CA", files.client_ca)
        _certificates("PASSPUSH_TLS_CLIENT_CA", files.client_ca, client_ca)
    return ServerTls(files, chain, key, client_ca)


def is_loopback(address: str) -> bool:
    """Whether a listen address (`host:port`) takes connections from this machine only."""
    host = address.rpartition(":")[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a name, or empty (every address)
        return False


def _read(setting: str, path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as error:
        raise ValueError(f"{setting}: cannot read {path}: {error.strerror}") from None


def _certificates(setting: str, path: str, data: bytes) -> list[x509.Certificate]:
    try:
        return x509.load_pem_x509_certificates(data)
    except ValueError:
        raise ValueError(f"{setting}: {path} holds no PEM certificate") from None
