"""The GUI entry point: ``lesionlens`` (no command), ``lesionlens IMAGE`` and ``lesionlens gui``.

The only module that imports :mod:`desktop_app.ui` (besides the screenshot script and the tests).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

__all__ = ["create_application", "display_problem", "main"]

APP_NAME = "LesionLens"
ORGANIZATION = "LesionLens"
SETTINGS_ENV = "LESIONLENS_SETTINGS"


def display_problem() -> str:
    """Why no window can be shown here ("" when one can): Linux without a display server."""
    if not sys.platform.startswith("linux"):
        return ""
    if os.environ.get("QT_QPA_PLATFORM") or os.environ.get("DISPLAY"):
        return ""
    if os.environ.get("WAYLAND_DISPLAY"):
        return ""
    return (
        "no display found (DISPLAY and WAYLAND_DISPLAY are not set), so the window cannot open. "
        "Run it in a desktop session, or use `lesionlens predict IMAGE` on the command line."
    )


def create_application(argv: list[str] | None = None):
    """The QApplication (created once), named so that QSettings finds the user's settings."""
    from PySide6.QtGui import QIcon
    from PySide6.QtWidgets import QApplication

    from desktop_app import __version__
    from desktop_app.resources import resources_dir

    app = QApplication.instance()
    if app is None:
        app = QApplication([sys.argv[0] if sys.argv else "lesionlens", *(argv or [])])
    app.setApplicationName(APP_NAME)
    app.setOrganizationName(ORGANIZATION)
    app.setApplicationDisplayName(APP_NAME)
    app.setApplicationVersion(__version__)
    app.setDesktopFileName("lesionlens")  # lesionlens.desktop: the launcher's icon on Wayland
    icons = resources_dir() / "icons"
    for name in ("lesionlens.png", "lesionlens.svg", "lesionlens.ico", "icon.png"):
        if (icons / name).is_file():
            app.setWindowIcon(QIcon(str(icons / name)))
            break
    return app


def main(
    argv: list[str] | None = None,
    model_path: str | os.PathLike[str] | None = None,
    image_path: str | os.PathLike[str] | None = None,
) -> int:
    """Start the window (on ``model_path`` or the bundled default model; with ``image_path`` open)
    and run the event loop. Returns the exit code."""
    problem = display_problem()
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    app = create_application(argv)
    from PySide6.QtCore import QSettings

    from desktop_app.ui.main_window import MainWindow

    # LESIONLENS_SETTINGS=/path/file.ini keeps the preferences in that file (portable installs,
    # kiosk set-ups, tests); otherwise they live where Qt keeps the user's settings.
    settings_file = os.environ.get(SETTINGS_ENV)
    settings = QSettings(settings_file, QSettings.Format.IniFormat) if settings_file else None
    window = MainWindow(
        settings,
        model_path=Path(model_path) if model_path is not None else None,
        image_path=Path(image_path) if image_path is not None else None,
    )
    window.show()
    window.show_first_run_notice()
    return int(app.exec())


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
