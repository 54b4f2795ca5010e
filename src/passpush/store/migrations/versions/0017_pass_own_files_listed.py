"""Pass own files listed on the pass: passes.own_files, [name, digest, sha1] of each file of
its own (as pass_own_files and content_files have them), read with the pass by a device's
serials query instead of joining those two tables

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-04 16:30:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0017"
down_revision: str | None = "0016"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Each pass with files of its own gets their list, in the order of their names.
_LISTED = {
    "postgresql": (
        "UPDATE passes SET own_files = ("
        " SELECT json_agg(json_build_array(f.name, f.digest, c.sha1) ORDER BY f.name)"
        " FROM pass_own_files f JOIN content_files c"
        " ON c.project_id = f.project_id AND c.digest = f.digest"
        " WHERE f.project_id = passes.project_id AND f.pass_id = passes.id)"
        " WHERE has_content"
    ),
    "sqlite": (
        "UPDATE passes SET own_files = ("
        " SELECT json_group_array(json_array(name, digest, sha1)) FROM ("
        "  SELECT f.name, f.digest, c.sha1 FROM pass_own_files f JOIN content_files c"
        "  ON c.project_id = f.project_id AND c.digest = f.digest"
        "  WHERE f.project_id = passes.project_id AND f.pass_id = passes.id ORDER BY f.name))"
        " WHERE has_content"
    ),
}


def upgrade() -> None:
    op.add_column("passes", sa.Column("own_files", sa.JSON(), nullable=True))
    op.execute(_LISTED[op.get_bind().dialect.name])


def downgrade() -> None:
    # Not in batch mode: on SQLite that copies `passes` to a new table and drops the old
    # one, which the other tables' foreign keys refuse.
    op.execute("ALTER TABLE passes DROP COLUMN own_files")
