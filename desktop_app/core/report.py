"""The PDF report of one case: what the model saw, what it answered, and how far to trust it.

reportlab (platypus) only, no Qt: the window, the CLI and the batch all print through
:func:`write_report`. A4 portrait, one or two pages, Helvetica at 9 pt or more. Reading order
follows the clinical frame of the design notes: the intended use first, in a box; the case; the
image next to its Grad-CAM; the answer *with* its warnings (flags are as prominent as the top class)
and the full calibrated probability table; the malignancy risk against the card's threshold, stated
as a fact, never as advice; then the model's identity (SHA-256, version), its data, licence and
limitations; the clinician's notes and a signature line. Every page carries a footer with the page
number, the LesionLens version and the short disclaimer.

Privacy: the PDF's document properties hold the title (with the case ID, the only case datum
allowed there), author "LesionLens" and a subject line; never the image name, metadata, notes or
the clinician's name. Nothing is logged.

Text: every string that does not come from this module (notes, names, the card's own text) is
escaped for reportlab's mini-markup, and any character Helvetica (WinAnsi, i.e. Latin-1 and a few
more) cannot show is drawn with the first system TrueType font that has it (DejaVu Sans, Arial,
Arial Unicode, MS Gothic, ...). Where no font has it, reportlab draws a placeholder box: the report
is still written.

Writing is atomic (:mod:`desktop_app.core.atomic`): the PDF is built in memory, then written to a
temporary sibling of the target that replaces it only when complete. Any failure raises
:class:`ReportError` with a message for the clinician and leaves nothing behind; an older report at
the same path stays untouched.
"""

from __future__ import annotations

import errno
import io
import os
import re
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol
from xml.sax.saxutils import escape

import cv2
import numpy as np
from reportlab.graphics.shapes import Drawing, Rect
from reportlab.lib import colors
from reportlab.lib.enums import TA_RIGHT
from reportlab.lib.pagesizes import A4
from reportlab.lib.styles import ParagraphStyle
from reportlab.lib.units import mm
from reportlab.pdfbase import pdfmetrics
from reportlab.pdfbase.ttfonts import TTFont
from reportlab.pdfgen import canvas as rl_canvas
from reportlab.platypus import (
    Image,
    KeepTogether,
    LayoutError,
    ListFlowable,
    ListItem,
    Paragraph,
    SimpleDocTemplate,
    Spacer,
    Table,
    TableStyle,
)

from desktop_app import INTENDED_USE, __version__
from desktop_app.core.atomic import atomic_write_bytes
from desktop_app.core.card import ModelCard
from desktop_app.core.errors import LesionLensError
from desktop_app.core.heatmap import colorbar, heatmap_on_image, overlay
from desktop_app.core.metadata import UNKNOWN, PatientMetadata

__all__ = [
    "DISCLAIMER_SHORT",
    "ModelInfoLike",
    "ReportCase",
    "ReportError",
    "build_report_pdf",
    "write_report",
]

TITLE = "LesionLens \u2014 dermoscopy decision-support report"
DISCLAIMER_SHORT = (
    "Decision support only \u2014 not a diagnosis, not for self-screening, "
    "not validated for clinical use."
)
_SUBJECT = "Dermoscopy decision-support report (not a diagnosis)"
_EMBED_MAX_SIDE = 800  # ~250 dpi at the printed width: sharp on paper, a few hundred kB per image


class ReportError(LesionLensError):
    """The report could not be made or saved; the message says why, for the clinician."""


class ModelInfoLike(Protocol):
    """What the report needs to know about the model (an :class:`~desktop_app.core.engine.Engine`
    fits): its card, the SHA-256 of the file, the provider it ran on and its path (only the file
    name is printed)."""

    @property
    def card(self) -> ModelCard: ...

    @property
    def sha256(self) -> str: ...

    @property
    def provider(self) -> str: ...

    @property
    def path(self) -> str | os.PathLike[str] | None: ...


@dataclass(frozen=True)
class ReportCase:
    """One case as the clinician saw it. ``image_rgb``: uint8 RGB, the image shown on screen (a
    reduced display copy is fine; the heatmap is mapped onto whatever size it has).
    ``image_name``: the file name only (a folder path is cut to its last part, so no folder name
    reaches the paper). ``heatmap_code``: the class whose Grad-CAM is printed (default: the top
    class). ``created``: default now, local time with its UTC offset."""

    image_rgb: np.ndarray
    image_name: str
    metadata: PatientMetadata
    prediction: Any  # engine.Prediction (Any: tests and the batch store may pass look-alikes)
    heatmap_code: str | None = None
    case_id: str = ""
    clinician_notes: str = ""
    clinician_name: str = ""
    created: datetime | None = None

    def __post_init__(self) -> None:
        rgb = self.image_rgb
        if not isinstance(rgb, np.ndarray) or rgb.dtype != np.uint8:
            raise ValueError("ReportCase.image_rgb must be a uint8 numpy array")
        if rgb.ndim != 3 or rgb.shape[2] != 3 or min(rgb.shape[:2]) < 1:
            raise ValueError(f"ReportCase.image_rgb must be H x W x 3, got shape {rgb.shape}")
        if not isinstance(self.metadata, PatientMetadata):
            raise ValueError("ReportCase.metadata must be a PatientMetadata")
        name = re.split(r"[\\/]", str(self.image_name or ""))[-1]
        object.__setattr__(self, "image_name", name)


