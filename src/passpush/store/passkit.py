"""The statements of the PassKit web service: a device names passes by pass type
identifier and serial number, with no project, so the reads look across projects (and
return only what the service needs to authenticate the device and answer it).

They are steps (store/connectors/): each device request is one indexed read at most (a
download after the serials query that listed its pass none: service/listed_passes.py), run
by `connect_standalone`, which through a session cost more than the HTTP request around them.
On PostgreSQL many devices' questions are read at once (`*_each`: store/asked_at_once.py).
Registrations are written many at once (store/registration_writes.py).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVarTuple

from sqlalchemy import (
    BigInteger,
    Select,
    String,
    and_,
    bindparam,
    or_,
    select,
    text,
)

from passpush.domain.lru import BytesBoundedLru
from passpush.domain.model import PassValues, Platform
from passpush.domain.passkit import PASS_JSON, PassPackageSource, StoredFile
from passpush.domain.signing import AppleSigningPem
from passpush.store.asked_at_once import answers_of, each_asked, unnested
from passpush.store.connectors.connector import Query, Steps
from passpush.store.content import ContentCache
from passpush.store.models import (
    ContentFileRow,
    DeviceRegistrationRow,
    PassRow,
    TemplateFileRow,
    TemplateRow,
)

Ts = TypeVarTuple("Ts")
# A device holds a handful of passes of one type; more is not a device.
MAX_DEVICE_PASSES = 1000
_TEMPLATE_OF_PASS = and_(
    TemplateRow.project_id == PassRow.project_id,
    TemplateRow.id == PassRow.template_id,
    TemplateRow.platform == Platform.APPLE.value,
)

# Its own content (SetPassContent) or its template's (SetTemplateContent).
_HAS_CONTENT = or_(PassRow.has_content, TemplateRow.has_content)


@dataclass(frozen=True)
class NamedPass:
    """An Apple pass a device named, with the token that proves the device holds it, and
    the version it is at."""

    project_id: str
    pass_id: str
    authentication_token: str
    update_tag: int
    update_time: datetime
    has_content: bool


# The Apple passes with that pass type and serial number: one, unless projects share a
# pass type (each pass's own token then tells them apart).
def apple_passes_named(
    columns: Select[*Ts], pass_type_identifier: Any, serial_number: Any
) -> Select[*Ts]:
    """`columns` of the passes with that pass type and serial number (and their template)."""
    return (
        columns.join(TemplateRow, _TEMPLATE_OF_PASS)
        .where(
            PassRow.serial_number == serial_number,
            TemplateRow.pass_type_identifier == pass_type_identifier,
        )
        .order_by(PassRow.project_id, PassRow.id)
        .limit(10)
    )


_NAMED_COLUMNS = select(
    PassRow.project_id,
    PassRow.id,
    PassRow.authentication_token,
    PassRow.update_tag,
    PassRow.updated_at,
    _HAS_CONTENT,
)
_PASSES_NAMED = apple_passes_named(
    _NAMED_COLUMNS, bindparam("pass_type_identifier"), bindparam("serial_number")
)
_NAMES_ASKED = unnested(pass_type_identifier=String(), serial_number=String())
_PASSES_NAMED_EACH = each_asked(
    _NAMES_ASKED,
    apple_passes_named(
        _NAMED_COLUMNS, _NAMES_ASKED.c.pass_type_identifier, _NAMES_ASKED.c.serial_number
    ),
)


def passes_named(pass_type_identifier: str, serial_number: str) -> Steps[list[NamedPass]]:
    rows = yield Query(
        _PASSES_NAMED,
        {"pass_type_identifier": pass_type_identifier, "serial_number": serial_number},
    )
    return [NamedPass(*row) for row in rows]


def passes_named_each(names: Sequence[tuple[str, str]]) -> Steps[list[list[NamedPass]]]:
    """PostgreSQL: `passes_named` for each (pass type identifier, serial number), at once."""
    rows = yield Query(
        _PASSES_NAMED_EACH,
        {
            "pass_type_identifier": [pass_type for pass_type, _ in names],
            "serial_number": [serial for _, serial in names],
        },
    )
    return [[NamedPass(*row) for row in answer] for answer in answers_of(len(names), rows)]


# A transaction has an xid once it wrote: the outbox's idle polls do not count.
_OLDEST_OPEN_WRITE = text(
    "SELECT min(xact_start), clock_timestamp() FROM pg_stat_activity "
    "WHERE datname = current_database() AND pid <> pg_backend_pid() "
    "AND backend_xid IS NOT NULL"
).columns()


def oldest_open_write() -> Steps[tuple[datetime | None, datetime]]:
    """When the oldest transaction now writing to the database (this one aside) began, if
    one is; and the database's time now.

    A change stamps its update tag near the start of its transaction, and on PostgreSQL
    transactions commit in any order: one still open may commit a tag lower than tags
    already read. (SQLite's one writer commits its tags in order: not asked there.)
    """
    rows = yield Query(_OLDEST_OPEN_WRITE)
    oldest, now = rows[0]
    return oldest, now


# What a pass's .pkpass is made of, but its files' bytes and its template's signing: the
# pass, its own files' list, and which version of its template's parts it takes (kept per
# process: see TemplatePartsCache).
_PACKAGE_COLUMNS = select(
    PassRow.project_id,
    PassRow.id,
    PassRow.serial_number,
    PassRow.authentication_token,
    PassRow.notification_header,
    PassRow.notification_body,
    PassRow.update_tag,
    PassRow.updated_at,
    PassRow.notification_marked,
    PassRow.notification_ticket_id,
    PassRow.apple_values,
    PassRow.template_id,
    TemplateRow.pass_type_identifier,
    TemplateRow.package_version,
    PassRow.has_content,
    _HAS_CONTENT,
    PassRow.own_files,
)
_PACKAGE_OF_PASS = _PACKAGE_COLUMNS.join(TemplateRow, _TEMPLATE_OF_PASS).where(
    PassRow.project_id == bindparam("project_id"), PassRow.id == bindparam("pass_id")
)
# A device's download reads the pass it names and what its package is made of at once.
_PACKAGES_NAMED = apple_passes_named(
    _PACKAGE_COLUMNS, bindparam("pass_type_identifier"), bindparam("serial_number")
)


def _updated(device: Any, pass_type_identifier: Any, since: Any) -> Select[*tuple[Any, ...]]:
    """The passes with content of that type the device is registered for, changed after
    the tag `since` (-1 for all of them), as their downloads need them: the device asks
    for each next."""
    return (
        _PACKAGE_COLUMNS.select_from(DeviceRegistrationRow)
        .join(
            PassRow,
            and_(
                PassRow.project_id == DeviceRegistrationRow.project_id,
                PassRow.id == DeviceRegistrationRow.pass_id,
            ),
        )
        .join(TemplateRow, _TEMPLATE_OF_PASS)
        .where(
            DeviceRegistrationRow.device_library_identifier == device,
            TemplateRow.pass_type_identifier == pass_type_identifier,
            _HAS_CONTENT,
            PassRow.update_tag > since,
        )
        .limit(MAX_DEVICE_PASSES)
    )


_UPDATED_PACKAGES = _updated(
    bindparam("device"), bindparam("pass_type_identifier"), bindparam("since")
)
_UPDATES_ASKED = unnested(device=String(), pass_type_identifier=String(), since=BigInteger())
_UPDATED_PACKAGES_EACH = each_asked(
    _UPDATES_ASKED,
    _updated(
        _UPDATES_ASKED.c.device, _UPDATES_ASKED.c.pass_type_identifier, _UPDATES_ASKED.c.since
    ),
)


@dataclass(frozen=True)
class PassPackageState:
    """A pass as its package shows it, but its files and its template's signing; and the
    token a device proves with.

    Its files' list and its values stay as stored until a download asks for them: a
    serials query reads every pass it lists this way, and most are only named."""

    named: NamedPass
    template_id: str
    template_version: str | None  # its template's package_version
    own_content: bool  # files of its own (SetPassContent) over its template's
    pass_type_identifier: str
    serial_number: str
    notification_header: str | None
    notification_body: str | None
    notification_marked: bool
    notification_ticket_id: int | None
    stored_own_files: Sequence[Sequence[str]] | None  # passes.own_files
    stored_values: dict[str, Any] | None  # passes.apple_values

    @functools.cached_property
    def own_files(self) -> dict[str, StoredFile]:
        """Its own files, by name."""
        return {
            name: StoredFile(digest, sha1) for name, digest, sha1 in self.stored_own_files or ()
        }

    @functools.cached_property
    def values(self) -> PassValues:
        return PassValues.from_json(self.stored_values)


def _package_state(row: Sequence[Any]) -> PassPackageState:
    (
        project_id, pass_id, serial_number, token, header, body, update_tag, update_time,
        marked, ticket_id, values, template_id, pass_type_identifier, template_version,
        own_content, has_content, own_files,
    ) = row  # fmt: skip
    return PassPackageState(
        named=NamedPass(project_id, pass_id, token, update_tag, update_time, bool(has_content)),
        template_id=template_id,
        template_version=template_version,
        own_content=bool(own_content),
        pass_type_identifier=pass_type_identifier,
        serial_number=serial_number,
        notification_header=header,
        notification_body=body,
        notification_marked=bool(marked),
        notification_ticket_id=ticket_id,
        stored_own_files=own_files,
        stored_values=values,
    )


def updated_packages(
    device_library_identifier: str, pass_type_identifier: str, since: int | None
) -> Steps[list[PassPackageState]]:
    """The device's passes of that type changed after the tag `since` (all of them
    without one), with what their packages are made of but their files' bytes."""
    rows = yield Query(
        _UPDATED_PACKAGES,
        {
            "device": device_library_identifier,
            "pass_type_identifier": pass_type_identifier,
            "since": -1 if since is None else since,
        },
    )
    return [_package_state(row) for row in rows]


