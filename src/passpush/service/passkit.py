"""The device side of Apple Wallet: the PassKit web service's use cases, and the signed
.pkpass that they and GetPassPackage serve.

A device knows a pass by its pass type identifier and serial number, and proves it
holds it with the pass's authentication token (`Authorization: ApplePass <token>`),
compared in constant time. It registers for pushes (the same registrations Send
delivers to), asks which of its passes changed since an update tag, fetches the
re-signed pass, and unregisters when the holder deletes the pass.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import math
import re
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol, TypeVar

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from passpush.domain.clock import Clock, utcnow
from passpush.domain.errors import FailedPrecondition, NotFound, Unauthenticated
from passpush.domain.lru import BytesBoundedLru
from passpush.domain.passkit import (
    MANIFEST,
    PASS_JSON,
    SIGNATURE,
    PassPackageSource,
    manifest_of,
    render_pass_json,
)
from passpush.domain.pkpass_zip import ZipEntry, zip_archive, zip_entry
from passpush.domain.signing import AppleSigningPem, SigningMaterial, load_signing
from passpush.domain.update_tags import parse_update_tag, update_tag_at
from passpush.domain.validation import AUTH_TOKEN_MIN, check_id, check_push_token, raise_if_any
from passpush.service.fetches import FetchLedger, FetchSink, PassVersion
from passpush.service.listed_passes import ListedPasses
from passpush.service.read_batches import ReadBatches
from passpush.service.registration_groups import RegistrationGroups
from passpush.store.connectors.connector import Connector
from passpush.store.content import CONTENT_CACHE
from passpush.store.device_registrations import DeviceRegistrationStore
from passpush.store.passkit import (
    TEMPLATE_PARTS,
    NamedPass,
    PassPackageState,
    UpdatesAsked,
    oldest_open_write,
    package_files,
    packages_named,
    passes_named,
    passes_named_each,
    updated_packages,
    updated_packages_each,
)
from passpush.store.registration_writes import (
    HeldRegistration,
    NewRegistration,
    Registered,
    register_devices,
    register_holders,
)

log = logging.getLogger(__name__)
T = TypeVar("T")

DEFAULT_WEB_SERVICE_URL = "http://127.0.0.1:8080/passkit"
MAX_LOG_LINES = 100
MAX_LOG_LINE = 1000
# What a device might put in a log line that must not reach ours: a token, push or pass, of
# any shape. Both are at least 16 characters without whitespace (validation sees to it), so
# every such run keeps its first 8 characters only, as elsewhere.
_TOKEN_LIKE = re.compile(rf"\S{{{AUTH_TOKEN_MIN},}}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_UNAUTHENTICATED = "no pass with that pass type and serial number has that ApplePass token"


DEFAULT_SIGNED_CACHE_BYTES = 32 * 1024 * 1024


@dataclass(frozen=True)
class PassKitSettings:
    # The public base URL of the PassKit web service, written into each pass.
    web_service_url: str = DEFAULT_WEB_SERVICE_URL
    # The server's signing material, for templates without their own.
    default_signing: SigningMaterial | None = None
    # How many bytes of signed pass versions (pass.json, manifest, signature: a few KB
    # each) a process keeps, so that a pass fetched again unchanged is not signed again;
    # and as many bytes of stored files' zip entries (a PNG's are the cached file itself).
    signed_cache_bytes: int = DEFAULT_SIGNED_CACHE_BYTES


@dataclass(frozen=True)
class _Signed:
    """What a pass version's signature covers: its pass.json and the manifest, signed."""

    pass_json: bytes
    manifest: bytes
    signature: bytes

    @property
    def size(self) -> int:
        return len(self.pass_json) + len(self.manifest) + len(self.signature)


# A pass version as signed: project, pass, update tag, and whose certificate signed it.
_VersionKey = tuple[str, str, int, str]


