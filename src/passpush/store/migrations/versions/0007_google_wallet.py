"""Google Wallet delivery: the notifying-message ledger, messages shown without an alert,
claims per platform

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-24 00:03:24.297564
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "google_messages",
        sa.Column("delivery_id", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("project_id", sa.String(length=128), nullable=False),
        sa.Column("pass_id", sa.String(length=128), nullable=False),
        sa.Column("notifying", sa.Boolean(), nullable=False),
        sa.Column("sent_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("delivery_id", name=op.f("pk_google_messages")),
    )
    with op.batch_alter_table("google_messages", schema=None) as batch_op:
        batch_op.create_index(
            "ix_google_messages_pass", ["project_id", "pass_id", "sent_at"], unique=False
        )

    with op.batch_alter_table("deliveries", schema=None) as batch_op:
        batch_op.drop_index("ix_deliveries_due")
        batch_op.create_index(
            "ix_deliveries_due", ["state", "platform", "next_attempt_at", "id"], unique=False
        )

    with op.batch_alter_table("tickets", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column(
                "delivered_without_alert", sa.BigInteger(), server_default="0", nullable=False
            )
        )


def downgrade() -> None:
    with op.batch_alter_table("tickets", schema=None) as batch_op:
        batch_op.drop_column("delivered_without_alert")

    with op.batch_alter_table("deliveries", schema=None) as batch_op:
        batch_op.drop_index("ix_deliveries_due")
        batch_op.create_index("ix_deliveries_due", ["state", "next_attempt_at", "id"], unique=False)

    with op.batch_alter_table("google_messages", schema=None) as batch_op:
        batch_op.drop_index("ix_google_messages_pass")

    op.drop_table("google_messages")
