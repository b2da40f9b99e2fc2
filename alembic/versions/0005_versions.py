"""Every build is a version (table versions); auto-rebuilds and push webhooks

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op

from tljh_repo2docker.db.models import UTCDateTime

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        "versions",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column(
            "environment_id",
            sa.Integer(),
            sa.ForeignKey("environments.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("number", sa.Integer(), nullable=False),
        sa.Column("image_name", sa.String(512), nullable=False),
        sa.Column("image_id", sa.String(128), nullable=False),
        sa.Column("commit", sa.String(64), nullable=True),
        sa.Column("built_at", UTCDateTime(), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=True),
        sa.Column("duration", sa.Float(), nullable=True),
        sa.Column("built_by", sa.String(255), nullable=True),
        sa.Column("reason", sa.String(32), nullable=True),
    )
    op.create_index("ix_versions_environment_number", "versions", ["environment_id", "number"])
    with op.batch_alter_table("environments") as batch:
        batch.add_column(sa.Column("requested_by", sa.String(255), nullable=True))
        batch.add_column(sa.Column("build_reason", sa.String(32), nullable=True))
        batch.add_column(
            sa.Column("auto_rebuild", sa.Boolean(), nullable=False, server_default=sa.false())
        )
        batch.add_column(sa.Column("remote_commit", sa.String(64), nullable=True))
        batch.add_column(sa.Column("remote_checked", UTCDateTime(), nullable=True))
        batch.add_column(sa.Column("remote_error", sa.Text(), nullable=True))
        batch.add_column(sa.Column("webhook_secret_hash", sa.String(128), nullable=True))
    # Every environment built before this revision has one version: its image.
    environments = sa.table(
        "environments",
        sa.column("id", sa.Integer()),
        sa.column("image_name", sa.String()),
        sa.column("image_id", sa.String()),
        sa.column("commit", sa.String()),
        sa.column("finished", UTCDateTime()),
        sa.column("created", UTCDateTime()),
        sa.column("size", sa.BigInteger()),
        sa.column("build_number", sa.Integer()),
        sa.column("owner", sa.String()),
        sa.column("status", sa.String()),
    )
    versions = sa.table(
        "versions",
        sa.column("environment_id", sa.Integer()),
        sa.column("number", sa.Integer()),
        sa.column("image_name", sa.String()),
        sa.column("image_id", sa.String()),
        sa.column("commit", sa.String()),
        sa.column("built_at", UTCDateTime()),
        sa.column("size", sa.BigInteger()),
        sa.column("built_by", sa.String()),
        sa.column("reason", sa.String()),
    )
    bind = op.get_bind()
    rows = bind.execute(
        sa.select(environments).where(environments.c.image_id.isnot(None))
    ).fetchall()
    if rows:
        op.bulk_insert(
            versions,
            [
                {
                    "environment_id": row.id,
                    "number": max(row.build_number or 1, 1),
                    "image_name": row.image_name,
                    "image_id": row.image_id,
                    "commit": row.commit,
                    "built_at": row.finished or row.created,
                    "size": row.size,
                    "built_by": row.owner,
                    "reason": "upgrade",
                }
                for row in rows
            ],
        )


def downgrade():
    with op.batch_alter_table("environments") as batch:
        for name in (
            "webhook_secret_hash", "remote_error", "remote_checked", "remote_commit",
            "auto_rebuild", "build_reason", "requested_by",
        ):
            batch.drop_column(name)
    # The index goes with the table (MySQL refuses to drop it first: the
    # foreign key needs it).
    op.drop_table("versions")
