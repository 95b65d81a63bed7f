"""Archived interactions name the Kafka log their (topic, partition, offset) belong to.

Offsets only mean something within one log, and the embedded broker starts a new log (with a
new cluster id) on every `up`, so the coordinates of rows from two runs could not be told apart.
``log_id`` is that log's cluster id (``core.kafka_log``); rows archived before this revision
have none. The index serves "the newest archived offset per partition of a log", which
`streamrec rebuild` and the start-up check of the features group ask.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("interactions", schema=None) as batch_op:
        batch_op.add_column(sa.Column("log_id", sa.String(length=64), nullable=True))
        batch_op.create_index(
            "ix_interactions_log_position", ["log_id", "topic", "partition", "offset"]
        )


def downgrade() -> None:
    with op.batch_alter_table("interactions", schema=None) as batch_op:
        batch_op.drop_index("ix_interactions_log_position")
        batch_op.drop_column("log_id")
