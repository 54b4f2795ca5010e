"""Google request turns shared by the replicas on one PostgreSQL database

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-03 03:40:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0014"
down_revision: str | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "google_request_turns",
        sa.Column("issuer", sa.String(length=255), nullable=False),
        sa.Column("next_turn", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("issuer", name=op.f("pk_google_request_turns")),
    )


def downgrade() -> None:
    op.drop_table("google_request_turns")
