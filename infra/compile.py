"""Compile and publish a joint statement from the event log (run by a Celery worker).

Idempotent and restartable: everything is read from the committed log (the statement's
stream and its consultation's), the compile time is the time the publication request was
recorded, so compiling twice gives the same bytes; files are content-addressed and written
atomically; the compiled and published events are no-ops when already recorded for the job.
A worker killed halfway simply runs the task again.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from uuid import UUID

import structlog

from infra.bootstrap import System
from infra.documents.model import ERASED, Consultation, Recommendation, Section, Signatory
from infra.documents.model import StatementDocument as Document
from infra.documents.render import render
from infra.documents.storage import store
from services.bus import RETRIES, Job, Snapshot, empty_snapshot
from services.consultations.model import CONSULTATION
from services.decider import Context
from services.messages import Personal
from services.ports import Metadata, RecordedEvent
from services.registry import EVENTS
from services.statements.commands import PublishStatement, RecordCompilation
from services.statements.errors import AlreadyPublished
from services.statements.model import (
    STATEMENT,
    Command,
    Statement,
    active_endorsements,
    sections_in_order,
)

log = structlog.get_logger("concord.compile")
WORKER = Metadata(actor="worker: statements.compile")


def _plain(value: Personal[str] | None) -> str | None:
    if value is None:
        return None
    return value.value if isinstance(value, Personal) else ERASED


def build(
    system: System,
    statement_id: UUID,
    job_id: UUID,
    records: Sequence[RecordedEvent] | None = None,
) -> tuple[Statement, Document]:
    """The statement as the log says it stood when publication was requested by ``job_id``.

    ``records``: the statement's stream, if the caller has read it already.
    """
    state, _, document = _build(system, statement_id, job_id, records)
    return state, document


def _build(
    system: System,
    statement_id: UUID,
    job_id: UUID,
    records: Sequence[RecordedEvent] | None = None,
) -> tuple[Statement, Snapshot[Statement], Document]:
    """(state at the request, the stream now, document): the stream read and decoded once."""
    if records is None:
        records = system.store.read_stream(statement_id)
    request = next(
        (
            r
            for r in records
            if r.type == "statement.publication_requested" and r.data.get("job_id") == str(job_id)
        ),
        None,
    )
    if request is None:
        raise LookupError(f"no publication job {job_id} for statement {statement_id}")
    upto = [r for r in records if r.version <= request.version]
    registry = system.bus.registry
    at_request = empty_snapshot(STATEMENT, statement_id).extend(STATEMENT, registry, upto)
    now = at_request.extend(STATEMENT, registry, records[len(upto) :])
    state = at_request.state
    finalised_at = max(r.recorded_at for r in upto if r.type == "statement.finalised")
    consultation_records = system.store.read_stream(state.consultation_id)  # type: ignore[arg-type]
    consultation = CONSULTATION.fold(EVENTS.decode(r) for r in consultation_records)
    sections = tuple(
        Section(
            thematic_area=section.thematic_area,
            recommendations=tuple(
                Recommendation(f"{i}.{j}", r.text, r.addressed_to)
                for j, r in enumerate(section.recommendations, start=1)
            ),
        )
        for i, section in enumerate(sections_in_order(state, include_empty=False), start=1)
    )
    signatories = tuple(
        Signatory(
            organisation_name=e.organisation_name,
            acronym=None,
            country=e.organisation_country,
            kind=e.organisation_kind,
            signatory_name=_plain(e.signatory_name) or ERASED,
            signatory_title=_plain(e.signatory_title),
        )
        for e in active_endorsements(state)
    )
    document = Document(
        statement_id=statement_id,
        title=state.title,
        language=state.language,
        preamble=state.preamble,
        consultation=Consultation(
            title=consultation.title,
            city=consultation.city,
            host_country=consultation.host_country,
            starts_at=consultation.starts_at,
            ends_at=consultation.ends_at,
            timezone=consultation.timezone,
        ),
        sections=sections,
        content_hash=state.content_hash or "",
        finalised_at=finalised_at,
        endorsement_deadline=state.endorsement_deadline or finalised_at,
        compiled_at=request.recorded_at,
        public_url=system.settings.public_url,
        signatories=signatories,
    )
    return state, now, document


def compile_statement(system: System, statement_id: UUID, job_id: UUID) -> dict[str, Any]:
    """Render, store and record; returns the files by kind (sha256)."""
    # One read of the (possibly long) stream serves the published check, the document and
    # the two commands that record and publish it (they start from its snapshot).
    records = system.store.read_stream(statement_id)
    try:
        _, snapshot, document = _build(system, statement_id, job_id, records)
    except LookupError:
        snapshot = empty_snapshot(STATEMENT, statement_id).extend(
            STATEMENT, system.bus.registry, records
        )
        if snapshot.state.published is None:
            raise
    if snapshot.state.published is not None:
        log.info("already published", statement_id=str(statement_id), job_id=str(job_id))
        return dict(snapshot.state.published.files)
    files = {
        kind: stored.sha256
        for kind, stored in store(system.settings.data_dir, render(document)).items()
    }
    outcome = None
    for command in (
        RecordCompilation(statement_id, job_id, document.content_hash, files, document.compiled_at),
        PublishStatement(statement_id, job_id),
    ):
        jobs: list[Job[Command]] = [Job(command, Context(now=system.bus.clock.now()), WORKER)]
        [result], snapshot = system.bus.handle_batch(
            STATEMENT, statement_id, jobs, snapshot, retries=RETRIES
        )
        if isinstance(result, AlreadyPublished):
            # Another run of the same job (a redelivery, the sweep) finished first: its
            # files are ours too, byte for byte.
            done = snapshot.state.published
            if done is None or done.job_id != job_id:
                raise result
            return dict(done.files)
        if isinstance(result, Exception):
            raise result
        outcome = result
    if outcome is not None and outcome.position is not None:
        system.projector.catch_up(until=outcome.position)
    log.info("statement published", statement_id=str(statement_id), job_id=str(job_id), **files)
    return files


def unfinished_jobs(system: System, older_than_s: float = 120.0) -> list[tuple[UUID, UUID]]:
    """(statement, job) pairs requested over ``older_than_s`` ago and still not published.

    A worker killed mid-compile acknowledges nothing, but on Redis its message only comes back
    after the visibility timeout (an hour): the scheduler's sweep re-enqueues these instead.
    """
    from datetime import UTC, datetime, timedelta

    cutoff = datetime.now(UTC) - timedelta(seconds=older_than_s)
    requested: dict[UUID, tuple[UUID, Any]] = {}
    published: set[UUID] = set()
    after = 0
    kinds = ["statement.publication_requested", "statement.published"]
    while page := system.store.read_all(after, 1000, types=kinds):
        for e in page:
            if e.type == "statement.published":
                published.add(e.stream_id)
            else:
                requested[e.stream_id] = (UUID(e.data["job_id"]), e.recorded_at)
        after = page[-1].position or after
    return [
        (statement_id, job_id)
        for statement_id, (job_id, at) in requested.items()
        if statement_id not in published and at < cutoff
    ]
