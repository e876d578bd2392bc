"""The batch pipeline and its results store: every file accounted for once, the single-case
answer, resume, cancel, bad images never stopping the batch, bounded memory, reports, the CSV.

Model: the TF-free synthetic ONNX model of tests/model_factory.py (32 x 32 input, metadata).
"""

from __future__ import annotations

import csv
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

import desktop_app.core.batch.pipeline as pipeline
from desktop_app.core.batch import (
    CSV_NAME,
    DATABASE_NAME,
    SUMMARY_NAME,
    BatchProgress,
    CaseResult,
    Preview,
    ResultStore,
    run_batch,
)
from desktop_app.core.batch.store import THUMBNAIL_SIDE
from desktop_app.core.engine import Engine
from tests import image_factory as imf
from tests import model_factory as mf
from tests.test_batch_scan import (
    ZOO_IMAGES,
    ZOO_SKIPPED_RECURSIVE,
    lesion,
    make_zoo,
    write_good_images,
)

pytestmark = pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")


@pytest.fixture(scope="module")
def engine() -> Engine:
    return Engine.from_bytes(mf.synthetic_onnx(image_size=32), providers="cpu")


@pytest.fixture(scope="module")
def zoo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_zoo(tmp_path_factory.mktemp("zoo") / "images")


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