@dataclass(frozen=True)
class UpdatesAsked:
    """A device's serials query: its passes of a type changed after a tag (None: all)."""

    device_library_identifier: str
    pass_type_identifier: str
    since: int | None


def updated_packages_each(asked: Sequence[UpdatesAsked]) -> Steps[list[list[PassPackageState]]]:
    """PostgreSQL: `updated_packages` for each question, at once."""
    rows = yield Query(
        _UPDATED_PACKAGES_EACH,
        {
            "device": [a.device_library_identifier for a in asked],
            "pass_type_identifier": [a.pass_type_identifier for a in asked],
            "since": [-1 if a.since is None else a.since for a in asked],
        },
    )
    return [[_package_state(row) for row in answer] for answer in answers_of(len(asked), rows)]


def packages_named(pass_type_identifier: str, serial_number: str) -> Steps[list[PassPackageState]]:
    """The Apple passes with that pass type and serial number, as `passes_named`, with
    what their packages are made of but their files."""
    rows = yield Query(
        _PACKAGES_NAMED,
        {"pass_type_identifier": pass_type_identifier, "serial_number": serial_number},
    )
    return [_package_state(row) for row in rows]


DEFAULT_TEMPLATE_PARTS_BYTES = 4 * 1024 * 1024


@dataclass(frozen=True)
class TemplateParts:
    """What a template gives each of its passes' packages: its signing material (None:
    the server's) and its shared files, by name, without their bytes."""

    signing: AppleSigningPem | None
    files: dict[str, StoredFile]

    @property
    def weight(self) -> int:
        signing = self.signing
        pems = (
            len(signing.certificate_pem)
            + len(signing.private_key_pem)
            + len(signing.wwdr_certificate_pem)
            if signing
            else 0
        )
        return pems + 200 * len(self.files)  # a name and two hex digests a file


