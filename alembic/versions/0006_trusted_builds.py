"""Trusted builds: each version's check and what it holds; an environment's own
check command, the builder it names and what makes it rebuild

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-06
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table("versions") as batch:
        batch.add_column(sa.Column("check", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("inside", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("packages", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("builder_image", sa.String(512), nullable=True))
        batch.add_column(sa.Column("builder_image_id", sa.String(128), nullable=True))
    with op.batch_alter_table("environments") as batch:
        batch.add_column(sa.Column("check_command", sa.Text(), nullable=True))
        batch.add_column(sa.Column("builder_image", sa.String(512), nullable=True))
        batch.add_column(
            sa.Column("rebuild_on", sa.String(16), nullable=False, server_default="any")
        )


def downgrade():
    with op.batch_alter_table("environments") as batch:
        batch.drop_column("rebuild_on")
        batch.drop_column("builder_image")
        batch.drop_column("check_command")
    with op.batch_alter_table("versions") as batch:
        batch.drop_column("builder_image_id")
        batch.drop_column("builder_image")
        batch.drop_column("packages")
        batch.drop_column("inside")
        batch.drop_column("check")
