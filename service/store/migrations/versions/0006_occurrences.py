"""occurrence downloads as evidence of where and when taxa are seen (``occurrence_imports``,
``occurrence_records``) and an index of validated observations by place

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-03 08:00:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "occurrence_imports",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("file_name", sa.String(length=255), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("size_bytes", sa.Integer(), nullable=False),
        sa.Column("rows_read", sa.Integer(), nullable=False),
        sa.Column("rows_imported", sa.Integer(), nullable=False),
        sa.Column("rows_unknown_taxon", sa.Integer(), nullable=False),
        sa.Column("rows_incomplete", sa.Integer(), nullable=False),
        sa.Column("created_by", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["created_by"], ["users.id"], ondelete="SET NULL"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("sha256"),
    )
    op.create_table(
        "occurrence_records",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("import_id", sa.Integer(), nullable=False),
        sa.Column("taxon_id", sa.Integer(), nullable=False),
        sa.Column("latitude", sa.Float(), nullable=False),
        sa.Column("longitude", sa.Float(), nullable=False),
        sa.Column("month", sa.Integer(), nullable=False),
        sa.Column("day_of_year", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(["import_id"], ["occurrence_imports.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["taxon_id"], ["taxa.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("occurrence_records", schema=None) as batch_op:
        batch_op.create_index("ix_occurrence_records_import_id", ["import_id"], unique=False)
        batch_op.create_index("ix_occurrence_records_taxon_id", ["taxon_id"], unique=False)
        batch_op.create_index("ix_occurrence_records_place", ["latitude", "longitude", "day_of_year"],
                              unique=False)
    with op.batch_alter_table("observations", schema=None) as batch_op:
        batch_op.create_index("ix_observations_place", ["status", "latitude", "longitude"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("observations", schema=None) as batch_op:
        batch_op.drop_index("ix_observations_place")
    with op.batch_alter_table("occurrence_records", schema=None) as batch_op:
        batch_op.drop_index("ix_occurrence_records_place")
        batch_op.drop_index("ix_occurrence_records_taxon_id")
        batch_op.drop_index("ix_occurrence_records_import_id")
    op.drop_table("occurrence_records")
    op.drop_table("occurrence_imports")
