"""Who an environment is shared with (environments.sharing), and an index on owner

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

# Environments stored before this revision were visible to every user (3.x,
# adopted, and admins' of 4.0): they keep it. NULL is read the same way (see
# tljh_repo2docker/access.py), this only makes it explicit.
EVERYONE = {"everyone": True, "users": [], "groups": []}


def upgrade():
    with op.batch_alter_table("environments") as batch:
        batch.add_column(sa.Column("sharing", sa.JSON(), nullable=True))
        batch.create_index("ix_environments_owner", ["owner"])
    environments = sa.table("environments", sa.column("sharing", sa.JSON()))
    op.execute(environments.update().values(sharing=EVERYONE))


def downgrade():
    with op.batch_alter_table("environments") as batch:
        batch.drop_index("ix_environments_owner")
        batch.drop_column("sharing")
