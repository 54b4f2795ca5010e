"""Broadcasts fan out in chunks: a ticket's fan-out cursor, a pass's last ticket

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-02 04:15:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_FANNING_OUT = sa.text("fanout_after IS NOT NULL")


def upgrade() -> None:
    with op.batch_alter_table("tickets", schema=None) as batch_op:
        batch_op.add_column(sa.Column("fanout_after", sa.String(length=128), nullable=True))
    op.create_index(
        "ix_tickets_fanning_out",
        "tickets",
        ["id"],
        postgresql_where=_FANNING_OUT,
        sqlite_where=_FANNING_OUT,
    )
    with op.batch_alter_table("passes", schema=None) as batch_op:
        batch_op.add_column(sa.Column("last_ticket_id", sa.BigInteger(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("passes", schema=None) as batch_op:
        batch_op.drop_column("last_ticket_id")
    op.drop_index("ix_tickets_fanning_out", table_name="tickets")
    with op.batch_alter_table("tickets", schema=None) as batch_op:
        batch_op.drop_column("fanout_after")
