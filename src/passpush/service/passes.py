"""What the notifier knows about passes: the PassService use cases."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from passpush.domain.clock import Clock, utcnow
from passpush.domain.errors import (
    AlreadyExists,
    DomainError,
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    NotFound,
    PermissionDenied,
)
from passpush.domain.model import (
    Campaign,
    DeviceRegistration,
    Entity,
    ImportedPass,
    Pass,
    PassValues,
    Platform,
    Project,
    Segment,
    Template,
)
from passpush.domain.paging import Page, decode_token, page_of, page_size
from passpush.domain.passkit import (
    PassContent,
    check_merged,
    check_pass_type_identifier,
    check_values,
    check_values_platform,
    content_from_files,
    content_from_pkpass,
)
from passpush.domain.segments import parse_criteria
from passpush.domain.signing import AppleSigningPem, load_signing
from passpush.domain.validation import (
    MEMBERS_PER_CALL_MAX,
    check_display_name,
    check_id,
    check_list_length,
    check_pass,
    check_push_token,
    check_signing_pems,
    check_template,
    raise_if_any,
)
from passpush.service.passkit import PassKitSettings, PassPackager
from passpush.store.campaigns import CampaignStore
from passpush.store.connectors import connect
from passpush.store.connectors.connector import Connector
from passpush.store.connectors.session import run_on_session
from passpush.store.content import CONTENT_CACHE
from passpush.store.device_registrations import DeviceRegistrationStore
from passpush.store.entities import EntityStore
from passpush.store.pass_content import PassContentStore
from passpush.store.pass_import import BatchResult, OneByOne, write_batch
from passpush.store.passes import PassStore
from passpush.store.passkit import TEMPLATE_PARTS, package_source
from passpush.store.project_scope import new_id
from passpush.store.projects import ProjectStore
from passpush.store.segments import SegmentStore
from passpush.store.templates import TemplateStore

DEFAULT_CAMPAIGN_LIMIT = 3
MAX_IMPORT_FAILURES_REPORTED = 100
# ImportPasses writes and commits this many passes at a time, with a few set-based
# statements (store/pass_import.py): a savepoint and a commit per pass made a large import
# crawl (150 passes/s).
IMPORT_BATCH = 1_000
MAX_IMPORTED_DEVICES = 10  # devices an imported pass carries at most
MAX_IMPORT_ENTRIES = 1_000  # passes an ImportPasses message carries at most
# What an import writes: the tables whose planner statistics it may leave behind.
IMPORTED_TABLES = ("passes", "pass_tags", "pass_group_tags", "device_registrations")


@dataclass
class ImportSummary:
    created: int = 0
    updated: int = 0
    failed: int = 0
    failures: list[tuple[int, str]] = field(default_factory=list)  # (index, message)

    def fail(self, index: int, error: DomainError) -> None:
        self.failed += 1
        if len(self.failures) < MAX_IMPORT_FAILURES_REPORTED:
            self.failures.append((index, error.message))


@dataclass(frozen=True)
class _BatchInWriting:
    task: asyncio.Task[BatchResult]
    names: set[tuple[str, ...]]  # how its passes are named: by id, by external id
    locked: asyncio.Event  # set once it holds the locks of the passes it updates


def _names(batch: Sequence[ImportedPass]) -> set[tuple[str, ...]]:
    names: set[tuple[str, ...]] = set()
    for item in batch:
        if item.pass_.id:
            names.add(("id", item.pass_.id))
        if item.pass_.external_id:
            names.add(("external", item.pass_.template_id, item.pass_.external_id))
    return names


def _tally(summary: ImportSummary, written: BatchResult) -> None:
    summary.created += written.created
    summary.updated += written.updated
    for index, failure in written.failures:
        summary.fail(index, failure)


class PassCore:
    """PassService's use cases, each within the caller's project (`project_id`)."""

    def __init__(
        self,
        engine: AsyncEngine,
        sessions: async_sessionmaker[AsyncSession],
        *,
        clock: Clock = utcnow,
        packager: PassPackager | None = None,
        transactions: Connector | None = None,
        after_import: Callable[[Sequence[str], int], Awaitable[object]] | None = None,
    ) -> None:
        """`transactions` writes imports (by default its own, on the sessions' engine);
        `after_import` is told which tables an import wrote and how many passes (PostgreSQL:
        their statistics refreshed before the call answers, so that a Send right after is
        planned on them)."""
        self._sessions = sessions
        self._transactions = transactions or connect(engine)
        self._clock = clock
        self._packager = packager or PassPackager(PassKitSettings())
        self._after_import = after_import

    async def create_project(
        self, project_id: str, requested_id: str, display_name: str
    ) -> Project:
        """Projects are provisioned with their first key (`passpush keys create`).

        A caller may only name its own project, which therefore exists already.
        """
        if requested_id and requested_id != project_id:
            raise PermissionDenied(
                "an API key acts in its own project only; a new project comes with its first "
                "key: passpush keys create --project ID",
                reason="OTHER_PROJECT",
            )
        raise_if_any(check_display_name("project.display_name", display_name))
        async with self._sessions.begin() as session:
            return await ProjectStore(session, project_id).create_project(
                display_name, self._clock()
            )

    async def create_entity(self, project_id: str, entity: Entity) -> Entity:
        entity = replace(entity, id=entity.id or new_id())
        raise_if_any(
            [*check_id("entity_id", entity.id), *check_display_name("entity.name", entity.name)]
        )
        _require_own_project(project_id, entity.project_id, "entity.project_id")
        async with self._sessions.begin() as session:
            return await EntityStore(session, project_id).create_entity(entity, self._clock())

    async def create_template(self, project_id: str, template: Template) -> Template:
        template = replace(
            template, id=template.id or new_id(), project_id=template.project_id or project_id
        )
        raise_if_any([*check_id("template_id", template.id), *check_template(template)])
        _require_own_project(project_id, template.project_id, "template.project_id")
        if template.apple_signing is not None:
            if template.platform is not Platform.APPLE:
                raise InvalidArgument.field("template.apple_signing", "is for Apple templates only")
            self._check_signing(
                template.apple_signing, template.pass_type_identifier, "template.apple_signing"
            )
        async with self._sessions.begin() as session:
            return await TemplateStore(session, project_id).create_template(template, self._clock())

    async def set_template_signing(
        self, project_id: str, template_id: str, signing: AppleSigningPem | None
    ) -> Template:
        raise_if_any(check_id("template_id", template_id))
        async with self._sessions.begin() as session:
            templates = TemplateStore(session, project_id)
            template = await templates.get_template(template_id)
            if signing is not None:
                self._check_signing(signing, template.pass_type_identifier, "apple_signing")
            return await templates.set_template_signing(template_id, signing)

    def _check_signing(
        self, signing: AppleSigningPem, pass_type_identifier: str, field: str
    ) -> None:
        raise_if_any(
            check_signing_pems(
                field,
                signing.certificate_pem,
                signing.private_key_pem,
                signing.wwdr_certificate_pem,
            )
        )
        material = load_signing(signing, field=field, pass_type_identifier=pass_type_identifier)
        if material.expire_time <= self._clock():
            raise InvalidArgument.field(
                f"{field}.certificate_pem", f"expired on {material.expire_time:%Y-%m-%d}"
            )

    async def get_template(self, project_id: str, template_id: str) -> Template:
        raise_if_any(check_id("id", template_id))
        async with self._sessions() as session:
            return await TemplateStore(session, project_id).get_template(template_id)

    async def list_templates(
        self, project_id: str, requested_project: str, size: int, token: str
    ) -> Page[Template]:
        _require_own_project(project_id, requested_project, "project_id")
        limit, after = page_size(size), decode_token(token)
        async with self._sessions() as session:
            items = await TemplateStore(session, project_id).list_templates(after, limit + 1)
        return page_of(items, limit, lambda t: t.id)

    async def upsert_pass(self, project_id: str, p: Pass) -> Pass:
        raise_if_any(_check_pass(p))
        async with self._sessions.begin() as session:
            result, _ = await _upsert_pass(session, project_id, p, self._clock())
            return result

    async def import_passes(
        self, project_id: str, passes: AsyncIterator[ImportedPass]
    ) -> ImportSummary:
        """Upserts the passes and registers their devices IMPORT_BATCH at a time, a
        transaction each; a pass refused (with its devices) does not fail its batch.

        The next batch is read from the stream while those before are written. On PostgreSQL
        two batches are written at once (the database's and this process's work overlap: a
        300,000-pass import went from 17,000 to 24,100 passes/s): the second starts once
        the first has locked the passes it updates, and only if they name no pass in common,
        so a pass named twice takes its values in the import's order. The counts and
        failures are tallied in that order too. The tables' statistics are refreshed
        (`after_import`) as the import doubles (1, 2, 4, ... batches written) and at its
        end: a plan made for the tables as they were before would stay while they grow."""
        summary = ImportSummary()
        refresh_at = IMPORT_BATCH  # passes written
        batch: list[ImportedPass] = []
        refused: list[tuple[int, DomainError]] = []  # the batch's passes refused unwritten
        writing: deque[_BatchInWriting] = deque()
        at_once = 2 if self._transactions.dialect == "postgresql" else 1
        try:
            async for item in passes:
                violations = _check_imported(item)
                if violations:
                    refused.append((item.index, InvalidArgument(violations)))
                else:
                    batch.append(item)
                if len(batch) + len(refused) < IMPORT_BATCH:
                    continue
                names = _names(batch)
                while writing and (
                    len(writing) >= at_once or any(w.names & names for w in writing)
                ):
                    _tally(summary, await writing.popleft().task)
                written = summary.created + summary.updated
                if self._after_import is not None and written >= refresh_at:
                    await self._after_import(IMPORTED_TABLES, written)
                    refresh_at = 2 * written
                if writing:
                    await writing[-1].locked.wait()
                writing.append(self._start_batch(project_id, batch, refused, names))
                batch, refused = [], []
            while writing:
                _tally(summary, await writing.popleft().task)
            if batch or refused:
                _tally(summary, await self._import_batch(project_id, batch, refused))
        finally:
            # The stream broke off: the batches in writing commit or not, each as a whole.
            await asyncio.gather(*(w.task for w in writing), return_exceptions=True)
        if self._after_import is not None:
            await self._after_import(IMPORTED_TABLES, summary.created + summary.updated)
        return summary

    def _start_batch(
        self,
        project_id: str,
        batch: list[ImportedPass],
        refused: list[tuple[int, DomainError]],
        names: set[tuple[str, ...]],
    ) -> _BatchInWriting:
        locked = asyncio.Event()
        loop = asyncio.get_running_loop()

        def lock_taken() -> None:  # on the thread the steps run on (SQLite's writer's)
            loop.call_soon_threadsafe(locked.set)

        task = asyncio.create_task(self._import_batch(project_id, batch, refused, lock_taken))
        task.add_done_callback(lambda _: locked.set())  # refused whole, or failed: no locks
        return _BatchInWriting(task, names, locked)

    async def _import_batch(
        self,
        project_id: str,
        batch: list[ImportedPass],
        refused: list[tuple[int, DomainError]],
        locked: Callable[[], None] = lambda: None,
    ) -> BatchResult:
        """Writes the batch; what it wrote, with the refusals (its own and `refused`)."""
        written = BatchResult()
        try:
            if batch:
                now = self._clock()
                written = await self._transactions.run(
                    lambda: write_batch(project_id, batch, now, locked)
                )
        except (OneByOne, IntegrityError):
            # The same pass twice, values to check, or a concurrent writer: a pass at a time.
            written = BatchResult()
            for item in batch:
                try:
                    async with self._sessions.begin() as session:
                        if await _import_one(session, project_id, item, self._clock()):
                            written.created += 1
                        else:
                            written.updated += 1
                except DomainError as error:
                    written.failures.append((item.index, error))
        written.failures = sorted([*written.failures, *refused], key=lambda f: f[0])
        return written

    async def get_pass(self, project_id: str, pass_id: str) -> Pass:
        raise_if_any(check_id("id", pass_id))
        async with self._sessions() as session:
            return await PassStore(session, project_id).get_pass(pass_id)

    async def list_passes(
        self, project_id: str, template_id: str, size: int, token: str
    ) -> Page[Pass]:
        raise_if_any(check_id("template_id", template_id))
        limit, after = page_size(size), decode_token(token)
        async with self._sessions() as session:
            items = await PassStore(session, project_id).list_passes(template_id, after, limit + 1)
        return page_of(items, limit, lambda p: p.id)

    async def set_pass_content(
        self,
        project_id: str,
        pass_id: str,
        *,
        pkpass: bytes,
        pass_json: bytes,
        files: dict[str, bytes],
    ) -> Pass:
        """Checks the content whole before anything is written: a refused request changes
        nothing."""
        raise_if_any(check_id("pass_id", pass_id))
        if pkpass and (pass_json or files):
            raise InvalidArgument.field("pkpass", "give either pkpass, or pass_json and files")
        field = "pkpass" if pkpass else "pass_json"
        content = content_from_pkpass(pkpass) if pkpass else content_from_files(pass_json, files)
        async with self._sessions.begin() as session:
            current = await PassStore(session, project_id).get_pass(pass_id)
            template = await TemplateStore(session, project_id).get_template(current.template_id)
            _require_apple(template, "content is for Apple passes")
            check_pass_type_identifier(content, template.pass_type_identifier, field)
            if not self._packager.can_sign(template.apple_signing):
                raise FailedPrecondition(
                    "nothing can sign this pass: give its template apple_signing "
                    "(SetTemplateSigning) or the server PASSPUSH_APPLE_SIGNING_CERT, _KEY "
                    "and _WWDR",
                    reason="SIGNING_NOT_CONFIGURED",
                )
            serial_number = await _serial_number(
                PassStore(session, project_id), current, template, content
            )
            if current.apple_values:
                _check_values_fit(content.stored_files()["pass.json"], current.apple_values, field)
            return await PassContentStore(session, project_id).set_pass_content(
                current.id, content, serial_number, content.authentication_token, self._clock()
            )

    async def set_template_content(
        self,
        project_id: str,
        template_id: str,
        *,
        pkpass: bytes,
        pass_json: bytes,
        files: dict[str, bytes],
    ) -> Template:
        """The content a template's passes share. Checked whole as a pass's is, and it
        names no pass: no serialNumber or authenticationToken (each pass has its own)."""
        raise_if_any(check_id("template_id", template_id))
        if pkpass and (pass_json or files):
            raise InvalidArgument.field("pkpass", "give either pkpass, or pass_json and files")
        field = "pkpass" if pkpass else "pass_json"
        content = content_from_pkpass(pkpass) if pkpass else content_from_files(pass_json, files)
        raise_if_any(
            [
                FieldViolation(f"{field}.{key}", "is each pass's own: leave it out of a template")
                for key in ("serialNumber", "authenticationToken")
                if key in content.pass_json
            ]
        )
        async with self._sessions.begin() as session:
            template = await TemplateStore(session, project_id).get_template(template_id)
            if template.platform is not Platform.APPLE:
                raise FailedPrecondition(
                    f"template {template_id!r} is not an Apple template: content is for Apple "
                    "passes",
                    reason="NOT_AN_APPLE_TEMPLATE",
                )
            check_pass_type_identifier(content, template.pass_type_identifier, field)
            return await PassContentStore(session, project_id).set_template_content(
                template_id, content, self._clock()
            )

    async def get_pass_package(self, project_id: str, pass_id: str) -> tuple[bytes, int]:
        """The pass's signed .pkpass as a device would get it now, and its update tag."""
        raise_if_any(check_id("pass_id", pass_id))
        async with self._sessions() as session:
            found = await PassStore(session, project_id).get_pass(pass_id)  # or NotFound
            # The same read as a device's download (store/passkit.py), in this session.
            source = await run_on_session(
                session, package_source(project_id, found.id, CONTENT_CACHE, TEMPLATE_PARTS)
            )
        if source is None:  # deleted in between
            raise NotFound("pass", pass_id)
        return await self._packager.package(source), source.update_tag

    async def create_segment(self, project_id: str, segment: Segment) -> Segment:
        segment = replace(segment, id=segment.id or new_id())
        raise_if_any(
            [
                *check_id("segment_id", segment.id),
                *check_display_name("segment.display_name", segment.display_name),
            ]
        )
        _require_own_project(project_id, segment.project_id, "segment.project_id")
        parse_criteria(segment.criteria)
        async with self._sessions.begin() as session:
            return await SegmentStore(session, project_id).create_segment(segment, self._clock())

    async def create_campaign(self, project_id: str, campaign: Campaign) -> Campaign:
        campaign = replace(
            campaign,
            id=campaign.id or new_id(),
            notification_limit=campaign.notification_limit or DEFAULT_CAMPAIGN_LIMIT,
        )
        raise_if_any(
            [
                *check_id("campaign_id", campaign.id),
                *check_display_name("campaign.name", campaign.name),
            ]
        )
        if campaign.notification_limit < 0:
            raise InvalidArgument.field("campaign.notification_limit", "must not be negative")
        _require_own_project(project_id, campaign.project_id, "campaign.project_id")
        async with self._sessions.begin() as session:
            return await CampaignStore(session, project_id).create_campaign(campaign, self._clock())

    async def add_campaign_members(
        self, project_id: str, campaign_id: str, pass_ids: Sequence[str]
    ) -> Campaign:
        violations = check_id("campaign_id", campaign_id)
        raise_if_any(check_list_length("pass_ids", pass_ids, MEMBERS_PER_CALL_MAX, "pass ids"))
        for i, pass_id in enumerate(pass_ids):
            violations += check_id(f"pass_ids[{i}]", pass_id)
        raise_if_any(violations)
        async with self._sessions.begin() as session:
            campaigns = CampaignStore(session, project_id)
            return await campaigns.add_campaign_members(campaign_id, pass_ids)

    async def register_device(
        self, project_id: str, pass_id: str, device_library_identifier: str, push_token: str
    ) -> DeviceRegistration:
        raise_if_any(
            [
                *check_id("pass_id", pass_id),
                *check_id("device_library_identifier", device_library_identifier),
                *check_push_token("push_token", push_token),
            ]
        )
        async with self._sessions.begin() as session:
            registered = await PassStore(session, project_id).get_pass(pass_id)
            templates = TemplateStore(session, project_id)
            _require_apple(await templates.get_template(registered.template_id))
            registration, _ = await DeviceRegistrationStore(session, project_id).register_device(
                pass_id, device_library_identifier, push_token, self._clock()
            )
            return registration

    async def unregister_device(
        self, project_id: str, pass_id: str, device_library_identifier: str
    ) -> None:
        raise_if_any(
            [
                *check_id("pass_id", pass_id),
                *check_id("device_library_identifier", device_library_identifier),
            ]
        )
        async with self._sessions.begin() as session:
            await DeviceRegistrationStore(session, project_id).unregister_device(
                pass_id, device_library_identifier
            )


def _check_pass(p: Pass) -> list[FieldViolation]:
    found = check_pass(p)
    if p.apple_values is not None:
        found += check_values(p.apple_values, "pass.apple_values")
    return found


def _check_imported(item: ImportedPass) -> list[FieldViolation]:
    found = _check_pass(item.pass_)
    if len(item.devices) > MAX_IMPORTED_DEVICES:
        found.append(FieldViolation("devices", f"at most {MAX_IMPORTED_DEVICES} a pass"))
    for n, (device, push_token) in enumerate(item.devices[:MAX_IMPORTED_DEVICES]):
        found += check_id(f"devices[{n}].device_library_identifier", device)
        found += check_push_token(f"devices[{n}].push_token", push_token)
    return found


async def _import_one(
    session: AsyncSession, project_id: str, item: ImportedPass, now: datetime
) -> bool:
    """Upserts one imported pass and registers its devices; True when the pass is new."""
    if item.devices:
        # Refused before anything is written, as RegisterDevice would refuse it.
        templates = TemplateStore(session, project_id)
        _require_apple(await templates.get_template(item.pass_.template_id))
    written, created = await _upsert_pass(session, project_id, item.pass_, now)
    devices = DeviceRegistrationStore(session, project_id)
    for device, push_token in item.devices:
        await devices.register_device(written.id, device, push_token, now)
    return created


async def _upsert_pass(
    session: AsyncSession, project_id: str, p: Pass, now: datetime
) -> tuple[Pass, bool]:
    """Upserts the pass, then checks its values on its pass.json (its own or its
    template's): a value that would break it raises, and the caller's transaction (or
    savepoint) undoes the upsert."""
    if p.apple_values:
        template = await TemplateStore(session, project_id).get_template(p.template_id)
        raise_if_any(check_values_platform(template.platform))
    result, created = await PassStore(session, project_id).upsert_pass(p, now)
    if p.apple_values:
        stored = await PassContentStore(session, project_id).stored_pass_json(result.id)
        if stored is not None:
            raise_if_any(check_merged(stored, p.apple_values, "pass.apple_values"))
    return result, created


def _check_values_fit(stored_pass_json: bytes, values: PassValues, field: str) -> None:
    """New content must take the values the pass has: refused at `field` otherwise."""
    misfits = check_merged(stored_pass_json, values, "apple_values")
    raise_if_any(
        [
            FieldViolation(field, f"does not fit the pass's {v.field}: {v.description}")
            for v in misfits
        ]
    )


async def _serial_number(
    passes: PassStore, current: Pass, template: Template, content: PassContent
) -> str:
    """An imported pass keeps its serialNumber (its devices know it by it), if no other
    pass of the pass type has it."""
    serial_number = content.serial_number or current.serial_number
    if serial_number != current.serial_number and await passes.serial_number_taken(
        template.pass_type_identifier, serial_number, other_than=current.id
    ):
        raise AlreadyExists("pass", serial_number, reason="SERIAL_NUMBER_TAKEN")
    return serial_number


def _require_apple(template: Template, why: str = "devices register on Apple passes") -> None:
    """A request that only an Apple pass can take. FAILED_PRECONDITION, not INVALID_ARGUMENT
    (AIP-193): the request is well formed; the pass it names is of the other platform."""
    if template.platform is not Platform.APPLE:
        raise FailedPrecondition(
            f"the pass is of a {template.platform} template: {why}", reason="NOT_AN_APPLE_PASS"
        )


def _require_own_project(project_id: str, requested: str, field: str) -> None:
    """A request may name the caller's project or leave it empty; any other does not exist."""
    raise_if_any(check_id(field, requested, required=False))
    if requested and requested != project_id:
        raise NotFound("project", requested)
