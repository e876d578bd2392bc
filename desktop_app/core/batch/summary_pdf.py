"""The batch summary PDF: the triage list, highest malignancy risk first, with thumbnails.

One line per image: rank, the image and its top-class Grad-CAM as small thumbnails (taken from the
results database, so nothing is decoded or run again), the file's path relative to the folder, the
most likely class, the malignancy risk against the model's threshold, and the warnings. Errors and
skipped files follow, with their reasons, so every file of the folder appears once. The page frame
(intended use first, footer with page numbers and the short disclaimer, fonts with fallback for
any character) is the single-case report's (:mod:`desktop_app.core.report`).

Very large batches: thumbnails are drawn for the first ``max_thumbnails`` lines (the highest
risks, the ones read first); later lines are text only, which keeps the file and the memory
needed to build it bounded. Written atomically; the document properties hold no patient data.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

from reportlab import rl_config
from reportlab.lib import colors
from reportlab.lib.pagesizes import A4
from reportlab.lib.units import mm
from reportlab.pdfbase.pdfmetrics import stringWidth
from reportlab.platypus import Image, KeepTogether, Paragraph, SimpleDocTemplate, Spacer, Table

from desktop_app import INTENDED_USE, __version__
from desktop_app.core.atomic import atomic_write_bytes
from desktop_app.core.batch.store import CaseResult, ResultStore
from desktop_app.core.engine import Engine
from desktop_app.core.report import (
    DISCLAIMER_SHORT,
    ReportError,
    _canvas_class,
    _m,
    _pct,
    _styles,
)

__all__ = ["MAX_THUMBNAILS", "SummaryError", "build_batch_summary_pdf", "write_batch_summary"]

SummaryError = ReportError
MAX_THUMBNAILS = 500
_ROWS_PER_TABLE = 30  # short tables: reportlab splits long ones slowly
_THUMB = 13 * mm
_WARN_EDGE = colors.HexColor("#b45309")
_WARN_FILL = colors.HexColor("#fff6e5")
_GRID = colors.HexColor("#c8ced6")
_SHADE = colors.HexColor("#eef2f7")
_ABOVE = colors.HexColor("#fbe9e7")
_FLAG_TITLES = {
    "low_confidence": "Low confidence",
    "unusual_image": "Unusual image",
    "severity_disagreement": "Malignant classes above threshold",
}


_FLAG_SHORT = {
    "low_confidence": "Low conf.",
    "unusual_image": "Unusual",
    "severity_disagreement": "Malignant > thr.",
}


def _flags_text(flags: tuple[str, ...], short: bool = False) -> str:
    titles = _FLAG_SHORT if short else _FLAG_TITLES
    return ("; " if not short else ", ").join(titles.get(f, f.replace("_", " ")) for f in flags)


def _image(data: bytes | None) -> Any:
    if not data:
        return ""
    try:
        img = Image(io.BytesIO(data))
        w, h = img.imageWidth, img.imageHeight
        scale = _THUMB / max(w, h)
        img.drawWidth, img.drawHeight = w * scale, h * scale
        return img
    except Exception:  # a damaged thumbnail costs its picture, not the summary
        return ""


class _Summary:
    def __init__(
        self,
        store: ResultStore,
        folder: Path,
        engine: Engine,
        width: float,
        max_thumbnails: int,
    ) -> None:
        self.store = store
        self.folder = folder
        self.engine = engine
        self.card = engine.card
        self.width = width
        self.max_thumbnails = max_thumbnails
        self.s = _styles()

    def p(self, markup: str, style: str = "body") -> Paragraph:
        return Paragraph(markup, self.s[style])

    def boxed(self, flowables: list[Any], edge: Any, fill: Any) -> Table:
        table = Table([[flowables]], colWidths=[self.width])
        table.setStyle(
            [
                ("BOX", (0, 0), (-1, -1), 1.5, edge),
                ("BACKGROUND", (0, 0), (-1, -1), fill),
                ("LEFTPADDING", (0, 0), (-1, -1), 6),
                ("RIGHTPADDING", (0, 0), (-1, -1), 6),
                ("TOPPADDING", (0, 0), (-1, -1), 5),
                ("BOTTOMPADDING", (0, 0), (-1, -1), 6),
            ]
        )
        return table

    def header(self, counts: dict[str, int]) -> list[Any]:
        card = self.card
        intended = card.raw.get("intended_use") or INTENDED_USE
        total = sum(counts.values())
        mal = ", ".join(card.malignant_codes) or "none"
        lines = [
            f"<b>Folder:</b> {_m(self.folder.name or str(self.folder))}",
            f"<b>Date:</b> {datetime.now().astimezone():%Y-%m-%d %H:%M}",
            f"<b>Model:</b> {_m(card.name)} {_m(card.version)}, SHA-256 "
            f"<font name='Courier'>{_m(self.engine.sha256[:16])}…</font>",
            f"<b>Files:</b> {total} — {counts['ok']} analysed, {counts['error']} could not be "
            f"analysed, {counts['skipped']} skipped (not images)",
            f"<b>Malignancy risk</b> = calibrated probability of {_m(mal)} together; "
            f"<b>threshold {_pct(card.threshold)}</b> ({_m(card.threshold_description)}).",
        ]
        return [
            self.p("LesionLens \u2014 batch triage summary", "title"),
            Spacer(1, 5),
            self.boxed(
                [self.p(f"<b>Intended use.</b> {_m(intended)}", "box")], _WARN_EDGE, _WARN_FILL
            ),
            Spacer(1, 6),
            *[self.p(line, "small") for line in lines],
            Spacer(1, 4),
            self.p(
                "Sorted by malignancy risk, highest first. The heatmap shows where the model "
                "looked for its most likely class; it is not a lesion segmentation. Rows above "
                "the threshold are shaded.",
                "small",
            ),
        ]

    def _table(
        self,
        rows: list[list[Any]],
        widths: list[float],
        shaded: list[int],
        right: tuple[int, ...] = (),
    ) -> Table:
        table = Table(rows, colWidths=widths, repeatRows=1)
        style: list[tuple[Any, ...]] = [
            ("FONTNAME", (0, 0), (-1, -1), "Helvetica"),  # plain-text cells, as in _fit
            ("FONTSIZE", (0, 0), (-1, -1), 9),
            ("VALIGN", (0, 0), (-1, -1), "MIDDLE"),
            ("BACKGROUND", (0, 0), (-1, 0), _SHADE),
            ("LINEBELOW", (0, 0), (-1, -1), 0.4, _GRID),
            ("LEFTPADDING", (0, 0), (-1, -1), 2.5),
            ("RIGHTPADDING", (0, 0), (-1, -1), 2.5),
            ("TOPPADDING", (0, 0), (-1, -1), 2),
            ("BOTTOMPADDING", (0, 0), (-1, -1), 2.5),
        ]
        style += [("BACKGROUND", (0, r), (-1, r), _ABOVE) for r in shaded]
        style += [("ALIGN", (c, 1), (c, -1), "RIGHT") for c in right]
        table.setStyle(style)
        return table

    def cell(
        self, markup: str, plain: str, style: str, width: float, light: bool, path: bool = False
    ) -> Any:
        """A Paragraph, or for the text-only lines of a very large batch a plain string cut to
        the column (far lighter; used only when Helvetica can draw every character). A path
        keeps its end (the file name), other text its start."""
        if light and _helvetica_has_all(plain):
            return _fit(plain, width - 5, keep_end=path)
        return self.p(markup, style)

    def triage_tables(self, results: Iterable[CaseResult]) -> list[Any]:
        names = {c.code: c.name for c in self.card.classes}
        # rank, image, heatmap, file (the rest of the width), most likely, risk, warnings
        widths = [9 * mm, _THUMB + 6, _THUMB + 6, 0, 36 * mm, 17 * mm, 34 * mm]
        widths[3] = self.width - sum(widths)
        head = [
            self.p("#", "cell_b_r"),
            self.p("Image", "cell_b"),
            self.p("Heat", "cell_b"),
            self.p("File", "cell_b"),
            self.p("Most likely", "cell_b"),
            self.p("Risk", "cell_b_r"),
            self.p("Warnings", "cell_b"),
        ]
        flow: list[Any] = []
        rows: list[list[Any]] = [head]
        shaded: list[int] = []
        model = self.engine.sha256
        rank = 0
        for rank, r in enumerate(results, start=1):
            with_pictures = rank <= self.max_thumbnails
            light = not with_pictures
            thumb = self.store.thumbnail(r.relative_path, model) if with_pictures else None
            heat = self.store.heatmap_thumbnail(r.relative_path, model) if with_pictures else None
            top = r.top_code or ""
            prob = r.probabilities.get(top)
            short_name = names.get(top, "").split(" (")[0]  # "Benign keratosis", not the list
            top_text = f"<b>{_m(top)}</b> {_m(short_name)}"
            top_plain = top
            if prob is not None:
                top_text += f" ({_pct(prob, 0)})"
                top_plain += f" ({_pct(prob, 0)})"
            risk = risk_plain = _pct(r.risk) if r.risk is not None else ""
            if r.above_threshold:
                risk = f"<b>{risk}</b><br/>above"
                shaded.append(len(rows))  # a shaded line is above the threshold
            flags = _flags_text(r.flags, short=light)
            rows.append(
                [
                    self.cell(str(rank), str(rank), "cell_r", widths[0], light),
                    _image(thumb),
                    _image(heat),
                    self.cell(_m(r.relative_path), r.relative_path, "cell", widths[3], light, True),
                    self.cell(top_text, top_plain, "cell", widths[4], light),
                    self.cell(risk, risk_plain, "cell_r", widths[5], light),
                    self.cell(_m(flags), flags, "cell", widths[6], light),
                ]
            )
            if len(rows) > _ROWS_PER_TABLE:
                flow.append(self._table(rows, widths, shaded, right=(0, 5)))
                rows, shaded = [head], []
        if len(rows) > 1:
            flow.append(self._table(rows, widths, shaded, right=(0, 5)))
        if rank > self.max_thumbnails:
            flow.append(
                self.p(
                    f"Thumbnails are shown for the first {self.max_thumbnails} lines; the "
                    "others are listed as text (see results.csv and the application).",
                    "small",
                )
            )
        return flow

    def reason_tables(self, title: str, results: list[CaseResult]) -> list[Any]:
        if not results:
            return []
        widths = [self.width * 0.42, self.width * 0.58]
        flow: list[Any] = [self.p(escape(title), "h2")]
        for start in range(0, len(results), _ROWS_PER_TABLE * 2):
            rows = [[self.p("File", "cell_b"), self.p("Reason", "cell_b")]]
            for i, r in enumerate(results[start : start + _ROWS_PER_TABLE * 2], start=start):
                light = i >= self.max_thumbnails
                rows.append(
                    [
                        self.cell(
                            _m(r.relative_path), r.relative_path, "cell", widths[0], light, True
                        ),
                        self.cell(_m(r.message), r.message, "cell", widths[1], light),
                    ]
                )
            flow.append(self._table(rows, widths, []))
        return flow

    def story(self) -> list[Any]:
        model = self.engine.sha256
        counts = self.store.counts(model)
        errors: list[CaseResult] = []
        skipped: list[CaseResult] = []

        def ok_rows() -> Iterator[CaseResult]:
            """Streams the triage order (ok rows first); errors and skipped files put aside."""
            for r in self.store.iter_results(model, triage=True):
                if r.status == "ok":
                    yield r
                else:
                    (errors if r.status == "error" else skipped).append(r)

        story: list[Any] = [*self.header(counts), Spacer(1, 6)]
        if counts["ok"]:
            story.append(self.p("Triage list", "h2"))
            story += self.triage_tables(ok_rows())
        else:
            story.append(self.p("No image could be analysed.", "body"))
            for _ in ok_rows():
                pass
        story += self.reason_tables("Could not be analysed", errors)
        story += self.reason_tables("Skipped (not images)", skipped)
        story.append(Spacer(1, 8))
        story.append(KeepTogether([self.p(escape(DISCLAIMER_SHORT), "small")]))
        return story


def _helvetica_has_all(text: str) -> bool:
    try:
        text.encode("cp1252")
    except UnicodeEncodeError:
        return False
    return not any(ch < " " for ch in text)


def _fit(text: str, width: float, keep_end: bool = False) -> str:
    """``text`` cut with an ellipsis so it fits ``width`` points in Helvetica 9 pt: its start
    kept, or with ``keep_end`` its end (a path's file name is what identifies it)."""

    def cut(n: int) -> str:
        return "\u2026" + text[len(text) - n :] if keep_end else text[:n] + "\u2026"

    if stringWidth(text, "Helvetica", 9) <= width:
        return text
    lo, hi = 0, len(text)  # the longest part that fits with the ellipsis
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if stringWidth(cut(mid), "Helvetica", 9) <= width:
            lo = mid
        else:
            hi = mid - 1
    return cut(lo)


def build_batch_summary_pdf(
    store: ResultStore, folder: Path, engine: Engine, *, max_thumbnails: int = MAX_THUMBNAILS
) -> bytes:
    """The summary as PDF bytes (A4 portrait)."""
    buf = io.BytesIO()
    doc = SimpleDocTemplate(
        buf,
        pagesize=A4,
        leftMargin=15 * mm,
        rightMargin=15 * mm,
        topMargin=13 * mm,
        bottomMargin=20 * mm,
        title="LesionLens batch summary",
        author="LesionLens",
        subject="Dermoscopy batch triage list (decision support, not a diagnosis)",
        creator=f"LesionLens {__version__}",
        keywords="",
    )
    builder = _Summary(store, Path(folder), engine, doc.width - 12, max(0, int(max_thumbnails)))
    story = builder.story()
    # Binary image streams instead of ASCII85 text: 20% faster and smaller with hundreds of
    # thumbnails (reportlab's ASCII85 is pure Python here). Both are valid PDF, so a report
    # built on another thread meanwhile is unaffected in substance.
    a85 = rl_config.useA85
    rl_config.useA85 = 0
    try:
        doc.build(
            story,
            canvasmaker=_canvas_class(f"LesionLens {escape(__version__)} \u2014 batch summary"),
        )
    except Exception as exc:
        raise SummaryError(f"The batch summary could not be laid out ({exc}).") from None
    finally:
        rl_config.useA85 = a85
    return buf.getvalue()


def write_batch_summary(
    path: Path,
    store: ResultStore,
    folder: Path,
    engine: Engine,
    *,
    max_thumbnails: int = MAX_THUMBNAILS,
) -> Path:
    """Write the triage summary of ``engine``'s results in ``store`` to ``path``, atomically.
    Raises :class:`SummaryError` (a ReportError) with a readable message when it cannot."""
    target = Path(path)
    data = build_batch_summary_pdf(store, folder, engine, max_thumbnails=max_thumbnails)
    try:
        atomic_write_bytes(target, data)
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise SummaryError(
            f"The batch summary was not saved to '{target.name}' ({reason})."
        ) from None
    return target
