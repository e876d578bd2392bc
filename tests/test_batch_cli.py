"""``lesionlens batch``: the command, its output, and crash safety in a real process (SIGKILL mid
run, then the same command again; Ctrl-C stopping cleanly with exit status 130)."""

from __future__ import annotations

import csv
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from desktop_app.cli import main
from desktop_app.core.batch import DATABASE_NAME, run_batch
from desktop_app.core.engine import Engine
from tests import model_factory as mf
from tests.test_batch_pipeline import CountingEngine
from tests.test_batch_scan import write_good_images

ROOT = Path(__file__).resolve().parent.parent
POSIX_ONLY = pytest.mark.skipif(os.name != "posix", reason="POSIX signals")

# The CLI in a child process, each inference call slowed down so the test can interrupt it.
SLOW_CLI = """
import sys, time
from desktop_app.core.engine import Engine
real = Engine.predict
def predict(self, images, metadata=None, *, batch_size=16):
    images = list(images)
    time.sleep(0.04 * len(images))
    return real(self, images, metadata, batch_size=batch_size)
Engine.predict = predict
from desktop_app.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.fixture(scope="module")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("model") / "synthetic.onnx"
    path.write_bytes(mf.synthetic_onnx(image_size=32))
    return path


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def finished_rows(database: Path) -> dict[str, tuple[str, str, str]]:
    """What a killed run left committed: path -> (status, content hash, finished_at)."""
    with sqlite3.connect(database) as db:
        rows = db.execute(
            "SELECT relative_path, status, content_sha256, finished_at FROM results "
            "WHERE status != 'skipped'"
        ).fetchall()
    return {r[0]: (r[1], r[2], r[3]) for r in rows}


def start_slow_cli(args: list[str]) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, "-c", SLOW_CLI, *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for_rows(database: Path, proc: subprocess.Popen[str], at_least: int) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        if database.is_file():
            try:
                if len(finished_rows(database)) >= at_least:
                    return
            except sqlite3.OperationalError:
                pass  # the schema is being created
        time.sleep(0.05)
    proc.kill()
    pytest.fail("the batch did not get going")


def test_batch_command_writes_results(
    model_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "clinic day"
    names = write_good_images(folder, 5)
    (folder / "bad.jpg").write_bytes(b"")
    (folder / "list.docx").write_bytes(b"PK")
    meta = tmp_path / "meta.csv"
    meta.write_text(f"image,age,sex\n{names[0]},45,female\n{names[1]},999,male\nghost.jpg,3,male\n")
    rc = main(["batch", str(folder), "--model", str(model_path), "--metadata", str(meta), "-q"])
    out, err = capsys.readouterr()
    assert rc == 0
    results = folder / "lesionlens-batch"
    assert "7 files: 5 analysed, 1 could not be analysed, 1 skipped" in out
    assert f"results: {results / 'results.csv'}" in out
    assert (results / "batch-summary.pdf").is_file()
    assert "invalid age" in err and "'ghost.jpg' matches no image" in err
    assert "invalid age" in (results / "problems.txt").read_text()
    rows = read_csv(results / "results.csv")
    assert len(rows) == 7 and {r["status"] for r in rows} == {"ok", "error", "skipped"}

    rc = main(["batch", str(folder), "--model", str(model_path), "--reports"])
    out, err = capsys.readouterr()
    # only the broken file is taken over: the images now need their reports (and one its new
    # metadata, unknown this time)
    assert rc == 0 and "1 taken from an earlier run" in out
    assert "Analysing" in err and "7/7" in err and "img/s" in err  # the progress bar
    assert "reports:" in out and (results / "reports" / f"{names[0]}.pdf").is_file()


def test_batch_command_readable_errors(
    model_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["batch", str(tmp_path / "nowhere"), "--model", str(model_path), "-q"]) == 1
    assert "error: The folder 'nowhere' was not found." in capsys.readouterr().err
    bad_csv = tmp_path / "x.csv"
    bad_csv.write_text("who,age\n1,2\n")
    args = ["batch", str(tmp_path), "--model", str(model_path), "--metadata", str(bad_csv)]
    assert main([*args, "-q"]) == 1
    assert "no column naming the image" in capsys.readouterr().err


@POSIX_ONLY
def test_sigkill_mid_run_then_rerun_resumes(
    model_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "images"
    write_good_images(folder, 60)
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    out = tmp_path / "out"
    database = out / DATABASE_NAME
    proc = start_slow_cli(
        ["batch", str(folder), "--model", str(model_path), "--out", str(out), "--batch-size", "2"]
    )
    try:
        wait_for_rows(database, proc, 10)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    before = finished_rows(database)
    assert 10 <= len(before) < 61

    engine = Engine.load(model_path, providers="cpu")
    counter = CountingEngine(engine, monkeypatch)
    summary = run_batch(folder, engine, out)
    assert (summary.ok, summary.errors, summary.skipped) == (60, 1, 0)
    assert summary.reused == len(before)
    ran_before = sum(1 for status, _, _ in before.values() if status == "ok")
    assert counter.count == 60 - ran_before  # the finished ones were not recomputed
    after = finished_rows(database)
    assert all(after[rel] == row for rel, row in before.items())  # untouched
    paths = [r["path"] for r in read_csv(summary.csv)]
    assert sorted(paths) == sorted([f"img_{i:04d}.jpg" for i in range(60)] + ["broken.jpg"])


@POSIX_ONLY
def test_ctrl_c_stops_cleanly_with_status_130(model_path: Path, tmp_path: Path) -> None:
    folder = tmp_path / "images"
    write_good_images(folder, 60)
    out = tmp_path / "out"
    database = out / DATABASE_NAME
    args = ["batch", str(folder), "--model", str(model_path), "--out", str(out)]
    proc = start_slow_cli([*args, "--batch-size", "2"])
    try:
        wait_for_rows(database, proc, 6)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    done = len(finished_rows(database))
    assert f"stopped: {done} done, re-run the same command to resume" in err
    assert "Traceback" not in err
    assert len(read_csv(out / "results.csv")) == done

    rerun = subprocess.run(
        [sys.executable, "-m", "desktop_app", *args, "-q"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert rerun.returncode == 0, rerun.stderr
    assert (
        f"60 files: 60 analysed, 0 could not be analysed, 0 skipped (not images); {done} taken"
        in (rerun.stdout)
    )
