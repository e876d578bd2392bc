"""Where the bundled files are, in a source checkout and in a PyInstaller build alike."""

from __future__ import annotations

import sys
from pathlib import Path


def resources_dir() -> Path:
    frozen = getattr(sys, "_MEIPASS", None)
    if frozen:
        return Path(frozen) / "resources"
    return Path(__file__).resolve().parent.parent / "resources"


def default_model_path() -> Path:
    """The model the app opens on first start (``resources/models/default.onnx``)."""
    return resources_dir() / "models" / "default.onnx"
