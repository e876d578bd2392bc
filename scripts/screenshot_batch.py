"""Screenshot of the Batch review tab for the documentation (offscreen, no display needed).

    python scripts/screenshot_batch.py --model runs/ham-quick/model.onnx \\
        --images ../shared/data/ham10000/images --metadata ../shared/data/ham10000/HAM10000_metadata.csv \\
        --out docs/screenshots

Copies ``--count`` images (a few of each diagnosis when the metadata CSV has a ``dx`` column) and
one damaged file into a temporary folder, writes their rows of the metadata CSV beside them, runs
the batch in the window as a clinician would (Start, wait), and writes ``07-batch.png``: the triage
list sorted by risk, with thumbnails, warnings and the error row. With ``--running`` it also writes
``07-batch-running.png`` while the progress bar is still moving.

Settings go to a temporary INI file: the user's own LesionLens settings are never touched.
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from shot_helpers import save_grab, wait_for  # noqa: E402  (scripts/ is on sys.path)

WIDTH, HEIGHT = 1440, 900


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path, required=True)
    p.add_argument("--images", type=Path, required=True, help="a folder of dermoscopy images")
    p.add_argument("--metadata", type=Path, default=None, help="HAM10000/ISIC metadata CSV")
    p.add_argument("--count", type=int, default=30)
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "screenshots")
    p.add_argument("--running", action="store_true", help="also a shot while the batch runs")
    return p.parse_args(argv)


def _pause(app, seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        app.processEvents()
        time.sleep(0.01)


def _pick(images: Path, metadata: Path | None, count: int) -> tuple[list[Path], list[dict]]:
    """``count`` images, spread over the diagnoses when the CSV says them; their CSV rows."""
    files = {p.stem: p for p in sorted(images.iterdir()) if p.suffix.lower() in (".jpg", ".png")}
    rows: list[dict] = []
    if metadata is not None and metadata.is_file():
        with metadata.open(newline="", encoding="utf-8") as fh:
            rows = [r for r in csv.DictReader(fh) if r.get("image_id") in files]
    if not rows:
        return list(files.values())[:count], []
    by_dx: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        by_dx[r.get("dx", "")].append(r)
    chosen: list[dict] = []
    while len(chosen) < count and any(by_dx.values()):
        for dx in sorted(by_dx):
            if by_dx[dx] and len(chosen) < count:
                chosen.append(by_dx[dx].pop(0))
    return [files[r["image_id"]] for r in chosen], chosen


def _prepare(args: argparse.Namespace, demo: Path) -> tuple[Path, Path | None, int]:
    """The demo folder (images + one damaged file) and its metadata CSV; returns the folder, the
    CSV (None without ``--metadata``) and how many images were copied."""
    folder = demo / "clinic-2024-05"
    folder.mkdir(parents=True)
    files, rows = _pick(args.images, args.metadata, args.count)
    for f in files:
        shutil.copy2(f, folder / f.name)
    (folder / "ISIC_scan_0815.jpg").write_bytes(b"\xff\xd8\xff\xe0" + bytes(range(256)) * 4)
    if not rows:
        return folder, None, len(files)
    csv_path = demo / "patients.csv"
    with csv_path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, ["image_id", "age", "sex", "localization"])
        writer.writeheader()
        for r in rows:
            writer.writerow({k: r.get(k, "") for k in writer.fieldnames})
    return folder, csv_path, len(files)


def _shoot(app, args: argparse.Namespace, demo: Path, out: Path) -> None:
    from PySide6.QtCore import QSettings

    from desktop_app.ui.main_window import MainWindow

    folder, csv_path, count = _prepare(args, demo)
    settings = QSettings(str(demo / "settings.ini"), QSettings.Format.IniFormat)
    settings.setValue("notice/intended_use_acknowledged", True)
    window = MainWindow(settings, model_path=args.model, load_default_model=False)
    window.resize(WIDTH, HEIGHT)
    window.show()
    if not wait_for(
        app,
        lambda: window.engine is not None or window.last_error_box is not None,
        timeout=300.0,
    ):
        raise SystemExit("error: the model did not load in time")
    if window.engine is None:
        raise SystemExit(f"error: {window.last_error_box.text()}")
    view = window.show_batch_view()
    view.set_folder(folder)
    view.set_metadata_csv(csv_path)
    view.batch_size = 4
    if not view.start():
        raise SystemExit(f"error: the batch did not start: {view.banner.text()}")
    if args.running:
        wait_for(
            app,
            lambda: view.model.rowCount() >= max(3, count // 3) or not view.is_running(),
            timeout=300.0,
        )
        _pause(app, 0.3)
        save_grab(window, out / "07-batch-running.png")
    if not wait_for(app, lambda: not view.is_running(), timeout=300.0):
        raise SystemExit("error: the batch did not finish in time")
    wait_for(app, view.tasks.is_idle, timeout=300.0)
    view.table.selectRow(1)
    _pause(app, 0.5)
    wait_for(app, view.tasks.is_idle, timeout=300.0)  # thumbnails of the rows on screen
    _pause(app, 0.3)
    save_grab(window, out / "07-batch.png")
    summary = view.last_summary
    flagged = sum(1 for r in view.model.results() if r.status == "ok" and r.flags)
    print(
        f"batch: {summary.total} files, {summary.ok} ok, {summary.errors} errors, "
        f"{summary.seconds:.1f} s; rows with warnings: {flagged}"
    )
    window.close()


def run(args: argparse.Namespace) -> int:
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from desktop_app.app import create_application

    app = create_application([])
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    # A fixed, readable path (it shows in the folder fields), removed before and after.
    demo = Path(tempfile.gettempdir()) / "lesionlens-demo"
    shutil.rmtree(demo, ignore_errors=True)
    try:
        _shoot(app, args, demo, out)
    finally:
        shutil.rmtree(demo, ignore_errors=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    return run(parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