# -------------------------------------------------------------------------------------------------
# Text: escaping and font fallback
# -------------------------------------------------------------------------------------------------

_BASE = "Helvetica"
_BOLD = "Helvetica-Bold"
_MONO = "Courier"
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def _font_candidates() -> list[Path]:
    """TrueType fonts likely to exist on Linux, Windows and macOS, broadest Latin first, then
    fonts with CJK. Only TrueType outlines: reportlab cannot embed CFF (.otf) fonts."""
    windows = Path(os.environ.get("WINDIR", "C:/Windows")) / "Fonts"
    names = [
        Path("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"),
        Path("/usr/share/fonts/TTF/DejaVuSans.ttf"),
        Path("/usr/share/fonts/dejavu/DejaVuSans.ttf"),
        windows / "arial.ttf",
        windows / "segoeui.ttf",
        Path("/System/Library/Fonts/Supplemental/Arial Unicode.ttf"),
        Path("/Library/Fonts/Arial Unicode.ttf"),
        windows / "ARIALUNI.TTF",
        windows / "msgothic.ttc",
        windows / "msyh.ttc",
        windows / "malgun.ttf",
        Path("/usr/share/fonts/truetype/droid/DroidSansFallbackFull.ttf"),
        Path("/usr/share/fonts/truetype/wqy/wqy-microhei.ttc"),
        Path("/usr/share/fonts/truetype/wqy/wqy-zenhei.ttc"),
    ]
    return names


