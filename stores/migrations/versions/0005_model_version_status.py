"""Model versions say where they stand and how they were judged.

``status`` (candidate, live, rejected, retired; ``active`` stays the live pointer, true exactly
for the live version), ``activated_at`` (when it last went live) and ``promotion`` (JSON: the
candidate's and the live version's scores on the same held-out events, metric, tolerance,
decision, reason). What a version was trained on stays in ``data_window``. Rows written before
this revision: the active one becomes ``live``, the others ``retired`` (not serving, kept for
rollback); they have no activation time or promotion record.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_VERSIONS = sa.table(
    "model_versions", sa.column("active", sa.Boolean()), sa.column("status", sa.String())
)


def upgrade() -> None:
    with op.batch_alter_table("model_versions", schema=None) as batch_op:
        batch_op.add_column(sa.Column("status", sa.String(length=16), nullable=True))
        batch_op.add_column(sa.Column("activated_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("promotion", sa.JSON(), nullable=True))
    op.execute(
        _VERSIONS.update().values(
            status=sa.case((_VERSIONS.c.active.is_(True), "live"), else_="retired")
        )
    )
    # Filled above: now every row has one, and the models always write it.
    with op.batch_alter_table("model_versions", schema=None) as batch_op:
        batch_op.alter_column("status", existing_type=sa.String(length=16), nullable=False)


def downgrade() -> None:
    with op.batch_alter_table("model_versions", schema=None) as batch_op:
        batch_op.drop_column("promotion")
        batch_op.drop_column("activated_at")
        batch_op.drop_column("status")