class PassPackager:
    """Makes signed .pkpass files: pass.json with the pass's state now, signed with the
    template's material or else the server's.

    A signature is most of a package's cost (an RSA signature, ~1 ms), so each pass
    version's signed part is kept, up to `signed_cache_bytes`, least recently used out
    first: a second device, a retry or a refresh gets the same bytes without signing.
    """

    _CACHED_MATERIALS = 64

    def __init__(self, settings: PassKitSettings) -> None:
        self.web_service_url = settings.web_service_url
        self._default = settings.default_signing
        # Loading a key checks it (milliseconds for RSA): once per template's material.
        self._loaded: OrderedDict[AppleSigningPem, SigningMaterial] = OrderedDict()
        self._signed = BytesBoundedLru[_VersionKey, _Signed](
            settings.signed_cache_bytes, lambda signed: signed.size
        )
        # Each stored file's zip entry, by name and digest: shared images are checksummed
        # (and the rest deflated) once, not for every device.
        self._entries = BytesBoundedLru[tuple[str, str], ZipEntry](
            settings.signed_cache_bytes, lambda entry: entry.weight
        )
        self.signatures = 0  # made by this packager: what the cache saved shows beside it

    def can_sign(self, template_signing: AppleSigningPem | None) -> bool:
        return template_signing is not None or self._default is not None

    async def package(self, source: PassPackageSource) -> bytes:
        """The pass's .pkpass; NotFound without content, FailedPrecondition without signing."""
        if PASS_JSON not in source.files:
            raise NotFound("pass_content", source.pass_id)
        signing = self._signing_for(source.template_signing)
        key = (
            source.project_id,
            source.pass_id,
            source.update_tag,
            source.template_signing.certificate_pem if source.template_signing else "",
        )
        signed = self._signed.get(key)
        if signed is None:
            # On the event loop, though it takes a millisecond: the signature holds the
            # GIL, so another thread would not let the loop run meanwhile either, and the
            # hop there and back cost more than the signature under load.
            signed = self._sign(source, signing)
            self._signed.put(key, signed)
        files = {**source.files, PASS_JSON: signed.pass_json}
        entries = [self._entry(name, data, source) for name, data in sorted(files.items())]
        entries += (
            zip_entry(MANIFEST, signed.manifest, deflate=False),
            zip_entry(SIGNATURE, signed.signature, deflate=False),
        )
        return zip_archive(entries)

    def _entry(self, name: str, data: bytes, source: PassPackageSource) -> ZipEntry:
        stored = source.stored.get(name)
        if stored is None or name == PASS_JSON:  # pass.json: the pass's own, rendered
            # The pass's own files (pass.json, the manifest, the signature) are stored, not
            # deflated: deflating them took more of a download's CPU (a twenty-fifth) than
            # the kilobyte or two it saved was worth beside the shared images' tens of KB.
            return zip_entry(name, data, deflate=False)
        entry = self._entries.get((name, stored.digest))
        if entry is None:
            entry = zip_entry(name, data)
            self._entries.put((name, stored.digest), entry)
        return entry

    def _sign(self, source: PassPackageSource, signing: SigningMaterial) -> _Signed:
        pass_json = render_pass_json(source, self.web_service_url)
        # The stored files' SHA-1s are known: only the rendered pass.json is hashed.
        sha1s = {name: f.sha1 for name, f in source.stored.items() if name != PASS_JSON}
        manifest = manifest_of({**source.files, PASS_JSON: pass_json}, sha1s)
        self.signatures += 1
        return _Signed(pass_json, manifest, signing.sign(manifest))

    def _signing_for(self, template_signing: AppleSigningPem | None) -> SigningMaterial:
        if template_signing is None:
            if self._default is None:
                raise FailedPrecondition(
                    "no signing material: give the template apple_signing "
                    "(SetTemplateSigning) or set PASSPUSH_APPLE_SIGNING_CERT, _KEY and _WWDR",
                    reason="SIGNING_NOT_CONFIGURED",
                )
            return self._default
        material = self._loaded.get(template_signing)
        if material is None:
            material = load_signing(template_signing, field="template.apple_signing", stored=True)
            self._loaded[template_signing] = material
            if len(self._loaded) > self._CACHED_MATERIALS:
                self._loaded.popitem(last=False)
        else:
            self._loaded.move_to_end(template_signing)
        return material


@dataclass(frozen=True)
class UpdatedSerials:
    serial_numbers: list[str]
    last_updated: str  # the update tag to ask from next time (a string, as Apple wants)


@dataclass(frozen=True)
class LatestPass:
    pkpass: bytes | None  # None: not modified since the device's copy
    last_modified: datetime


