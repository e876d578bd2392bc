"""``soup`` sub-command: average the weights of several runs of one model (a "model soup").

::

    python -m trainer soup --run runs/NAME-soup runs/A runs/B [runs/C ...] [--uniform]

Why: fine-tuned runs that start from the same weights (``train --init-from``) land in one basin
of the loss, and the average of their weights is often more accurate and steadier than any one of
them (Wortsman et al., "Model soups", ICML 2022) while costing nothing at inference: the result is
one model of the same size. On a 2-core CPU it turns runs that plateau at a noisy validation score
into one better model without another training run.

What it does:

- Checks that every ingredient has the same shape (classes, backbone, input size, metadata
  encoding, head sizes) and **the same split file**: a run trained on another split may have
  learned this split's test images.
- Scores each ingredient's ``model.keras`` on the validation split (balanced multiclass accuracy),
  then, greedily, best first, adds an ingredient to the soup only if the averaged model's
  validation BMA does not drop (``--uniform``: average them all). The test split is never read.
- Writes a run folder that ``evaluate`` and ``export`` accept: ``model.keras``, ``config.json``
  (the best ingredient's, plus a ``soup`` section with the ingredients, their scores and the
  command), ``split.csv``, ``best.json`` and ``soup.json``. If an ingredient was distilled, the
  soup's ``train_config.teacher`` names its teacher, so the exported card says so.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import shlex
import sys
from pathlib import Path
from typing import Any

import numpy as np

from desktop_app.core.atomic import atomic_save_json, atomic_write_text
from desktop_app.core.errors import ModelError

SHAPE_KEYS = ("classes", "backbone", "image_size", "use_metadata", "metadata_encoding", "resize")
HEAD_KEYS = ("head_units", "meta_units")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("runs", nargs="+", type=Path, help="training run folders (two or more)")
    parser.add_argument("--run", required=True, type=Path, help="output run folder")
    parser.add_argument(
        "--uniform", action="store_true", help="average every ingredient (default: greedy)"
    )
    parser.add_argument("--batch-size", type=int, default=64, help="validation batch size")
    parser.add_argument("--data", help="data set folder, when it moved since training")
    parser.add_argument("--cache-dir", help="image cache folder (default: config.json's)")


def _read_config(run: Path) -> dict[str, Any]:
    path = run / "config.json"
    if not path.is_file() or not (run / "model.keras").is_file():
        raise ModelError(f"{run} is not a finished training run (config.json or model.keras).")
    return json.loads(path.read_text(encoding="utf-8"))


def check_ingredients(runs: list[Path]) -> list[dict[str, Any]]:
    """The runs' configs, after checking that their weights can be averaged and that they share
    one split (ModelError otherwise)."""
    if len(runs) < 2:
        raise ModelError("A soup needs at least two runs.")
    configs = [_read_config(r) for r in runs]
    first, first_split = configs[0], (runs[0] / "split.csv")
    split_text = first_split.read_text(encoding="utf-8-sig") if first_split.is_file() else None
    for run, cfg in zip(runs[1:], configs[1:], strict=True):
        diff = [k for k in SHAPE_KEYS if cfg.get(k) != first.get(k)]
        diff += [
            k
            for k in HEAD_KEYS
            if (cfg.get("train_config") or {}).get(k) != (first.get("train_config") or {}).get(k)
        ]
        if diff:
            raise ModelError(f"{run} and {runs[0]} differ in {', '.join(diff)}: cannot average.")
        split = run / "split.csv"
        if split_text is None or not split.is_file():
            raise ModelError(f"{run} or {runs[0]} has no split.csv: the split cannot be checked.")
        if split.read_text(encoding="utf-8-sig") != split_text:
            raise ModelError(
                f"{run} was trained on another split than {runs[0]}: one of them may have "
                "learned the other's test images."
            )
    return configs


def average_weights(weight_lists: list[list[np.ndarray]]) -> list[np.ndarray]:
    """Element-wise mean of several models' weight lists (integer arrays must agree)."""
    out = []
    for arrays in zip(*weight_lists, strict=True):
        if np.issubdtype(arrays[0].dtype, np.floating):
            out.append(np.mean(np.stack(arrays), axis=0).astype(arrays[0].dtype))
        else:
            if any(not np.array_equal(a, arrays[0]) for a in arrays[1:]):
                raise ModelError("The models' integer weights differ: cannot average them.")
            out.append(arrays[0])
    return out


