"""Apple pass content: reading what a caller imports, and making the signed .pkpass.

A pass's content is its pass.json and its other files (images, localizations). The
caller imports it once, as a .pkpass or as pass.json and files; passpush keeps it and,
each time a device asks, writes the pass's current state into pass.json (the web
service, the authentication token, the notification back field) and signs it again.
Everything here is pure: bytes in, bytes or InvalidArgument out.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from passpush.domain.errors import FieldViolation, InvalidArgument
from passpush.domain.model import PassValues, Platform
from passpush.domain.pkpass_zip import PNG_MAGIC, zip_archive, zip_entry
from passpush.domain.signing import AppleSigningPem, SigningMaterial
from passpush.domain.validation import check_authentication_token, unstorable

PASS_JSON = "pass.json"
MANIFEST = "manifest.json"
SIGNATURE = "signature"
MEDIA_TYPE = "application/vnd.apple.pkpass"
STYLES = ("boardingPass", "coupon", "eventTicket", "generic", "storeCard")
FIELD_GROUPS = ("headerFields", "primaryFields", "secondaryFields", "auxiliaryFields", "backFields")
# The back field that carries the notification: its changeMessage `%@` makes the device
# show the new value on the lock screen.
NOTIFICATION_FIELD_KEY = "passpush.notification"
# Wallet alerts only when a field's value differs from the copy the device holds
# (developer.apple.com/documentation/walletpasses/passfieldcontent: changeMessage is shown
# "when the field changes"; support.passslot.com/hc/en-us/articles/360005105897: pushing
# an unchanged value "will not re-display an already displayed message"). So a notification
# whose text is the value the pass shows gets this invisible mark after it (or loses it):
# the reader sees the same text, the device sees a new value and alerts.
REPEAT_MARK = "\u200b"  # ZERO WIDTH SPACE
REQUIRED_FILE = "icon.png"

# Uncompressed, all files together: a pass is fetched by every device on every update, and
# the whole request must fit the server's largest gRPC message (PASSPUSH_GRPC_MAX_MESSAGE_BYTES,
# 4 MiB by default).
MAX_CONTENT_BYTES = 3 * 1024 * 1024
MAX_FILES = 200
MAX_SERIAL_NUMBER = 128
# Finder and macOS zip tools add these; Apple's own tools skip them too.
_IGNORED = re.compile(r"(^|/)(\.DS_Store|__MACOSX(/.*)?)$")
# `name.ext` at the root or in one `xx.lproj` folder: a pass bundle has no other folders.
_NAME = r"[A-Za-z0-9_@~-][A-Za-z0-9._@~-]*"
_FILE_NAME = re.compile(rf"({_NAME}\.lproj/)?{_NAME}")
MAX_FILE_NAME = 255

# A pass's own values (ApplePassValues): limits, and the pass.json keys they cannot set.
MAX_BARCODES = 10
MAX_BARCODE_MESSAGE = 2000
MAX_BARCODE_ALT_TEXT = 200
MAX_BARCODE_ENCODING = 64
MAX_FIELD_VALUES = 100
MAX_FIELD_KEY = 128
MAX_VALUES_BYTES = 16 * 1024
BARCODE_FORMATS = (
    "PKBarcodeFormatQR",
    "PKBarcodeFormatPDF417",
    "PKBarcodeFormatAztec",
    "PKBarcodeFormatCode128",
)
DEFAULT_BARCODE_ENCODING = "iso-8859-1"
# passpush writes the first four; the style is the template's (values set its fields by key);
# barcodes have a field of their own.
RESERVED_KEYS = (
    "passTypeIdentifier",
    "serialNumber",
    "authenticationToken",
    "webServiceURL",
    "formatVersion",
    "barcode",
    "barcodes",
    *STYLES,
)


@dataclass(frozen=True)
class PassContent:
    """A pass's content as passpush keeps it: pass.json (without the fields passpush
    writes itself) and every other file, by name."""

    pass_json: dict[str, Any]
    files: dict[str, bytes]

    @property
    def serial_number(self) -> str:
        return str(self.pass_json.get("serialNumber") or "")

    @property
    def authentication_token(self) -> str:
        return str(self.pass_json.get("authenticationToken") or "")

    @property
    def pass_type_identifier(self) -> str:
        return str(self.pass_json.get("passTypeIdentifier") or "")

    def stored_files(self) -> dict[str, bytes]:
        """Every file as stored: pass.json included."""
        return {PASS_JSON: json.dumps(self.pass_json, ensure_ascii=False).encode(), **self.files}


@dataclass(frozen=True)
class StoredFile:
    """How a stored file is known: `digest` (SHA-256, hex) names it in the store; `sha1`
    (hex) is what manifest.json lists for it."""

    digest: str
    sha1: str


def stored_file(data: bytes) -> StoredFile:
    return StoredFile(hashlib.sha256(data).hexdigest(), hashlib.sha1(data).hexdigest())


@dataclass(frozen=True)
class PassPackageSource:
    """What a signed .pkpass is made of: the stored content and the pass's state now."""

    project_id: str
    pass_id: str
    pass_type_identifier: str
    serial_number: str
    authentication_token: str
    notification_header: str | None
    notification_body: str | None
    update_tag: int
    update_time: datetime
    template_signing: AppleSigningPem | None
    # The pass's files merged (its own over its template's), pass.json included; empty
    # when it has no content. Shared files are the same bytes objects, from one cache.
    files: Mapping[str, bytes]
    # Each file's digest and SHA-1, when the store knows them (so nothing hashes them again).
    stored: Mapping[str, StoredFile] = field(default_factory=dict)
    values: PassValues = field(default_factory=PassValues)
    notification_marked: bool = False  # the body is shown with REPEAT_MARK after it
    # The ticket whose notification this version of the pass carries, if any.
    notification_ticket_id: int | None = None