class TemplatePartsCache(BytesBoundedLru[tuple[str, str, str], TemplateParts]):
    """Templates' parts by project, template and package version, least recently used
    dropped first once over `max_bytes`. A version is never given twice, so a kept entry
    is never stale: a template's new signing or content comes with a new version, which
    its passes' next reads name. Used from the event loop only (no lock).

    Read for every download, the parts were a second statement and the signing PEMs (a
    few KB) rode on the first. Kept, a device update on PostgreSQL cost 0.56-0.85 ms of
    PostgreSQL's CPU against 0.64-0.93, and 2.43-3.04 ms of the HTTP processes' against
    2.56-3.26 (pulls of 2,000 devices, two alternating pairs of three, 2026-12-04)."""

    def __init__(self, max_bytes: int = DEFAULT_TEMPLATE_PARTS_BYTES) -> None:
        super().__init__(max_bytes, lambda parts: parts.weight)


TEMPLATE_PARTS = TemplatePartsCache()

_TEMPLATE_SIGNING = select(
    TemplateRow.package_version,
    TemplateRow.apple_certificate_pem,
    TemplateRow.apple_private_key_pem,
    TemplateRow.apple_wwdr_certificate_pem,
).where(TemplateRow.project_id == bindparam("project_id"), TemplateRow.id == bindparam("id"))


