"""``concord bench``: our event store against plain SQL and the eventsourcing library.

Five workloads, each run by three contenders on the same scratch database in the same run:

========================  ==============================================================
append-1-writer           one event per transaction, one writer, streams of 10 events,
                          each append naming the stream's current version
append-4-writers          the same from 4 threads, each with its own connection and streams
append-batch-100          100 events per transaction, each batch a new stream
read-all-fold             the whole log in order, folded (events per type, name lengths)
rebuild-projection        the stream catalog rebuilt from the whole log
========================  ==============================================================

Contenders: ``ours`` (:class:`~infra.eventstore.store.SqlEventStore` as the service wires it),
``plain`` (the same rows through the bare driver into a plain table: the physical limit) and
``eventsourcing`` (the library's application recorder). Results are ratios against the
baselines, so they mean the same on any machine. See :mod:`infra.bench.run`.
"""

from __future__ import annotations

from infra.bench.run import run_bench

__all__ = ["run_bench"]