def content_from_pkpass(data: bytes, field: str = "pkpass") -> PassContent:
    """The content of an existing .pkpass; its manifest and signature are dropped."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except (zipfile.BadZipFile, ValueError, EOFError):
        raise InvalidArgument.field(field, "is not a zip file (.pkpass)") from None
    files: dict[str, bytes] = {}
    budget = MAX_CONTENT_BYTES
    with archive:
        entries = [
            e for e in archive.infolist() if not e.is_dir() and not _IGNORED.search(e.filename)
        ]
        if len(entries) > MAX_FILES + 2:
            raise InvalidArgument.field(field, f"holds more than {MAX_FILES} files")
        for entry in entries:
            name = entry.filename
            if name in (MANIFEST, SIGNATURE):
                continue  # passpush signs again
            problem = _name_problem(name)
            if problem:
                raise InvalidArgument.field(field, f"{name!r} {problem}")
            if name in files:
                raise InvalidArgument.field(field, f"holds {name!r} twice")
            if entry.flag_bits & 0x1:
                raise InvalidArgument.field(field, f"{name!r} is encrypted")
            files[name] = _read_within(archive, entry, budget, field)
            budget -= len(files[name])
    pass_json = files.pop(PASS_JSON, None)
    if pass_json is None:
        raise InvalidArgument.field(field, "holds no pass.json at its root")
    return _content(pass_json, files, json_field=field, files_field=field)


def content_from_files(pass_json: bytes, files: Mapping[str, bytes]) -> PassContent:
    """The content given as pass.json and the other files by name."""
    violations = []
    if not pass_json:
        violations.append(FieldViolation("pass_json", "is required (or give pkpass)"))
    if len(files) > MAX_FILES:
        violations.append(FieldViolation("files", f"must be at most {MAX_FILES} files"))
    for name in sorted(files):
        if name in (PASS_JSON, MANIFEST, SIGNATURE):
            where = "goes in pass_json" if name == PASS_JSON else "is made by passpush"
            violations.append(FieldViolation(f"files[{name}]", where))
        else:
            problem = _name_problem(name)
            if problem:
                # A name too long to be one is not repeated back in the field's path.
                field = f"files[{name}]" if len(name) <= MAX_FILE_NAME else "files"
                violations.append(FieldViolation(field, problem))
    if violations:
        raise InvalidArgument(violations)
    if len(pass_json) + sum(len(data) for data in files.values()) > MAX_CONTENT_BYTES:
        raise InvalidArgument.field("files", f"must be at most {_mib(MAX_CONTENT_BYTES)} in all")
    return _content(pass_json, dict(files), json_field="pass_json", files_field="files")


def _content(
    pass_json: bytes, files: dict[str, bytes], *, json_field: str, files_field: str
) -> PassContent:
    """Checks pass.json and the files. In a .pkpass (one field for everything) the
    description names the part at fault; otherwise the field does (`pass_json.description`)."""
    in_pkpass = json_field == files_field
    document, problems = _pass_json(pass_json)
    violations = [
        FieldViolation(json_field, f"pass.json{'.' + path if path else ''} {problem}")
        if in_pkpass
        else FieldViolation(f"{json_field}.{path}" if path else json_field, problem)
        for path, problem in problems
    ]
    if REQUIRED_FILE not in files:
        violations.append(FieldViolation(files_field, f"must include {REQUIRED_FILE}"))
    for name in sorted(files):
        if name.lower().endswith(".png") and not files[name].startswith(PNG_MAGIC):
            if in_pkpass:
                violations.append(FieldViolation(files_field, f"{name!r} is not a PNG image"))
            else:
                violations.append(FieldViolation(f"{files_field}[{name}]", "is not a PNG image"))
    if violations:
        raise InvalidArgument(violations)
    assert document is not None
    return PassContent(document, files)


def _pass_json(data: bytes) -> tuple[dict[str, Any] | None, list[tuple[str, str]]]:
    """pass.json without passpush's own fields, or what a device would refuse in it
    (as pairs of a path in the document, empty for the whole, and the problem)."""
    try:
        document = json.loads(data.decode("utf-8-sig"))
    except (UnicodeDecodeError, ValueError):
        return None, [("", "is not valid UTF-8 JSON")]
    except RecursionError:
        return None, [("", "is nested too deep")]
    if not isinstance(document, dict):
        return None, [("", "must be a JSON object")]
    problems = []
    for key in ("description", "organizationName", "teamIdentifier"):
        if not isinstance(document.get(key), str) or not document[key].strip():
            problems.append((key, "is required (a string)"))
    if document.get("formatVersion", 1) != 1:
        problems.append(("formatVersion", "must be 1"))
    styles = [style for style in STYLES if style in document]
    if len(styles) != 1:
        problems.append(("", "must have exactly one pass style: " + ", ".join(STYLES)))
    elif not isinstance(document[styles[0]], dict):
        problems.append((styles[0], "must be an object"))
    else:
        for group in FIELD_GROUPS:
            fields = document[styles[0]].get(group, [])
            if not isinstance(fields, list) or not all(isinstance(f, dict) for f in fields):
                problems.append((f"{styles[0]}.{group}", "must be a list of objects"))
    serial_number, token = document.get("serialNumber"), document.get("authenticationToken")
    if serial_number is not None and not (
        isinstance(serial_number, str) and 1 <= len(serial_number) <= MAX_SERIAL_NUMBER
    ):
        problems.append(("serialNumber", f"must be a string of 1-{MAX_SERIAL_NUMBER} characters"))
    elif isinstance(serial_number, str) and unstorable(serial_number):
        problems.append(("serialNumber", unstorable(serial_number)))
    if token is not None:  # as a pass's own: a device sends it in a header
        if not isinstance(token, str) or not token:
            problems.append(("authenticationToken", "must be a string"))
        else:
            bad_token = check_authentication_token("authenticationToken", token)
            problems += [(v.field, v.description) for v in bad_token]
    if problems:
        return None, problems
    document.setdefault("formatVersion", 1)
    document.pop("webServiceURL", None)  # passpush's own, written into every package
    _remove_notification_field(document[styles[0]])
    return document, []


def check_pass_type_identifier(content: PassContent, expected: str, field: str) -> None:
    """pass.json may name its pass type, but only its template's: another would not verify."""
    given = content.pass_type_identifier
    if given and given != expected:
        raise InvalidArgument.field(
            f"{field}.passTypeIdentifier",
            f"is {given!r}, but the pass's template is {expected!r}",
        )


