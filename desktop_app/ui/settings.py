"""A typed view of the app's QSettings, with a schema version.

Only preferences live here (recent files, the execution provider, window geometry, whether the
intended-use notice was acknowledged): never patient data, results or notes. The window is given a
``QSettings`` object, so tests and the screenshot script pass one backed by a temporary INI file and
never touch the user's real settings.
"""

from __future__ import annotations

import os
from pathlib import Path

from PySide6.QtCore import QByteArray, QSettings

__all__ = ["PROVIDERS", "AppSettings"]

SCHEMA_VERSION = 1
MAX_RECENT = 10
PROVIDERS = ("auto", "cpu", "cuda")

_VERSION = "settings/version"
_RECENT = "files/recent"
_LAST_MODEL = "model/last_path"
_PROVIDER = "engine/provider"
_ACK = "notice/intended_use_acknowledged"
_GEOMETRY = "window/geometry"
_STATE = "window/state"
_OPACITY = "view/heatmap_opacity"
_SHOW_HEATMAP = "view/show_heatmap"


def _as_list(value: object) -> list[str]:
    if value is None or value == "":
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, list | tuple):
        return [str(v) for v in value if v]
    return []


def _as_bool(value: object, default: bool = False) -> bool:
    if value is None:
        return default
    if isinstance(value, bool):
        return value
    return str(value).strip().lower() in ("1", "true", "yes", "on")


class AppSettings:
    """Wraps a QSettings; every getter tolerates missing or malformed values."""

    def __init__(self, qsettings: QSettings | None = None) -> None:
        self.q = qsettings if qsettings is not None else QSettings()
        self._migrate()

    def _migrate(self) -> None:
        try:
            version = int(self.q.value(_VERSION, 0) or 0)
        except (TypeError, ValueError):
            version = 0
        if version < SCHEMA_VERSION:
            # Version 0 = nothing stored yet; future migrations go here, one step at a time.
            self.q.setValue(_VERSION, SCHEMA_VERSION)

    def sync(self) -> None:
        self.q.sync()

    # -- recent files ------------------------------------------------------------------------------
    def recent_files(self, prune: bool = True) -> list[str]:
        """Most recent first; files that no longer exist are removed (and forgotten)."""
        files = _as_list(self.q.value(_RECENT))
        if prune:
            kept = [f for f in files if os.path.isfile(f)]
            if kept != files:
                self._set_recent(kept)
            files = kept
        return files[:MAX_RECENT]

    def add_recent_file(self, path: str | os.PathLike[str]) -> None:
        p = str(Path(path).resolve())
        files = [f for f in _as_list(self.q.value(_RECENT)) if f != p]
        self._set_recent([p, *files][:MAX_RECENT])

    def clear_recent_files(self) -> None:
        self._set_recent([])

    def _set_recent(self, files: list[str]) -> None:
        if files:
            self.q.setValue(_RECENT, list(files))
        else:
            self.q.remove(_RECENT)

    # -- model and provider ------------------------------------------------------------------------
    @property
    def provider(self) -> str:
        value = str(self.q.value(_PROVIDER, "auto") or "auto").lower()
        return value if value in PROVIDERS else "auto"

    @provider.setter
    def provider(self, value: str) -> None:
        value = str(value).lower()
        if value not in PROVIDERS:
            raise ValueError(f"provider must be one of {PROVIDERS}, not {value!r}")
        self.q.setValue(_PROVIDER, value)

    @property
    def last_model(self) -> str:
        return str(self.q.value(_LAST_MODEL, "") or "")

    @last_model.setter
    def last_model(self, path: str) -> None:
        self.q.setValue(_LAST_MODEL, str(path))

    # -- first-run notice --------------------------------------------------------------------------
    @property
    def intended_use_acknowledged(self) -> bool:
        return _as_bool(self.q.value(_ACK), False)

    @intended_use_acknowledged.setter
    def intended_use_acknowledged(self, value: bool) -> None:
        self.q.setValue(_ACK, bool(value))
        self.q.sync()

    # -- view --------------------------------------------------------------------------------------
    @property
    def heatmap_opacity(self) -> int:
        try:
            value = int(self.q.value(_OPACITY, 45))
        except (TypeError, ValueError):
            value = 45
        return min(100, max(0, value))

    @heatmap_opacity.setter
    def heatmap_opacity(self, value: int) -> None:
        self.q.setValue(_OPACITY, int(value))

    @property
    def show_heatmap(self) -> bool:
        return _as_bool(self.q.value(_SHOW_HEATMAP), True)

    @show_heatmap.setter
    def show_heatmap(self, value: bool) -> None:
        self.q.setValue(_SHOW_HEATMAP, bool(value))

    def window_geometry(self) -> tuple[QByteArray | None, QByteArray | None]:
        geometry = self.q.value(_GEOMETRY)
        state = self.q.value(_STATE)
        return (
            geometry if isinstance(geometry, QByteArray) else None,
            state if isinstance(state, QByteArray) else None,
        )

    def set_window_geometry(self, geometry: QByteArray, state: QByteArray) -> None:
        self.q.setValue(_GEOMETRY, geometry)
        self.q.setValue(_STATE, state)
