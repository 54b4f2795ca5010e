"""Shared Apple content: files stored once per distinct content (content_files), a
template's content shared by its passes (template_files), each pass's own files over it
(pass_own_files) and its own values (passes.apple_values). pass_files moves over.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-02 06:15:00.000000
"""

import hashlib
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_ID = sa.String(length=128)
_COPY_BATCH = 500


def upgrade() -> None:
    op.create_table(
        "content_files",
        sa.Column("project_id", _ID, nullable=False),
        sa.Column("digest", sa.String(length=64), nullable=False),
        sa.Column("sha1", sa.String(length=40), nullable=False),
        sa.Column("data", sa.LargeBinary(), nullable=False),
        sa.ForeignKeyConstraint(
            ["project_id"], ["projects.id"], name=op.f("fk_content_files_project_id_projects")
        ),
        sa.PrimaryKeyConstraint("project_id", "digest", name=op.f("pk_content_files")),
    )
    op.create_table(
        "template_files",
        sa.Column("project_id", _ID, nullable=False),
        sa.Column("template_id", _ID, nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("digest", sa.String(length=64), nullable=False),
        sa.ForeignKeyConstraint(
            ["project_id", "digest"],
            ["content_files.project_id", "content_files.digest"],
            name=op.f("fk_template_files_project_id_content_files"),
        ),
        sa.ForeignKeyConstraint(
            ["project_id", "template_id"],
            ["templates.project_id", "templates.id"],
            name=op.f("fk_template_files_project_id_templates"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint(
            "project_id", "template_id", "name", name=op.f("pk_template_files")
        ),
    )
    op.create_index("ix_template_files_digest", "template_files", ["project_id", "digest"])
    op.create_table(
        "pass_own_files",
        sa.Column("project_id", _ID, nullable=False),
        sa.Column("pass_id", _ID, nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("digest", sa.String(length=64), nullable=False),
        sa.ForeignKeyConstraint(
            ["project_id", "digest"],
            ["content_files.project_id", "content_files.digest"],
            name=op.f("fk_pass_own_files_project_id_content_files"),
        ),
        sa.ForeignKeyConstraint(
            ["project_id", "pass_id"],
            ["passes.project_id", "passes.id"],
            name=op.f("fk_pass_own_files_project_id_passes"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("project_id", "pass_id", "name", name=op.f("pk_pass_own_files")),
    )
    op.create_index("ix_pass_own_files_digest", "pass_own_files", ["project_id", "digest"])
    with op.batch_alter_table("passes", schema=None) as batch_op:
        batch_op.add_column(sa.Column("apple_values", sa.JSON(), nullable=True))
    op.add_column(
        "templates",
        sa.Column("has_content", sa.Boolean(), nullable=False, server_default=sa.false()),
    )
    _move_pass_files_to_content()
    op.drop_table("pass_files")


def downgrade() -> None:
    """Each pass's own files go back to pass_files. A template's content and the passes'
    values have no place there and are dropped."""
    op.create_table(
        "pass_files",
        sa.Column("project_id", _ID, nullable=False),
        sa.Column("pass_id", _ID, nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("data", sa.LargeBinary(), nullable=False),
        sa.ForeignKeyConstraint(
            ["project_id", "pass_id"],
            ["passes.project_id", "passes.id"],
            name=op.f("fk_pass_files_project_id_passes"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("project_id", "pass_id", "name", name=op.f("pk_pass_files")),
    )
    op.execute(
        "INSERT INTO pass_files (project_id, pass_id, name, data) "
        "SELECT o.project_id, o.pass_id, o.name, c.data FROM pass_own_files o "
        "JOIN content_files c ON c.project_id = o.project_id AND c.digest = o.digest"
    )
    # Not in batch mode: on SQLite that copies `passes` to a new table and drops the old
    # one, which (foreign keys on) deletes every row that refers to a pass, pass_files too.
    op.execute("ALTER TABLE passes DROP COLUMN apple_values")
    op.execute("ALTER TABLE templates DROP COLUMN has_content")
    op.drop_index("ix_pass_own_files_digest", table_name="pass_own_files")
    op.drop_table("pass_own_files")
    op.drop_index("ix_template_files_digest", table_name="template_files")
    op.drop_table("template_files")
    op.drop_table("content_files")


def _move_pass_files_to_content() -> None:
    """Hashes every stored file (in Python: SQLite has no SHA-256), storing each distinct
    one once per project; a batch at a time, so a large table is never held in memory."""
    bind = op.get_bind()
    pass_files = sa.table(
        "pass_files",
        sa.column("project_id"),
        sa.column("pass_id"),
        sa.column("name"),
        sa.column("data", sa.LargeBinary()),
    )
    content = sa.table(
        "content_files",
        sa.column("project_id"),
        sa.column("digest"),
        sa.column("sha1"),
        sa.column("data", sa.LargeBinary()),
    )
    own = sa.table(
        "pass_own_files",
        sa.column("project_id"),
        sa.column("pass_id"),
        sa.column("name"),
        sa.column("digest"),
    )
    order = (pass_files.c.project_id, pass_files.c.pass_id, pass_files.c.name)
    after: tuple[str, str, str] | None = None
    stored: set[tuple[str, str]] = set()
    while True:
        query = sa.select(pass_files).order_by(*order).limit(_COPY_BATCH)
        if after is not None:
            query = query.where(sa.tuple_(*order) > sa.tuple_(*after))
        rows = bind.execute(query).all()
        if not rows:
            return
        for project_id, pass_id, name, data in rows:
            digest = hashlib.sha256(data).hexdigest()
            if (project_id, digest) not in stored:
                bind.execute(
                    content.insert().values(
                        project_id=project_id,
                        digest=digest,
                        sha1=hashlib.sha1(data).hexdigest(),
                        data=data,
                    )
                )
                stored.add((project_id, digest))
            bind.execute(
                own.insert().values(
                    project_id=project_id, pass_id=pass_id, name=name, digest=digest
                )
            )
        last = rows[-1]
        after = (last[0], last[1], last[2])
