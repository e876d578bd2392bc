"""The Batch view, offscreen: a real batch run (core pipeline, TF-free synthetic model) driven
through the same methods and buttons the window uses; progress, live rows, sorting, warnings,
cancel and resume, double-click into the single-case view, CSV export.

Only the pure table-model test feeds hand-made results; every other test runs
:func:`desktop_app.core.batch.pipeline.run_batch` for real. Every test waits for its background
work: the fixtures fail a test that leaves a task running.
"""

from __future__ import annotations

import csv
import threading
import time
from pathlib import Path

import pytest

from tests.conftest_qt import assert_no_background_work, isolated_settings, write_lesion

pytest.importorskip("pytestqt")

from PySide6.QtCore import Qt
from PySide6.QtGui import QIcon

from desktop_app.core.engine import Engine
from desktop_app.core.metadata import PatientMetadata
from desktop_app.ui.batch_view import (
    DEFAULT_OUTPUT_NAME,
    ORIGIN_EARLIER,
    ORIGIN_NEW,
    ORIGIN_REUSED,
    BatchResultsModel,
    BatchSortProxy,
    BatchView,
    format_eta,
    format_progress,
)
from desktop_app.ui.batch_worker import ProgressRunner
from tests import model_factory as mf

SYNTH_SIZE = 64
N_IMAGES = 12
BAD_FILES = ("damaged.jpg", "empty.png")
RUN_TIMEOUT = 30_000
M = BatchResultsModel


def _flag_prone(card: dict) -> None:
    """A low threshold: a benign top class with some malignant mass raises
    'severity_disagreement', so some rows carry warnings and others do not."""
    card["malignancy"]["threshold"] = 0.35


# --------------------------------------------------------------------------------------------------
# Fixtures
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model_path(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("batch_models") / "synthetic.onnx"
    path.write_bytes(mf.synthetic_onnx(image_size=SYNTH_SIZE, card_edit=_flag_prone))
    return path


@pytest.fixture(scope="module")
def engine(model_path) -> Engine:
    return Engine.load(model_path, providers="cpu")


@pytest.fixture
def folder(tmp_path) -> Path:
    """12 synthetic lesions (different sizes and seeds), 2 broken image files, a metadata CSV."""
    root = tmp_path / "clinic"
    root.mkdir()
    for i in range(N_IMAGES):
        write_lesion(root / f"lesion_{i:02d}.jpg", size=96 + 8 * i, seed=100 + i)
    (root / "damaged.jpg").write_bytes(b"\xff\xd8\xff\xe0" + bytes(range(256)) * 2)
    (root / "empty.png").write_bytes(b"")
    with (root.parent / "patients.csv").open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["image_id", "age", "sex", "localization"])
        for i in range(N_IMAGES):
            writer.writerow([f"lesion_{i:02d}", 30 + 3 * i, "female" if i % 2 else "male", "back"])
    return root


@pytest.fixture
def make_view(qtbot, tmp_path, engine):
    views: list[BatchView] = []

    def make(**kwargs) -> BatchView:
        view = BatchView(isolated_settings(tmp_path, f"batch{len(views)}.ini"))
        qtbot.addWidget(view)
        view.resize(1400, 800)
        view.show()
        view.set_engine(engine)
        for key, value in kwargs.items():
            setattr(view, key, value)
        views.append(view)
        return view

    yield make
    for view in views:
        view.shutdown(20_000)
    assert_no_background_work([v.tasks for v in views])


@pytest.fixture
def view(make_view) -> BatchView:
    return make_view()


def run_and_wait(qtbot, view: BatchView) -> None:
    assert view.start(), view.banner.text()
    qtbot.waitUntil(lambda: not view.is_running(), timeout=RUN_TIMEOUT)
    qtbot.waitUntil(lambda: not view.tasks.is_busy("store"), timeout=RUN_TIMEOUT)


def wait_thumbnails(qtbot, view: BatchView) -> None:
    qtbot.waitUntil(lambda: not view.tasks.is_busy("thumbnails"), timeout=RUN_TIMEOUT)


def all_files(folder: Path) -> list[str]:
    return sorted([f"lesion_{i:02d}.jpg" for i in range(N_IMAGES)] + list(BAD_FILES))


