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
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    info = sub.add_parser("info", help="show a model's card: classes, data, metrics, licence")
    _add_model_argument(info)
    info.add_argument("--json", action="store_true", help="print the whole card as JSON")

    predict = sub.add_parser("predict", help="classify one image and print the result")
    predict.add_argument("image", type=Path)
    _add_model_argument(predict)
    _add_metadata_arguments(predict)
    predict.add_argument("--json", action="store_true", help="machine-readable output")
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


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handlers = {"info": _cmd_info, "predict": _cmd_predict}
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
