"""Score a distillation teacher on the validation split from its cached logits.

Why: the model card compares the student with its teacher "on the same split where it is fair".
The teacher's logits are cached for the train and validation rows only (test rows are NaN: the
teacher never sees the test split), so this scores validation, and says what that number is worth.

    python scripts/score_teacher.py RUN_DIR [--data PATH]

RUN_DIR is a training run made with ``--teacher`` (it holds ``teacher_logits.npy`` and
``split.csv``). Prints BMA, macro AUC, per-class recall and the malignant AUC as JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="training run folder made with --teacher")
    parser.add_argument("--data", help="data set folder (default: the run's config.json)")
    args = parser.parse_args(argv)

    from trainer.distill import _cache_files
    from trainer.metrics import compute_metrics
    from trainer.train import TrainConfig, prepare_config_data

    config_json = json.loads((args.run / "config.json").read_text(encoding="utf-8"))
    config = TrainConfig.from_dict(config_json["train_config"])
    if args.data:
        config.data = args.data
    data = prepare_config_data(config, progress=False, split_path=args.run / "split.csv")
    npy, meta_file = _cache_files(args.run / "teacher_logits.npy")
    meta = json.loads(meta_file.read_text(encoding="utf-8"))
    if meta.get("classes") != list(data.classes) or meta.get("rows") != len(data):
        print(f"{npy} does not belong to this run's data.", file=sys.stderr)
        return 2
    logits = np.load(npy)
    val = np.asarray(data.indices("val"), np.int64)
    z = logits[val].astype(np.float64)
    probs = np.exp(z - z.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    metrics = compute_metrics(data.labels[val], probs, data.classes)
    recall = {
        c: metrics["per_class"][c]["recall"] for c in data.classes if c in metrics["per_class"]
    }
    out = {
        "teacher": meta.get("teacher"),
        "split": "val",
        "cases": len(val),
        "bma": metrics["balanced_accuracy"],
        "macro_auc": metrics["auc_macro"],
        "malignant_auc": metrics["malignant"].get("auc"),
        "recall": recall,
        "note": "the teacher may have been trained on these images: an optimistic, not a fair, "
        "comparison",
    }
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
