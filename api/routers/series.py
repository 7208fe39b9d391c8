"""Series of consultations, e.g. national consultations across all member states."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from fastapi import Request, Response
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select

from api.commands import etag, new_id, run
from api.deps import IfMatch, MinPosition, Organiser, SystemDep
from api.fields import Country, Text
from api.problems import ProblemError
from api.routing import Router
from api.schemas import Problem
from api.threads import in_thread
from infra.bootstrap import System
from infra.projections.consultations import consultations
from infra.projections.series import series
from services.series.commands import ExtendSeriesPlan, LaunchSeries
from services.series.model import SERIES

router = Router(prefix="/v1/series", tags=["series"])
ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": Problem},
    403: {"model": Problem},
    404: {"model": Problem},
    409: {"model": Problem},
    412: {"model": Problem},
    422: {"model": Problem},
}


class SeriesCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    title: Text(500)  # type: ignore[valid-type]
    planned_countries: list[Country] = Field(min_length=1, max_length=60)
    description: Text(5000) | None = None  # type: ignore[valid-type]


class PlanExtension(BaseModel):
    model_config = ConfigDict(extra="forbid")
    countries: list[Country] = Field(min_length=1, max_length=60)


@router.post("", status_code=201, responses=ERRORS)
async def launch_series(
    body: SeriesCreate,
    request: Request,
    response: Response,
    system: SystemDep,
    principal: Organiser,
) -> dict[str, Any]:
    """Launch a series with the countries it plans to cover."""
    series_id = new_id(request)
    await run(
        system,
        request,
        response,
        principal,
        SERIES,
        series_id,
        LaunchSeries(
            series_id, body.title, tuple(dict.fromkeys(body.planned_countries)), body.description
        ),
    )
    response.headers["Location"] = f"/v1/series/{series_id}"
    return await _progress(system, series_id)


@router.post("/{series_id}/countries", responses=ERRORS)
async def extend_plan(
    series_id: UUID,
    body: PlanExtension,
    request: Request,
    response: Response,
    system: SystemDep,
    principal: Organiser,
    version: IfMatch,
) -> dict[str, Any]:
    """Add countries to the plan."""
    await run(
        system,
        request,
        response,
        principal,
        SERIES,
        series_id,
        ExtendSeriesPlan(series_id, tuple(dict.fromkeys(body.countries))),
        if_match=version,
    )
    return await _progress(system, series_id)


@router.get("/{series_id}", dependencies=[MinPosition], responses=ERRORS)
async def get_series(series_id: UUID, response: Response, system: SystemDep) -> dict[str, Any]:
    """The series with its progress: countries done (a consultation held), scheduled, remaining."""
    doc = await _progress(system, series_id)
    etag(response, doc["version"])
    return doc


async def _progress(system: System, series_id: UUID) -> dict[str, Any]:
    def load() -> tuple[Any, list[Any]]:
        with system.db.read() as conn:
            row = conn.execute(select(series).where(series.c.series_id == series_id)).first()
            if row is None:
                return None, []
            members = [UUID(k) for k in (row.consultations or {})]
            held = (
                conn.execute(
                    select(
                        consultations.c.consultation_id,
                        consultations.c.host_country,
                        consultations.c.completed,
                        consultations.c.cancelled,
                        consultations.c.title,
                        consultations.c.starts_at,
                    ).where(consultations.c.consultation_id.in_(members))
                ).all()
                if members
                else []
            )
            return row, held

    row, members = await in_thread(load)
    if row is None:
        raise ProblemError(404, "Not found", f"No series {series_id}.", type_="unknown-series")
    planned = list(row.planned_countries)
    done = sorted({m.host_country for m in members if m.completed and not m.cancelled})
    scheduled = sorted(
        {m.host_country for m in members if not m.completed and not m.cancelled} - set(done)
    )
    return {
        "id": str(series_id),
        "title": row.title,
        "description": row.description,
        "version": row.version,
        "planned_countries": planned,
        "progress": {
            "done": done,
            "scheduled": scheduled,
            "remaining": [c for c in planned if c not in done and c not in scheduled],
            "completed": len(done),
            "planned": len(planned),
        },
        "consultations": [
            {
                "id": str(m.consultation_id),
                "title": m.title,
                "country": m.host_country,
                "starts_at": m.starts_at.isoformat(),
                "status": "cancelled" if m.cancelled else "completed" if m.completed else "planned",
            }
            for m in sorted(members, key=lambda m: m.starts_at)
        ],
    }
