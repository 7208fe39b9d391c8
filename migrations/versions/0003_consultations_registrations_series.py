"""consultations registrations series

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-22
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:

    op.create_table(
        "consultations",
        sa.Column("consultation_id", sa.Uuid(), nullable=False),
        sa.Column("title", sa.String(length=500), nullable=False),
        sa.Column("scope", sa.String(length=20), nullable=False),
        sa.Column("host_country", sa.String(length=2), nullable=False),
        sa.Column("city", sa.String(length=200), nullable=True),
        sa.Column("mode", sa.String(length=20), nullable=False),
        sa.Column("timezone", sa.String(length=64), nullable=False),
        sa.Column("starts_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ends_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("organiser_id", sa.Uuid(), nullable=False),
        sa.Column("series_id", sa.Uuid(), nullable=True),
        sa.Column("capacity", sa.Integer(), nullable=True),
        sa.Column("registration_opened", sa.Boolean(), nullable=False),
        sa.Column("registration_closes_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("registration_closed", sa.Boolean(), nullable=False),
        sa.Column("cancelled", sa.Boolean(), nullable=False),
        sa.Column("completed", sa.Boolean(), nullable=False),
        sa.Column("registered_count", sa.Integer(), nullable=False),
        sa.Column("waitlisted_count", sa.Integer(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("sequence", sa.Integer(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column(
            "detail", sa.JSON().with_variant(postgresql.JSONB(), "postgresql"), nullable=False
        ),
        sa.PrimaryKeyConstraint("consultation_id", name=op.f("pk_consultations")),
    )
    with op.batch_alter_table("consultations", schema=None) as batch_op:
        batch_op.create_index(
            "ix_consultations_host_country_starts_at", ["host_country", "starts_at"], unique=False
        )
        batch_op.create_index("ix_consultations_series_id", ["series_id"], unique=False)
        batch_op.create_index("ix_consultations_starts_at", ["starts_at"], unique=False)

    op.create_table(
        "registrations",
        sa.Column("registration_id", sa.Uuid(), nullable=False),
        sa.Column("consultation_id", sa.Uuid(), nullable=False),
        sa.Column("person_id", sa.Uuid(), nullable=False),
        sa.Column("name", sa.String(length=300), nullable=False),
        sa.Column("email", sa.String(length=320), nullable=False),
        sa.Column("organisation_id", sa.Uuid(), nullable=True),
        sa.Column("role", sa.String(length=30), nullable=False),
        sa.Column("country", sa.String(length=2), nullable=True),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("waitlist_position", sa.Integer(), nullable=True),
        sa.Column("checked_in", sa.Boolean(), nullable=False),
        sa.Column("working_group_id", sa.Uuid(), nullable=True),
        sa.Column("registered_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("registration_id", name=op.f("pk_registrations")),
    )
    with op.batch_alter_table("registrations", schema=None) as batch_op:
        batch_op.create_index(
            "ix_registrations_consultation_id_status", ["consultation_id", "status"], unique=False
        )
        batch_op.create_index("ix_registrations_organisation_id", ["organisation_id"], unique=False)

    op.create_table(
        "series",
        sa.Column("series_id", sa.Uuid(), nullable=False),
        sa.Column("title", sa.String(length=500), nullable=False),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column(
            "planned_countries",
            sa.JSON().with_variant(postgresql.JSONB(), "postgresql"),
            nullable=False,
        ),
        sa.Column(
            "consultations",
            sa.JSON().with_variant(postgresql.JSONB(), "postgresql"),
            nullable=False,
        ),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("series_id", name=op.f("pk_series")),
    )


def downgrade() -> None:

    op.drop_table("series")
    with op.batch_alter_table("registrations", schema=None) as batch_op:
        batch_op.drop_index("ix_registrations_organisation_id")
        batch_op.drop_index("ix_registrations_consultation_id_status")

    op.drop_table("registrations")
    with op.batch_alter_table("consultations", schema=None) as batch_op:
        batch_op.drop_index("ix_consultations_starts_at")
        batch_op.drop_index("ix_consultations_series_id")
        batch_op.drop_index("ix_consultations_host_country_starts_at")

    op.drop_table("consultations")
