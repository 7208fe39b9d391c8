"""A consultation's reminders: their offsets (configurable) and their schedule."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any
from uuid import UUID
from zoneinfo import ZoneInfo

from fastapi import Request, Response
from pydantic import BaseModel, ConfigDict, Field

from api.commands import run
from api.deps import IfMatch, Organiser, SystemDep
from api.routers.consultations import ERRORS, load_doc
from api.routing import Router
from api.threads import in_thread
from infra.bootstrap import System
from infra.reminders import schedule
from services.consultations.commands import ConfigureReminders
from services.consultations.model import CONSULTATION
from services.reminders.rules import ANCHORS

router = Router(prefix="/v1/consultations", tags=["reminders"])

Offsets = list[timedelta] | None
_OFFSETS = Field(
    default=None,
    max_length=5,
    description="ISO 8601 durations before the deadline, e.g. `P7D`, `PT48H`; "
    "`[]` turns these reminders off; omitted keeps the current ones.",
)


class ReminderOffsets(BaseModel):
    """How long before each deadline reminders go out, in the consultation's time zone."""

    model_config = ConfigDict(extra="forbid")

    registration_closes: Offsets = _OFFSETS
    consultation_starts: Offsets = _OFFSETS
    endorsement_deadline: Offsets = _OFFSETS


def _duration(seconds: int) -> str:
    days, rest = divmod(seconds, 86_400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    clock = "".join(f"{n}{u}" for n, u in ((hours, "H"), (minutes, "M"), (secs, "S")) if n)
    return (
        "P" + (f"{days}D" if days else "") + (f"T{clock}" if clock else "") if seconds else "PT0S"
    )


def _local(value: datetime | None, zone: ZoneInfo) -> str | None:
    return value.astimezone(zone).isoformat() if value is not None else None


async def _view(system: System, consultation_id: UUID) -> dict[str, Any]:
    doc = await load_doc(system, consultation_id)
    state, version, _ = await in_thread(system.bus.load, CONSULTATION, consultation_id)
    rows = await in_thread(schedule, system, consultation_id)
    zone = ZoneInfo(doc["timezone"])
    offsets = {
        name: [
            _duration(s)
            for s in state.reminder_offsets.get(
                name, [int(o.total_seconds()) for o in anchor.default_offsets]
            )
        ]
        for name, anchor in ANCHORS.items()
    }
    return {
        "consultation_id": str(consultation_id),
        "timezone": doc["timezone"],
        "version": version,
        "offsets": offsets,
        "customised": sorted(state.reminder_offsets),
        "reminders": [
            {
                **row,
                "statement_id": str(row["statement_id"]) if row["statement_id"] else None,
                "offset": _duration(row["offset_s"]) if row["offset_s"] is not None else None,
                "deadline": _local(row["deadline"], zone),
                "due_at": _local(row["due_at"], zone),
                "fanned_out_at": _local(row["fanned_out_at"], zone),
            }
            for row in rows
        ],
    }


@router.get("/{consultation_id}/reminders", responses=ERRORS)
async def get_reminders(
    consultation_id: UUID, system: SystemDep, _principal: Organiser
) -> dict[str, Any]:
    """The reminder offsets and every reminder and notice with its due time (in the
    consultation's zone) and what became of its messages (sent, pending, skipped…)."""
    return await _view(system, consultation_id)


@router.put("/{consultation_id}/reminders", responses=ERRORS)
async def configure_reminders(
    consultation_id: UUID,
    body: ReminderOffsets,
    request: Request,
    response: Response,
    system: SystemDep,
    principal: Organiser,
    version: IfMatch,
) -> dict[str, Any]:
    """Set how long before each deadline reminders go out; unsent reminders move at once."""
    chosen = {
        name: tuple(value)
        for name, value in body.model_dump(exclude_unset=True).items()
        if value is not None
    }
    await run(
        system,
        request,
        response,
        principal,
        CONSULTATION,
        consultation_id,
        ConfigureReminders(consultation_id, chosen),
        if_match=version,
    )
    return await _view(system, consultation_id)
