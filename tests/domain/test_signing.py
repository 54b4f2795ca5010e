"""Loading signing material: checked in full when given, not again when read back."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from passpush.domain.errors import InvalidArgument
from passpush.domain.signing import AppleSigningPem, load_signing

from apple_passes import AppleCerts


def _with_inconsistent_key(certs: AppleCerts) -> AppleSigningPem:
    """The certificate's key, with one CRT exponent off: its public half still matches the
    certificate, and only OpenSSL's RSA key check (48 ms for RSA-2048) notices."""
    key = serialization.load_pem_private_key(certs.private_key_pem.encode(), None)
    assert isinstance(key, rsa.RSAPrivateKey)
    numbers = key.private_numbers()
    off = rsa.RSAPrivateNumbers(
        numbers.p, numbers.q, numbers.d, numbers.dmp1 + 2, numbers.dmq1, numbers.iqmp,
        numbers.public_numbers,
    )  # fmt: skip
    pem = (
        off.private_key(unsafe_skip_rsa_key_validation=True)
        .private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        .decode()
    )
    return AppleSigningPem(certs.certificate_pem, pem, certs.wwdr_certificate_pem)


def test_material_read_back_from_the_store_skips_the_key_check_it_passed_when_given(
    apple_certs: AppleCerts,
) -> None:
    # Each HTTP process loaded a template's material on its first download after a
    # broadcast, and OpenSSL's key check was a twentieth of the pull at 5,000 devices.
    material = _with_inconsistent_key(apple_certs)

    with pytest.raises(InvalidArgument) as refused:
        load_signing(material, field="apple_signing")
    assert [v.field for v in refused.value.violations] == ["apple_signing.private_key_pem"]

    assert load_signing(material, field="apple_signing", stored=True).private_key is not None
