"""The answer, and when not to trust it.

* :class:`FlagBanner` - an amber banner listing the prediction's flags (low confidence, unusual
  image, severity disagreement), title and explanation, placed above the answer and as large.
* :class:`ProbabilityChart` - one row per class, sorted, full class name, percentage and a bar;
  malignant classes have a red bar *and* the word "malignant" (never colour alone).
* :class:`ResultsPanel` - the most likely class in large type, the malignancy risk against the
  model's threshold and what that threshold means (from the card), the uncertainty, a note that
  probabilities are calibrated, and which metadata the analysis used.

Sizes derive from the font, so the panel stays readable at 200 % scaling.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from PySide6.QtCore import QRectF, QSize, Qt
from PySide6.QtGui import QColor, QPainter
from PySide6.QtWidgets import (
    QFrame,
    QHBoxLayout,
    QLabel,
    QSizePolicy,
    QVBoxLayout,
    QWidget,
)

__all__ = ["FlagBanner", "ProbabilityChart", "ResultsPanel", "format_percent"]

MALIGNANT_COLOUR = QColor("#c62828")
BENIGN_COLOUR = QColor("#1e6fb8")
TRACK_COLOUR = QColor("#e3e6ea")
AMBER_STYLE = (
    "QFrame#flagBanner { background: #fff3cd; border: 2px solid #e0a800; border-radius: 6px; }"
    "QFrame#flagBanner QLabel { color: #4a3500; background: transparent; border: none; }"
)


def format_percent(p: float) -> str:
    """72.4%, 0.3%, or <0.1% (never a bare 0% for a class that is possible)."""
    if p < 0.0005:
        return "<0.1%"
    return f"{p:.1%}"


def _scaled_font(widget: QWidget, factor: float, bold: bool = False):
    font = widget.font()
    size = font.pointSizeF()
    if size > 0:
        font.setPointSizeF(size * factor)
    else:  # pixel-sized font
        font.setPixelSize(max(1, round(font.pixelSize() * factor)))
    font.setBold(bold)
    return font


# --------------------------------------------------------------------------------------------------
# Flags
# --------------------------------------------------------------------------------------------------


class FlagBanner(QFrame):
    """Amber warning banner; hidden when there is nothing to say."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("flagBanner")
        self.setAccessibleName("Warnings about this result")
        self.setStyleSheet(AMBER_STYLE)
        self.setFrameShape(QFrame.Shape.StyledPanel)
        self._label = QLabel()
        self._label.setObjectName("flagText")
        self._label.setWordWrap(True)
        self._label.setTextFormat(Qt.TextFormat.RichText)
        self._label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self._label.setFont(_scaled_font(self._label, 1.1))
        layout = QVBoxLayout(self)
        margin = self.fontMetrics().height() // 2
        layout.setContentsMargins(margin, margin, margin, margin)
        layout.addWidget(self._label)
        self._flags: tuple[Any, ...] = ()
        self.hide()

    def set_flags(self, flags: Sequence[Any]) -> None:
        self._flags = tuple(flags)
        if not self._flags:
            self._label.clear()
            self.hide()
            return
        items = "".join(
            f"<p style='margin-top:4px'>&#9888; <b>{html.escape(str(getattr(f, 'title', f)))}</b>"
            + (
                f"<br>{html.escape(str(getattr(f, 'detail', '')))}"
                if getattr(f, "detail", "")
                else ""
            )
            + "</p>"
            for f in self._flags
        )
        head = "Caution" if len(self._flags) == 1 else f"Caution ({len(self._flags)} warnings)"
        self._label.setText(f"<b style='font-size:large'>{head}</b>{items}")
        self.show()

    def flags(self) -> tuple[Any, ...]:
        return self._flags

    def text(self) -> str:
        return self._label.text()


# --------------------------------------------------------------------------------------------------
# Probability chart
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ChartRow:
    code: str
    name: str
    probability: float
    malignant: bool


