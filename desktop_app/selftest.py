"""``lesionlens --self-test``: check an installation end to end, without opening a window.

Loads the bundled default model (:func:`desktop_app.resources.default_model_path`, or ``--model``),
classifies the bundled sample image (``resources/samples/``), computes the Grad-CAM heatmap of the
top class, writes a PDF report with the app's own report code into a temporary folder (deleted
afterwards), imports the window's code and, where a display (or ``QT_QPA_PLATFORM``) is available,
starts Qt's platform plugin. Prints the onnxruntime provider that really ran and the timings, and
returns 0. On any failure it prints which step failed and why, in plain words, and returns 1.

This is what the packaging test runs on the installed app, and what a user or an IT department can
run after installing. It reads no patient data: the sample is a public HAM10000 image.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal, TextIO

from desktop_app import __version__
from desktop_app import resources as _resources

__all__ = ["SAMPLE_IMAGE", "QtCheck", "SelfTestError", "main", "run_self_test", "sample_image_path"]

QtCheck = Literal["start", "import", "skip"]

# A HAM10000 training image (histopathology-confirmed melanoma); see resources/README.md.
SAMPLE_IMAGE = "ISIC_0026993.jpg"
# Its metadata in HAM10000_metadata.csv, so the self-test also exercises the metadata encoder.
SAMPLE_METADATA = {"age": 45, "sex": "female", "site": "lower extremity"}


class SelfTestError(Exception):
    """One step of the self-test failed; ``step`` names it, the message says why."""

    def __init__(self, step: str, message: str) -> None:
        super().__init__(message)
        self.step = step


def sample_image_path() -> Path:
    """The bundled sample image (``resources/samples/ISIC_0026993.jpg``)."""
    return _resources.resources_dir() / "samples" / SAMPLE_IMAGE


def _build_kind() -> str:
    return "frozen build" if getattr(sys, "frozen", False) else "Python installation"


@contextmanager
def _step(name: str) -> Iterator[None]:
    """Turn any exception raised inside into a :class:`SelfTestError` for step ``name``."""
    from desktop_app.core.errors import LesionLensError

    try:
        yield
    except SelfTestError:
        raise
    except LesionLensError as exc:  # already written for people
        raise SelfTestError(name, str(exc)) from exc
    except Exception as exc:
        raise SelfTestError(name, f"unexpected error ({type(exc).__name__}: {exc})") from exc


def _timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    start = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - start


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms" if seconds < 10 else f"{seconds:.1f} s"


def _check_qt(say: Callable[..., None], qt: QtCheck) -> None:
    """Import the window's code (all Qt modules the app uses) and, for ``qt="start"`` where a
    display is available, create the QApplication so that Qt loads its platform plugin."""
    if qt == "skip":
        say("qt:          not checked (--no-qt)")
        return
    with _step("load the window's code (Qt)"):
        from PySide6 import __version__ as pyside_version

        import desktop_app.ui.main_window  # noqa: F401  (the import is the check)
    if qt != "start":
        say(f"qt:          PySide6 {pyside_version}, window code imported")
        return
    from desktop_app.app import create_application, display_problem

    if display_problem():
        say(
            f"qt:          PySide6 {pyside_version}, window code imported; no display here, "
            "so the platform plugin was not started"
        )
        return
    say("qt:          starting the platform plugin ...", flush=True)
    with _step("start Qt's platform plugin"):
        app = create_application([])
        platform = app.platformName()
    say(f"qt:          PySide6 {pyside_version}, window code imported, platform '{platform}'")


def run_self_test(
    model_path: str | os.PathLike[str] | None = None,
    image_path: str | os.PathLike[str] | None = None,
    *,
    provider: str = "auto",
    qt: QtCheck = "start",
    out: TextIO | None = None,
    err: TextIO | None = None,
    verbose: bool = False,
) -> int:
    """Run every check and print what happened; returns 0 when all passed, 1 otherwise.

    ``model_path``/``image_path``: default the bundled model and sample. ``qt``: "start" imports
    the window's code and starts the platform plugin where a display is available; "import" only
    imports (for callers that own the QApplication, such as tests); "skip" leaves Qt out.
    """
    out = out if out is not None else sys.stdout
    err = err if err is not None else sys.stderr

    def say(line: str, flush: bool = False) -> None:
        print(line, file=out, flush=flush)

    say(f"LesionLens {__version__} self-test ({_build_kind()}, Python {sys.version.split()[0]})")
    try:
        _run_checks(say, model_path, image_path, provider, qt)
    except SelfTestError as exc:
        out.flush()
        print(f"self-test FAILED while trying to {exc.step}: {exc}", file=err)
        if verbose and exc.__cause__ is not None:
            traceback.print_exception(exc.__cause__, file=err)
        return 1
    say("self-test passed")
    return 0


def _run_checks(
    say: Callable[..., None],
    model_path: str | os.PathLike[str] | None,
    image_path: str | os.PathLike[str] | None,
    provider: str,
    qt: QtCheck,
) -> None:
    with _step("import onnxruntime"):
        import onnxruntime as ort

        from desktop_app.core.engine import Engine, heatmap_for
        from desktop_app.core.imaging import ANALYSIS_MAX_SIDE, load_image
        from desktop_app.core.metadata import PatientMetadata
        from desktop_app.core.report import ReportCase, write_report

    model = Path(model_path) if model_path is not None else _resources.default_model_path()
    if not model.is_file():
        if model_path is None:
            why = (
                f"the bundled default model is missing (expected at {model}). This build or "
                "installation is incomplete: reinstall LesionLens, or pass a model with "
                "--model MODEL.onnx."
            )
        else:
            why = f"there is no model file at {model}."
        raise SelfTestError("find the model", why)

    with _step("load the model"):
        engine, t_load = _timed(lambda: Engine.load(model, providers=provider))
    card = engine.card
    say(f"model:       {model.name}: {card.name} {card.version}, sha256 {engine.sha256[:16]}...")
    say(
        f"onnxruntime: {ort.__version__}; available providers: "
        f"{', '.join(ort.get_available_providers())}"
    )
    if os.environ.get("ORT_DISABLE_TELEMETRY") == "1":
        say("privacy:     onnxruntime telemetry off (ORT_DISABLE_TELEMETRY=1)")
    else:
        say("privacy:     warning: onnxruntime telemetry is on (something imported onnxruntime before desktop_app)")
    used = ", ".join(engine.session.get_providers())
    say(f"provider:    {engine.provider} (session runs on {used})")
    if engine.provider_note:
        say(f"             note: {engine.provider_note}")

    image_file = Path(image_path) if image_path is not None else sample_image_path()
    if not image_file.is_file():
        raise SelfTestError(
            "find the sample image",
            f"the sample image is missing (expected at {image_file}); the installation is "
            "incomplete.",
        )
    with _step("read the sample image"):
        shown = load_image(image_file, max_side=ANALYSIS_MAX_SIDE)
    say(f"image:       {image_file.name} ({shown.width} x {shown.height})")

    meta = PatientMetadata(**SAMPLE_METADATA)
    with _step("classify the sample image"):
        pred, t_infer = _timed(
            lambda: engine.predict_one(shown, meta if card.uses_metadata else None)
        )
        _, t_warm = _timed(lambda: engine.predict_one(shown, meta if card.uses_metadata else None))
        _check_probabilities(pred.probabilities, len(card.codes))
    top = pred.probability(pred.top_code)
    say(
        f"result:      most likely {pred.top_name} ({pred.top_code}) {top:.1%}; malignancy risk "
        f"{pred.risk:.1%} vs threshold {pred.threshold:.1%}"
    )

    with _step("compute the Grad-CAM heatmap"):
        heat = heatmap_for(pred, pred.top_code, (shown.width, shown.height))
        _check_heatmap(heat, (shown.height, shown.width))
    small = pred.heatmap(pred.top_code).shape
    say(
        f"grad-cam:    {pred.top_code}, {small[1]} x {small[0]} map resized to "
        f"{shown.width} x {shown.height}, values {float(heat.min()):.2f}..{float(heat.max()):.2f}"
    )

    with tempfile.TemporaryDirectory(prefix="lesionlens-selftest-") as tmp:
        target = Path(tmp) / "self-test-report.pdf"
        case = ReportCase(
            image_rgb=shown.rgb,
            image_name=image_file.name,
            metadata=meta,
            prediction=pred,
            case_id="SELF-TEST",
        )
        with _step("write the PDF report"):
            _, t_report = _timed(lambda: write_report(target, case, engine))
            data = target.read_bytes()
            if not data.startswith(b"%PDF-") or b"%%EOF" not in data[-1024:]:
                raise SelfTestError("write the PDF report", "the report written is not a PDF.")
        say(f"report:      PDF of {len(data) / 1024:.0f} kB written to a temporary folder")

    _check_qt(say, qt)
    say(
        f"timings:     load {_ms(t_load)}, inference {_ms(t_infer)} (first), "
        f"{_ms(t_warm)} (second), report {_ms(t_report)}"
    )


def _check_probabilities(probs: Any, n_classes: int) -> None:
    import numpy as np

    p = np.asarray(probs, dtype=np.float64)
    if p.shape != (n_classes,) or not np.all(np.isfinite(p)) or abs(float(p.sum()) - 1.0) > 1e-3:
        raise SelfTestError(
            "classify the sample image",
            f"the model returned invalid probabilities (shape {p.shape}, sum {float(p.sum()):.4f}).",
        )


def _check_heatmap(heat: Any, shape: tuple[int, int]) -> None:
    import numpy as np

    h = np.asarray(heat)
    if h.shape != shape or not np.all(np.isfinite(h)) or h.min() < 0 or h.max() > 1:
        raise SelfTestError(
            "compute the Grad-CAM heatmap",
            f"the heatmap is invalid (shape {h.shape}, expected {shape}, values outside 0..1 "
            "or not finite).",
        )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lesionlens --self-test",
        description="Check this LesionLens installation without opening a window: load the "
        "bundled model, classify the bundled sample image, compute its Grad-CAM, write a PDF "
        "report into a temporary folder, and print the provider and the timings. Exit status 0 "
        "when everything works, 1 otherwise.",
    )
    parser.add_argument("--model", type=Path, default=None, help="test this model instead")
    parser.add_argument("--image", type=Path, default=None, help="test this image instead")
    parser.add_argument(
        "--provider", choices=("auto", "cpu", "cuda"), default="auto", help="execution provider"
    )
    parser.add_argument(
        "--no-qt", action="store_true", help="skip the Qt checks (window code, platform plugin)"
    )
    parser.add_argument(
        "--verbose", action="store_true", help="on failure, also print the Python traceback"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """``lesionlens --self-test [--model M] [--image I] [--provider P] [--no-qt] [--verbose]``."""
    args = build_parser().parse_args(argv)
    return run_self_test(
        args.model,
        args.image,
        provider=args.provider,
        qt="skip" if args.no_qt else "start",
        verbose=args.verbose,
    )


if __name__ == "__main__":
    raise SystemExit(main())
