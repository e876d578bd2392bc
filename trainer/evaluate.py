"""``evaluate`` sub-command: ISIC-style evaluation, temperature calibration and the malignancy threshold.

What it does, in this order (the order is the point):

1. **Validation split**: fit the temperature ``T`` (NLL), measure ECE before/after, and choose the
   malignancy threshold: the largest threshold whose sensitivity on calibrated validation risk is
   at least ``--target-sensitivity`` (``risk >= threshold`` is flagged, as in the app).
2. **Test split** (unless ``--split val``), scored once with that ``T`` and threshold, nothing tuned on
   it: BMA, accuracy, top-2/3, per-class precision/recall/F1/AUC, confusion matrices, the malignant
   operating point, ECE before/after, bootstrap CIs, and a metadata ablation (the same images with
   every patient's metadata replaced by "unknown"; skipped for image-only models).
3. Plots, prediction CSVs, ``metrics.json`` and ``report.md`` in ``RUN_DIR/evaluation``.

Test-split discipline: every scoring of the test split is appended to
``RUN_DIR/evaluation/test_evaluations.log`` (time, model SHA-256, command); scoring the same model
twice prints a WARNING (it is not refused: re-running after a crash is legitimate, tuning on test is
not).

The pure functions (:func:`evaluate_arrays`, :func:`render_report`, :func:`write_predictions_csv`,
:func:`write_plots`, the log helpers) need no TensorFlow; :func:`run` wraps them with data loading
and inference.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import shlex
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from desktop_app.core import classes as catalog
from desktop_app.core.atomic import atomic_save_json, atomic_write_bytes, atomic_write_text
from desktop_app.core.errors import DatasetError, ModelError
from desktop_app.core.risk import apply_temperature, malignancy_risk, malignant_mask

LOG_NAME = "test_evaluations.log"
DEFAULT_TARGET_SENSITIVITY = 0.95
N_BINS = 15


# ---------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", metavar="RUN_DIR", help="training run folder (runs/NAME)")
    parser.add_argument(
        "--split",
        choices=("test", "val"),
        default="test",
        help="score the test split (default; logged, once per model) or only the validation split",
    )
    parser.add_argument("--batch-size", type=int, default=64, help="inference batch size")
    parser.add_argument(
        "--bootstrap",
        type=int,
        default=1000,
        metavar="N",
        help="bootstrap resamples for 95%% confidence intervals (0: none)",
    )
    parser.add_argument(
        "--gallery",
        type=int,
        default=24,
        metavar="N",
        help="most confidently wrong images to show (0: no gallery)",
    )
    parser.add_argument(
        "--target-sensitivity",
        type=float,
        default=DEFAULT_TARGET_SENSITIVITY,
        help="malignancy sensitivity the threshold is chosen for on validation data",
    )
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    parser.add_argument("--out", default=None, help="output folder (default RUN_DIR/evaluation)")
    parser.add_argument(
        "--data", default=None, help="data set path, when it moved since training (default: config)"
    )
    parser.add_argument(
        "--cache-dir", default=None, help="image cache folder (default: from config.json)"
    )


def canonical_command(args: argparse.Namespace) -> list[str]:
    """The command with every option spelled out, so re-running it reproduces this evaluation."""
    cmd = [
        "python", "-m", "trainer", "evaluate", str(args.run_dir),
        "--split", args.split,
        "--batch-size", str(args.batch_size),
        "--bootstrap", str(args.bootstrap),
        "--gallery", str(args.gallery),
        "--target-sensitivity", f"{args.target_sensitivity:g}",
        "--seed", str(args.seed),
    ]  # fmt: skip
    for flag, value in (
        ("--out", args.out),
        ("--data", args.data),
        ("--cache-dir", args.cache_dir),
    ):
        if value:
            cmd += [flag, str(value)]
    return cmd


# ---------------------------------------------------------------------------------------------
# Pure evaluation (no TensorFlow)
# ---------------------------------------------------------------------------------------------


def _json_float(x: Any) -> float | None:
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def choose_operating_point(
    val_logits: Any,
    val_labels: Any,
    classes: Sequence[str],
    target_sensitivity: float = DEFAULT_TARGET_SENSITIVITY,
) -> dict[str, Any]:
    """Temperature and malignancy threshold, both from validation data only.

    Returns ``{"temperature", "threshold": {"value", "target_sensitivity", "validation_sensitivity",
    "validation_specificity", "tuned", "rule"}}``. Without any malignant validation case the
    threshold cannot be tuned: it falls back to 0.5 with ``tuned: false`` and a warning is printed.
    """
    from trainer.calibration import T_BOUNDS, fit_temperature
    from trainer.metrics import binary_operating_point, threshold_for_sensitivity

    y = np.asarray(val_labels).astype(np.int64)
    mask = malignant_mask(list(classes))
    temperature = fit_temperature(val_logits, y)
    lo, hi = T_BOUNDS
    if y.size and not lo * 1.05 < temperature < hi / 1.05:
        print(
            f"WARNING: the fitted temperature {temperature:.3g} is at the edge of the search range "
            f"[{lo:g}, {hi:g}]: the model's confidence is far off (or the validation split is too "
            "small); look at the reliability diagram before trusting its probabilities.",
            file=sys.stderr,
        )
    risk = np.asarray(malignancy_risk(apply_temperature(val_logits, temperature), mask)).reshape(-1)
    y_mal = mask[y] if y.size else np.zeros(0, dtype=bool)
    tuned = bool(y_mal.any())
    if tuned:
        value = threshold_for_sensitivity(y_mal, risk, target_sensitivity)
    else:
        value = 0.5
        print(
            "WARNING: the validation split has no malignant case; the malignancy threshold could "
            "not be tuned and is left at 0.5.",
            file=sys.stderr,
        )
    op = binary_operating_point(y_mal, risk, value)
    return {
        "temperature": float(temperature),
        "threshold": {
            "value": float(value),
            "target_sensitivity": float(target_sensitivity),
            "validation_sensitivity": op["sensitivity"],
            "validation_specificity": op["specificity"],
            "tuned": tuned,
            "rule": "flag when risk >= value; risk = sum of calibrated probabilities of "
            f"{', '.join(c for c, m in zip(classes, mask, strict=True) if m)}",
        },
    }


def split_metrics(
    logits: Any,
    labels: Any,
    classes: Sequence[str],
    temperature: float,
    threshold: float,
    *,
    bootstrap: int = 0,
    seed: int = 0,
    logits_no_metadata: Any = None,
) -> dict[str, Any]:
    """Metrics of one split with calibrated probabilities, calibration before/after, and (when
    ``logits_no_metadata`` is given) the metadata ablation with paired bootstrap deltas."""
    from trainer.calibration import calibration_summary, reliability_curve
    from trainer.metrics import compute_metrics, paired_bootstrap_delta

    y = np.asarray(labels).astype(np.int64)
    codes = list(classes)
    mask = malignant_mask(codes)
    probs = apply_temperature(logits, temperature)
    out = compute_metrics(y, probs, codes, mask, threshold, bootstrap=bootstrap, seed=seed)
    cal = calibration_summary(logits, y, temperature, N_BINS)
    out["ece_before"] = cal["ece_before"]
    out["ece_after"] = cal["ece_after"]
    out["calibration"] = {
        **cal,
        "reliability_before": reliability_curve(
            apply_temperature(logits, 1.0), y, N_BINS
        ).to_dict(),
        "reliability_after": reliability_curve(probs, y, N_BINS).to_dict(),
    }
    if logits_no_metadata is not None:
        probs_nm = apply_temperature(logits_no_metadata, temperature)
        nm = compute_metrics(y, probs_nm, codes, mask, threshold)

        def delta(a: float | None, b: float | None) -> float | None:
            return None if a is None or b is None else 100.0 * (a - b)

        ablation: dict[str, Any] = {
            "description": "same images, every patient's metadata replaced by the 'unknown' "
            "vector; delta = with metadata - without, in percentage points",
            "balanced_accuracy": nm["balanced_accuracy"],
            "auc_macro": nm["auc_macro"],
            "malignant_auc": nm["malignant"]["auc"],
            "malignant_sensitivity": nm["malignant"]["sensitivity"],
            "malignant_specificity": nm["malignant"]["specificity"],
            "delta_balanced_accuracy_points": delta(
                out["balanced_accuracy"], nm["balanced_accuracy"]
            ),
            "delta_auc_macro_points": delta(out["auc_macro"], nm["auc_macro"]),
            "delta_malignant_auc_points": delta(out["malignant"]["auc"], nm["malignant"]["auc"]),
        }
        if bootstrap and bootstrap > 0 and y.size:
            ablation["delta_ci"] = paired_bootstrap_delta(
                y, probs, probs_nm, n=bootstrap, seed=seed, malignant=mask
            )
        out["ablation_no_metadata"] = ablation
    return out


def evaluate_arrays(
    *,
    classes: Sequence[str],
    val_logits: Any,
    val_labels: Any,
    test_logits: Any = None,
    test_labels: Any = None,
    val_logits_no_metadata: Any = None,
    test_logits_no_metadata: Any = None,
    target_sensitivity: float = DEFAULT_TARGET_SENSITIVITY,
    bootstrap: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """The whole evaluation from logits: calibrate and choose the threshold on validation, then
    score validation and (if given) test with them. Returns the JSON-ready body of metrics.json:
    ``{"classes", "malignant_classes", "temperature", "threshold", "validation", "test"}``
    (``test`` is None when no test logits are given). Validation metrics are in-sample for ``T``
    and the threshold (optimistic); test metrics are not."""
    codes = [str(c) for c in classes]
    for c in codes:
        catalog.get(c)  # unknown codes fail here, with a readable message
    if np.asarray(val_logits).shape[-1] != len(codes):
        raise ModelError(
            f"The model outputs {np.asarray(val_logits).shape[-1]} classes but the run lists "
            f"{len(codes)} ({', '.join(codes)})."
        )
    op = choose_operating_point(val_logits, val_labels, codes, target_sensitivity)
    t, thr = op["temperature"], op["threshold"]["value"]
    result: dict[str, Any] = {
        "classes": codes,
        "malignant_classes": [c for c in codes if catalog.is_malignant(c)],
        **op,
        "validation": split_metrics(
            val_logits, val_labels, codes, t, thr, bootstrap=bootstrap, seed=seed,
            logits_no_metadata=val_logits_no_metadata,
        ),
        "test": None,
    }  # fmt: skip
    result["validation"]["note"] = (
        "temperature and threshold were fitted on this split: in-sample, optimistic"
    )
    if test_logits is not None:
        if test_labels is None:
            raise ValueError("test_labels are required with test_logits")
        result["test"] = split_metrics(
            test_logits, test_labels, codes, t, thr, bootstrap=bootstrap, seed=seed,
            logits_no_metadata=test_logits_no_metadata,
        )  # fmt: skip
    return result


# ---------------------------------------------------------------------------------------------
# Files: predictions, plots, log, report
# ---------------------------------------------------------------------------------------------


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_predictions_csv(
    path: str | os.PathLike,
    image_ids: Sequence[str],
    labels: Any,
    probs: Any,
    classes: Sequence[str],
) -> Path:
    """``image_id, label, pred, <one probability column per class code>, risk`` (calibrated)."""
    import pandas as pd

    codes = list(classes)
    p = np.asarray(probs, dtype=np.float64)
    y = np.asarray(labels).astype(np.int64)
    frame = pd.DataFrame({"image_id": [str(i) for i in image_ids]})
    frame["label"] = [codes[i] for i in y]
    frame["pred"] = [codes[i] for i in p.argmax(axis=1)] if len(p) else []
    for j, code in enumerate(codes):
        frame[code] = np.round(p[:, j], 6)
    frame["risk"] = np.round(np.asarray(malignancy_risk(p, codes)).reshape(-1), 6)
    atomic_write_text(path, frame.to_csv(index=False, lineterminator="\n"))
    return Path(path)


class _Take:
    """``images[indices[i]]`` without copying a memory-mapped cache."""

    def __init__(self, images: Any, indices: np.ndarray) -> None:
        self.images, self.indices = images, np.asarray(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> np.ndarray:
        return np.asarray(self.images[int(self.indices[int(i)])])


def write_plots(
    out_dir: str | os.PathLike,
    split: str,
    *,
    classes: Sequence[str],
    labels: Any,
    logits: Any,
    temperature: float,
    threshold: float,
    confusion: Any,
    images: Any = None,
    image_ids: Sequence[str] | None = None,
    gallery: int = 24,
) -> dict[str, str]:
    """All figures of one split; returns ``{kind: file name}`` (relative to ``out_dir``)."""
    from trainer import plots

    out = Path(out_dir)
    probs = apply_temperature(logits, temperature)
    y = np.asarray(labels).astype(np.int64)
    files: dict[str, str] = {}
    name = f"confusion_{split}.png"
    plots.plot_confusion_matrix(confusion, classes, out / name, title=f"Confusion ({split})")
    files["confusion"] = name
    name = f"roc_{split}.png"
    plots.plot_roc_curves(y, probs, classes, out / name, threshold=threshold, title=split)
    files["roc"] = name
    name = f"reliability_{split}.png"
    plots.plot_reliability(
        y, apply_temperature(logits, 1.0), probs, out / name, N_BINS, temperature, split
    )
    files["reliability"] = name
    if images is not None and gallery > 0:
        name = f"errors_{split}.png"
        plots.plot_misclassification_gallery(
            images, y, probs, classes, out / name, limit=gallery, image_ids=image_ids
        )
        files["gallery"] = name
    return files


def previous_test_scorings(log_path: str | os.PathLike, model_sha256: str) -> list[str]:
    """Lines of the test log that already scored this model."""
    p = Path(log_path)
    if not p.is_file():
        return []
    lines = p.read_text(encoding="utf-8").splitlines()
    return [ln for ln in lines if len(ln.split("\t")) >= 2 and ln.split("\t")[1] == model_sha256]


def record_test_scoring(
    log_path: str | os.PathLike, model_sha256: str, command: str, when: str | None = None
) -> str:
    """Append ``time<TAB>sha256<TAB>command`` to the test log (rewritten atomically)."""
    p = Path(log_path)
    p.parent.mkdir(parents=True, exist_ok=True)
    when = when or datetime.now(UTC).replace(microsecond=0).isoformat()
    line = f"{when}\t{model_sha256}\t{command}"
    old = p.read_text(encoding="utf-8") if p.is_file() else ""
    if old and not old.endswith("\n"):
        old += "\n"
    atomic_write_text(p, old + line + "\n")
    return line


def _fmt(x: Any, digits: int = 3) -> str:
    if x is None:
        return "n/a"
    if isinstance(x, float) and not math.isfinite(x):
        return "n/a"
    if isinstance(x, int | np.integer):
        return str(int(x))
    return f"{float(x):.{digits}f}"


def _ci(m: dict[str, Any], key: str) -> str:
    ci = (m.get("ci") or {}).get(key)
    if not ci or ci.get("low") is None:
        return ""
    return f" ({_fmt(ci['low'])}–{_fmt(ci['high'])})"


def _split_section(name: str, m: dict[str, Any], plots: dict[str, str]) -> list[str]:
    lines = [f"## {name}", ""]
    if m.get("note"):
        lines += [f"*{m['note']}.*", ""]
    pct = round(100 * (1 - (m.get("ci") or {}).get("alpha", 0.05)))
    ci_head = f" ({pct}% CI)" if m.get("ci") else ""
    lines += [
        "### Overall",
        "",
        f"| metric | value{ci_head} |",
        "|---|---|",
        f"| cases | {m['n']} |",
        f"| balanced multiclass accuracy (BMA) | {_fmt(m['balanced_accuracy'])}"
        f"{_ci(m, 'balanced_accuracy')} |",
        f"| accuracy | {_fmt(m['accuracy'])} |",
        f"| top-2 accuracy | {_fmt(m['top2'])} |",
        f"| top-3 accuracy | {_fmt(m['top3'])} |",
        f"| macro AUC (one-vs-rest) | {_fmt(m['auc_macro'])}{_ci(m, 'auc_macro')} |",
        f"| malignant-vs-benign AUC | {_fmt(m['malignant']['auc'])}{_ci(m, 'malignant_auc')} |",
        "",
    ]
    excluded = [c for c, v in m["per_class"].items() if v["auc"] is None]
    if excluded:
        lines += [
            f"Macro AUC excludes {', '.join(excluded)} (no positive or no negative case here).",
            "",
        ]
    if m.get("ci"):
        lines += [f"Confidence intervals: {m['ci'].get('method')}, "
                  f"{m['ci'].get('n_resamples')} resamples.", ""]  # fmt: skip
    lines += [
        "### Per class",
        "",
        "| class | malignant | support | precision | recall | F1 | AUC |",
        "|---|---|---|---|---|---|---|",
    ]
    for code, v in m["per_class"].items():
        lines.append(
            f"| {code} | {'yes' if v['malignant'] else 'no'} | {v['support']} | "
            f"{_fmt(v['precision'])} | {_fmt(v['recall'])} | {_fmt(v['f1'])} | {_fmt(v['auc'])} |"
        )
    mal = m["malignant"]
    lines += [
        "",
        "### Malignant operating point",
        "",
        f"Flag when risk ≥ {_fmt(mal['threshold'], 4)} (risk = sum of calibrated probabilities of "
        f"{', '.join(mal['classes'])}).",
        "",
        "| sensitivity | specificity | PPV | NPV | AUC | malignant | benign | flagged |",
        "|---|---|---|---|---|---|---|---|",
        f"| {_fmt(mal['sensitivity'])} | {_fmt(mal['specificity'])} | {_fmt(mal['ppv'])} | "
        f"{_fmt(mal['npv'])} | {_fmt(mal['auc'])} | {mal['n_malignant']} | {mal['n_benign']} | "
        f"{mal['flagged']} |",
        "",
        "### Calibration",
        "",
        "| | ECE (15 bins, top-label) | NLL |",
        "|---|---|---|",
        f"| before (T = 1) | {_fmt(m['ece_before'], 4)} | {_fmt(m['calibration']['nll_before'], 4)} |",
        f"| after (T = {_fmt(m['calibration']['temperature'], 3)}) | {_fmt(m['ece_after'], 4)} | "
        f"{_fmt(m['calibration']['nll_after'], 4)} |",
        "",
    ]
    ab = m.get("ablation_no_metadata")
    if "ablation_no_metadata" in m and ab is None:
        lines += ["*Metadata ablation: not applicable (image-only model).*", ""]
    if ab:
        dci = ab.get("delta_ci") or {}

        def dline(label: str, key: str, base: Any, value: Any, dkey: str) -> str:
            c = dci.get(key) or {}
            rng = (
                f" ({_fmt(100 * c['low'], 2)} to {_fmt(100 * c['high'], 2)})"
                if c.get("low") is not None
                else ""
            )
            return f"| {label} | {_fmt(base)} | {_fmt(value)} | {_fmt(ab[dkey], 2)}{rng} |"

        lines += [
            "### Metadata ablation",
            "",
            "Same images, every patient's age/sex/site replaced by *unknown*. Δ = with metadata − "
            "without, in percentage points" + (" (paired bootstrap CI)." if dci else "."),
            "",
            "| metric | with metadata | metadata unknown | Δ points |",
            "|---|---|---|---|",
            dline("BMA", "balanced_accuracy", m["balanced_accuracy"], ab["balanced_accuracy"],
                  "delta_balanced_accuracy_points"),
            dline("macro AUC", "auc_macro", m["auc_macro"], ab["auc_macro"],
                  "delta_auc_macro_points"),
            dline("malignant AUC", "malignant_auc", mal["auc"], ab["malignant_auc"],
                  "delta_malignant_auc_points"),
            "",
        ]  # fmt: skip
    if plots:
        lines += ["### Figures", ""]
        titles = {
            "confusion": "Confusion matrices",
            "roc": "ROC curves",
            "reliability": "Reliability before/after temperature scaling",
            "gallery": "Most confidently wrong cases",
        }
        for kind, file in plots.items():
            lines += [f"![{titles.get(kind, kind)}]({file})", ""]
    return lines


def render_report(metrics: dict[str, Any], plots: dict[str, dict[str, str]] | None = None) -> str:
    """Markdown report of a ``metrics.json`` dict; ``plots`` maps split -> {kind: relative path}."""
    plots = plots or {}
    thr = metrics["threshold"]
    lines = [
        "# LesionLens evaluation",
        "",
        f"- created: {metrics.get('created', '')}",
        f"- model SHA-256: `{metrics.get('model_sha256', '')}`",
        f"- classes: {', '.join(metrics['classes'])} "
        f"(malignant: {', '.join(metrics.get('malignant_classes', []))})",
        f"- command: `{metrics.get('command', '')}`",
        "",
        "Decision support for trained clinicians, not a diagnosis. Temperature and threshold are "
        "fitted on the validation split only; the test split is scored with them, untouched.",
        "",
        "## Calibration and threshold (from validation)",
        "",
        "| temperature | threshold | target sensitivity | validation sensitivity | "
        "validation specificity |",
        "|---|---|---|---|---|",
        f"| {_fmt(metrics['temperature'], 4)} | {_fmt(thr['value'], 4)} | "
        f"{_fmt(thr['target_sensitivity'], 2)} | {_fmt(thr['validation_sensitivity'])} | "
        f"{_fmt(thr['validation_specificity'])} |",
        "",
    ]
    if not thr.get("tuned", True):
        lines += ["**The threshold was not tuned: no malignant case in the validation split.**", ""]
    if metrics.get("test"):
        lines += _split_section("Test split", metrics["test"], plots.get("test", {}))
    else:
        lines += ["*The test split was not scored (`--split val`).*", ""]
    lines += _split_section("Validation split", metrics["validation"], plots.get("val", {}))
    return "\n".join(lines).rstrip() + "\n"


def summary_table(metrics: dict[str, Any]) -> str:
    """A short plain-text table for the terminal."""
    rows = [("", "validation", "test")]
    v, t = metrics["validation"], metrics.get("test") or {}

    def get(m: dict[str, Any], *keys: str) -> str:
        for k in keys:
            if not isinstance(m, dict) or k not in m:
                return "-"
            m = m[k]
        return _fmt(m)

    for label, keys in (
        ("cases", ("n",)),
        ("BMA", ("balanced_accuracy",)),
        ("accuracy", ("accuracy",)),
        ("macro AUC", ("auc_macro",)),
        ("malignant AUC", ("malignant", "auc")),
        ("sensitivity", ("malignant", "sensitivity")),
        ("specificity", ("malignant", "specificity")),
        ("ECE before", ("ece_before",)),
        ("ECE after", ("ece_after",)),
        ("BMA, meta unknown", ("ablation_no_metadata", "balanced_accuracy")),
    ):
        rows.append((label, get(v, *keys), get(t, *keys)))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    text = [
        "  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in
                  enumerate(zip(r, widths, strict=True)))
        for r in rows
    ]  # fmt: skip
    text.insert(1, "  ".join("-" * w for w in widths))
    thr = metrics["threshold"]
    text.append(
        f"temperature {metrics['temperature']:.4f}; malignancy threshold {thr['value']:.4f} "
        f"(target sensitivity {thr['target_sensitivity']:.2f} on validation)"
    )
    return "\n".join(text)


# ---------------------------------------------------------------------------------------------
# TensorFlow side: data, model, inference
# ---------------------------------------------------------------------------------------------


def _config_value(config: dict[str, Any], *names: str, default: Any = None) -> Any:
    """First present key among ``names``; ``a.b`` looks inside nested dicts."""
    for name in names:
        node: Any = config
        for part in name.split("."):
            if not isinstance(node, dict) or part not in node:
                break
            node = node[part]
        else:
            if node is not None and not isinstance(node, dict):
                return node
    return default


def _config_classes(config: dict[str, Any]) -> list[str] | None:
    raw = _config_value(config, "classes", "data.classes")
    if raw is None:
        return None
    return [c["code"] if isinstance(c, dict) else str(c) for c in raw]


def load_prepared_data(
    config: dict[str, Any], run_dir: Path, data_path: str | None, cache_dir: str | None
) -> Any:
    """The run's data exactly as training saw it: ``trainer.data.prepare(config)`` with the run's
    own split file (``data_path`` / ``cache_dir`` override where the data set or cache moved)."""
    from trainer.data import prepare

    split_path = run_dir / "split.csv"
    if not split_path.is_file():
        recorded = config.get("split")
        if not recorded or not Path(recorded).is_file():
            # never re-split here: a new split could put training images in the test set
            raise DatasetError(
                f"The run's split file is missing ({split_path}); evaluation must use the split "
                "the model was trained with."
            )
        split_path = Path(recorded)
    # prepare() reads "data_path" before "data" and "split_path" before "split": set both
    overrides: dict[str, Any] = {"split": str(split_path), "split_path": str(split_path)}
    overrides["progress"] = False
    if data_path:
        overrides["data"] = overrides["data_path"] = data_path
    if cache_dir:
        overrides["cache_dir"] = cache_dir
    return prepare({**config, **overrides})


def load_model(path: Path) -> Any:
    import keras

    from trainer.model import CUSTOM_OBJECTS

    try:
        return keras.models.load_model(path, custom_objects=CUSTOM_OBJECTS, compile=False)
    except Exception as exc:
        raise ModelError(f"Could not load the model {path}: {exc}") from None


def make_predictor(model: Any) -> tuple[Any, bool]:
    """A compiled ``tf.function`` ``(images float32 0..255, metadata) -> logits`` with a fixed
    signature (no retracing for the last, smaller batch). ``model.predict`` is avoided: on CPU its
    data-adapter path is slow and erratic for memory-mapped inputs."""
    import tensorflow as tf

    names = [t.name.split(":")[0] for t in model.inputs]
    if len(names) > 2:
        raise ModelError(f"The model has {len(names)} inputs; expected image[, metadata].")
    meta_pos = next((i for i, n in enumerate(names) if "metadata" in n), None)
    if len(names) == 2 and meta_pos is None:
        raise ModelError(f"Cannot tell the model's metadata input among {names}.")
    img_pos = 0 if meta_pos != 0 else 1
    img_shape = tuple(model.inputs[img_pos].shape[1:])
    if meta_pos is None:
        spec = [tf.TensorSpec((None, *img_shape), tf.float32)]

        @tf.function(input_signature=spec, reduce_retracing=True)
        def predict_image(images):
            return model(images, training=False)

        return (lambda images, _meta: predict_image(images)), False

    meta_shape = tuple(model.inputs[meta_pos].shape[1:])
    specs = [
        tf.TensorSpec((None, *img_shape), tf.float32),
        tf.TensorSpec((None, *meta_shape), tf.float32),
    ]

    @tf.function(input_signature=specs, reduce_retracing=True)
    def predict_dual(images, metadata):
        inputs = [None, None]
        inputs[img_pos], inputs[meta_pos] = images, metadata
        return model(inputs, training=False)

    return predict_dual, True


def predict_logits(
    predictor: Any,
    images: Any,
    metadata: Any,
    indices: np.ndarray,
    batch_size: int,
    desc: str,
    metadata_override: np.ndarray | None = None,
    progress: bool = True,
) -> np.ndarray:
    """Logits for ``images[indices]`` in batches (float32 copies of the uint8 cache, 0..255)."""
    from tqdm import tqdm

    idx = np.asarray(indices, dtype=np.int64)
    out = []
    batches = range(0, idx.size, batch_size)
    for start in tqdm(batches, desc=desc, unit="batch", leave=False, disable=not progress):
        b = idx[start : start + batch_size]
        x = np.asarray(images[b], dtype=np.float32)
        if metadata_override is not None:
            m = np.broadcast_to(
                metadata_override.astype(np.float32), (b.size, metadata_override.size)
            )
            m = np.ascontiguousarray(m)
        elif metadata is not None:
            m = np.asarray(metadata[b], dtype=np.float32)
        else:
            m = None
        out.append(np.asarray(predictor(x, m), dtype=np.float64))
    if not out:
        return np.zeros((0, 0))
    return np.concatenate(out, axis=0)


# ---------------------------------------------------------------------------------------------
# run
# ---------------------------------------------------------------------------------------------


def _archive_previous_test_metrics(out: Path) -> Path | None:
    """Never lose a test scoring: an existing metrics.json with test results is copied to
    ``history/`` before it is overwritten."""
    current = out / "metrics.json"
    if not current.is_file():
        return None
    try:
        old = json.loads(current.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        old = {}
    if not old.get("test"):
        return None
    stamp = str(old.get("created", "unknown")).replace(":", "").replace("+", "_")
    target = out / "history" / f"metrics_{stamp}.json"
    target.parent.mkdir(exist_ok=True)
    atomic_write_bytes(target, current.read_bytes())
    return target


def run(args: argparse.Namespace) -> int:
    run_dir = Path(args.run_dir)
    config_path, model_path = run_dir / "config.json", run_dir / "model.keras"
    if not config_path.is_file():
        raise DatasetError(f"{config_path} not found: is {run_dir} a training run folder?")
    if not model_path.is_file():
        raise ModelError(f"{model_path} not found: train first (python -m trainer train).")
    if args.batch_size < 1:
        raise DatasetError("--batch-size must be at least 1.")
    if not 0 < args.target_sensitivity <= 1:
        raise DatasetError("--target-sensitivity must be in (0, 1].")
    config = json.loads(config_path.read_text(encoding="utf-8"))
    out = Path(args.out) if args.out else run_dir / "evaluation"
    out.mkdir(parents=True, exist_ok=True)
    log_path = run_dir / "evaluation" / LOG_NAME
    command = canonical_command(args)
    command_str = shlex.join(command)
    model_sha = sha256_file(model_path)
    score_test = args.split == "test"

    if score_test:
        earlier = previous_test_scorings(log_path, model_sha)
        if earlier:
            print(
                f"WARNING: this model (sha256 {model_sha[:12]}…) was already scored on the test "
                f"split {len(earlier)} time(s), last at {earlier[-1].split(chr(9))[0]}. Scoring it "
                "again is fine to reproduce a result; choosing a model or setting from repeated "
                "test scores turns the test split into a validation split.",
                file=sys.stderr,
            )

    data = load_prepared_data(config, run_dir, args.data, args.cache_dir)
    codes = [str(c) for c in data.classes]
    cfg_codes = _config_classes(config)
    if cfg_codes and list(cfg_codes) != codes:
        raise DatasetError(
            f"The prepared data's classes {codes} differ from the run's classes {cfg_codes}."
        )
    model = load_model(model_path)
    out_dim = int(model.outputs[0].shape[-1])
    if out_dim != len(codes):
        raise ModelError(
            f"The model outputs {out_dim} classes but the run has {len(codes)} ({', '.join(codes)})."
        )
    predictor, dual = make_predictor(model)
    metadata = data.metadata if dual else None
    unknown = np.asarray(data.encoding.unknown_vector(), dtype=np.float32) if dual else None
    if dual and metadata is not None and metadata.shape[1] != unknown.size:
        raise ModelError(
            f"The data's metadata vectors have {metadata.shape[1]} values; the encoding's "
            f"unknown vector has {unknown.size}."
        )
    labels = np.asarray(data.labels).astype(np.int64)
    val_idx = np.asarray(data.indices("val"), dtype=np.int64)
    if val_idx.size == 0:
        raise DatasetError("The validation split is empty: cannot calibrate or choose a threshold.")
    bs = int(args.batch_size)

    val_logits = predict_logits(predictor, data.images, metadata, val_idx, bs, "val")
    val_nm = None
    if dual and not score_test:
        val_nm = predict_logits(
            predictor, data.images, metadata, val_idx, bs, "val, metadata unknown", unknown
        )
    test_idx = test_logits = test_nm = None
    if score_test:
        test_idx = np.asarray(data.indices("test"), dtype=np.int64)
        if test_idx.size == 0:
            raise DatasetError("The test split is empty; use --split val to evaluate validation.")
        test_logits = predict_logits(predictor, data.images, metadata, test_idx, bs, "test")
        record_test_scoring(log_path, model_sha, command_str)
        if dual:
            test_nm = predict_logits(
                predictor, data.images, metadata, test_idx, bs, "test, metadata unknown", unknown
            )

    body = evaluate_arrays(
        classes=codes,
        val_logits=val_logits,
        val_labels=labels[val_idx],
        test_logits=test_logits,
        test_labels=None if test_idx is None else labels[test_idx],
        val_logits_no_metadata=val_nm,
        test_logits_no_metadata=test_nm,
        target_sensitivity=args.target_sensitivity,
        bootstrap=max(0, int(args.bootstrap)),
        seed=args.seed,
    )
    if not dual:
        note = "image-only model: no metadata ablation"
        body["validation"]["ablation_no_metadata"] = None
        if body["test"] is not None:
            body["test"]["ablation_no_metadata"] = None
        body["ablation_note"] = note

    ids = data.table["image_id"].astype(str).to_numpy()
    t, thr = body["temperature"], body["threshold"]["value"]
    plot_files: dict[str, dict[str, str]] = {}
    scored = [("val", val_idx, val_logits, body["validation"])]
    if score_test:
        scored.append(("test", test_idx, test_logits, body["test"]))
    for split, idx, logits, m in scored:
        write_predictions_csv(
            out / f"predictions_{split}.csv",
            ids[idx],
            labels[idx],
            apply_temperature(logits, t),
            codes,
        )
        primary = split == args.split
        plot_files[split] = write_plots(
            out,
            split,
            classes=codes,
            labels=labels[idx],
            logits=logits,
            temperature=t,
            threshold=thr,
            confusion=m["confusion_matrix"],
            images=_Take(data.images, idx) if primary else None,
            image_ids=ids[idx] if primary else None,
            gallery=int(args.gallery) if primary else 0,
        )

    archived = _archive_previous_test_metrics(out)
    metrics = {
        "command": command_str,
        "argv": list(sys.argv),
        "created": datetime.now(UTC).replace(microsecond=0).isoformat(),
        "model_sha256": model_sha,
        "run_dir": str(run_dir),
        "split": args.split,
        **body,
    }
    atomic_save_json(out / "metrics.json", metrics)
    atomic_write_text(out / "report.md", render_report(metrics, plot_files))
    print(summary_table(metrics))
    if archived:
        print(f"previous metrics.json with test results kept as {archived}")
    print(f"wrote {out / 'metrics.json'}, {out / 'report.md'} and figures in {out}")
    return 0
