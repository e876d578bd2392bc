"""The PDF report: content (read back with poppler's pdftotext), privacy of the PDF's properties,
font sizes, atomic writing, and the ``lesionlens report`` command.

Most tests use the hand-made ONNX model (fast, no TensorFlow); the ``slow`` ones use the tiny real
MobileNetV2 model that tests/model_factory.py exports once per session. Images are drawn here.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import os
import re
import shutil
import subprocess
import sys
import zlib
from datetime import datetime, timedelta, timezone
from pathlib import Path

import cv2
import numpy as np
import pytest

from desktop_app import __version__
from desktop_app.core.engine import Engine
from desktop_app.core.errors import LesionLensError
from desktop_app.core.metadata import PatientMetadata
from desktop_app.core.report import ReportCase, ReportError, build_report_pdf, write_report
from tests import model_factory as mf

REPO = Path(__file__).resolve().parent.parent
NOTES = 'Grew 3 mm in 6 months <b>& "quoted"\nKölner Straße, naïve, 日本, Łódź'
needs_poppler = pytest.mark.skipif(
    shutil.which("pdftotext") is None or shutil.which("pdfinfo") is None,
    reason="poppler-utils (pdftotext, pdfinfo) not installed: apt-get install -y poppler-utils",
)


def lesion_image(width: int = 200, height: int = 150, seed: int = 0) -> np.ndarray:
    """Skin-coloured background with a dark, irregular 'lesion'."""
    rng = np.random.default_rng(seed)
    img = np.empty((height, width, 3), np.uint8)
    img[:] = (225, 180, 170)
    img = np.clip(img + rng.normal(0, 6, img.shape), 0, 255).astype(np.uint8)
    center = (width // 2 + int(rng.integers(-10, 10)), height // 2)
    cv2.ellipse(img, center, (width // 5, height // 4), 20, 0, 360, (95, 55, 40), -1)
    cv2.circle(img, (center[0] + 12, center[1] - 6), height // 10, (60, 35, 30), -1)
    return img


class Flagged:
    """A prediction look-alike: the real one with some attributes replaced."""

    def __init__(self, pred, **overrides):
        self._pred = pred
        self.__dict__.update(overrides)

    def __getattr__(self, name):
        return getattr(self._pred, name)


class NoFlags(Flagged):
    def __getattr__(self, name):
        if name == "flags":
            raise AttributeError(name)
        return getattr(self._pred, name)


def pdf_text(pdf: bytes, tmp_path: Path) -> str:
    path = tmp_path / "read.pdf"
    path.write_bytes(pdf)
    out = subprocess.run(
        ["pdftotext", "-enc", "UTF-8", str(path), "-"], capture_output=True, check=True
    )
    return out.stdout.decode("utf-8")


def flat(text: str) -> str:
    return " ".join(text.split())


def pdf_info(pdf: bytes, tmp_path: Path) -> str:
    path = tmp_path / "info.pdf"
    path.write_bytes(pdf)
    out = subprocess.run(["pdfinfo", str(path)], capture_output=True, check=True)
    return out.stdout.decode("utf-8", "replace")


def page_count(pdf: bytes, tmp_path: Path) -> int:
    return int(re.search(r"Pages:\s+(\d+)", pdf_info(pdf, tmp_path)).group(1))


# -- fixtures -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def synthetic_engine(tmp_path_factory):
    path = tmp_path_factory.mktemp("report_model") / "synthetic.onnx"
    path.write_bytes(mf.synthetic_onnx())
    return Engine.load(path)


@pytest.fixture(scope="module")
def image_only_engine(tmp_path_factory):
    path = tmp_path_factory.mktemp("report_model_io") / "image_only.onnx"
    path.write_bytes(mf.synthetic_onnx(metadata=False))
    return Engine.load(path)


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    return mf.shared_export(tmp_path_factory, metadata=True)


def make_case(engine, **kw) -> ReportCase:
    image = kw.pop("image", lesion_image())
    meta = kw.pop("metadata", PatientMetadata(age=54, sex="female", site="posterior torso"))
    pred = kw.pop("prediction", None) or engine.predict_one(image, meta)
    defaults = {
        "image_name": "lesion_0042.jpg",
        "case_id": "CASE-0042",
        "clinician_notes": NOTES,
        "clinician_name": "Dr. Zoë Ångström",
        "created": datetime(2026, 3, 4, 9, 15, 30, tzinfo=timezone(timedelta(hours=1))),
    }
    defaults.update(kw)
    return ReportCase(image_rgb=image, metadata=meta, prediction=pred, **defaults)


# -- content ------------------------------------------------------------------------------------


@pytest.mark.slow
@needs_poppler
def test_report_on_the_exported_model_prints_everything(tiny, tmp_path):
    engine = Engine.load(tiny.path)
    case = make_case(engine)
    pdf = build_report_pdf(case, engine)
    assert pdf.startswith(b"%PDF-")
    text = pdf_text(pdf, tmp_path)
    words = flat(text)
    card = engine.card
    for cls in card.classes:
        assert cls.name in words, cls.name
        assert cls.code in words
    assert engine.sha256 in text  # full, on one line, in monospace
    assert "not a diagnosis" in words
    assert card.raw["intended_use"] in words
    assert "CASE-0042" in words
    assert "2026-03-04 09:15:30 (UTC+01:00)" in words
    assert "lesion_0042.jpg" in words
    assert "54 years" in words and "female" in words and "posterior torso" in words
    assert card.threshold_description in words
    # Notes: markup characters printed literally, Latin-1 and Latin Extended kept.
    assert 'Grew 3 mm in 6 months <b>& "quoted"' in words
    assert "Kölner Straße, naïve," in words and "Łódź" in words
    assert "Dr. Zoë Ångström" in words
    # Heatmap caption, model block, footer on every page.
    top = case.prediction.top_name
    assert f"Grad-CAM for {top} ({case.prediction.top_code})" in words
    assert "not a lesion segmentation" in words
    assert "model.onnx" in words and str(tiny.path.parent) not in text
    assert card.name in words and card.version in words
    assert card.raw["licence"] in words
    for limitation in card.raw["limitations"]:
        assert flat(limitation) in words
    pages = page_count(pdf, tmp_path)
    assert 1 <= pages <= 2
    for n in range(1, pages + 1):
        assert f"Page {n} of {pages}" in words
    assert words.count(f"LesionLens {__version__}") >= pages
    assert words.count("not validated for clinical use") >= pages + 1  # box + every footer
    assert "Reviewed by:" in words and "Signature:" in words and "Date:" in words
    # The answer and the calibrated probabilities, sorted.
    pred = case.prediction
    order = np.argsort(-pred.probabilities)
    positions = [words.index(pred.names[i]) for i in order]
    assert positions == sorted(positions)
    assert f"{pred.probability(pred.top_code):.1%}" in words
    assert "Malignancy risk" in words and "Uncertainty" in words
    relation = "above" if pred.above_threshold else "below"
    assert f"is {relation} the model's threshold of" in words


@needs_poppler
def test_flags_are_printed_and_no_flags_says_so(synthetic_engine, tmp_path):
    from desktop_app.core.uncertainty import Flag

    pred = synthetic_engine.predict_one(lesion_image(), None)
    flags = (
        Flag("low_confidence", "Low confidence", "The model is torn between two classes."),
        Flag("unusual_image", "Unusual image", "This image is unlike the training images."),
    )
    words = flat(
        pdf_text(
            build_report_pdf(
                make_case(synthetic_engine, prediction=Flagged(pred, flags=flags)),
                synthetic_engine,
            ),
            tmp_path,
        )
    )
    assert "Low confidence. The model is torn between two classes." in words
    assert "Unusual image. This image is unlike the training images." in words
    assert "No warnings." not in words

    none = make_case(synthetic_engine, prediction=Flagged(pred, flags=()))
    assert "Warnings: No warnings." in flat(
        pdf_text(build_report_pdf(none, synthetic_engine), tmp_path)
    )
    # A prediction that never went through the checks must not claim "No warnings".
    unchecked = make_case(synthetic_engine, prediction=NoFlags(pred))
    words = flat(pdf_text(build_report_pdf(unchecked, synthetic_engine), tmp_path))
    assert "No warnings." not in words and "Not checked" in words


@needs_poppler
def test_risk_and_threshold_never_print_as_the_same_number(synthetic_engine, tmp_path):
    pred = synthetic_engine.predict_one(lesion_image(), None)
    close = Flagged(pred, risk=0.2366, threshold=0.23671, above_threshold=False)
    words = flat(
        pdf_text(
            build_report_pdf(make_case(synthetic_engine, prediction=close), synthetic_engine),
            tmp_path,
        )
    )
    assert "Risk 23.66% is below the model's threshold of 23.67%." in words
    above = Flagged(pred, risk=0.65, threshold=0.24, above_threshold=True)
    words = flat(
        pdf_text(
            build_report_pdf(make_case(synthetic_engine, prediction=above), synthetic_engine),
            tmp_path,
        )
    )
    assert "Risk 65.0% is above the model's threshold of 24.0%." in words


@needs_poppler
def test_unknown_metadata_and_image_only_models_are_spelled_out(image_only_engine, tmp_path):
    case = make_case(image_only_engine, metadata=PatientMetadata(), case_id="", clinician_name="")
    words = flat(pdf_text(build_report_pdf(case, image_only_engine), tmp_path))
    assert "Age unknown" in words and "Sex unknown" in words and "Anatomical site unknown" in words
    assert "does not use age, sex or site" in words
    assert "Case ID not given" in words


@needs_poppler
def test_heatmap_class_can_be_chosen_and_a_wrong_one_is_refused(synthetic_engine, tmp_path):
    pred = synthetic_engine.predict_one(lesion_image(), None)
    other = next(c for c in pred.codes if c != pred.top_code)
    name = pred.names[pred.codes.index(other)]
    case = make_case(synthetic_engine, prediction=pred, heatmap_code=other.lower())
    words = flat(pdf_text(build_report_pdf(case, synthetic_engine), tmp_path))
    assert f"Grad-CAM for {name} ({other})" in words
    with pytest.raises(ReportError, match="no class 'SCC'"):
        build_report_pdf(make_case(synthetic_engine, heatmap_code="SCC"), synthetic_engine)
    assert issubclass(ReportError, LesionLensError)


@needs_poppler
def test_pdf_properties_hold_no_patient_data(synthetic_engine, tmp_path):
    case = make_case(synthetic_engine, image_name="/patients/Jane Doe/mole.jpg")
    assert case.image_name == "mole.jpg"  # no folder ever reaches the paper
    pdf = build_report_pdf(case, synthetic_engine)
    info = pdf_info(pdf, tmp_path)
    assert re.search(r"Title:\s+LesionLens report, case CASE-0042", info)
    assert re.search(r"Author:\s+LesionLens", info)
    assert re.search(r"Subject:\s+Dermoscopy decision-support report", info)
    for private in ("mole", "Jane", "54", "female", "torso", "Zo", "Grew", "lesion_0042"):
        assert private not in info, private
    assert b"Jane Doe" not in pdf


def _decoded_streams(pdf: bytes) -> list[bytes]:
    """reportlab's content streams are ASCII85 + Flate encoded."""
    out = []
    for stream in re.findall(rb"stream\r?\n(.*?)endstream", pdf, re.S):
        data = stream.strip()
        with contextlib.suppress(ValueError):
            data = base64.a85decode(data[:-2] if data.endswith(b"~>") else data)
        with contextlib.suppress(zlib.error):
            data = zlib.decompress(data)
        out.append(data)
    return out


