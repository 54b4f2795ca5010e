"""Scheduled notifications count their send attempts, to be given up after a few

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-02 03:30:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("scheduled_notifications", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("send_attempts", sa.Integer(), server_default="0", nullable=False)
        )


def downgrade() -> None:
    with op.batch_alter_table("scheduled_notifications", schema=None) as batch_op:
        batch_op.drop_column("send_attempts")
