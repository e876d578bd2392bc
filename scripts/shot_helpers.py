"""What both screenshot scripts need: wait for the window without freezing it, and save a grab."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path


def wait_for(app, condition: Callable[[], bool], timeout: float = 60.0) -> bool:
    """Process Qt events until ``condition()`` holds (True) or ``timeout`` seconds pass (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        app.processEvents()
        if condition():
            return True
        time.sleep(0.01)
    return False


def save_grab(widget, path: Path) -> None:
    """Save ``widget`` as PNG, or stop with a message when the file cannot be written."""
    pixmap = widget.grab()
    if not pixmap.save(str(path)):
        raise SystemExit(f"error: could not write {path}")
    print(f"wrote {path} ({pixmap.width()} x {pixmap.height()})")
