"""The Batch view: a whole folder of dermoscopy images, analysed offline, as a sortable triage list.

Choose a folder (and, optionally, a metadata CSV and where the results go), press Start: the core
pipeline (:func:`desktop_app.core.batch.pipeline.run_batch`, the same road as ``lesionlens batch``)
runs on a worker thread of a :class:`~desktop_app.ui.batch_worker.ProgressRunner`. Its progress
reaches the GUI thread through a queued signal; each progress event carries the result that just
finished, and the table (:class:`BatchResultsModel` behind a :class:`BatchSortProxy`) gains that
row live (rows are added in small groups, at most ~10 times a second, so a fast run never floods
the window). Cancel sets the run's :class:`threading.Event`: the images in flight finish, the run
returns its summary, and Start (now "Resume") continues where it stopped; images already done are
reused from the results database, not computed again, and marked as such.

When a folder is chosen (or the model changes) the results already in its output folder for the
current model are loaded and shown, so an earlier session's work is visible at once.

The table: thumbnail, file, status, top class, malignancy risk, above threshold, warnings (icon,
tooltip with each flag), then one column per class probability. It sorts numerically on any column
(risk, highest first, by default). Double-click (or Enter) on a row emits :attr:`BatchView.caseRequested`
with the image's path and the metadata the batch used, so the single-case view opens it with its
heatmap. Export CSV… and Summary PDF… write through the core functions, in the background.

Nothing here blocks the GUI thread on the disk or the model: the results database, thumbnails and
exports are read and written by background tasks (one channel each).
"""

from __future__ import annotations

import bisect
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PySide6.QtCore import (
    QAbstractTableModel,
    QModelIndex,
    QPersistentModelIndex,
    QRect,
    QSettings,
    QSize,
    QSortFilterProxyModel,
    Qt,
    QTimer,
    Signal,
)
from PySide6.QtGui import QBrush, QColor, QFont, QIcon, QImage, QPainter, QPalette, QPixmap
from PySide6.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QFileDialog,
    QGridLayout,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QSizePolicy,
    QStyle,
    QStyledItemDelegate,
    QStyleOptionViewItem,
    QTableView,
    QVBoxLayout,
    QWidget,
)

from desktop_app.core.classes import CATALOG, LesionClass
from desktop_app.core.errors import LesionLensError
from desktop_app.core.metadata import PatientMetadata
from desktop_app.ui.batch_worker import ProgressRunner
from desktop_app.ui.results import BENIGN_COLOUR, MALIGNANT_COLOUR, TRACK_COLOUR, format_percent
from desktop_app.ui.widgets import MessageBanner

__all__ = [
    "DEFAULT_OUTPUT_NAME",
    "FLAG_TITLES",
    "BatchResultsModel",
    "BatchSortProxy",
    "BatchView",
    "format_eta",
    "format_progress",
]

DEFAULT_OUTPUT_NAME = "lesionlens-batch"
DATABASE_NAME = "lesionlens-results.sqlite"
THUMBNAIL_SIDE = 96  # what the results database stores; shown a little smaller in the table
FLUSH_INTERVAL_MS = 100
THUMBNAIL_CACHE = 2000  # pixmaps kept (only rows on screen ask for theirs)
THUMBNAIL_QUEUE = 300  # requests waiting; older ones (rows scrolled past) are dropped

# Flag codes (desktop_app.core.uncertainty.assess) -> the titles the single-case view shows.
FLAG_TITLES: dict[str, str] = {
    "low_confidence": "Low confidence",
    "unusual_image": "Unusual image",
    "severity_disagreement": "Malignant classes above threshold",
}
_FLAG_SHORT: dict[str, str] = {
    "low_confidence": "Low confidence",
    "unusual_image": "Unusual image",
    "severity_disagreement": "Malignant > threshold",
}

ORIGIN_NEW = "new"  # computed in this run
ORIGIN_REUSED = "reused"  # this run found it done already (same file, same model)
ORIGIN_EARLIER = "earlier"  # loaded from the results database, not (yet) seen by a run


def flag_title(code: str) -> str:
    return FLAG_TITLES.get(code, code.replace("_", " ").capitalize())


def format_eta(seconds: float | None) -> str:
    """``mm:ss`` (``h:mm:ss`` from an hour), ``--:--`` while unknown."""
    if seconds is None or seconds != seconds or seconds < 0:
        return "--:--"
    total = round(seconds)
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes:02d}:{secs:02d}"


def format_progress(done: int, total: int, rate: float, eta_seconds: float | None) -> str:
    """The progress bar's text: ``N of M · X img/s · ETA mm:ss``."""
    speed = f"{rate:.1f} img/s" if rate and rate > 0 else "– img/s"
    return f"{done} of {total} · {speed} · ETA {format_eta(eta_seconds)}"


def _plural(n: int, word: str, plural: str | None = None) -> str:
    return f"{n} {word if n == 1 else (plural or word + 's')}"


def short_name(name: str) -> str:
    """A class name without its parenthesised or slashed detail: "Benign keratosis (solar
    lentigo, ...)" -> "Benign keratosis" (the tooltip has the full name)."""
    return name.split(" (")[0].split(" / ")[0].strip() or name


def _classes_for(codes: Sequence[str]) -> tuple[LesionClass, ...]:
    known = {c.code: c for c in CATALOG}
    return tuple(known.get(code, LesionClass(code, code, False)) for code in codes)


def metadata_of(result: Any) -> PatientMetadata | None:
    """The PatientMetadata a batch result was analysed with (None when it has none)."""
    data = getattr(result, "metadata", None)
    if not data:
        return None
    try:
        return PatientMetadata(
            age=data.get("age"),
            sex=data.get("sex") or "unknown",
            site=data.get("site") or "unknown",
        )
    except (LesionLensError, ValueError, TypeError, AttributeError):
        return None


# --------------------------------------------------------------------------------------------------
# The table model (plain Python values in, Qt roles out)
# --------------------------------------------------------------------------------------------------


