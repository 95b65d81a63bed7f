"""Dead letters re-published by ``streamrec dlq replay``, so each goes back at most once.

One row per re-published source record (see ``stores.dlq_replays``), written before the
publish and marked ``published`` once Kafka acknowledged it.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "dlq_replays",
        sa.Column("source_topic", sa.String(length=255), nullable=False),
        sa.Column("source_partition", sa.Integer(), nullable=False),
        sa.Column("source_offset", sa.BigInteger(), nullable=False),
        sa.Column("source_timestamp_ms", sa.BigInteger(), nullable=False),
        sa.Column("dlq_partition", sa.Integer(), nullable=False),
        sa.Column("dlq_offset", sa.BigInteger(), nullable=False),
        sa.Column("replayed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("published", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint(
            "source_topic",
            "source_partition",
            "source_offset",
            "source_timestamp_ms",
            name=op.f("pk_dlq_replays"),
        ),
    )


def downgrade() -> None:
    op.drop_table("dlq_replays")