class _Bar(QWidget):
    """A horizontal bar, font-relative height."""

    def __init__(self, fraction: float, colour: QColor, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._fraction = max(0.0, min(1.0, float(fraction)))
        self._colour = colour
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        self.setMinimumWidth(self.fontMetrics().averageCharWidth() * 8)

    def sizeHint(self) -> QSize:
        return QSize(self.fontMetrics().averageCharWidth() * 20, self._bar_height())

    def minimumSizeHint(self) -> QSize:
        return QSize(self.fontMetrics().averageCharWidth() * 8, self._bar_height())

    def _bar_height(self) -> int:
        return max(6, round(self.fontMetrics().height() * 0.8))

    def paintEvent(self, event) -> None:
        painter = QPainter(self)
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        r = QRectF(self.rect())
        h = self._bar_height()
        r.setTop((self.height() - h) / 2)
        r.setHeight(h)
        radius = h / 4
        painter.setPen(Qt.PenStyle.NoPen)
        painter.setBrush(TRACK_COLOUR)
        painter.drawRoundedRect(r, radius, radius)
        if self._fraction > 0:
            filled = QRectF(r)
            filled.setWidth(max(2.0, r.width() * self._fraction))
            painter.setBrush(self._colour)
            painter.drawRoundedRect(filled, radius, radius)
        painter.end()


class ProbabilityChart(QWidget):
    """Per-class probabilities, highest first: name (wrapped, never cut), bar, percentage."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("probabilityChart")
        self.setAccessibleName("Probability of each class")
        self._layout = QVBoxLayout(self)
        self._layout.setContentsMargins(0, 0, 0, 0)
        self._layout.setSpacing(max(2, self.fontMetrics().height() // 3))
        self._rows: list[ChartRow] = []
        self._percent_labels: dict[str, QLabel] = {}

    def set_rows(self, rows: Sequence[ChartRow]) -> None:
        while self._layout.count():
            widget = self._layout.takeAt(0).widget()
            if widget is not None:
                widget.setParent(None)
                widget.deleteLater()
        self._percent_labels = {}
        self._rows = sorted(rows, key=lambda r: -r.probability)
        for i, row in enumerate(self._rows):
            self._layout.addWidget(self._make_row(row, top=i == 0))

    def _make_row(self, row: ChartRow, top: bool) -> QWidget:
        tag = " &nbsp;<span style='color:#b71c1c'><b>malignant</b></span>" if row.malignant else ""
        name = QLabel(
            f"{html.escape(row.name)} <span style='color:#5f6368'>({row.code})</span>{tag}"
        )
        name.setObjectName(f"className_{row.code}")
        name.setWordWrap(True)
        name.setTextFormat(Qt.TextFormat.RichText)
        bar = _Bar(row.probability, MALIGNANT_COLOUR if row.malignant else BENIGN_COLOUR)
        bar.setObjectName(f"classBar_{row.code}")
        bar.setToolTip(f"{row.name}: {format_percent(row.probability)}")
        pct = QLabel(format_percent(row.probability))
        pct.setObjectName(f"classPercent_{row.code}")
        pct.setAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        pct.setMinimumWidth(pct.fontMetrics().horizontalAdvance("100.0%") + 4)
        if top:
            for label in (name, pct):
                f = label.font()
                f.setBold(True)
                label.setFont(f)
        self._percent_labels[row.code] = pct
        widget = QWidget()
        widget.setObjectName(f"classRow_{row.code}")
        box = QVBoxLayout(widget)
        box.setContentsMargins(0, 0, 0, 0)
        box.setSpacing(1)
        box.addWidget(name)
        line = QHBoxLayout()
        line.setSpacing(self.fontMetrics().averageCharWidth())
        line.addWidget(bar, 1)
        line.addWidget(pct)
        box.addLayout(line)
        return widget

    def rows(self) -> list[ChartRow]:
        """The rows as shown, highest probability first."""
        return list(self._rows)

    def displayed(self) -> list[tuple[str, str, str]]:
        """(code, name, percentage text) per row, in display order (for tests)."""
        return [(r.code, r.name, self._percent_labels[r.code].text()) for r in self._rows]


# --------------------------------------------------------------------------------------------------
# Results panel
# --------------------------------------------------------------------------------------------------


class ResultsPanel(QWidget):
    """Everything about the current result. States: no model, no image, working, result, error."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("resultsPanel")
        self.banner = FlagBanner()

        self.state_label = QLabel()
        self.state_label.setObjectName("resultsState")
        self.state_label.setWordWrap(True)
        self.state_label.setFont(_scaled_font(self, 1.1))

        self.top_caption = QLabel("Most likely")
        self.top_caption.setObjectName("topCaption")
        self.top_label = QLabel()
        self.top_label.setObjectName("topClass")
        self.top_label.setAccessibleName("Most likely class")
        self.top_label.setWordWrap(True)
        self.top_label.setFont(_scaled_font(self, 1.4, bold=True))
        self.top_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)

        self.risk_label = QLabel()
        self.risk_label.setObjectName("riskLabel")
        self.risk_label.setAccessibleName("Malignancy risk")
        self.risk_label.setWordWrap(True)
        self.risk_label.setTextFormat(Qt.TextFormat.RichText)
        self.risk_label.setFont(_scaled_font(self, 1.1))
        self.risk_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.risk_frame = QFrame()
        self.risk_frame.setObjectName("riskFrame")
        risk_layout = QVBoxLayout(self.risk_frame)
        m = self.fontMetrics().height() // 2
        risk_layout.setContentsMargins(m, m, m, m)
        risk_layout.addWidget(self.risk_label)

        self.uncertainty_label = QLabel()
        self.uncertainty_label.setObjectName("uncertaintyLabel")
        self.uncertainty_label.setWordWrap(True)
        self.uncertainty_label.setTextFormat(Qt.TextFormat.RichText)

        self.chart_caption = QLabel("<b>Probability of each class</b>")
        self.chart = ProbabilityChart()

        self.calibration_label = QLabel()
        self.calibration_label.setObjectName("calibrationNote")
        self.calibration_label.setWordWrap(True)
        self.used_label = QLabel()
        self.used_label.setObjectName("usedMetadata")
        self.used_label.setWordWrap(True)
        for small in (self.calibration_label, self.used_label):
            small.setFont(_scaled_font(self, 0.95))

        self._result_box = QWidget()
        box = QVBoxLayout(self._result_box)
        box.setContentsMargins(0, 0, 0, 0)
        box.addWidget(self.top_caption)
        box.addWidget(self.top_label)
        box.addWidget(self.risk_frame)
        box.addWidget(self.uncertainty_label)
        box.addSpacing(self.fontMetrics().height() // 2)
        box.addWidget(self.chart_caption)
        box.addWidget(self.chart)
        box.addSpacing(self.fontMetrics().height() // 2)
        box.addWidget(self.calibration_label)
        box.addWidget(self.used_label)

        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.banner)
        layout.addWidget(self.state_label)
        layout.addWidget(self._result_box)
        self._prediction: Any = None
        self.show_message("No model loaded — File > Open model…")

    # -- states -----------------------------------------------------------------------------------
    def show_message(self, text: str) -> None:
        """An empty state (no model, no image, analysing...): the old result is cleared."""
        self._prediction = None
        self.banner.set_flags(())
        self._result_box.hide()
        self.state_label.setText(text)
        self.state_label.show()

    def set_status(self, text: str) -> None:
        """A line above the result (e.g. "Analysing…") that keeps the result shown."""
        self.state_label.setText(text)
        self.state_label.setVisible(bool(text))

    def prediction(self) -> Any:
        return self._prediction

    def has_result(self) -> bool:
        return self._prediction is not None

    def set_result(
        self,
        prediction: Any,
        card: Any,
        *,
        metadata_text: str = "",
        image_notes: Sequence[str] = (),
    ) -> None:
        """Show a Prediction from ``card``'s model."""
        self._prediction = prediction
        self.state_label.hide()
        self.banner.set_flags(getattr(prediction, "flags", ()) or ())
        malignant = set(card.malignant_codes)
        rows = [
            ChartRow(code, name, float(p), code in malignant)
            for code, name, p in zip(
                prediction.codes, prediction.names, prediction.probabilities, strict=True
            )
        ]
        self.chart.set_rows(rows)
        top_p = prediction.probability(prediction.top_code)
        self.top_label.setText(
            f"{prediction.top_name} ({prediction.top_code}) — {format_percent(top_p)}"
        )
        above = bool(prediction.above_threshold)
        verdict = "above" if above else "below"
        threshold_text = html.escape(card.threshold_description)
        self.risk_label.setText(
            f"<b>Malignancy risk {prediction.risk:.0%}</b> — <b>{verdict}</b> the threshold "
            f"{prediction.threshold:.0%} ({threshold_text})."
            + (
                "<br>At this operating point the model counts the lesion as possibly malignant."
                if above
                else "<br>Below the threshold does not rule out malignancy."
            )
        )
        self.risk_frame.setStyleSheet(
            "QFrame#riskFrame { background: #fdecea; border: 2px solid #c62828;"
            " border-radius: 6px; }"
            if above
            else "QFrame#riskFrame { background: #eef3f8; border: 1px solid #9fb3c8;"
            " border-radius: 6px; }"
        )
        self.risk_frame.setProperty("aboveThreshold", above)
        ent = float(prediction.entropy)
        words = "low" if ent < 0.35 else ("moderate" if ent < 0.6 else "high")
        self.uncertainty_label.setText(
            f"<b>Uncertainty: {words}</b> ({ent:.2f} normalised entropy; "
            "0 = certain, 1 = every class equally likely)"
        )
        self.calibration_label.setText(
            "Probabilities are calibrated on validation data (temperature scaling, "
            f"T = {card.temperature:.2f}); they may be over- or under-confident on images unlike "
            "the training data."
        )
        notes = " ".join(image_notes)
        self.used_label.setText((metadata_text + (" " + notes if notes else "")).strip())
        self.used_label.setVisible(bool(self.used_label.text()))
        self._result_box.show()

    # -- for tests --------------------------------------------------------------------------------
    def flags_shown(self) -> bool:
        return not self.banner.isHidden()
