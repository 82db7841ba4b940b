"""reliability: fencing token, release count, pending datasets

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # ---- engineer E: fencing (jobs.lease_token), poison hand-backs (jobs.releases), split export
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("lease_token", sa.Integer(), server_default=sa.text("0"), nullable=False))
        batch_op.add_column(sa.Column("releases", sa.Integer(), server_default=sa.text("0"), nullable=False))
    with op.batch_alter_table("datasets", schema=None) as batch_op:
        batch_op.add_column(sa.Column("state", sa.String(length=20), server_default=sa.text("'ready'"),
                                      nullable=False))
    # ---- engineer F: add orchestration columns below this line
    # Bounded re-sends: how often the reaper re-sent a never-claimed queued job, and when last.
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("send_count", sa.Integer(), server_default=sa.text("0"), nullable=False))
        batch_op.add_column(sa.Column("last_sent_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    # ---- engineer F: drop orchestration columns above E's
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_column("last_sent_at")
        batch_op.drop_column("send_count")
    with op.batch_alter_table("datasets", schema=None) as batch_op:
        batch_op.drop_column("state")
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_column("releases")
        batch_op.drop_column("lease_token")
