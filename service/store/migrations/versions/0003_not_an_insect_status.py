"""observations: status ``not_an_insect`` (the specialists' verdict "no insect in this photo")

The status column is a plain ``String(16)``, so the schema does not change. Observations closed as
``cannot_tell`` before this status existed are re-read: those whose current ``not_an_insect``
identifications alone reach N and more than the threshold of all weight become ``not_an_insect``. The
rule's defaults are used (N = 2, threshold 2/3, every identification weighing 1); a deployment with other
consensus settings gets its own rule applied at the observation's next identification. Downgrade folds
``not_an_insect`` back into ``cannot_tell``.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-28 13:30:00.000000
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

MIN_AGREEMENTS = 2.0
THRESHOLD = 2 / 3

observations = sa.table(
    "observations",
    sa.column("id", sa.Integer),
    sa.column("status", sa.String),
    sa.column("consensus_score", sa.Float),
    sa.column("agreement_weight", sa.Float),
)
identifications = sa.table(
    "identifications",
    sa.column("observation_id", sa.Integer),
    sa.column("kind", sa.String),
    sa.column("current", sa.Boolean),
)


def upgrade() -> None:
    conn = op.get_bind()
    rows = conn.execute(
        sa.select(identifications.c.observation_id, identifications.c.kind)
        .select_from(identifications.join(observations, observations.c.id == identifications.c.observation_id))
        .where(observations.c.status == "cannot_tell", identifications.c.current.is_(True))
    ).all()
    kinds: dict[int, list[str]] = defaultdict(list)
    for observation_id, kind in rows:
        kinds[int(observation_id)].append(str(kind))
    for observation_id, votes in kinds.items():
        no_insect = float(sum(k == "not_an_insect" for k in votes))
        if no_insect + 1e-9 >= MIN_AGREEMENTS and no_insect / len(votes) > THRESHOLD + 1e-9:
            conn.execute(
                observations.update()
                .where(observations.c.id == observation_id)
                .values(status="not_an_insect", consensus_score=no_insect / len(votes), agreement_weight=no_insect)
            )


def downgrade() -> None:
    op.get_bind().execute(
        observations.update()
        .where(observations.c.status == "not_an_insect")
        .values(status="cannot_tell", consensus_score=None, agreement_weight=0.0)
    )
