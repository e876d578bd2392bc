"""``lesionlens --self-test``: passes on a working model and sample, fails with a plain message
(and a non-zero exit) when the model is missing or damaged, or a step breaks.

Fast: the model is the hand-made synthetic ONNX of tests/model_factory.py (no TensorFlow); the
real bundled default model is tested too when it is present."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from desktop_app import cli, selftest
from desktop_app import resources as app_resources
from desktop_app.core.report import ReportError

ROOT = Path(__file__).resolve().parent.parent

pytest.importorskip("onnx", reason="the synthetic test model is built with the onnx package")

from tests import model_factory as mf  # noqa: E402


@pytest.fixture(scope="module")
def model_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("selftest") / "model.onnx"
    path.write_bytes(mf.synthetic_onnx(image_size=32))
    return path


@pytest.fixture
def bundle(tmp_path: Path, model_file: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A resources folder like the frozen app's: models/default.onnx and the sample image."""
    res = tmp_path / "resources"
    (res / "models").mkdir(parents=True)
    (res / "samples").mkdir()
    shutil.copy(model_file, res / "models" / "default.onnx")
    shutil.copy(ROOT / "resources" / "samples" / selftest.SAMPLE_IMAGE, res / "samples")
    monkeypatch.setattr(app_resources, "resources_dir", lambda: res)
    return res


def run(*args, **kwargs) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    kwargs.setdefault("qt", "import")  # pytest-qt owns the QApplication here
    code = selftest.run_self_test(*args, out=out, err=err, **kwargs)
    return code, out.getvalue(), err.getvalue()


def test_sample_image_is_bundled_and_readable():
    from desktop_app.core.imaging import load_image

    path = ROOT / "resources" / "samples" / selftest.SAMPLE_IMAGE
    image = load_image(path)
    assert image.width >= 100 and image.height >= 100
    assert "ISIC_0026993" in (ROOT / "resources" / "README.md").read_text(encoding="utf-8")


def test_passes_on_the_default_model_and_sample(bundle: Path):
    code, out, err = run()
    assert code == 0, err
    assert err == ""
    assert "self-test passed" in out
    assert "provider:    CPU" in out  # no GPU in CI; the provider line is always printed
    assert "default.onnx" in out
    assert selftest.SAMPLE_IMAGE in out
    assert "grad-cam:" in out and "report:      PDF" in out
    assert "window code imported" in out
    timings = next(line for line in out.splitlines() if line.startswith("timings:"))
    for word in ("load", "inference", "report"):
        assert word in timings


def test_leaves_no_report_behind(bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    before = set(tmp_path.iterdir())
    assert run()[0] == 0
    assert set(tmp_path.iterdir()) == before


def test_missing_default_model_fails_with_a_clear_message(bundle: Path):
    (bundle / "models" / "default.onnx").unlink()
    code, out, err = run()
    assert code == 1
    assert "self-test passed" not in out
    assert "FAILED" in err and "bundled default model is missing" in err
    assert "Traceback" not in err


def test_corrupt_model_fails_with_a_clear_message(bundle: Path):
    model = bundle / "models" / "default.onnx"
    model.write_bytes(model.read_bytes()[:2000])
    code, _, err = run()
    assert code == 1
    assert "load the model" in err and "not a valid ONNX model" in err


def test_model_given_that_does_not_exist(tmp_path: Path):
    code, _, err = run(tmp_path / "nope.onnx")
    assert code == 1
    assert "no model file" in err


def test_missing_sample_image_fails(bundle: Path):
    (bundle / "samples" / selftest.SAMPLE_IMAGE).unlink()
    code, _, err = run()
    assert code == 1
    assert "sample image is missing" in err


def test_a_failing_report_step_is_named(bundle: Path, monkeypatch: pytest.MonkeyPatch):
    def broken(*args, **kwargs):
        raise ReportError("The report was not saved to 'x.pdf': the disk is full.")

    monkeypatch.setattr("desktop_app.core.report.write_report", broken)
    code, _, err = run()
    assert code == 1
    assert "write the PDF report" in err and "disk is full" in err


def test_unexpected_errors_are_reported_in_words(bundle: Path, monkeypatch: pytest.MonkeyPatch):
    def boom(*args, **kwargs):
        raise RuntimeError("something broke")

    monkeypatch.setattr("desktop_app.core.engine.heatmap_for", boom)
    code, _, err = run(verbose=True)
    assert code == 1
    assert "Grad-CAM" in err and "RuntimeError: something broke" in err
    assert "Traceback" in err  # --verbose adds it


def test_cli_flag_runs_the_self_test(bundle: Path, capsys: pytest.CaptureFixture[str]):
    assert cli.main(["--self-test", "--no-qt"]) == 0
    assert "self-test passed" in capsys.readouterr().out
    (bundle / "models" / "default.onnx").unlink()
    assert cli.main(["--self-test", "--no-qt"]) == 1
    assert "bundled default model is missing" in capsys.readouterr().err


def test_command_line_in_a_fresh_process(model_file: Path):
    """What the installed app runs: `lesionlens --self-test`, Qt's platform plugin included."""
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen"}
    proc = subprocess.run(
        [sys.executable, "-m", "desktop_app", "--self-test", "--model", str(model_file)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr
    assert "platform 'offscreen'" in proc.stdout
    assert "self-test passed" in proc.stdout


def test_bundled_default_model_when_present():
    if not app_resources.default_model_path().is_file():
        pytest.skip("no bundled default model yet (resources/models/default.onnx)")
    code, out, err = run()
    assert code == 0, err
    assert "self-test passed" in out
