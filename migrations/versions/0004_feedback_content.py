"""feedback_content: one row per judged content, so re-importing the same feedback adds nothing

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "feedback_content",
        sa.Column("content_hash", sa.String(length=64), primary_key=True),
    )
    # Feedback already stored counts as seen: importing it again after the upgrade is a duplicate.
    op.execute("INSERT INTO feedback_content (content_hash) SELECT DISTINCT content_hash FROM feedback")


def downgrade() -> None:
    op.drop_table("feedback_content")
