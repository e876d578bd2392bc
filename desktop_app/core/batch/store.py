"""The batch's results, one SQLite row per image, written as each image finishes.

``OUT/lesionlens-results.sqlite`` in WAL mode with ``synchronous=NORMAL``: every :meth:`save` is
one transaction, so a program killed at any moment (``kill -9``, a crash, a closed laptop that
never wakes) leaves the database consistent and loses only the images whose transaction had not
committed. (After a *power* loss WAL with NORMAL may also lose the last few transactions, never
consistency.) A row is keyed by (relative path, model SHA-256); it also holds the file's content
SHA-256, so :meth:`is_done` can tell a finished image from a file that changed since.

Besides the :class:`CaseResult` fields a row keeps two small pictures for the triage list, so the
summary PDF and the window never decode or run the model again: ``thumbnail`` (JPEG, longest side
:data:`THUMBNAIL_SIDE`) and ``heatmap`` (the top class's Grad-CAM as the model gave it, e.g. 5 x 5,
8-bit grey PNG; :meth:`ResultStore.heatmap_array` maps it onto the thumbnail with the model's
resize mode, recorded by :meth:`ResultStore.set_preprocess`). ``report`` records the per-case PDF written for the row, if any.

One :class:`ResultStore` may be shared by threads (a lock serialises them); a second store on the
same file (another thread, the window while a batch runs) works too (WAL: readers never block the
writer). Nothing here logs, and the database holds what the CSV holds: no image pixels beyond the
thumbnail, no full paths.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import sqlite3
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from desktop_app.core.atomic import atomic_open
from desktop_app.core.errors import LesionLensError
from desktop_app.core.imaging import PreprocessSpec

__all__ = [
    "DATABASE_NAME",
    "THUMBNAIL_SIDE",
    "UNEXPECTED",
    "CaseResult",
    "Preview",
    "ResultStore",
    "StoreError",
    "now_iso",
]

DATABASE_NAME = "lesionlens-results.sqlite"
UNEXPECTED = "unexpected error"  # how a failure that is not the file's own fault begins
THUMBNAIL_SIDE = 96
_SCHEMA_VERSION = 1
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


class StoreError(LesionLensError):
    """The results database cannot be opened or written (readable message)."""


def now_iso() -> str:
    """The current time, ISO 8601 UTC, to the second (``2024-05-01T17:03:12Z``)."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class CaseResult:
    """One image's outcome. ``status``: "ok", "error" or "skipped"; ``message``: the readable
    reason ("" when ok); ``probabilities``: calibrated, by class code; ``flags``: Flag codes;
    ``metadata``: the PatientMetadata.to_dict() the model used ({} for an image-only model)."""

    relative_path: str
    status: str
    message: str
    content_sha256: str
    model_sha256: str
    top_code: str | None
    probabilities: dict[str, float]
    risk: float | None
    above_threshold: bool | None
    flags: tuple[str, ...]
    metadata: dict
    finished_at: str

    @classmethod
    def failed(
        cls,
        relative_path: str,
        status: str,
        message: str,
        model_sha256: str,
        content_sha256: str = "",
        metadata: dict | None = None,
    ) -> CaseResult:
        """An "error" or "skipped" row: no answer, just the reason."""
        return cls(
            relative_path=relative_path,
            status=status,
            message=message,
            content_sha256=content_sha256,
            model_sha256=model_sha256,
            top_code=None,
            probabilities={},
            risk=None,
            above_threshold=None,
            flags=(),
            metadata=dict(metadata or {}),
            finished_at=now_iso(),
        )


@dataclass(frozen=True)
class Preview:
    """The small pictures stored with an ok row: ``thumbnail`` JPEG bytes and ``heatmap`` (the top
    class's heat in [0, 1] at the model's heatmap resolution) as 8-bit grey PNG bytes."""

    thumbnail: bytes
    heatmap: bytes | None = field(default=None)


_COLUMNS = (
    "relative_path, status, message, content_sha256, model_sha256, top_code, probabilities, "
    "risk, above_threshold, flags, metadata, finished_at"
)