class _Descending:
    """Reverses a sort key's order (for descending sorts that keep ties ascending by path)."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value

    def __lt__(self, other: _Descending) -> bool:
        return other.value < self.value

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Descending) and self.value == other.value

    __hash__ = None  # type: ignore[assignment]


@dataclass(eq=False)
class _Row:
    result: Any  # a core.batch.store.CaseResult (or anything with its attributes)
    origin: str


class BatchResultsModel(QAbstractTableModel):
    """One row per image: the :class:`CaseResult` and where it came from (this run, reused, an
    earlier run). Rows are keyed by relative path: a result for a path already shown replaces it.

    ``SORT_ROLE`` gives each column's numeric (or case-folded) sort key; ``thumbnailRequested``
    asks, once per path, for a thumbnail that :meth:`set_thumbnail` then supplies."""

    SORT_ROLE = Qt.ItemDataRole.UserRole + 1
    RESULT_ROLE = Qt.ItemDataRole.UserRole + 2
    PROBLEM_ROLE = Qt.ItemDataRole.UserRole + 3

    COL_THUMB, COL_FILE, COL_STATUS, COL_TOP, COL_RISK, COL_ABOVE, COL_WARN = range(7)
    FIXED_HEADERS = ("Image", "File", "Status", "Top class", "Risk", "Threshold", "Warnings")

    thumbnailRequested = Signal(str)

    def __init__(self, parent: Any = None) -> None:
        super().__init__(parent)
        self._classes: tuple[LesionClass, ...] = ()
        self._threshold: float | None = None
        self._rows: list[_Row] = []
        self._index: dict[str, int] | None = {}  # path -> row; None: rebuild when asked
        self._by_path: dict[str, _Row] = {}
        self._sort_column = self.COL_RISK
        self._sort_order = Qt.SortOrder.DescendingOrder
        self._thumbs: OrderedDict[str, QPixmap] = OrderedDict()
        self._thumb_wanted: set[str] = set()
        self._thumb_failed: set[str] = set()
        style = None
        try:
            from PySide6.QtWidgets import QApplication

            app = QApplication.instance()
            style = app.style() if isinstance(app, QApplication) else None
        except RuntimeError:  # pragma: no cover - no application
            style = None
        self._warn_icon = (
            style.standardIcon(QStyle.StandardPixmap.SP_MessageBoxWarning) if style else QIcon()
        )
        self._error_icon = (
            style.standardIcon(QStyle.StandardPixmap.SP_MessageBoxCritical) if style else QIcon()
        )

    # -- configuration ----------------------------------------------------------------------------
    def set_classes(self, codes: Sequence[str], threshold: float | None = None) -> None:
        """The model's classes (one probability column each) and its risk threshold; clears."""
        self.beginResetModel()
        self._classes = _classes_for(codes)
        self._threshold = threshold
        self._forget_rows()
        self.endResetModel()

    def classes(self) -> tuple[LesionClass, ...]:
        return self._classes

    def class_column(self, code: str) -> int:
        for i, c in enumerate(self._classes):
            if c.code == code:
                return len(self.FIXED_HEADERS) + i
        raise KeyError(code)

    def clear(self) -> None:
        self.beginResetModel()
        self._forget_rows()
        self.endResetModel()

    def _forget_rows(self) -> None:
        self._rows = []
        self._index = {}
        self._by_path = {}
        self._thumbs.clear()
        self._thumb_wanted.clear()
        self._thumb_failed.clear()

    # -- rows -------------------------------------------------------------------------------------
    def upsert(self, items: Sequence[tuple[Any, str]], *, keep_existing: bool = False) -> int:
        """Add or replace rows from (result, origin) pairs; returns how many rows were added.
        New rows go where the current sort puts them.

        ``keep_existing``: leave rows already shown untouched (results loaded from the database
        never overwrite what a run has just reported)."""
        fresh: dict[str, _Row] = {}
        resort = False
        last_col = self.columnCount() - 1
        for result, origin in items:
            key = result.relative_path
            old = self._by_path.get(key)
            if old is None:
                fresh[key] = _Row(result, origin)
                continue
            if keep_existing:
                continue
            row = self._row_index()[key]
            if origin == ORIGIN_EARLIER and old.origin != ORIGIN_EARLIER:
                origin = old.origin
            new = _Row(result, origin)
            resort = resort or self._order_key(new) != self._order_key(old)
            self._rows[row] = new
            self._by_path[key] = new
            self.dataChanged.emit(self.index(row, 0), self.index(row, last_col))
        if resort:
            self.sort(self._sort_column, self._sort_order)
        if not fresh:
            return 0
        rows = list(fresh.values())
        if len(rows) > max(64, len(self._rows) // 4):  # many at once: append, sort once
            start = len(self._rows)
            self.beginInsertRows(QModelIndex(), start, start + len(rows) - 1)
            self._rows.extend(rows)
            self._by_path.update(fresh)
            self._reindex()
            self.endInsertRows()
            self.sort(self._sort_column, self._sort_order)
            return len(rows)
        for item in rows:  # a few (a live run): each where it belongs
            at = bisect.bisect_right(self._rows, self._order_key(item), key=self._order_key)
            self.beginInsertRows(QModelIndex(), at, at)
            self._rows.insert(at, item)
            self._by_path[item.result.relative_path] = item
            self.endInsertRows()
        self._reindex()
        return len(rows)

    def retain(self, relative_paths: set[str] | frozenset[str]) -> int:
        """Remove the rows of every other path (files gone from the folder); returns how many."""
        drop = [i for i, r in enumerate(self._rows) if r.result.relative_path not in relative_paths]
        blocks: list[list[int]] = []
        for i in drop:
            if blocks and blocks[-1][1] == i - 1:
                blocks[-1][1] = i
            else:
                blocks.append([i, i])
        for first, last in reversed(blocks):
            self.beginRemoveRows(QModelIndex(), first, last)
            for r in self._rows[first : last + 1]:
                self._by_path.pop(r.result.relative_path, None)
            del self._rows[first : last + 1]
            self._index = None
            self.endRemoveRows()
        return len(drop)

    def _reindex(self) -> None:
        self._index = None  # rebuilt when next needed (once per group of inserts)

    def _row_index(self) -> dict[str, int]:
        if self._index is None:
            self._index = {r.result.relative_path: i for i, r in enumerate(self._rows)}
        return self._index

    # -- sorting (here, in Python, not row by row in a proxy: 10,000 rows sort in milliseconds) --
    def sort(self, column: int, order: Qt.SortOrder = Qt.SortOrder.AscendingOrder) -> None:
        """Order the rows by ``column`` (numerically where numbers); ties by file path."""
        self._sort_column, self._sort_order = int(column), Qt.SortOrder(order)
        if len(self._rows) < 2:
            return
        self.layoutAboutToBeChanged.emit()
        persistent = self.persistentIndexList()
        held = [(self._rows[i.row()], i.column()) for i in persistent if i.row() < len(self._rows)]
        self._rows.sort(key=self._order_key)
        self._reindex()
        where = {id(r): n for n, r in enumerate(self._rows)}
        self.changePersistentIndexList(
            persistent, [self.index(where[id(r)], col) for r, col in held]
        )
        self.layoutChanged.emit()

    def sort_column(self) -> tuple[int, Qt.SortOrder]:
        return self._sort_column, self._sort_order

    def _order_key(self, row: _Row) -> tuple:
        primary = self._sort_key(
            row, self._sort_column, len(self.FIXED_HEADERS), row.result.status == "ok"
        )
        if self._sort_order == Qt.SortOrder.DescendingOrder:
            primary = _Descending(primary)
        path = row.result.relative_path
        return (primary, path.casefold(), path)

    def result(self, row: int) -> Any:
        return self._rows[row].result

    def origin(self, row: int) -> str:
        return self._rows[row].origin

    def row_of(self, relative_path: str) -> int | None:
        return self._row_index().get(relative_path)

    def results(self) -> list[Any]:
        return [r.result for r in self._rows]

    def relative_paths(self) -> list[str]:
        return [r.result.relative_path for r in self._rows]

    def has_status(self, status: str) -> bool:
        return any(r.result.status == status for r in self._rows)

    def count(self, status: str | None = None, origin: str | None = None) -> int:
        return sum(
            1
            for r in self._rows
            if (status is None or r.result.status == status)
            and (origin is None or r.origin == origin)
        )

    # -- thumbnails -------------------------------------------------------------------------------
    def set_thumbnail(self, relative_path: str, pixmap: QPixmap | None) -> None:
        self._thumb_wanted.discard(relative_path)
        if pixmap is None or pixmap.isNull():
            self._thumb_failed.add(relative_path)
        else:
            self._thumbs[relative_path] = pixmap
            self._thumbs.move_to_end(relative_path)
            while len(self._thumbs) > THUMBNAIL_CACHE:
                self._thumbs.popitem(last=False)
        row = self._row_index().get(relative_path)
        if row is not None:
            index = self.index(row, self.COL_THUMB)
            self.dataChanged.emit(index, index, [Qt.ItemDataRole.DecorationRole])

    def forget_thumbnail_request(self, relative_path: str) -> None:
        """A request was dropped (its row scrolled away): ask again when it is painted again."""
        self._thumb_wanted.discard(relative_path)

    def has_thumbnail(self, relative_path: str) -> bool:
        return relative_path in self._thumbs

    def _thumbnail(self, relative_path: str) -> QPixmap | None:
        pixmap = self._thumbs.get(relative_path)
        if pixmap is not None:
            self._thumbs.move_to_end(relative_path)
            return pixmap
        if relative_path not in self._thumb_wanted and relative_path not in self._thumb_failed:
            self._thumb_wanted.add(relative_path)
            self.thumbnailRequested.emit(relative_path)
        return None

    # -- Qt model interface -----------------------------------------------------------------------
    def rowCount(self, parent: QModelIndex | QPersistentModelIndex = QModelIndex()) -> int:  # noqa: B008
        return 0 if parent.isValid() else len(self._rows)

    def columnCount(self, parent: QModelIndex | QPersistentModelIndex = QModelIndex()) -> int:  # noqa: B008
        return 0 if parent.isValid() else len(self.FIXED_HEADERS) + len(self._classes)

    def flags(self, index: QModelIndex | QPersistentModelIndex) -> Qt.ItemFlag:
        if not index.isValid():
            return Qt.ItemFlag.NoItemFlags
        return Qt.ItemFlag.ItemIsEnabled | Qt.ItemFlag.ItemIsSelectable

    def headerData(
        self, section: int, orientation: Qt.Orientation, role: int = Qt.ItemDataRole.DisplayRole
    ) -> Any:
        if orientation != Qt.Orientation.Horizontal:
            return None
        fixed = len(self.FIXED_HEADERS)
        if role == Qt.ItemDataRole.DisplayRole:
            if section < fixed:
                return self.FIXED_HEADERS[section]
            return self._classes[section - fixed].code
        if role == Qt.ItemDataRole.ToolTipRole:
            if section == self.COL_RISK:
                limit = (
                    f" The model's threshold is {self._threshold:.0%}."
                    if self._threshold is not None
                    else ""
                )
                malignant = ", ".join(c.code for c in self._classes if c.malignant)
                return (
                    "Malignancy risk: the calibrated probability of the malignant classes"
                    f"{f' ({malignant})' if malignant else ''}.{limit}"
                )
            if section == self.COL_ABOVE:
                return "Whether the risk reaches the model's operating threshold"
            if section == self.COL_WARN:
                return "Reasons to distrust the result (low confidence, unusual image, …)"
            if section == self.COL_STATUS:
                return "ok, error (the file could not be analysed) or skipped; 'reused': found done"
            if section >= fixed:
                c = self._classes[section - fixed]
                return f"{c.name}{' (malignant)' if c.malignant else ''}: calibrated probability"
        return None

    def data(self, index: QModelIndex | QPersistentModelIndex, role: int = 0) -> Any:
        if not index.isValid() or index.row() >= len(self._rows):
            return None
        row = self._rows[index.row()]
        r = row.result
        col = index.column()
        if role == self.RESULT_ROLE:
            return r
        if role == self.PROBLEM_ROLE:
            return r.status != "ok"
        fixed = len(self.FIXED_HEADERS)
        ok = r.status == "ok"
        if role == Qt.ItemDataRole.DisplayRole:
            return self._display(row, col, fixed, ok)
        if role == self.SORT_ROLE:
            return self._sort_key(row, col, fixed, ok)
        if role == Qt.ItemDataRole.DecorationRole:
            if col == self.COL_THUMB:
                return self._thumbnail(r.relative_path)
            if col == self.COL_WARN and ok and r.flags:
                return self._warn_icon
            if col == self.COL_STATUS and r.status == "error":
                return self._error_icon
            return None
        if role == Qt.ItemDataRole.ToolTipRole:
            return self._tooltip(row, col, fixed, ok)
        if role == Qt.ItemDataRole.TextAlignmentRole:
            if col == self.COL_RISK or col >= fixed:
                return int(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
            if col == self.COL_THUMB:
                return int(Qt.AlignmentFlag.AlignCenter)
            return int(Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignVCenter)
        if role == Qt.ItemDataRole.ForegroundRole:
            if r.status == "error" and col in (self.COL_STATUS, self.COL_TOP):
                return QBrush(QColor("#b71c1c"))
            if r.status == "skipped" or (not ok and col != self.COL_FILE):
                return QBrush(QColor("#5f6368"))
            if ok and r.above_threshold and col in (self.COL_RISK, self.COL_ABOVE):
                return QBrush(QColor("#b71c1c"))
            return None
        if role == Qt.ItemDataRole.FontRole:
            if ok and r.above_threshold and col in (self.COL_RISK, self.COL_ABOVE):
                font = QFont()
                font.setBold(True)
                return font
            return None
        if role == Qt.ItemDataRole.AccessibleTextRole and col == self.COL_THUMB:
            return f"Thumbnail of {r.relative_path}"
        return None

    def _status_text(self, row: _Row) -> str:
        status = row.result.status
        if status == "ok":
            return {ORIGIN_REUSED: "ok · reused", ORIGIN_EARLIER: "ok · earlier run"}.get(
                row.origin, "ok"
            )
        return status

    def _display(self, row: _Row, col: int, fixed: int, ok: bool) -> Any:
        r = row.result
        if col == self.COL_THUMB:
            return None
        if col == self.COL_FILE:
            return r.relative_path
        if col == self.COL_STATUS:
            return self._status_text(row)
        if col == self.COL_TOP:
            if not ok:
                return r.message or r.status
            c = next((c for c in self._classes if c.code == r.top_code), None)
            return f"{short_name(c.name)} ({c.code})" if c is not None else (r.top_code or "")
        if not ok:
            return ""
        if col == self.COL_RISK:
            return "" if r.risk is None else format_percent(r.risk)
        if col == self.COL_ABOVE:
            if r.above_threshold is None:
                return ""
            return "Above" if r.above_threshold else "below"
        if col == self.COL_WARN:
            return ", ".join(_FLAG_SHORT.get(f, flag_title(f)) for f in r.flags)
        if col >= fixed:
            p = r.probabilities.get(self._classes[col - fixed].code)
            return "" if p is None else format_percent(p)
        return None

    def _sort_key(self, row: _Row, col: int, fixed: int, ok: bool) -> Any:
        r = row.result
        if col in (self.COL_FILE, self.COL_THUMB):
            return r.relative_path.casefold()
        if col == self.COL_STATUS:
            return {"error": 0, "skipped": 1}.get(r.status, 2) + (
                0.5 if row.origin != ORIGIN_NEW else 0.0
            )
        if col == self.COL_TOP:
            return (r.top_code or "~" + r.status).casefold()
        if not ok:
            return -1.0  # errors and skipped files sort below every result
        if col == self.COL_RISK:
            return -1.0 if r.risk is None else float(r.risk)
        if col == self.COL_ABOVE:
            return -1.0 if r.above_threshold is None else (1.0 if r.above_threshold else 0.0)
        if col == self.COL_WARN:
            return float(len(r.flags))
        if col >= fixed:
            p = r.probabilities.get(self._classes[col - fixed].code)
            return -1.0 if p is None else float(p)
        return 0.0

    def _tooltip(self, row: _Row, col: int, fixed: int, ok: bool) -> str | None:
        r = row.result
        if col in (self.COL_FILE, self.COL_THUMB):
            meta = metadata_of(r)
            used = f"\nMetadata used: {meta.describe()}" if meta is not None else ""
            return f"{r.relative_path}{used}\nDouble-click to open the case with its heatmap."
        if col == self.COL_STATUS:
            if r.status != "ok":
                return r.message or r.status
            return {
                ORIGIN_NEW: "Analysed in this run.",
                ORIGIN_REUSED: "Found done already (same file, same model): reused, not computed "
                "again.",
                ORIGIN_EARLIER: "From an earlier run (results database in the output folder).",
            }.get(row.origin)
        if col == self.COL_TOP and not ok:
            return r.message or None
        if col == self.COL_WARN and ok and r.flags:
            return "\n".join(f"⚠ {flag_title(f)} ({f})" for f in r.flags)
        if col >= fixed and ok:
            c = self._classes[col - fixed]
            p = r.probabilities.get(c.code)
            return None if p is None else f"{c.name}: {format_percent(p)}"
        if col == self.COL_RISK and ok and r.risk is not None and self._threshold is not None:
            side = "at or above" if r.above_threshold else "below"
            return f"Risk {format_percent(r.risk)}: {side} the threshold of {self._threshold:.0%}"
        return None


class BatchSortProxy(QSortFilterProxyModel):
    """Passes sorting to :meth:`BatchResultsModel.sort` (one Python sort instead of a Python
    comparison per pair of rows, so large batches sort without freezing the window) and can hide
    every row that is not a problem (errors, skipped files)."""

    def __init__(self, parent: Any = None) -> None:
        super().__init__(parent)
        self.setDynamicSortFilter(True)
        self._problems_only = False

    def sort(self, column: int, order: Qt.SortOrder = Qt.SortOrder.AscendingOrder) -> None:
        model = self.sourceModel()
        if isinstance(model, BatchResultsModel):
            model.sort(column, order)
        else:  # pragma: no cover - another source model sorts the usual way
            super().sort(column, order)

    def set_problems_only(self, value: bool) -> None:
        if value == self._problems_only:
            return
        if hasattr(self, "beginFilterChange"):  # Qt >= 6.9
            self.beginFilterChange()
            self._problems_only = bool(value)
            self.endFilterChange(QSortFilterProxyModel.Direction.Rows)
        else:  # pragma: no cover - older Qt
            self._problems_only = bool(value)
            self.invalidateFilter()

    def problems_only(self) -> bool:
        return self._problems_only

    def filterAcceptsRow(
        self,
        source_row: int,
        source_parent: QModelIndex | QPersistentModelIndex,
    ) -> bool:
        if not self._problems_only:
            return True
        model = self.sourceModel()
        index = model.index(source_row, 0, source_parent)
        return bool(model.data(index, BatchResultsModel.PROBLEM_ROLE))


class _CellDelegate(QStyledItemDelegate):
    """Text cut at the end (file paths in the middle: the name and suffix stay visible); a
    selected row is drawn in the selection's text colour, never red on blue."""

    def initStyleOption(
        self, option: QStyleOptionViewItem, index: QModelIndex | QPersistentModelIndex
    ) -> None:
        super().initStyleOption(option, index)
        option.textElideMode = (
            Qt.TextElideMode.ElideMiddle
            if index.column() == BatchResultsModel.COL_FILE
            else Qt.TextElideMode.ElideRight
        )
        if option.state & QStyle.StateFlag.State_Selected:
            colour = option.palette.color(QPalette.ColorRole.HighlightedText)
            option.palette.setColor(QPalette.ColorRole.Text, colour)


class _RiskDelegate(_CellDelegate):
    """The risk as text over a thin bar, with a tick at the model's threshold."""

    def __init__(self, parent: Any = None) -> None:
        super().__init__(parent)
        self.threshold: float | None = None

    def paint(
        self,
        painter: QPainter,
        option: QStyleOptionViewItem,
        index: QModelIndex | QPersistentModelIndex,
    ) -> None:
        super().paint(painter, option, index)
        result = index.data(BatchResultsModel.RESULT_ROLE)
        risk = getattr(result, "risk", None)
        if result is None or result.status != "ok" or risk is None:
            return
        rect: QRect = option.rect.adjusted(6, 0, -6, 0)
        height = max(3, option.fontMetrics.height() // 4)
        top = rect.bottom() - height - max(2, option.fontMetrics.height() // 3)
        painter.save()
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        painter.setPen(Qt.PenStyle.NoPen)
        painter.setBrush(TRACK_COLOUR)
        painter.drawRect(rect.left(), top, rect.width(), height)
        above = bool(result.above_threshold)
        painter.setBrush(MALIGNANT_COLOUR if above else BENIGN_COLOUR)
        painter.drawRect(rect.left(), top, max(1, round(rect.width() * float(risk))), height)
        if self.threshold is not None:
            x = rect.left() + round(rect.width() * self.threshold)
            painter.setBrush(QColor("#263238"))
            painter.drawRect(x - 1, top - 2, 2, height + 4)
        painter.restore()


# --------------------------------------------------------------------------------------------------
# The view
# --------------------------------------------------------------------------------------------------


class _Thumbnails:
    """Requests waiting for the thumbnail task, newest first (rows on screen now come first);
    shared with the worker under a lock."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.queue: OrderedDict[str, None] = OrderedDict()

    def push(self, key: str) -> list[str]:
        """Queue ``key``; returns the oldest requests dropped to keep the queue short."""
        with self.lock:
            self.queue[key] = None
            self.queue.move_to_end(key)
            dropped = []
            while len(self.queue) > THUMBNAIL_QUEUE:
                dropped.append(self.queue.popitem(last=False)[0])
            return dropped

    def pop(self) -> str | None:
        with self.lock:
            return self.queue.popitem(last=True)[0] if self.queue else None

    def clear(self) -> list[str]:
        with self.lock:
            keys = list(self.queue)
            self.queue.clear()
            return keys

    def __len__(self) -> int:
        with self.lock:
            return len(self.queue)


def _thumbnail_image(
    folder: Path,
    database: Path | None,
    model_sha256: str | None,
    relative_path: str,
    side: int,
    store_box: list,
) -> QImage | None:
    """Worker side: the stored JPEG thumbnail if the database has one, else decoded from the file;
    scaled to fit ``side`` (device pixels). QImage (not QPixmap) is safe off the GUI thread."""
    data = None
    if database is not None and database.is_file():
        if not store_box:
            from desktop_app.core.batch.store import ResultStore

            store_box.append(ResultStore(database))
        store = store_box[0]
        getter = getattr(store, "thumbnail", None)
        if getter is not None:
            try:
                data = getter(relative_path, model_sha256)
            except Exception:  # a thumbnail is a nicety: fall back to the file
                data = None
    image = QImage()
    if data:
        image.loadFromData(data)
    if image.isNull():
        from desktop_app.core.imaging import load_image
        from desktop_app.ui.image_view import rgb_to_qimage

        try:
            loaded = load_image(folder / relative_path, max_side=max(side, THUMBNAIL_SIDE))
        except Exception:
            return None
        image = rgb_to_qimage(loaded.rgb)
    if image.isNull():
        return None
    return image.scaled(
        side,
        side,
        Qt.AspectRatioMode.KeepAspectRatio,
        Qt.TransformationMode.SmoothTransformation,
    )


class BatchView(QWidget):
    """Folder in, triage table out. Public methods are what the buttons call after their dialogs,
    and what tests and scripts call directly: :meth:`set_engine`, :meth:`set_folder`,
    :meth:`set_metadata_csv`, :meth:`set_output_dir`, :meth:`start`, :meth:`cancel`,
    :meth:`export_csv`, :meth:`export_summary_pdf`, :meth:`shutdown`."""

    caseRequested = Signal(object, object)  # (Path, PatientMetadata | None)
    runningChanged = Signal(bool)
    progressText = Signal(str)  # short: "40 of 120" while running, "" otherwise

    def __init__(self, settings: QSettings | None = None, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("batchView")
        self._settings = settings
        self.tasks = ProgressRunner(self)
        self.engine: Any = None
        self.folder: Path | None = None
        self.output_dir: Path | None = None
        self.metadata_csv: Path | None = None
        self._output_auto = True
        self.batch_size = 8
        self.decode_workers = 2
        self.last_summary: Any = None
        self.last_progress: Any = None
        self.last_export: Path | None = None
        self._run_engine: Any = None
        self._table_engine: Any = None  # the model whose results the table shows
        self._run_folder: Path | None = None
        self._cancel: threading.Event | None = None
        self._buffer: list[tuple[Any, str]] = []
        self._prev_reused = 0
        self._store_generation = 0
        self._thumb_generation = 0
        self._thumbs = _Thumbnails()
        self._stopped = False

        self._flush_timer = QTimer(self)
        self._flush_timer.setSingleShot(True)
        self._flush_timer.setInterval(FLUSH_INTERVAL_MS)
        self._flush_timer.timeout.connect(self._flush)

        self._build()
        self._update_controls()

    # ---------------------------------------------------------------------------------------------
    # Building
    # ---------------------------------------------------------------------------------------------
    def _build(self) -> None:
        fm = self.fontMetrics()
        em = fm.averageCharWidth()
        line = fm.height()

        self.banner = MessageBanner()

        def path_edit(name: str, placeholder: str) -> QLineEdit:
            edit = QLineEdit()
            edit.setObjectName(name)
            edit.setPlaceholderText(placeholder)
            edit.setClearButtonEnabled(True)
            edit.setMinimumWidth(em * 40)
            return edit

        self.folder_edit = path_edit("batchFolder", "The folder of dermoscopy images to analyse")
        self.folder_button = QPushButton("Choose…")
        self.folder_button.setObjectName("batchFolderButton")
        self.recursive_check = QCheckBox("Include &subfolders")
        self.recursive_check.setObjectName("batchRecursive")
        self.metadata_edit = path_edit(
            "batchMetadataCsv",
            "Optional: a CSV with age, sex and site per image (ISIC or HAM10000 columns)",
        )
        self.metadata_button = QPushButton("Choose…")
        self.metadata_button.setObjectName("batchMetadataButton")
        self.output_edit = path_edit("batchOutput", f"Default: <folder>/{DEFAULT_OUTPUT_NAME}")
        self.output_button = QPushButton("Choose…")
        self.output_button.setObjectName("batchOutputButton")
        self.reports_check = QCheckBox("Also write a PDF &report per image")
        self.reports_check.setObjectName("batchReports")

        grid = QGridLayout()
        grid.setHorizontalSpacing(em)
        for row, (text, edit, button, extra) in enumerate(
            (
                ("Image &folder:", self.folder_edit, self.folder_button, self.recursive_check),
                ("&Metadata CSV:", self.metadata_edit, self.metadata_button, None),
                ("&Results to:", self.output_edit, self.output_button, self.reports_check),
            )
        ):
            label = QLabel(text)
            label.setBuddy(edit)
            grid.addWidget(label, row, 0)
            grid.addWidget(edit, row, 1)
            grid.addWidget(button, row, 2)
            if extra is not None:
                grid.addWidget(extra, row, 3)
        grid.setColumnStretch(1, 1)

        self.start_button = QPushButton("&Start")
        self.start_button.setObjectName("batchStart")
        self.start_button.setDefault(True)
        self.cancel_button = QPushButton("Ca&ncel")
        self.cancel_button.setObjectName("batchCancel")
        self.cancel_button.setToolTip("Stop after the images being analysed; Resume continues")
        self.progress = QProgressBar()
        self.progress.setObjectName("batchProgress")
        self.progress.setRange(0, 1)
        self.progress.setValue(0)
        self.progress.setTextVisible(True)
        self.progress.setFormat("")
        self.progress.setMinimumWidth(em * 40)
        self.progress.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        run_row = QHBoxLayout()
        run_row.addWidget(self.start_button)
        run_row.addWidget(self.cancel_button)
        run_row.addSpacing(em)
        run_row.addWidget(self.progress, 1)

        self.summary_label = QLabel()
        self.summary_label.setObjectName("batchSummary")
        self.summary_label.setWordWrap(True)
        self.summary_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.summary_label.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
        self.problems_check = QCheckBox("Only &problems")
        self.problems_check.setObjectName("batchProblemsOnly")
        self.problems_check.setToolTip("Show only the files that could not be analysed")
        self.export_csv_button = QPushButton("Export &CSV…")
        self.export_csv_button.setObjectName("batchExportCsv")
        self.summary_pdf_button = QPushButton("Summary &PDF…")
        self.summary_pdf_button.setObjectName("batchSummaryPdf")
        self.summary_pdf_button.setToolTip(
            "A printable triage list sorted by risk, with thumbnails of each image and heatmap"
        )
        status_row = QHBoxLayout()
        status_row.addWidget(self.summary_label, 1)
        status_row.addWidget(self.problems_check)
        status_row.addSpacing(em)
        status_row.addWidget(self.export_csv_button)
        status_row.addWidget(self.summary_pdf_button)

        self.model = BatchResultsModel(self)
        self.proxy = BatchSortProxy(self)
        self.proxy.setSourceModel(self.model)
        self.table = QTableView()
        self.table.setObjectName("batchTable")
        self.table.setAccessibleName("Batch results")
        self.table.setModel(self.proxy)
        self.table.horizontalHeader().setSortIndicator(
            BatchResultsModel.COL_RISK, Qt.SortOrder.DescendingOrder
        )
        self.table.setSortingEnabled(True)  # sorts by the indicator: risk, highest first
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.setAlternatingRowColors(True)
        self.table.setWordWrap(False)
        self.table.setTextElideMode(Qt.TextElideMode.ElideMiddle)
        self.table.setHorizontalScrollMode(QAbstractItemView.ScrollMode.ScrollPerPixel)
        self.table.setVerticalScrollMode(QAbstractItemView.ScrollMode.ScrollPerPixel)
        self.thumb_side = max(48, round(line * 3.2))
        self.table.setIconSize(QSize(line, line))
        vheader = self.table.verticalHeader()
        vheader.hide()
        vheader.setSectionResizeMode(QHeaderView.ResizeMode.Fixed)
        vheader.setDefaultSectionSize(self.thumb_side + 6)
        self.cell_delegate = _CellDelegate(self.table)
        self.table.setItemDelegate(self.cell_delegate)
        self.risk_delegate = _RiskDelegate(self.table)
        self.table.setItemDelegateForColumn(BatchResultsModel.COL_RISK, self.risk_delegate)
        self.hint_label = QLabel(
            "Double-click a row (or press Enter) to open the case in the single-case view with its "
            "heatmap and metadata. Risk = calibrated probability of the malignant classes."
        )
        self.hint_label.setObjectName("batchHint")
        self.hint_label.setWordWrap(True)
        self.hint_label.setStyleSheet("color: #5f6368;")

        layout = QVBoxLayout(self)
        margin = line // 2
        layout.setContentsMargins(margin, margin, margin, margin)
        layout.setSpacing(max(4, line // 3))
        layout.addWidget(self.banner)
        layout.addLayout(grid)
        layout.addLayout(run_row)
        layout.addLayout(status_row)
        layout.addWidget(self.table, 1)
        layout.addWidget(self.hint_label)

        self.folder_button.clicked.connect(self._choose_folder)
        self.metadata_button.clicked.connect(self._choose_metadata)
        self.output_button.clicked.connect(self._choose_output)
        self.folder_edit.editingFinished.connect(self._folder_edited)
        self.metadata_edit.editingFinished.connect(self._metadata_edited)
        self.output_edit.editingFinished.connect(self._output_edited)
        self.start_button.clicked.connect(self.start)
        self.cancel_button.clicked.connect(self.cancel)
        self.problems_check.toggled.connect(self.proxy.set_problems_only)
        self.export_csv_button.clicked.connect(self._action_export_csv)
        self.summary_pdf_button.clicked.connect(self._action_summary_pdf)
        self.table.activated.connect(self._on_activated)
        self.model.thumbnailRequested.connect(self._request_thumbnail)
        self.model.modelReset.connect(self._update_controls)
        self._configure_columns()
        self.model.modelReset.connect(self._configure_columns)

    def _configure_columns(self) -> None:
        fm = self.fontMetrics()
        pad = fm.averageCharWidth() * 3
        header = self.table.horizontalHeader()
        header.setStretchLastSection(False)
        header.setHighlightSections(False)
        header.setSectionResizeMode(QHeaderView.ResizeMode.Interactive)
        header.setMinimumSectionSize(fm.averageCharWidth() * 4)
        m = BatchResultsModel
        widths = {
            m.COL_THUMB: self.thumb_side + 12,
            m.COL_FILE: fm.horizontalAdvance("x" * 20) + pad,
            m.COL_STATUS: fm.horizontalAdvance("ok · earlier run") + pad,
            m.COL_TOP: max(
                (
                    fm.horizontalAdvance(f"{short_name(c.name)} ({c.code})")
                    for c in self.model.classes()
                ),
                default=fm.horizontalAdvance("Melanocytic nevus (NV)"),
            )
            + pad,
            m.COL_RISK: fm.horizontalAdvance("100.0%") + pad * 2,
            m.COL_ABOVE: fm.horizontalAdvance("Threshold") + pad,
            m.COL_WARN: fm.horizontalAdvance("Low confidence, Malignant > threshold")
            + fm.height()
            + pad,
        }
        for col, width in widths.items():
            self.table.setColumnWidth(col, width)
        header.setSectionResizeMode(m.COL_THUMB, QHeaderView.ResizeMode.Fixed)
        percent = fm.horizontalAdvance("100.0%") + pad
        for i, c in enumerate(self.model.classes()):
            col = len(m.FIXED_HEADERS) + i
            self.table.setColumnWidth(col, max(percent, fm.horizontalAdvance(c.code) + pad))
        column, order = self.model.sort_column()  # the clinician's last choice survives
        if column >= self.model.columnCount():
            column, order = m.COL_RISK, Qt.SortOrder.DescendingOrder
        self.table.sortByColumn(column, order)

    # ---------------------------------------------------------------------------------------------
    # Inputs
    # ---------------------------------------------------------------------------------------------
    def set_engine(self, engine: Any) -> None:
        """The model the next run uses (a running batch keeps the one it started with)."""
        if engine is self.engine:
            return
        self.engine = engine
        if self.is_running():
            self._show_summary()
            return
        self._reset_table()
        self.reload_stored()

    def set_folder(self, folder: str | Path | None) -> None:
        """The folder to analyse; its results from an earlier run (this model) are shown."""
        if self.is_running():
            return
        path = Path(folder).expanduser() if folder not in (None, "") else None
        self.folder = path
        self.folder_edit.setText("" if path is None else str(path))
        if self._output_auto:
            self.output_dir = None if path is None else path / DEFAULT_OUTPUT_NAME
            self.output_edit.setText("" if self.output_dir is None else str(self.output_dir))
        self._stopped = False
        self.last_summary = None
        self.last_progress = None
        self.banner.dismiss()
        self._reset_table()
        self.reload_stored()

    def set_output_dir(self, folder: str | Path | None) -> None:
        """Where the results go (empty: ``<folder>/lesionlens-batch``)."""
        if self.is_running():
            return
        if folder in (None, ""):
            self._output_auto = True
            self.output_dir = None if self.folder is None else self.folder / DEFAULT_OUTPUT_NAME
        else:
            self._output_auto = False
            self.output_dir = Path(folder).expanduser()
        self.output_edit.setText("" if self.output_dir is None else str(self.output_dir))
        self._reset_table()
        self.reload_stored()

    def set_metadata_csv(self, path: str | Path | None) -> None:
        """An optional CSV of age, sex and site per image (None: every image's metadata unknown)."""
        self.metadata_csv = Path(path).expanduser() if path not in (None, "") else None
        self.metadata_edit.setText("" if self.metadata_csv is None else str(self.metadata_csv))

    def set_recursive(self, value: bool) -> None:
        self.recursive_check.setChecked(bool(value))

    def set_reports(self, value: bool) -> None:
        self.reports_check.setChecked(bool(value))

    def database_path(self) -> Path | None:
        return None if self.output_dir is None else self.output_dir / DATABASE_NAME

    def _folder_edited(self) -> None:
        text = self.folder_edit.text().strip()
        if (Path(text).expanduser() if text else None) != self.folder:
            self.set_folder(text or None)

    def _metadata_edited(self) -> None:
        self.set_metadata_csv(self.metadata_edit.text().strip() or None)

    def _output_edited(self) -> None:
        text = self.output_edit.text().strip()
        if (Path(text).expanduser() if text else None) != self.output_dir:
            self.set_output_dir(text or None)

    # ---------------------------------------------------------------------------------------------
    # Results already in the database
    # ---------------------------------------------------------------------------------------------
    def _reset_table(self) -> None:
        self._store_generation += 1
        self._thumb_generation += 1
        for key in self._thumbs.clear():
            self.model.forget_thumbnail_request(key)
        engine = self._table_engine = self.engine
        if engine is not None:
            self.model.set_classes(engine.card.codes, engine.card.threshold)
            self.risk_delegate.threshold = engine.card.threshold
        else:
            self.model.set_classes(())
            self.risk_delegate.threshold = None
        self._show_summary()

    def reload_stored(self, *, prune: bool = False) -> None:
        """Show the results the output folder's database holds for the current model (background).
        ``prune``: also drop rows the database no longer has (after a complete run)."""
        database, engine = self.database_path(), self.engine
        if database is None or engine is None or self.is_running():
            return
        if not database.is_file():
            return
        generation = self._store_generation
        sha = engine.sha256

        def op(_report: Callable[[Any], None], _cancel: threading.Event) -> list[Any]:
            from desktop_app.core.batch.store import ResultStore

            store = ResultStore(database)
            try:
                return list(store.results(sha))
            finally:
                store.close()

        self.tasks.start(
            "store",
            op,
            lambda results: self._on_stored(generation, results, prune),
            lambda exc: self._on_stored_failed(generation, exc),
            label="Reading earlier batch results…",
        )

    def _on_stored(self, generation: int, results: list[Any], prune: bool = False) -> None:
        if generation != self._store_generation:
            return
        if prune:
            self.model.retain({r.relative_path for r in results})
        latest: dict[str, Any] = {}
        for r in results:  # the newest result per file
            old = latest.get(r.relative_path)
            if old is None or (r.finished_at or "") >= (old.finished_at or ""):
                latest[r.relative_path] = r
        self.model.upsert([(r, ORIGIN_EARLIER) for r in latest.values()], keep_existing=True)
        if results and not self.is_running() and self.last_summary is None:
            self._stopped = True  # there is something to resume
        self._show_summary()
        self._update_controls()

    def _on_stored_failed(self, generation: int, exc: BaseException) -> None:
        if generation != self._store_generation:
            return
        self.banner.show_message(
            f"The earlier results could not be read: {_describe(exc)}", "warning"
        )

    # ---------------------------------------------------------------------------------------------
    # Running
    # ---------------------------------------------------------------------------------------------
    def is_running(self) -> bool:
        return self.tasks.is_busy("batch")

    def start(self) -> bool:
        """Start (or resume) the batch on the chosen folder; False with a message if it cannot."""
        if self.is_running():
            return False
        self._folder_edited()
        self._metadata_edited()
        self._output_edited()
        problem = self._start_problem()
        if problem:
            self.banner.show_message(problem, "warning")
            return False
        self.banner.dismiss()
        engine, folder, out = self.engine, self.folder, self.output_dir
        assert engine is not None and folder is not None and out is not None
        if self._table_engine is not engine:  # never mix two models' answers in one table
            self._reset_table()
        self._store_generation += 1  # a database read still on its way is not needed now
        csv = self.metadata_csv
        recursive = self.recursive_check.isChecked()
        reports = self.reports_check.isChecked()
        batch_size, workers = int(self.batch_size), int(self.decode_workers)
        self._run_engine, self._run_folder = engine, folder
        self._buffer = []
        self._prev_reused = 0
        self.last_progress = None
        self.last_summary = None
        self._stopped = False

        def op(report: Callable[[Any], None], cancel: threading.Event) -> Any:
            from desktop_app.core.batch.pipeline import run_batch

            return run_batch(
                folder,
                engine,
                out,
                recursive=recursive,
                metadata_csv=csv,
                reports=reports,
                on_progress=report,
                cancel=cancel,
                decode_workers=workers,
                batch_size=batch_size,
            )

        self._cancel = self.tasks.start(
            "batch",
            op,
            self._on_finished,
            self._on_failed,
            on_progress=self._on_progress,
            label="Batch review…",
        )
        self.progress.setRange(0, 0)  # busy until the folder has been scanned
        self.progress.setFormat("Scanning the folder…")
        self._update_controls()
        self._show_summary()
        self.runningChanged.emit(True)
        return True

    def _start_problem(self) -> str:
        if self.engine is None:
            return "No model loaded: open a model first (File > Open model…)."
        if self.folder is None:
            return "Choose the folder of images to analyse first."
        if not self.folder.is_dir():
            return f"The folder {self.folder} does not exist (or is not a folder)."
        if self.metadata_csv is not None and not self.metadata_csv.is_file():
            return f"The metadata file {self.metadata_csv} was not found."
        if self.output_dir is None:
            return "Choose where the results go."
        return ""

    def cancel(self) -> None:
        """Stop the run: the images being analysed finish, then it stops (Resume continues)."""
        if not self.is_running():
            return
        self.tasks.cancel("batch")
        self.progress.setFormat("Stopping… the images being analysed finish first")
        self._update_controls()

    def _on_progress(self, progress: Any) -> None:
        last = getattr(progress, "last", None)
        if last is not None:
            reused = getattr(progress, "reused", 0) > self._prev_reused
            self._buffer.append((last, ORIGIN_REUSED if reused else ORIGIN_NEW))
        self._prev_reused = getattr(progress, "reused", self._prev_reused)
        self.last_progress = progress
        if not self._flush_timer.isActive():
            self._flush_timer.start()

    def _flush(self) -> None:
        """Rows and progress to the screen (at most every FLUSH_INTERVAL_MS while running); only
        what changed is set, so a long run costs the GUI thread little."""
        if self._flush_timer.isActive():
            self._flush_timer.stop()
        if self._buffer:
            items, self._buffer = self._buffer, []
            self.model.upsert(items)
            if not self.export_csv_button.isEnabled() and self.model.has_status("ok"):
                self._update_controls()
        p = self.last_progress
        if p is not None and self.is_running():
            top = max(1, int(p.total))
            if self.progress.maximum() != top or self.progress.minimum() != 0:
                self.progress.setRange(0, top)
            value = min(int(p.done), top)
            if self.progress.value() != value:
                self.progress.setValue(value)
            if not self.tasks.is_cancelling("batch"):
                text = format_progress(p.done, p.total, p.rate, p.eta_seconds)
                if text != self.progress.format():
                    self.progress.setFormat(text)
            self.progressText.emit(f"{p.done} of {p.total}")
        self._show_summary()

    def _on_finished(self, summary: Any) -> None:
        self._flush()
        self._cancel = None
        self.last_summary = summary
        self._stopped = bool(getattr(summary, "cancelled", False))
        total = int(getattr(summary, "total", 0))
        p = self.last_progress
        done = int(p.done) if p is not None else (0 if self._stopped else total)
        self.progress.setRange(0, max(1, total))
        self.progress.setValue(min(done, max(1, total)) if total else 0)
        if self._stopped:
            self.progress.setFormat(f"Stopped: {done} of {total}")
        elif total == 0:
            self.progress.setFormat("No images found in this folder")
        else:
            self.progress.setFormat(f"Finished: {total} of {total} in {_duration(summary.seconds)}")
        problems = tuple(getattr(summary, "problems", ()) or ())
        if problems:
            shown = "\n".join(f"• {p}" for p in problems[:4])
            more = f"\n… and {len(problems) - 4} more" if len(problems) > 4 else ""
            self.banner.show_message(f"The batch ran, with remarks:\n{shown}{more}", "warning")
        self._update_controls()
        self._show_summary()
        self.progressText.emit("")
        self.runningChanged.emit(False)
        # Rows the progress did not carry (the skipped files) come from the database.
        self._store_generation += 1
        if self.engine is self._table_engine:
            self.reload_stored(
                prune=not self._stopped
            )  # a complete run: the database is the folder

    def _on_failed(self, exc: BaseException) -> None:
        self._flush()
        self._cancel = None
        self._stopped = True
        self.progress.setRange(0, 1)
        self.progress.setValue(0)
        self.progress.setFormat("The batch stopped with an error")
        self.banner.show_message(f"The batch could not run: {_describe(exc)}", "error")
        self._update_controls()
        self._show_summary()
        self.progressText.emit("")
        self.runningChanged.emit(False)

    def shutdown(self, timeout_ms: int = 60_000) -> bool:
        """Stop everything (closing the window): the images in flight finish; True when idle."""
        self._flush_timer.stop()
        for key in self._thumbs.clear():
            self.model.forget_thumbnail_request(key)
        self.tasks.cancel_all()
        return self.tasks.wait_until_idle(timeout_ms)

    # ---------------------------------------------------------------------------------------------
    # State shown
    # ---------------------------------------------------------------------------------------------
    def _update_controls(self, *_args: Any) -> None:
        running = self.is_running()
        cancelling = running and self.tasks.is_cancelling("batch")
        for w in (
            self.folder_edit,
            self.folder_button,
            self.recursive_check,
            self.metadata_edit,
            self.metadata_button,
            self.output_edit,
            self.output_button,
            self.reports_check,
        ):
            w.setEnabled(not running)
        self.start_button.setEnabled(not running and self.engine is not None)
        self.start_button.setText("&Resume" if self._stopped else "&Start")
        self.start_button.setToolTip(
            "Continue where the last run stopped: finished images are reused, not recomputed"
            if self._stopped
            else "Analyse every image in the folder"
        )
        self.cancel_button.setEnabled(running and not cancelling)
        has_results = self.model.has_status("ok")
        exporting = self.tasks.is_busy("export")
        self.export_csv_button.setEnabled(has_results and not exporting)
        self.summary_pdf_button.setEnabled(has_results and not exporting)

    def _show_summary(self) -> None:
        text = self.summary_text()
        if text != self.summary_label.text():
            self.summary_label.setText(text)

    def summary_text(self) -> str:
        """The problems / skipped / reused line under the progress bar."""
        p = self.last_progress
        s = self.last_summary
        parts: list[str] = []
        if s is not None or (p is not None and self.is_running()):
            src = s if s is not None else p
            parts.append(f"{src.ok} ok")
            parts.append(_plural(src.errors, "error"))
            parts.append(f"{src.skipped} skipped")
            parts.append(f"{src.reused} reused")
            text = " · ".join(parts)
            if s is not None and s.errors:
                text += " — tick 'Only problems' to list the files that could not be analysed"
            elif s is not None and not s.cancelled and s.total:
                text += f" — results in {s.out_dir}"
            run_engine = self._run_engine
            if self.engine is not None and run_engine is not None and self.engine is not run_engine:
                text += " — the model changed: Start runs the new one"
            return text
        if self.engine is None:
            return "Open a model to run a batch (File > Open model…)."
        if self.folder is None:
            return "Choose a folder of dermoscopy images, then Start."
        n = self.model.rowCount()
        if n:
            errors = self.model.count("error")
            return (
                f"{_plural(n, 'result')} from an earlier run ({errors} with problems): "
                "Resume analyses the rest; finished images are reused, not recomputed."
            )
        return "Ready: Start analyses every image in the folder."

    # ---------------------------------------------------------------------------------------------
    # Table
    # ---------------------------------------------------------------------------------------------
    def _on_activated(self, index: QModelIndex) -> None:
        self.open_row(self.proxy.mapToSource(index).row())

    def open_row(self, source_row: int) -> None:
        """Ask for the case of ``source_row`` (model row) in the single-case view."""
        folder = self._run_folder if self.is_running() else self.folder
        if folder is None or not 0 <= source_row < self.model.rowCount():
            return
        result = self.model.result(source_row)
        self.caseRequested.emit(folder / result.relative_path, metadata_of(result))

    def visible_paths(self) -> list[str]:
        """The relative paths in the table's current order (sorting and filtering applied)."""
        col = BatchResultsModel.COL_FILE
        return [self.proxy.index(r, col).data() for r in range(self.proxy.rowCount())]

    def _request_thumbnail(self, relative_path: str) -> None:
        for key in self._thumbs.push(relative_path):
            self.model.forget_thumbnail_request(key)
        if self.tasks.is_busy("thumbnails"):
            return
        self._start_thumbnails()

    def _start_thumbnails(self) -> None:
        folder = self._run_folder if self.is_running() else self.folder
        if folder is None or not len(self._thumbs):
            return
        database = self.database_path()
        sha = getattr(self._table_engine, "sha256", None)
        generation = self._thumb_generation
        side = round(self.thumb_side * max(1.0, self.devicePixelRatioF()))
        queue = self._thumbs

        def op(report: Callable[[Any], None], cancel: threading.Event) -> None:
            store_box: list = []
            try:
                while not cancel.is_set():
                    key = queue.pop()
                    if key is None:
                        return
                    report((key, _thumbnail_image(folder, database, sha, key, side, store_box)))
            finally:
                for store in store_box:
                    store.close()

        self.tasks.start(
            "thumbnails",
            op,
            lambda _none: self._thumbnails_done(),
            lambda _exc: self._thumbnails_done(),
            on_progress=lambda item: self._on_thumbnail(generation, *item),
        )

    def _on_thumbnail(self, generation: int, key: str, image: QImage | None) -> None:
        if generation != self._thumb_generation:
            self.model.forget_thumbnail_request(key)
            return
        pixmap = None
        if image is not None and not image.isNull():
            pixmap = QPixmap.fromImage(image)
            pixmap.setDevicePixelRatio(max(1.0, self.devicePixelRatioF()))
        self.model.set_thumbnail(key, pixmap)

    def _thumbnails_done(self) -> None:
        if len(self._thumbs):
            self._start_thumbnails()

    # ---------------------------------------------------------------------------------------------
    # Exports
    # ---------------------------------------------------------------------------------------------
    def export_csv(self, path: str | Path) -> bool:
        """Write the results (current model) as CSV to ``path`` (background, atomic)."""
        path = Path(path)
        database, engine = self.database_path(), self._table_engine
        if database is None or engine is None or not database.is_file():
            self.banner.show_message("There are no batch results to export yet.", "warning")
            return False
        codes, sha = tuple(engine.card.codes), engine.sha256

        def op(_report: Callable[[Any], None], _cancel: threading.Event) -> Path:
            from desktop_app.core.batch.store import ResultStore

            store = ResultStore(database)
            try:
                return Path(store.export_csv(path, codes, sha))
            finally:
                store.close()

        self._run_export(op, f"Writing {path.name}…")
        return True

    def export_summary_pdf(self, path: str | Path) -> bool:
        """Write the batch summary PDF (triage list by risk, thumbnails) to ``path`` (background)."""
        path = Path(path)
        database, engine, folder = self.database_path(), self._table_engine, self.folder
        if database is None or engine is None or folder is None or not database.is_file():
            self.banner.show_message("There are no batch results to summarise yet.", "warning")
            return False

        def op(_report: Callable[[Any], None], _cancel: threading.Event) -> Path:
            from desktop_app.core.batch.store import ResultStore
            from desktop_app.core.batch.summary_pdf import write_batch_summary

            store = ResultStore(database)
            try:
                return Path(write_batch_summary(path, store, folder, engine))
            finally:
                store.close()

        self._run_export(op, f"Writing {path.name}…")
        return True

    def _run_export(self, op: Callable[..., Path], label: str) -> None:
        self.summary_label.setText(label)
        self.tasks.start("export", op, self._on_exported, self._on_export_failed, label=label)
        self._update_controls()

    def _on_exported(self, path: Path) -> None:
        self.last_export = Path(path)
        self._update_controls()
        self._show_summary()
        self.banner.show_message(f"Saved: {path}", "info")

    def _on_export_failed(self, exc: BaseException) -> None:
        self._update_controls()
        self._show_summary()
        self.banner.show_message(f"The export failed: {_describe(exc)}", "error")

    # ---------------------------------------------------------------------------------------------
    # Dialogs (the only places that ask for paths)
    # ---------------------------------------------------------------------------------------------
    def _last_dir(self) -> str:
        if self.folder is not None:
            return str(self.folder)
        if self._settings is not None:
            value = self._settings.value("batch/last_dir", "")
            if value:
                return str(value)
        return str(Path.home())

    def _choose_folder(self) -> None:
        path = QFileDialog.getExistingDirectory(
            self, "Choose the folder of dermoscopy images", self._last_dir()
        )
        if path:
            if self._settings is not None:
                self._settings.setValue("batch/last_dir", path)
            self.set_folder(path)

    def _choose_metadata(self) -> None:
        path, _ = QFileDialog.getOpenFileName(
            self, "Choose the metadata CSV", self._last_dir(), "CSV files (*.csv);;All files (*)"
        )
        if path:
            self.set_metadata_csv(path)

    def _choose_output(self) -> None:
        start = str(self.output_dir) if self.output_dir is not None else self._last_dir()
        path = QFileDialog.getExistingDirectory(self, "Where the batch results go", start)
        if path:
            self.set_output_dir(path)

    def _action_export_csv(self) -> None:
        start = self.output_dir / "results-export.csv" if self.output_dir else Path.home()
        path, _ = QFileDialog.getSaveFileName(
            self, "Export batch results", str(start), "CSV (*.csv)"
        )
        if path:
            if not path.lower().endswith(".csv"):
                path += ".csv"
            self.export_csv(path)

    def _action_summary_pdf(self) -> None:
        start = self.output_dir / "batch-summary.pdf" if self.output_dir else Path.home()
        path, _ = QFileDialog.getSaveFileName(self, "Batch summary PDF", str(start), "PDF (*.pdf)")
        if path:
            if not path.lower().endswith(".pdf"):
                path += ".pdf"
            self.export_summary_pdf(path)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, LesionLensError):
        return str(exc)
    import sys
    import traceback

    traceback.print_exception(exc, file=sys.stderr)
    return f"Unexpected error ({type(exc).__name__}): {exc}"


def _duration(seconds: float) -> str:
    seconds = float(seconds or 0.0)
    if seconds < 60:
        return f"{seconds:.1f} s"
    return format_eta(seconds)
