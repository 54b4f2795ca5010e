"""Throwaway Apple signing material and pass content for the device benchmarks.

The material is what Apple's would be: an RSA-2048 Pass Type ID certificate, issued by a
WWDR-like intermediate, issued by a root; made fresh for each run. The content is a
storeCard pass.json and about 60 KB of PNG images (noise, so zip cannot shrink them), as a
pass with a logo, a strip and their @2x/@3x versions weighs.
"""

from __future__ import annotations

import json
import random
import struct
import zlib
from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from passpush.v1 import passes_pb2 as ppb

TEAM = "BENCHTEAM1"
# name -> (width, height) of a grey-noise PNG; about 60 KB in all.
IMAGES = {
    "icon.png": (29, 29),
    "icon@2x.png": (58, 58),
    "logo.png": (80, 25),
    "logo@2x.png": (160, 50),
    "strip.png": (160, 62),
    "strip@2x.png": (200, 124),
    "thumbnail.png": (45, 45),
    "thumbnail@2x.png": (90, 90),
}


def make_signing(pass_type_identifier: str) -> ppb.AppleSigning:
    """A fresh root, WWDR intermediate and Pass Type ID certificate (RSA-2048 each)."""
    now = datetime.now(UTC)
    root_key, wwdr_key, pass_key = (
        rsa.generate_private_key(public_exponent=65537, key_size=2048) for _ in range(3)
    )
    root = _name((NameOID.COMMON_NAME, "passpush Bench Root CA"))
    wwdr = _name(
        (NameOID.COMMON_NAME, "passpush Bench WWDR"), (NameOID.ORGANIZATIONAL_UNIT_NAME, "G4")
    )
    leaf = _name(
        (NameOID.USER_ID, pass_type_identifier),
        (NameOID.COMMON_NAME, f"Pass Type ID: {pass_type_identifier}"),
        (NameOID.ORGANIZATIONAL_UNIT_NAME, TEAM),
    )
    _certificate(root, root_key, root, root_key, now, ca=True)  # the root only issues
    wwdr_certificate = _certificate(wwdr, wwdr_key, root, root_key, now, ca=True)
    leaf_certificate = _certificate(leaf, pass_key, wwdr, wwdr_key, now, ca=False)
    return ppb.AppleSigning(
        certificate_pem=_pem(leaf_certificate),
        private_key_pem=pass_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode(),
        wwdr_certificate_pem=_pem(wwdr_certificate),
    )


def pass_content(pass_id: str) -> ppb.SetPassContentRequest:
    """The content every benchmark pass gets: pass.json and its images.

    Kept in this one function so that content shared by a template can replace it.
    """
    document = {
        "formatVersion": 1,
        "description": "Benchmark loyalty card",
        "organizationName": "Bench Coffee",
        "teamIdentifier": TEAM,
        "logoText": "Bench Coffee",
        "storeCard": {
            "primaryFields": [{"key": "points", "label": "Points", "value": 120}],
            "backFields": [{"key": "terms", "label": "Terms", "value": "Be nice."}],
        },
    }
    return ppb.SetPassContentRequest(
        pass_id=pass_id, pass_json=json.dumps(document).encode(), files=_images()
    )


_IMAGE_CACHE: dict[str, bytes] = {}


def _images() -> dict[str, bytes]:
    if not _IMAGE_CACHE:
        noise = random.Random(17)
        for name, (width, height) in IMAGES.items():
            _IMAGE_CACHE[name] = noise_png(width, height, noise)
    return _IMAGE_CACHE


def noise_png(width: int, height: int, noise: random.Random) -> bytes:
    """A grey PNG of random pixels: deflate cannot shrink it much, as with a photo."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + data))
        return struct.pack(">I", len(data)) + kind + data + crc

    rows = b"".join(b"\x00" + noise.randbytes(width) for _ in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


def _name(*attributes: tuple[x509.ObjectIdentifier, str]) -> x509.Name:
    return x509.Name([x509.NameAttribute(oid, value) for oid, value in attributes])


def _certificate(
    subject: x509.Name,
    key: rsa.RSAPrivateKey,
    issuer: x509.Name,
    issuer_key: rsa.RSAPrivateKey,
    now: datetime,
    *,
    ca: bool,
) -> x509.Certificate:
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .sign(issuer_key, hashes.SHA256())
    )


def _pem(certificate: x509.Certificate) -> str:
    return certificate.public_bytes(serialization.Encoding.PEM).decode()
