"""Render a compiled joint statement as Markdown, HTML and PDF.

Markdown and HTML come from the Jinja2 templates next to this module; the PDF is laid out with
fpdf2 from the same view (one place decides order, counts and wording). Rendering reads no clock
and draws no random numbers: the same ``StatementDocument`` gives the same bytes, with the same
library and font versions (see ``uv.lock``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from pathlib import Path
from zoneinfo import ZoneInfo

import pycountry
from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape

from infra.documents.model import ERASED, Signatory, StatementDocument

FORMATS = ("md", "html", "pdf")
_EN_DASH = "\u2013"

_MONTHS = (
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
)


# --------------------------------------------------------------------------------------------
# The view: what every format shows, in which order and with which words.


@dataclass(frozen=True, slots=True)
class CountryGroup:
    """The signatories from one country, in a stable order."""

    code: str
    name: str
    signatories: tuple[Signatory, ...]

    @property
    def heading(self) -> str:
        return f"{self.name} ({len(self.signatories)})"


@dataclass(frozen=True, slots=True)
class View:
    """A ``StatementDocument`` prepared for the templates: sorted, counted and formatted."""

    doc: StatementDocument
    is_english: bool
    consultation_line: str
    groups: tuple[CountryGroup, ...]
    signed_by: str
    finalised: str
    deadline: str
    compiled: str
    links: dict[str, str]


def country_name(code: str) -> str:
    """The English short name of an ISO 3166-1 alpha-2 code (the code itself if unknown)."""
    country = pycountry.countries.get(alpha_2=code.upper())
    if country is None:
        return code.upper()
    return str(getattr(country, "common_name", None) or country.name)


def signatory_sort_key(s: Signatory) -> tuple[str, str, str, str]:
    """Organisations within a country: by name (case-insensitive), then acronym."""
    return (
        s.organisation_name.casefold(),
        (s.acronym or "").casefold(),
        s.organisation_name,
        s.signatory_name,
    )


def group_by_country(signatories: Iterable[Signatory]) -> tuple[CountryGroup, ...]:
    """Signatories grouped by country, countries in alphabetical order of their English name."""
    by_code: dict[str, list[Signatory]] = {}
    for s in signatories:
        by_code.setdefault(s.country.upper(), []).append(s)
    groups = [
        CountryGroup(code, country_name(code), tuple(sorted(members, key=signatory_sort_key)))
        for code, members in by_code.items()
    ]
    groups.sort(key=lambda g: (g.name.casefold(), g.code))
    return tuple(groups)


def signed_by(organisations: int, countries: int) -> str:
    """'Signed by 16 organisations from 8 countries', with singular forms where they belong."""
    if organisations == 0:
        return "Not signed by any organisation"
    orgs = "organisation" if organisations == 1 else "organisations"
    ctry = "country" if countries == 1 else "countries"
    return f"Signed by {organisations} {orgs} from {countries} {ctry}"


def _utc_offset(moment: datetime) -> str:
    offset = moment.utcoffset()
    assert offset is not None  # the model only holds aware datetimes
    minutes = int(offset.total_seconds()) // 60
    sign = "+" if minutes >= 0 else "-"
    hours, mins = divmod(abs(minutes), 60)
    return f"UTC{sign}{hours:02d}:{mins:02d}"


def _date(moment: datetime) -> str:
    return f"{moment.day} {_MONTHS[moment.month - 1]} {moment.year}"


def format_moment(moment: datetime, zone: str) -> str:
    """'21 February 2018, 17:00 (Asia/Jakarta, UTC+07:00)' in the consultation's time zone."""
    local = moment.astimezone(ZoneInfo(zone))
    return f"{_date(local)}, {local:%H:%M} ({zone}, {_utc_offset(local)})"


def format_dates(starts_at: datetime, ends_at: datetime, zone: str) -> str:
    """'20-21 February 2018' with an en dash (or one day, or a longer range), local dates."""
    tz = ZoneInfo(zone)
    a, b = starts_at.astimezone(tz), ends_at.astimezone(tz)
    if a.date() >= b.date():
        return _date(a)
    if (a.year, a.month) == (b.year, b.month):
        return f"{a.day}{_EN_DASH}{_date(b)}"
    if a.year == b.year:
        return f"{a.day} {_MONTHS[a.month - 1]} {_EN_DASH} {_date(b)}"
    return f"{_date(a)} {_EN_DASH} {_date(b)}"


