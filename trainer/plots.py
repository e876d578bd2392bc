"""Evaluation figures: confusion matrices, ROC curves, reliability diagrams, a gallery of errors.

matplotlib is imported inside each function with the non-interactive Agg backend (no display is
needed, ``python -m trainer --help`` stays fast). Every PNG is written atomically and every figure
is closed, so a long search does not leak memory. Each function returns the path it wrote.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from desktop_app.core.atomic import atomic_write_with

DPI = 130


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: str | os.PathLike, dpi: int = DPI) -> Path:
    plt = _pyplot()
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        atomic_write_with(target, lambda tmp: fig.savefig(tmp, dpi=dpi, bbox_inches="tight"))
    finally:
        plt.close(fig)
    return target


def plot_confusion_matrix(
    cm: Any, classes: Sequence[str], path: str | os.PathLike, title: str = "Confusion matrix"
) -> Path:
    """Two panels: counts and row-normalised (recall on the diagonal). Rows = true class."""
    plt = _pyplot()
    counts = np.asarray(cm, dtype=np.float64)
    k = counts.shape[0]
    row = counts.sum(axis=1, keepdims=True)
    norm = np.divide(counts, row, out=np.zeros_like(counts), where=row > 0)
    size = max(4.5, 0.62 * k + 2.5)
    fig, axes = plt.subplots(1, 2, figsize=(2 * size + 1, size))
    font = 10 if k <= 8 else 8
    panels = (
        (counts, "counts", "{:.0f}", counts.max() or 1.0),
        (norm, "row-normalised", "{:.2f}", 1),
    )
    for ax, (mat, name, fmt, vmax) in zip(axes, panels, strict=True):
        im = ax.imshow(mat, cmap="Blues", vmin=0, vmax=vmax)
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
        ax.set_xticks(range(k), labels=list(classes), rotation=45, ha="right")
        ax.set_yticks(range(k), labels=list(classes))
        ax.set_xlabel("predicted class")
        ax.set_ylabel("true class")
        ax.set_title(f"{title} ({name})")
        for i in range(k):
            for j in range(k):
                v = mat[i, j]
                colour = "white" if v > 0.55 * vmax else "black"
                ax.text(j, i, fmt.format(v), ha="center", va="center", color=colour, fontsize=font)
    fig.tight_layout()
    return _save(fig, path)


def plot_roc_curves(
    y_true: Any,
    probs: Any,
    classes: Sequence[str],
    path: str | os.PathLike,
    malignant: Any = None,
    threshold: float | None = None,
    title: str = "ROC",
) -> Path:
    """Left: one-vs-rest ROC per class (AUC in the legend; classes without positives skipped).
    Right: malignant-vs-benign ROC of the malignancy risk with the operating point marked."""
    from sklearn.metrics import roc_auc_score, roc_curve

    from desktop_app.core.risk import malignancy_risk, malignant_mask

    plt = _pyplot()
    y = np.asarray(y_true).astype(np.int64).ravel()
    p = np.asarray(probs, dtype=np.float64)
    mask = malignant_mask(list(classes) if malignant is None else malignant)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 5.5))
    cmap = plt.get_cmap("tab10")
    for i, code in enumerate(classes):
        yb = y == i
        if yb.all() or not yb.any():
            continue
        fpr, tpr, _ = roc_curve(yb, p[:, i])
        auc = roc_auc_score(yb, p[:, i])
        ax1.plot(
            fpr, tpr, color=cmap(i % 10), lw=1.6, label=f"{code} (AUC {auc:.3f}, n={yb.sum()})"
        )
    for ax in (ax1, ax2):
        ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=0.8)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.02)
        ax.set_xlabel("false positive rate (1 - specificity)")
        ax.set_ylabel("true positive rate (sensitivity)")
        ax.grid(alpha=0.3)
    ax1.set_title(f"{title}: one-vs-rest per class")
    ax1.legend(loc="lower right", fontsize=8)

    yb = mask[y]
    risk = np.asarray(malignancy_risk(p, mask)).reshape(-1)
    ax2.set_title(f"{title}: malignant vs benign (risk)")
    if yb.any() and not yb.all():
        fpr, tpr, _ = roc_curve(yb, risk)
        auc = roc_auc_score(yb, risk)
        ax2.plot(fpr, tpr, color="darkred", lw=2, label=f"malignancy risk (AUC {auc:.3f})")
        if threshold is not None:
            flag = risk >= threshold
            sens = flag[yb].mean()
            spec = (~flag[~yb]).mean()
            ax2.plot(
                [1 - spec],
                [sens],
                "o",
                ms=9,
                mfc="gold",
                mec="black",
                label=f"threshold {threshold:.3f}: sens {sens:.3f}, spec {spec:.3f}",
            )
        ax2.legend(loc="lower right", fontsize=8)
    else:
        ax2.text(0.5, 0.5, "needs malignant and benign cases", ha="center", va="center")
    fig.tight_layout()
    return _save(fig, path)


def plot_reliability(
    y_true: Any,
    probs_before: Any,
    probs_after: Any,
    path: str | os.PathLike,
    n_bins: int = 15,
    temperature: float | None = None,
    title: str = "Reliability",
) -> Path:
    """Reliability diagrams (top-label accuracy vs confidence per bin) before and after
    temperature scaling, with ECE in each title and the bin counts as a histogram underneath."""
    from trainer.calibration import reliability_curve

    plt = _pyplot()
    fig, axes = plt.subplots(
        2, 2, figsize=(11, 6.5), sharex=True, gridspec_kw={"height_ratios": [3, 1]}
    )
    after_name = "after" if temperature is None else f"after (T = {temperature:.3f})"
    for col, (probs, name) in enumerate(((probs_before, "before"), (probs_after, after_name))):
        rc = reliability_curve(probs, y_true, n_bins)
        ax, axh = axes[0, col], axes[1, col]
        width = rc.bin_upper - rc.bin_lower
        centers = (rc.bin_lower + rc.bin_upper) / 2
        used = rc.count > 0
        ax.bar(
            centers[used],
            rc.accuracy[used],
            width=width[used] * 0.95,
            color="tab:blue",
            edgecolor="black",
            alpha=0.8,
            label="accuracy",
        )
        gap_lo = np.minimum(rc.accuracy, rc.confidence)[used]
        gap = np.abs(rc.accuracy - rc.confidence)[used]
        ax.bar(
            centers[used],
            gap,
            bottom=gap_lo,
            width=width[used] * 0.95,
            facecolor="none",
            edgecolor="tab:red",
            hatch="//",
            label="gap to mean confidence",
        )
        ax.plot([0, 1], [0, 1], ls="--", color="grey", label="perfect calibration")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_ylabel("accuracy")
        ax.set_title(f"{title} {name}: ECE {rc.ece:.3f}")
        ax.legend(loc="upper left", fontsize=8)
        axh.bar(centers, rc.count, width=width * 0.95, color="grey")
        axh.set_xlabel("confidence (top-label probability)")
        axh.set_ylabel("cases")
    fig.tight_layout()
    return _save(fig, path)


def most_confident_errors(y_true: Any, probs: Any, limit: int) -> np.ndarray:
    """Indices of misclassified cases, most confident (highest predicted probability) first."""
    y = np.asarray(y_true).astype(np.int64).ravel()
    p = np.asarray(probs, dtype=np.float64)
    pred = p.argmax(axis=1)
    wrong = np.flatnonzero(pred != y)
    conf = p[wrong, pred[wrong]]
    return wrong[np.argsort(-conf, kind="stable")][: max(0, int(limit))]


def plot_misclassification_gallery(
    images: Any,
    y_true: Any,
    probs: Any,
    classes: Sequence[str],
    path: str | os.PathLike,
    limit: int = 24,
    image_ids: Sequence[str] | None = None,
    columns: int = 6,
) -> Path:
    """A grid of the most confidently wrong cases: each image (uint8 RGB, indexable by case, e.g. a
    memory-mapped cache) captioned with its true class, predicted class and probability."""
    plt = _pyplot()
    p = np.asarray(probs, dtype=np.float64)
    y = np.asarray(y_true).astype(np.int64).ravel()
    idx = most_confident_errors(y, p, limit)
    if idx.size == 0:
        fig, ax = plt.subplots(figsize=(6, 2))
        ax.axis("off")
        ax.text(0.5, 0.5, "no misclassified case", ha="center", va="center", fontsize=14)
        return _save(fig, path)
    cols = max(1, min(columns, idx.size))
    rows = int(np.ceil(idx.size / cols))
    fig, axes = plt.subplots(
        rows, cols, figsize=(2.4 * cols, 2.9 * rows + 0.4), squeeze=False, layout="constrained"
    )
    for ax in axes.ravel():
        ax.axis("off")
    for ax, i in zip(axes.ravel(), idx, strict=False):
        img = np.asarray(images[int(i)])
        if img.dtype != np.uint8:
            img = np.clip(img, 0, 255).astype(np.uint8)
        pred = int(p[i].argmax())
        ax.imshow(img)
        caption = (
            f"true {classes[y[i]]} / pred {classes[pred]}\n"
            f"p={p[i, pred]:.2f} (true p={p[i, y[i]]:.2f})"
        )
        if image_ids is not None:
            caption = f"{image_ids[int(i)]}\n{caption}"
        ax.set_title(caption, fontsize=7.5)
    fig.suptitle("Most confidently wrong cases", fontsize=12)
    return _save(fig, path)
