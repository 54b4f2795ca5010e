"""Throwaway TLS material for local fakes: a CA, a loopback server certificate, client certificates.

Everything is generated fresh with `cryptography`; nothing here is meant to be trusted beyond
one test run or one local demo.
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

_VALIDITY = datetime.timedelta(days=365)


@dataclass(frozen=True)
class TlsBundle:
    """PEM files of a throwaway CA and of a server certificate it signed for loopback."""

    ca_file: Path
    ca_key_file: Path
    server_cert_file: Path
    server_key_file: Path


def make_tls_bundle(directory: Path) -> TlsBundle:
    """Write a fresh CA and a server certificate for localhost, 127.0.0.1 and ::1 into directory."""
    directory.mkdir(parents=True, exist_ok=True)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "passpush throwaway test CA")])
    ca_cert = (
        _certificate_builder(ca_name, ca_name, ca_key.public_key(), ca_key)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(_key_usage(cert_sign=True), critical=True)
        .sign(ca_key, hashes.SHA256())
    )

    server_key = ec.generate_private_key(ec.SECP256R1())
    server_cert = (
        _certificate_builder(
            x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]),
            ca_name,
            server_key.public_key(),
            ca_key,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(cert_sign=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.DNSName("localhost"),
                    x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                    x509.IPAddress(ipaddress.ip_address("::1")),
                ]
            ),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )

    bundle = TlsBundle(
        ca_file=directory / "ca.pem",
        ca_key_file=directory / "ca-key.pem",
        server_cert_file=directory / "server.pem",
        server_key_file=directory / "server-key.pem",
    )
    _write_certificate(bundle.ca_file, ca_cert)
    _write_private_key(bundle.ca_key_file, ca_key)
    _write_certificate(bundle.server_cert_file, server_cert)
    _write_private_key(bundle.server_key_file, server_key)
    return bundle


def make_client_certificate(bundle: TlsBundle, directory: Path, uid: str) -> Path:
    """Write one PEM file holding a client certificate and its unencrypted key.

    The subject looks like a Pass Type ID certificate's (UID = the pass type identifier,
    CN "Pass Type ID: <uid>"), which is what aioapns' `client_cert` and APNs expect.
    """
    directory.mkdir(parents=True, exist_ok=True)
    ca_cert = x509.load_pem_x509_certificate(bundle.ca_file.read_bytes())
    ca_key = serialization.load_pem_private_key(bundle.ca_key_file.read_bytes(), password=None)
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise TypeError(f"{bundle.ca_key_file} does not hold the EC key make_tls_bundle writes")

    client_key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.USER_ID, uid),
            x509.NameAttribute(NameOID.COMMON_NAME, f"Pass Type ID: {uid}"),
        ]
    )
    client_cert = (
        _certificate_builder(subject, ca_cert.subject, client_key.public_key(), ca_key)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(cert_sign=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )

    path = directory / f"client-{uid}.pem"
    _write_secret(path, client_cert.public_bytes(serialization.Encoding.PEM) + _key_pem(client_key))
    return path


def _certificate_builder(
    subject: x509.Name,
    issuer: x509.Name,
    public_key: ec.EllipticCurvePublicKey,
    issuer_key: ec.EllipticCurvePrivateKey,
) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    # Key identifiers keep strict verifiers (VERIFY_X509_STRICT, Python 3.13's default) happy.
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + _VALIDITY)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
            critical=False,
        )
    )


def _key_usage(*, cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _write_certificate(path: Path, certificate: x509.Certificate) -> None:
    path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))


def _write_private_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    _write_secret(path, _key_pem(key))


def _write_secret(path: Path, data: bytes) -> None:
    # Restrict the file before the key lands in it, even for throwaway keys.
    path.touch(mode=0o600)
    path.chmod(0o600)
    path.write_bytes(data)
