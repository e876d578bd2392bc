"""The original image and its Grad-CAM overlay side by side, zoomed and panned together.

Two ``QGraphicsView`` panes show two scenes of the same size (the overlay is drawn on the display
copy of the original). Wheel and shortcuts zoom, dragging pans, and whatever one pane does the other
follows: the transform and both scroll bars are copied across. "Fit" keeps the whole image visible
while the window is resized, until the user zooms.
"""

from __future__ import annotations

import numpy as np
from PySide6.QtCore import QRectF, Qt, Signal
from PySide6.QtGui import QColor, QImage, QPainter, QPixmap
from PySide6.QtWidgets import (
    QFrame,
    QGraphicsPixmapItem,
    QGraphicsScene,
    QGraphicsView,
    QHBoxLayout,
    QLabel,
    QSizePolicy,
    QVBoxLayout,
    QWidget,
)

__all__ = ["ComparisonView", "ElidedLabel", "ImagePane", "rgb_to_qimage"]

ZOOM_STEP = 1.25
MIN_ZOOM = 0.02
MAX_ZOOM = 32.0


def rgb_to_qimage(rgb: np.ndarray) -> QImage:
    """A QImage that owns a copy of an HxWx3 uint8 RGB array (numpy memory may go away)."""
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"expected HxWx3 uint8 RGB, got {rgb.dtype} {rgb.shape}")
    arr = np.ascontiguousarray(rgb)
    height, width = arr.shape[:2]
    image = QImage(arr.data, width, height, 3 * width, QImage.Format.Format_RGB888)
    return image.copy()


class ElidedLabel(QLabel):
    """A one-line label that elides in the middle instead of wrapping or widening its column, so
    both image panes keep the same height (and therefore the same fitted zoom)."""

    def __init__(self, text: str = "", parent: QWidget | None = None) -> None:
        super().__init__(text, parent)
        self.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Fixed)
        self.setMinimumWidth(1)

    def setText(self, text: str) -> None:  # also the tooltip, for the full text
        super().setText(text)
        self.setToolTip(text)

    def paintEvent(self, event) -> None:
        painter = QPainter(self)
        painter.setPen(self.palette().color(self.foregroundRole()))
        painter.setFont(self.font())
        rect = self.contentsRect()
        text = self.fontMetrics().elidedText(
            self.text(), Qt.TextElideMode.ElideMiddle, rect.width()
        )
        painter.drawText(
            rect, int(Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignVCenter), text
        )
        painter.end()


class ImagePane(QGraphicsView):
    """One zoomable, pannable image; shows a hint text while it has no image."""

    userZoomed = Signal(float)  # the zoom factor asked for by the wheel

    def __init__(self, placeholder: str = "", parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._scene = QGraphicsScene(self)
        self.setScene(self._scene)
        self._item = QGraphicsPixmapItem()
        self._item.setTransformationMode(Qt.TransformationMode.SmoothTransformation)
        self._scene.addItem(self._item)
        self._rgb: np.ndarray | None = None
        self._placeholder = placeholder
        self.setDragMode(QGraphicsView.DragMode.ScrollHandDrag)
        self.setTransformationAnchor(QGraphicsView.ViewportAnchor.AnchorUnderMouse)
        self.setResizeAnchor(QGraphicsView.ViewportAnchor.AnchorViewCenter)
        self.setRenderHint(QPainter.RenderHint.SmoothPixmapTransform)
        self.setBackgroundBrush(QColor(48, 48, 48))
        self.setFrameShape(QFrame.Shape.NoFrame)
        self.setAcceptDrops(False)  # drops go to the main window
        self.viewport().setAcceptDrops(False)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)
        self.setMinimumSize(160, 160)

    # -- content ----------------------------------------------------------------------------------
    def set_image(self, rgb: np.ndarray | None) -> None:
        self._rgb = rgb
        if rgb is None:
            self._item.setPixmap(QPixmap())
            self._scene.setSceneRect(QRectF(0, 0, 1, 1))
        else:
            self._item.setPixmap(QPixmap.fromImage(rgb_to_qimage(rgb)))
            self._scene.setSceneRect(QRectF(self._item.pixmap().rect()))
        self.viewport().update()

    def image(self) -> np.ndarray | None:
        """The array shown (the exact pixels, for tests and for saving)."""
        return self._rgb

    def has_image(self) -> bool:
        return self._rgb is not None

    def set_placeholder(self, text: str) -> None:
        self._placeholder = text
        self.viewport().update()

    # -- zoom -------------------------------------------------------------------------------------
    def zoom(self) -> float:
        return float(self.transform().m11())

    def fit(self) -> None:
        if self._rgb is not None:
            self.fitInView(self._item, Qt.AspectRatioMode.KeepAspectRatio)

    def zoom_by(self, factor: float) -> None:
        current = self.zoom()
        target = min(MAX_ZOOM, max(MIN_ZOOM, current * factor))
        if current > 0 and target != current:
            self.scale(target / current, target / current)

    def wheelEvent(self, event) -> None:
        steps = event.angleDelta().y() / 120.0
        if steps == 0 or self._rgb is None:
            event.ignore()
            return
        self.userZoomed.emit(ZOOM_STEP**steps)
        event.accept()

    def paintEvent(self, event) -> None:
        super().paintEvent(event)
        if self._rgb is None and self._placeholder:
            painter = QPainter(self.viewport())
            painter.setPen(QColor(220, 220, 220))
            margin = self.fontMetrics().height()
            rect = self.viewport().rect().adjusted(margin, margin, -margin, -margin)
            painter.drawText(
                rect,
                int(Qt.AlignmentFlag.AlignCenter | Qt.TextFlag.TextWordWrap),
                self._placeholder,
            )
            painter.end()


