"""Dialogs: model information (from the card), intended use (first run), about.

:func:`model_info_html` builds the model information page from the card only; it is a plain
function (no widgets) so tests and the report can check what it says.
"""

from __future__ import annotations

import html
from collections.abc import Mapping
from typing import Any

from PySide6.QtCore import Qt
from PySide6.QtWidgets import (
    QCheckBox,
    QDialog,
    QDialogButtonBox,
    QLabel,
    QTextBrowser,
    QVBoxLayout,
    QWidget,
)

from desktop_app import INTENDED_USE, __version__

__all__ = ["IntendedUseDialog", "ModelInfoDialog", "about_html", "model_info_html"]

_METRICS = (
    ("balanced_accuracy", "Balanced multiclass accuracy (BMA)", "{:.3f}"),
    ("auc_macro", "Macro-average AUC (one-vs-rest)", "{:.3f}"),
    ("accuracy", "Accuracy", "{:.3f}"),
    ("top2", "Top-2 accuracy", "{:.3f}"),
    ("top3", "Top-3 accuracy", "{:.3f}"),
    ("ece_after", "Expected calibration error (after scaling)", "{:.3f}"),
)


def _e(value: Any) -> str:
    return html.escape(str(value))


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _ci_text(test: Mapping[str, Any], key: str) -> str:
    ci = test.get("ci")
    if not isinstance(ci, Mapping):
        return ""
    entry = ci.get(key)
    if not isinstance(entry, Mapping):
        return ""
    low, high = entry.get("low"), entry.get("high")
    if _number(low) and _number(high):
        level = 1 - float(ci.get("alpha", 0.05))
        return f" ({level:.0%} CI {low:.3f}–{high:.3f})"
    return ""


def _metrics_html(metrics: Mapping[str, Any]) -> str:
    test = metrics.get("test") if isinstance(metrics, Mapping) else None
    if not isinstance(test, Mapping) or not test:
        return "<p>No test metrics in this model's card.</p>"
    rows = []
    for key, label, fmt in _METRICS:
        value = test.get(key)
        if _number(value):
            rows.append(
                f"<tr><td>{_e(label)}</td><td>{fmt.format(value)}{_ci_text(test, key)}</td></tr>"
            )
    malignant = test.get("malignant")
    if isinstance(malignant, Mapping):
        for key, label in (
            ("sensitivity", "Sensitivity to malignant lesions at the threshold"),
            ("specificity", "Specificity at the threshold"),
            ("auc", "Malignant vs benign AUC"),
        ):
            value = malignant.get(key)
            if _number(value):
                ci = _ci_text(test, "malignant_auc") if key == "auc" else ""
                rows.append(f"<tr><td>{_e(label)}</td><td>{value:.3f}{ci}</td></tr>")
    n = test.get("n")
    split = metrics.get("evaluate_split", "test")
    intro = (
        f"<p>On the held-out {_e(split)} split"
        + (f" ({int(n)} images)" if _number(n) else "")
        + ":</p>"
    )
    if not rows:
        return intro + "<p>(no summary metrics recorded)</p>"
    return intro + "<table cellspacing='0' cellpadding='3'>" + "".join(rows) + "</table>"


def _training_data_html(data: Mapping[str, Any]) -> str:
    if not isinstance(data, Mapping) or not data:
        return "<p>Not described in the card.</p>"
    parts = []
    dataset = data.get("dataset") or data.get("datasets")
    if dataset:
        parts.append(f"<p>Data set: <b>{_e(dataset)}</b></p>")
    counts = data.get("counts")
    if (
        isinstance(counts, Mapping)
        and counts
        and all(isinstance(v, Mapping) for v in counts.values())
    ):
        order = {"train": 0, "val": 1, "validation": 1, "test": 2}
        splits = sorted(counts, key=lambda k: (order.get(str(k), 3), str(k)))
        classes = sorted({c for v in counts.values() for c in v})
        head = "".join(f"<th align='right'>{_e(s)}</th>" for s in splits)
        body = "".join(
            f"<tr><td>{_e(c)}</td>"
            + "".join(f"<td align='right'>{_e(counts[s].get(c, 0))}</td>" for s in splits)
            + "</tr>"
            for c in classes
        )
        totals = "".join(
            f"<td align='right'><b>{sum(int(v) for v in counts[s].values() if _number(v))}</b></td>"
            for s in splits
        )
        parts.append(
            "<table cellspacing='0' cellpadding='2'><tr><th align='left'>class</th>"
            f"{head}</tr>{body}<tr><td><b>total</b></td>{totals}</tr></table>"
        )
    other = {k: v for k, v in data.items() if k not in ("dataset", "datasets", "counts")}
    if other:
        parts.append(
            "<p>"
            + "; ".join(f"{_e(k.replace('_', ' '))}: {_e(v)}" for k, v in other.items())
            + "</p>"
        )
    return "".join(parts)


