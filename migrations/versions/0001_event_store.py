"""The event store: events, projection checkpoints, the stream catalog and the sequencer.

Revision ID: 0001
Revises:
Create Date: 2026-11-22
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

#: Advisory lock key held (briefly) by the one sequencer running at a time.
SEQUENCER_LOCK = 0x434F_4E43_4F52

SEQUENCER = f"""
CREATE OR REPLACE FUNCTION concord_sequence_events(
    stream uuid DEFAULT NULL, first_version integer DEFAULT NULL, last_version integer DEFAULT NULL
) RETURNS bigint[]
LANGUAGE plpgsql AS $$
DECLARE
    next_xid bigint;
    cutoff bigint;
    previous bigint;
    base bigint;
    numbered bigint;
BEGIN
    -- Positions are a pure function of the committed log (numbering below the horizon, in
    -- (tx_id, id) order, from the highest position), so a crash that loses this commit is
    -- repaired by the next run giving the same events the same numbers. No need to wait
    -- for the WAL flush here.
    PERFORM set_config('synchronous_commit', 'off', true);
    -- Every lookup below has an index made for it. PL/pgSQL caches plans, and one cached
    -- while the table was small could scan the whole table forever after: forbid that.
    PERFORM set_config('enable_seqscan', 'off', true);
    -- One sequencer at a time. A writer that finds another one at work does not queue behind
    -- it: that one is numbering what is committed, quite likely this writer's events too.
    IF NOT pg_try_advisory_xact_lock({SEQUENCER_LOCK}) THEN
        RETURN concord_event_positions(stream, first_version, last_version);
    END IF;

    -- Where the previous run stopped: every event below its horizon is numbered, so the
    -- scan starts there instead of wading through the dead index entries numbering leaves.
    SELECT s.horizon::text::bigint, s.last_position INTO previous, base
      FROM event_sequencer s WHERE s.id = 1;

    -- The horizon: every transaction below it has ended. pg_snapshot_xmin() would also wait
    -- for transactions in other databases of the server, which can never write here; so take
    -- the oldest transaction id still running in THIS database, else the snapshot's xmax.
    -- backend_xid is a 32-bit xid: widen it by its signed distance from xmax (running ids lie
    -- within 2^31 of it, on either side: xmax is the latest *completed* id + 1, so ids handed
    -- out to transactions still running can be above it). Ids above xmax are clamped to it
    -- below; a transaction that starts after this read gets an id above xmax anyway.
    next_xid := pg_snapshot_xmax(pg_current_snapshot())::text::bigint;
    SELECT min(next_xid + ((a.backend_xid::text::bigint - (next_xid % 4294967296)
                            + 6442450944) % 4294967296 - 2147483648))
      INTO cutoff
      FROM pg_stat_activity a
     WHERE a.datname = current_database()
       AND a.backend_xid IS NOT NULL
       AND a.pid <> pg_backend_pid();
    cutoff := greatest(least(coalesce(cutoff, next_xid), next_xid), previous);
    IF cutoff = previous THEN
        numbered := 0;
    ELSE
        -- Each statement takes a fresh snapshot, after the lock: it sees every commit made
        -- before the previous sequencer finished.
        WITH todo AS (
            SELECT id, row_number() OVER (ORDER BY tx_id, id) AS n
              FROM events
             WHERE position IS NULL
               AND tx_id >= previous::text::xid8
               AND tx_id < cutoff::text::xid8
        )
        UPDATE events AS e SET position = base + todo.n
          FROM todo WHERE e.id = todo.id;
        GET DIAGNOSTICS numbered = ROW_COUNT;
        UPDATE event_sequencer
           SET horizon = cutoff::text::xid8, last_position = base + numbered
         WHERE id = 1;
        IF numbered > 0 THEN
            PERFORM pg_notify('concord_events', (base + numbered)::text);
        END IF;
    END IF;
    RETURN concord_event_positions(stream, first_version, last_version);
END
$$;
"""

#: The caller's own events, by their key: their positions, or NULL while not yet numbered.
POSITIONS = """
CREATE OR REPLACE FUNCTION concord_event_positions(
    stream uuid, first_version integer, last_version integer
) RETURNS bigint[]
LANGUAGE sql STABLE AS $$
    SELECT coalesce(array_agg(
        (SELECT e.position FROM events e WHERE e.stream_id = stream AND e.version = v)
        ORDER BY v), ARRAY[]::bigint[])
      FROM generate_series(first_version, last_version) AS v
     WHERE stream IS NOT NULL
$$;
"""


def upgrade() -> None:
    json = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
    op.create_table(
        "events",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            primary_key=True,
            autoincrement=True,
        ),
        sa.Column("position", sa.BigInteger(), nullable=True),
        sa.Column("event_id", sa.Uuid(), nullable=False),
        sa.Column("stream_id", sa.Uuid(), nullable=False),
        sa.Column("stream_type", sa.String(64), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("event_type", sa.String(128), nullable=False),
        sa.Column("schema_version", sa.SmallInteger(), nullable=False),
        sa.Column("data", json, nullable=False),
        sa.Column("metadata", json, nullable=False),
        sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_events"),
    )
    op.create_index("uq_events_stream_id_version", "events", ["stream_id", "version"], unique=True)
    op.create_index(
        "uq_events_position",
        "events",
        ["position"],
        unique=True,
        postgresql_where=sa.text("position IS NOT NULL"),
    )
    op.create_table(
        "projection_checkpoints",
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("position", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name", name="pk_projection_checkpoints"),
    )
    op.create_table(
        "stream_catalog",
        sa.Column("stream_id", sa.Uuid(), nullable=False),
        sa.Column("stream_type", sa.String(64), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("first_position", sa.BigInteger(), nullable=False),
        sa.Column("last_position", sa.BigInteger(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("stream_id", name="pk_stream_catalog"),
    )
    op.create_index(
        "ix_stream_catalog_stream_type_last_position",
        "stream_catalog",
        ["stream_type", "last_position"],
    )
    if op.get_bind().dialect.name == "postgresql":
        # The writing transaction, so the sequencer can number events below the horizon.
        op.execute("ALTER TABLE events ADD COLUMN tx_id xid8 NOT NULL DEFAULT pg_current_xact_id()")
        op.execute(
            "CREATE INDEX ix_events_unsequenced ON events (tx_id, id) WHERE position IS NULL"
        )
        # The sequencer's own state: how far it has numbered, and below which transaction.
        op.execute(
            "CREATE TABLE event_sequencer (id smallint PRIMARY KEY CHECK (id = 1), "
            "horizon xid8 NOT NULL, last_position bigint NOT NULL)"
        )
        op.execute("INSERT INTO event_sequencer VALUES (1, '0', 0)")
        op.execute(POSITIONS)
        op.execute(SEQUENCER)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP FUNCTION IF EXISTS concord_sequence_events(uuid, integer, integer)")
        op.execute("DROP FUNCTION IF EXISTS concord_event_positions(uuid, integer, integer)")
        op.execute("DROP TABLE IF EXISTS event_sequencer")
    op.drop_table("stream_catalog")
    op.drop_table("projection_checkpoints")
    op.drop_table("events")
