"""Claim index with id: the claim's ORDER BY (next_attempt_at, id) reads the index in order

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23 21:08:29.287491
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("deliveries", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_deliveries_due"))
        batch_op.create_index("ix_deliveries_due", ["state", "next_attempt_at", "id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("deliveries", schema=None) as batch_op:
        batch_op.drop_index("ix_deliveries_due")
        batch_op.create_index(
            batch_op.f("ix_deliveries_due"), ["state", "next_attempt_at"], unique=False
        )