def _val_bma(model: Any, data: Any, batch_size: int) -> float:
    from trainer.evaluate import make_predictor, predict_logits
    from trainer.metrics import balanced_accuracy

    predictor, dual = make_predictor(model)
    val = np.asarray(data.indices("val"), np.int64)
    logits = predict_logits(
        predictor,
        data.images,
        data.metadata if dual else None,
        val,
        batch_size,
        "val",
        progress=sys.stderr.isatty(),  # no bar per pass in a log file
    )
    return float(balanced_accuracy(np.asarray(data.labels)[val], logits.argmax(axis=1)))


def run(args: argparse.Namespace) -> int:
    from trainer.evaluate import load_model, load_prepared_data

    runs = [Path(r) for r in args.runs]
    configs = check_ingredients(runs)
    out: Path = args.run
    if (out / "model.keras").exists():
        raise ModelError(f"{out} already holds a model; choose another --run folder.")
    data = load_prepared_data(configs[0], runs[0], args.data, args.cache_dir)
    if len(data.indices("val")) == 0:
        raise ModelError("The split has no validation images: nothing to choose the soup on.")

    models = [load_model(r / "model.keras") for r in runs]
    weights = [m.get_weights() for m in models]
    scores = []
    for r, m in zip(runs, models, strict=True):
        scores.append(_val_bma(m, data, args.batch_size))
        print(f"{r}: val BMA {scores[-1]:.4f}", flush=True)
    order = sorted(range(len(runs)), key=lambda i: -scores[i])
    soup_model = models[order[0]]  # the vessel: its architecture, the soup's weights
    chosen, best = [order[0]], scores[order[0]]
    if args.uniform:
        chosen = order
        soup_model.set_weights(average_weights([weights[i] for i in chosen]))
        best = _val_bma(soup_model, data, args.batch_size)
    else:
        for i in order[1:]:
            soup_model.set_weights(average_weights([weights[j] for j in [*chosen, i]]))
            score = _val_bma(soup_model, data, args.batch_size)
            kept = score >= best
            print(f"  + {runs[i]}: soup val BMA {score:.4f} ({'kept' if kept else 'dropped'})")
            if kept:
                chosen, best = [*chosen, i], score
        soup_model.set_weights(average_weights([weights[j] for j in chosen]))
    print(f"soup of {len(chosen)}: val BMA {best:.4f}", flush=True)

    out.mkdir(parents=True, exist_ok=True)
    import keras

    tmp = out / "model.tmp.keras"
    keras.saving.save_model(soup_model, tmp)
    tmp.replace(out / "model.keras")
    base = configs[order[0]]
    teachers = [c.get("train_config", {}).get("teacher") for c in configs]
    teacher = next((configs[i]["train_config"]["teacher"] for i in chosen if teachers[i]), None)
    command = shlex.join(["python", "-m", "trainer", "soup", *sys.argv[2:]])
    soup_info = {
        "method": "uniform" if args.uniform else "greedy (Wortsman et al. 2022)",
        "ingredients": [
            {"run": str(r), "val_bma": s, "used": i in chosen}
            for i, (r, s) in enumerate(zip(runs, scores, strict=True))
        ],
        "val_bma": best,
        "command": command,
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
    }
    config = {
        **base,
        "train_config": {**base.get("train_config", {}), "teacher": teacher, "run": str(out)},
        "split": str(out / "split.csv"),
        "soup": soup_info,
        "command": command,
    }
    atomic_write_text(out / "split.csv", (runs[0] / "split.csv").read_text(encoding="utf-8-sig"))
    side = runs[0] / "split.csv.json"
    if side.is_file():
        atomic_write_text(out / "split.csv.json", side.read_text(encoding="utf-8"))
    atomic_save_json(out / "config.json", config)
    atomic_save_json(out / "soup.json", soup_info)
    atomic_save_json(out / "best.json", {"val_bma": best, "soup": len(chosen)})
    print(f"model: {out / 'model.keras'}\nnext: python -m trainer evaluate {out}")
    return 0
