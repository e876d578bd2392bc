"""Small widgets shared by the windows: the inline message banner and the intended-use strip."""

from __future__ import annotations

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import QFrame, QHBoxLayout, QLabel, QToolButton, QWidget

from desktop_app.ui.results import _scaled_font

__all__ = ["IntendedUseStrip", "MessageBanner"]

_LEVELS = {
    "error": ("#fdecea", "#c62828", "#5f1313", "Error"),
    "warning": ("#fff3cd", "#e0a800", "#4a3500", "Warning"),
    "info": ("#e8f1fb", "#5b8fc7", "#0d2f52", "Note"),
}

INTENDED_USE_SHORT = (
    "Decision support only — not a diagnosis. For trained clinicians reading dermoscopy images; "
    "not for self-screening; not validated for clinical use."
)


class MessageBanner(QFrame):
    """A non-modal message inside the window (errors about files, failed exports...).

    It stays until closed or replaced, so nothing blocks and the user can keep working.
    """

    closed = Signal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("messageBanner")
        self.setAccessibleName("Message")
        self._level = "info"
        self._text = ""
        self.label = QLabel()
        self.label.setObjectName("messageText")
        self.label.setWordWrap(True)
        self.label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.close_button = QToolButton()
        self.close_button.setObjectName("messageClose")
        self.close_button.setText("✕")
        self.close_button.setToolTip("Dismiss")
        self.close_button.setAccessibleName("Dismiss message")
        self.close_button.setAutoRaise(True)
        self.close_button.clicked.connect(self.dismiss)
        layout = QHBoxLayout(self)
        m = self.fontMetrics().height() // 2
        layout.setContentsMargins(m, m // 2, m // 2, m // 2)
        layout.addWidget(self.label, 1)
        layout.addWidget(self.close_button, 0, Qt.AlignmentFlag.AlignTop)
        self.hide()

    def show_message(self, text: str, level: str = "error") -> None:
        background, border, colour, title = _LEVELS.get(level, _LEVELS["info"])
        self._level = level
        self._text = str(text)
        self.setStyleSheet(
            f"QFrame#messageBanner {{ background: {background}; border: 1px solid {border};"
            f" border-radius: 4px; }} QFrame#messageBanner QLabel {{ color: {colour};"
            " background: transparent; border: none; }"
        )
        self.label.setText(f"<b>{title}:</b> {_escape(text)}")
        self.show()

    def dismiss(self) -> None:
        self.hide()
        self.label.clear()
        self._text = ""
        self.closed.emit()

    def level(self) -> str:
        return self._level if not self.isHidden() else ""

    def text(self) -> str:
        """The plain message text (without the level prefix); "" when hidden."""
        return self._text if not self.isHidden() else ""

    def is_shown(self) -> bool:
        return not self.isHidden()


def _escape(text: str) -> str:
    import html

    return html.escape(str(text)).replace("\n", "<br>")


class IntendedUseStrip(QLabel):
    """The always-visible one-line reminder of the intended use."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(INTENDED_USE_SHORT, parent)
        self.setObjectName("intendedUseReminder")
        self.setAccessibleName("Intended use")
        self.setWordWrap(True)
        self.setFont(_scaled_font(self, 1.0, bold=True))
        m = self.fontMetrics().height() // 3
        self.setContentsMargins(m * 2, m, m * 2, m)
        self.setStyleSheet("QLabel#intendedUseReminder { background: #263238; color: #eceff1; }")