def render_pass_json(source: PassPackageSource, web_service_url: str) -> bytes:
    """pass.json as a device gets it now: the stored document with the pass's state."""
    document = apply_values(json.loads(source.files[PASS_JSON]), source.values)
    document.update(
        passTypeIdentifier=source.pass_type_identifier,
        serialNumber=source.serial_number,
        authenticationToken=source.authentication_token,
        webServiceURL=web_service_url,
    )
    style = next(document[s] for s in STYLES if s in document)
    _remove_notification_field(style)
    if source.notification_body is not None:
        field: dict[str, str] = {"key": NOTIFICATION_FIELD_KEY}
        if source.notification_header:
            field["label"] = source.notification_header
        value = source.notification_body + (REPEAT_MARK if source.notification_marked else "")
        field |= {"value": value, "changeMessage": "%@"}
        style["backFields"] = [field, *style.get("backFields", [])]
    # Compact: json's C encoder then writes it (with an indent the pure-Python one does, a
    # twentieth of a download's CPU); no device reads it by eye.
    return json.dumps(document, ensure_ascii=False, separators=(",", ":")).encode()


def build_pkpass(
    files: Mapping[str, bytes], signing: SigningMaterial, sha1s: Mapping[str, str] | None = None
) -> bytes:
    """A signed .pkpass: the files, manifest.json (each file's SHA-1, taken from `sha1s`
    where given) and its signature."""
    manifest = manifest_of(files, sha1s)
    return zip_pkpass(files, manifest, signing.sign(manifest))