# --------------------------------------------------------------------------------------------------
# The table model alone (hand-made results: the one place without the pipeline)
# --------------------------------------------------------------------------------------------------


def _result(path: str, risk: float | None, flags=(), status: str = "ok", nv: float = 0.5):
    from desktop_app.core.batch.store import CaseResult

    if status != "ok":
        return CaseResult.failed(path, status, "The file is damaged.", "sha")
    probs = {"MEL": risk / 2, "NV": nv, "BCC": risk / 2, "BKL": max(0.0, 1 - risk - nv)}
    return CaseResult(
        relative_path=path,
        status="ok",
        message="",
        content_sha256="c" + path,
        model_sha256="sha",
        top_code=max(probs, key=probs.get),
        probabilities=probs,
        risk=risk,
        above_threshold=risk >= 0.45,
        flags=tuple(flags),
        metadata={"age": 50.0, "sex": "male", "site": "head/neck"},
        finished_at="2024-05-01T10:00:00Z",
    )


def test_model_sorts_numerically_and_marks_warnings(qtbot):
    model = BatchResultsModel()
    proxy = BatchSortProxy()
    proxy.setSourceModel(model)
    model.set_classes(mf.TINY_CLASSES, 0.45)
    rows = [
        (_result("a.jpg", 0.09, nv=0.8), ORIGIN_NEW),  # 9% < 10%: string sorting would fail
        (_result("b.jpg", 0.10, ["low_confidence", "unusual_image"], nv=0.3), ORIGIN_REUSED),
        (_result("c.jpg", 0.85, nv=0.1), ORIGIN_NEW),
        (_result("d.jpg", None, status="error"), ORIGIN_NEW),
        (_result("e.jpg", 0.5, ["severity_disagreement"], nv=0.4), ORIGIN_EARLIER),
    ]
    assert model.upsert(rows) == 5
    assert model.columnCount() == 7 + len(mf.TINY_CLASSES)
    # a second result for a path replaces its row
    assert model.upsert([(_result("a.jpg", 0.2, nv=0.7), ORIGIN_NEW)]) == 0
    assert model.rowCount() == 5

    def order(col: int, descending: bool = True) -> list[str]:
        proxy.sort(col, Qt.SortOrder.DescendingOrder if descending else Qt.SortOrder.AscendingOrder)
        return [proxy.index(r, M.COL_FILE).data() for r in range(proxy.rowCount())]

    assert order(M.COL_RISK) == ["c.jpg", "e.jpg", "a.jpg", "b.jpg", "d.jpg"]
    assert order(M.COL_RISK, descending=False)[0] == "d.jpg"  # errors sort below every risk
    assert order(model.class_column("NV")) == ["a.jpg", "e.jpg", "b.jpg", "c.jpg", "d.jpg"]
    assert order(M.COL_WARN)[0] == "b.jpg"

    b = model.index(model.row_of("b.jpg"), M.COL_WARN)
    assert isinstance(b.data(Qt.ItemDataRole.DecorationRole), QIcon)
    assert "Low confidence" in b.data() and "Unusual image" in b.data()
    tip = b.data(Qt.ItemDataRole.ToolTipRole)
    assert "low_confidence" in tip and "Unusual image" in tip
    a = model.index(model.row_of("a.jpg"), M.COL_WARN)
    assert a.data(Qt.ItemDataRole.DecorationRole) is None and not a.data()
    risk = model.index(model.row_of("c.jpg"), M.COL_RISK)
    assert risk.data() == "85.0%"
    assert model.index(model.row_of("c.jpg"), M.COL_ABOVE).data() == "Above"
    status = model.index(model.row_of("b.jpg"), M.COL_STATUS)
    assert status.data() == "ok · reused"
    error = model.index(model.row_of("d.jpg"), M.COL_TOP)
    assert error.data() == "The file is damaged."
    assert model.index(model.row_of("d.jpg"), M.COL_STATUS).data() == "error"

    proxy.set_problems_only(True)
    assert [proxy.index(r, M.COL_FILE).data() for r in range(proxy.rowCount())] == ["d.jpg"]


def test_progress_text():
    assert format_eta(None) == "--:--"
    assert format_eta(75.4) == "01:15"
    assert format_eta(3725) == "1:02:05"
    assert format_progress(40, 120, 8.14, 9.8) == "40 of 120 · 8.1 img/s · ETA 00:10"


