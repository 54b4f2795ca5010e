"""Delivery events: each outcome numbered in commit order, for StreamDeliveryEvents

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-23 21:59:43.484776
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "delivery_events",
        sa.Column(
            "sequence",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("project_id", sa.String(length=128), nullable=False),
        sa.Column(
            "ticket_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False
        ),
        sa.Column("pass_id", sa.String(length=128), nullable=False),
        sa.Column("device_library_identifier", sa.String(length=255), nullable=False),
        sa.Column("google_object_id", sa.String(length=255), nullable=False),
        sa.Column("platform", sa.String(length=16), nullable=False),
        sa.Column("outcome", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.String(length=128), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("sequence", name=op.f("pk_delivery_events")),
    )
    with op.batch_alter_table("delivery_events", schema=None) as batch_op:
        batch_op.create_index(
            "ix_delivery_events_project_sequence", ["project_id", "sequence"], unique=False
        )
        batch_op.create_index(
            "ix_delivery_events_ticket_sequence", ["ticket_id", "sequence"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("delivery_events", schema=None) as batch_op:
        batch_op.drop_index("ix_delivery_events_ticket_sequence")
        batch_op.drop_index("ix_delivery_events_project_sequence")

    op.drop_table("delivery_events")
