"""reminders not fanned out yet are marked, so a tick reads only those

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-07

The scheduler's tick looked for reminders that had fallen due and were not in
``reminder_fanouts`` yet: an anti-join that walked every reminder that ever fell due. Each
registration and each endorsement leaves a notice behind, so after a campaign every tick read
tens of thousands of rows to find a handful (38 ms a tick after 10,000 endorsements, on the
database the API shares). Now every reminder is written ``pending`` and the scheduler clears
it once the reminder is fanned out; a partial index on the due time of pending reminders is
what the tick reads. The anti-join stays, so a reminder written again after it was fanned out
(a rebuild of the projection, a consultation rescheduled back) is still not sent twice: the
tick only clears its mark.

Safe with older processes running: they write reminders without the column (pending by
default) and never clear it; a newer scheduler does.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0017"
down_revision: str | None = "0016"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("reminders") as batch:
        batch.add_column(
            sa.Column("pending", sa.Boolean(), nullable=False, server_default=sa.true())
        )
    op.execute(
        "UPDATE reminders SET pending = false WHERE EXISTS "
        "(SELECT 1 FROM reminder_fanouts f WHERE f.reminder_key = reminders.key)"
    )
    op.create_index(
        "ix_reminders_pending_due_at",
        "reminders",
        ["due_at"],
        postgresql_where=sa.text("pending"),
        sqlite_where=sa.text("pending"),
    )


def downgrade() -> None:
    op.drop_index("ix_reminders_pending_due_at", table_name="reminders")
    with op.batch_alter_table("reminders") as batch:
        batch.drop_column("pending")
