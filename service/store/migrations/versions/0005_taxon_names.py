"""common names of taxa per language (``taxon_names``: taxon, language, name); English stays in
``taxa.common_name``

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-03 06:00:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "taxon_names",
        sa.Column("taxon_id", sa.Integer(), nullable=False),
        sa.Column("language", sa.String(length=16), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.ForeignKeyConstraint(["taxon_id"], ["taxa.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("taxon_id", "language"),
    )
    with op.batch_alter_table("taxon_names", schema=None) as batch_op:
        batch_op.create_index("ix_taxon_names_name", ["name"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("taxon_names", schema=None) as batch_op:
        batch_op.drop_index("ix_taxon_names_name")
    op.drop_table("taxon_names")
