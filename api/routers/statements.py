"""Joint statements: drafting, amendments, finalising, endorsements, publication, documents.

Reads rebuild the statement from its own stream (``?as_of`` is the same fold, stopped
earlier): the text, its history and the signatories are exactly what the log says.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Annotated, Any, Literal, NamedTuple
from uuid import UUID
from zoneinfo import ZoneInfo

import orjson
from fastapi import Query, Request, Response
from fastapi.responses import FileResponse
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from api.commands import etag, new_id, run
from api.deps import (
    Member,
    Organiser,
    Principal,
    SystemDep,
    ensure_acts_for,
    principal_of,
    system_of,
)
from api.fields import Text
from api.freshness import kept_of
from api.problems import ProblemError
from api.routers.consultations import load_doc, parse_as_of
from api.routers.organisations import load_organisation
from api.routing import Router
from api.schemas import Problem
from api.threads import in_thread
from infra.bootstrap import System
from infra.documents.storage import MEDIA_TYPES, open_file
from infra.eventstore.verify import verify_stream
from infra.freshness import Mark
from services.bus import Outcome, Snapshot
from services.messages import Personal
from services.people import person_id
from services.registry import EVENTS
from services.statements import commands as s
from services.statements.model import (
    STATEMENT,
    Endorsement,
    Statement,
    active_endorsement_of,
    active_endorsements,
    counts_by_country,
    counts_by_kind,
    history,
    pending_amendments,
    sections_in_order,
    status,
)

router = Router(tags=["statements"])
ERRORS: dict[int | str, dict[str, Any]] = {
    c: {"model": Problem} for c in (401, 403, 404, 409, 412, 422)
}


class StatementCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    title: Text(500)  # type: ignore[valid-type]
    language: Annotated[str, Field(pattern=r"^[a-zA-Z]{2,3}(-[a-zA-Z0-9]{2,8})*$", max_length=35)]
    preamble: Text(20_000) | None = None  # type: ignore[valid-type]
    drafting_committee: list[UUID] = Field(default_factory=list, max_length=50)


class RecommendationCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    thematic_area: Text(300)  # type: ignore[valid-type]
    text: Text(20_000)  # type: ignore[valid-type]
    addressed_to: list[Text(300)] = Field(default_factory=list, max_length=20)  # type: ignore[valid-type]


class RecommendationUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    text: Text(20_000) | None = None  # type: ignore[valid-type]
    addressed_to: list[Text(300)] | None = Field(default=None, max_length=20)  # type: ignore[valid-type]


class Withdrawal(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reason: Text(2000) | None = None  # type: ignore[valid-type]


class AmendmentCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    recommendation_id: UUID
    text: Text(20_000)  # type: ignore[valid-type]
    rationale: Text(5000)  # type: ignore[valid-type]
    organisation_id: UUID | None = None


class Reason(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reason: Text(2000)  # type: ignore[valid-type]


class Finalise(BaseModel):
    model_config = ConfigDict(extra="forbid")
    endorsement_deadline: AwareDatetime


class EndorsementCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    organisation_id: UUID
    signatory_name: Text(300)  # type: ignore[valid-type]
    signatory_title: Text(300) | None = None  # type: ignore[valid-type]
    content_hash: Annotated[str | None, Field(pattern=r"^[0-9a-f]{64}$")] = Field(
        default=None, description="The finalised text's hash you read; refused if it changed."
    )


# -- reading ------------------------------------------------------------------------------


def _plain(value: Any) -> Any:
    return value.value if isinstance(value, Personal) else value


#: When each event of a statement was recorded, by stream version.
Times = Callable[[int], datetime | None]


class Folded(NamedTuple):
    state: Statement
    version: int
    at: Times
    #: Views derived from this state, computed once (kept with the process's snapshot).
    memo: dict[str, Any]

    @classmethod
    def of(cls, snap: Snapshot[Statement]) -> Folded:
        """The statement as the process's lanes keep it."""
        return cls(snap.state, snap.version, snap.recorded_at, snap.memo)


