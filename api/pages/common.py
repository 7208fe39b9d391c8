"""What every public page shares: templates, security headers, the statement as a page shows
it (folded from its own stream), and the rate limit of the sign-on routes."""

from __future__ import annotations

import hashlib
import threading
import weakref
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any
from uuid import UUID

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, Response
from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape
from markupsafe import Markup
from sqlalchemy import select
from starlette.staticfiles import StaticFiles

from api.deps import app_member
from api.threads import in_thread
from infra.bootstrap import System
from infra.documents.model import ERASED
from infra.documents.render import country_name, format_dates, format_moment, signed_by
from infra.eventstore.kept import KeptRecords
from infra.eventstore.store import SqlEventStore
from infra.projections.consultations import consultations
from infra.projections.organisations import organisations
from infra.ratelimit import Limiter, limiter_for, parse_rate
from services.messages import Personal
from services.ports import RecordedEvent
from services.statements.model import (
    STATEMENT,
    Statement,
    endorsement_open_at,
    sections_in_order,
    signatories_by_country,
    status,
)

HERE = Path(__file__).parent
STATIC = HERE / "static"

#: Sent with every page. No inline script or style anywhere: both come from /static.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; "
    "img-src 'self'; connect-src 'self'; form-action 'self'; base-uri 'none'; "
    "frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cross-Origin-Opener-Policy": "same-origin",
}
#: Pages behind a link's token are never stored anywhere.
PRIVATE = {"Cache-Control": "no-store", "X-Robots-Tag": "noindex, nofollow"}
PUBLIC = {"Cache-Control": "no-cache"}

HTML = "text/html"


def _version() -> str:
    digest = hashlib.sha256()
    for path in sorted(STATIC.iterdir()):
        digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


#: Changes whenever a static file does: their URLs carry it, so they may be cached long.
STATIC_VERSION = _version()

_ENV = Environment(
    loader=FileSystemLoader(HERE / "templates"),
    autoescape=select_autoescape(["html"]),
    undefined=StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)


class _Static(StaticFiles):
    """Static files with the pages' headers, cached for a day (their URLs are versioned)."""

    def file_response(self, *args: Any, **kwargs: Any) -> Response:
        response = super().file_response(*args, **kwargs)
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Cache-Control"] = "public, max-age=86400"
        return response


def mount_static(app: FastAPI) -> None:
    app.mount("/static", _Static(directory=STATIC), name="static")


def page(
    template: str,
    status_code: int = 200,
    *,
    language: str = "en",
    private: bool = True,
    headers: dict[str, str] | None = None,
    **context: Any,
) -> HTMLResponse:
    """A rendered page with the security headers. ``language`` is the page's (the
    statement's); the interface is English and marked so when the statement is not."""
    english = language.split("-")[0].lower() == "en"
    body = _ENV.get_template(template).render(
        lang=language,
        # The interface is English: marked so inside a page in the statement's language.
        en=Markup("") if english else Markup(' lang="en"'),
        static_version=STATIC_VERSION,
        **context,
    )
    return HTMLResponse(
        body,
        status_code=status_code,
        headers={**SECURITY_HEADERS, **(PRIVATE if private else PUBLIC), **(headers or {})},
    )


def message(
    status_code: int,
    title: str,
    *paragraphs: str,
    links: tuple[tuple[str, str], ...] = (),
    headers: dict[str, str] | None = None,
) -> HTMLResponse:
    """A short page saying what happened and what to do (unknown, expired, revoked links …)."""
    return page(
        "message.html",
        status_code,
        title=title,
        paragraphs=paragraphs,
        links=links,
        headers=headers,
    )


def parse_uuid(value: str) -> UUID | None:
    try:
        return UUID(value)
    except ValueError:
        return None


# -- the statement as pages show it ------------------------------------------------------------


@dataclass(frozen=True)
class Loaded:
    """A statement folded from its stream, with what its pages name besides."""

    state: Statement
    records: list[RecordedEvent]
    consultation: dict[str, Any] | None
    organiser: str | None

    @property
    def position(self) -> int:
        """The statement's last position (where a live list starts following)."""
        numbered = [r.position for r in self.records if r.position is not None]
        return max(numbered, default=0)

    @property
    def visible(self) -> bool:
        """Finalised at least once and not back in drafting: the text is fixed and public."""
        return self.state.exists and self.state.finalised


async def load(system: System, statement_id: UUID) -> Loaded:
    def fold() -> Loaded:
        # The state as the lanes keep it (folded once, carried forward, nothing kept from
        # before an erasure), with the records up to the same version.
        state = system.lanes.load(STATEMENT, statement_id).state
        records = _kept_records(system).read(statement_id, until_version=state.version)
        detail: dict[str, Any] | None = None
        organiser = None
        if state.consultation_id is not None:
            with system.db.read() as conn:
                found = conn.execute(
                    select(consultations.c.detail).where(
                        consultations.c.consultation_id == state.consultation_id
                    )
                ).scalar_one_or_none()
                detail = dict(found) if found is not None else None
                if detail is not None:
                    organiser = conn.execute(
                        select(organisations.c.name).where(
                            organisations.c.organisation_id == UUID(detail["organiser_id"])
                        )
                    ).scalar_one_or_none()
        return Loaded(state, records, detail, organiser)

    return await in_thread(fold)


_KEPT: weakref.WeakKeyDictionary[SqlEventStore, KeptRecords] = weakref.WeakKeyDictionary()
_KEPT_LOCK = threading.Lock()


def statement_records(system: System, statement_id: UUID) -> list[RecordedEvent]:
    """Every event of the statement, from the records the pages keep (blocking: a thread's)."""
    return _kept_records(system).read(statement_id)