def test_every_font_is_at_least_9_points(synthetic_engine):
    pdf = build_report_pdf(make_case(synthetic_engine), synthetic_engine)
    sizes = []
    for body in _decoded_streams(pdf):
        sizes += [float(s) for s in re.findall(rb"/F[\w+]+ ([\d.]+) Tf", body)]
    assert len(sizes) > 20, "no text found"
    assert min(sizes) >= 9.0


def test_odd_text_never_breaks_the_report(synthetic_engine):
    odd = "ctrl\x00\x07 chars, bad surrogate \udcff, tags <para><font name='x'>, & &amp; ]]>"
    case = make_case(
        synthetic_engine,
        case_id="<id> & \udcff",
        clinician_name="<script>",
        image_name="we<i>rd\udcfe.jpg",
        clinician_notes=odd + "\n" + "A very long note. " * 400,
    )
    pdf = build_report_pdf(case, synthetic_engine)
    assert pdf.startswith(b"%PDF-")


def test_report_case_checks_its_image(synthetic_engine):
    pred = synthetic_engine.predict_one(lesion_image(), None)
    meta = PatientMetadata()
    with pytest.raises(ValueError):
        ReportCase(lesion_image().astype(np.float32), "a.jpg", meta, pred)
    with pytest.raises(ValueError):
        ReportCase(lesion_image()[..., 0], "a.jpg", meta, pred)


