"""the sequencer waits only for transactions that write events

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-07

The horizon below which the sequencer numbers events was the oldest transaction still running
in this database, whatever it wrote. So a projection applying a page, a reminder tick queueing
its messages or any other write transaction held every writer's positions back until it
committed: under the HTTP bench a worker's page or tick is tens to hundreds of milliseconds,
and each command waited that long for its position.

Only a transaction that inserts events can ever add an event below the horizon. Each now says
so before it writes anything: the append statement calls ``concord_event_writer()``, which
takes a shared advisory lock (writers never wait for each other on it) for the rest of the
transaction. The lock is taken before the transaction has an id, so a transaction holding an
id without the lock can never insert an event later; the function refuses a transaction that
wrote something else first without having taken it. The sequencer's horizon is now the oldest
transaction id among the lock's holders (or the snapshot's xmax when none is running).

Why no event can be skipped: a writer takes the lock, then gets its id, then commits, then
lets go of the lock. When the sequencer reads the next transaction id and then the holders, a
writer whose id is below that next id either still holds the lock (and holds the horizon back)
or has committed (and the numbering statement, whose snapshot is taken later, sees its events).
A writer that gets its id after the read gets one at or above the horizon.
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

#: The shared advisory lock every event-writing transaction holds ("CONCWR").
WRITER_LOCK = 0x434F_4E43_5752
#: As pg_locks shows a bigint advisory key: high half, low half, objsubid 1.
_CLASSID, _OBJID = WRITER_LOCK >> 32, WRITER_LOCK & 0xFFFF_FFFF
#: The sequencer's own lock (migration 0001).
SEQUENCER_LOCK = 0x434F_4E43_4F52


def _writer_lock(of: str = "") -> str:
    """The pg_locks condition naming the writer lock in this database (columns of ``of``)."""
    return f"""{of}locktype = 'advisory' AND {of}classid = {_CLASSID} AND {of}objid = {_OBJID}
           AND {of}objsubid = 1
           AND {of}database = (SELECT oid FROM pg_database WHERE datname = current_database())"""


WRITER = f"""
CREATE OR REPLACE FUNCTION concord_event_writer() RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    -- A transaction must hold the lock before it has an id (before its first write): one that
    -- got its id unseen could insert events below a horizon the sequencer has already passed.
    IF pg_current_xact_id_if_assigned() IS NOT NULL AND NOT EXISTS (
        SELECT 1 FROM pg_locks WHERE {_writer_lock()} AND pid = pg_backend_pid()
    ) THEN
        RAISE EXCEPTION 'events must be the first thing a transaction writes'
            USING HINT = 'call concord_event_writer() before the transaction''s first write';
    END IF;
    PERFORM pg_advisory_xact_lock_shared({WRITER_LOCK});
END
$$;
"""


def _sequencer(horizon_source: str) -> str:
    return f"""
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

    -- The horizon: the oldest transaction id still running among those that may insert
    -- events, else the snapshot's xmax. backend_xid is a 32-bit xid: widen it by its signed
    -- distance from xmax (running ids lie within 2^31 of it, on either side: xmax is the
    -- latest *completed* id + 1, so ids handed out to transactions still running can be above
    -- it). Ids above xmax are clamped to it below; a transaction that gets its id after this
    -- read gets one at or above xmax anyway.
    next_xid := pg_snapshot_xmax(pg_current_snapshot())::text::bigint;
    SELECT min(next_xid + ((a.backend_xid::text::bigint - (next_xid % 4294967296)
                            + 6442450944) % 4294967296 - 2147483648))
      INTO cutoff
      {horizon_source}
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


#: The holders of the writer lock in this database (each lock and its holder's id are read
#: after ``next_xid``; see the module's docstring for why that order is enough).
SEQUENCER = _sequencer(
    f"""FROM pg_locks l
      JOIN pg_stat_activity a ON a.pid = l.pid
     WHERE {_writer_lock("l.")}
       AND a.backend_xid IS NOT NULL;"""
)

#: As migration 0001 made it: every transaction with an id in this database.
PREVIOUS = _sequencer(
    """FROM pg_stat_activity a
     WHERE a.datname = current_database()
       AND a.backend_xid IS NOT NULL
       AND a.pid <> pg_backend_pid();"""
)


def upgrade() -> None:
    if op.get_context().dialect.name == "postgresql":
        op.execute(WRITER)
        op.execute(SEQUENCER)


def downgrade() -> None:
    if op.get_context().dialect.name == "postgresql":
        op.execute(PREVIOUS)
        op.execute("DROP FUNCTION IF EXISTS concord_event_writer()")
