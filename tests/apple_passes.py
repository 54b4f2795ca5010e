"""Apple pass material for the tests: a test CA with a WWDR intermediate and a Pass Type ID
certificate made here, pass content, and a check of a .pkpass as a device makes it
(manifest hashes, and the signature verified by `openssl smime -verify`)."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import struct
import zipfile
import zlib
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from passpush.v1 import passes_pb2 as ppb

from support import TOPIC

TEAM = "TEAM123456"


@dataclass(frozen=True)
class AppleCerts:
    """A Pass Type ID certificate and key, the WWDR intermediate that issued it, and the
    root that issued that (the test's stand-in for Apple's root CA)."""

    certificate_pem: str
    private_key_pem: str
    wwdr_certificate_pem: str
    root_certificate_pem: str

    def proto(self) -> ppb.AppleSigning:
        return ppb.AppleSigning(
            certificate_pem=self.certificate_pem,
            private_key_pem=self.private_key_pem,
            wwdr_certificate_pem=self.wwdr_certificate_pem,
        )


def make_signing(
    pass_type_identifier: str = TOPIC, *, expires_in: timedelta = timedelta(days=365)
) -> AppleCerts:
    now = datetime.now(UTC)
    root_key, wwdr_key, pass_key = (
        rsa.generate_private_key(public_exponent=65537, key_size=2048) for _ in range(3)
    )
    root_name = _name((NameOID.COMMON_NAME, "passpush Test Root CA"))
    wwdr_name = _name(
        (NameOID.COMMON_NAME, "passpush Test WWDR"),
        (NameOID.ORGANIZATIONAL_UNIT_NAME, "G4"),
    )
    pass_name = _name(
        (NameOID.USER_ID, pass_type_identifier),
        (NameOID.COMMON_NAME, f"Pass Type ID: {pass_type_identifier}"),
        (NameOID.ORGANIZATIONAL_UNIT_NAME, TEAM),
    )
    root = _certificate(root_name, root_key, root_name, root_key, now, timedelta(days=3650), True)
    wwdr = _certificate(wwdr_name, wwdr_key, root_name, root_key, now, timedelta(days=3650), True)
    leaf = _certificate(pass_name, pass_key, wwdr_name, wwdr_key, now, expires_in, False)
    return AppleCerts(
        certificate_pem=_pem(leaf),
        private_key_pem=pass_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode(),
        wwdr_certificate_pem=_pem(wwdr),
        root_certificate_pem=_pem(root),
    )


def _name(*attributes: tuple[x509.ObjectIdentifier, str]) -> x509.Name:
    return x509.Name([x509.NameAttribute(oid, value) for oid, value in attributes])


def _certificate(
    subject: x509.Name,
    key: rsa.RSAPrivateKey,
    issuer: x509.Name,
    issuer_key: rsa.RSAPrivateKey,
    now: datetime,
    lifetime: timedelta,
    ca: bool,
) -> x509.Certificate:
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(min(now - timedelta(days=1), now + lifetime - timedelta(days=2)))
        .not_valid_after(now + lifetime)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .sign(issuer_key, hashes.SHA256())
    )


def _pem(certificate: x509.Certificate) -> str:
    return certificate.public_bytes(serialization.Encoding.PEM).decode()


def png(width: int = 1, height: int = 1) -> bytes:
    """A real (tiny, grey) PNG image."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    rows = b"".join(b"\x00" + b"\x80" * width for _ in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


def pass_document(**overrides: Any) -> dict[str, Any]:
    """A storeCard pass.json as an issuer writes it, with a back field of its own."""
    document: dict[str, Any] = {
        "formatVersion": 1,
        "description": "Example loyalty card",
        "organizationName": "Example Coffee",
        "teamIdentifier": TEAM,
        "logoText": "Example Coffee",
        "storeCard": {
            "primaryFields": [{"key": "points", "label": "Points", "value": 120}],
            "backFields": [{"key": "terms", "label": "Terms", "value": "Be nice."}],
        },
    }
    document.update(overrides)
    return document


def pass_files() -> dict[str, bytes]:
    return {
        "icon.png": png(),
        "icon@2x.png": png(2, 2),
        "logo.png": png(3, 1),
        "en.lproj/pass.strings": b'"Points" = "Points";\n',
    }


def zip_of(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def unzip(pkpass: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(pkpass)) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


def notification_field(pass_json: dict[str, Any]) -> dict[str, Any] | None:
    fields = pass_json["storeCard"].get("backFields", [])
    return next((f for f in fields if f["key"] == "passpush.notification"), None)


async def verified_pass(pkpass: bytes, signing: AppleCerts, tmp_path: Path) -> dict[str, Any]:
    """pass.json of a .pkpass that a device would accept: every file in the manifest with
    its SHA-1 and nothing else, and the signature verifying the manifest against the test
    root through the WWDR certificate it carries. AssertionError otherwise."""
    files = unzip(pkpass)
    manifest = json.loads(files["manifest.json"])
    signed = {name for name in files if name not in ("manifest.json", "signature")}
    assert set(manifest) == signed, (sorted(manifest), sorted(signed))
    for name in signed:
        assert manifest[name] == hashlib.sha1(files[name]).hexdigest(), name
    await verify_signature(files["manifest.json"], files["signature"], signing, tmp_path)
    document: dict[str, Any] = json.loads(files["pass.json"])
    return document


async def verify_signature(
    manifest: bytes, signature: bytes, signing: AppleCerts, tmp_path: Path
) -> None:
    """`openssl smime -verify` of a detached DER signature; only the root is trusted, so
    the WWDR certificate must come inside the signature."""
    _write_inputs(tmp_path, manifest, signature, signing)
    process = await asyncio.create_subprocess_exec(
        "openssl", "smime", "-verify", "-binary", "-inform", "DER",
        "-in", str(tmp_path / "signature"),
        "-content", str(tmp_path / "manifest.json"),
        "-CAfile", str(tmp_path / "root.pem"),
        "-out", "/dev/null",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    output, _ = await process.communicate()
    assert process.returncode == 0, output.decode(errors="replace")


def _write_inputs(tmp_path: Path, manifest: bytes, signature: bytes, signing: AppleCerts) -> None:
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "manifest.json").write_bytes(manifest)
    (tmp_path / "signature").write_bytes(signature)
    (tmp_path / "root.pem").write_text(signing.root_certificate_pem)
