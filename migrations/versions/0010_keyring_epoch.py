"""a counter of erasures, so cached aggregates know when to forget personal data

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-23

Each erasure (a key deleted from ``person_keys``) adds one in the same transaction. Processes
that keep folded streams in memory (infra/lanes.py) compare it on every use and drop what they
hold when it moved, so an erased name is never served from a cache.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    table = op.create_table(
        "keyring_epoch",
        sa.Column("id", sa.SmallInteger(), nullable=False),
        sa.Column("epoch", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_keyring_epoch")),
    )
    op.bulk_insert(table, [{"id": 1, "epoch": 0}])


def downgrade() -> None:
    op.drop_table("keyring_epoch")
