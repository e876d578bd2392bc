"""The single-case window: open an image, enter what is known, read the answer and its caveats,
look at the Grad-CAM, print a report.

Layout: the intended-use strip on top, an inline message banner under it (errors about files never
block the window), then a splitter: the original and the overlay side by side with their controls
on the left; patient metadata, the result and the report details on the right. The status bar
shows a busy indicator while background work runs, the model (name, version) and where it runs.

Every slow step runs through :class:`~desktop_app.ui.workers.TaskRunner`, one channel each:
``image`` (decoding), ``model`` (loading and verifying a model file), ``analysis`` (inference),
``overlay`` (rendering the heatmap), ``report`` and ``export`` (writing files). A newer request on a
channel supersedes the older one. The ``op`` callables below take plain values and return plain
values; only the ``_on_*`` callbacks touch widgets.

Huge images: the window decodes at most :data:`imaging.ANALYSIS_MAX_SIDE` pixels on the longest
side (JPEGs are decoded at reduced scale, so an 8000 x 6000 photo opens in a fraction of a second)
and the model is fed exactly that copy, as the CLI and the batch are: the same file gives the same
answer everywhere. The heatmap is drawn over the same copy.

Public methods (``open_image``, ``open_model``, ``export_report``, ``save_heatmap_png``,
``set_provider``) are what the menus call after their file dialogs, and what tests and scripts call
directly.
"""

from __future__ import annotations

import re
import sys
import traceback
from dataclasses import dataclass
from datetime import date
from functools import partial
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PySide6.QtCore import QSettings, QSize, Qt, QTimer
from PySide6.QtGui import QAction, QActionGroup, QCloseEvent, QKeySequence, QPixmap
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFileDialog,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QMainWindow,
    QMenu,
    QMessageBox,
    QProgressBar,
    QPushButton,
    QScrollArea,
    QSizePolicy,
    QSlider,
    QSplitter,
    QTabWidget,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from desktop_app.core.atomic import atomic_write_bytes
from desktop_app.core.engine import Engine, Prediction
from desktop_app.core.errors import LesionLensError
from desktop_app.core.heatmap import colorbar, heatmap_on_image, overlay
from desktop_app.core.imaging import ANALYSIS_MAX_SIDE, SUPPORTED_SUFFIXES, LoadedImage, load_image
from desktop_app.core.metadata import PatientMetadata
from desktop_app.resources import default_model_path, resources_dir
from desktop_app.ui.batch_view import BatchView
from desktop_app.ui.dialogs import IntendedUseDialog, ModelInfoDialog, about_html
from desktop_app.ui.forms import CaseDetailsForm, MetadataForm
from desktop_app.ui.image_view import ComparisonView, rgb_to_qimage
from desktop_app.ui.results import ResultsPanel
from desktop_app.ui.settings import PROVIDERS, AppSettings
from desktop_app.ui.widgets import IntendedUseStrip, MessageBanner
from desktop_app.ui.workers import TaskRunner

__all__ = [
    "DISPLAY_MAX_SIDE",
    "Analysis",
    "MainWindow",
    "OpenedImage",
    "analyse_case",
    "render_overlay",
]

DISPLAY_MAX_SIDE = ANALYSIS_MAX_SIDE
ANALYSIS_DEBOUNCE_MS = 300
NO_MODEL_TEXT = "No model loaded — File > Open model…"
NO_IMAGE_TEXT = (
    "Open a dermoscopy image to analyse it: File > Open image… (Ctrl+O), or drag the file onto "
    "the window."
)
_IMAGE_FILTER = (
    "Images (" + " ".join(f"*{s}" for s in sorted(SUPPORTED_SUFFIXES)) + ");;All files (*)"
)


# --------------------------------------------------------------------------------------------------
# Plain values and the work done off the GUI thread (no Qt in here)
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class OpenedImage:
    """An image file as the window holds it: the display copy (longest side <= 2048)."""

    path: Path
    loaded: LoadedImage

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def rgb(self) -> np.ndarray:
        return self.loaded.rgb


@dataclass(frozen=True, eq=False)
class Analysis:
    """One prediction and everything it was computed from."""

    image: OpenedImage
    engine: Engine
    metadata: PatientMetadata
    prediction: Prediction


def analyse_case(engine: Engine, image: OpenedImage, metadata: PatientMetadata) -> Analysis:
    """Worker side of an analysis: the same road as the CLI and the batch."""
    rgb = image.rgb
    used = metadata if engine.card.uses_metadata else PatientMetadata()
    pred = engine.predict_one(rgb, used if engine.card.uses_metadata else None)
    return Analysis(image, engine, used, pred)


def render_overlay(
    analysis: Analysis, code: str, opacity: float, heat: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Worker side of the heatmap view: (heat mapped onto the display image, overlay RGB)."""
    rgb = analysis.image.rgb
    if heat is None:
        heat = heatmap_on_image(
            analysis.prediction.heatmap(code),
            (rgb.shape[1], rgb.shape[0]),
            analysis.engine.card.preprocess,
        )
    return heat, overlay(rgb, heat, opacity)


def _png_bytes(rgb: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if not ok:  # pragma: no cover - OpenCV always encodes uint8 RGB
        raise LesionLensError("The heatmap could not be encoded as PNG.")
    return buf.tobytes()


def _save_png(path: Path, rgb: np.ndarray) -> Path:
    try:
        atomic_write_bytes(path, _png_bytes(rgb))
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise LesionLensError(
            f"The heatmap could not be saved as '{path.name}' ({reason})."
        ) from None
    return path


def describe_error(exc: BaseException) -> str:
    """The user-facing text of a failure: LesionLens errors as written, anything else marked."""
    if isinstance(exc, LesionLensError):
        return str(exc)
    traceback.print_exception(exc, file=sys.stderr)  # a bug: say where (no patient data in it)
    return f"Unexpected error ({type(exc).__name__}): {exc}"


def default_report_name(case_id: str, when: date | None = None) -> str:
    """``<case id>_<yyyy-mm-dd>.pdf`` with unsafe characters replaced; ``lesionlens_...`` without ID."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", case_id.strip()).strip("._") or "lesionlens"
    return f"{stem}_{(when or date.today()).isoformat()}.pdf"


