"""PassKit: Apple pass content (pass_files), per-template signing material, and the indexes
by which devices name passes (serial number) and list theirs (device library identifier)

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-24 09:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "pass_files",
        sa.Column("project_id", sa.String(length=128), nullable=False),
        sa.Column("pass_id", sa.String(length=128), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("data", sa.LargeBinary(), nullable=False),
        sa.ForeignKeyConstraint(
            ["project_id", "pass_id"],
            ["passes.project_id", "passes.id"],
            name=op.f("fk_pass_files_project_id_passes"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("project_id", "pass_id", "name", name=op.f("pk_pass_files")),
    )
    with op.batch_alter_table("passes", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("has_content", sa.Boolean(), server_default=sa.false(), nullable=False)
        )
        batch_op.create_index("ix_passes_serial_number", ["serial_number"], unique=False)
    with op.batch_alter_table("templates", schema=None) as batch_op:
        batch_op.add_column(sa.Column("apple_certificate_pem", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("apple_private_key_pem", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("apple_wwdr_certificate_pem", sa.Text(), nullable=True))
    with op.batch_alter_table("device_registrations", schema=None) as batch_op:
        batch_op.create_index(
            "ix_device_registrations_device", ["device_library_identifier"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("device_registrations", schema=None) as batch_op:
        batch_op.drop_index("ix_device_registrations_device")
    with op.batch_alter_table("templates", schema=None) as batch_op:
        batch_op.drop_column("apple_wwdr_certificate_pem")
        batch_op.drop_column("apple_private_key_pem")
        batch_op.drop_column("apple_certificate_pem")
    with op.batch_alter_table("passes", schema=None) as batch_op:
        batch_op.drop_index("ix_passes_serial_number")
        batch_op.drop_column("has_content")
    op.drop_table("pass_files")
