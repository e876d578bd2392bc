"""``python -m trainer``: one sub-command per step, each implemented in its own module.

Every module exposes ``add_arguments(parser)`` and ``run(args) -> int``; this file only wires them, so
``--help`` stays fast (TensorFlow is imported by the step that needs it, not here).
"""

from __future__ import annotations

import argparse
import importlib
import sys

from desktop_app.core.errors import LesionLensError

COMMANDS: dict[str, tuple[str, str]] = {
    "data": ("trainer.datasets", "read a data set and report what was found, skipped and why"),
    "split": ("trainer.splits", "make a lesion/patient-grouped train/val/test split file"),
    "train": ("trainer.train", "train the dual-input model (two stages, resumable)"),
    "search": ("trainer.search", "Optuna hyper-parameter search on the validation split"),
    "soup": ("trainer.soup", "average the weights of runs that share a split (model soup)"),
    "evaluate": ("trainer.evaluate", "ISIC-style evaluation, calibration and threshold"),
    "export": ("trainer.export", "export to ONNX with Grad-CAM and the model card, checked"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m trainer",
        description="LesionLens trainer: read dermoscopy data sets, split by lesion, train a "
        "dual-input (image + age/sex/site) model, evaluate it the ISIC way, export to ONNX.",
        epilog="Typical run: data -> split -> train -> evaluate -> export. "
        "See README.md for the exact commands used for the default model.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(_module=module_name)
        importlib.import_module(module_name).add_arguments(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    module = importlib.import_module(args._module)
    try:
        return int(module.run(args) or 0)
    except LesionLensError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(
            "interrupted: partial results are kept; re-run the same command to resume.",
            file=sys.stderr,
        )
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
