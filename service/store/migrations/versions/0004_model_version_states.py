"""model versions: explicit state (candidate, gate_passed, gate_failed, released, retired), origin, and the
audit of activations (who, why, forced)

Existing rows get no state here: the registry reads it from disk at its next scan (the card's ``status``, a
``gate.json``, retrain provenance, or where the folder lives; see :func:`service.inference.versions.disk_state`), so a
candidate that an older version wrote into the releases folder is recognised as the candidate it is.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-28 14:00:00.000000
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
    with op.batch_alter_table("model_versions", schema=None) as batch_op:
        batch_op.add_column(sa.Column("state", sa.String(length=16), nullable=True))
        batch_op.add_column(sa.Column("origin", sa.String(length=16), nullable=True))
        batch_op.add_column(sa.Column("state_reason", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("state_changed_at", sa.DateTime(timezone=True), nullable=True))
    op.create_table(
        "model_activations",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("version", sa.String(length=64), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=True),
        sa.Column("previous", sa.String(length=130), nullable=True),
        sa.Column("user_id", sa.Integer(), nullable=True),
        sa.Column("forced", sa.Boolean(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], ondelete="SET NULL"),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("model_activations", schema=None) as batch_op:
        batch_op.create_index("ix_model_activations_at", ["at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("model_activations", schema=None) as batch_op:
        batch_op.drop_index("ix_model_activations_at")
    op.drop_table("model_activations")
    with op.batch_alter_table("model_versions", schema=None) as batch_op:
        batch_op.drop_column("state_changed_at")
        batch_op.drop_column("state_reason")
        batch_op.drop_column("origin")
        batch_op.drop_column("state")
