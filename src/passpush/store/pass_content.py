"""Which files make an Apple pass: its template's shared content and its own.

The files themselves are stored once per distinct content (content.py); these are the names
that point at them. Changing either gives the passes concerned a new update tag, which is
how their devices learn to fetch them again.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ColumnElement, case, delete, insert, select, update

from passpush.domain.errors import NotFound
from passpush.domain.model import Pass, Template
from passpush.domain.passkit import PASS_JSON, PassContent, StoredFile
from passpush.domain.update_tags import next_update_tag, update_tag_at
from passpush.store.content import ContentStore
from passpush.store.models import ContentFileRow, PassOwnFileRow, PassRow, TemplateFileRow
from passpush.store.passes import PassStore
from passpush.store.project_scope import ProjectScoped
from passpush.store.templates import TemplateStore, new_package_version


class PassContentStore(ProjectScoped):
    """One project's pass and template content."""

    async def set_pass_content(
        self,
        pass_id: str,
        content: PassContent,
        serial_number: str,
        authentication_token: str,
        now: datetime,
    ) -> Pass:
        """Replaces the pass's own content; a new update tag tells devices it changed."""
        row = await self.session.get(PassRow, self._key(pass_id))
        if row is None:
            raise NotFound("pass", pass_id)
        own = PassOwnFileRow.project_id == self.project_id, PassOwnFileRow.pass_id == pass_id
        before = set(await self.session.scalars(select(PassOwnFileRow.digest).where(*own)))
        contents = ContentStore(self.session, self.project_id)
        stored = await contents.put(content.stored_files())
        await self.session.execute(delete(PassOwnFileRow).where(*own))
        await self.session.execute(
            insert(PassOwnFileRow),
            [
                {"project_id": self.project_id, "pass_id": pass_id, "name": n, "digest": f.digest}
                for n, f in stored.items()
            ],
        )
        await contents.drop_unreferenced(before - {f.digest for f in stored.values()})
        row.serial_number = serial_number
        if authentication_token:
            row.authentication_token = authentication_token
        row.has_content = True
        row.own_files = [[name, f.digest, f.sha1] for name, f in sorted(stored.items())]
        row.update_tag = next_update_tag(row.update_tag, now)
        row.updated_at = now
        await self.session.flush()
        return await PassStore(self.session, self.project_id).get_pass(pass_id)

    async def set_template_content(
        self, template_id: str, content: PassContent, now: datetime
    ) -> Template:
        """Replaces the content the template's passes share; each pass gets a new update
        tag (one statement), so that devices fetch it at their next update."""
        templates = TemplateStore(self.session, self.project_id)
        row = await templates.row(template_id)
        of_template = (
            TemplateFileRow.project_id == self.project_id,
            TemplateFileRow.template_id == template_id,
        )
        before = set(await self.session.scalars(select(TemplateFileRow.digest).where(*of_template)))
        contents = ContentStore(self.session, self.project_id)
        stored = await contents.put(content.stored_files())
        await self.session.execute(delete(TemplateFileRow).where(*of_template))
        await self.session.execute(
            insert(TemplateFileRow),
            [
                {
                    "project_id": self.project_id,
                    "template_id": template_id,
                    "name": name,
                    "digest": known.digest,
                }
                for name, known in stored.items()
            ],
        )
        await contents.drop_unreferenced(before - {f.digest for f in stored.values()})
        row.has_content = True
        new_package_version(row)
        tag = update_tag_at(now)
        await self.session.execute(
            update(PassRow)
            .where(PassRow.project_id == self.project_id, PassRow.template_id == template_id)
            .values(
                update_tag=case((PassRow.update_tag >= tag, PassRow.update_tag + 1), else_=tag),
                updated_at=now,
            )
            .execution_options(synchronize_session=False)
        )
        await self.session.flush()
        return await templates.get_template(template_id)

    async def stored_pass_json(self, pass_id: str) -> bytes | None:
        """The pass.json the pass's values go on: its own, else its template's; None when
        it has neither."""
        pass_row = await self.session.get(PassRow, self._key(pass_id))
        if pass_row is None:
            raise NotFound("pass", pass_id)
        known = await self._content_files(pass_row)
        if PASS_JSON not in known:
            return None
        digest = known[PASS_JSON].digest
        return (await ContentStore(self.session, self.project_id).read([digest]))[digest]

    async def _content_files(self, pass_row: PassRow) -> dict[str, StoredFile]:
        """The pass's files by name, its own over its template's, without their bytes."""
        template_files = await self.session.execute(
            select(TemplateFileRow.name, TemplateFileRow.digest, ContentFileRow.sha1)
            .join(ContentFileRow, _stored(TemplateFileRow))
            .where(
                TemplateFileRow.project_id == self.project_id,
                TemplateFileRow.template_id == pass_row.template_id,
            )
        )
        files = {name: StoredFile(digest, sha1) for name, digest, sha1 in template_files}
        if pass_row.has_content:
            own_files = await self.session.execute(
                select(PassOwnFileRow.name, PassOwnFileRow.digest, ContentFileRow.sha1)
                .join(ContentFileRow, _stored(PassOwnFileRow))
                .where(
                    PassOwnFileRow.project_id == self.project_id,
                    PassOwnFileRow.pass_id == pass_row.id,
                )
            )
            files |= {name: StoredFile(digest, sha1) for name, digest, sha1 in own_files}
        return files


def _stored(table: type[TemplateFileRow] | type[PassOwnFileRow]) -> ColumnElement[bool]:
    return (ContentFileRow.project_id == table.project_id) & (ContentFileRow.digest == table.digest)
