"""Impressions keep how they were served: model version and the re-ranking policy's log.

``model_version``, ``policy`` and ``policy_version`` are plain columns (to filter and group
on); the rest of the ``PolicyLog`` (content_version, state, exploration, epsilon, temperature,
propensities) is one JSON column, ``policy_log``. Every column is nullable: rows archived before
this revision, and ratings and clicks, have none of it.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("interactions", schema=None) as batch_op:
        batch_op.add_column(sa.Column("model_version", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("policy", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("policy_version", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("policy_log", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("interactions", schema=None) as batch_op:
        batch_op.drop_column("policy_log")
        batch_op.drop_column("policy_version")
        batch_op.drop_column("policy")
        batch_op.drop_column("model_version")