def zip_pkpass(files: Mapping[str, bytes], manifest: bytes, signature: bytes) -> bytes:
    """The .pkpass of files whose manifest is signed already (pkpass_zip.py: the same
    bytes for the same version, PNG images stored as they are)."""
    named = [*sorted(files.items()), (MANIFEST, manifest), (SIGNATURE, signature)]
    return zip_archive([zip_entry(name, data) for name, data in named])


def manifest_of(files: Mapping[str, bytes], sha1s: Mapping[str, str] | None = None) -> bytes:
    known = sha1s or {}
    return json.dumps(
        {
            name: known.get(name) or hashlib.sha1(data).hexdigest()
            for name, data in sorted(files.items())
        },
        separators=(",", ":"),
    ).encode()


def apply_values(document: dict[str, Any], values: PassValues) -> dict[str, Any]:
    """The document with the pass's values on it. A field value whose key the document
    lacks (its template's content changed since) is left out."""
    document.update(values.keys)
    if values.barcodes:
        document["barcodes"] = [dict(b) for b in values.barcodes]
    style = next((document[s] for s in STYLES if isinstance(document.get(s), dict)), None)
    if style is not None and values.field_values:
        for group in FIELD_GROUPS:
            for item in style.get(group, []) if isinstance(style.get(group), list) else []:
                if isinstance(item, dict) and item.get("key") in values.field_values:
                    item["value"] = values.field_values[item["key"]]
    return document


def check_values(values: PassValues, field: str) -> list[FieldViolation]:
    """What makes the values unusable whatever the pass's pass.json: limits and kinds."""
    found = []
    if len(values.barcodes) > MAX_BARCODES:
        found.append(FieldViolation(f"{field}.barcodes", f"must be at most {MAX_BARCODES}"))
    for i, barcode in enumerate(values.barcodes[:MAX_BARCODES]):
        at = f"{field}.barcodes[{i}]"
        if barcode.get("format") not in BARCODE_FORMATS:
            found.append(
                FieldViolation(f"{at}.format", "is required: QR, PDF417, AZTEC or CODE128")
            )
        message = barcode.get("message", "")
        if not 1 <= len(message) <= MAX_BARCODE_MESSAGE:
            found.append(
                FieldViolation(f"{at}.message", f"must be 1-{MAX_BARCODE_MESSAGE} characters")
            )
        if len(barcode.get("messageEncoding", "")) > MAX_BARCODE_ENCODING:
            found.append(
                FieldViolation(
                    f"{at}.message_encoding", f"must be at most {MAX_BARCODE_ENCODING} characters"
                )
            )
        if len(barcode.get("altText", "")) > MAX_BARCODE_ALT_TEXT:
            found.append(
                FieldViolation(
                    f"{at}.alt_text", f"must be at most {MAX_BARCODE_ALT_TEXT} characters"
                )
            )
    if len(values.field_values) > MAX_FIELD_VALUES:
        found.append(
            FieldViolation(f"{field}.field_values", f"must be at most {MAX_FIELD_VALUES} entries")
        )
    for key, value in sorted(values.field_values.items())[:MAX_FIELD_VALUES]:
        if not 1 <= len(key) <= MAX_FIELD_KEY:
            found.append(
                FieldViolation(
                    f"{field}.field_values", f"keys must be 1-{MAX_FIELD_KEY} characters"
                )
            )
        elif isinstance(value, bool) or not isinstance(value, str | int | float):
            found.append(
                FieldViolation(f"{field}.field_values[{key}]", "must be a string or a number")
            )
    for key in sorted(values.keys):
        if key in RESERVED_KEYS:
            found.append(
                FieldViolation(
                    f"{field}.pass_json.{key}"[: 2 * MAX_FIELD_KEY],
                    "cannot be set per pass (passpush writes it, the template has it, "
                    "or it has a field of its own)",
                )
            )
    size = len(json.dumps(values.as_json(), ensure_ascii=False).encode())
    if size > MAX_VALUES_BYTES:
        found.append(FieldViolation(field, f"must be at most {MAX_VALUES_BYTES} bytes as JSON"))
    return found


