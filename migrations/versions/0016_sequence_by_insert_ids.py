"""the sequencer, asked for the positions of events of several streams at once

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-07

Concurrent appends of one process are written together, several streams in one statement
(infra/eventstore/group.py). ``concord_sequence_ids(ids)`` runs the sequencing step once for
all of them and returns the positions of the events with those insert ids (NULL while one is
not numbered yet), in the order asked: the same step as ``concord_sequence_events()``, which
a writer of one stream keeps calling. Additive: processes from before it never call it.
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0016"
down_revision: str | None = "0015"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SEQUENCE_IDS = """
CREATE OR REPLACE FUNCTION concord_sequence_ids(ids bigint[]) RETURNS bigint[]
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM concord_sequence_events();
    -- A statement of its own: its snapshot is taken after the numbering above.
    RETURN ARRAY(
        SELECT e.position
          FROM unnest(ids) WITH ORDINALITY AS asked(id, n)
          LEFT JOIN events e ON e.id = asked.id
         ORDER BY asked.n
    );
END
$$;
"""


def upgrade() -> None:
    if op.get_context().dialect.name == "postgresql":
        op.execute(SEQUENCE_IDS)


def downgrade() -> None:
    if op.get_context().dialect.name == "postgresql":
        op.execute("DROP FUNCTION IF EXISTS concord_sequence_ids(bigint[])")