class CountingEngine:
    """Counts the images an Engine really runs (a wrapper around predict)."""

    def __init__(self, engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
        self.count = 0
        real = engine.predict

        def predict(images, metadata=None, *, batch_size=16):
            images = list(images)
            self.count += len(images)
            return real(images, metadata, batch_size=batch_size)

        monkeypatch.setattr(engine, "predict", predict)


# -- the zoo ----------------------------------------------------------------------------------


def test_zoo_every_file_accounted_for_once(zoo: Path, engine: Engine, tmp_path: Path) -> None:
    progress: list[BatchProgress] = []
    out = tmp_path / "out"
    summary = run_batch(zoo, engine, out, recursive=True, on_progress=progress.append)
    n_ok = sum(v == "ok" for v in ZOO_IMAGES.values())
    assert (summary.ok, summary.errors, summary.skipped) == (
        n_ok,
        len(ZOO_IMAGES) - n_ok,
        len(ZOO_SKIPPED_RECURSIVE),
    )
    assert summary.total == len(ZOO_IMAGES) + len(ZOO_SKIPPED_RECURSIVE)
    assert not summary.cancelled and summary.reused == 0
    assert summary.csv == out / CSV_NAME and summary.database == out / DATABASE_NAME
    assert summary.summary_pdf == out / SUMMARY_NAME
    assert summary.summary_pdf.read_bytes().startswith(b"%PDF")

    rows = read_csv(summary.csv)
    paths = [r["path"] for r in rows]
    assert sorted(paths) == sorted([*ZOO_IMAGES, *ZOO_SKIPPED_RECURSIVE])  # each exactly once
    by_path = {r["path"]: r for r in rows}
    for rel, expected in ZOO_IMAGES.items():
        assert by_path[rel]["status"] == expected, (rel, by_path[rel]["message"])
    for rel in ZOO_SKIPPED_RECURSIVE:
        assert by_path[rel]["status"] == "skipped" and by_path[rel]["message"]

    header = list(rows[0])
    assert header == [
        "path",
        "status",
        "message",
        "top_class",
        *engine.codes,
        "malignancy_risk",
        "above_threshold",
        "flags",
    ]
    threshold = engine.card.threshold
    for r in rows:
        if r["status"] == "ok":
            probs = [float(r[c]) for c in engine.codes]
            assert sum(probs) == pytest.approx(1.0, abs=1e-4)
            assert r["top_class"] == engine.codes[int(np.argmax(probs))]
            assert r["message"] == ""
            assert (r["above_threshold"] == "yes") == (float(r["malignancy_risk"]) >= threshold)
        else:
            assert r["top_class"] == "" and r["malignancy_risk"] == "" and r["message"]
            assert "Traceback" not in r["message"]
    # triage order: risk high to low, then errors, then skipped
    statuses = [r["status"] for r in rows]
    assert statuses == sorted(statuses, key=["ok", "error", "skipped"].index)
    risks = [float(r["malignancy_risk"]) for r in rows if r["status"] == "ok"]
    assert risks == sorted(risks, reverse=True)
    # readable reasons, naming the file
    assert "empty (0 bytes)" in by_path["zero.jpg"]["message"]
    assert "'text.jpg' is not an image file" in by_path["text.jpg"]["message"]
    assert "damaged or truncated" in by_path["truncated.jpg"]["message"]
    assert "too small" in by_path["tiny.png"]["message"]
    assert "too large" in by_path["huge.png"]["message"]

    # progress: once for the skipped files, then once per image; the last one says all done
    assert len(progress) == 1 + len(ZOO_IMAGES)
    assert progress[0].last is None and progress[0].skipped == len(ZOO_SKIPPED_RECURSIVE)
    last = progress[-1]
    assert last.done == last.total == summary.total
    seen = [p.last.relative_path for p in progress[1:] if p.last is not None]
    assert sorted(seen) == sorted(ZOO_IMAGES)

    with ResultStore(summary.database) as store:
        for rel, expected in ZOO_IMAGES.items():
            thumb = store.thumbnail(rel)
            heat = store.heatmap_thumbnail(rel, engine.sha256)
            if expected == "ok":
                img = cv2.imdecode(np.frombuffer(thumb, np.uint8), cv2.IMREAD_COLOR)
                tinted = cv2.imdecode(np.frombuffer(heat, np.uint8), cv2.IMREAD_COLOR)
                assert max(img.shape[:2]) <= THUMBNAIL_SIDE
                assert tinted.shape == img.shape
                arr = store.heatmap_array(rel)
                assert arr is not None and arr.shape == img.shape[:2]
                assert 0.0 <= float(arr.min()) <= float(arr.max()) <= 1.0
            else:
                assert thumb is None and heat is None


def test_batch_gives_the_single_case_answer(zoo: Path, engine: Engine, tmp_path: Path) -> None:
    summary = run_batch(zoo, engine, tmp_path / "out")
    with ResultStore(summary.database) as store:
        for rel in ("good_01.jpg", "cmyk.jpg", "rgb16.png", "alpha.png", "big.jpg"):
            result = store.get(rel, engine.sha256)
            assert result is not None and result.status == "ok"
            single = engine.predict_file(zoo / rel)
            for code in engine.codes:
                assert result.probabilities[code] == pytest.approx(
                    single.probability(code), abs=1e-6
                )
            assert result.risk == pytest.approx(single.risk, abs=1e-6)
            assert result.flags == tuple(f.code for f in single.flags)


def test_output_folder_inside_the_folder_is_not_scanned(engine: Engine, tmp_path: Path) -> None:
    folder = tmp_path / "imgs"
    write_good_images(folder, 3)
    out = folder / "lesionlens-batch"
    first = run_batch(folder, engine, out, recursive=True, reports=True)
    again = run_batch(folder, engine, out, recursive=True, reports=True)
    assert first.total == again.total == 3
    assert again.reused == 3 and again.reports_written == 0


# -- resume -----------------------------------------------------------------------------------


def test_rerun_reuses_and_recomputes_only_what_changed(
    engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "imgs"
    names = write_good_images(folder, 6)
    (folder / "bad.jpg").write_bytes(b"not an image at all")
    out = tmp_path / "out"
    counter = CountingEngine(engine, monkeypatch)
    first = run_batch(folder, engine, out)
    assert (first.ok, first.errors, counter.count) == (6, 1, 6)

    second = run_batch(folder, engine, out)
    assert (second.ok, second.errors, second.reused) == (6, 1, 7)
    assert counter.count == 6  # nothing run again

    imf.write(folder / names[0], imf.encode(lesion(99), "JPEG"))  # new content, same name
    (folder / names[1]).unlink()
    write_good_images(folder, 1, start=50)
    third = run_batch(folder, engine, out)
    assert (third.ok, third.errors, third.reused) == (6, 1, 5)
    assert counter.count == 8
    rows = read_csv(third.csv)
    assert sorted(r["path"] for r in rows) == sorted(
        [*names[:1], *names[2:], "img_0050.jpg", "bad.jpg"]
    )

    # another model: its own rows, none reused; the first model's rows stay
    other = Engine.from_bytes(mf.synthetic_onnx(image_size=32, seed=3), providers="cpu")
    fourth = run_batch(folder, other, out)
    assert fourth.reused == 0 and fourth.ok == 6
    with ResultStore(fourth.database) as store:
        assert len(store.results(engine.sha256)) == len(store.results(other.sha256)) == 7


def test_cancel_stops_cleanly_and_the_next_run_resumes(
    engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "imgs"
    write_good_images(folder, 40)
    (folder / "readme.txt").write_text("x")
    out = tmp_path / "out"
    cancel = threading.Event()

    def on_progress(p: BatchProgress) -> None:
        if p.done >= 6:
            cancel.set()

    first = run_batch(folder, engine, out, on_progress=on_progress, cancel=cancel, batch_size=2)
    assert first.cancelled
    done = first.ok + first.errors + first.skipped
    assert 6 <= done < first.total
    rows = read_csv(first.csv)  # written on cancel too, with what is done
    assert len(rows) == done
    with ResultStore(first.database) as store:
        assert len(store.results(engine.sha256)) == done

    counter = CountingEngine(engine, monkeypatch)
    second = run_batch(folder, engine, out)
    assert not second.cancelled and second.ok == 40 and second.skipped == 1
    assert second.reused == first.ok
    assert counter.count == 40 - first.ok
    assert sorted(r["path"] for r in read_csv(second.csv)) == sorted(
        [f"img_{i:04d}.jpg" for i in range(40)] + ["readme.txt"]
    )


# -- robustness --------------------------------------------------------------------------------


def test_unexpected_failures_stay_with_their_image(
    engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "imgs"
    names = write_good_images(folder, 8)
    poison_decode = (folder / names[2]).read_bytes()
    real_load = pipeline.load_image

    def load_image(source, **kwargs):
        if isinstance(source, bytes) and source == poison_decode:
            raise RuntimeError("decoder exploded")
        return real_load(source, **kwargs)

    monkeypatch.setattr(pipeline, "load_image", load_image)
    real_predict = engine.predict
    poison_pixels = pipeline.resize_uint8(real_load(folder / names[5]).rgb, engine.card.preprocess)

    def predict(images, metadata=None, *, batch_size=16):
        images = list(images)
        if any(np.array_equal(im, poison_pixels) for im in images):
            raise ValueError("model exploded")
        return real_predict(images, metadata, batch_size=batch_size)

    monkeypatch.setattr(engine, "predict", predict)
    summary = run_batch(folder, engine, tmp_path / "out", batch_size=4)
    assert (summary.ok, summary.errors) == (6, 2)
    rows = {r["path"]: r for r in read_csv(summary.csv)}
    assert rows[names[2]]["message"] == "unexpected error: RuntimeError: decoder exploded"
    assert rows[names[5]]["message"] == "unexpected error: ValueError: model exploded"
    assert rows[names[4]]["status"] == "ok"  # its batch-mate was run alone

    monkeypatch.undo()  # the trouble is gone: only the unexpected failures are tried again
    again = run_batch(folder, engine, tmp_path / "out", batch_size=4)
    assert (again.ok, again.errors, again.reused) == (8, 0, 6)


def test_memory_stays_bounded_when_inference_is_slow(
    engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "imgs"
    write_good_images(folder, 40)
    prepared = 0
    real_call = pipeline._Preparer.__call__

    def counting_call(self, rel):
        nonlocal prepared
        prepared += 1
        return real_call(self, rel)

    monkeypatch.setattr(pipeline._Preparer, "__call__", counting_call)
    real_predict = engine.predict

    def slow_predict(*args, **kwargs):
        time.sleep(0.02)
        return real_predict(*args, **kwargs)

    monkeypatch.setattr(engine, "predict", slow_predict)
    ahead: list[int] = []
    batch_size, workers = 2, 2
    run_batch(
        folder,
        engine,
        tmp_path / "out",
        batch_size=batch_size,
        decode_workers=workers,
        on_progress=lambda p: ahead.append(prepared - p.done),
    )
    # the decode queue (2 x batch_size), four groups (in inference, two waiting, being saved)
    # and one image in each decode worker's hands: never the whole folder
    assert max(ahead) <= 2 * batch_size + 4 * batch_size + workers < 40


# -- reports -----------------------------------------------------------------------------------


def test_per_case_reports_are_written_once(engine: Engine, tmp_path: Path) -> None:
    folder = tmp_path / "imgs"
    write_good_images(folder, 2)
    write_good_images(folder / "sub", 1, start=10)
    (folder / "bad.jpg").write_bytes(b"")
    out = tmp_path / "out"
    first = run_batch(folder, engine, out, recursive=True, reports=True)
    expected = [
        out / "reports" / "img_0000.jpg.pdf",
        out / "reports" / "img_0001.jpg.pdf",
        out / "reports" / "sub" / "img_0010.jpg.pdf",
    ]
    assert first.reports_written == 3 and all(p.read_bytes()[:5] == b"%PDF-" for p in expected)
    assert not (out / "reports" / "bad.jpg.pdf").exists()
    stamps = [p.stat().st_mtime_ns for p in expected]

    again = run_batch(folder, engine, out, recursive=True, reports=True)
    assert again.reused == 4 and again.reports_written == 0
    assert [p.stat().st_mtime_ns for p in expected] == stamps

    expected[2].unlink()
    third = run_batch(folder, engine, out, recursive=True, reports=True)
    assert third.reused == 3 and third.reports_written == 1 and expected[2].is_file()
    with ResultStore(third.database) as store:
        assert store.report_path("sub/img_0010.jpg", engine.sha256) == expected[2]

    # a report never outlives its answer: the file changed (no reports asked for this time) or
    # is gone
    imf.write(folder / "img_0000.jpg", imf.encode(lesion(77), "JPEG"))
    (folder / "img_0001.jpg").unlink()
    fourth = run_batch(folder, engine, out, recursive=True)
    assert fourth.reused == 2 and fourth.ok == 2
    assert not expected[0].exists() and not expected[1].exists() and expected[2].is_file()

    # another model writing its reports takes the file over: the first model's row has none now
    other = Engine.from_bytes(mf.synthetic_onnx(image_size=32, seed=5), providers="cpu")
    run_batch(folder, other, out, recursive=True, reports=True)
    with ResultStore(third.database) as store:
        assert store.report_path("sub/img_0010.jpg", engine.sha256) is None
        assert store.report_path("sub/img_0010.jpg", other.sha256) == expected[2]
    assert run_batch(folder, engine, out, recursive=True, reports=True).reports_written == 2


# -- the store ---------------------------------------------------------------------------------


def _result(rel: str, risk: float | None, status: str = "ok", sha: str = "c1") -> CaseResult:
    if status != "ok":
        return CaseResult.failed(rel, status, "why", "m1", sha)
    return CaseResult(
        relative_path=rel,
        status="ok",
        message="",
        content_sha256=sha,
        model_sha256="m1",
        top_code="MEL",
        probabilities={"MEL": risk or 0.0, "NV": 1 - (risk or 0.0)},
        risk=risk,
        above_threshold=(risk or 0) >= 0.5,
        flags=("low_confidence",),
        metadata={"age": 40.0, "sex": "male", "site": "unknown"},
        finished_at="2024-01-01T00:00:00Z",
    )


def test_store_round_trip_resume_key_and_csv(tmp_path: Path) -> None:
    store = ResultStore(tmp_path / DATABASE_NAME)
    results = [
        _result("b.jpg", 0.2),
        _result("=evil.jpg", 0.9),
        _result("a.jpg", 0.6),
        _result("broken.jpg", None, "error"),
        _result("notes.txt", None, "skipped", sha=""),
    ]
    thumb = imf.encode(lesion(1), "JPEG")
    store.save(results, {"a.jpg": Preview(thumb, None)})
    assert store.get("a.jpg", "m1") == results[2]
    assert [r.relative_path for r in store.results("m1")] == [
        "=evil.jpg",
        "a.jpg",
        "b.jpg",
        "broken.jpg",
        "notes.txt",
    ]
    assert store.results("other") == []
    assert store.thumbnail("a.jpg") == thumb and store.heatmap_thumbnail("a.jpg") is None
    assert store.counts("m1") == {"ok": 3, "error": 1, "skipped": 1}

    meta = {"age": 40.0, "sex": "male", "site": "unknown"}
    assert store.is_done("a.jpg", "c1", "m1")
    assert store.is_done("a.jpg", "c1", "m1", metadata=meta)
    assert not store.is_done("a.jpg", "c1", "m1", metadata={**meta, "age": 41.0})
    assert not store.is_done("a.jpg", "c2", "m1")  # the file changed
    assert not store.is_done("a.jpg", "c1", "m2")  # another model
    assert store.is_done("broken.jpg", "c1", "m1")  # the same broken file: same error
    assert not store.is_done("notes.txt", "", "m1")
    assert not store.is_done("a.jpg", "c1", "m1", need_report=True)

    target = tmp_path / "results.csv"
    store.export_csv(target, ["MEL", "NV"], "m1")
    rows = read_csv(target)
    assert [r["path"] for r in rows] == ["'=evil.jpg", "a.jpg", "b.jpg", "broken.jpg", "notes.txt"]
    assert rows[0]["MEL"] == "0.900000" and rows[0]["above_threshold"] == "yes"
    assert rows[2]["above_threshold"] == "no" and rows[2]["flags"] == "low_confidence"
    assert rows[3]["MEL"] == "" and rows[3]["message"] == "why"
    assert sorted(p.name for p in tmp_path.iterdir() if "results.csv" in p.name) == [
        "results.csv"
    ]  # no temporary file left behind

    assert sorted(store.prune({"a.jpg", "b.jpg"}, "m1")) == ["=evil.jpg", "broken.jpg", "notes.txt"]
    assert {r.relative_path for r in store.results("m1")} == {"a.jpg", "b.jpg"}
    store.close()


def test_a_second_store_reads_while_the_first_writes(tmp_path: Path) -> None:
    path = tmp_path / DATABASE_NAME
    with ResultStore(path) as writer, ResultStore(path) as reader:
        writer.save([_result("a.jpg", 0.3)])
        assert [r.relative_path for r in reader.results()] == ["a.jpg"]
        assert reader.info("nothing") is None


def test_summary_pdf_of_a_large_batch_lists_later_lines_as_text(
    engine: Engine, tmp_path: Path
) -> None:
    from desktop_app.core.batch.summary_pdf import _fit, write_batch_summary

    folder = tmp_path / "imgs"
    write_good_images(folder, 12)
    (folder / "bad.jpg").write_bytes(b"")
    summary = run_batch(folder, engine, tmp_path / "out")
    target = tmp_path / "short.pdf"
    with ResultStore(summary.database) as store:
        write_batch_summary(target, store, folder, engine, max_thumbnails=3)
    full = summary.summary_pdf
    assert full is not None and target.read_bytes().startswith(b"%PDF")
    assert target.stat().st_size < full.stat().st_size  # fewer pictures
    assert _fit("short", 100) == "short"
    cut = _fit("a/very/long/folder/name/ISIC_0000001.jpg", 60, keep_end=True)
    assert cut.startswith("\u2026") and cut.endswith(".jpg")
    assert _fit("Actinic keratosis and more words", 40).endswith("\u2026")


def test_stored_heatmap_is_drawn_with_the_models_resize_mode(tmp_path: Path) -> None:
    from desktop_app.core.batch.store import encode_heat
    from desktop_app.core.imaging import PreprocessSpec

    with ResultStore(tmp_path / DATABASE_NAME) as store:
        thumb = imf.encode(lesion(3, 96, 48), "JPEG")
        store.save(
            [_result("wide.jpg", 0.7)], {"wide.jpg": Preview(thumb, encode_heat(np.ones((4, 4))))}
        )
        store.set_preprocess("m1", PreprocessSpec(32, 32, resize="center_crop"))
        heat = store.heatmap_array("wide.jpg")
        assert heat is not None and heat.shape == (48, 96)
        assert heat[:, 30:66].min() > 0.99  # the central square the model saw
        assert heat[:, :20].max() == 0.0 and heat[:, -20:].max() == 0.0  # cropped away
        store.set_preprocess("m1", PreprocessSpec(32, 32, resize="stretch"))
        assert store.heatmap_array("wide.jpg", "m1").min() > 0.99