class _Fallback:
    """Lazily registered fallback fonts; registration happens only when a character needs it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending: list[Path] | None = None
        self._fonts: list[tuple[str, set[int] | dict[int, int]]] = []
        self._memo: dict[str, str | None] = {}

    def font_for(self, ch: str) -> str | None:
        with self._lock:
            if ch in self._memo:
                return self._memo[ch]
            code = ord(ch)
            found = next((name for name, cmap in self._fonts if code in cmap), None)
            if self._pending is None:
                self._pending = [p for p in _font_candidates() if p.is_file()]
            while found is None and self._pending:
                path = self._pending.pop(0)
                name = f"LLFallback{len(self._fonts)}"
                try:
                    font = TTFont(name, str(path), subfontIndex=0)
                    pdfmetrics.registerFont(font)
                    pdfmetrics.registerFontFamily(
                        name, normal=name, bold=name, italic=name, boldItalic=name
                    )
                except Exception:  # not TrueType, damaged, unreadable: try the next one
                    continue
                self._fonts.append((name, font.face.charToGlyph))
                if code in font.face.charToGlyph:
                    found = name
            self._memo[ch] = found
            return found


_FALLBACK = _Fallback()


def _helvetica_has(ch: str) -> bool:
    try:
        ch.encode("cp1252")  # the standard fonts' WinAnsiEncoding
    except UnicodeEncodeError:
        return False
    return True


def _clean(text: object) -> str:
    """str, without control characters and lone surrogates (from undecodable file names)."""
    s = str(text if text is not None else "")
    s = s.encode("utf-8", "replace").decode("utf-8")
    s = s.replace("\r\n", "\n").replace("\r", "\n").replace("\t", " ")
    return _CONTROL.sub(" ", s)


def _m(text: object, *, newlines: bool = False) -> str:
    """Escape foreign text for a reportlab Paragraph; characters Helvetica lacks get a fallback
    font run. ``newlines``: keep line breaks (notes) instead of folding them into spaces."""
    s = _clean(text)
    if not newlines:
        s = " ".join(s.split())
    parts: list[str] = []
    run: list[str] = []
    run_font: str | None = None

    def flush() -> None:
        if run:
            body = escape("".join(run)).replace("\n", "<br/>")
            parts.append(body if run_font is None else f'<font name="{run_font}">{body}</font>')
            run.clear()

    for ch in s:
        font = None if (ch == "\n" or _helvetica_has(ch)) else _FALLBACK.font_for(ch)
        if font != run_font:
            flush()
            run_font = font
        run.append(ch)
    flush()
    return "".join(parts)


# -------------------------------------------------------------------------------------------------
# Styles
# -------------------------------------------------------------------------------------------------

_INK = colors.HexColor("#1a1a1a")
_HEAD = colors.HexColor("#1f3a5f")
_GRID = colors.HexColor("#c8ced6")
_SHADE = colors.HexColor("#eef2f7")
_WARN_EDGE = colors.HexColor("#b45309")
_WARN_FILL = colors.HexColor("#fff6e5")
_OK_FILL = colors.HexColor("#f1f5f1")
_BAR = colors.HexColor("#5b7da8")
_BAR_MAL = colors.HexColor("#b03a2e")


def _styles() -> dict[str, ParagraphStyle]:
    base = ParagraphStyle("body", fontName=_BASE, fontSize=9.5, leading=12.5, textColor=_INK)
    return {
        "body": base,
        "small": ParagraphStyle("small", parent=base, fontSize=9, leading=11.5),
        "cell": ParagraphStyle("cell", parent=base, fontSize=9, leading=11.2),
        "cell_b": ParagraphStyle("cell_b", parent=base, fontName=_BOLD, fontSize=9, leading=11.2),
        "cell_r": ParagraphStyle(
            "cell_r", parent=base, fontSize=9, leading=11.2, alignment=TA_RIGHT
        ),
        "cell_b_r": ParagraphStyle(
            "cell_b_r", parent=base, fontName=_BOLD, fontSize=9, leading=11.2, alignment=TA_RIGHT
        ),
        "label": ParagraphStyle(
            "label", parent=base, fontName=_BOLD, fontSize=9, leading=11.2, textColor=_HEAD
        ),
        "mono": ParagraphStyle("mono", parent=base, fontName=_MONO, fontSize=9, leading=11.2),
        "title": ParagraphStyle(
            "title", parent=base, fontName=_BOLD, fontSize=16, leading=20, textColor=_HEAD
        ),
        "h2": ParagraphStyle(
            "h2",
            parent=base,
            fontName=_BOLD,
            fontSize=11.5,
            leading=14,
            textColor=_HEAD,
            spaceBefore=8,
            spaceAfter=3,
        ),
        "answer": ParagraphStyle("answer", parent=base, fontName=_BOLD, fontSize=12, leading=15),
        "box": ParagraphStyle("box", parent=base, fontSize=10, leading=13),
        "caption": ParagraphStyle("caption", parent=base, fontSize=9, leading=11.2),
        "footer": ParagraphStyle(
            "footer", parent=base, fontSize=9, leading=11, textColor=colors.HexColor("#555555")
        ),
        "footer_r": ParagraphStyle(
            "footer_r",
            parent=base,
            fontSize=9,
            leading=11,
            textColor=colors.HexColor("#555555"),
            alignment=TA_RIGHT,
        ),
    }


# -------------------------------------------------------------------------------------------------
# Formatting helpers
# -------------------------------------------------------------------------------------------------


def _pct(p: float, digits: int = 1) -> str:
    value = float(p) * 100.0
    if 0.0 < value < 10.0 ** (-digits):
        return f"<{10.0 ** (-digits):.{digits}f}%"
    return f"{value:.{digits}f}%"


def _pair_digits(a: float, b: float) -> int:
    """Decimals needed so two different percentages never print the same (23.7% vs 23.7%)."""
    digits = 1
    while digits < 4 and a != b and round(a * 100, digits) == round(b * 100, digits):
        digits += 1
    return digits


def _when(created: datetime | None) -> str:
    """The time as given, with its UTC offset; a naive time is taken as local time."""
    if created is not None and created.utcoffset() is not None:
        moment = created
    else:
        moment = (created or datetime.now()).astimezone()
    offset = moment.utcoffset()
    minutes = int(offset.total_seconds() // 60) if offset is not None else 0
    sign = "+" if minutes >= 0 else "-"
    hh, mm_ = divmod(abs(minutes), 60)
    return f"{moment:%Y-%m-%d %H:%M:%S} (UTC{sign}{hh:02d}:{mm_:02d})"


def _card_date(card: ModelCard) -> str:
    raw = str(card.raw.get("created", ""))
    try:
        return datetime.fromisoformat(raw).strftime("%Y-%m-%d")
    except ValueError:
        return raw or "not stated"


def _training_summary(card: ModelCard) -> str:
    data = card.raw.get("training_data") or {}
    if not isinstance(data, dict):
        return str(data)
    name = str(data.get("dataset") or data.get("name") or "not stated")
    counts = data.get("counts")
    parts = []
    if isinstance(counts, dict):
        labels = {"train": "training", "val": "validation", "test": "test"}
        for key, label in labels.items():
            split = counts.get(key)
            if isinstance(split, dict):
                total = sum(v for v in split.values() if isinstance(v, int | float))
                parts.append(f"{int(total):,} {label}")
    summary = data.get("summary")
    if isinstance(summary, str) and summary.strip():
        return f"{name}: {summary.strip()}"
    return f"{name}: {', '.join(parts)} images" if parts else name


def _ci(entry: Any) -> str:
    if isinstance(entry, dict) and isinstance(entry.get("low"), int | float):
        return f" (95% CI {entry['low']:.3f}\u2013{entry['high']:.3f})"
    return ""


def _test_metrics(card: ModelCard) -> str | None:
    test = (card.raw.get("metrics") or {}).get("test")
    if not isinstance(test, dict):
        return None
    ci = test.get("ci") if isinstance(test.get("ci"), dict) else {}
    items = []
    for key, label in (("balanced_accuracy", "balanced accuracy"), ("auc_macro", "macro AUC")):
        value = test.get(key)
        if isinstance(value, int | float):
            items.append(f"{label} {value:.3f}{_ci(ci.get(key))}")
    if not items:
        return None
    n = test.get("n")
    where = f" on {n:,} held-out test images" if isinstance(n, int) else " on held-out test images"
    return "; ".join(items) + where


def _png(rgb: np.ndarray) -> io.BytesIO:
    ok, buf = cv2.imencode(".png", cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2BGR))
    if not ok:  # pragma: no cover - cv2 encodes any uint8 RGB array
        raise ReportError("The image could not be prepared for the report.")
    return io.BytesIO(buf.tobytes())


def _for_print(rgb: np.ndarray) -> np.ndarray:
    h, w = rgb.shape[:2]
    scale = _EMBED_MAX_SIDE / max(h, w)
    if scale >= 1:
        return np.ascontiguousarray(rgb)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return cv2.resize(np.ascontiguousarray(rgb), size, interpolation=cv2.INTER_AREA)


def _heatmap_code(case: ReportCase, pred: Any) -> str:
    if case.heatmap_code is None or str(case.heatmap_code).strip() == "":
        return str(pred.top_code)
    code = str(case.heatmap_code).strip()
    codes = tuple(pred.codes)
    upper = {c.upper(): c for c in codes}
    if code.upper() in upper:
        return upper[code.upper()]
    names = {str(n).lower(): c for c, n in zip(codes, pred.names, strict=True)}
    if code.lower() in names:
        return names[code.lower()]
    raise ReportError(
        f"This model has no class {code!r} to show a heatmap for; its classes are "
        f"{', '.join(codes)}."
    )


# -------------------------------------------------------------------------------------------------
# Building
# -------------------------------------------------------------------------------------------------


class _Builder:
    def __init__(self, case: ReportCase, model: ModelInfoLike, width: float) -> None:
        self.case = case
        self.model = model
        self.card: ModelCard = model.card
        self.pred = case.prediction
        self.width = width
        self.s = _styles()

    # -- small pieces -----------------------------------------------------------------------------
    def p(self, markup: str, style: str = "body") -> Paragraph:
        return Paragraph(markup, self.s[style])

    def heading(self, text: str) -> Paragraph:
        return self.p(escape(text), "h2")

    def boxed(self, flowables: list[Any], edge: Any, fill: Any, width: float = 1.2) -> Table:
        table = Table([[flowables]], colWidths=[self.width])
        table.setStyle(
            TableStyle(
                [
                    ("BOX", (0, 0), (-1, -1), width, edge),
                    ("BACKGROUND", (0, 0), (-1, -1), fill),
                    ("LEFTPADDING", (0, 0), (-1, -1), 8),
                    ("RIGHTPADDING", (0, 0), (-1, -1), 8),
                    ("TOPPADDING", (0, 0), (-1, -1), 6),
                    ("BOTTOMPADDING", (0, 0), (-1, -1), 7),
                ]
            )
        )
        return table

    def key_values(self, rows: Iterable[tuple[str, Any]], label_width: float) -> Table:
        data = [
            [self.p(escape(k), "label"), v if not isinstance(v, str) else self.p(v, "cell")]
            for k, v in rows
        ]
        table = Table(data, colWidths=[label_width, self.width - label_width])
        table.setStyle(
            TableStyle(
                [
                    ("VALIGN", (0, 0), (-1, -1), "TOP"),
                    ("LINEBELOW", (0, 0), (-1, -1), 0.4, _GRID),
                    ("LEFTPADDING", (0, 0), (-1, -1), 3),
                    ("TOPPADDING", (0, 0), (-1, -1), 2.5),
                    ("BOTTOMPADDING", (0, 0), (-1, -1), 3.5),
                ]
            )
        )
        return table

    # -- sections ----------------------------------------------------------------------------------
    def header(self) -> list[Any]:
        intended = self.card.raw.get("intended_use") or INTENDED_USE
        box = self.boxed(
            [self.p(f"<b>Intended use.</b> {_m(intended)}", "box")], _WARN_EDGE, _WARN_FILL, 1.5
        )
        return [self.p(escape(TITLE), "title"), Spacer(1, 5), box]

    def case_block(self) -> list[Any]:
        c = self.case
        meta = c.metadata
        age = UNKNOWN if meta.age is None else f"{meta.age:g} years"
        cells = [
            ("Case ID", _m(c.case_id) if c.case_id.strip() else "not given"),
            ("Date and time", _m(_when(c.created))),
            ("Image file", _m(c.image_name) if c.image_name else "not given"),
            ("Age", _m(age)),
            ("Sex", _m(meta.sex)),
            ("Anatomical site", _m(meta.site)),
        ]
        label_w, value_w = 27 * mm, self.width / 2 - 27 * mm
        rows = []
        for i in range(0, len(cells), 2):
            row: list[Any] = []
            for key, value in cells[i : i + 2]:
                row += [self.p(escape(key), "label"), self.p(value, "cell")]
            rows.append(row)
        table = Table(rows, colWidths=[label_w, value_w, label_w, value_w])
        table.setStyle(
            TableStyle(
                [
                    ("VALIGN", (0, 0), (-1, -1), "TOP"),
                    ("LINEBELOW", (0, 0), (-1, -1), 0.4, _GRID),
                    ("LEFTPADDING", (0, 0), (-1, -1), 3),
                    ("TOPPADDING", (0, 0), (-1, -1), 2.5),
                    ("BOTTOMPADDING", (0, 0), (-1, -1), 3.5),
                ]
            )
        )
        flow: list[Any] = [self.heading("Case"), table]
        if not self.card.uses_metadata:
            note = (
                "This model does not use age, sex or site: its answer comes from the image alone. "
                "The values above are recorded for the file only."
            )
        elif meta.age is None or UNKNOWN in (meta.sex, meta.site):
            note = "Fields marked unknown were given to the model as unknown, not guessed."
        else:
            note = ""
        if note:
            flow += [Spacer(1, 3), self.p(escape(note), "small")]
        return flow

    def images_block(self) -> list[Any]:
        pred = self.pred
        code = _heatmap_code(self.case, pred)
        name = pred.names[list(pred.codes).index(code)]
        shown = _for_print(self.case.image_rgb)
        h, w = shown.shape[:2]
        heat = heatmap_on_image(pred.heatmap(code), (w, h), self.card.preprocess)
        tinted = overlay(shown, heat)

        gap = 6 * mm
        col = (self.width - gap) / 2
        legend_w = 11 * mm  # a vertical colour bar right of the overlay: no extra row of height
        scale = min((col - legend_w) / w, 50 * mm / h)
        iw, ih = w * scale, h * scale
        left = Image(_png(shown), width=iw, height=ih, hAlign="LEFT")
        right = Image(_png(tinted), width=iw, height=ih)

        caption = (
            f"<b>Grad-CAM for {_m(name)} ({_m(code)})</b>: where the model looked; "
            "not a lesion segmentation."
        )
        if code != pred.top_code:
            caption += f" (Chosen by the clinician; the most likely class is {_m(pred.top_name)}.)"
        if float(np.max(heat)) <= 1e-3:
            caption += (
                " The map is empty: no region of the image pushed the model towards this class."
            )
        bar_h = max(10 * mm, ih - 2 * 12)
        bar = Image(_png(colorbar(256, 12)), width=3 * mm, height=bar_h)
        legend = Table(
            [[self.p("high", "caption")], [bar], [self.p("low", "caption")]],
            colWidths=[legend_w - 2 * mm],
            rowHeights=[12, bar_h, 12],
        )
        legend.setStyle(
            TableStyle(
                [
                    ("VALIGN", (0, 0), (-1, -1), "MIDDLE"),
                    ("ALIGN", (0, 0), (-1, -1), "LEFT"),
                    ("LEFTPADDING", (0, 0), (-1, -1), 0),
                    ("RIGHTPADDING", (0, 0), (-1, -1), 0),
                    ("TOPPADDING", (0, 0), (-1, -1), 0),
                    ("BOTTOMPADDING", (0, 0), (-1, -1), 0),
                ]
            )
        )
        right_pair = Table(
            [[right, legend]], colWidths=[iw + 2 * mm, legend_w - 2 * mm], hAlign="LEFT"
        )
        right_pair.setStyle(
            TableStyle(
                [
                    ("VALIGN", (0, 0), (-1, -1), "MIDDLE"),
                    ("LEFTPADDING", (0, 0), (-1, -1), 0),
                    ("RIGHTPADDING", (0, 0), (-1, -1), 0),
                    ("TOPPADDING", (0, 0), (-1, -1), 0),
                    ("BOTTOMPADDING", (0, 0), (-1, -1), 0),
                ]
            )
        )
        image_caption = f"<b>Image</b>: {_m(self.case.image_name) or 'not named'}"
        grid = Table(
            [
                [left, right_pair],
                [self.p(image_caption, "caption"), self.p(caption, "caption")],
            ],
            colWidths=[col + gap / 2, col + gap / 2],
        )
        grid.setStyle(
            TableStyle(
                [
                    ("VALIGN", (0, 0), (-1, -1), "TOP"),
                    ("LEFTPADDING", (0, 0), (-1, -1), 0),
                    ("RIGHTPADDING", (0, 0), (0, -1), gap / 2),
                    ("LEFTPADDING", (1, 0), (1, -1), gap / 2),
                    ("RIGHTPADDING", (1, 0), (1, -1), 0),
                    ("TOPPADDING", (0, 0), (-1, 0), 0),
                    ("TOPPADDING", (0, 1), (-1, -1), 3),
                ]
            )
        )
        return [self.heading("Image and Grad-CAM heatmap"), grid]

    def result_block(self) -> list[Any]:
        """The answer with its warnings (never separated), the table, the risk: three groups that
        each stay whole but may fall on different pages, so the report keeps to two pages."""
        pred = self.pred
        answer = self.p(
            f"Most likely class: {_m(pred.top_name)} ({_m(pred.top_code)}), "
            f"{_pct(float(np.max(np.asarray(pred.probabilities))))}",
            "answer",
        )
        return [
            KeepTogether([self.heading("Model output"), answer, Spacer(1, 5), self.warnings()]),
            Spacer(1, 5),
            self.probability_table(),
            Spacer(1, 5),
            self.risk_box(),
        ]

    def warnings(self) -> Table:
        flags = tuple(getattr(self.pred, "flags", ()) or ())
        if not flags:
            # A prediction without the attribute was made by code that computes no warnings:
            # "No warnings." would then claim a check that never ran.
            text = (
                "No warnings."
                if hasattr(self.pred, "flags")
                else "Not checked (this prediction carries no warning checks)."
            )
            return self.boxed([self.p(f"<b>Warnings:</b> {text}", "body")], _GRID, _OK_FILL, 0.8)
        items = [self.p("<b>Warnings</b>", "body")]
        for flag in flags:
            title = getattr(flag, "title", "") or getattr(flag, "code", "") or "Warning"
            detail = getattr(flag, "detail", "")
            if not (hasattr(flag, "title") or hasattr(flag, "detail")):
                title, detail = "Warning", str(flag)
            title = str(title).strip().rstrip(".")
            items.append(self.p(f"\u2022 <b>{_m(title)}.</b> {_m(detail)}", "body"))
        return self.boxed(items, _WARN_EDGE, _WARN_FILL, 1.5)

    def probability_table(self) -> Table:
        """Calibrated probabilities, highest first, probability leading as in the CLI's output.

        The class name is the last column and every cell is top-aligned, so a long name that
        wraps reads as one run of text even in a text extraction (nothing sits between its
        lines), and copying it out of the PDF gives the whole name."""
        pred = self.pred
        malignant = set(self.card.malignant_codes)
        order = np.argsort(-np.asarray(pred.probabilities, dtype=np.float64), kind="stable")
        bar_w = 26 * mm
        fixed = [23 * mm, 30 * mm, 14 * mm, 20 * mm]
        widths = [*fixed, self.width - sum(fixed)]
        rows: list[list[Any]] = [
            [
                self.p("Probability", "cell_b_r"),
                self.p("", "cell"),
                self.p("Code", "cell_b"),
                self.p("Malignant", "cell_b"),
                self.p("Class", "cell_b"),
            ]
        ]
        for i in order:
            code, name = pred.codes[i], pred.names[i]
            prob = float(pred.probabilities[i])
            is_mal = code in malignant
            bar = Drawing(bar_w, 8)
            bar.add(Rect(0, 0, bar_w, 8, fillColor=_SHADE, strokeColor=None))
            if prob > 0:
                colour = _BAR_MAL if is_mal else _BAR
                bar.add(Rect(0, 0, max(0.6, bar_w * prob), 8, fillColor=colour, strokeColor=None))
            top = code == pred.top_code
            rows.append(
                [
                    self.p(_pct(prob), "cell_b_r" if top else "cell_r"),
                    bar,
                    self.p(_m(code), "cell_b" if top else "cell"),
                    self.p("malignant" if is_mal else "", "cell"),
                    self.p(_m(name), "cell_b" if top else "cell"),
                ]
            )
        table = Table(rows, colWidths=widths, repeatRows=1)
        table.setStyle(
            TableStyle(
                [
                    ("VALIGN", (0, 0), (-1, -1), "TOP"),
                    ("BACKGROUND", (0, 0), (-1, 0), _SHADE),
                    ("LINEBELOW", (0, 0), (-1, -1), 0.4, _GRID),
                    ("LINEABOVE", (0, 0), (-1, 0), 0.6, _GRID),
                    ("TOPPADDING", (0, 0), (-1, -1), 2.5),
                    ("BOTTOMPADDING", (0, 0), (-1, -1), 3.5),
                    ("TOPPADDING", (1, 1), (1, -1), 4.5),  # the bar level with the text
                    ("LEFTPADDING", (1, 1), (1, -1), 8),
                ]
            )
        )
        return table

    def risk_box(self) -> Table:
        pred = self.pred
        risk, threshold = float(pred.risk), float(pred.threshold)
        digits = _pair_digits(risk, threshold)
        r, t = _pct(risk, digits), _pct(threshold, digits)
        mal = ", ".join(self.card.malignant_codes) or "none"
        if bool(pred.above_threshold):
            relation = "equal to" if risk == threshold else "above"
        else:
            relation = "below"
        lines = [
            self.p(
                f"<b>Malignancy risk: {r}</b> (the calibrated probabilities of the malignant "
                f"classes {_m(mal)} added together).",
                "body",
            ),
            self.p(
                f"<b>Model threshold: {t}</b>, {_m(self.card.threshold_description)}.",
                "body",
            ),
            self.p(f"<b>Result:</b> Risk {r} is {relation} the model's threshold of {t}.", "body"),
            self.p(
                f"<b>Uncertainty: {float(pred.entropy):.2f}</b> (normalised entropy of the "
                "probabilities: 0 = all on one class, 1 = all classes equally likely).",
                "body",
            ),
        ]
        return self.boxed(lines, _HEAD, colors.white, 1.0)

    def model_block(self) -> list[Any]:
        card, model = self.card, self.model
        arch = card.raw.get("architecture") or {}
        path = getattr(model, "path", None)
        file_name = Path(path).name if path else "loaded from memory"
        provider = str(getattr(model, "provider", "") or "unknown")
        note = str(getattr(model, "provider_note", "") or "")
        provider_text = f"{_m(provider)} (onnxruntime)" + (f"; {_m(note)}" if note else "")
        backbone = str(arch.get("backbone") or "not stated")
        inputs = "image + age, sex, site" if card.uses_metadata else "image only"
        rows: list[tuple[str, Any]] = [
            ("Model", _m(card.name)),
            ("Version", f"{_m(card.version)} (created {_m(_card_date(card))})"),
            ("Model file", _m(file_name)),
            ("SHA-256", self.p(escape(str(model.sha256)), "mono")),
            ("Execution provider", provider_text),
            (
                "Architecture",
                f"{_m(backbone)}, {card.preprocess.width} x {card.preprocess.height} px input, "
                f"{inputs}; calibration temperature {card.temperature:.2f}",
            ),
            ("Training data", _m(_training_summary(card))),
        ]
        metrics = _test_metrics(card)
        if metrics:
            rows.append(("Test metrics", _m(metrics)))
        rows.append(("Licence", _m(card.raw.get("licence", "not stated"))))
        return [self.heading("Model"), self.key_values(rows, 34 * mm)]

    def limitations_block(self) -> list[Any]:
        items = [str(x) for x in (self.card.raw.get("limitations") or []) if str(x).strip()]
        if not items:
            return [self.heading("Limitations"), self.p("The model card states none.", "body")]
        bullets = ListFlowable(
            [ListItem(self.p(_m(x), "small"), leftIndent=12) for x in items],
            bulletType="bullet",
            start="\u2022",
            leftIndent=12,
            bulletFontSize=9,
            spaceBefore=0,
        )
        return [self.heading("Limitations (from the model card)"), bullets]

    def notes_block(self) -> list[Any]:
        notes = _clean(self.case.clinician_notes).strip()
        flow: list[Any] = [self.heading("Clinician notes")]
        if notes:
            flow.append(self.p(_m(notes, newlines=True), "body"))
        else:
            blank = Table([[""]], colWidths=[self.width], rowHeights=[22 * mm])
            blank.setStyle(TableStyle([("BOX", (0, 0), (-1, -1), 0.5, _GRID)]))
            flow.append(blank)
        return flow

    def signature_block(self) -> KeepTogether:
        name = _clean(self.case.clinician_name).strip()
        label = self.s["label"]
        cell = self.s["cell"]
        row = [
            Paragraph("Reviewed by:", label),
            Paragraph(_m(name), cell),
            Paragraph("Signature:", label),
            "",
            Paragraph("Date:", label),
            "",
        ]
        widths = [25 * mm, 47 * mm, 19 * mm, 43 * mm, 11 * mm]
        widths.append(self.width - sum(widths))
        table = Table([row], colWidths=widths, rowHeights=[11 * mm])
        table.setStyle(
            TableStyle(
                [
                    ("VALIGN", (0, 0), (-1, -1), "BOTTOM"),
                    ("LINEBELOW", (1, 0), (1, 0), 0.6, _INK),
                    ("LINEBELOW", (3, 0), (3, 0), 0.6, _INK),
                    ("LINEBELOW", (5, 0), (5, 0), 0.6, _INK),
                    ("LEFTPADDING", (0, 0), (-1, -1), 2),
                    ("RIGHTPADDING", (0, 0), (-1, -1), 4),
                ]
            )
        )
        return KeepTogether([Spacer(1, 8), table])

    def story(self) -> list[Any]:
        return [
            *self.header(),
            KeepTogether(self.case_block()),
            KeepTogether(self.images_block()),
            *self.result_block(),
            KeepTogether(self.model_block()),
            KeepTogether(self.limitations_block()),
            *self.notes_block(),
            self.signature_block(),
        ]


def _canvas_class(footer_left: str) -> type[rl_canvas.Canvas]:
    """A canvas that knows the page count ("Page 1 of 2") by drawing footers at save time."""
    styles = _styles()

    class _Canvas(rl_canvas.Canvas):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._pages: list[dict[str, Any]] = []

        def showPage(self) -> None:  # reportlab's name
            self._pages.append(dict(self.__dict__))
            self._startPage()

        def save(self) -> None:
            total = len(self._pages)
            for number, state in enumerate(self._pages, start=1):
                self.__dict__.update(state)
                self._footer(number, total)
                super().showPage()
            super().save()

        def _footer(self, number: int, total: int) -> None:
            width, _ = A4
            left, right = 18 * mm + 6, width - 18 * mm - 6  # flush with the frame content
            self.saveState()
            self.setStrokeColor(_GRID)
            self.setLineWidth(0.5)
            self.line(left, 17 * mm, right, 17 * mm)
            first = Paragraph(footer_left, styles["footer"])
            first.wrapOn(self, right - left - 30 * mm, 12)
            first.drawOn(self, left, 12.5 * mm)
            page = Paragraph(f"Page {number} of {total}", styles["footer_r"])
            page.wrapOn(self, 30 * mm, 12)
            page.drawOn(self, right - 30 * mm, 12.5 * mm)
            short = Paragraph(escape(DISCLAIMER_SHORT), styles["footer"])
            short.wrapOn(self, right - left, 12)
            short.drawOn(self, left, 8.5 * mm)
            self.restoreState()

    return _Canvas


def build_report_pdf(case: ReportCase, model: ModelInfoLike) -> bytes:
    """The report as PDF bytes (A4 portrait). Raises :class:`ReportError` for a heatmap class the
    model does not have, or a layout reportlab cannot fit."""
    buf = io.BytesIO()
    case_id = _clean(case.case_id).strip()
    title = f"LesionLens report, case {case_id}" if case_id else "LesionLens report"
    doc = SimpleDocTemplate(
        buf,
        pagesize=A4,
        leftMargin=18 * mm,
        rightMargin=18 * mm,
        topMargin=13 * mm,
        bottomMargin=20 * mm,
        title=title,
        author="LesionLens",
        subject=_SUBJECT,
        creator=f"LesionLens {__version__}",
        keywords="",
    )
    builder = _Builder(case, model, doc.width - 12)  # the frame pads 6 pt on each side
    story = builder.story()
    footer_left = f"LesionLens {escape(__version__)}"
    if case_id:
        short_id = case_id if len(case_id) <= 40 else case_id[:39] + "\u2026"
        footer_left += f" \u2014 case {_m(short_id)}"
    try:
        doc.build(story, canvasmaker=_canvas_class(footer_left))
    except LayoutError as exc:
        raise ReportError(
            "The report could not be laid out on the page (an entry is too long); "
            f"shorten the notes or names and try again. ({exc})"
        ) from None
    return buf.getvalue()


# -------------------------------------------------------------------------------------------------
# Writing
# -------------------------------------------------------------------------------------------------


def _write_failure(target: Path, exc: OSError, existed: bool) -> ReportError:
    name = target.name or str(target)
    folder = target.parent.name or str(target.parent)
    code = exc.errno
    if isinstance(exc, IsADirectoryError) or target.is_dir():
        why = f"'{name}' is a folder; choose a file name for the report, such as case.pdf"
    elif isinstance(exc, FileNotFoundError) or code == errno.ENOENT:
        why = f"the folder '{folder}' does not exist"
    elif isinstance(exc, NotADirectoryError) or code == errno.ENOTDIR:
        why = f"'{folder}' is not a folder"
    elif code in (errno.ENOSPC, getattr(errno, "EDQUOT", -1)):
        why = "the disk is full; free some space or choose another drive"
    elif isinstance(exc, PermissionError) or code in (errno.EACCES, errno.EPERM, errno.EROFS):
        why = (
            f"LesionLens may not write to the folder '{folder}' (read-only or no permission); "
            "choose another folder"
        )
    elif code == errno.ENAMETOOLONG:
        why = "the file name is too long"
    else:
        why = exc.strerror or type(exc).__name__
    kept = " The existing file of that name was left unchanged." if existed else ""
    return ReportError(f"The report was not saved to '{name}': {why}.{kept}")


def write_report(path: str | os.PathLike[str], case: ReportCase, model: ModelInfoLike) -> Path:
    """Build the report and write it to ``path`` atomically. Returns the path written.

    Raises :class:`ReportError` (clinician-readable) when it cannot be written: a folder that
    does not exist, a path that is a folder, a read-only folder, a full disk. Nothing is left
    behind then, and a report already at ``path`` is untouched.
    """
    target = Path(path)
    existed = target.is_file()
    if target.is_dir():
        raise _write_failure(target, IsADirectoryError(errno.EISDIR, "is a folder"), existed)
    if not target.parent.is_dir():
        if target.parent.exists():
            problem: OSError = NotADirectoryError(errno.ENOTDIR, "not a folder")
        else:
            problem = FileNotFoundError(errno.ENOENT, "no such folder")
        raise _write_failure(target, problem, existed)
    data = build_report_pdf(case, model)
    try:
        atomic_write_bytes(target, data)
    except OSError as exc:
        raise _write_failure(target, exc, existed) from None
    return target
