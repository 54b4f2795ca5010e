"""What the notifier knows about passes: the PassService use cases."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Generic, TypeVar

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from passpush.domain.errors import DomainError, InvalidArgument
from passpush.domain.model import (
    Campaign,
    DeviceRegistration,
    Entity,
    Pass,
    Project,
    Segment,
    Template,
)
from passpush.domain.paging import decode_token, encode_token, page_size
from passpush.domain.segments import parse_criteria
from passpush.domain.validation import (
    check_id,
    check_pass,
    check_push_token,
    check_template,
    raise_if_any,
)
from passpush.service.clock import Clock, utcnow
from passpush.store.passes import PassStore, new_id

DEFAULT_CAMPAIGN_LIMIT = 3
MAX_MEMBERS_PER_CALL = 10_000
MAX_IMPORT_FAILURES_REPORTED = 100


T = TypeVar("T")


@dataclass(frozen=True)
class Page(Generic[T]):
    items: Sequence[T]
    next_page_token: str


@dataclass
class ImportSummary:
    created: int = 0
    updated: int = 0
    failed: int = 0
    failures: list[tuple[int, str]] = field(default_factory=list)  # (index, message)


class PassCore:
    def __init__(
        self, sessions: async_sessionmaker[AsyncSession], *, clock: Clock = utcnow
    ) -> None:
        self._sessions = sessions
        self._clock = clock

    async def create_project(self, project_id: str, display_name: str) -> Project:
        project_id = project_id or new_id()
        raise_if_any(check_id("project_id", project_id))
        async with self._sessions.begin() as session:
            return await PassStore(session).create_project(project_id, display_name, self._clock())

    async def create_entity(self, entity: Entity) -> Entity:
        entity = replace(entity, id=entity.id or new_id())
        raise_if_any(
            [*check_id("entity_id", entity.id), *check_id("entity.project_id", entity.project_id)]
        )
        async with self._sessions.begin() as session:
            return await PassStore(session).create_entity(entity, self._clock())

    async def create_template(self, template: Template) -> Template:
        template = replace(template, id=template.id or new_id())
        raise_if_any([*check_id("template_id", template.id), *check_template(template)])
        async with self._sessions.begin() as session:
            return await PassStore(session).create_template(template, self._clock())

    async def get_template(self, template_id: str) -> Template:
        raise_if_any(check_id("id", template_id))
        async with self._sessions() as session:
            return await PassStore(session).get_template(template_id)

    async def list_templates(self, project_id: str, size: int, token: str) -> Page[Template]:
        raise_if_any(check_id("project_id", project_id))
        limit, after = page_size(size), decode_token(token)
        async with self._sessions() as session:
            items = await PassStore(session).list_templates(project_id, after, limit + 1)
        return _page(items, limit, lambda t: t.id)

    async def upsert_pass(self, p: Pass) -> Pass:
        raise_if_any(check_pass(p))
        async with self._sessions.begin() as session:
            result, _ = await PassStore(session).upsert_pass(p, self._clock())
            return result

    async def import_passes(self, passes: AsyncIterator[Pass]) -> ImportSummary:
        """Upserts each pass in its own transaction, so one bad pass fails alone."""
        summary = ImportSummary()
        index = 0
        async for p in passes:
            try:
                raise_if_any(check_pass(p))
                async with self._sessions.begin() as session:
                    _, created = await PassStore(session).upsert_pass(p, self._clock())
                if created:
                    summary.created += 1
                else:
                    summary.updated += 1
            except DomainError as error:
                summary.failed += 1
                if len(summary.failures) < MAX_IMPORT_FAILURES_REPORTED:
                    summary.failures.append((index, error.message))
            index += 1
        return summary

    async def get_pass(self, pass_id: str) -> Pass:
        raise_if_any(check_id("id", pass_id))
        async with self._sessions() as session:
            return await PassStore(session).get_pass(pass_id)

    async def list_passes(self, template_id: str, size: int, token: str) -> Page[Pass]:
        raise_if_any(check_id("template_id", template_id))
        limit, after = page_size(size), decode_token(token)
        async with self._sessions() as session:
            items = await PassStore(session).list_passes(template_id, after, limit + 1)
        return _page(items, limit, lambda p: p.id)

    async def create_segment(self, segment: Segment) -> Segment:
        segment = replace(segment, id=segment.id or new_id())
        raise_if_any(
            [
                *check_id("segment_id", segment.id),
                *check_id("segment.project_id", segment.project_id),
            ]
        )
        parse_criteria(segment.criteria)
        async with self._sessions.begin() as session:
            return await PassStore(session).create_segment(segment, self._clock())

    async def create_campaign(self, campaign: Campaign) -> Campaign:
        campaign = replace(
            campaign,
            id=campaign.id or new_id(),
            notification_limit=campaign.notification_limit or DEFAULT_CAMPAIGN_LIMIT,
        )
        raise_if_any(
            [
                *check_id("campaign_id", campaign.id),
                *check_id("campaign.project_id", campaign.project_id),
            ]
        )
        if campaign.notification_limit < 0:
            raise InvalidArgument.field("campaign.notification_limit", "must not be negative")
        async with self._sessions.begin() as session:
            return await PassStore(session).create_campaign(campaign, self._clock())

    async def add_campaign_members(self, campaign_id: str, pass_ids: Sequence[str]) -> Campaign:
        violations = check_id("campaign_id", campaign_id)
        if len(pass_ids) > MAX_MEMBERS_PER_CALL:
            raise InvalidArgument.field("pass_ids", f"at most {MAX_MEMBERS_PER_CALL} per call")
        for i, pass_id in enumerate(pass_ids):
            violations += check_id(f"pass_ids[{i}]", pass_id)
        raise_if_any(violations)
        async with self._sessions.begin() as session:
            return await PassStore(session).add_campaign_members(campaign_id, pass_ids)

    async def register_device(
        self, pass_id: str, device_library_identifier: str, push_token: str
    ) -> DeviceRegistration:
        raise_if_any(
            [
                *check_id("pass_id", pass_id),
                *check_id("device_library_identifier", device_library_identifier),
                *check_push_token("push_token", push_token),
            ]
        )
        async with self._sessions.begin() as session:
            registration, _ = await PassStore(session).register_device(
                pass_id, device_library_identifier, push_token, self._clock()
            )
            return registration

    async def unregister_device(self, pass_id: str, device_library_identifier: str) -> None:
        raise_if_any(
            [
                *check_id("pass_id", pass_id),
                *check_id("device_library_identifier", device_library_identifier),
            ]
        )
        async with self._sessions.begin() as session:
            await PassStore(session).unregister_device(pass_id, device_library_identifier)


def _page(items: Sequence[T], limit: int, key: Callable[[T], str]) -> Page[T]:
    """Cuts a page from `limit + 1` items; the extra one tells whether more follow."""
    if len(items) > limit:
        return Page(items[:limit], encode_token(key(items[limit - 1])))
    return Page(items, "")