def check_values_platform(platform: str | None) -> list[FieldViolation]:
    """A pass's values (`apple_values`) are for passes of Apple templates (`platform`, a
    Platform or its value)."""
    if platform == Platform.APPLE:
        return []
    return [FieldViolation("pass.apple_values", "is for passes of Apple templates")]


def check_merged(stored_pass_json: bytes, values: PassValues, field: str) -> list[FieldViolation]:
    """What a device would refuse in pass.json once the values are on it: checked as
    imported content is, and each field value must name a field of the document."""
    document = json.loads(stored_pass_json)
    style: dict[str, Any] = next(
        (document[s] for s in STYLES if isinstance(document.get(s), dict)), {}
    )
    keys = {
        item.get("key")
        for group in FIELD_GROUPS
        for item in style.get(group, [])
        if isinstance(item, dict)
    }
    found = [
        FieldViolation(f"{field}.field_values[{key}]", "names no field of the pass's pass.json")
        for key in sorted(values.field_values)
        if key not in keys
    ]
    merged = apply_values(document, values)
    _, problems = _pass_json(json.dumps(merged, ensure_ascii=False).encode())
    for path, problem in problems:
        top = path.split(".")[0]
        if top in values.keys:
            found.append(FieldViolation(f"{field}.pass_json.{path}", problem))
        else:
            found.append(
                FieldViolation(field, f"would make pass.json{'.' + path if path else ''} {problem}")
            )
    return found


def _remove_notification_field(style: dict[str, Any]) -> None:
    for group in FIELD_GROUPS:
        if isinstance(style.get(group), list):
            style[group] = [f for f in style[group] if f.get("key") != NOTIFICATION_FIELD_KEY]


def _name_problem(name: str) -> str:
    if not name or len(name) > MAX_FILE_NAME:
        return f"must be a name of 1-{MAX_FILE_NAME} characters"
    if name.startswith("/") or "\\" in name or ".." in name.split("/"):
        return "must be a relative path within the pass (no '/', '\\' or '..' to leave it)"
    if not _FILE_NAME.fullmatch(name):
        return "must be a file name, at the root or in one xx.lproj folder"
    return ""


def _read_within(
    archive: zipfile.ZipFile, entry: zipfile.ZipInfo, budget: int, field: str
) -> bytes:
    """An entry's bytes, read no further than the budget (its header may lie)."""
    too_big = InvalidArgument.field(field, f"must be at most {_mib(MAX_CONTENT_BYTES)} unzipped")
    if entry.file_size > budget:
        raise too_big
    try:
        with archive.open(entry) as stream:
            data = stream.read(budget + 1)
    except (zipfile.BadZipFile, NotImplementedError, ValueError, EOFError, OSError) as error:
        raise InvalidArgument.field(field, f"{entry.filename!r} cannot be read: {error}") from None
    if len(data) > budget:
        raise too_big
    return data


def _mib(size: int) -> str:
    return f"{size / 1024 / 1024:g} MiB"
