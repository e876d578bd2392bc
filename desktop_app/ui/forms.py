"""The patient metadata form (built from the model card) and the case details for the report.

The choices come from the loaded model's metadata encoding (its sexes and sites), never from
constants here, so a model with another site list gets its own form. Invalid entries are marked in
the form (red frame, tooltip and a line of text under the field with the MetadataError message);
nothing is raised. The analysis keeps using the last valid value of each field (unknown until one
was entered), and the results panel says which values it used.
"""

from __future__ import annotations

from PySide6.QtCore import Signal
from PySide6.QtWidgets import (
    QComboBox,
    QFormLayout,
    QLabel,
    QLineEdit,
    QPlainTextEdit,
    QSizePolicy,
    QVBoxLayout,
    QWidget,
)

from desktop_app.core.errors import MetadataError
from desktop_app.core.metadata import (
    DEFAULT_ENCODING,
    UNKNOWN,
    MetadataEncoding,
    PatientMetadata,
    parse_age,
)

__all__ = ["CaseDetailsForm", "MetadataForm"]

_INVALID_STYLE = "border: 2px solid #c62828; border-radius: 3px; padding: 1px;"
_ERROR_LABEL_STYLE = "color: #b71c1c;"
IMAGE_ONLY_NOTE = "This model does not use age, sex or site: it reads the image only."


def _site_label(site: str, encoding: MetadataEncoding) -> str:
    if site == UNKNOWN:
        return "unknown"
    if site in encoding.partial_sites:
        return f"{site} (side not specified)"
    return site


class MetadataForm(QWidget):
    """Age, sex and anatomical site. ``metadataChanged`` carries the new valid PatientMetadata."""

    metadataChanged = Signal(object)
    validityChanged = Signal(bool)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("metadataForm")
        self._encoding = DEFAULT_ENCODING
        self._enabled_by_model = True
        self._last_age: float | None = None
        self._metadata = PatientMetadata()
        self._errors: dict[str, str] = {}

        self.age_edit = QLineEdit()
        self.age_edit.setObjectName("ageEdit")
        self.age_edit.setAccessibleName("Age in years")
        self.age_edit.setPlaceholderText("unknown")
        self.age_edit.setClearButtonEnabled(True)
        self.age_edit.setToolTip("Age in years (0-120). Leave empty if unknown.")
        self.age_error = QLabel()
        self.age_error.setObjectName("ageError")
        self.age_error.setWordWrap(True)
        self.age_error.setStyleSheet(_ERROR_LABEL_STYLE)
        self.age_error.hide()

        self.sex_combo = QComboBox()
        self.sex_combo.setObjectName("sexCombo")
        self.sex_combo.setAccessibleName("Sex")
        self.site_combo = QComboBox()
        self.site_combo.setObjectName("siteCombo")
        self.site_combo.setAccessibleName("Anatomical site")
        self.site_combo.setSizeAdjustPolicy(
            QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon
        )
        self.site_combo.setMinimumContentsLength(12)
        self.field_error = QLabel()
        self.field_error.setObjectName("metadataError")
        self.field_error.setWordWrap(True)
        self.field_error.setStyleSheet(_ERROR_LABEL_STYLE)
        self.field_error.hide()

        self.note = QLabel(IMAGE_ONLY_NOTE)
        self.note.setObjectName("metadataNote")
        self.note.setWordWrap(True)
        self.note.hide()

        form = QFormLayout()
        form.setFieldGrowthPolicy(QFormLayout.FieldGrowthPolicy.AllNonFixedFieldsGrow)
        form.addRow("&Age (years):", self.age_edit)
        form.addRow("", self.age_error)
        form.addRow("&Sex:", self.sex_combo)
        form.addRow("Anatomical &site:", self.site_combo)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.note)
        layout.addLayout(form)
        layout.addWidget(self.field_error)

        self._fill_choices()
        self.age_edit.textChanged.connect(self._revalidate)
        self.sex_combo.currentIndexChanged.connect(self._revalidate)
        self.site_combo.currentIndexChanged.connect(self._revalidate)

    # -- model ------------------------------------------------------------------------------------
    def set_encoding(self, encoding: MetadataEncoding | None, *, model_loaded: bool = True) -> None:
        """Rebuild the choices for a model. ``encoding=None`` with a model = image-only model."""
        image_only = model_loaded and encoding is None
        self._encoding = encoding or DEFAULT_ENCODING
        self._fill_choices()
        self._enabled_by_model = not image_only
        for widget in (self.age_edit, self.sex_combo, self.site_combo):
            widget.setEnabled(not image_only)
        self.note.setVisible(image_only)
        self._revalidate()

    def uses_metadata(self) -> bool:
        return self._enabled_by_model

    def _fill_choices(self) -> None:
        sex = self.sex_combo.currentData()
        site = self.site_combo.currentData()
        enc = self._encoding
        blockers = (self.sex_combo.blockSignals(True), self.site_combo.blockSignals(True))
        try:
            self.sex_combo.clear()
            self.sex_combo.addItem("unknown", UNKNOWN)
            for s in enc.sexes:
                self.sex_combo.addItem(s, s)
            self.site_combo.clear()
            self.site_combo.addItem("unknown", UNKNOWN)
            for s in enc.site_choices():
                if s != UNKNOWN:
                    self.site_combo.addItem(_site_label(s, enc), s)
            self._select(self.sex_combo, sex)
            self._select(self.site_combo, site)
        finally:
            self.sex_combo.blockSignals(blockers[0])
            self.site_combo.blockSignals(blockers[1])

    @staticmethod
    def _select(combo: QComboBox, value: object) -> bool:
        index = combo.findData(value) if value is not None else -1
        combo.setCurrentIndex(max(0, index))
        return index >= 0

    # -- values -----------------------------------------------------------------------------------
    def set_values(
        self, age: float | str | None = None, sex: str = UNKNOWN, site: str = UNKNOWN
    ) -> None:
        """Fill the form (for scripts and tests); invalid values are marked like typed ones."""
        self.age_edit.setText(
            "" if age is None else (f"{age:g}" if isinstance(age, float | int) else str(age))
        )
        if not self._select(self.sex_combo, sex):
            self._mark("sex", f"This model does not know the sex {sex!r}.")
        if not self._select(self.site_combo, site):
            self._mark("site", f"This model does not know the site {site!r}.")

    def metadata(self) -> PatientMetadata:
        """The metadata the analysis uses: the last valid value of every field (unknown for an
        image-only model)."""
        return self._metadata if self._enabled_by_model else PatientMetadata()

    def errors(self) -> dict[str, str]:
        """Field -> message for every entry that is currently invalid."""
        return dict(self._errors)

    def is_valid(self) -> bool:
        return not self._errors

    def _revalidate(self, *_args: object) -> None:
        was_valid = not self._errors
        self._errors = {}
        text = self.age_edit.text()
        try:
            age = parse_age(text)
        except MetadataError as exc:
            self._errors["age"] = str(exc)
            age = self._last_age
        else:
            self._last_age = age
        sex = self.sex_combo.currentData() or UNKNOWN
        site = self.site_combo.currentData() or UNKNOWN
        try:
            meta = PatientMetadata(age=age, sex=sex, site=site)
            self._encoding.encode(meta)
        except MetadataError as exc:
            self._errors[exc.field] = str(exc)
            meta = self._metadata
        self._show_errors()
        if was_valid != (not self._errors):
            self.validityChanged.emit(not self._errors)
        if meta != self._metadata:
            self._metadata = meta
            if self._enabled_by_model:
                self.metadataChanged.emit(meta)

    def _mark(self, field: str, message: str) -> None:
        self._errors[field] = message
        self._show_errors()
        self.validityChanged.emit(False)

    def _show_errors(self) -> None:
        age_msg = self._errors.get("age")
        self.age_edit.setStyleSheet(_INVALID_STYLE if age_msg else "")
        self.age_edit.setToolTip(age_msg or "Age in years (0-120). Leave empty if unknown.")
        if age_msg:
            used = "unknown" if self._last_age is None else f"{self._last_age:g}"
            self.age_error.setText(f"{age_msg} The analysis uses the last valid age ({used}).")
        self.age_error.setVisible(bool(age_msg))
        self.sex_combo.setStyleSheet(_INVALID_STYLE if "sex" in self._errors else "")
        self.site_combo.setStyleSheet(_INVALID_STYLE if "site" in self._errors else "")
        other = [m for f, m in self._errors.items() if f != "age"]
        self.field_error.setText(" ".join(other))
        self.field_error.setVisible(bool(other))


