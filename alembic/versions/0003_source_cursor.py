"""Where each build's stored log ends in the backend's output (environments.source_cursor)

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


# Nullable: rows written before this revision have no cursor, and a re-attach
# to their builds falls back to source_lines (a count of lines).


def upgrade():
    with op.batch_alter_table("environments") as batch:
        batch.add_column(sa.Column("source_cursor", sa.String(length=128), nullable=True))


def downgrade():
    with op.batch_alter_table("environments") as batch:
        batch.drop_column("source_cursor")
