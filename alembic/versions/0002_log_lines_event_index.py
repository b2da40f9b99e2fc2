"""Index log lines by environment and event id (reads and resumes are range scans)

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25
"""

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


# Create the new index before dropping the old one: MySQL/MariaDB refuse to
# drop the only index that covers the environment_id foreign key.


def upgrade():
    with op.batch_alter_table("log_lines") as batch:
        batch.create_index("ix_log_lines_environment_event", ["environment_id", "event_id"])
        batch.drop_index("ix_log_lines_environment_id")


def downgrade():
    with op.batch_alter_table("log_lines") as batch:
        batch.create_index("ix_log_lines_environment_id", ["environment_id"])
        batch.drop_index("ix_log_lines_environment_event")
