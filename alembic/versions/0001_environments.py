"""Environments and their build logs

Revision ID: 0001
Revises:
Create Date: 2026-11-25
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        "environments",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("uid", sa.String(64), nullable=False),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("image_name", sa.String(512), nullable=False),
        sa.Column("image_id", sa.String(128), nullable=True),
        sa.Column("repo", sa.String(2048), nullable=False),
        sa.Column("ref", sa.String(255), nullable=False),
        sa.Column("provider", sa.String(32), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("memory", sa.String(32), nullable=True),
        sa.Column("cpu", sa.Float(), nullable=True),
        sa.Column("machine_profile", sa.String(255), nullable=True),
        sa.Column("node_selector", sa.JSON(), nullable=False),
        sa.Column("build_args", sa.JSON(), nullable=False),
        sa.Column("private", sa.Boolean(), nullable=False),
        sa.Column("owner", sa.String(255), nullable=True),
        sa.Column("commit", sa.String(64), nullable=True),
        sa.Column("size", sa.BigInteger(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("created", sa.DateTime(timezone=True), nullable=False),
        sa.Column("queued", sa.DateTime(timezone=True), nullable=True),
        sa.Column("started", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished", sa.DateTime(timezone=True), nullable=True),
        sa.Column("build_number", sa.Integer(), nullable=False),
        sa.Column("source_lines", sa.Integer(), nullable=False),
        sa.Column("last_event_id", sa.Integer(), nullable=False),
        sa.UniqueConstraint("name"),
    )
    op.create_index("ix_environments_uid", "environments", ["uid"], unique=True)
    op.create_index("ix_environments_status", "environments", ["status"])
    op.create_table(
        "log_lines",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column(
            "environment_id",
            sa.Integer(),
            sa.ForeignKey("environments.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("event_id", sa.Integer(), nullable=False),
        sa.Column("phase", sa.String(16), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
    )
    op.create_index("ix_log_lines_environment_id", "log_lines", ["environment_id"])


def downgrade():
    # Dropping a table drops its indexes; dropping the foreign key's index
    # first would fail on MySQL/MariaDB.
    op.drop_table("log_lines")
    op.drop_table("environments")