_TRIAGE_ORDER = (
    " ORDER BY CASE status WHEN 'ok' THEN 0 WHEN 'error' THEN 1 ELSE 2 END,"
    " risk DESC, relative_path COLLATE NOCASE, relative_path"
)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS info (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS results (
    relative_path   TEXT NOT NULL,
    model_sha256    TEXT NOT NULL,
    content_sha256  TEXT NOT NULL,
    status          TEXT NOT NULL CHECK (status IN ('ok', 'error', 'skipped')),
    message         TEXT NOT NULL,
    top_code        TEXT,
    probabilities   TEXT NOT NULL,
    risk            REAL,
    above_threshold INTEGER,
    flags           TEXT NOT NULL,
    metadata        TEXT NOT NULL,
    finished_at     TEXT NOT NULL,
    thumbnail       BLOB,
    heatmap         BLOB,
    report          TEXT,
    PRIMARY KEY (relative_path, model_sha256)
);
CREATE INDEX IF NOT EXISTS results_by_model_risk ON results (model_sha256, risk);
"""


def _row_to_result(row: Sequence[Any]) -> CaseResult:
    (rel, status, message, content, model, top, probs, risk, above, flags, meta, finished) = row
    return CaseResult(
        relative_path=rel,
        status=status,
        message=message,
        content_sha256=content,
        model_sha256=model,
        top_code=top,
        probabilities={str(k): float(v) for k, v in json.loads(probs).items()},
        risk=None if risk is None else float(risk),
        above_threshold=None if above is None else bool(above),
        flags=tuple(json.loads(flags)),
        metadata=json.loads(meta),
        finished_at=finished,
    )


def _csv_text(value: str) -> str:
    """A cell a spreadsheet will not run as a formula (a file named '=cmd...')."""
    return "'" + value if value.startswith(_FORMULA_START) else value


class ResultStore:
    """The SQLite results database of one output folder (see the module docstring)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock = threading.RLock()
        try:
            self._db = sqlite3.connect(
                os.fspath(self.path), timeout=30.0, check_same_thread=False, isolation_level=None
            )
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)
            self._db.execute(
                "INSERT OR IGNORE INTO info (key, value) VALUES ('schema_version', ?)",
                (str(_SCHEMA_VERSION),),
            )
            version = self._db.execute(
                "SELECT value FROM info WHERE key = 'schema_version'"
            ).fetchone()[0]
        except sqlite3.DatabaseError as exc:
            raise StoreError(
                f"The results database '{self.path.name}' could not be opened ({exc}). If it is "
                "damaged, move it away: the batch will then start from the beginning."
            ) from None
        if int(version) != _SCHEMA_VERSION:
            self._db.close()
            raise StoreError(
                f"The results database '{self.path.name}' was made by another version of "
                "LesionLens; choose another output folder."
            )

    # -- context manager ----------------------------------------------------------------------
    def __enter__(self) -> ResultStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        with self._lock, contextlib.suppress(sqlite3.Error):
            self._db.close()

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as exc:
                raise StoreError(f"The results database is busy or read-only ({exc}).") from None
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            try:
                self._db.execute("COMMIT")
            except sqlite3.OperationalError as exc:
                with contextlib.suppress(sqlite3.Error):
                    self._db.execute("ROLLBACK")
                raise StoreError(
                    f"The results could not be saved ({exc}); is the disk full?"
                ) from None

    # -- writing ------------------------------------------------------------------------------
    def save(
        self, results: Sequence[CaseResult], previews: Mapping[str, Preview] | None = None
    ) -> None:
        """Store ``results`` in one transaction, replacing earlier rows of the same image and
        model. ``previews``: thumbnails and heatmaps by relative path (ok rows)."""
        if not results:
            return
        previews = previews or {}
        rows = []
        for r in results:
            pv = previews.get(r.relative_path)
            rows.append(
                (
                    r.relative_path,
                    r.model_sha256,
                    r.content_sha256,
                    r.status,
                    r.message,
                    r.top_code,
                    json.dumps({k: float(v) for k, v in r.probabilities.items()}),
                    None if r.risk is None else float(r.risk),
                    None if r.above_threshold is None else int(bool(r.above_threshold)),
                    json.dumps(list(r.flags)),
                    json.dumps(r.metadata, sort_keys=True),
                    r.finished_at,
                    None if pv is None else sqlite3.Binary(pv.thumbnail),
                    None if pv is None or pv.heatmap is None else sqlite3.Binary(pv.heatmap),
                )
            )
        with self._transaction() as db:
            db.executemany(
                "INSERT OR REPLACE INTO results (relative_path, model_sha256, content_sha256, "
                "status, message, top_code, probabilities, risk, above_threshold, flags, "
                "metadata, finished_at, thumbnail, heatmap, report) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, NULL)",
                rows,
            )

    def mark_report(self, relative_path: str, model_sha256: str, report: str) -> None:
        """Record that the per-case PDF ``report`` (path relative to the output folder) was
        written for this row. The file is shared by every model's row of that image (one
        ``reports/<path>.pdf``): the other models' rows no longer have theirs."""
        with self._transaction() as db:
            db.execute(
                "UPDATE results SET report = NULL WHERE relative_path = ? AND model_sha256 != ?",
                (relative_path, model_sha256),
            )
            db.execute(
                "UPDATE results SET report = ? WHERE relative_path = ? AND model_sha256 = ?",
                (report, relative_path, model_sha256),
            )

    def prune(self, keep: set[str] | frozenset[str], model_sha256: str) -> list[str]:
        """Delete this model's rows for paths not in ``keep`` (files gone from the folder since
        an earlier run), so the CSV lists the folder as it is. Returns the deleted paths."""
        gone = [(p, model_sha256) for p in self.stored_paths(model_sha256) if p not in keep]
        if gone:
            with self._transaction() as db:
                db.executemany(
                    "DELETE FROM results WHERE relative_path = ? AND model_sha256 = ?", gone
                )
        return [p for p, _ in gone]

    def stored_paths(self, model_sha256: str) -> list[str]:
        """The relative paths this model has rows for."""
        with self._lock:
            return [
                row[0]
                for row in self._db.execute(
                    "SELECT relative_path FROM results WHERE model_sha256 = ?", (model_sha256,)
                )
            ]

    def set_info(self, key: str, value: str) -> None:
        with self._transaction() as db:
            db.execute("INSERT OR REPLACE INTO info (key, value) VALUES (?, ?)", (key, value))

    def info(self, key: str) -> str | None:
        with self._lock:
            row = self._db.execute("SELECT value FROM info WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    # -- reading ------------------------------------------------------------------------------
    def is_done(
        self,
        relative_path: str,
        content_sha256: str,
        model_sha256: str,
        *,
        metadata: dict | None = None,
        need_report: bool = False,
    ) -> bool:
        """True when this file content was already analysed with this model (ok, or an error the
        file itself caused; an "unexpected error" is tried again). ``metadata``: also require
        the same metadata (a corrected spreadsheet means a new answer). ``need_report``: also
        require the per-case PDF."""
        if not content_sha256:
            return False
        with self._lock:
            row = self._db.execute(
                "SELECT status, message, metadata, report FROM results "
                "WHERE relative_path = ? AND model_sha256 = ? AND content_sha256 = ?",
                (relative_path, model_sha256, content_sha256),
            ).fetchone()
        if row is None or row[0] not in ("ok", "error"):
            return False
        status, message, meta, report = row
        if status == "error" and message.startswith(UNEXPECTED):
            return False
        if metadata is not None and json.loads(meta) != metadata:
            return False
        if need_report and status == "ok":
            if not report:
                return False
            return (self.path.parent / report).is_file()
        return True

    def get(self, relative_path: str, model_sha256: str) -> CaseResult | None:
        with self._lock:
            row = self._db.execute(
                f"SELECT {_COLUMNS} FROM results WHERE relative_path = ? AND model_sha256 = ?",
                (relative_path, model_sha256),
            ).fetchone()
        return None if row is None else _row_to_result(row)

    def iter_results(
        self, model_sha256: str | None = None, *, triage: bool = False
    ) -> Iterator[CaseResult]:
        """Like :meth:`results` (or :meth:`triage`) but streamed: flat memory for huge batches."""
        query = f"SELECT {_COLUMNS} FROM results"
        args: tuple[str, ...] = ()
        if model_sha256 is not None:
            query += " WHERE model_sha256 = ?"
            args = (model_sha256,)
        query += (
            _TRIAGE_ORDER if triage else " ORDER BY relative_path COLLATE NOCASE, relative_path"
        )
        with self._lock:
            cursor = self._db.cursor()
            cursor.execute(query, args)
        while True:
            with self._lock:
                chunk = cursor.fetchmany(500)
            if not chunk:
                return
            for row in chunk:
                yield _row_to_result(row)

    def results(self, model_sha256: str | None = None) -> list[CaseResult]:
        """Every stored result (of one model, when given), in the scan's order (by path)."""
        from desktop_app.core.batch.scan import sort_key

        return sorted(self.iter_results(model_sha256), key=lambda r: sort_key(r.relative_path))

    def triage(self, model_sha256: str) -> list[CaseResult]:
        """This model's results in triage order: highest malignancy risk first, then errors,
        then skipped files (ties by path, case-insensitive)."""
        return list(self.iter_results(model_sha256, triage=True))

    def counts(self, model_sha256: str) -> dict[str, int]:
        """How many rows of each status this model has: {"ok": n, "error": n, "skipped": n}."""
        with self._lock:
            rows = self._db.execute(
                "SELECT status, COUNT(*) FROM results WHERE model_sha256 = ? GROUP BY status",
                (model_sha256,),
            ).fetchall()
        out = {"ok": 0, "error": 0, "skipped": 0}
        out.update({str(s): int(n) for s, n in rows})
        return out

    def _blob(self, column: str, relative_path: str, model_sha256: str | None) -> bytes | None:
        query = f"SELECT {column} FROM results WHERE relative_path = ?"
        args: tuple[str, ...] = (relative_path,)
        if model_sha256 is not None:
            query += " AND model_sha256 = ?"
            args += (model_sha256,)
        with self._lock:
            row = self._db.execute(query + " ORDER BY finished_at DESC LIMIT 1", args).fetchone()
        return None if row is None or row[0] is None else bytes(row[0])

    def thumbnail(self, relative_path: str, model_sha256: str | None = None) -> bytes | None:
        """The image's thumbnail as JPEG bytes (longest side THUMBNAIL_SIDE), or None (errors,
        skipped files). Without ``model_sha256``: the most recent row of that path."""
        return self._blob("thumbnail", relative_path, model_sha256)

    def set_preprocess(self, model_sha256: str, spec: PreprocessSpec) -> None:
        """Record how this model maps images to its input (to draw its heatmaps on thumbnails)."""
        self.set_info(f"preprocess:{model_sha256}", json.dumps(spec.to_dict()))

    def _spec(self, model_sha256: str, heat: np.ndarray) -> PreprocessSpec:
        raw = self.info(f"preprocess:{model_sha256}")
        if raw is not None:
            with contextlib.suppress(ValueError, TypeError):
                return PreprocessSpec.from_dict(json.loads(raw))
        return PreprocessSpec(height=int(heat.shape[0]), width=int(heat.shape[1]))

    def heatmap_array(
        self, relative_path: str, model_sha256: str | None = None
    ) -> np.ndarray | None:
        """The top class's Grad-CAM mapped onto the thumbnail (the model's resize mode taken into
        account): float32 (h, w) in [0, 1] at the thumbnail's size, or None."""
        query = "SELECT heatmap, thumbnail, model_sha256 FROM results WHERE relative_path = ?"
        args: tuple[str, ...] = (relative_path,)
        if model_sha256 is not None:
            query += " AND model_sha256 = ?"
            args += (model_sha256,)
        with self._lock:
            row = self._db.execute(query + " ORDER BY finished_at DESC LIMIT 1", args).fetchone()
        if row is None or row[0] is None or row[1] is None:
            return None
        grey = cv2.imdecode(np.frombuffer(bytes(row[0]), np.uint8), cv2.IMREAD_GRAYSCALE)
        thumb = cv2.imdecode(np.frombuffer(bytes(row[1]), np.uint8), cv2.IMREAD_COLOR)
        if grey is None or thumb is None:
            return None
        from desktop_app.core.heatmap import heatmap_on_image

        heat = grey.astype(np.float32) / 255.0
        size = (int(thumb.shape[1]), int(thumb.shape[0]))
        return heatmap_on_image(heat, size, self._spec(str(row[2]), heat))

    def heatmap_thumbnail(
        self, relative_path: str, model_sha256: str | None = None
    ) -> bytes | None:
        """The thumbnail with the top class's Grad-CAM drawn over it (the single-case view's
        colours and blend, :func:`desktop_app.core.heatmap.overlay`), as JPEG bytes, or None."""
        from desktop_app.core.heatmap import overlay

        thumb = self.thumbnail(relative_path, model_sha256)
        heat = self.heatmap_array(relative_path, model_sha256)
        if thumb is None or heat is None:
            return None
        bgr = cv2.imdecode(np.frombuffer(thumb, np.uint8), cv2.IMREAD_COLOR)
        if bgr is None:
            return None
        tinted = overlay(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), heat)
        return encode_jpeg(tinted)

    def report_path(self, relative_path: str, model_sha256: str) -> Path | None:
        """The per-case PDF written for this row (None when none was)."""
        with self._lock:
            row = self._db.execute(
                "SELECT report FROM results WHERE relative_path = ? AND model_sha256 = ?",
                (relative_path, model_sha256),
            ).fetchone()
        if row is None or not row[0]:
            return None
        return self.path.parent / row[0]

    # -- export -------------------------------------------------------------------------------
    def export_csv(self, path: Path, class_codes: Sequence[str], model_sha256: str) -> Path:
        """Write this model's results to ``path`` atomically (a temporary file renamed over it),
        in triage order. Columns: path, status, message, top_class, one probability column per
        class code, malignancy_risk, above_threshold (yes/no), flags (";"-separated Flag codes).
        Error and skipped rows leave the answer columns empty."""
        codes = list(class_codes)
        target = Path(path)
        with atomic_open(target, "w") as fh:
            writer = csv.writer(fh, lineterminator="\r\n")
            writer.writerow(
                [
                    "path",
                    "status",
                    "message",
                    "top_class",
                    *codes,
                    "malignancy_risk",
                    "above_threshold",
                    "flags",
                ]
            )
            for r in self.iter_results(model_sha256, triage=True):
                probs = [f"{r.probabilities[c]:.6f}" if c in r.probabilities else "" for c in codes]
                above = "" if r.above_threshold is None else ("yes" if r.above_threshold else "no")
                writer.writerow(
                    [
                        _csv_text(r.relative_path),
                        r.status,
                        r.message,
                        r.top_code or "",
                        *probs,
                        "" if r.risk is None else f"{r.risk:.6f}",
                        above,
                        ";".join(r.flags),
                    ]
                )
        return target