def test_progress_runner_reports_in_order_cancels_and_supersedes(qtbot):
    runner = ProgressRunner()
    try:
        seen: list[int] = []
        results: list[str] = []

        def op(report, cancel):
            for i in range(200):
                report(i)
            return "stopped" if cancel.wait(10) else "not cancelled"

        runner.start("x", op, results.append, on_progress=seen.append)
        qtbot.waitUntil(lambda: len(seen) == 200, timeout=5000)
        assert seen == list(range(200)) and runner.is_busy("x") and not results
        runner.cancel("x")
        qtbot.waitUntil(lambda: results == ["stopped"], timeout=5000)

        # a newer task on a busy channel cancels the older one and drops its result
        old: list[str] = []
        new: list[str] = []
        runner.start("y", lambda _r, cancel: "old" if cancel.wait(10) else "late", old.append)
        runner.start("y", lambda _r, _c: "new", new.append)
        qtbot.waitUntil(lambda: new == ["new"], timeout=5000)
        qtbot.waitUntil(runner.is_idle, timeout=5000)
        assert old == []
    finally:
        assert_no_background_work([runner])


# --------------------------------------------------------------------------------------------------
# Real runs
# --------------------------------------------------------------------------------------------------


class SlowedEngine:
    """The real engine, 30 ms slower per call: the run then outlasts the table's 100 ms flush
    interval, so rows must appear while it runs (a tiny model can otherwise finish first)."""

    def __init__(self, engine) -> None:
        self._engine = engine

    def __getattr__(self, name):
        return getattr(self._engine, name)

    def predict(self, *args, **kwargs):
        time.sleep(0.03)
        return self._engine.predict(*args, **kwargs)


def test_batch_run_progress_live_rows_sorting_and_warnings(qtbot, view, folder):
    view.set_engine(SlowedEngine(view.engine))
    view.batch_size = 1
    view.set_folder(folder)
    view.set_metadata_csv(folder.parent / "patients.csv")
    assert view.output_dir == folder / DEFAULT_OUTPUT_NAME
    live: list[int] = []
    view.model.rowsInserted.connect(
        lambda *_: live.append(view.model.rowCount()) if view.is_running() else None
    )
    values: list[int] = []
    view.progress.valueChanged.connect(values.append)

    run_and_wait(qtbot, view)

    summary = view.last_summary
    assert summary is not None and not summary.cancelled
    total = N_IMAGES + len(BAD_FILES)
    assert (summary.total, summary.ok, summary.errors) == (total, N_IMAGES, len(BAD_FILES))
    assert view.progress.maximum() == total and view.progress.value() == total
    assert values and max(values) == total
    assert view.progress.format().startswith("Finished")
    assert live, "no row was added while the batch ran"
    # the spreadsheet has no row for the two broken files: said, without stopping anything
    assert view.banner.level() == "warning" and "no row in 'patients.csv'" in view.banner.text()

    # one row per file, ok or error
    assert sorted(view.model.relative_paths()) == all_files(folder)
    statuses = {r.relative_path: r.status for r in view.model.results()}
    assert {statuses[name] for name in BAD_FILES} == {"error"}
    assert sum(s == "ok" for s in statuses.values()) == N_IMAGES
    for name in BAD_FILES:
        row = view.model.row_of(name)
        assert view.model.index(row, M.COL_TOP).data()  # the reason, readable

    # default sort: risk, highest first; errors last
    header = view.table.horizontalHeader()
    assert header.sortIndicatorSection() == M.COL_RISK
    assert header.sortIndicatorOrder() == Qt.SortOrder.DescendingOrder
    risks = [view.proxy.index(r, M.COL_RISK).data(M.SORT_ROLE) for r in range(total)]
    assert risks == sorted(risks, reverse=True)
    assert view.visible_paths()[-2:] == sorted(BAD_FILES)
    top_row = view.model.result(view.proxy.mapToSource(view.proxy.index(0, 0)).row())
    assert top_row.risk == max(r.risk for r in view.model.results() if r.risk is not None)

    # sorting by a class column by clicking its header
    col = view.model.class_column("NV")
    view.table.sortByColumn(col, Qt.SortOrder.DescendingOrder)
    nv = [view.proxy.index(r, col).data(M.SORT_ROLE) for r in range(total)]
    assert nv == sorted(nv, reverse=True)

    # warnings: an icon and a tooltip wherever the result has flags, nothing elsewhere
    flagged = 0
    for row in range(view.model.rowCount()):
        result = view.model.result(row)
        cell = view.model.index(row, M.COL_WARN)
        icon = cell.data(Qt.ItemDataRole.DecorationRole)
        if result.status == "ok" and result.flags:
            flagged += 1
            assert isinstance(icon, QIcon) and not icon.isNull()
            tip = cell.data(Qt.ItemDataRole.ToolTipRole)
            assert all(code in tip for code in result.flags)
        else:
            assert icon is None
    assert flagged > 0, "the test model raised no flag: the warnings column was not exercised"

    # metadata from the CSV was used, and thumbnails come for the rows on screen
    row = view.model.row_of("lesion_03.jpg")
    assert view.model.result(row).metadata["age"] == 39
    wait_thumbnails(qtbot, view)
    qtbot.waitUntil(lambda: view.model.has_thumbnail(view.visible_paths()[0]), timeout=10_000)
    assert "12 ok" in view.summary_label.text() and "2 errors" in view.summary_label.text()


