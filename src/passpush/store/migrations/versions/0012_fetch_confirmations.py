"""Fetch confirmations: when a device fetched the pass version a delivery pushed, a
ticket's fetched count and push-to-fetch latency histogram, an event's latency

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-02 06:15:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("deliveries", schema=None) as batch_op:
        batch_op.add_column(sa.Column("fetched_at", sa.DateTime(), nullable=True))
        batch_op.create_index(
            "ix_deliveries_registration_ticket", ["registration_id", "ticket_id"], unique=False
        )
    with op.batch_alter_table("tickets", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("fetched", sa.BigInteger(), server_default="0", nullable=False)
        )
        batch_op.add_column(sa.Column("fetch_latency", sa.JSON(), nullable=True))
    with op.batch_alter_table("delivery_events", schema=None) as batch_op:
        batch_op.add_column(sa.Column("push_to_fetch_us", sa.BigInteger(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("delivery_events", schema=None) as batch_op:
        batch_op.drop_column("push_to_fetch_us")
    with op.batch_alter_table("tickets", schema=None) as batch_op:
        batch_op.drop_column("fetch_latency")
        batch_op.drop_column("fetched")
    with op.batch_alter_table("deliveries", schema=None) as batch_op:
        batch_op.drop_index("ix_deliveries_registration_ticket")
        batch_op.drop_column("fetched_at")
