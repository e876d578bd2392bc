"""Run one model over a whole folder: decode in parallel with inference, save as each image finishes.

The road per image is the single-case one (:func:`desktop_app.core.imaging.load_image` with
``max_side=ANALYSIS_MAX_SIDE``, then :meth:`desktop_app.core.engine.Engine.predict`), so a file
gets the same answer here as in the window and ``lesionlens predict``. Three stages, each on its own
thread(s), joined by bounded queues::

    scan_folder -> decode workers (decode_workers threads): read the file once, SHA-256 it, skip
                   it if already done, load_image(bytes), resize to the model's input, thumbnail
                -> inference thread: Engine.predict on up to batch_size ready images, back to back
                -> the calling thread: results, heatmap thumbnail, ResultStore.save (one
                   transaction per group), progress -> report thread (optional, per-case PDFs)

The model only ever waits for decoding when decoding is the slower side; everything else overlaps
with inference.

* Memory stays flat: at most about ``6 * batch_size`` prepared images exist at any time (the
  decode queue holds ``2 * batch_size``, four groups are in inference, waiting or being saved),
  each at the model's input size plus a thumbnail (plus, only when per-case reports are asked
  for, the copy the report prints: at most 800 pixels); results go to SQLite as they come and
  the CSV is streamed from it.
* Resume: a file whose (path, content SHA-256, model SHA-256, metadata) is already in the
  database is not decoded again (hashing costs far less than decoding); with ``reports`` its
  per-case PDF must exist too. ``kill -9`` loses at most the images in flight (not yet committed).
* A bad file never stops the batch: an ImageError becomes an error row with its readable message;
  anything unexpected on one image becomes "unexpected error: ..." for that image only.
* Cancel (``cancel.set()``): no new image is started; the images in flight finish and are saved,
  ``results.csv`` is written, and the summary says ``cancelled``. Running again resumes.
* ``on_progress`` is called in the thread that called :func:`run_batch`, once per file (and once
  at the start, for the files the scan skipped).

Nothing is logged: no paths, no metadata.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import json
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from desktop_app.core.batch.metadata_csv import load_metadata_csv
from desktop_app.core.batch.scan import ScanResult, scan_folder
from desktop_app.core.batch.store import (
    DATABASE_NAME,
    UNEXPECTED,
    CaseResult,
    Preview,
    ResultStore,
    encode_heat,
    encode_jpeg,
    make_thumbnail,
    now_iso,
)
from desktop_app.core.engine import Engine, Prediction
from desktop_app.core.errors import ImageError, LesionLensError, MetadataError
from desktop_app.core.imaging import ANALYSIS_MAX_SIDE, load_image, resize_uint8
from desktop_app.core.metadata import UNKNOWN_METADATA, PatientMetadata

__all__ = [
    "CSV_NAME",
    "MAX_FILE_BYTES",
    "REPORTS_DIR",
    "SUMMARY_NAME",
    "BatchError",
    "BatchProgress",
    "BatchSummary",
    "report_relative_path",
    "run_batch",
]

CSV_NAME = "results.csv"
SUMMARY_NAME = "batch-summary.pdf"
REPORTS_DIR = "reports"
MAX_FILE_BYTES = 1 << 30  # a bigger "image" is refused before it is read into memory
_RATE_WINDOW_S = 15.0


class BatchError(LesionLensError):
    """The batch cannot start (folder or output folder unusable); readable message."""


@dataclass(frozen=True)
class BatchProgress:
    """Where the batch stands. ``done`` counts every file accounted for (ok + errors + skipped);
    ``reused`` how many of them came from an earlier run. ``rate``: images per second over the
    last seconds; ``eta_seconds``: None until there is a rate. ``last``: the result that just
    finished (None for the first report, which counts the skipped files)."""

    done: int
    total: int
    ok: int
    errors: int
    skipped: int
    reused: int
    rate: float
    eta_seconds: float | None
    last: CaseResult | None


@dataclass(frozen=True)
class BatchSummary:
    """What a run did. ok + errors + skipped == total when not cancelled; ``reused`` of them were
    taken from an earlier run. ``summary_pdf``: the batch summary (None when cancelled or when it
    could not be written: see ``problems``). ``problems``: readable lines (metadata spreadsheet
    problems, reports or summary that could not be written). ``reports_written``: per-case PDFs
    written by this run."""

    out_dir: Path
    database: Path
    csv: Path
    total: int
    ok: int
    errors: int
    skipped: int
    reused: int
    cancelled: bool
    seconds: float
    summary_pdf: Path | None = None
    reports_written: int = 0
    problems: tuple[str, ...] = field(default=())


def report_relative_path(relative_path: str) -> str:
    """Where the per-case PDF of an image goes, relative to the output folder (POSIX)."""
    return f"{REPORTS_DIR}/{relative_path}.pdf"


# -- the decode side ---------------------------------------------------------------------------


@dataclass
class _Ready:
    """An image decoded and prepared for the model."""

    rel: str
    sha: str
    model_input: np.ndarray  # uint8 at the model's input size: preprocess() of it == of the image
    thumbnail: bytes
    meta: PatientMetadata | None
    meta_dict: dict
    report_rgb: np.ndarray | None


@dataclass
class _Finished:
    """An image that needs no inference: an error, or a result reused from an earlier run."""

    result: CaseResult
    reused: bool = False


_WORKER_EXIT = object()


def _read_file(path: Path, name: str) -> bytes:
    try:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            raise ImageError(
                f"The file '{name}' is too large ({size / 2**20:.0f} MB) to be analysed."
            )
        with open(path, "rb") as fh:
            return fh.read()
    except ImageError:
        raise
    except FileNotFoundError:
        raise ImageError(
            f"The file '{name}' was not found. It may have been moved, renamed or deleted."
        ) from None
    except PermissionError:
        raise ImageError(f"The file '{name}' could not be read: permission denied.") from None
    except MemoryError:
        raise ImageError(f"The file '{name}' is too big to be read into memory.") from None
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise ImageError(f"The file '{name}' could not be read ({reason}).") from None


def _shrink(rgb: np.ndarray, side: int) -> np.ndarray:
    """``rgb`` with its longest side at most ``side`` (INTER_AREA), like the report's own."""
    h, w = rgb.shape[:2]
    scale = side / max(h, w)
    if scale >= 1:
        return rgb
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return cv2.resize(np.ascontiguousarray(rgb), size, interpolation=cv2.INTER_AREA)


