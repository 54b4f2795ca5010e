"""Apple pass signing: the material (Pass Type ID certificate, its key, the WWDR
intermediate), checked once when it is given, and the detached PKCS#7 signature of a
pass's manifest. Pure computation with `cryptography`; no I/O, no shelling out."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from datetime import datetime

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import pkcs7
from cryptography.x509.oid import NameOID

from passpush.domain.errors import FieldViolation, InvalidArgument

SigningKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


@dataclass(frozen=True)
class AppleSigningPem:
    """Signing material as it is given and stored: three PEM texts."""

    certificate_pem: str
    private_key_pem: str = dataclasses.field(repr=False)  # no key in a logged Template
    wwdr_certificate_pem: str


@dataclass(frozen=True)
class SigningMaterial:
    """Loaded, checked signing material: signs manifests."""

    certificate: x509.Certificate
    private_key: SigningKey
    wwdr_certificate: x509.Certificate

    def sign(self, manifest: bytes) -> bytes:
        """The `signature` file of a .pkpass: a detached PKCS#7 signature (DER) of the
        manifest by the Pass Type ID certificate, carrying the WWDR intermediate, which
        a device needs to chain the certificate to Apple's root."""
        return (
            pkcs7.PKCS7SignatureBuilder()
            .set_data(manifest)
            .add_signer(self.certificate, self.private_key, hashes.SHA256())
            .add_certificate(self.wwdr_certificate)
            .sign(
                serialization.Encoding.DER,
                [pkcs7.PKCS7Options.DetachedSignature, pkcs7.PKCS7Options.Binary],
            )
        )

    @property
    def expire_time(self) -> datetime:
        return self.certificate.not_valid_after_utc


def load_signing(
    pem: AppleSigningPem, *, field: str, pass_type_identifier: str = "", stored: bool = False
) -> SigningMaterial:
    """The material, or InvalidArgument naming each part at fault (`{field}.certificate_pem`).

    Checks what would otherwise only show on a device, as a pass that will not install:
    the key is the certificate's, the WWDR certificate issued it, and the certificate's
    UID (when it has one) is the template's pass type identifier.

    `stored`: material read back from the database, whose RSA key passed OpenSSL's key
    check when it was given; that check (48 ms for RSA-2048) is not made again, as it was
    in every HTTP process's first download of a template's pass after a broadcast.
    """
    violations: list[FieldViolation] = []
    certificate = _certificate(pem.certificate_pem, f"{field}.certificate_pem", violations)
    wwdr = _certificate(pem.wwdr_certificate_pem, f"{field}.wwdr_certificate_pem", violations)
    key = _private_key(pem.private_key_pem, f"{field}.private_key_pem", violations, stored)
    if certificate is not None and key is not None and not _same_public_key(certificate, key):
        violations.append(
            FieldViolation(f"{field}.private_key_pem", "is not the certificate's private key")
        )
    if certificate is not None and wwdr is not None and not _issued_by(certificate, wwdr):
        violations.append(
            FieldViolation(
                f"{field}.wwdr_certificate_pem",
                "did not issue the certificate (Apple has several WWDR generations: "
                "take the one that issued it)",
            )
        )
    if certificate is not None and pass_type_identifier:
        uid = certificate_pass_type_identifier(certificate)
        if uid and uid != pass_type_identifier:
            violations.append(
                FieldViolation(
                    f"{field}.certificate_pem",
                    f"is the certificate of {uid!r}, not of the template's "
                    f"{pass_type_identifier!r}",
                )
            )
    if violations:
        raise InvalidArgument(violations)
    assert certificate is not None and key is not None and wwdr is not None
    return SigningMaterial(certificate, key, wwdr)


def certificate_expire_time(certificate_pem: str) -> datetime | None:
    """When a PEM certificate expires; None if it cannot be read."""
    try:
        return x509.load_pem_x509_certificate(certificate_pem.encode()).not_valid_after_utc
    except ValueError:
        return None


def certificate_pass_type_identifier(certificate: x509.Certificate) -> str:
    """The pass type identifier a Pass Type ID certificate names in its UID, if any."""
    values = certificate.subject.get_attributes_for_oid(NameOID.USER_ID)
    return str(values[0].value) if values else ""


def _certificate(
    text: str, field: str, violations: list[FieldViolation]
) -> x509.Certificate | None:
    if not text.strip():
        violations.append(FieldViolation(field, "is required"))
        return None
    try:
        return x509.load_pem_x509_certificate(text.encode())
    except ValueError:
        violations.append(FieldViolation(field, "is not a PEM certificate"))
        return None


def _private_key(
    text: str, field: str, violations: list[FieldViolation], checked_before: bool
) -> SigningKey | None:
    if not text.strip():
        violations.append(FieldViolation(field, "is required"))
        return None
    try:
        key = serialization.load_pem_private_key(
            text.encode(), password=None, unsafe_skip_rsa_key_validation=checked_before
        )
    except TypeError:
        violations.append(FieldViolation(field, "is encrypted: give it unencrypted"))
        return None
    except (ValueError, UnsupportedAlgorithm):
        violations.append(FieldViolation(field, "is not a PEM private key"))
        return None
    if not isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
        violations.append(FieldViolation(field, "must be an RSA or EC key"))
        return None
    return key


def _same_public_key(certificate: x509.Certificate, key: SigningKey) -> bool:
    def der(public_key: object) -> bytes:
        assert isinstance(public_key, rsa.RSAPublicKey | ec.EllipticCurvePublicKey)
        return public_key.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    try:
        return der(certificate.public_key()) == der(key.public_key())
    except (AssertionError, ValueError):
        return False


def _issued_by(certificate: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        certificate.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True