def test_cancel_then_resume_reuses_finished_images(qtbot, make_view, folder, monkeypatch):
    import desktop_app.core.batch.pipeline as pipeline

    real = pipeline.run_batch
    runs: list[int] = []

    def run_batch(*args, on_progress=None, cancel=None, **kwargs):
        """The real pipeline; on the first run, the first progress with a result waits (up to
        10 s) for the window's Cancel, so the cancel lands right after the first image on any
        machine however fast or slow."""
        runs.append(1)
        first = len(runs) == 1
        seen = threading.Event()

        def report(p):
            on_progress(p)
            if first and p.last is not None and not seen.is_set():
                seen.set()
                cancel.wait(10)

        return real(*args, on_progress=report, cancel=cancel, **kwargs)

    monkeypatch.setattr(pipeline, "run_batch", run_batch)
    view = make_view(batch_size=1)
    view.set_folder(folder)
    states: list[bool] = []
    view.runningChanged.connect(states.append)

    def cancel_once(_text: str) -> None:
        if view.cancel_button.isEnabled() and view.model.rowCount() > 0:
            qtbot.mouseClick(view.cancel_button, Qt.MouseButton.LeftButton)

    view.progressText.connect(cancel_once)
    assert view.start()
    assert view.start_button.isEnabled() is False and view.cancel_button.isEnabled()
    qtbot.waitUntil(lambda: not view.is_running(), timeout=RUN_TIMEOUT)
    view.progressText.disconnect(cancel_once)

    total = N_IMAGES + len(BAD_FILES)
    first = view.last_summary
    assert first.cancelled
    assert states == [True, False]
    done = view.model.rowCount()
    assert 1 <= done < total, "cancel did not stop the run early"
    assert view.progress.format().startswith("Stopped")
    assert view.start_button.text().replace("&", "") == "Resume"
    assert len(set(view.model.relative_paths())) == done
    partial = set(view.model.relative_paths())

    run_and_wait(qtbot, view)

    second = view.last_summary
    assert not second.cancelled
    assert second.total == total
    assert second.reused >= len(partial) > 0
    paths = view.model.relative_paths()
    assert len(paths) == len(set(paths)) == total  # every file once, no duplicate rows
    reused = {p for p in paths if view.model.origin(view.model.row_of(p)) == ORIGIN_REUSED}
    assert partial <= reused
    row = view.model.row_of(sorted(partial & {f"lesion_{i:02d}.jpg" for i in range(N_IMAGES)})[0])
    assert view.model.index(row, M.COL_STATUS).data() == "ok · reused"
    assert view.start_button.text().replace("&", "") == "Start"