def _kept_records(system: System) -> KeptRecords:
    """The :class:`KeptRecords` of the system's event store in this process, within a quarter
    of the process's fold budget (``CONCORD_FOLD_CACHE_EVENTS``)."""
    with _KEPT_LOCK:
        kept = _KEPT.get(system.store)
        if kept is None:
            budget = system.settings.fold_cache_events // 4
            kept = _KEPT[system.store] = KeptRecords(system.store, budget)
        return kept


def _plain(value: Personal[str] | None) -> str | None:
    if value is None:
        return None
    if getattr(value, "erased", False) or value.value is None:
        return ERASED
    return value.value


def signatories(state: Statement) -> dict[str, Any]:
    """Who signed, grouped by country (countries by English name, organisations by name):
    only what the compiled statement publishes — organisation, signatory's name and title."""
    groups: list[dict[str, Any]] = []
    total = 0
    for code, endorsements in signatories_by_country(state):
        people = []
        for e in endorsements:
            name = _plain(e.signatory_name)
            title = _plain(e.signatory_title)
            people.append(
                {
                    "organisation": e.organisation_name,
                    "name": name,
                    "title": None if name == ERASED else title,
                }
            )
        total += len(people)
        groups.append(
            {"code": code, "name": country_name(code), "count": len(people), "signatories": people}
        )
    groups.sort(key=lambda g: (g["name"].casefold(), g["code"]))
    return {
        "count": total,
        "countries": len(groups),
        "summary": signed_by(total, len(groups)),
        "groups": groups,
    }


def statement_status(state: Statement, now: datetime) -> dict[str, str]:
    """A short status line: open until, closed, published (or reopened)."""
    current = status(state)
    zone = state.timezone or "UTC"
    if current == "finalised" and endorsement_open_at(state, now):
        assert state.endorsement_deadline is not None
        deadline = format_moment(state.endorsement_deadline, zone)
        return {"key": "open", "text": f"Open for endorsement until {deadline}"}
    if current == "finalised":
        return {"key": "closed", "text": "The endorsement deadline has passed"}
    if current == "closed":
        return {"key": "closed", "text": "Endorsements are closed"}
    if current == "published":
        return {"key": "published", "text": "Published"}
    return {"key": "drafting", "text": "Reopened for drafting"}


def text_view(loaded: Loaded) -> dict[str, Any]:
    """The finalised text by thematic area, numbered as the compiled document numbers it."""
    state = loaded.state
    sections = []
    for index, section in enumerate(sections_in_order(state, include_empty=False), start=1):
        sections.append(
            {
                "number": index,
                "area": section.thematic_area,
                "recommendations": [
                    {
                        "number": f"{index}.{n}",
                        "paragraphs": _paragraphs(r.text),
                        "addressed_to": list(r.addressed_to),
                    }
                    for n, r in enumerate(section.recommendations, start=1)
                ],
            }
        )
    detail = loaded.consultation
    consultation = None
    if detail is not None:
        where = ", ".join(
            p for p in (detail.get("city"), country_name(detail["host_country"])) if p
        )
        consultation = {
            "title": detail["title"],
            "where": where,
            "dates": format_dates(
                datetime.fromisoformat(detail["starts_at"]),
                datetime.fromisoformat(detail["ends_at"]),
                detail["timezone"],
            ),
            "organiser": loaded.organiser,
        }
    finalised = next(
        (r.recorded_at for r in reversed(loaded.records) if r.type == "statement.finalised"), None
    )
    return {
        "id": str(state.statement_id),
        "title": state.title,
        "language": state.language,
        "preamble": _paragraphs(state.preamble or ""),
        "sections": sections,
        "content_hash": state.content_hash,
        "finalised": format_moment(finalised, state.timezone) if finalised else None,
        "consultation": consultation,
        "documents": [
            {"kind": kind, "label": LABELS.get(kind, kind.upper()), "href": href(state, kind)}
            for kind in ("html", "pdf", "md")
            if state.published is not None and kind in state.published.files
        ],
    }


LABELS = {"html": "Web page (HTML)", "pdf": "PDF", "md": "Markdown"}


def href(state: Statement, kind: str) -> str:
    return f"/v1/statements/{state.statement_id}/document.{kind}"


def _paragraphs(text: str) -> list[str]:
    return [p.strip() for p in text.replace("\r\n", "\n").split("\n\n") if p.strip()]


# -- rate limits of the sign-on routes ---------------------------------------------------------


def _limiter(request: Request, system: System) -> Limiter:
    return app_member(request.app, "signon_limiter", lambda s: limiter_for(s.settings))


def client_address(request: Request) -> str:
    return request.client.host if request.client else "unknown"


async def rate_limited(request: Request, system: System, token: str) -> HTMLResponse | None:
    """THE rate limit of the sign-on routes: per client address and per link (a hash of its
    token, never the token). A refusal is a 429 page with ``Retry-After``."""
    settings = system.settings
    if not settings.rate_limit_enabled:
        return None
    limiter = _limiter(request, system)
    link = hashlib.sha256(token.encode()).hexdigest()[:32]
    checks = (
        (
            "signon-client",
            f"signon:client:{client_address(request)}",
            settings.signon_rate_per_client,
        ),
        ("signon-link", f"signon:link:{link}", settings.signon_rate_per_link),
    )
    for policy, bucket, text in checks:
        rate = parse_rate(text)
        if rate is None:
            continue
        decision = await in_thread(limiter.hit, bucket, rate)
        if not decision.allowed:
            return message(
                429,
                "Too many attempts",
                "This link (or your network) has been used too often in a short time. "
                f"Please wait {decision.retry_after_s} seconds, then try again.",
                headers=decision.headers(policy),
            )
    return None