def encode_jpeg(rgb: np.ndarray, quality: int = 85) -> bytes:
    """uint8 RGB -> JPEG bytes."""
    ok, buf = cv2.imencode(
        ".jpg",
        cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2BGR),
        [cv2.IMWRITE_JPEG_QUALITY, int(quality)],
    )
    if not ok:  # pragma: no cover - cv2 encodes any uint8 RGB array
        raise StoreError("A thumbnail could not be encoded.")
    return buf.tobytes()


def make_thumbnail(rgb: np.ndarray, side: int = THUMBNAIL_SIDE) -> np.ndarray:
    """A copy of ``rgb`` whose longest side is ``side`` (never enlarged). Area-averaged by a
    whole factor first (OpenCV's fast path: ten times cheaper than an odd factor; the crop that
    makes the factor whole drops fewer pixels than the factor), then bilinear to the exact
    size, a reduction of less than 2 where bilinear does not alias."""
    h, w = rgb.shape[:2]
    scale = side / max(h, w)
    if scale >= 1:
        return np.ascontiguousarray(rgb)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    k = int(1 / scale)
    src = rgb
    if k >= 2:
        cw, ch = (w // k) * k, (h // k) * k
        src = cv2.resize(
            np.ascontiguousarray(rgb[:ch, :cw]), (cw // k, ch // k), interpolation=cv2.INTER_AREA
        )
    if (src.shape[1], src.shape[0]) == size:
        return np.ascontiguousarray(src)
    return cv2.resize(np.ascontiguousarray(src), size, interpolation=cv2.INTER_LINEAR)


def encode_heat(heat01: np.ndarray) -> bytes:
    """float heat in [0, 1] (the model's own small map) -> 8-bit grey PNG bytes."""
    levels = np.round(np.clip(np.nan_to_num(heat01), 0.0, 1.0) * 255.0).astype(np.uint8)
    ok, buf = cv2.imencode(".png", levels)
    if not ok:  # pragma: no cover
        raise StoreError("A heatmap thumbnail could not be encoded.")
    return buf.tobytes()