async def _fold(
    system: System,
    statement_id: UUID,
    position: int | None = None,
    when: datetime | None = None,
    *,
    at_least: int | None = None,
    seen: Mark | None = None,
) -> Folded:
    """The statement now (folded once and kept by the process's lanes) or as it stood then;
    with ``at_least``, any kept state at that version or later will do; with ``seen``, kept
    state that held the stream when the log was at that mark (api/freshness.py)."""

    latest = position is None and when is None  # the statement as it stands, not as of then

    def fold() -> Folded:
        if latest:
            return Folded.of(
                system.lanes.load(STATEMENT, statement_id, at_least=at_least, seen=seen)
            )
        records = system.store.read_stream(statement_id, until_position=position, until_time=when)
        state = STATEMENT.fold(EVENTS.decode_known(records))
        at = {r.version: r.recorded_at for r in records}
        return Folded(state, records[-1].version if records else 0, at.get, {})

    # Kept and known current at ``seen``: no thread needed.
    kept = (
        system.lanes.kept_at(STATEMENT, statement_id, seen, at_least=at_least)
        if latest and seen is not None
        else None
    )
    folded = Folded.of(kept) if kept is not None else await in_thread(fold)
    if not folded.state.exists:
        raise ProblemError(
            404, "Not found", f"No statement {statement_id}.", type_="unknown-statement"
        )
    return folded


def _counts(folded: Folded) -> dict[str, Any]:
    """Active endorsements and their counts by country and kind (once per snapshot)."""
    memo = folded.memo
    if "counts" not in memo:
        active = active_endorsements(folded.state)
        memo["counts"] = {
            "active": active,
            "count": len(active),
            "by_country": counts_by_country(folded.state),
            "by_kind": counts_by_kind(folded.state),
        }
    return dict(memo["counts"])


def _check_reader(principal: Principal, state: Statement) -> None:
    """Drafts are for key holders; a published statement is public."""
    if state.published is None and not principal.authenticated:
        raise ProblemError(
            401,
            "Unauthorized",
            "Only published statements are public; this needs an API key.",
            type_="unauthenticated",
            headers={"WWW-Authenticate": 'Bearer realm="concord"'},
        )


def document(folded: Folded, public_url: str) -> dict[str, Any]:
    state, version, at = folded.state, folded.version, folded.at
    zone = ZoneInfo(state.timezone or "UTC")

    def local(moment: datetime | None) -> str | None:
        return moment.astimezone(zone).isoformat() if moment else None

    return {
        "id": str(state.statement_id),
        "consultation_id": str(state.consultation_id),
        "version": version,
        "status": status(state),
        "title": state.title,
        "language": state.language,
        "preamble": state.preamble,
        "drafting_committee": [str(o) for o in state.drafting_committee],
        "content_hash": state.content_hash,
        "endorsement_deadline": local(state.endorsement_deadline),
        "timezone": state.timezone,
        "sections": [
            {
                "id": str(sec.section_id),
                "thematic_area": sec.thematic_area,
                "recommendations": [
                    {
                        "id": str(r.recommendation_id),
                        "text": r.text,
                        "addressed_to": list(r.addressed_to),
                        "history": [
                            {
                                "version": h.version,
                                "kind": h.kind,
                                "text": h.text,
                                "addressed_to": list(h.addressed_to),
                                "amendment_id": str(h.amendment_id) if h.amendment_id else None,
                                "reason": h.reason,
                                "at": local(at(h.version)),
                            }
                            for h in history(state, r.recommendation_id)
                        ],
                    }
                    for r in sec.recommendations
                ],
            }
            for sec in sections_in_order(state)
        ],
        "pending_amendments": [
            {
                "id": str(a.amendment_id),
                "recommendation_id": str(a.recommendation_id),
                "organisation_id": str(a.organisation_id),
                "text": a.text,
                "rationale": a.rationale,
            }
            for a in pending_amendments(state)
        ],
        "endorsements": {key: value for key, value in _counts(folded).items() if key != "active"},
        "documents": (
            {
                k: f"{public_url}/v1/statements/{state.statement_id}/document.{k}"
                for k in state.published.files
            }
            if state.published
            else None
        ),
    }