def _named(exc: ImageError, path: Path) -> ImageError:
    """The same refusal worded with the file's name: decoding from bytes says "The image data";
    only a failing file pays for this second decode (by path, from the OS cache)."""
    try:
        load_image(path, max_side=ANALYSIS_MAX_SIDE)
    except ImageError as named:
        return named
    except Exception:
        return exc
    return exc


def _unexpected(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{UNEXPECTED}: {type(exc).__name__}{': ' + text if text else ''}"


class _Preparer:
    """The work of one decode worker on one image (thread-safe; no shared mutable state)."""

    def __init__(
        self,
        root: Path,
        engine: Engine,
        store: ResultStore,
        metas: dict[str, PatientMetadata],
        reports: bool,
    ) -> None:
        self.root = root
        self.engine = engine
        self.store = store
        self.metas = metas
        self.reports = reports
        self.model_sha = engine.sha256
        self.uses_metadata = engine.card.uses_metadata
        self.spec = engine.card.preprocess
        self.report_side = 0
        if reports:
            # The report prints the image at most this big (INTER_AREA, as here): handing it
            # that copy gives the same PDF and keeps a queued image under 2 MB.
            from desktop_app.core.report import _EMBED_MAX_SIDE

            self.report_side = _EMBED_MAX_SIDE

    def metadata_for(self, rel: str) -> tuple[PatientMetadata | None, dict]:
        if not self.uses_metadata:
            return None, {}
        meta = self.metas.get(rel)
        return meta, (meta or UNKNOWN_METADATA).to_dict()

    def __call__(self, rel: str) -> _Ready | _Finished:
        meta, meta_dict = self.metadata_for(rel)
        sha = ""
        try:
            path = self.root.joinpath(*rel.split("/"))
            data = _read_file(path, path.name)
            sha = hashlib.sha256(data).hexdigest()
            if self.store.is_done(
                rel, sha, self.model_sha, metadata=meta_dict, need_report=self.reports
            ):
                previous = self.store.get(rel, self.model_sha)
                if previous is not None:
                    return _Finished(previous, reused=True)
            try:
                loaded = load_image(data, max_side=ANALYSIS_MAX_SIDE)
            except ImageError as exc:
                raise _named(exc, path) from None
            del data
            model_input = resize_uint8(loaded.rgb, self.spec)
            thumb = make_thumbnail(loaded.rgb)
            return _Ready(
                rel=rel,
                sha=sha,
                model_input=model_input,
                thumbnail=encode_jpeg(thumb),
                meta=meta,
                meta_dict=meta_dict,
                report_rgb=_shrink(loaded.rgb, self.report_side) if self.reports else None,
            )
        except ImageError as exc:
            message = str(exc)
        except MemoryError:
            message = "The image is too large to be analysed on this computer."
        except Exception as exc:  # one strange file must never stop the batch
            message = _unexpected(exc)
        return _Finished(
            CaseResult.failed(rel, "error", message, self.model_sha, sha, metadata=meta_dict)
        )


# -- progress ----------------------------------------------------------------------------------


class _Counter:
    def __init__(self, total: int, on_progress: Callable[[BatchProgress], None] | None) -> None:
        self.total = total
        self.on_progress = on_progress
        self.ok = self.errors = self.skipped = self.reused = 0
        self.history: collections.deque[tuple[float, int]] = collections.deque()
        self.history.append((time.monotonic(), 0))

    @property
    def done(self) -> int:
        return self.ok + self.errors + self.skipped

    def add(self, result: CaseResult | None, reused: bool = False) -> None:
        if result is not None:
            if result.status == "ok":
                self.ok += 1
            elif result.status == "error":
                self.errors += 1
            else:
                self.skipped += 1
            self.reused += int(reused)
        if self.on_progress is None:
            return
        now = time.monotonic()
        self.history.append((now, self.done))
        while len(self.history) > 2 and now - self.history[1][0] > _RATE_WINDOW_S:
            self.history.popleft()
        t0, d0 = self.history[0]
        rate = (self.done - d0) / (now - t0) if now > t0 and self.done > d0 else 0.0
        eta = (self.total - self.done) / rate if rate > 0 else None
        self.on_progress(
            BatchProgress(
                done=self.done,
                total=self.total,
                ok=self.ok,
                errors=self.errors,
                skipped=self.skipped,
                reused=self.reused,
                rate=rate,
                eta_seconds=eta,
                last=result,
            )
        )


# -- reports -----------------------------------------------------------------------------------


class _Reporter:
    """Writes per-case PDFs on its own thread (bounded queue), and records each in the store."""

    def __init__(self, out_dir: Path, engine: Engine, store: ResultStore, size: int) -> None:
        self.out_dir = out_dir
        self.engine = engine
        self.store = store
        self.queue: queue.Queue[Any] = queue.Queue(maxsize=max(1, size))
        self.written = 0
        self.failures: list[str] = []
        self.thread = threading.Thread(target=self._run, name="lesionlens-batch-reports")
        self.thread.daemon = True
        self.thread.start()

    def put(self, rel: str, rgb: np.ndarray, pred: Prediction, meta: PatientMetadata) -> None:
        self.queue.put((rel, rgb, pred, meta))

    def close(self) -> None:
        self.queue.put(None)
        self.thread.join()

    def _run(self) -> None:
        from desktop_app.core.report import ReportCase, write_report

        while True:
            item = self.queue.get()
            if item is None:
                return
            rel, rgb, pred, meta = item
            target_rel = report_relative_path(rel)
            target = self.out_dir.joinpath(*target_rel.split("/"))
            try:
                target.parent.mkdir(parents=True, exist_ok=True)
                case = ReportCase(
                    image_rgb=rgb,
                    image_name=rel.rsplit("/", 1)[-1],
                    metadata=meta,
                    prediction=pred,
                )
                write_report(target, case, self.engine)
                self.store.mark_report(rel, self.engine.sha256, target_rel)
                self.written += 1
            except Exception as exc:  # a report that fails never stops the batch
                if len(self.failures) < 20:
                    detail = str(exc) if isinstance(exc, LesionLensError) else _unexpected(exc)
                    self.failures.append(f"report for '{rel}' not written: {detail}")


# -- the consumer ------------------------------------------------------------------------------


def _predict(engine: Engine, batch: list[_Ready]) -> list[tuple[Prediction | None, str]]:
    """Predictions for a group; if the group fails, each image alone (so one bad apple only
    spoils itself). Returns (prediction, "") or (None, error message) per image."""
    images = [item.model_input for item in batch]
    metas = [item.meta for item in batch]
    try:
        return [(p, "") for p in engine.predict(images, metas, batch_size=len(images))]
    except Exception:
        pass
    out: list[tuple[Prediction | None, str]] = []
    for image, meta in zip(images, metas, strict=True):
        try:
            out.append((engine.predict([image], [meta])[0], ""))
        except LesionLensError as exc:
            out.append((None, str(exc)))
        except Exception as exc:
            out.append((None, _unexpected(exc)))
    return out


def _ok_result(item: _Ready, pred: Prediction, model_sha: str) -> CaseResult:
    return CaseResult(
        relative_path=item.rel,
        status="ok",
        message="",
        content_sha256=item.sha,
        model_sha256=model_sha,
        top_code=pred.top_code,
        probabilities={c: float(p) for c, p in zip(pred.codes, pred.probabilities, strict=True)},
        risk=float(pred.risk),
        above_threshold=bool(pred.above_threshold),
        flags=tuple(f.code for f in pred.flags),
        metadata=item.meta_dict,
        finished_at=now_iso(),
    )


def _heat_preview(pred: Prediction) -> bytes | None:
    """The top class's heatmap as the model gave it; mapped onto the thumbnail when read."""
    try:
        return encode_heat(pred.heatmap(pred.top_code))
    except Exception:  # a preview is a nicety: the result stands without it
        return None


def _remove_reports(paths: list[Path]) -> None:
    for path in paths:
        with contextlib.suppress(OSError):
            path.unlink()


def _check_metadata(
    engine: Engine, table_entries: dict[str, PatientMetadata], problems: list[str]
) -> dict[str, PatientMetadata]:
    """Keep the spreadsheet's values this model can encode; the others become problems."""
    encoding = engine.card.metadata_encoding
    if encoding is None:
        return {}
    good: dict[str, PatientMetadata] = {}
    for rel, meta in table_entries.items():
        try:
            encoding.encode(meta)
        except MetadataError as exc:
            problems.append(f"'{rel}': {exc} It runs with metadata unknown.")
            continue
        good[rel] = meta
    return good


def _prepare_out_dir(out_dir: Path) -> None:
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise BatchError(
            f"The output folder '{out_dir.name or out_dir}' could not be created ({reason}); "
            "choose another one."
        ) from None
    if not os.access(out_dir, os.W_OK):
        raise BatchError(
            f"LesionLens may not write to the output folder '{out_dir.name or out_dir}' "
            "(read-only or no permission); choose another one."
        )


def run_batch(
    folder: str | Path,
    engine: Engine,
    out_dir: str | Path,
    *,
    recursive: bool = False,
    metadata_csv: str | Path | None = None,
    reports: bool = False,
    on_progress: Callable[[BatchProgress], None] | None = None,
    cancel: threading.Event | None = None,
    decode_workers: int = 2,
    batch_size: int = 8,
) -> BatchSummary:
    """Analyse every image of ``folder`` with ``engine``; results in ``out_dir`` (see the module
    docstring). Raises :class:`BatchError`/ScanError/MetadataError/StoreError (readable) when the
    batch cannot start or its database cannot be written; never for a bad image."""
    started = time.monotonic()
    root = Path(folder)
    out = Path(out_dir)
    cancel = cancel or threading.Event()
    batch_size = max(1, int(batch_size))
    decode_workers = max(1, int(decode_workers))
    if not root.is_dir():
        scan_folder(root)  # raises the readable ScanError
    _prepare_out_dir(out)
    scan: ScanResult = scan_folder(root, recursive, exclude=[out])

    problems: list[str] = []
    metas: dict[str, PatientMetadata] = {}
    if metadata_csv is not None:
        table = load_metadata_csv(metadata_csv, scan.images)
        problems.extend(table.problems)
        if engine.card.uses_metadata:
            metas = _check_metadata(engine, dict(table.entries), problems)
        else:
            problems.insert(
                0, "This model does not use age, sex or site: the spreadsheet was not used."
            )

    database = out / DATABASE_NAME
    csv_path = out / CSV_NAME
    model_sha = engine.sha256
    with ResultStore(database) as store:
        store.set_info(f"classes:{model_sha}", json.dumps(list(engine.codes)))
        store.set_preprocess(model_sha, engine.card.preprocess)
        keep = set(scan.images) | {rel for rel, _ in scan.skipped}
        stale_reports = [
            path
            for rel in store.stored_paths(model_sha)
            if rel not in keep and (path := store.report_path(rel, model_sha)) is not None
        ]
        store.prune(keep, model_sha)
        _remove_reports(stale_reports)
        skipped_rows = [
            CaseResult.failed(rel, "skipped", reason, model_sha) for rel, reason in scan.skipped
        ]
        store.save(skipped_rows)
        counter = _Counter(scan.total, on_progress)
        counter.skipped = len(skipped_rows)
        counter.add(None)

        reporter = _Reporter(out, engine, store, batch_size) if reports else None
        try:
            _run_pipeline(
                scan,
                _Preparer(root, engine, store, metas, reports),
                engine,
                store,
                counter,
                reporter,
                cancel,
                decode_workers,
                batch_size,
            )
        finally:
            if reporter is not None:
                reporter.close()
        cancelled = cancel.is_set() and counter.done < scan.total
        store.export_csv(csv_path, engine.codes, model_sha)
        summary_pdf = None
        if not cancelled:
            from desktop_app.core.batch.summary_pdf import SummaryError, write_batch_summary

            try:
                summary_pdf = write_batch_summary(out / SUMMARY_NAME, store, root, engine)
            except (SummaryError, OSError) as exc:
                problems.append(f"The batch summary PDF was not written: {exc}")
        if reporter is not None:
            problems.extend(reporter.failures)
        return BatchSummary(
            out_dir=out,
            database=database,
            csv=csv_path,
            total=scan.total,
            ok=counter.ok,
            errors=counter.errors,
            skipped=counter.skipped,
            reused=counter.reused,
            cancelled=cancelled,
            seconds=time.monotonic() - started,
            summary_pdf=summary_pdf,
            reports_written=0 if reporter is None else reporter.written,
            problems=tuple(problems),
        )


@dataclass
class _Failed:
    """The inference thread died of an unexpected exception: re-raised in the caller's thread."""

    error: BaseException


_INFERENCE_EXIT = object()
_STOPPED = object()


def _run_pipeline(
    scan: ScanResult,
    prepare: _Preparer,
    engine: Engine,
    store: ResultStore,
    counter: _Counter,
    reporter: _Reporter | None,
    cancel: threading.Event,
    workers: int,
    batch_size: int,
) -> None:
    """Three stages, each on its own thread(s), joined by bounded queues: decode workers ->
    the inference thread (nothing but Engine.predict, back to back) -> this thread (results,
    heatmap thumbnails, the SQLite transaction, progress)."""
    ready_q: queue.Queue[Any] = queue.Queue(maxsize=2 * batch_size)
    done_q: queue.Queue[Any] = queue.Queue(maxsize=2)
    stop = threading.Event()  # a stage failed: the others must not block on a full queue
    paths: Iterator[str] = iter(scan.images)
    paths_lock = threading.Lock()

    def put(q: queue.Queue[Any], item: Any) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False

    def decode() -> None:
        try:
            while not (cancel.is_set() or stop.is_set()):
                with paths_lock:
                    rel = next(paths, None)
                if rel is None or not put(ready_q, prepare(rel)):
                    return
        finally:
            put(ready_q, _WORKER_EXIT)

    decoders = [
        threading.Thread(target=decode, name=f"lesionlens-batch-decode-{i}", daemon=True)
        for i in range(min(workers, max(1, len(scan.images))))
    ]

    def get(q: queue.Queue[Any]) -> Any:
        """The next item, or _STOPPED once another stage has failed."""
        while not stop.is_set():
            try:
                return q.get(timeout=0.2)
            except queue.Empty:
                continue
        return _STOPPED

    def infer() -> None:
        running = len(decoders)
        try:
            while running:
                first = get(ready_q)
                if first is _STOPPED:
                    return
                items = [first]
                while (
                    sum(isinstance(i, _Ready) for i in items) < batch_size
                    and len(items) < 4 * batch_size
                ):
                    try:  # whatever is ready now, up to batch_size images to run
                        items.append(ready_q.get_nowait())
                    except queue.Empty:
                        break
                running -= sum(item is _WORKER_EXIT for item in items)
                items = [i for i in items if i is not _WORKER_EXIT]
                if not items:
                    continue
                ready = [i for i in items if isinstance(i, _Ready)]
                outcomes = _predict(engine, ready) if ready else []
                if not put(done_q, (items, outcomes)):
                    return
        except BaseException as exc:  # a bug, not a bad image: stop the batch, say why
            put(done_q, _Failed(exc))
        finally:
            put(done_q, _INFERENCE_EXIT)

    inference = threading.Thread(target=infer, name="lesionlens-batch-inference", daemon=True)
    for t in [*decoders, inference]:
        t.start()
    try:
        while True:
            message = get(done_q)  # with a timeout: Ctrl-C reaches this thread on every OS
            if message is _INFERENCE_EXIT:
                break
            if isinstance(message, _Failed):
                raise message.error
            items, outcomes = message
            _consume(items, outcomes, engine, store, counter, reporter)
    finally:
        stop.set()
        for t in [*decoders, inference]:
            t.join()


def _consume(
    items: list[_Ready | _Finished],
    predictions: list[tuple[Prediction | None, str]],
    engine: Engine,
    store: ResultStore,
    counter: _Counter,
    reporter: _Reporter | None,
) -> None:
    model_sha = engine.sha256
    ready = [i for i in items if isinstance(i, _Ready)]
    outcomes: list[tuple[CaseResult, bool]] = []
    previews: dict[str, Preview] = {}
    to_report: list[tuple[_Ready, Prediction]] = []
    for item, (pred, error) in zip(ready, predictions, strict=True):
        if pred is None:
            failed = CaseResult.failed(
                item.rel, "error", error, model_sha, item.sha, metadata=item.meta_dict
            )
            outcomes.append((failed, False))
            continue
        outcomes.append((_ok_result(item, pred, model_sha), False))
        previews[item.rel] = Preview(item.thumbnail, _heat_preview(pred))
        if reporter is not None and item.report_rgb is not None:
            to_report.append((item, pred))
    outcomes.extend((i.result, i.reused) for i in items if isinstance(i, _Finished))
    fresh = [r for r, reused in outcomes if not reused]
    # A report of an earlier answer for this file must not outlive it (a new one, if asked for,
    # is written after the save).
    stale = [p for r in fresh if (p := store.report_path(r.relative_path, model_sha)) is not None]
    store.save(fresh, previews)
    _remove_reports(stale)
    for item, pred in to_report:
        assert reporter is not None and item.report_rgb is not None
        reporter.put(item.rel, item.report_rgb, pred, item.meta or UNKNOWN_METADATA)
    for result, reused in outcomes:
        counter.add(result, reused)