def signatory_line(s: Signatory) -> str:
    """'Name, Title' of the person who signed (an erased name stays '[erased]', without title)."""
    if s.signatory_name == ERASED or not s.signatory_title:
        return s.signatory_name
    return f"{s.signatory_name}, {s.signatory_title}"


def organisation_line(s: Signatory) -> str:
    """'Organisation (ACR)', or just the name when there is no acronym."""
    return f"{s.organisation_name} ({s.acronym})" if s.acronym else s.organisation_name


def build_view(doc: StatementDocument) -> View:
    """Sort, count and format once for all three formats."""
    c = doc.consultation
    place = ", ".join(p for p in (c.city, country_name(c.host_country)) if p)
    dates = format_dates(c.starts_at, c.ends_at, c.timezone)
    groups = group_by_country(doc.signatories)
    base = doc.public_url.rstrip("/")
    links = {fmt: f"{base}/v1/statements/{doc.statement_id}/document.{fmt}" for fmt in FORMATS}
    return View(
        doc=doc,
        is_english=doc.language.casefold().split("-")[0] == "en",
        consultation_line=f"{c.title}, {place}, {dates}",
        groups=groups,
        signed_by=signed_by(len(doc.signatories), len(groups)),
        finalised=format_moment(doc.finalised_at, c.timezone),
        deadline=format_moment(doc.endorsement_deadline, c.timezone),
        compiled=format_moment(doc.compiled_at, c.timezone),
        links=links,
    )


def paragraphs(text: str | None) -> list[str]:
    """Split text on blank lines; single newlines inside a paragraph become spaces."""
    if not text:
        return []
    parts = re.split(r"\n\s*\n", text.strip())
    return [" ".join(line.strip() for line in p.splitlines()) for p in parts if p.strip()]


# --------------------------------------------------------------------------------------------
# Markdown and HTML from templates.

_MD_SPECIAL = re.compile(r"([\\`*_\[\]<>|])")
_MD_ENTITY = re.compile(r"&(?=#?\w+;)")
_MD_LINE_START = re.compile(r"^(\s*)([#>+=-]|\d+[.)])", re.MULTILINE)


def md_escape(text: str) -> str:
    """Escape user text inside a line so Markdown renders it literally (never as raw HTML)."""
    text = _MD_SPECIAL.sub(r"\\\1", text)
    return _MD_ENTITY.sub(r"\\&", text)


def md_block(text: str) -> str:
    """Escape user text that starts a line: also no heading, quote or list marker there."""
    return _MD_LINE_START.sub(r"\1\\\2", md_escape(text))


TEMPLATES = Path(__file__).with_name("templates")


@cache
def _environment() -> Environment:
    env = Environment(
        loader=FileSystemLoader(TEMPLATES),
        autoescape=select_autoescape(enabled_extensions=("html",), default=False),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters["md"] = md_escape
    env.filters["md_block"] = md_block
    env.filters["paragraphs"] = paragraphs
    env.globals.update(signatory_line=signatory_line, organisation_line=organisation_line)
    return env


def render_markdown(view: View) -> bytes:
    """The statement as Markdown (UTF-8)."""
    return _environment().get_template("statement.md").render(v=view).encode("utf-8")


def render_html(view: View) -> bytes:
    """The statement as one standalone, accessible HTML page (UTF-8, no external resources)."""
    return _environment().get_template("statement.html").render(v=view).encode("utf-8")


def render_pdf(view: View) -> bytes:
    """The statement as PDF (:mod:`infra.documents.pdf`), imported on first use: fpdf2 brings
    Pillow, fontTools and NumPy, tens of megabytes that an API process never needs."""
    from infra.documents.pdf import render_pdf as pdf

    return pdf(view)


def render(doc: StatementDocument) -> dict[str, bytes]:
    """Render ``doc`` as {"md": …, "html": …, "pdf": …}; the same doc gives the same bytes."""
    view = build_view(doc)
    return {"md": render_markdown(view), "html": render_html(view), "pdf": render_pdf(view)}