def test_earlier_results_are_shown_when_the_folder_is_opened_again(qtbot, make_view, folder):
    first = make_view()
    first.set_folder(folder)
    run_and_wait(qtbot, first)
    wait_thumbnails(qtbot, first)

    again = make_view()
    again.set_folder(folder)
    qtbot.waitUntil(lambda: again.model.rowCount() == N_IMAGES + len(BAD_FILES), timeout=10_000)
    assert {again.model.origin(r) for r in range(again.model.rowCount())} == {ORIGIN_EARLIER}
    assert again.start_button.text().replace("&", "") == "Resume"
    assert "earlier run" in again.summary_label.text()
    wait_thumbnails(qtbot, again)

    # a file deleted since: resuming reuses every other result and drops its row
    (folder / "lesion_00.jpg").unlink()
    run_and_wait(qtbot, again)
    assert again.last_summary.reused == N_IMAGES - 1 + len(BAD_FILES)
    assert sorted(again.model.relative_paths()) == [
        p for p in all_files(folder) if p != "lesion_00.jpg"
    ]
    assert {again.model.origin(r) for r in range(again.model.rowCount())} == {ORIGIN_REUSED}
    wait_thumbnails(qtbot, again)


def test_double_click_opens_the_case_in_the_single_case_view(qtbot, tmp_path, folder, model_path):
    from desktop_app.ui.main_window import MainWindow

    w = MainWindow(isolated_settings(tmp_path), model_path=model_path, load_default_model=False)
    qtbot.addWidget(w)
    w.resize(1400, 860)
    w.show()
    try:
        qtbot.waitUntil(lambda: w.engine is not None, timeout=20_000)
        view = w.show_batch_view()
        assert view.engine is w.engine
        view.set_folder(folder)
        view.set_metadata_csv(folder.parent / "patients.csv")
        run_and_wait(qtbot, view)
        wait_thumbnails(qtbot, view)

        index = view.proxy.index(0, M.COL_FILE)
        name = index.data()
        result = view.model.result(view.proxy.mapToSource(index).row())
        with qtbot.waitSignal(view.caseRequested, timeout=5000) as blocker:
            # a real double-click: press and release, then the second press (QTest's
            # mouseDClick alone sends no first press, which an item view needs)
            centre = view.table.visualRect(index).center()
            qtbot.mouseClick(view.table.viewport(), Qt.MouseButton.LeftButton, pos=centre)
            qtbot.mouseDClick(view.table.viewport(), Qt.MouseButton.LeftButton, pos=centre)
        path, meta = blocker.args
        assert path == folder / name
        assert isinstance(meta, PatientMetadata) and meta.to_dict() == result.metadata

        assert w.tabs.currentWidget() is w.splitter
        qtbot.waitUntil(lambda: w.image is not None and w.image.path == path, timeout=20_000)
        qtbot.waitUntil(lambda: w.analysis is not None, timeout=20_000)
        qtbot.waitUntil(w.tasks.is_idle, timeout=20_000)
        assert w.analysis.metadata == meta
        assert w.metadata_form.metadata() == meta
        assert abs(w.analysis.prediction.risk - result.risk) < 1e-4  # same answer as the batch
    finally:
        w.close()
        assert_no_background_work([w.tasks, w.batch_view.tasks])


def test_export_csv_has_one_row_per_image(qtbot, view, folder, tmp_path):
    view.set_folder(folder)
    run_and_wait(qtbot, view)
    assert view.export_csv_button.isEnabled()
    target = tmp_path / "exports" / "batch.csv"
    target.parent.mkdir()
    assert view.export_csv(target)
    qtbot.waitUntil(lambda: view.last_export == target, timeout=RUN_TIMEOUT)
    with target.open(newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert sorted(r["path"] for r in rows) == all_files(folder)
    assert {r["path"]: r["status"] for r in rows if r["status"] != "ok"} == dict.fromkeys(
        BAD_FILES, "error"
    )
    assert "Saved" in view.banner.text()

    pdf = tmp_path / "exports" / "triage.pdf"
    assert view.export_summary_pdf(pdf)
    qtbot.waitUntil(lambda: view.last_export == pdf, timeout=RUN_TIMEOUT)
    assert pdf.read_bytes()[:5] == b"%PDF-"


def test_start_says_what_is_missing(qtbot, make_view, tmp_path):
    view = make_view()
    assert not view.start()
    assert view.banner.level() == "warning" and "folder" in view.banner.text()
    view.set_folder(tmp_path / "nowhere")
    assert not view.start() and "does not exist" in view.banner.text()
    view.set_engine(None)
    assert not view.start_button.isEnabled()
    assert not view.is_running()
