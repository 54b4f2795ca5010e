"""Template package version: a new random value whenever what a template gives its passes'
packages changes (its signing material, its shared files), under which each process keeps
those parts instead of reading them for every download

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-04 14:30:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0016"
down_revision: str | None = "0015"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# A random value for each template there is (NULL would only mean "not kept").
_RANDOM = {
    "postgresql": "md5(random()::text || clock_timestamp()::text)",
    "sqlite": "lower(hex(randomblob(16)))",
}


def upgrade() -> None:
    op.add_column("templates", sa.Column("package_version", sa.String(length=32), nullable=True))
    op.execute(f"UPDATE templates SET package_version = {_RANDOM[op.get_bind().dialect.name]}")


def downgrade() -> None:
    # Not in batch mode: on SQLite that copies `templates` to a new table and drops the old
    # one, which the passes' foreign keys refuse.
    op.execute("ALTER TABLE templates DROP COLUMN package_version")