def test_large_and_portrait_images_fit(synthetic_engine, tmp_path):
    for image in (lesion_image(1200, 900), lesion_image(120, 300)):
        pdf = build_report_pdf(make_case(synthetic_engine, image=image), synthetic_engine)
        assert len(pdf) < 3_000_000  # embedded at print resolution, not at 2048 px


# -- writing: atomic, readable errors -------------------------------------------------------------


def listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_write_report_writes_a_pdf_and_replaces_an_old_one(synthetic_engine, tmp_path):
    target = tmp_path / "case.pdf"
    target.write_bytes(b"old report")
    out = write_report(target, make_case(synthetic_engine), synthetic_engine)
    assert out == target
    assert target.read_bytes().startswith(b"%PDF-")
    assert listing(tmp_path) == ["case.pdf"]


def test_missing_folder_is_a_report_error_and_creates_nothing(synthetic_engine, tmp_path):
    target = tmp_path / "no_such_folder" / "case.pdf"
    with pytest.raises(ReportError, match="does not exist"):
        write_report(target, make_case(synthetic_engine), synthetic_engine)
    assert listing(tmp_path) == []


def test_a_folder_as_target_is_a_report_error(synthetic_engine, tmp_path):
    folder = tmp_path / "reports.pdf"
    folder.mkdir()
    with pytest.raises(ReportError, match="is a folder"):
        write_report(folder, make_case(synthetic_engine), synthetic_engine)
    assert listing(tmp_path) == ["reports.pdf"] and listing(folder) == []