class CaseDetailsForm(QWidget):
    """Case ID, clinician and notes: printed on the report, never used by the model."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("caseDetailsForm")
        self.case_id_edit = QLineEdit()
        self.case_id_edit.setObjectName("caseIdEdit")
        self.case_id_edit.setAccessibleName("Case ID")
        self.case_id_edit.setPlaceholderText("optional, e.g. a pseudonymous case number")
        self.clinician_edit = QLineEdit()
        self.clinician_edit.setObjectName("clinicianEdit")
        self.clinician_edit.setAccessibleName("Clinician name")
        self.clinician_edit.setPlaceholderText("optional")
        self.notes_edit = QPlainTextEdit()
        self.notes_edit.setObjectName("notesEdit")
        self.notes_edit.setAccessibleName("Clinician notes")
        self.notes_edit.setPlaceholderText("Clinical notes for the report (optional)")
        self.notes_edit.setTabChangesFocus(True)
        lines = 4
        height = self.notes_edit.fontMetrics().lineSpacing() * lines + 12
        self.notes_edit.setMinimumHeight(height)
        self.notes_edit.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Preferred)
        form = QFormLayout(self)
        form.setContentsMargins(0, 0, 0, 0)
        form.setFieldGrowthPolicy(QFormLayout.FieldGrowthPolicy.AllNonFixedFieldsGrow)
        form.addRow("Case &ID:", self.case_id_edit)
        form.addRow("&Clinician:", self.clinician_edit)
        form.addRow("&Notes:", self.notes_edit)

    def case_id(self) -> str:
        return self.case_id_edit.text().strip()

    def clinician(self) -> str:
        return self.clinician_edit.text().strip()

    def notes(self) -> str:
        return self.notes_edit.toPlainText().strip()
