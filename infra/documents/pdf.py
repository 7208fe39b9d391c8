"""The compiled statement as PDF, laid out with fpdf2 from the same view as Markdown and HTML,
with embedded, subset Noto fonts. Imported only where a PDF is rendered (a worker compiling a
statement), never by the API."""

from __future__ import annotations

import math
import re
from contextlib import AbstractContextManager
from dataclasses import dataclass
from functools import cache
from importlib.resources import files
from pathlib import Path

from fpdf import FPDF
from fpdf.enums import TextMode, XPos, YPos
from fpdf.fonts import TTFFont

from infra.documents.render import View, organisation_line, paragraphs, signatory_line


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