def test_a_file_as_folder_is_a_report_error(synthetic_engine, tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(ReportError, match="not a folder"):
        write_report(
            tmp_path / "notes.txt" / "case.pdf", make_case(synthetic_engine), synthetic_engine
        )
    assert listing(tmp_path) == ["notes.txt"]


@pytest.mark.parametrize("where", ["fsync", "replace"])
def test_full_disk_leaves_nothing_and_keeps_the_old_report(
    synthetic_engine, tmp_path, monkeypatch, where
):
    target = tmp_path / "case.pdf"
    target.write_bytes(b"the older report")
    case = make_case(synthetic_engine)

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, where, full)  # mid-write (after the bytes) or at the final rename
    with pytest.raises(ReportError) as info:
        write_report(target, case, synthetic_engine)
    monkeypatch.undo()
    message = str(info.value)
    assert "disk is full" in message and "left unchanged" in message
    assert listing(tmp_path) == ["case.pdf"]  # no temporary file, no partial PDF
    assert target.read_bytes() == b"the older report"


def test_read_only_folder_is_a_report_error(synthetic_engine, tmp_path, monkeypatch):
    import tempfile

    def refuse(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(tempfile, "mkstemp", refuse)  # root ignores chmod: simulate the refusal
    with pytest.raises(ReportError, match="may not write to the folder"):
        write_report(tmp_path / "case.pdf", make_case(synthetic_engine), synthetic_engine)
    monkeypatch.undo()
    assert listing(tmp_path) == []


# -- the command line -------------------------------------------------------------------------------


def run_cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "desktop_app.cli", "report", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
        timeout=120,
    )


@pytest.mark.slow
@needs_poppler
def test_cli_report_end_to_end(tiny, tmp_path):
    image = tmp_path / "lesion.jpg"
    cv2.imwrite(str(image), cv2.cvtColor(lesion_image(), cv2.COLOR_RGB2BGR))
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    out = out_dir / "case.pdf"
    args = ["--model", str(tiny.path), "--age", "61", "--sex", "male", "--site", "head/neck"]
    args += ["--case-id", "CLI-7", "--notes", "from the CLI <ok>", "--clinician", "Dr. Who"]
    result = run_cli(str(image), *args, "--heatmap-class", "mel", "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert out.read_bytes().startswith(b"%PDF")
    assert listing(out_dir) == ["case.pdf"]
    assert str(out) in result.stdout and "most likely" in result.stdout
    words = flat(pdf_text(out.read_bytes(), tmp_path))
    assert "CLI-7" in words and "61 years" in words and "head/neck" in words
    assert "from the CLI <ok>" in words and "Dr. Who" in words
    assert "Grad-CAM for Melanoma (MEL)" in words
    # The same road as the window: load_image -> Engine.predict, on the full image.
    from desktop_app.core.imaging import load_image

    engine = Engine.load(tiny.path)
    pred = engine.predict_one(load_image(image), PatientMetadata(61, "male", "head/neck"))
    assert f"most likely {pred.top_name} ({pred.top_code})" in result.stdout


def test_cli_report_errors_leave_no_file(synthetic_engine, tmp_path, capsys):
    from desktop_app.cli import main

    model = str(synthetic_engine.path)
    bad = tmp_path / "not_an_image.jpg"
    bad.write_text("this is a text file, not a photo")
    out = tmp_path / "out" / "case.pdf"
    out.parent.mkdir()
    result = run_cli(str(bad), "--model", model, "--out", str(out))  # a real process, once
    assert result.returncode == 1
    assert result.stderr.startswith("error: ") and "not_an_image.jpg" in result.stderr
    assert "Traceback" not in result.stderr
    assert listing(out.parent) == []

    good = tmp_path / "lesion.png"
    cv2.imwrite(str(good), lesion_image())
    for extra, message in (
        (["--age", "300", "--out", str(out)], "Age must be"),
        (["--out", str(tmp_path / "missing" / "case.pdf")], "does not exist"),
        (["--out", str(out.parent)], "is a folder"),
        (["--heatmap-class", "SCC", "--out", str(out)], "no class 'SCC'"),
    ):
        assert main(["report", str(good), "--model", model, *extra]) == 1, extra
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err, err
        assert listing(out.parent) == []
    assert main(["report", str(good), "--model", model, "--out", str(out)]) == 0
    assert listing(out.parent) == ["case.pdf"]
