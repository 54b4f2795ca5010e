"""Scheduled notifications, and what campaign caps and late sends need on tickets

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-23 22:29:15.086670
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "scheduled_notifications",
        sa.Column("project_id", sa.String(length=128), nullable=False),
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("target", sa.JSON(), nullable=False),
        sa.Column("target_key", sa.String(length=1024), nullable=False),
        sa.Column("campaign_id", sa.String(length=128), nullable=True),
        sa.Column("content_header", sa.String(length=100), nullable=False),
        sa.Column("content_body", sa.Text(), nullable=False),
        sa.Column("display_start", sa.DateTime(), nullable=True),
        sa.Column("display_end", sa.DateTime(), nullable=True),
        sa.Column("send_time", sa.DateTime(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("ticket_id", sa.BigInteger(), nullable=True),
        sa.Column("failure_reason", sa.String(length=500), nullable=False),
        sa.Column("request_id", sa.String(length=128), nullable=True),
        sa.Column("request_fingerprint", sa.String(length=64), nullable=False),
        sa.Column("claimed_by", sa.String(length=64), nullable=True),
        sa.Column("claimed_until", sa.DateTime(), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["project_id"],
            ["projects.id"],
            name=op.f("fk_scheduled_notifications_project_id_projects"),
        ),
        sa.PrimaryKeyConstraint("project_id", "id", name=op.f("pk_scheduled_notifications")),
        sa.UniqueConstraint(
            "project_id", "request_id", name=op.f("uq_scheduled_notifications_project_id")
        ),
    )
    with op.batch_alter_table("scheduled_notifications", schema=None) as batch_op:
        batch_op.create_index(
            "ix_scheduled_notifications_due", ["state", "send_time"], unique=False
        )
        batch_op.create_index(
            "ix_scheduled_notifications_project_campaign",
            ["project_id", "campaign_id"],
            unique=False,
        )

    with op.batch_alter_table("tickets", schema=None) as batch_op:
        batch_op.add_column(sa.Column("campaign_id", sa.String(length=128), nullable=True))
        batch_op.add_column(
            sa.Column("scheduled_notification_id", sa.String(length=64), nullable=True)
        )
        batch_op.add_column(sa.Column("scheduled_send_time", sa.DateTime(), nullable=True))
        batch_op.create_index(
            "ix_tickets_project_campaign", ["project_id", "campaign_id"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("tickets", schema=None) as batch_op:
        batch_op.drop_index("ix_tickets_project_campaign")
        batch_op.drop_column("scheduled_send_time")
        batch_op.drop_column("scheduled_notification_id")
        batch_op.drop_column("campaign_id")

    with op.batch_alter_table("scheduled_notifications", schema=None) as batch_op:
        batch_op.drop_index("ix_scheduled_notifications_project_campaign")
        batch_op.drop_index("ix_scheduled_notifications_due")

    op.drop_table("scheduled_notifications")
