"""Screenshots of the LesionLens window for the documentation (offscreen, no display needed).

    python scripts/screenshots.py --model resources/models/default.onnx \\
        --image IMAGE --age 65 --sex male --site head/neck \\
        --warning-image OTHER_IMAGE --warning-age 80 --warning-sex male --warning-site head/neck \\
        --out docs/screenshots

Writes, in ``--out``:

* ``01-empty.png`` - the model loaded, no image yet (the empty state);
* ``02-result.png`` - ``--image`` analysed with the given metadata;
* ``03-warning.png`` - ``--warning-image`` (default: ``--image``) with its metadata; pick a case the
  model flags (low confidence, unusual image, malignant classes above the threshold) so the warning
  banner shows: the script says so when the case raised no flag;
* ``04-model-info.png`` - Help > Model information;
* ``05-bad-file.png`` - a damaged file opened over a result: the inline message, the case kept;
* ``06-result-200pct.png`` - the result at 200 % scaling (``QT_SCALE_FACTOR=2``, a second process).

Settings go to a temporary INI file: the user's own LesionLens settings are never touched.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from shot_helpers import save_grab, wait_for  # noqa: E402  (scripts/ is on sys.path)

WIDTH, HEIGHT = 1440, 900
SCALED_WIDTH, SCALED_HEIGHT = 1280, 800


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path, required=True)
    p.add_argument("--image", type=Path, required=True)
    p.add_argument("--age", default=None)
    p.add_argument("--sex", default="unknown")
    p.add_argument("--site", default="unknown")
    p.add_argument("--warning-image", type=Path, default=None)
    p.add_argument("--warning-age", default=None)
    p.add_argument("--warning-sex", default=None)
    p.add_argument("--warning-site", default=None)
    p.add_argument("--case-id", default="DEMO-001")
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "screenshots")
    p.add_argument(
        "--only",
        choices=("all", "normal", "scaled"),
        default="all",
        help="'scaled' is the 200 %% pass (run by 'all' in a second process)",
    )
    return p.parse_args(argv)


def _settle(app, window, seconds: float = 0.3) -> None:
    """Let background work finish and the widgets repaint."""
    wait_for(app, lambda: window.tasks.is_idle() and not window._analysis_timer.isActive())
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        app.processEvents()
        time.sleep(0.01)


def _open_case(app, window, image: Path, age, sex, site) -> None:
    window.open_image(image)
    wait_for(app, lambda: window.image is not None and window.image.path == image)
    window.metadata_form.set_values(age, sex or "unknown", site or "unknown")
    window.analyse_now()
    _settle(app, window)
    if window.analysis is None:
        raise SystemExit(f"error: {image} was not analysed: {window.banner.text()}")


def run(args: argparse.Namespace) -> int:
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from PySide6.QtCore import QSettings

    from desktop_app.app import create_application

    app = create_application([])
    from desktop_app.ui.main_window import MainWindow

    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="lesionlens-shots-") as tmp:
        settings = QSettings(str(Path(tmp) / "settings.ini"), QSettings.Format.IniFormat)
        settings.setValue("notice/intended_use_acknowledged", True)
        window = MainWindow(settings, model_path=args.model, load_default_model=False)
        scaled = args.only == "scaled"
        if scaled:
            window.resize(SCALED_WIDTH, SCALED_HEIGHT)
        else:
            window.resize(WIDTH, HEIGHT)
        window.show()
        if not wait_for(
            app, lambda: window.engine is not None or window.last_error_box is not None
        ):
            raise SystemExit("error: the model did not load in time")
        if window.engine is None:
            raise SystemExit(f"error: {window.last_error_box.text()}")
        _settle(app, window)
        window.case_form.case_id_edit.setText(args.case_id)

        if scaled:
            _open_case(app, window, args.image, args.age, args.sex, args.site)
            save_grab(window, out / "06-result-200pct.png")
            window.close()
            return 0

        save_grab(window, out / "01-empty.png")

        _open_case(app, window, args.image, args.age, args.sex, args.site)
        save_grab(window, out / "02-result.png")
        if window.analysis.prediction.flags:
            print("note: the result case raised flags, so 02-result.png shows the warning banner")

        warning_image = args.warning_image or args.image
        _open_case(
            app,
            window,
            warning_image,
            args.warning_age if args.warning_age is not None else args.age,
            args.warning_sex or args.sex,
            args.warning_site or args.site,
        )
        flags = window.analysis.prediction.flags
        save_grab(window, out / "03-warning.png")
        if not flags:
            print("note: this case raised no flag; 03-warning.png shows no warning banner")
        else:
            print("flags shown: " + "; ".join(f.title for f in flags))

        dialog = window.show_model_info()
        dialog.resize(dialog.width(), int(HEIGHT * 0.95))
        _settle(app, window)
        save_grab(dialog, out / "04-model-info.png")
        dialog.close()

        _open_case(app, window, args.image, args.age, args.sex, args.site)
        bad = Path(tmp) / "dermoscopy_0815.jpg"
        bad.write_bytes(b"\xff\xd8\xff\xe0" + bytes(range(256)) * 4)  # a JPEG cut after its header
        window.open_image(bad)
        wait_for(app, window.banner.is_shown)
        _settle(app, window)
        save_grab(window, out / "05-bad-file.png")
        window.close()

    if args.only == "all":
        env = dict(os.environ, QT_SCALE_FACTOR="2")
        cmd = [sys.executable, str(Path(__file__).resolve()), *sys.argv[1:], "--only", "scaled"]
        return subprocess.run(cmd, env=env, check=False).returncode
    return 0


def main(argv: list[str] | None = None) -> int:
    return run(parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
