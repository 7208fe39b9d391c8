"""where each projection's rows last changed, beside where its checkpoint is

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-07

A projection's checkpoint moves past every event, its rows only for the events of the streams
it reads. ``changed_position`` and ``changed_at`` move only then (and with a rebuild), so a
document an API process keeps stays current while the rest of the log moves on
(api/freshness.py). Older processes do not move them: stop them before this upgrade.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0014"
down_revision: str | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("projection_checkpoints") as batch:
        batch.add_column(
            sa.Column("changed_position", sa.BigInteger(), nullable=False, server_default="0")
        )
        batch.add_column(sa.Column("changed_at", sa.DateTime(timezone=True), nullable=True))
    op.execute(
        "UPDATE projection_checkpoints SET changed_position = position, changed_at = updated_at"
    )


def downgrade() -> None:
    with op.batch_alter_table("projection_checkpoints") as batch:
        batch.drop_column("changed_at")
        batch.drop_column("changed_position")