class SettledTime:
    """A time before which every change has committed (PostgreSQL): the oldest open
    write's start, less a margin for a tag stamped a moment before that transaction's
    first write and for clocks a little apart; or, with none open, the time it was asked.

    Asked of the database at most every SETTLED_FOR per process: a fetch storm asked with
    every serials query, a scan of pg_stat_activity each time. An answer a moment old is
    still right, only more cautious: a change not committed then began after it.
    """

    SETTLED_FOR = 0.05  # seconds
    MARGIN = timedelta(seconds=1)

    def __init__(self, reads: Connector) -> None:
        self._reads = reads
        self._asked: asyncio.Task[datetime] | None = None
        self._asked_at = -math.inf

    async def before(self, *, fresh: bool = False) -> datetime:
        """The time; `fresh` asks the database now rather than take a kept answer."""
        if fresh:
            return await self._ask()
        if self._asked is None or time.monotonic() - self._asked_at > self.SETTLED_FOR:
            # One query for every caller meanwhile.
            self._asked_at = time.monotonic()
            self._asked = asyncio.ensure_future(self._ask())
        try:
            return await asyncio.shield(self._asked)
        except Exception:
            self._asked = None  # a failed answer is not kept
            raise

    async def _ask(self) -> datetime:
        oldest, now = await self._reads.run(oldest_open_write)
        return now if oldest is None else oldest - self.MARGIN


class Registrar(Protocol):
    async def register(self, registration: NewRegistration) -> bool:
        """Writes the registration; True when it is new."""


