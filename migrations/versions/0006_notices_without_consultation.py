"""notices without a consultation; a contact address on webhook subscriptions

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-23

Messages that are not about a consultation (an integrator's endpoint was disabled; later,
other account notices) go through the same mail outbox, so the consultation column becomes
optional in the reminder schedule and the outbox. A subscription may name who is told when
its endpoint is disabled.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("reminders") as batch:
        batch.alter_column("consultation_id", existing_type=sa.Uuid(), nullable=True)
    with op.batch_alter_table("mail_outbox") as batch:
        batch.alter_column("consultation_id", existing_type=sa.Uuid(), nullable=True)
    with op.batch_alter_table("webhook_subscriptions") as batch:
        batch.add_column(sa.Column("contact_email", sa.String(length=320), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("webhook_subscriptions") as batch:
        batch.drop_column("contact_email")
    op.execute("DELETE FROM mail_outbox WHERE consultation_id IS NULL")
    op.execute("DELETE FROM reminders WHERE consultation_id IS NULL")
    with op.batch_alter_table("mail_outbox") as batch:
        batch.alter_column("consultation_id", existing_type=sa.Uuid(), nullable=False)
    with op.batch_alter_table("reminders") as batch:
        batch.alter_column("consultation_id", existing_type=sa.Uuid(), nullable=False)
