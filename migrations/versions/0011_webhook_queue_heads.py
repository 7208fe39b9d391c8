"""the head of each subscription's webhook queue in one index step

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-23

A partial index on (subscription_id, position) over deliveries still pending or being sent:
finding a subscription's next delivery no longer walks past every delivered row (the bench's
fan-out of 10,000 events to 10 subscribers spent most of the database's time there).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

WAITING = "status IN ('pending', 'sending')"


def upgrade() -> None:
    op.create_index(
        "ix_webhook_deliveries_waiting",
        "webhook_deliveries",
        ["subscription_id", "position"],
        postgresql_where=sa.text(WAITING),
        sqlite_where=sa.text(WAITING),
    )


def downgrade() -> None:
    op.drop_index("ix_webhook_deliveries_waiting", table_name="webhook_deliveries")