class PassKitCore:
    """The PassKit web service's use cases. No API key: each call is the device's."""

    def __init__(
        self,
        standalone: Connector,
        sessions: async_sessionmaker[AsyncSession],
        transactions: Connector,
        packager: PassPackager,
        *,
        clock: Clock = utcnow,
        fetch_sink: FetchSink | None = None,
        registrar: Registrar | None = None,
    ) -> None:
        """`standalone` runs the devices' statements that stand alone, outside any
        transaction block (store.connectors.connect_standalone): their reads, and on
        PostgreSQL their registrations; `transactions` the rest. `registrar` writes the
        registrations (by default in groups, here); `fetch_sink` takes fetch confirmations
        (by default none are kept)."""
        self._sessions = sessions
        self._standalone = standalone
        self._transactions = transactions
        self._registrations = RegistrationGroups(transactions, register_devices, clock=clock)
        self._registrar = registrar or self._registrations
        # PostgreSQL, writing its own registrations: a group is one statement that checks
        # the devices' tokens and writes, committed alone with its plan kept. In a loop of
        # 8,000 registrations (2026-12-04), a check then a write in a transaction of the
        # engine's cost 0.16 ms of the HTTP process and 0.155 ms of PostgreSQL a
        # registration (4,900/s); this costs 0.133 and 0.078 ms (7,100/s), most of the
        # difference the plan, which the engine's connections make anew each time.
        self._holders: RegistrationGroups[HeldRegistration, Registered | None] | None = None
        if registrar is None and standalone.dialect == "postgresql":
            self._holders = RegistrationGroups(standalone, register_holders, clock=clock)
        self.packager = packager
        self._clock = clock
        # Which device fetched which notification: where confirmations go (none: not kept).
        self._fetch_sink = fetch_sink
        self._fetch_ledger = FetchLedger()
        # What the serials queries read, for the downloads that follow them.
        self._listed = ListedPasses()
        self._settled: SettledTime | None = None
        # PostgreSQL: the devices' reads asked at the same time go in one statement
        # (service/read_batches.py). SQLite's reads run at once on the event loop's
        # thread: there, none are ever asked at the same time.
        self._updates: ReadBatches[UpdatesAsked, list[PassPackageState]] | None = None
        self._names: ReadBatches[tuple[str, str], list[NamedPass]] | None = None
        if standalone.dialect == "postgresql":
            self._settled = SettledTime(standalone)
            # One batch out at a time: the questions asked meanwhile all go in the next.
            # With two out (a read connection each), batches held 1.5 questions on average
            # and a device update cost 1.34 ms of CPU in all, against 1.08-1.13 ms with one
            # (pulls of 2,000 devices on one server, 2026-12-04).
            self._updates = ReadBatches(standalone, updated_packages_each, in_flight=1)
            self._names = ReadBatches(standalone, passes_named_each, in_flight=1)

    async def register(
        self,
        pass_type_identifier: str,
        serial_number: str,
        device_library_identifier: str,
        push_token: str,
        authentication_token: str | None,
    ) -> bool:
        """Registers the device for pushes about the pass (or renews its push token);
        True when the registration is new."""
        problems = [
            # As RegisterDevice: the same registrations.
            *check_id("deviceLibraryIdentifier", device_library_identifier),
            *check_push_token("pushToken", push_token),
        ]
        if self._holders is not None and not problems:
            # PostgreSQL: the statement that writes the registration checks the token.
            token = _token_for(pass_type_identifier, serial_number, authentication_token)
            registered = await self._holders.register(
                HeldRegistration(
                    pass_type_identifier,
                    serial_number,
                    token.decode(),
                    device_library_identifier,
                    push_token,
                )
            )
            if registered is None:
                raise Unauthenticated(_UNAUTHENTICATED)
        else:
            # A device that cannot prove it holds the pass learns nothing of its input.
            named = await self._authenticate(
                pass_type_identifier, serial_number, authentication_token
            )
            raise_if_any(problems)
            new = await self._registrar.register(
                NewRegistration(
                    named.project_id, named.pass_id, device_library_identifier, push_token
                )
            )
            registered = Registered(named.project_id, named.pass_id, new)
        log.debug(
            "PassKit: device %s… %s for pass %s of project %s",
            device_library_identifier[:8],
            "registered" if registered.new else "registered again",
            registered.pass_id,
            registered.project_id,
        )
        return registered.new

    def write_registration(self, registration: NewRegistration) -> asyncio.Future[bool]:
        """Writes a registration another process authenticated and checked (an HTTP
        process hands its devices' registrations to this one: see http/processes.py)."""
        return self._registrations.submit(registration)

    async def unregister(
        self,
        pass_type_identifier: str,
        serial_number: str,
        device_library_identifier: str,
        authentication_token: str | None,
    ) -> None:
        """Stops pushes about the pass to the device; unregistering twice is no error."""
        named = await self._authenticate(pass_type_identifier, serial_number, authentication_token)
        if not _plausible(device_library_identifier, 255):
            return  # no such device can be registered
        async with self._sessions.begin() as session:
            try:
                await DeviceRegistrationStore(session, named.project_id).unregister_device(
                    named.pass_id, device_library_identifier
                )
            except NotFound:
                return
        log.info(
            "PassKit: device %s… unregistered from pass %s of project %s",
            device_library_identifier[:8],
            named.pass_id,
            named.project_id,
        )

    async def updated_serials(
        self, device_library_identifier: str, pass_type_identifier: str, since: str | None
    ) -> UpdatedSerials | None:
        """The serial numbers of the device's passes of that type changed after the tag
        `since` (all of them without a tag, or with one passpush did not make); None when
        there are none."""
        if not (
            _plausible(device_library_identifier, 255) and _plausible(pass_type_identifier, 255)
        ):
            return None
        since_tag = parse_update_tag(since)
        settled, rows = await self._serials_after(
            device_library_identifier, pass_type_identifier, since_tag
        )
        if not rows:
            return None
        self._listed.keep(pass_type_identifier, rows)
        if self._fetch_sink is not None:
            versions = [
                PassVersion(r.named.project_id, r.named.pass_id, r.named.update_tag) for r in rows
            ]
            self._fetch_ledger.told(device_library_identifier, versions, self._clock())
        last_updated = max(r.named.update_tag for r in rows)
        if settled is not None:
            # Not past a change still to commit: the device asks again from before it (and
            # what it already has answers 304).
            last_updated = min(last_updated, update_tag_at(settled) - 1)
            # But never before the device's own tag: a device is never told an older tag
            # than it asked from. Its tag then stays: it asks from there again.
            last_updated = max(last_updated, since_tag or 0)
        return UpdatedSerials(sorted({r.serial_number for r in rows}), str(last_updated))

    async def _serials_after(
        self, device: str, pass_type_identifier: str, since: int | None
    ) -> tuple[datetime | None, list[PassPackageState]]:
        """The device's passes changed after `since`, and (PostgreSQL) a time before which
        every change had committed when they were read: asked first, since a transaction
        that writes after that stamps later tags."""

        asked = UpdatesAsked(device, pass_type_identifier, since)
        if self._settled is None:
            return None, await self._updated(asked)
        settled = await self._settled.before()
        rows = await self._updated(asked)
        if rows and max(r.named.update_tag for r in rows) >= update_tag_at(settled):
            # A change since the kept answer was asked: asked again now, so that the device
            # is not held back for nothing (and asks for the same pass again).
            settled = await self._settled.before(fresh=True)
            rows = await self._updated(asked)
        return settled, rows

    async def _updated(self, asked: UpdatesAsked) -> list[PassPackageState]:
        if self._updates is not None:
            return await self._updates.read(asked)
        return await self._standalone.run(
            lambda: updated_packages(
                asked.device_library_identifier, asked.pass_type_identifier, asked.since
            )
        )

    async def latest_pass(
        self,
        pass_type_identifier: str,
        serial_number: str,
        authentication_token: str | None,
        if_modified_since: datetime | None,
    ) -> LatestPass:
        """The pass as it is now, signed; or no body when the device's copy is current."""
        token = _token_for(pass_type_identifier, serial_number, authentication_token)
        # As the serials query just before read it, if it listed the pass; else the pass
        # with what its package is made of, in the read that authenticates it.
        state = self._listed.take(pass_type_identifier, serial_number, token)
        if state is None:
            named_states = await self._standalone.run(
                lambda: packages_named(pass_type_identifier, serial_number)
            )
            state = _held(named_states, token, lambda found: found.named)
        named = state.named
        if not named.has_content:
            raise NotFound("pass_content", serial_number)
        last_modified = last_modified_of(named.update_time, self._clock())
        if if_modified_since is not None and not modified_since(
            named.update_time, if_modified_since
        ):
            return LatestPass(None, last_modified)  # the device's copy is this version
        source = await self._standalone.run(
            lambda: package_files(state, CONTENT_CACHE, TEMPLATE_PARTS)
        )
        if PASS_JSON not in source.files:
            raise NotFound("pass_content", serial_number)
        try:
            pkpass = await self.packager.package(source)
        except FailedPrecondition as error:  # the device only sees a status: say it here
            log.error(
                "PassKit: cannot serve pass %s of project %s: %s",
                named.pass_id,
                named.project_id,
                error.message,
            )
            raise
        self._fetched(source)
        return LatestPass(pkpass, last_modified)

    def _fetched(self, source: PassPackageSource) -> None:
        """A device downloads this version: if it carries a notification, a device told
        about it confirms the fetch (service/fetches.py)."""
        if self._fetch_sink is None or source.notification_ticket_id is None:
            return
        confirmation = self._fetch_ledger.fetched(
            source.project_id,
            source.pass_id,
            source.update_tag,
            source.notification_ticket_id,
            self._clock(),
        )
        if confirmation is not None:
            self._fetch_sink.add(confirmation)

    async def close(self) -> None:
        self._standalone.close()
        self._transactions.close()

    async def _authenticate(
        self, pass_type_identifier: str, serial_number: str, authentication_token: str | None
    ) -> NamedPass:
        """The pass the device named, if the device holds its token; else Unauthenticated,
        the same whether the pass does not exist or the token is wrong."""
        token = _token_for(pass_type_identifier, serial_number, authentication_token)
        if self._names is not None:
            named = await self._names.read((pass_type_identifier, serial_number))
        else:
            named = await self._standalone.run(
                lambda: passes_named(pass_type_identifier, serial_number)
            )
        return _held(named, token, lambda found: found)

    def record_device_logs(self, lines: Sequence[str]) -> None:
        """Writes what devices report (their errors with this service) to the log, without
        anything that looks like a token."""
        for line in lines[:MAX_LOG_LINES]:
            log.warning("PassKit device log: %s", device_log_line(line))
        if len(lines) > MAX_LOG_LINES:
            log.warning("PassKit device log: %d more lines left out", len(lines) - MAX_LOG_LINES)


