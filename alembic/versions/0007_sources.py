"""Environments from anything: where an environment comes from (a git
repository, files kept by the service, an existing image) and, for files,
the files of the environment and of each version; commits wide enough for
an image id (sha256:<64 hex>)

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-06
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def _widens():
    """Whether column lengths need changing: SQLite does not enforce them,
    and changing a column there recreates the table, which would drop the
    versions with it (ON DELETE CASCADE)."""
    return op.get_bind().dialect.name != "sqlite"


def upgrade():
    widen = _widens()
    with op.batch_alter_table("environments") as batch:
        batch.add_column(
            sa.Column("source", sa.String(16), nullable=False, server_default="git")
        )
        batch.add_column(sa.Column("files", sa.JSON(), nullable=True))
        for column in ("commit", "remote_commit") if widen else ():
            batch.alter_column(
                column, type_=sa.String(128), existing_type=sa.String(64), existing_nullable=True
            )
    with op.batch_alter_table("versions") as batch:
        batch.add_column(sa.Column("files", sa.JSON(), nullable=True))
        if widen:
            batch.alter_column(
                "commit", type_=sa.String(128), existing_type=sa.String(64), existing_nullable=True
            )


def downgrade():
    # Image ids (71 characters) do not fit back: 0006 had no such commits.
    widen = _widens()
    with op.batch_alter_table("versions") as batch:
        if widen:
            batch.alter_column(
                "commit", type_=sa.String(64), existing_type=sa.String(128), existing_nullable=True
            )
        batch.drop_column("files")
    with op.batch_alter_table("environments") as batch:
        for column in ("commit", "remote_commit") if widen else ():
            batch.alter_column(
                column, type_=sa.String(64), existing_type=sa.String(128), existing_nullable=True
            )
        batch.drop_column("files")
        batch.drop_column("source")