def _signatories(at: Times, endorsements: Iterable[Endorsement]) -> list[dict[str, Any]]:
    return [
        {
            "organisation_id": str(e.organisation_id),
            "organisation_name": e.organisation_name,
            "country": e.organisation_country,
            "kind": e.organisation_kind,
            "signatory_name": _plain(e.signatory_name),
            "signatory_title": _plain(e.signatory_title),
            "content_hash": e.content_hash,
            "endorsed_at": when.isoformat() if (when := at(e.version)) else None,
        }
        for e in endorsements
    ]


@router.get("/v1/statements/{statement_id}", responses=ERRORS)
async def get_statement(
    statement_id: UUID,
    request: Request,
    response: Response,
    as_of: Annotated[
        str | None, Query(max_length=40, description="RFC 3339 time or position")
    ] = None,
) -> dict[str, Any]:
    """The text by thematic area, pending amendments, each recommendation's history and the
    endorsement counts; ``as_of`` shows it as it stood then."""
    system, principal = system_of(request), principal_of(request)
    position, when = parse_as_of(as_of) if as_of else (None, None)
    seen = await kept_of(request).mark() if as_of is None else None
    folded = await _fold(system, statement_id, position, when, seen=seen)
    state = folded.state
    _check_reader(principal, state)
    etag(response, folded.version)
    doc = document(folded, system.settings.public_url)
    if as_of:
        doc["signatories"] = _signatories(folded.at, active_endorsements(state))
    return doc