def _token_for(pass_type_identifier: str, serial_number: str, token: str | None) -> bytes:
    """The token a device gave for a pass it named; Unauthenticated if none can match."""
    if not (token and _plausible(pass_type_identifier, 255) and _plausible(serial_number, 128)):
        raise Unauthenticated(_UNAUTHENTICATED)
    return token.encode()


def _held(candidates: Sequence[T], token: bytes, named: Callable[[T], NamedPass]) -> T:
    """The candidate (one per project sharing the pass type) whose token the device gave,
    compared in constant time; else Unauthenticated, the same whether the pass does not
    exist or the token is wrong."""
    found = None
    for candidate in candidates:
        if hmac.compare_digest(named(candidate).authentication_token.encode(), token):
            found = found or candidate
    if found is None:
        raise Unauthenticated(_UNAUTHENTICATED)
    return found


def last_modified_of(update_time: datetime, now: datetime) -> datetime:
    """The Last-Modified of a pass changed at `update_time`, in whole seconds as HTTP has
    them: the change's second once it is over; while it lasts, the second before, so that
    a second change within the same second still reads as modified to the device."""
    second = update_time.replace(microsecond=0)
    return second if now.replace(microsecond=0) > second else second - timedelta(seconds=1)


def modified_since(update_time: datetime, since: datetime) -> bool:
    return update_time.replace(microsecond=0) > since


def device_log_line(line: str) -> str:
    line = _CONTROL.sub(" ", line[:MAX_LOG_LINE])
    return _TOKEN_LIKE.sub(lambda match: match.group()[:8] + "…", line)


def _plausible(name: str, longest: int) -> bool:
    """A name that can be in the database: not empty, short enough, no control characters
    (PostgreSQL refuses NUL in text)."""
    return 0 < len(name) <= longest and not _CONTROL.search(name)
