"""webhook deliveries lose their (status, next_attempt_at) index

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-07

Nothing reads deliveries by status and due time any more: a subscription's queue is read from
its head through the partial index of waiting deliveries (migration 0011), and the scan for
due subscriptions starts there too. The index still cost every delivery three entries (when
its row is written, claimed and recorded): without it, the bench's fan-out of 10,000 events
to 10 subscribers took 72.9 s instead of 76.7 s. Counting deliveries by status (the metrics)
now reads the table instead of the index. Safe to apply with older processes running: no
query of theirs needs it either.
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0015"
down_revision: str | None = "0014"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.drop_index("ix_webhook_deliveries_status_next_attempt_at", table_name="webhook_deliveries")


def downgrade() -> None:
    op.create_index(
        "ix_webhook_deliveries_status_next_attempt_at",
        "webhook_deliveries",
        ["status", "next_attempt_at"],
        unique=False,
    )
