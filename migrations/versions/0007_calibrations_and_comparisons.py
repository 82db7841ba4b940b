"""unit calibrations (sparse memory's per-unit activation statistics, one per lineage and base model)
and document comparisons (`continuum documents compare` runs, for the report)

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "unit_calibrations",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("uri", sa.String(length=1000), nullable=False),
        sa.Column("adapter_name", sa.String(length=100), nullable=False),
        sa.Column("base_model", sa.String(length=500), nullable=False),
        sa.Column("background_sha256", sa.String(length=64), nullable=False),
        sa.Column("texts", sa.Integer(), nullable=False),
        sa.Column("active_fraction", sa.Float(), nullable=False),
        sa.Column("job_id", sa.String(length=36), nullable=True, unique=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_unit_calibrations_lookup", "unit_calibrations",
                    ["adapter_name", "base_model", "background_sha256"])
    op.create_table(
        "document_comparisons",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("base_model", sa.String(length=500), nullable=False),
        sa.Column("documents", sa.JSON(), nullable=False),
        sa.Column("questions", sa.Integer(), nullable=False),
        sa.Column("results", sa.JSON(), nullable=False),
        sa.Column("options", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("document_comparisons")
    op.drop_index("ix_unit_calibrations_lookup", table_name="unit_calibrations")
    op.drop_table("unit_calibrations")