def model_info_html(engine: Any) -> str:
    """The model information page, from the card (and the file's SHA-256 and provider)."""
    card = engine.card
    raw = card.raw
    arch = raw.get("architecture", {})
    spec = card.preprocess
    uses = "age, sex and anatomical site" if card.uses_metadata else "none (image only)"
    malignant = "<span style='color:#b71c1c'>malignant</span>"
    classes = "".join(
        f"<tr><td><b>{_e(c.code)}</b></td><td>{_e(c.name)}</td>"
        f"<td>{malignant if c.malignant else 'benign'}</td></tr>"
        for c in card.classes
    )
    limitations = "".join(f"<li>{_e(item)}</li>" for item in raw.get("limitations", []))
    params = arch.get("parameters")
    params_text = f", {params:,} parameters" if _number(params) and params else ""
    file_name = engine.path.name if getattr(engine, "path", None) else "(loaded from memory)"
    return f"""
<h2>{_e(card.name)} <small>version {_e(card.version)}</small></h2>
<p><b>Intended use.</b> {_e(raw.get("intended_use", INTENDED_USE))}</p>
<table cellspacing="0" cellpadding="3">
<tr><td>Created</td><td>{_e(raw.get("created", "?"))} (trainer {_e(raw.get("trainer_version", "?"))})</td></tr>
<tr><td>File</td><td>{_e(file_name)}</td></tr>
<tr><td>SHA-256</td><td><code>{_e(engine.sha256)}</code></td></tr>
<tr><td>Runs on</td><td>{_e(engine.provider)}{(" — " + _e(engine.provider_note)) if engine.provider_note else ""}</td></tr>
<tr><td>Backbone</td><td>{_e(arch.get("backbone", "?"))}{params_text}</td></tr>
<tr><td>Input</td><td>{spec.width} × {spec.height} pixels RGB, resize: {_e(spec.resize)}</td></tr>
<tr><td>Patient metadata used</td><td>{uses}</td></tr>
<tr><td>Calibration</td><td>temperature scaling, T = {card.temperature:.3f}</td></tr>
<tr><td>Malignancy threshold</td><td>{card.threshold:.1%} — {_e(card.threshold_description)}</td></tr>
<tr><td>Licence</td><td>{_e(raw.get("licence", "?"))}</td></tr>
</table>
<h3>Classes</h3>
<table cellspacing="0" cellpadding="3">{classes}</table>
<h3>Test metrics</h3>
{_metrics_html(raw.get("metrics", {}))}
<h3>Training data</h3>
{_training_data_html(raw.get("training_data", {}))}
<h3>Limitations</h3>
<ul>{limitations or "<li>None stated in the card.</li>"}</ul>
"""


def about_html() -> str:
    return (
        f"<h3>LesionLens {__version__}</h3>"
        "<p>Offline decision support for clinicians reading dermoscopy images of skin lesions.</p>"
        f"<p>{_e(INTENDED_USE)}</p>"
        "<p>No image or patient data leaves this computer; LesionLens makes no network calls.</p>"
        "<p>Code: Apache-2.0. Each model carries its own licence (Help &gt; Model information).</p>"
    )


class ModelInfoDialog(QDialog):
    def __init__(self, engine: Any, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("modelInfoDialog")
        self.setWindowTitle(f"Model information — {engine.card.name}")
        self.browser = QTextBrowser()
        self.browser.setObjectName("modelInfoText")
        self.browser.setOpenLinks(False)
        self.browser.setHtml(model_info_html(engine))
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Close)
        buttons.rejected.connect(self.reject)
        buttons.accepted.connect(self.accept)
        layout = QVBoxLayout(self)
        layout.addWidget(self.browser)
        layout.addWidget(buttons)
        em = self.fontMetrics().averageCharWidth()
        line = self.fontMetrics().lineSpacing()
        self.resize(em * 130, line * 44)


INTENDED_USE_HTML = f"""
<h3>Before you use LesionLens</h3>
<p>{_e(INTENDED_USE)}</p>
<ul>
<li>It shows what a machine-learning model estimates from a dermoscopy image (and, if the model uses
them, the patient's age, sex and lesion site). The estimate can be wrong, confidently so.</li>
<li>The decision - to reassure, follow up, excise or refer - stays with you and your clinical
examination.</li>
<li>A model only knows the lesion types it was trained on and the kind of images it saw; see
Help &gt; Model information for its data, test results and limitations.</li>
<li>Everything stays on this computer: LesionLens makes no network connections.</li>
</ul>
"""


class IntendedUseDialog(QDialog):
    """Shown until acknowledged once: OK is enabled only after ticking the box."""

    def __init__(self, parent: QWidget | None = None, *, require_ack: bool = True) -> None:
        super().__init__(parent)
        self.setObjectName("intendedUseDialog")
        self.setWindowTitle("Intended use — LesionLens")
        self.setModal(True)
        text = QLabel(INTENDED_USE_HTML)
        text.setObjectName("intendedUseText")
        text.setWordWrap(True)
        text.setTextFormat(Qt.TextFormat.RichText)
        self.checkbox = QCheckBox(
            "I understand: LesionLens is decision support for trained clinicians, not a diagnosis."
        )
        self.checkbox.setObjectName("intendedUseAck")
        self.buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Ok)
        if require_ack:
            self.buttons.addButton(QDialogButtonBox.StandardButton.Cancel)
            ok = self.buttons.button(QDialogButtonBox.StandardButton.Ok)
            ok.setText("Continue")
            ok.setEnabled(False)
            self.checkbox.toggled.connect(ok.setEnabled)
        else:
            self.checkbox.hide()
        self.buttons.accepted.connect(self.accept)
        self.buttons.rejected.connect(self.reject)
        layout = QVBoxLayout(self)
        layout.addWidget(text)
        layout.addWidget(self.checkbox)
        layout.addWidget(self.buttons)
        self.resize(self.fontMetrics().averageCharWidth() * 80, self.sizeHint().height())

    def acknowledge(self) -> None:
        """Tick the box and continue (what the user does; used by tests and scripts)."""
        self.checkbox.setChecked(True)
        self.accept()
