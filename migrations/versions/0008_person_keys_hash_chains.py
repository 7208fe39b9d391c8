"""per-person keys for personal data; hash chains over every stream

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-23

Existing events are brought up to the new rules in place, once: plain personal data in them is
sealed under a new key per person (infra.personal), then each stream's content and chain hashes
are computed over the sealed form (infra.eventstore.chain). New events get both on append; on
PostgreSQL the chain step runs inside the append statement (``concord_chain``).
"""

from collections.abc import Sequence
from datetime import UTC, datetime
from uuid import UUID

import orjson
import sqlalchemy as sa
from alembic import op

from infra.eventstore.chain import GENESIS, PG_CHAIN_FUNCTION, chain, content_hash

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BATCH = 2000


def upgrade() -> None:
    op.create_table(
        "person_keys",
        sa.Column("person_id", sa.Uuid(), nullable=False),
        sa.Column("kid", sa.String(length=16), nullable=False),
        sa.Column("key", sa.LargeBinary(length=32), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("person_id", name=op.f("pk_person_keys")),
    )
    with op.batch_alter_table("events") as batch:
        batch.add_column(sa.Column("content_hash", sa.String(length=64), nullable=True))
        batch.add_column(sa.Column("chain_hash", sa.String(length=64), nullable=True))
    # Erased people's names and e-mails read as NULL; detail documents naming a speaker are
    # rewritten when the speaker is erased.
    with op.batch_alter_table("registrations") as batch:
        batch.alter_column("name", existing_type=sa.String(length=300), nullable=True)
        batch.alter_column("email", existing_type=sa.String(length=320), nullable=True)
    op.create_table(
        "consultation_people",
        sa.Column("consultation_id", sa.Uuid(), nullable=False),
        sa.Column("person_id", sa.Uuid(), nullable=False),
        sa.PrimaryKeyConstraint(
            "consultation_id", "person_id", name=op.f("pk_consultation_people")
        ),
    )
    op.create_index(
        "ix_consultation_people_person_id", "consultation_people", ["person_id"], unique=False
    )
    op.execute(
        "DELETE FROM projection_checkpoints WHERE name = 'consultations'"
    )  # rebuilt from the log on the next catch-up: fills consultation_people
    bind = op.get_bind()
    if bind.dialect.name == "postgresql":
        op.execute(PG_CHAIN_FUNCTION)
    _backfill(bind)
    with op.batch_alter_table("events") as batch:
        batch.alter_column("content_hash", existing_type=sa.String(length=64), nullable=False)
        batch.alter_column("chain_hash", existing_type=sa.String(length=64), nullable=False)


def _backfill(bind: sa.Connection) -> None:
    """Seal plain personal data and hash every stream, in (stream, version) order."""
    from contextlib import nullcontext

    from infra.personal import Keyring, has_marker
    from services.ports import NewEvent

    class _OnThisConnection:  # the keyring writes its keys in the migration's transaction
        def write(self) -> nullcontext[sa.Connection]:
            return nullcontext(bind)

        autocommit = write

    keyring = Keyring(_OnThisConnection(), cache_ttl_s=86_400.0)  # type: ignore[arg-type]
    sqlite = bind.dialect.name == "sqlite"
    data_param = ":data" if sqlite else "CAST(:data AS jsonb)"
    stream, previous, version = None, GENESIS, 0
    select = sa.text(
        "SELECT id, event_id, stream_id, stream_type, version, event_type, schema_version,"
        " data, metadata, recorded_at FROM events"
        " WHERE stream_id > :sid OR (stream_id = :sid AND version > :ver)"
        " ORDER BY stream_id, version LIMIT :n"
    )
    first = sa.text(
        "SELECT id, event_id, stream_id, stream_type, version, event_type, schema_version,"
        " data, metadata, recorded_at FROM events ORDER BY stream_id, version LIMIT :n"
    )
    while True:
        if stream is None:
            rows = bind.execute(first, {"n": BATCH}).all()
        else:
            rows = bind.execute(select, {"sid": stream, "ver": version, "n": BATCH}).all()
        if not rows:
            return
        for row in rows:
            data = orjson.loads(row.data) if isinstance(row.data, str) else row.data
            meta = orjson.loads(row.metadata) if isinstance(row.metadata, str) else row.metadata
            event_id = UUID(str(row.event_id))
            at = row.recorded_at
            at = datetime.fromisoformat(at) if isinstance(at, str) else at
            at = at if at.tzinfo else at.replace(tzinfo=UTC)
            if row.stream_id != stream:
                previous = GENESIS
            stream, version = row.stream_id, row.version
            values: dict[str, object] = {"id": row.id}
            sets = "content_hash = :content_hash, chain_hash = :chain_hash"
            if has_marker(data):
                (sealed,) = keyring.seal(
                    [NewEvent(row.event_type, data, row.schema_version, event_id)]
                )
                if sealed.data != data:
                    data = sealed.data
                    values["data"] = orjson.dumps(data).decode()
                    sets += f", data = {data_param}"
            content = content_hash(
                event_id,
                UUID(str(row.stream_id)),
                row.stream_type,
                row.event_type,
                row.schema_version,
                data,
                meta,
                at,
            )
            (previous,) = chain(previous, [content])
            values.update(content_hash=content, chain_hash=previous)
            bind.execute(sa.text(f"UPDATE events SET {sets} WHERE id = :id"), values)


def downgrade() -> None:
    op.drop_index("ix_consultation_people_person_id", table_name="consultation_people")
    op.drop_table("consultation_people")
    # Sealed personal data stays sealed: the keys are dropped with their table, which erases
    # everyone. Downgrading is for an empty or disposable database only.
    with op.batch_alter_table("events") as batch:
        batch.drop_column("chain_hash")
        batch.drop_column("content_hash")
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP FUNCTION IF EXISTS concord_chain(text, text[])")
    op.drop_table("person_keys")
