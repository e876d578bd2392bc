"""The app never imports TensorFlow: every desktop_app module imports in a fresh interpreter
without pulling in tensorflow, keras or tf2onnx."""

import pkgutil
import subprocess
import sys
from pathlib import Path

import desktop_app

ROOT = Path(__file__).resolve().parent.parent


def all_app_modules() -> list[str]:
    return sorted(
        m.name
        for m in pkgutil.walk_packages(desktop_app.__path__, prefix="desktop_app.")
        if not m.name.endswith("__main__")
    )


def test_there_are_app_modules_to_check():
    assert "desktop_app.core.engine" in all_app_modules() or len(all_app_modules()) > 5


def test_no_desktop_app_module_imports_tensorflow():
    code = (
        "import importlib, sys\n"
        f"mods = {all_app_modules()!r}\n"
        "for m in mods: importlib.import_module(m)\n"
        "bad = sorted(n for n in sys.modules if n.split('.')[0] in "
        "('tensorflow', 'keras', 'tf2onnx', 'tf_keras'))\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "", f"TensorFlow pulled in by the app: {out.stdout}"


def test_cli_help_works_without_a_model():
    out = subprocess.run(
        [sys.executable, "-m", "desktop_app", "--help"], cwd=ROOT, capture_output=True, text=True
    )
    assert out.returncode == 0
    assert "not a diagnosis" in out.stdout


def test_trainer_help_is_fast_and_lists_every_step():
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, trainer.cli as c\n"
            "try: c.main(['--help'])\nexcept SystemExit: pass\n"
            "print('TF', 'tensorflow' in sys.modules)",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    for step in ("data", "split", "train", "search", "evaluate", "export"):
        assert step in out.stdout
    assert "TF False" in out.stdout, "trainer --help must not import TensorFlow"


def test_the_app_keeps_onnxruntime_telemetry_off(tmp_path):
    """onnxruntime writes a device ID and a telemetry queue under ~/.cache/Microsoft unless told
    not to; LesionLens keeps nothing about the machine and sends nothing anywhere."""
    import os

    code = (
        "import desktop_app.core.engine, onnxruntime as ort\n"
        "ort.InferenceSession  # the library is loaded\n"
    )
    env = {**os.environ, "HOME": str(tmp_path), "XDG_CACHE_HOME": str(tmp_path / ".cache")}
    env.pop("ORT_DISABLE_TELEMETRY", None)
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, check=True)
    assert not (tmp_path / ".cache" / "Microsoft").exists()