# --------------------------------------------------------------------------------------------------
# The window
# --------------------------------------------------------------------------------------------------


class MainWindow(QMainWindow):
    """Single-case review. See the module docstring for the threading rules."""

    def __init__(
        self,
        settings: QSettings | None = None,
        *,
        model_path: str | Path | None = None,
        load_default_model: bool = True,
        image_path: str | Path | None = None,
        parent: QWidget | None = None,
    ) -> None:
        super().__init__(parent)
        self.setObjectName("mainWindow")
        self.setWindowTitle("LesionLens")
        self.setAcceptDrops(True)
        self.settings = AppSettings(settings)
        self.tasks = TaskRunner(self)
        self.engine: Engine | None = None
        self._engine_provider: str | None = None
        self.image: OpenedImage | None = None
        self.analysis: Analysis | None = None
        self._class_pinned = False
        self._heat_cache: tuple[int, str, np.ndarray] | None = None
        self._pending_export: Path | None = None
        self.last_error_box: QMessageBox | None = None
        self.last_report: Path | None = None

        self._analysis_timer = QTimer(self)
        self._analysis_timer.setSingleShot(True)
        self._analysis_timer.setInterval(ANALYSIS_DEBOUNCE_MS)
        self._analysis_timer.timeout.connect(self.analyse_now)

        self._build_central()
        self._build_actions()
        self._build_menus()
        self._build_status_bar()
        self._restore_geometry()
        self.tasks.busyChanged.connect(self._on_busy)
        self.tasks.activityChanged.connect(self.activity_label.setText)

        self._update_model_widgets()
        self._refresh_results_state()
        initial = model_path
        if initial is None and load_default_model and default_model_path().is_file():
            initial = default_model_path()
        if initial is not None:
            self.open_model(initial)
        if image_path is not None:
            self.open_image(image_path)

    # ---------------------------------------------------------------------------------------------
    # Building
    # ---------------------------------------------------------------------------------------------
    def _build_central(self) -> None:
        em = self.fontMetrics().averageCharWidth()
        line = self.fontMetrics().height()

        self.reminder = IntendedUseStrip()
        self.banner = MessageBanner()

        # -- left: the images and their controls --
        self.view = ComparisonView()
        self.view.zoomChanged.connect(self._on_zoom_changed)

        self.heatmap_check = QCheckBox("&Heatmap")
        self.heatmap_check.setObjectName("heatmapToggle")
        self.heatmap_check.setToolTip("Show the Grad-CAM heatmap beside the image (H)")
        self.heatmap_check.setChecked(self.settings.show_heatmap)
        self.class_combo = QComboBox()
        self.class_combo.setObjectName("classCombo")
        self.class_combo.setAccessibleName("Class whose heatmap is shown")
        self.class_combo.setToolTip("The class whose Grad-CAM heatmap is shown")
        self.class_combo.setSizeAdjustPolicy(
            QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon
        )
        self.class_combo.setMinimumContentsLength(18)
        self.class_combo.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        self.class_combo.setEnabled(False)
        self.opacity_slider = QSlider(Qt.Orientation.Horizontal)
        self.opacity_slider.setObjectName("opacitySlider")
        self.opacity_slider.setAccessibleName("Heatmap opacity")
        self.opacity_slider.setRange(0, 100)
        self.opacity_slider.setSingleStep(5)
        self.opacity_slider.setPageStep(10)
        self.opacity_slider.setValue(self.settings.heatmap_opacity)
        self.opacity_slider.setMinimumWidth(em * 12)
        self.opacity_label = QLabel()
        self.opacity_label.setObjectName("opacityLabel")
        self.opacity_label.setMinimumWidth(self.fontMetrics().horizontalAdvance("100%") + 4)
        legend = QLabel()
        legend.setObjectName("heatmapLegend")
        dpr = max(1.0, self.devicePixelRatioF())  # sharp at 200 % scaling too
        bar = colorbar(round(max(6, line // 2) * dpr), round(em * 10 * dpr))
        legend_pixmap = QPixmap.fromImage(rgb_to_qimage(np.ascontiguousarray(bar)))
        legend_pixmap.setDevicePixelRatio(dpr)
        legend.setPixmap(legend_pixmap)
        legend.setToolTip("Heatmap colours: blue = little influence, red = most influence")
        self.zoom_label = QLabel()
        self.zoom_label.setObjectName("zoomLabel")
        self.zoom_label.setMinimumWidth(self.fontMetrics().horizontalAdvance("Fit (100%)") + 4)

        row1 = QHBoxLayout()
        row1.addWidget(self.heatmap_check)
        row1.addSpacing(em)
        class_label = QLabel("&Class:")
        class_label.setBuddy(self.class_combo)
        row1.addWidget(class_label)
        row1.addWidget(self.class_combo, 1)
        row2 = QHBoxLayout()
        opacity_caption = QLabel("&Opacity:")
        opacity_caption.setBuddy(self.opacity_slider)
        row2.addWidget(opacity_caption)
        row2.addWidget(self.opacity_slider, 1)
        row2.addWidget(self.opacity_label)
        row2.addWidget(QLabel("low"))
        row2.addWidget(legend)
        row2.addWidget(QLabel("high"))
        row2.addSpacing(em * 2)
        self._zoom_buttons = QHBoxLayout()
        row2.addLayout(self._zoom_buttons)
        row2.addWidget(self.zoom_label)

        left = QWidget()
        left_layout = QVBoxLayout(left)
        left_layout.setContentsMargins(0, 0, 0, 0)
        left_layout.addWidget(self.view, 1)
        left_layout.addLayout(row1)
        left_layout.addLayout(row2)

        # -- right: metadata, result, report --
        self.metadata_form = MetadataForm()
        self.case_form = CaseDetailsForm()
        self.results = ResultsPanel()
        self.export_button = QPushButton("Export PDF report…")
        self.export_button.setObjectName("exportButton")
        self.save_heatmap_button = QPushButton("Save heatmap as PNG…")
        self.save_heatmap_button.setObjectName("saveHeatmapButton")

        patient_box = QGroupBox("Patient and lesion")
        QVBoxLayout(patient_box).addWidget(self.metadata_form)
        result_box = QGroupBox("Result")
        QVBoxLayout(result_box).addWidget(self.results)
        report_box = QGroupBox("Report")
        report_layout = QVBoxLayout(report_box)
        report_layout.addWidget(self.case_form)
        buttons = QHBoxLayout()
        buttons.addWidget(self.export_button)
        buttons.addWidget(self.save_heatmap_button)
        buttons.addStretch(1)
        report_layout.addLayout(buttons)

        right_inner = QWidget()
        right_inner.setObjectName("sidePanel")
        right_layout = QVBoxLayout(right_inner)
        right_layout.addWidget(patient_box)
        right_layout.addWidget(result_box)
        right_layout.addWidget(report_box)
        right_layout.addStretch(1)
        self.side_scroll = QScrollArea()
        self.side_scroll.setObjectName("sideScroll")
        self.side_scroll.setWidgetResizable(True)
        self.side_scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.side_scroll.setWidget(right_inner)
        scrollbar = self.side_scroll.verticalScrollBar().sizeHint().width()
        self.side_scroll.setMinimumWidth(
            max(em * 44, right_inner.minimumSizeHint().width() + scrollbar + 4)
        )

        self.splitter = QSplitter(Qt.Orientation.Horizontal)
        self.splitter.setObjectName("mainSplitter")
        self.splitter.addWidget(left)
        self.splitter.addWidget(self.side_scroll)
        self.splitter.setStretchFactor(0, 3)
        self.splitter.setStretchFactor(1, 2)
        self.splitter.setChildrenCollapsible(False)

        central = QWidget()
        layout = QVBoxLayout(central)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(0)
        layout.addWidget(self.reminder)
        body = QVBoxLayout()
        margin = line // 2
        body.setContentsMargins(margin, margin, margin, 0)
        body.addWidget(self.banner)
        # The single case and the batch review (a whole folder) share the window, one tab each.
        self.batch_view = BatchView(self.settings.q)
        self.tabs = QTabWidget()
        self.tabs.setObjectName("viewTabs")
        self.tabs.setDocumentMode(True)
        self.tabs.addTab(self.splitter, "Single case")
        self.tabs.addTab(self.batch_view, "Batch review")
        self.tabs.setTabToolTip(0, "One image: result, heatmap and report (Ctrl+1)")
        self.tabs.setTabToolTip(1, "A whole folder of images as a triage list (Ctrl+B)")
        body.addWidget(self.tabs, 1)
        layout.addLayout(body, 1)
        self.setCentralWidget(central)

        self.heatmap_check.toggled.connect(self.set_heatmap_visible)
        self.opacity_slider.valueChanged.connect(self._on_opacity_changed)
        self.class_combo.activated.connect(self._on_class_chosen)
        self.metadata_form.metadataChanged.connect(self._on_metadata_changed)
        self.export_button.clicked.connect(self._action_export_report)
        self.save_heatmap_button.clicked.connect(self._action_save_heatmap)
        self.batch_view.caseRequested.connect(self.open_case)
        self.batch_view.progressText.connect(self._on_batch_progress_text)
        self._update_opacity_label()
        self.view.set_overlay_visible(self.heatmap_check.isChecked())
        self.opacity_slider.setEnabled(self.heatmap_check.isChecked())

    def _action(
        self,
        text: str,
        slot: Any,
        shortcut: QKeySequence | str | list | None = None,
        name: str = "",
        tip: str = "",
    ) -> QAction:
        action = QAction(text, self)
        if shortcut is not None:
            if isinstance(shortcut, list):
                action.setShortcuts([QKeySequence(s) for s in shortcut])
            else:
                action.setShortcut(QKeySequence(shortcut))
        if name:
            action.setObjectName(name)
        if tip:
            action.setStatusTip(tip)
            action.setToolTip(tip)
        action.triggered.connect(slot)
        self.addAction(action)  # shortcuts work even while menus are closed
        return action

    def _build_actions(self) -> None:
        a = self._action
        self.open_image_action = a(
            "&Open image…",
            self._action_open_image,
            QKeySequence.StandardKey.Open,
            "actionOpenImage",
        )
        self.open_model_action = a("Open &model…", self._action_open_model, None, "actionOpenModel")
        self.batch_action = a(
            "&Batch review…",
            self.show_batch_view,
            "Ctrl+B",
            "actionBatchReview",
            "Analyse a whole folder of images and review them as a triage list",
        )
        self.single_case_action = a(
            "Single &case", self.show_single_case, "Ctrl+1", "actionSingleCase"
        )
        self.export_report_action = a(
            "&Export report…", self._action_export_report, "Ctrl+E", "actionExportReport"
        )
        self.save_heatmap_action = a(
            "&Save heatmap as PNG…", self._action_save_heatmap, "Ctrl+Shift+S", "actionSaveHeatmap"
        )
        self.quit_action = a("&Quit", self.close, "Ctrl+Q", "actionQuit")
        self.show_heatmap_action = a(
            "Show &heatmap", lambda checked=False: None, "H", "actionShowHeatmap"
        )
        self.show_heatmap_action.setCheckable(True)
        self.show_heatmap_action.setChecked(self.heatmap_check.isChecked())
        self.show_heatmap_action.toggled.connect(self.heatmap_check.setChecked)
        self.heatmap_check.toggled.connect(self.show_heatmap_action.setChecked)
        self.zoom_in_action = a("Zoom &in", self.view.zoom_in, ["Ctrl+=", "Ctrl++"], "actionZoomIn")
        self.zoom_out_action = a("Zoom &out", self.view.zoom_out, "Ctrl+-", "actionZoomOut")
        self.fit_action = a("&Fit to window", self.view.fit, "Ctrl+0", "actionFit")
        self.model_info_action = a(
            "&Model information…", self.show_model_info, "F1", "actionModelInfo"
        )
        self.intended_use_action = a(
            "&Intended use…", lambda: self.show_intended_use(), None, "actionIntendedUse"
        )
        self.about_action = a("&About LesionLens", self.show_about, None, "actionAbout")
        self.provider_group = QActionGroup(self)
        self.provider_group.setExclusive(True)
        self.provider_actions: dict[str, QAction] = {}
        labels = {"auto": "&Automatic (GPU if usable)", "cpu": "&CPU", "cuda": "GPU (CU&DA)"}
        for choice in PROVIDERS:
            action = QAction(labels[choice], self)
            action.setObjectName(f"actionProvider_{choice}")
            action.setCheckable(True)
            action.setChecked(choice == self.settings.provider)
            action.triggered.connect(partial(self.set_provider, choice))
            self.provider_group.addAction(action)
            self.provider_actions[choice] = action
        for action, text in (
            (self.zoom_out_action, "−"),
            (self.zoom_in_action, "+"),
            (self.fit_action, "Fit"),
        ):
            button = QToolButton()
            button.setDefaultAction(action)
            button.setText(text)
            button.setToolTip(f"{action.text().replace('&', '')} ({action.shortcut().toString()})")
            self._zoom_buttons.addWidget(button)

    def _build_menus(self) -> None:
        bar = self.menuBar()
        file_menu = bar.addMenu("&File")
        file_menu.addAction(self.open_image_action)
        self.recent_menu = QMenu("Open &recent", self)
        self.recent_menu.setObjectName("recentMenu")
        self.recent_menu.aboutToShow.connect(self._rebuild_recent_menu)
        file_menu.addMenu(self.recent_menu)
        file_menu.addAction(self.open_model_action)
        file_menu.addSeparator()
        file_menu.addAction(self.batch_action)
        file_menu.addSeparator()
        file_menu.addAction(self.export_report_action)
        file_menu.addAction(self.save_heatmap_action)
        file_menu.addSeparator()
        file_menu.addAction(self.quit_action)
        view_menu = bar.addMenu("&View")
        view_menu.addAction(self.show_heatmap_action)
        view_menu.addSeparator()
        view_menu.addAction(self.zoom_in_action)
        view_menu.addAction(self.zoom_out_action)
        view_menu.addAction(self.fit_action)
        settings_menu = bar.addMenu("&Settings")
        provider_menu = settings_menu.addMenu("&Execution provider")
        provider_menu.setObjectName("providerMenu")
        for action in self.provider_actions.values():
            provider_menu.addAction(action)
        help_menu = bar.addMenu("&Help")
        help_menu.addAction(self.model_info_action)
        help_menu.addAction(self.intended_use_action)
        help_menu.addSeparator()
        help_menu.addAction(self.about_action)
        self._rebuild_recent_menu()

    def _build_status_bar(self) -> None:
        status = self.statusBar()
        status.setObjectName("statusBar")
        self.busy_bar = QProgressBar()
        self.busy_bar.setObjectName("busyIndicator")
        self.busy_bar.setRange(0, 0)  # indeterminate
        self.busy_bar.setTextVisible(False)
        self.busy_bar.setMaximumWidth(self.fontMetrics().averageCharWidth() * 16)
        self.busy_bar.setMaximumHeight(self.fontMetrics().height())
        self.busy_bar.hide()
        self.activity_label = QLabel()
        self.activity_label.setObjectName("activityLabel")
        self.model_label = QLabel()
        self.model_label.setObjectName("modelStatus")
        self.provider_label = QLabel()
        self.provider_label.setObjectName("providerStatus")
        status.addPermanentWidget(self.activity_label)
        status.addPermanentWidget(self.busy_bar)
        status.addPermanentWidget(self.model_label)
        status.addPermanentWidget(self.provider_label)

    def _restore_geometry(self) -> None:
        geometry, state = self.settings.window_geometry()
        if geometry is not None:
            self.restoreGeometry(geometry)
        else:
            em = self.fontMetrics().averageCharWidth()
            line = self.fontMetrics().lineSpacing()
            want = QSize(em * 190, line * 52)
            screen = self.screen().availableGeometry() if self.screen() else None
            if screen is not None:
                want = want.boundedTo(
                    QSize(int(screen.width() * 0.95), int(screen.height() * 0.92))
                )
            self.resize(want)
        if state is not None:
            self.restoreState(state)

    # ---------------------------------------------------------------------------------------------
    # Images
    # ---------------------------------------------------------------------------------------------
    def open_image(self, path: str | Path) -> None:
        """Decode ``path`` in the background; on success it replaces the current image."""
        path = Path(path)
        self.show_single_case()
        self.statusBar().showMessage(f"Opening {path.name}…")
        self.tasks.run_in_background(
            "image",
            partial(load_image, path, max_side=DISPLAY_MAX_SIDE),
            partial(self._on_image_loaded, path),
            partial(self._on_image_failed, path),
            label="Opening image…",
        )

    def open_case(self, path: str | Path, metadata: PatientMetadata | None = None) -> None:
        """Open a case from the batch list: the image, with the metadata the batch used filled
        in (every field unknown when None), analysed with its heatmap in the single-case view."""
        meta = metadata if metadata is not None else PatientMetadata()
        self.metadata_form.set_values(meta.age, meta.sex, meta.site)
        self._analysis_timer.stop()  # the new image is analysed once it is decoded
        self.open_image(path)

    def show_single_case(self) -> None:
        self.tabs.setCurrentWidget(self.splitter)

    def show_batch_view(self) -> BatchView:
        self.tabs.setCurrentWidget(self.batch_view)
        return self.batch_view

    def _on_batch_progress_text(self, text: str) -> None:
        index = self.tabs.indexOf(self.batch_view)
        self.tabs.setTabText(index, f"Batch review ({text})" if text else "Batch review")

    def _on_image_loaded(self, path: Path, loaded: LoadedImage) -> None:
        self.image = OpenedImage(path, loaded)
        self.analysis = None
        self._heat_cache = None
        self._class_pinned = False
        self.class_combo.setEnabled(False)
        self.banner.dismiss()
        self.view.set_original(loaded.rgb)
        w, h = loaded.original_size
        self.view.original_title.setText(f"Original — {path.name} ({w} × {h})")
        self.setWindowTitle(f"{path.name} — LesionLens")
        self.settings.add_recent_file(path)
        self._rebuild_recent_menu()
        self.statusBar().showMessage(f"Opened {path.name} ({w} × {h} pixels)", 8000)
        self._update_overlay_title()
        self.analyse_now()

    def _on_image_failed(self, path: Path, exc: BaseException) -> None:
        message = describe_error(exc)
        kept = " The previous image is still shown." if self.image is not None else ""
        self.banner.show_message(message + kept, "error")
        self.statusBar().showMessage(f"Could not open {path.name}", 8000)

    # ---------------------------------------------------------------------------------------------
    # Model
    # ---------------------------------------------------------------------------------------------
    def open_model(self, path: str | Path, provider: str | None = None) -> None:
        """Load and verify a model file in the background. A bad file leaves the current model."""
        path = Path(path)
        choice = provider or self.settings.provider
        self.statusBar().showMessage(f"Loading model {path.name}…")
        self.tasks.run_in_background(
            "model",
            partial(Engine.load, path, providers=choice),
            partial(self._on_model_loaded, choice),
            partial(self._on_model_failed, path, choice),
            label="Loading model…",
        )

    def _on_model_loaded(self, choice: str, engine: Engine) -> None:
        self.engine = engine
        self._engine_provider = choice
        if choice != self.settings.provider:
            self.settings.provider = choice
        self._check_provider_action(choice)
        if engine.path is not None:
            self.settings.last_model = str(engine.path)
        self.analysis = None
        self._heat_cache = None
        self._class_pinned = False
        self._update_model_widgets()
        self.batch_view.set_engine(engine)
        self.statusBar().showMessage(
            f"Model loaded: {engine.card.name} {engine.card.version}, running on {engine.provider}",
            8000,
        )
        self.analyse_now()

    def _on_model_failed(self, path: Path, choice: str, exc: BaseException) -> None:
        message = describe_error(exc)
        if self.engine is not None:
            message += (
                f"\n\nThe previous model ({self.engine.card.name} {self.engine.card.version}) "
                "is still in use."
            )
        self._check_provider_action(self._engine_provider or self.settings.provider)
        self.statusBar().showMessage(f"Could not load {path.name}", 8000)
        self.show_error_box("The model could not be opened", message)

    def set_provider(self, choice: str, checked: bool = True) -> None:
        """Auto/CPU/CUDA: stored in the settings and applied by reloading the model."""
        choice = str(choice).lower()
        if choice not in PROVIDERS:
            raise ValueError(f"provider must be one of {PROVIDERS}")
        if self.engine is None or self.engine.path is None:
            self.settings.provider = choice
            self._check_provider_action(choice)
            return
        if choice == self._engine_provider:
            return
        self.open_model(self.engine.path, provider=choice)

    def _check_provider_action(self, choice: str) -> None:
        action = self.provider_actions.get(choice)
        if action is not None:
            action.setChecked(True)

    def _update_model_widgets(self) -> None:
        engine = self.engine
        if engine is None:
            self.model_label.setText("No model loaded")
            self.provider_label.setText("")
            self.metadata_form.set_encoding(None, model_loaded=False)
            self.class_combo.clear()
            self.class_combo.setEnabled(False)
            self.model_info_action.setEnabled(False)
            return
        card = engine.card
        self.model_label.setText(f"Model: {card.name} {card.version}")
        self.model_label.setToolTip(f"SHA-256 {engine.sha256}")
        setting = {"auto": "automatic", "cpu": "CPU chosen", "cuda": "GPU chosen"}.get(
            self._engine_provider or "auto", ""
        )
        self.provider_label.setText(f"Runs on: {engine.provider} ({setting})")
        self.provider_label.setToolTip(engine.provider_note or "")
        self.metadata_form.set_encoding(card.metadata_encoding, model_loaded=True)
        self.class_combo.blockSignals(True)
        self.class_combo.clear()
        for c in card.classes:
            self.class_combo.addItem(f"{c.name} ({c.code})", c.code)
            self.class_combo.setItemData(
                self.class_combo.count() - 1, c.name, Qt.ItemDataRole.ToolTipRole
            )
        self.class_combo.blockSignals(False)
        self.class_combo.view().setMinimumWidth(self.class_combo.view().sizeHintForColumn(0) + 24)
        self.class_combo.setEnabled(False)  # until there is a result to explain
        self.model_info_action.setEnabled(True)
        self.view.set_overlay_placeholder(
            "The Grad-CAM heatmap appears here once an image is analysed."
        )

    # ---------------------------------------------------------------------------------------------
    # Analysis
    # ---------------------------------------------------------------------------------------------
    def _on_metadata_changed(self, _meta: PatientMetadata) -> None:
        self.schedule_analysis()

    def schedule_analysis(self) -> None:
        """Re-analyse after a short pause (typing in the form does not run the model per key)."""
        if self.engine is None or self.image is None:
            return
        if self.analysis is not None:
            self.results.set_status("Updating…")
        self._analysis_timer.start()

    def analyse_now(self) -> None:
        self._analysis_timer.stop()
        engine, image = self.engine, self.image
        if engine is None or image is None:
            self.tasks.cancel("analysis")
            self._refresh_results_state()
            return
        meta = self.metadata_form.metadata()
        if self.analysis is None or self.analysis.image is not image:
            self.results.show_message("Analysing…")
            self.view.set_overlay_placeholder("Analysing…")
        else:
            self.results.set_status("Updating…")
        self.tasks.run_in_background(
            "analysis",
            partial(analyse_case, engine, image, meta),
            self._on_analysis_done,
            self._on_analysis_failed,
            label="Analysing…",
        )

    def _on_analysis_done(self, analysis: Analysis) -> None:
        if analysis.engine is not self.engine or analysis.image is not self.image:
            return  # the model or image changed meanwhile; a newer analysis is on its way
        self.analysis = analysis
        self._heat_cache = None
        pred = analysis.prediction
        meta_text = (
            f"Analysed with: {analysis.metadata.describe()}."
            if analysis.engine.card.uses_metadata
            else "Analysed from the image only (this model does not use age, sex or site)."
        )
        self.results.set_result(
            pred,
            analysis.engine.card,
            metadata_text=meta_text,
            image_notes=analysis.image.loaded.notes,
        )
        if not self._class_pinned:
            self._select_class(pred.top_code)
        self.class_combo.setEnabled(True)
        self.update_overlay()
        if self._pending_export is not None:
            target, self._pending_export = self._pending_export, None
            self.export_report(target)

    def _on_analysis_failed(self, exc: BaseException) -> None:
        message = describe_error(exc)
        self.analysis = None
        self.results.show_message(f"The analysis failed: {message}")
        self.banner.show_message(f"The analysis failed: {message}", "error")
        self._pending_export = None

    def _refresh_results_state(self) -> None:
        if self.engine is None:
            self.results.show_message(NO_MODEL_TEXT)
            self.view.set_overlay_placeholder(
                "No model loaded, so no heatmap. File > Open model… to analyse the image."
            )
        elif self.image is None:
            self.results.show_message(NO_IMAGE_TEXT)

    # ---------------------------------------------------------------------------------------------
    # Heatmap view
    # ---------------------------------------------------------------------------------------------
    def selected_class(self) -> str | None:
        return self.class_combo.currentData()

    def _select_class(self, code: str) -> None:
        index = self.class_combo.findData(code)
        if index >= 0:
            self.class_combo.setCurrentIndex(index)
        self._update_overlay_title()

    def set_heatmap_class(self, code: str) -> None:
        """Show another class's heatmap (what choosing it in the combo does)."""
        self._class_pinned = True
        self._select_class(code)
        self.update_overlay()

    def _on_class_chosen(self, _index: int) -> None:
        code = self.selected_class()
        if code is not None:
            self.set_heatmap_class(code)

    def opacity(self) -> float:
        return self.opacity_slider.value() / 100.0

    def _on_opacity_changed(self, value: int) -> None:
        self.settings.heatmap_opacity = value
        self._update_opacity_label()
        self._update_overlay_title()
        self.update_overlay()

    def _update_opacity_label(self) -> None:
        self.opacity_label.setText(f"{self.opacity_slider.value()}%")

    def set_heatmap_visible(self, visible: bool) -> None:
        if self.heatmap_check.isChecked() != visible:
            self.heatmap_check.setChecked(visible)  # comes back here through toggled
            return
        self.settings.show_heatmap = visible
        self.view.set_overlay_visible(visible)
        self.opacity_slider.setEnabled(visible)
        if visible:
            self.update_overlay()

    def _update_overlay_title(self) -> None:
        code = self.selected_class()
        if code is None or self.engine is None:
            self.view.set_overlay_title("Grad-CAM heatmap")
            return
        name = self.class_combo.currentText()
        self.view.set_overlay_title(f"Grad-CAM: {name} — opacity {self.opacity_slider.value()}%")

    def update_overlay(self) -> None:
        """Render the overlay for the chosen class and opacity (background; newest wins)."""
        analysis, code = self.analysis, self.selected_class()
        if analysis is None or code is None or not self.view.overlay_visible():
            return
        cached = self._heat_cache
        heat = (
            cached[2]
            if cached is not None and cached[0] == id(analysis) and cached[1] == code
            else None
        )
        self.tasks.run_in_background(
            "overlay",
            partial(render_overlay, analysis, code, self.opacity(), heat),
            partial(self._on_overlay_ready, analysis, code),
            self._on_overlay_failed,
            label="Drawing the heatmap…",
        )

    def _on_overlay_ready(
        self, analysis: Analysis, code: str, result: tuple[np.ndarray, np.ndarray]
    ) -> None:
        if analysis is not self.analysis:
            return
        heat, rgb = result
        self._heat_cache = (id(analysis), code, heat)
        self.view.set_overlay(rgb)

    def _on_overlay_failed(self, exc: BaseException) -> None:
        self.banner.show_message(f"The heatmap could not be drawn: {describe_error(exc)}")

    def current_heatmap(self) -> tuple[str, np.ndarray] | None:
        """(class code, heat in [0, 1] at display size) behind the overlay on screen, if any."""
        cached = self._heat_cache
        if cached is None or self.analysis is None or cached[0] != id(self.analysis):
            return None
        return cached[1], cached[2]

    def overlay_image(self) -> np.ndarray | None:
        """The overlay pixels on screen (None while hidden or not computed)."""
        return self.view.overlay.image() if self.view.overlay_visible() else None

    def _on_zoom_changed(self, zoom: float) -> None:
        text = f"{zoom:.0%}"
        self.zoom_label.setText(f"Fit ({text})" if self.view.is_fit() else text)

    # ---------------------------------------------------------------------------------------------
    # Report and heatmap export
    # ---------------------------------------------------------------------------------------------
    def _analysis_is_current(self) -> bool:
        a = self.analysis
        return (
            a is not None
            and a.engine is self.engine
            and a.image is self.image
            and (not a.engine.card.uses_metadata or a.metadata == self.metadata_form.metadata())
            and not self._analysis_timer.isActive()
            and not self.tasks.is_busy("analysis")
        )

    def export_report(self, path: str | Path) -> None:
        """Write the PDF report of the current case to ``path`` (background, atomic)."""
        path = Path(path)
        if self.image is None or self.engine is None:
            self.banner.show_message(
                "Nothing to report yet: open a model and an image, then wait for the analysis.",
                "warning",
            )
            return
        if not self.metadata_form.is_valid():
            self.banner.show_message(
                "Correct the marked patient fields before exporting the report.", "warning"
            )
            return
        if not self._analysis_is_current():
            self._pending_export = path  # written as soon as the analysis is up to date
            self.analyse_now()
            return
        from desktop_app.core.report import ReportCase, write_report

        analysis = self.analysis
        assert analysis is not None
        case = ReportCase(
            image_rgb=analysis.image.rgb,
            image_name=analysis.image.name,
            metadata=analysis.metadata,
            prediction=analysis.prediction,
            heatmap_code=self.selected_class() or analysis.prediction.top_code,
            case_id=self.case_form.case_id(),
            clinician_notes=self.case_form.notes(),
            clinician_name=self.case_form.clinician(),
        )
        engine = analysis.engine
        self.statusBar().showMessage(f"Writing {path.name}…")
        self.tasks.run_in_background(
            "report",
            partial(write_report, path, case, engine),
            self._on_report_written,
            self._on_report_failed,
            label="Writing the PDF report…",
        )

    def _on_report_written(self, path: Path) -> None:
        self.last_report = Path(path)
        self.settings.q.setValue("report/last_dir", str(Path(path).parent))
        self.statusBar().showMessage(f"Report saved: {path}", 15000)

    def _on_report_failed(self, exc: BaseException) -> None:
        self.statusBar().showMessage("The report was not saved", 8000)
        self.banner.show_message(describe_error(exc), "error")

    def save_heatmap_png(self, path: str | Path) -> None:
        """Save the overlay (chosen class and opacity, display resolution) as PNG, atomically."""
        path = Path(path)
        analysis, code = self.analysis, self.selected_class()
        if analysis is None or code is None:
            self.banner.show_message(
                "There is no heatmap yet: open a model and an image first.", "warning"
            )
            return
        opacity = self.opacity()

        def op() -> Path:
            _heat, rgb = render_overlay(analysis, code, opacity)
            return _save_png(path, rgb)

        self.tasks.run_in_background(
            "export",
            op,
            lambda p: self.statusBar().showMessage(f"Heatmap saved: {p}", 15000),
            lambda exc: self.banner.show_message(describe_error(exc), "error"),
            label="Saving the heatmap…",
        )

    # ---------------------------------------------------------------------------------------------
    # Menu actions with dialogs (the only places that ask for paths)
    # ---------------------------------------------------------------------------------------------
    def _start_dir(self) -> str:
        if self.image is not None:
            return str(self.image.path.parent)
        recent = self.settings.recent_files()
        return str(Path(recent[0]).parent) if recent else str(Path.home())

    def _action_open_image(self) -> None:
        path, _ = QFileDialog.getOpenFileName(
            self, "Open dermoscopy image", self._start_dir(), _IMAGE_FILTER
        )
        if path:
            self.open_image(path)

    def _action_open_model(self) -> None:
        start = self.settings.last_model or str(resources_dir() / "models")
        path, _ = QFileDialog.getOpenFileName(
            self,
            "Open LesionLens model",
            str(Path(start).parent if Path(start).is_file() else start),
            "ONNX models (*.onnx);;All files (*)",
        )
        if path:
            self.open_model(path)

    def _action_export_report(self) -> None:
        if self.analysis is None:
            self.banner.show_message(
                "Nothing to report yet: open a model and an image, then wait for the analysis.",
                "warning",
            )
            return
        folder = str(self.settings.q.value("report/last_dir", "") or "") or self._start_dir()
        name = default_report_name(self.case_form.case_id())
        path, _ = QFileDialog.getSaveFileName(
            self, "Export PDF report", str(Path(folder) / name), "PDF (*.pdf)"
        )
        if path:
            if not path.lower().endswith(".pdf"):
                path += ".pdf"
            self.export_report(path)

    def _action_save_heatmap(self) -> None:
        if self.analysis is None:
            self.banner.show_message(
                "There is no heatmap yet: open a model and an image first.", "warning"
            )
            return
        code = self.selected_class() or "heatmap"
        name = f"{self.analysis.image.path.stem}_gradcam_{code}.png"
        path, _ = QFileDialog.getSaveFileName(
            self, "Save heatmap as PNG", str(Path(self._start_dir()) / name), "PNG image (*.png)"
        )
        if path:
            if not path.lower().endswith(".png"):
                path += ".png"
            self.save_heatmap_png(path)

    def _rebuild_recent_menu(self) -> None:
        menu = self.recent_menu
        menu.clear()
        files = self.settings.recent_files()
        for i, f in enumerate(files):
            label = f"&{i + 1} {Path(f).name}" if i < 9 else f"1&0 {Path(f).name}"
            action = menu.addAction(label)
            action.setToolTip(f)
            action.setStatusTip(f)
            action.triggered.connect(partial(self.open_image, f))
        if files:
            menu.addSeparator()
            menu.addAction("Clear list", self._clear_recent)
        else:
            empty = menu.addAction("(no recent images)")
            empty.setEnabled(False)

    def _clear_recent(self) -> None:
        self.settings.clear_recent_files()
        self._rebuild_recent_menu()

    # ---------------------------------------------------------------------------------------------
    # Dialogs
    # ---------------------------------------------------------------------------------------------
    def show_error_box(self, title: str, text: str) -> QMessageBox:
        """A window-modal message box that does not block the caller (``open()``, not exec)."""
        box = QMessageBox(
            QMessageBox.Icon.Warning, title, text, QMessageBox.StandardButton.Ok, self
        )
        box.setObjectName("errorBox")
        box.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        box.open()
        self.last_error_box = box
        return box

    def show_model_info(self) -> ModelInfoDialog | None:
        if self.engine is None:
            self.banner.show_message(NO_MODEL_TEXT, "info")
            return None
        dialog = ModelInfoDialog(self.engine, self)
        dialog.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        dialog.show()
        return dialog

    def show_intended_use(self, first_run: bool = False) -> IntendedUseDialog:
        dialog = IntendedUseDialog(self, require_ack=first_run)
        dialog.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        if first_run:
            dialog.accepted.connect(self._on_intended_use_acknowledged)
            dialog.rejected.connect(self.close)
        dialog.open()
        return dialog

    def show_first_run_notice(self) -> IntendedUseDialog | None:
        """The intended-use notice, until it has been acknowledged once (then None)."""
        if self.settings.intended_use_acknowledged:
            return None
        return self.show_intended_use(first_run=True)

    def _on_intended_use_acknowledged(self) -> None:
        self.settings.intended_use_acknowledged = True

    def show_about(self) -> QMessageBox:
        box = QMessageBox(self)
        box.setObjectName("aboutBox")
        box.setWindowTitle("About LesionLens")
        box.setTextFormat(Qt.TextFormat.RichText)
        box.setText(about_html())
        box.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        box.open()
        return box

    # ---------------------------------------------------------------------------------------------
    # Window events
    # ---------------------------------------------------------------------------------------------
    def _on_busy(self, busy: bool) -> None:
        self.busy_bar.setVisible(busy)
        if not busy:
            self.activity_label.setText("")

    def dragEnterEvent(self, event) -> None:
        if _local_files(event.mimeData()):
            event.acceptProposedAction()
        else:
            event.ignore()

    def dragMoveEvent(self, event) -> None:
        if _local_files(event.mimeData()):
            event.acceptProposedAction()

    def dropEvent(self, event) -> None:
        files = _local_files(event.mimeData())
        if not files:
            event.ignore()
            return
        event.acceptProposedAction()
        self.open_dropped(files)

    def open_dropped(self, files: list[Path]) -> None:
        """A dropped ``.onnx`` opens as a model, anything else as the image (first file only)."""
        first = files[0]
        if first.suffix.lower() == ".onnx":
            self.open_model(first)
        else:
            self.open_image(first)
        if len(files) > 1:
            self.statusBar().showMessage(
                f"{len(files)} files dropped: only {first.name} was opened (one case at a time).",
                8000,
            )

    def closeEvent(self, event: QCloseEvent) -> None:
        self._analysis_timer.stop()
        self.settings.set_window_geometry(self.saveGeometry(), self.saveState())
        self.settings.sync()
        self.batch_view.shutdown()  # a running batch stops after the images in flight
        # Let running work (a report being written) finish; their results are dropped.
        for channel in ("image", "model", "analysis", "overlay"):
            self.tasks.cancel(channel)
        self.tasks.wait_until_idle(30_000)
        super().closeEvent(event)


def _local_files(mime) -> list[Path]:
    if mime is None or not mime.hasUrls():
        return []
    return [Path(u.toLocalFile()) for u in mime.urls() if u.isLocalFile() and u.toLocalFile()]