class ComparisonView(QWidget):
    """Original (left) and overlay (right); one zoom, one pan."""

    zoomChanged = Signal(float)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.original = ImagePane(
            "No image.\n\nFile > Open image… (Ctrl+O), or drag a dermoscopy image onto the window."
        )
        self.original.setObjectName("originalView")
        self.original.setAccessibleName("Original image")
        self.overlay = ImagePane("The Grad-CAM heatmap appears here once the image is analysed.")
        self.overlay.setObjectName("overlayView")
        self.overlay.setAccessibleName("Grad-CAM heatmap over the image")

        self.original_title = ElidedLabel("Original")
        self.original_title.setObjectName("originalTitle")
        self.overlay_title = ElidedLabel("Grad-CAM heatmap")
        self.overlay_title.setObjectName("overlayTitle")
        for label in (self.original_title, self.overlay_title):
            font = label.font()
            font.setBold(True)
            label.setFont(font)

        self._overlay_box = QWidget()
        left = QVBoxLayout()
        left.setContentsMargins(0, 0, 0, 0)
        left.addWidget(self.original_title)
        left.addWidget(self.original, 1)
        right = QVBoxLayout(self._overlay_box)
        right.setContentsMargins(0, 0, 0, 0)
        right.addWidget(self.overlay_title)
        right.addWidget(self.overlay, 1)
        row = QHBoxLayout(self)
        row.setContentsMargins(0, 0, 0, 0)
        row.addLayout(left, 1)
        row.addWidget(self._overlay_box, 1)

        self._fit_mode = True
        self._syncing = False
        for pane in (self.original, self.overlay):
            pane.userZoomed.connect(lambda f, p=pane: self._zoom_from(p, f))
        self._link_scrollbars()

    # -- content ----------------------------------------------------------------------------------
    def set_original(self, rgb: np.ndarray | None) -> None:
        """A new image: shown fitted; the overlay is cleared until it is computed."""
        self.original.set_image(rgb)
        self.overlay.set_image(None)
        self._fit_mode = True
        self.fit()

    def set_overlay(self, rgb: np.ndarray | None) -> None:
        self.overlay.set_image(rgb)
        if rgb is not None:
            self._sync(self.original, self.overlay)

    def set_overlay_visible(self, visible: bool) -> None:
        self._overlay_box.setVisible(visible)
        if self._fit_mode:
            self.fit()

    def overlay_visible(self) -> bool:
        return not self._overlay_box.isHidden()

    def set_overlay_title(self, text: str) -> None:
        self.overlay_title.setText(text)

    def set_overlay_placeholder(self, text: str) -> None:
        self.overlay.set_placeholder(text)

    # -- zoom -------------------------------------------------------------------------------------
    def zoom(self) -> float:
        return self.original.zoom()

    def is_fit(self) -> bool:
        return self._fit_mode

    def zoom_in(self) -> None:
        self._zoom_from(self.original, ZOOM_STEP, anchor_centre=True)

    def zoom_out(self) -> None:
        self._zoom_from(self.original, 1 / ZOOM_STEP, anchor_centre=True)

    def fit(self) -> None:
        self._fit_mode = True
        self.original.fit()
        self._sync(self.original, self.overlay)
        self.zoomChanged.emit(self.zoom())

    def _zoom_from(self, pane: ImagePane, factor: float, anchor_centre: bool = False) -> None:
        if not self.original.has_image():
            return
        self._fit_mode = False
        if anchor_centre:
            pane.setTransformationAnchor(QGraphicsView.ViewportAnchor.AnchorViewCenter)
        pane.zoom_by(factor)
        pane.setTransformationAnchor(QGraphicsView.ViewportAnchor.AnchorUnderMouse)
        other = self.overlay if pane is self.original else self.original
        self._sync(pane, other)
        self.zoomChanged.emit(self.zoom())

    def resizeEvent(self, event) -> None:
        super().resizeEvent(event)
        if self._fit_mode:
            self.fit()

    def showEvent(self, event) -> None:
        super().showEvent(event)
        if self._fit_mode:
            self.fit()

    # -- keeping the panes in step ----------------------------------------------------------------
    def _sync(self, leader: ImagePane, follower: ImagePane) -> None:
        self._syncing = True
        try:
            follower.setTransform(leader.transform())
            follower.horizontalScrollBar().setValue(leader.horizontalScrollBar().value())
            follower.verticalScrollBar().setValue(leader.verticalScrollBar().value())
        finally:
            self._syncing = False

    def _link_scrollbars(self) -> None:
        pairs = (
            (self.original.horizontalScrollBar(), self.overlay.horizontalScrollBar()),
            (self.original.verticalScrollBar(), self.overlay.verticalScrollBar()),
        )
        for a, b in pairs:
            a.valueChanged.connect(lambda v, dst=b: self._follow(dst, v))
            b.valueChanged.connect(lambda v, dst=a: self._follow(dst, v))

    def _follow(self, scrollbar, value: int) -> None:
        if self._syncing:
            return
        self._syncing = True
        try:
            scrollbar.setValue(value)
        finally:
            self._syncing = False
