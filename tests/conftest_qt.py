"""Helpers for the Qt tests (tests/test_ui_*.py): offscreen Qt, isolated settings, synthetic
lesion images, and the check that no test leaves background work running.

Not a conftest: each UI test module imports what it needs, so the rest of the suite never loads Qt.
Importing this module sets ``QT_QPA_PLATFORM=offscreen`` unless a platform was chosen (Xvfb in CI
may choose ``xcb``).
"""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import numpy as np
from PySide6.QtCore import QSettings, QThreadPool

from tests.image_factory import encode
from tests.model_factory import random_images

BACKGROUND_TIMEOUT_MS = 20_000


def isolated_settings(folder: Path, name: str = "settings.ini") -> QSettings:
    """A QSettings backed by an INI file in ``folder``: nothing leaks into the user's settings or
    into another test."""
    return QSettings(str(folder / name), QSettings.Format.IniFormat)


def lesion_rgb(size: int = 192, seed: int = 3) -> np.ndarray:
    """A smooth synthetic 'lesion' (uint8 RGB), different for each seed."""
    return random_images(1, seed=seed, size=size)[0].round().astype(np.uint8)


def write_lesion(path: Path, size: int = 192, seed: int = 3, fmt: str = "JPEG") -> Path:
    path.write_bytes(encode(lesion_rgb(size, seed), fmt))
    return path


def wait_idle(qtbot, window, timeout: int = BACKGROUND_TIMEOUT_MS) -> None:
    """Wait until every background task of ``window`` has finished and reported back."""
    qtbot.waitUntil(
        lambda: window.tasks.is_idle() and not window._analysis_timer.isActive(), timeout=timeout
    )


def assert_no_background_work(runners) -> None:
    """Fail a test that ended while background work was still running or waiting (napari's rule):
    results that arrive after a test would touch widgets being deleted and leak into the next test.
    The pool threads are then joined so that nothing outlives the test."""
    leftovers = []
    for runner in runners:
        try:
            busy = dict(runner._running) | dict(runner._pending)
        except RuntimeError:  # the runner's C++ object is gone: its pool was joined with it
            continue
        if busy:
            leftovers.append(", ".join(f"{channel}" for channel in busy))
        runner.pool.waitForDone(BACKGROUND_TIMEOUT_MS)
        assert runner.pool.activeThreadCount() == 0, "a background thread is still running"
    glob = QThreadPool.globalInstance()
    glob.waitForDone(BACKGROUND_TIMEOUT_MS)
    assert glob.activeThreadCount() == 0, "work left running on the global thread pool"
    assert not leftovers, f"the test left background work running: {'; '.join(leftovers)}"
