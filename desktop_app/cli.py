"""``lesionlens``: the command-line face of the app (no window, no TensorFlow).

Every command takes the same road as the window: image file -> imaging.load_image ->
Engine.predict -> Prediction. Errors are printed as the readable messages of
:mod:`desktop_app.core.errors`, never as tracebacks.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from desktop_app import INTENDED_USE, __version__
from desktop_app.core.errors import LesionLensError, ModelError
from desktop_app.resources import default_model_path


def _add_model_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model",
        type=Path,
        default=None,
        help="ONNX model exported by `python -m trainer export` (default: the bundled model)",
    )
    p.add_argument(
        "--provider",
        choices=("auto", "cpu", "cuda"),
        default="auto",
        help="execution provider: CUDA when present and working (auto), or force one",
    )


def _add_metadata_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--age", default=None, help="age in years (omit if unknown)")
    p.add_argument("--sex", default=None, help="female, male or unknown")
    p.add_argument(
        "--site", default=None, help='anatomical site, e.g. "posterior torso" (omit if unknown)'
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lesionlens",
        description="LesionLens: offline decision support for clinicians reading dermoscopy "
        "images. " + INTENDED_USE,
    )
    parser.add_argument("--version", action="version", version=f"LesionLens {__version__}")
    parser.add_argument(
        "--self-test",
        action="store_true",
        help="check this installation without a window (bundled model, sample image, Grad-CAM, "
        "PDF report) and exit 0 if it works; `lesionlens --self-test --help` for its options",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    info = sub.add_parser("info", help="show a model's card: classes, data, metrics, licence")
    _add_model_argument(info)
    info.add_argument("--json", action="store_true", help="print the whole card as JSON")

    predict = sub.add_parser("predict", help="classify one image and print the result")
    predict.add_argument("image", type=Path)
    _add_model_argument(predict)
    _add_metadata_arguments(predict)
    predict.add_argument("--json", action="store_true", help="machine-readable output")

    report = sub.add_parser(
        "report", help="classify one image and write a PDF report (image, heatmap, model)"
    )
    report.add_argument("image", type=Path)
    _add_model_argument(report)
    _add_metadata_arguments(report)
    report.add_argument("--case-id", default="", help="case identifier printed on the report")
    report.add_argument("--notes", default="", help="clinician notes printed on the report")
    report.add_argument("--clinician", default="", help="name for the 'Reviewed by' line")
    report.add_argument(
        "--heatmap-class",
        default=None,
        metavar="CODE",
        help="class whose Grad-CAM is printed, e.g. MEL (default: the most likely class)",
    )
    report.add_argument("--out", type=Path, required=True, help="the PDF file to write")

    batch = sub.add_parser(
        "batch",
        help="analyse every image of a folder: triage CSV, database and summary PDF; resumable",
        description="Analyse every image of FOLDER offline. Results are saved as each image "
        "finishes; running the same command again resumes where it stopped (Ctrl-C stops "
        "cleanly). Writes OUT/results.csv (sorted by malignancy risk), "
        "OUT/lesionlens-results.sqlite and OUT/batch-summary.pdf.",
    )
    batch.add_argument("folder", type=Path, metavar="FOLDER", help="the folder of images")
    batch.add_argument(
        "--recursive", "-r", action="store_true", help="also analyse the images in sub-folders"
    )
    batch.add_argument(
        "--metadata",
        type=Path,
        default=None,
        metavar="CSV",
        help="patient metadata spreadsheet joined by image file name or stem (ISIC: "
        "age_approx, sex, anatom_site_general; HAM10000: age, sex, localization)",
    )
    batch.add_argument(
        "--out",
        type=Path,
        default=None,
        metavar="DIR",
        help="output folder (default: FOLDER/lesionlens-batch)",
    )
    _add_model_argument(batch)
    batch.add_argument(
        "--reports", action="store_true", help="also write one PDF report per image (OUT/reports/)"
    )
    batch.add_argument(
        "--workers", type=int, default=2, metavar="N", help="decoding threads (default 2)"
    )
    batch.add_argument(
        "--batch-size", type=int, default=8, metavar="N", help="images per inference call"
    )
    batch.add_argument("--quiet", "-q", action="store_true", help="no progress bar")

    gui = sub.add_parser(
        "gui",
        help="open the window (the default: `lesionlens` alone, or `lesionlens IMAGE`)",
    )
    gui.add_argument("image", type=Path, nargs="?", default=None, help="an image to open")
    gui.add_argument(
        "--model",
        type=Path,
        default=None,
        help="ONNX model exported by `python -m trainer export` (default: the bundled model)",
    )
    return parser


def _load_engine(args: argparse.Namespace):
    from desktop_app.core.engine import Engine

    path = args.model or default_model_path()
    if not Path(path).exists():
        raise ModelError(
            f"No model file at {path}. Pass one with --model MODEL.onnx "
            "(export one with `python -m trainer export RUN_DIR`)."
        )
    return Engine.load(path, providers=args.provider)


def _cmd_info(args: argparse.Namespace) -> int:
    engine = _load_engine(args)
    card = engine.card
    if args.json:
        print(json.dumps(card.raw, indent=2, sort_keys=True))
        return 0
    print(f"{card.name} (version {card.version})")
    print(f"file: {engine.path}\nsha256: {engine.sha256}\nprovider: {engine.provider}")
    print(
        f"backbone: {card.raw['architecture']['backbone']}; "
        f"metadata: {'age, sex, site' if card.uses_metadata else 'not used (image only)'}"
    )
    print(
        f"input: {card.preprocess.width}x{card.preprocess.height} RGB, "
        f"resize: {card.preprocess.resize}"
    )
    print("classes:")
    for c in card.classes:
        print(f"  {c.code:5s} {c.name}{'  (malignant)' if c.malignant else ''}")
    print(f"calibration temperature: {card.temperature:.3f}")
    print(f"malignancy threshold: {card.threshold:.3f} ({card.threshold_description})")
    test = card.raw.get("metrics", {}).get("test", {})
    for key in ("balanced_accuracy", "auc_macro", "accuracy"):
        if isinstance(test.get(key), int | float):
            print(f"test {key.replace('_', ' ')}: {test[key]:.3f}")
    print(f"licence: {card.raw['licence']}")
    print(f"intended use: {card.raw['intended_use']}")
    for item in card.raw.get("limitations", []):
        print(f"  limitation: {item}")
    return 0


def prediction_to_dict(pred: Any, engine: Any) -> dict[str, Any]:
    """The JSON shape printed by ``predict --json`` (documented in README)."""
    return {
        "model": {
            "name": engine.card.name,
            "version": engine.card.version,
            "sha256": engine.sha256,
            "provider": engine.provider,
        },
        "top_class": {"code": pred.top_code, "name": pred.top_name},
        "probabilities": {
            c: round(float(p), 6) for c, p in zip(pred.codes, pred.probabilities, strict=True)
        },
        "malignancy_risk": round(float(pred.risk), 6),
        "threshold": float(pred.threshold),
        "above_threshold": bool(pred.above_threshold),
        "entropy": round(float(pred.entropy), 6),
        "intended_use": INTENDED_USE,
    }


def _cmd_predict(args: argparse.Namespace) -> int:
    from desktop_app.core.metadata import PatientMetadata

    meta = PatientMetadata(age=args.age, sex=args.sex, site=args.site)
    engine = _load_engine(args)
    pred = engine.predict_file(args.image, meta if engine.card.uses_metadata else None)
    out = prediction_to_dict(pred, engine)
    out["metadata"] = meta.to_dict()
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    names = {c.code: c.name for c in engine.card.classes}
    print(f"{args.image.name}: most likely {pred.top_name} ({pred.top_code})")
    for code, p in sorted(out["probabilities"].items(), key=lambda kv: -kv[1]):
        print(f"  {p:6.1%}  {code:5s} {names[code]}")
    flag = "ABOVE" if pred.above_threshold else "below"
    print(
        f"malignancy risk {pred.risk:.1%}: {flag} the threshold {pred.threshold:.1%} "
        f"({engine.card.threshold_description})"
    )
    print(INTENDED_USE)
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    """Same road as the window: load_image(max_side=ANALYSIS_MAX_SIDE) -> Engine.predict; that
    copy is also what the report prints. Writing is atomic: on any error nothing is
    left at --out (an older file there is untouched)."""
    from desktop_app.core.imaging import ANALYSIS_MAX_SIDE, load_image
    from desktop_app.core.metadata import PatientMetadata
    from desktop_app.core.report import ReportCase, write_report

    meta = PatientMetadata(age=args.age, sex=args.sex, site=args.site)
    engine = _load_engine(args)
    shown = load_image(args.image, max_side=ANALYSIS_MAX_SIDE)
    pred = engine.predict_one(shown, meta if engine.card.uses_metadata else None)
    case = ReportCase(
        image_rgb=shown.rgb,
        image_name=args.image.name,
        metadata=meta,
        prediction=pred,
        heatmap_code=args.heatmap_class,
        case_id=args.case_id,
        clinician_notes=args.notes,
        clinician_name=args.clinician,
    )
    path = write_report(args.out, case, engine)
    print(f"report written: {path}")
    top = pred.probability(pred.top_code)
    print(f"{args.image.name}: most likely {pred.top_name} ({pred.top_code}), {top:.1%}")
    return 0


BATCH_OUT_NAME = "lesionlens-batch"


def _cmd_batch(args: argparse.Namespace) -> int:
    """Progress on stderr (count, rate, ETA); the first Ctrl-C (or SIGTERM) lets the images in
    flight finish and exits 130 with the database consistent, a second one stops at once."""
    import signal
    import threading

    from tqdm import tqdm

    from desktop_app.core.atomic import atomic_write_text
    from desktop_app.core.batch import run_batch

    engine = _load_engine(args)
    out = args.out if args.out is not None else args.folder / BATCH_OUT_NAME
    cancel = threading.Event()
    bars: list[Any] = []  # made at the first progress report, i.e. once set-up has succeeded

    def progress_bar() -> Any:
        if not bars:
            bars.append(
                tqdm(
                    total=None,
                    desc="Analysing",
                    unit="img",
                    file=sys.stderr,
                    dynamic_ncols=True,
                    disable=args.quiet,
                )
            )
        return bars[0]

    def close_bar() -> None:
        if bars:
            bars[0].close()

    def on_signal(signum: int, frame: Any) -> None:
        if cancel.is_set():
            raise KeyboardInterrupt
        cancel.set()
        tqdm.write(
            "stopping: the images in flight finish and are saved (Ctrl-C again to stop at once)",
            file=sys.stderr,
        )

    def on_progress(p: Any) -> None:
        bar = progress_bar()
        if bar.total != p.total:
            bar.total = p.total
        bar.set_postfix(ok=p.ok, errors=p.errors, skipped=p.skipped, reused=p.reused, refresh=False)
        bar.update(p.done - bar.n)
        if p.done >= p.total and not bar.disable:
            bar.close()  # the rate shown is the analysis', not the exports' that follow
            print("writing results.csv and batch-summary.pdf ...", file=sys.stderr)

    handled = [signal.SIGINT] + ([signal.SIGTERM] if hasattr(signal, "SIGTERM") else [])
    previous = {}
    if threading.current_thread() is threading.main_thread():
        previous = {sig: signal.signal(sig, on_signal) for sig in handled}
    try:
        summary = run_batch(
            args.folder,
            engine,
            out,
            recursive=args.recursive,
            metadata_csv=args.metadata,
            reports=args.reports,
            on_progress=on_progress,
            cancel=cancel,
            decode_workers=args.workers,
            batch_size=args.batch_size,
        )
    except KeyboardInterrupt:
        close_bar()
        done_so_far = bars[0].n if bars else 0
        print(f"stopped: {done_so_far} done, re-run the same command to resume", file=sys.stderr)
        return 130
    finally:
        close_bar()
        for sig, handler in previous.items():
            signal.signal(sig, handler)

    done = summary.ok + summary.errors + summary.skipped
    problems_file = summary.out_dir / "problems.txt"
    problems_file.unlink(missing_ok=True)  # an earlier run's, if any
    if summary.problems:
        atomic_write_text(problems_file, "\n".join(summary.problems) + "\n")
        for line in summary.problems[:10]:
            print(f"warning: {line}", file=sys.stderr)
        if len(summary.problems) > 10:
            print(f"warning: ... {len(summary.problems) - 10} more", file=sys.stderr)
        print(f"warnings written to {problems_file}", file=sys.stderr)
    if summary.cancelled:
        print(f"stopped: {done} done, re-run the same command to resume", file=sys.stderr)
        print(f"results so far: {summary.csv}")
        return 130
    print(
        f"{summary.total} files: {summary.ok} analysed, {summary.errors} could not be analysed, "
        f"{summary.skipped} skipped (not images); {summary.reused} taken from an earlier run; "
        f"{summary.seconds:.1f} s"
    )
    print(f"results: {summary.csv}")
    if summary.summary_pdf is not None:
        print(f"summary: {summary.summary_pdf}")
    if args.reports:
        print(f"reports: {summary.out_dir / 'reports'} ({summary.reports_written} written now)")
    print(INTENDED_USE)
    return 0


def _cmd_gui(args: argparse.Namespace) -> int:
    from desktop_app.app import main as gui_main

    return gui_main([], model_path=args.model, image_path=args.image)


def _gui_argv(argv: list[str], parser: argparse.ArgumentParser) -> list[str]:
    """`lesionlens` alone opens the window, and so does `lesionlens IMAGE` (a first argument
    that is neither an option nor a command), with that image."""
    commands: set[str] = set()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            commands.update(action.choices)
    if not argv:
        return ["gui"]
    if not argv[0].startswith("-") and argv[0] not in commands:
        return ["gui", *argv]
    return argv


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--self-test"]:
        from desktop_app.selftest import main as self_test_main

        return self_test_main(argv[1:])
    args = parser.parse_args(_gui_argv(argv, parser))
    handlers = {
        "info": _cmd_info,
        "predict": _cmd_predict,
        "report": _cmd_report,
        "batch": _cmd_batch,
        "gui": _cmd_gui,
    }
    if args.command not in handlers:
        parser.print_help()
        return 0 if args.command is None else 2
    try:
        return handlers[args.command](args)
    except LesionLensError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
