"""serving and online learning: served answers (feedback names one by id), online turns, the fact memory, lineage locks

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "served_responses",
        sa.Column("id", sa.String(length=64), primary_key=True),
        sa.Column("adapter_id", sa.Integer(), nullable=True),
        sa.Column("model", sa.String(length=200), nullable=False),
        sa.Column("messages", sa.JSON(), nullable=False),
        sa.Column("response", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "online_turns",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=True),
        sa.Column("lineage", sa.String(length=100), nullable=False),
        sa.Column("response_id", sa.String(length=64), nullable=True),
        sa.Column("messages", sa.JSON(), nullable=False),
        sa.Column("response", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("applied_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("turn_number", sa.Integer(), nullable=True),
        sa.Column("kind", sa.String(length=20), nullable=True),
        sa.Column("result", sa.JSON(), nullable=True),
    )
    op.create_index("ix_online_turns_lineage", "online_turns", ["lineage"])
    op.create_table(
        "lineage_locks",
        sa.Column("lineage", sa.String(length=100), primary_key=True),
        sa.Column("holder", sa.String(length=100), nullable=True),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_table(
        "facts",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=True),
        sa.Column("lineage", sa.String(length=100), nullable=False),
        sa.Column("key", sa.String(length=500), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("relation", sa.String(length=100), nullable=False),
        sa.Column("subject", sa.String(length=300), nullable=False),
        sa.Column("object", sa.String(length=300), nullable=False),
        sa.Column("entities", sa.JSON(), nullable=False),
        sa.Column("confidence", sa.Float(), nullable=False),
        sa.Column("times_seen", sa.Integer(), nullable=False),
        sa.Column("first_turn", sa.Integer(), nullable=False),
        sa.Column("last_turn", sa.Integer(), nullable=False),
        sa.Column("importance", sa.Float(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("lineage", "key", name="uq_facts_lineage_key"),
    )


def downgrade() -> None:
    op.drop_table("facts")
    op.drop_table("lineage_locks")
    op.drop_index("ix_online_turns_lineage", table_name="online_turns")
    op.drop_table("online_turns")
    op.drop_table("served_responses")