_TEMPLATE_FILES = (
    select(TemplateFileRow.name, TemplateFileRow.digest, ContentFileRow.sha1)
    .join(
        ContentFileRow,
        and_(
            ContentFileRow.project_id == TemplateFileRow.project_id,
            ContentFileRow.digest == TemplateFileRow.digest,
        ),
    )
    .where(
        TemplateFileRow.project_id == bindparam("project_id"),
        TemplateFileRow.template_id == bindparam("owner"),
    )
)
_CONTENT = select(ContentFileRow.data).where(
    ContentFileRow.project_id == bindparam("project_id"),
    ContentFileRow.digest == bindparam("digest"),
)


def template_parts(
    project_id: str, template_id: str, version: str | None, cache: TemplatePartsCache
) -> Steps[TemplateParts]:
    """The template's parts at `version` (its passes' read named it): kept ones, else read
    and kept."""
    kept = cache.get((project_id, template_id, version)) if version else None
    if kept is not None:
        return kept
    # The version and the signing first, the files after: a change committed in between
    # comes with a new version, so the files read then are kept under the old version,
    # which no read after that change names (the other way round, the old files would be
    # kept under the new version).
    found = yield Query(_TEMPLATE_SIGNING, {"project_id": project_id, "id": template_id})
    if not found:
        return TemplateParts(None, {})
    version_read, certificate, key, wwdr = found[0]
    listed = yield Query(_TEMPLATE_FILES, {"project_id": project_id, "owner": template_id})
    parts = TemplateParts(
        AppleSigningPem(certificate, key, wwdr or "") if certificate and key else None,
        {name: StoredFile(digest, sha1) for name, digest, sha1 in listed},
    )
    if version_read:
        cache.put((project_id, template_id, version_read), parts)
    return parts


def package_source(
    project_id: str, pass_id: str, cache: ContentCache, templates: TemplatePartsCache
) -> Steps[PassPackageSource | None]:
    """What the pass's .pkpass is made of now (None: no such pass); its files are empty
    without content."""
    found = yield Query(_PACKAGE_OF_PASS, {"project_id": project_id, "pass_id": pass_id})
    if not found:
        return None
    return (yield from package_files(_package_state(found[0]), cache, templates))


def package_files(
    state: PassPackageState, cache: ContentCache, templates: TemplatePartsCache
) -> Steps[PassPackageSource]:
    """The pass's package source with its files (none without content). The template's
    parts come from `templates` and shared files from `cache`: read from the database
    once a process."""
    named = state.named
    parts = yield from template_parts(
        named.project_id, state.template_id, state.template_version, templates
    )
    known = dict(parts.files)
    if state.own_content:  # its own files win
        known |= state.own_files
    files: dict[str, bytes] = {}
    if PASS_JSON in known:
        for name, stored in known.items():
            data = cache.get(stored.digest)
            if data is None:
                rows = yield Query(
                    _CONTENT, {"project_id": named.project_id, "digest": stored.digest}
                )
                data = bytes(rows[0][0])  # drivers may hand out memoryviews
                cache.put(stored.digest, data)
            files[name] = data
    return PassPackageSource(
        project_id=named.project_id,
        pass_id=named.pass_id,
        pass_type_identifier=state.pass_type_identifier,
        serial_number=state.serial_number,
        authentication_token=named.authentication_token,
        notification_header=state.notification_header,
        notification_body=state.notification_body,
        update_tag=named.update_tag,
        update_time=named.update_time,
        template_signing=parts.signing,
        files=files,
        notification_marked=state.notification_marked,
        notification_ticket_id=state.notification_ticket_id,
        stored=known if files else {},
        values=state.values,
    )