@router.get(
    "/v1/statements/{statement_id}/endorsements",
    responses={
        **ERRORS,
        200: {
            "description": "The signatories as JSON, or all of them as CSV with format=csv.",
            "content": {"application/json": {}, "text/csv": {}},
        },
    },
)
async def list_endorsements(
    statement_id: UUID,
    request: Request,
    format: Literal["json", "csv"] = "json",
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
) -> Any:
    """Signatories (public once published) with counts by country and kind; ``format=csv``
    exports them all."""
    system, principal = system_of(request), principal_of(request)
    folded = await _fold(system, statement_id, seen=await kept_of(request).mark())
    state, version = folded.state, folded.version
    _check_reader(principal, state)
    counts = _counts(folded)
    if format == "csv":
        out = io.StringIO()
        fields = [
            "organisation_name",
            "country",
            "kind",
            "signatory_name",
            "signatory_title",
            "endorsed_at",
            "content_hash",
            "organisation_id",
        ]
        writer = csv.DictWriter(out, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(_signatories(folded.at, counts["active"]))
        return Response(
            out.getvalue().encode("utf-8-sig"),
            media_type="text/csv; charset=utf-8",
            headers={
                "Content-Disposition": f'attachment; filename="signatories-{statement_id}.csv"',
                "ETag": f'"{version}"',
            },
        )
    pages: dict[tuple[int, int], bytes] = folded.memo.setdefault("pages", {})
    body = pages.get((offset, limit))
    if body is None:
        page = {
            "data": _signatories(folded.at, counts["active"][offset : offset + limit]),
            "total": counts["count"],
            "limit": limit,
            "offset": offset,
            "by_country": counts["by_country"],
            "by_kind": counts["by_kind"],
            "content_hash": state.content_hash,
        }
        body = orjson.dumps(page)
        _keep_page(pages, (offset, limit), body, version)
    return Response(body, media_type="application/json", headers={"ETag": f'"{version}"'})


#: Bytes of rendered pages kept with a folded statement: this many per event folded into it
#: (about the size of two renderings of every endorsement), or :data:`PAGE_BYTES_FLOOR`.
PAGE_BYTES_PER_EVENT = 512
PAGE_BYTES_FLOOR = 64 * 1024


def _keep_page(
    pages: dict[tuple[int, int], bytes], key: tuple[int, int], body: bytes, version: int
) -> None:
    """Keep a rendered page with the fold it shows (and dropped with it: a new event or an
    erasure makes a new fold), within a bound that grows with the statement, as the kept folds
    themselves are bounded in events (infra/lanes.py)."""
    held = sum(len(b) for b in pages.values())
    if held + len(body) <= max(PAGE_BYTES_FLOOR, PAGE_BYTES_PER_EVENT * version):
        pages[key] = body


@router.post("/v1/statements/{statement_id}/endorsements", status_code=201, responses=ERRORS)
async def endorse(
    statement_id: UUID,
    body: EndorsementCreate,
    request: Request,
    response: Response,
    system: SystemDep,
    principal: Member,
) -> dict[str, Any]:
    """Endorse the finalised text for one organisation (each only for itself, once)."""
    ensure_acts_for(principal, body.organisation_id)
    organisation = await load_organisation(system, body.organisation_id, request)
    outcome = await _command(
        system,
        request,
        response,
        principal,
        statement_id,
        s.EndorseStatement(
            statement_id=statement_id,
            organisation_id=body.organisation_id,
            person_id=person_id(f"{body.organisation_id}/{body.signatory_name}"),
            signatory_name=body.signatory_name,
            signatory_title=body.signatory_title,
            organisation_name=organisation.name,
            organisation_country=organisation.country,
            organisation_kind=organisation.kind,
            content_hash=body.content_hash,
        ),
    )
    response.headers["Location"] = (
        f"/v1/statements/{statement_id}/endorsements/{body.organisation_id}"
    )
    event = outcome.recorded[-1] if outcome.recorded else None
    return {
        "statement_id": str(statement_id),
        "organisation_id": str(body.organisation_id),
        "signatory_name": body.signatory_name,
        "signatory_title": body.signatory_title,
        "content_hash": event.data.get("content_hash") if event else None,
        "position": outcome.position,
        "version": outcome.version,
        "receipt": receipt(statement_id, event, outcome.position) if event else None,
    }


@router.delete("/v1/statements/{statement_id}/endorsements/{organisation_id}", responses=ERRORS)
async def withdraw_endorsement(
    statement_id: UUID,
    organisation_id: UUID,
    request: Request,
    response: Response,
    system: SystemDep,
    principal: Member,
    body: Withdrawal | None = None,
) -> dict[str, Any]:
    """Withdraw an organisation's endorsement (it stays in the history)."""
    ensure_acts_for(principal, organisation_id)
    done = await _command(
        system,
        request,
        response,
        principal,
        statement_id,
        s.WithdrawEndorsement(statement_id, organisation_id, body.reason if body else None),
    )
    return await _answer(system, done, response, request)


@router.get("/v1/statements/{statement_id}/document.{kind}", responses={404: {"model": Problem}})
async def get_document(
    statement_id: UUID, kind: Literal["md", "html", "pdf"], system: SystemDep
) -> Any:
    """The compiled statement with its signatories (404 until published)."""
    state = (await _fold(system, statement_id)).state
    files = state.published.files if state.published else {}
    path = open_file(system.settings.data_dir, files[kind], kind) if kind in files else None
    if path is None:
        raise ProblemError(
            404, "Not found", "The statement has not been published yet.", type_="unknown-document"
        )
    return FileResponse(
        path,
        media_type=MEDIA_TYPES[kind],
        filename=f"statement-{statement_id}.{kind}",
        headers={
            "ETag": f'"{files[kind]}"',
            "Cache-Control": "public, max-age=31536000, immutable",
        },
    )


@router.get("/v1/jobs/{job_id}", responses={404: {"model": Problem}})
async def get_job(job_id: UUID, system: SystemDep, statement_id: UUID) -> dict[str, Any]:
    """A publication job: queued until the worker has compiled and published the statement."""
    state = (await _fold(system, statement_id)).state
    if job_id not in state.publication_jobs:
        raise ProblemError(404, "Not found", f"No job {job_id}.", type_="unknown-job")
    done = state.published is not None and state.published.job_id == job_id
    return {
        "id": str(job_id),
        "statement_id": str(statement_id),
        "status": "done" if done else "queued",
        "files": dict(state.published.files) if done and state.published else None,
    }


# -- commands -------------------------------------------------------------------------------


async def _command(
    system: System,
    request: Request,
    response: Response,
    principal: Principal,
    statement_id: UUID,
    cmd: Any,
) -> Outcome:
    return await run(system, request, response, principal, STATEMENT, statement_id, cmd)


async def _answer(
    system: System, done: Outcome, response: Response, request: Request
) -> dict[str, Any]:
    """The statement as the command ``done`` left it (or later): what this process kept of it
    after running the command, without reading the stream again. Whether a name in it was
    erased meanwhile is told by a mark read after the command (shared with the requests
    around it: api/freshness.py), not by a query of its own."""
    seen = await kept_of(request).mark()
    folded = await _fold(system, done.stream_id, at_least=done.version, seen=seen)
    etag(response, folded.version)
    return document(folded, system.settings.public_url)


@router.post("/v1/consultations/{consultation_id}/statements", status_code=201, responses=ERRORS)
async def start_drafting(
    consultation_id: UUID,
    body: StatementCreate,
    request: Request,
    response: Response,
    system: SystemDep,
    principal: Organiser,
) -> dict[str, Any]:
    """Start drafting the joint statement of a consultation (one section per thematic area)."""
    consultation = await load_doc(system, consultation_id)
    for org in body.drafting_committee:
        await load_organisation(system, org)
    statement_id = new_id(request)
    done = await _command(
        system,
        request,
        response,
        principal,
        statement_id,
        s.StartDrafting(
            statement_id,
            consultation_id,
            body.title,
            body.language,
            tuple(consultation["thematic_areas"]),
            body.preamble,
            tuple(body.drafting_committee),
        ),
    )
    response.headers["Location"] = f"/v1/statements/{statement_id}"
    return await _answer(system, done, response, request)


@router.post("/v1/statements/{statement_id}/recommendations", status_code=201, responses=ERRORS)
async def add_recommendation(
    statement_id: UUID,
    body: RecommendationCreate,
    request: Request,
    response: Response,
    system: SystemDep,
    principal: Member,
) -> dict[str, Any]:
    """Add a recommendation to the section of its thematic area."""
    rid = new_id(request)
    done = await _command(
        system,
        request,
        response,
        principal,
        statement_id,
        s.AddRecommendation(
            statement_id, rid, body.thematic_area, body.text, tuple(body.addressed_to)
        ),
    )
    return await _answer(system, done, response, request)


@router.patch("/v1/statements/{statement_id}/recommendations/{recommendation_id}", responses=ERRORS)
async def revise_recommendation(
    statement_id: UUID,
    recommendation_id: UUID,
    body: RecommendationUpdate,
    request: Request,
    response: Response,
    system: SystemDep,
    principal: Member,
) -> dict[str, Any]:
    """Revise a recommendation while drafting."""
    done = await _command(
        system,
        request,
        response,
        principal,
        statement_id,
        s.ReviseRecommendation(
            statement_id,
            recommendation_id,
            body.text,
            tuple(body.addressed_to) if body.addressed_to is not None else None,
        ),
    )
    return await _answer(system, done, response, request)


@router.delete(
    "/v1/statements/{statement_id}/recommendations/{recommendation_id}", responses=ERRORS
)
async def withdraw_recommendation(
    statement_id: UUID,
    recommendation_id: UUID,
    request: Request,
    response: Response,
    system: SystemDep,
    principal: Member,
    body: Withdrawal | None = None,
) -> dict[str, Any]:
    """Withdraw a recommendation (it stays in the history)."""
    done = await _command(
        system,
        request,
        response,
        principal,
        statement_id,
        s.WithdrawRecommendation(statement_id, recommendation_id, body.reason if body else None),
    )
    return await _answer(system, done, response, request)


@router.post("/v1/statements/{statement_id}/amendments", status_code=201, responses=ERRORS)
async def propose_amendment(
    statement_id: UUID,
    body: AmendmentCreate,
    request: Request,
    response: Response,
    system: SystemDep,
    principal: Member,
) -> dict[str, Any]:
    """An organisation proposes new text for a recommendation."""
    organisation_id = body.organisation_id or principal.organisation_id
    if organisation_id is None:
        raise ProblemError(
            422,
            "Validation failed",
            "Name the proposing organisation.",
            type_="validation-failed",
            errors=[
                {
                    "field": "organisation_id",
                    "in": "body",
                    "message": "required for this key",
                    "type": "missing",
                }
            ],
        )
    ensure_acts_for(principal, organisation_id)
    await load_organisation(system, organisation_id)
    aid = new_id(request)
    done = await _command(
        system,
        request,
        response,
        principal,
        statement_id,
        s.ProposeAmendment(
            statement_id, aid, body.recommendation_id, organisation_id, body.text, body.rationale
        ),
    )
    response.headers["Location"] = f"/v1/statements/{statement_id}/amendments/{aid}"
    return {**await _answer(system, done, response, request), "amendment_id": str(aid)}


@router.post("/v1/statements/{statement_id}/amendments/{amendment_id}/accept", responses=ERRORS)
async def accept_amendment(
    statement_id: UUID,
    amendment_id: UUID,
    request: Request,
    response: Response,
    system: SystemDep,
    principal: Member,
) -> dict[str, Any]:
    """Accept an amendment: its text becomes the recommendation's."""
    done = await _command(
        system,
        request,
        response,
        principal,
        statement_id,
        s.AcceptAmendment(statement_id, amendment_id),
    )
    return await _answer(system, done, response, request)


@router.post("/v1/statements/{statement_id}/amendments/{amendment_id}/reject", responses=ERRORS)
async def reject_amendment(
    statement_id: UUID,
    amendment_id: UUID,
    body: Reason,
    request: Request,
    response: Response,
    system: SystemDep,
    principal: Member,
) -> dict[str, Any]:
    """Reject an amendment, with the reason."""
    done = await _command(
        system,
        request,
        response,
        principal,
        statement_id,
        s.RejectAmendment(statement_id, amendment_id, body.reason),
    )
    return await _answer(system, done, response, request)


@router.post("/v1/statements/{statement_id}/finalise", responses=ERRORS)
async def finalise(
    statement_id: UUID,
    body: Finalise,
    request: Request,
    response: Response,
    system: SystemDep,
    principal: Member,
) -> dict[str, Any]:
    """Freeze the text (its content hash) and open it for endorsement until the deadline."""
    state = (await _fold(system, statement_id)).state
    consultation = await load_doc(system, state.consultation_id)  # type: ignore[arg-type]
    done = await _command(
        system,
        request,
        response,
        principal,
        statement_id,
        s.FinaliseStatement(
            statement_id, body.endorsement_deadline.astimezone(UTC), consultation["timezone"]
        ),
    )
    return await _answer(system, done, response, request)


@router.post("/v1/statements/{statement_id}/reopen", responses=ERRORS)
async def reopen(
    statement_id: UUID,
    body: Reason,
    request: Request,
    response: Response,
    system: SystemDep,
    principal: Member,
) -> dict[str, Any]:
    """Reopen for drafting: every endorsement so far is voided."""
    done = await _command(
        system,
        request,
        response,
        principal,
        statement_id,
        s.ReopenStatement(statement_id, body.reason),
    )
    return await _answer(system, done, response, request)


@router.post("/v1/statements/{statement_id}/close-endorsements", responses=ERRORS)
async def close_endorsements(
    statement_id: UUID,
    request: Request,
    response: Response,
    system: SystemDep,
    principal: Member,
) -> dict[str, Any]:
    """Close endorsements: the list of signatories is final."""
    done = await _command(
        system, request, response, principal, statement_id, s.CloseEndorsements(statement_id)
    )
    return await _answer(system, done, response, request)


@router.post("/v1/statements/{statement_id}/publish", status_code=202, responses=ERRORS)
async def publish(
    statement_id: UUID,
    request: Request,
    response: Response,
    system: SystemDep,
    principal: Member,
) -> dict[str, Any]:
    """Compile and publish in the background; answers 202 with the job to follow."""
    state = (await _fold(system, statement_id)).state
    if state.publication_jobs and state.published is None:
        job_id = state.publication_jobs[-1]  # already queued: the same job
    else:
        job_id = new_id(request)
        await _command(
            system,
            request,
            response,
            principal,
            statement_id,
            s.RequestPublication(statement_id, job_id),
        )
    location = f"/v1/jobs/{job_id}?statement_id={statement_id}"
    response.headers["Location"] = location
    return {
        "id": str(job_id),
        "statement_id": str(statement_id),
        "status": "queued",
        "href": location,
    }


def receipt(statement_id: UUID, event: Any, position: int | None) -> dict[str, Any]:
    """What an organisation keeps to prove later what it endorsed, and that the log still
    says so: the text's hash, the endorsement event's hash-chain link and its position."""
    return {
        "statement_id": str(statement_id),
        "organisation_id": event.data["organisation_id"],
        "content_hash": event.data["content_hash"],
        "event_id": str(event.id),
        "event_hash": event.hash,
        "stream_version": event.version,
        "position": position if position is not None else event.position,
        "recorded_at": event.recorded_at.isoformat(),
    }


@router.get(
    "/v1/statements/{statement_id}/endorsements/{organisation_id}/receipt", responses=ERRORS
)
async def endorsement_receipt(
    statement_id: UUID,
    organisation_id: UUID,
    system: SystemDep,
    principal: Member,
    event_hash: Annotated[
        str | None,
        Query(pattern=r"^[0-9a-f]{64}$", description="A receipt's `event_hash` to check."),
    ] = None,
) -> dict[str, Any]:
    """The receipt of the organisation's latest endorsement, checked against the log: the
    statement's hash chain is recomputed from its first event, so ``verified`` is true only
    if nothing before or at the endorsement was changed. With ``event_hash``, ``matches``
    says whether a receipt kept earlier is that same, intact endorsement."""
    ensure_acts_for(principal, organisation_id)
    records = await in_thread(system.store.read_stream, statement_id)
    mine = [
        r
        for r in records
        if r.type == "statement.endorsed" and r.data.get("organisation_id") == str(organisation_id)
    ]
    if not mine:
        raise ProblemError(
            404, "Not found", f"Organisation {organisation_id} never endorsed {statement_id}."
        )
    check = await in_thread(verify_stream, system.db, statement_id)
    broken = check.broken
    intact = broken is None or (broken.version or 0) > mine[-1].version
    try:
        state = STATEMENT.fold(EVENTS.decode_known(records))
        active = active_endorsement_of(state, organisation_id)
        status = (
            "active"
            if active is not None and active.version == mine[-1].version
            else "withdrawn or voided"
        )
        current: str | None = state.content_hash
    except Exception:  # a tampered log may not even decode: the receipt still answers
        status, current = "unknown", None
    out: dict[str, Any] = {
        **receipt(statement_id, mine[-1], mine[-1].position),
        "verified": intact,
        "status": status,
        "current_content_hash": current,
    }
    if broken is not None:
        out["broken"] = broken.describe()
    if event_hash is not None:
        out["matches"] = intact and any(r.hash == event_hash for r in mine)
    return out
