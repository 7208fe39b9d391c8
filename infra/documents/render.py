"""Render a compiled joint statement as Markdown, HTML and PDF.

Markdown and HTML come from the Jinja2 templates next to this module; the PDF is laid out with
fpdf2 from the same view (one place decides order, counts and wording). Rendering reads no clock
and draws no random numbers: the same ``StatementDocument`` gives the same bytes, with the same
library and font versions (see ``uv.lock``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from importlib.resources import files
from pathlib import Path
from zoneinfo import ZoneInfo

import pycountry
from fpdf import FPDF
from fpdf.enums import TextMode, XPos, YPos
from fpdf.fonts import TTFFont
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


# --------------------------------------------------------------------------------------------
# PDF with embedded Noto fonts.


@dataclass(frozen=True, slots=True)
class _Fonts:
    sans: Path
    thai: Path
    khmer: Path


@cache
def _fonts() -> _Fonts:
    def ttf(package: str, name: str) -> Path:
        return Path(str(files(package).joinpath("files", name)))

    return _Fonts(
        sans=ttf("fontpkg_noto_sans", "NotoSans[wdth,wght].ttf"),
        thai=ttf("fontpkg_noto_sans_thai", "NotoSansThai[wdth,wght].ttf"),
        khmer=ttf("fontpkg_noto_sans_khmer", "NotoSansKhmer[wdth,wght].ttf"),
    )


# Anything beyond Latin, Greek, Cyrillic, Armenian and common punctuation and symbols.
_COMPLEX = re.compile("[^\u0000-\u058f\u1e00-\u1fff\u2000-\u2bff]")
_GREY = (85, 85, 85)
_BLACK = (0, 0, 0)
# Synthetic bold: the outline stroked 0.04 em wide. fpdf2 2.8 writes the line width next to
# "Tr" in points without converting from the document unit, so this is in points per point of
# font size (tests/integration/test_documents.py pins the operator it produces).
_BOLD_STROKE = 0.04


class _StatementPDF(FPDF):
    def __init__(self, view: View) -> None:
        super().__init__(orientation="portrait", unit="mm", format="A4")
        self.view = view
        fonts = _fonts()
        # The packaged fonts are variable fonts whose default instance is the regular weight.
        # fpdf2 embeds that instance as it is; instancing another weight with fontTools costs
        # seconds per font and render, so headings use synthetic bold (see ``bold``).
        self.add_font("noto", "", fonts.sans)
        self.add_font("notothai", "", fonts.thai)
        self.add_font("notokhmer", "", fonts.khmer)
        sans = self.fonts["noto"]
        assert isinstance(sans, TTFFont)
        self._covered = frozenset(sans.glyph_ids)
        self._shaping = ""
        self.shape_for("")
        self.set_margins(20, 20, 20)
        self.set_auto_page_break(True, margin=20)
        self.alias_nb_pages()

        doc = view.doc
        self.set_title(doc.title)
        self.set_subject(view.consultation_line)
        self.set_creator("Concord")
        self.set_producer("Concord")
        self.set_lang(doc.language)
        self.set_creation_date(doc.compiled_at)

    def footer(self) -> None:
        self.set_y(-14)
        self.set_font("noto", "", 8)
        self.colour(_GREY)
        self.shape_for("")
        self.cell(0, 6, f"Page {self.page_no()} of {{nb}}", align="C")
        self.colour(_BLACK)

    # building blocks

    def shape_for(self, text: str, kerning: bool = True) -> None:
        """Pick the cheapest way to lay out ``text`` that still renders it right.

        - Complex scripts, or characters Noto Sans lacks: HarfBuzz with every feature and the
          Thai and Khmer fallback fonts.
        - Other text: HarfBuzz for kerning, but without glyph composition (ccmp): Noto Sans's
          ccmp splits ẹ ị ọ ụ into base + combining dot, which fpdf2 leaves without a Unicode
          mapping, so copied or extracted text would read "Thị\x06".
        - Long lists pass ``kerning=False``: no shaping and no fallback scan, each precomposed
          letter maps straight to its glyph; about ten times faster (10,000 signatories).
        """
        if _COMPLEX.search(text) or not self._covered.issuperset(map(ord, text)):
            mode = "complex"
        else:
            mode = "latin" if kerning else "plain"
        if mode == self._shaping:
            return
        if mode == "plain":
            self.set_text_shaping(False)
            self.set_fallback_fonts([])
        else:
            self.set_text_shaping(True, features=None if mode == "complex" else {"ccmp": False})
            self.set_fallback_fonts(["notothai", "notokhmer"], exact_match=False)
        self._shaping = mode

    def colour(self, rgb: tuple[int, int, int]) -> None:
        self.set_text_color(*rgb)
        self.set_draw_color(*rgb)

    def text_block(
        self, text: str, size: float, bold: bool = False, gap: float = 0, kerning: bool = True
    ) -> None:
        self.set_font("noto", "", size)
        self.shape_for(text, kerning)
        height = size * 0.5
        room = self.w - self.r_margin - self.x - 2 * self.c_margin
        width = self.get_string_width(text)
        one_line = "\n" not in text and width < room
        if not bold:
            self._write(text, height, one_line)
        else:
            # Never break a page inside the bold context (the footer would inherit it).
            lines = 1 if one_line else math.ceil(width / room) + 1
            if self.get_y() + lines * height > self.page_break_trigger:
                self.add_page()
            with self.bold(size):
                self._write(text, height, one_line)
        if gap:
            self.ln(gap)

    def _write(self, text: str, height: float, one_line: bool) -> None:
        if one_line:
            # cell() measures once; multi_cell's line breaker is far slower.
            self.cell(0, height, text, new_x=XPos.LMARGIN, new_y=YPos.NEXT)
        else:
            self.multi_cell(0, height, text, align="L", new_x=XPos.LMARGIN, new_y=YPos.NEXT)

    def bold(self, size: float) -> AbstractContextManager[None]:
        """Synthetic bold: glyphs filled and stroked about 0.04 em wide, inside q … Q.

        fpdf2 does not reset the text render mode after a stroked run (the mode is graphics
        state and outlives BT … ET), so the saved and restored graphics state keeps it local.
        """
        return self.local_context(text_mode=TextMode.FILL_STROKE, line_width=size * _BOLD_STROKE)

    def heading(self, text: str, size: float, keep_with: float = 25) -> None:
        # Keep a heading with the first lines that follow it.
        if self.get_y() + keep_with > self.page_break_trigger:
            self.add_page()
        self.ln(size * 0.3)
        self.text_block(text, size, bold=True, gap=size * 0.15)

    def grey_block(self, text: str, size: float, gap: float = 0, kerning: bool = True) -> None:
        self.colour(_GREY)
        self.text_block(text, size, gap=gap, kerning=kerning)
        self.colour(_BLACK)

    # the document

    def build(self) -> None:
        view, doc = self.view, self.view.doc
        self.add_page()
        self.text_block(doc.title, 18, bold=True, gap=2)
        self.grey_block(view.consultation_line, 10, gap=4)
        for para in paragraphs(doc.preamble):
            self.text_block(para, 11, gap=2)

        self.heading("Recommendations", 15)
        for index, section in enumerate(doc.sections, start=1):
            self.heading(f"{index}. {section.thematic_area}", 12)
            for rec in section.recommendations:
                if self.get_y() + 12 > self.page_break_trigger:
                    self.add_page()
                self.set_font("noto", "", 10.5)
                self.shape_for(rec.number)
                with self.bold(10.5):
                    self.cell(12, 5.25, rec.number)
                left = self.l_margin
                self.set_left_margin(left + 12)
                for i, para in enumerate(paragraphs(rec.text)):
                    if i:
                        self.ln(1.5)
                    self.shape_for(para)
                    self.multi_cell(0, 5.25, para, align="L", new_x=XPos.LMARGIN, new_y=YPos.NEXT)
                if rec.addressed_to:
                    self.grey_block("Addressed to: " + "; ".join(rec.addressed_to), 9)
                self.set_left_margin(left)
                self.set_x(left)
                self.ln(2.5)

        self.heading("Signatories", 15)
        self.text_block(view.signed_by + ".", 11, gap=1)
        for group in view.groups:
            self.heading(group.heading, 12, keep_with=30)
            for s in group.signatories:
                if self.get_y() + 10 > self.page_break_trigger:
                    self.add_page()
                self.text_block(organisation_line(s), 10, bold=True, kerning=False)
                self.grey_block(signatory_line(s), 9, gap=1.5, kerning=False)

        self.heading("About this document", 12)
        record = (
            ("Content hash of the finalised text", doc.content_hash),
            ("Finalised", view.finalised),
            ("Endorsement deadline", view.deadline),
            ("Compiled", view.compiled),
            ("Statement", str(doc.statement_id)),
            ("Online", view.links["html"]),
        )
        for label, value in record:
            self.grey_block(label, 8.5)
            self.text_block(value, 9.5, gap=1.5)


def render_pdf(view: View) -> bytes:
    """The statement as PDF with embedded, subset Noto fonts and page numbers."""
    pdf = _StatementPDF(view)
    pdf.build()
    return bytes(pdf.output())


def render(doc: StatementDocument) -> dict[str, bytes]:
    """Render ``doc`` as {"md": …, "html": …, "pdf": …}; the same doc gives the same bytes."""
    view = build_view(doc)
    return {"md": render_markdown(view), "html": render_html(view), "pdf": render_pdf(view)}
