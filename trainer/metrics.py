"""ISIC-style classification metrics, the malignant-vs-benign operating point, bootstrap intervals.

Everything returned is JSON-ready (Python floats/ints/lists, ``None`` for undefined values) so that
``metrics.json`` and the model card can store it directly.

Conventions
-----------
* **Balanced multiclass accuracy (BMA)**, the ISIC 2018/2019 challenge metric, is the mean of the
  per-class recalls over the classes present in ``y_true`` (identical to scikit-learn's
  ``balanced_accuracy_score``). It does not reward a model for predicting the majority class (NV).
* **AUC** is one-vs-rest per class. A class with no positive (or no negative) example in ``y_true``
  has an undefined AUC: it is reported as ``None`` and **excluded** from ``auc_macro``; the classes
  that were used are listed under ``auc_macro_classes``.
* **Malignancy**: ``risk = malignancy_risk(probs, mask)`` (the probability mass on malignant
  classes); a lesion is flagged when ``risk >= threshold``. Sensitivity/specificity/PPV/NPV are for
  that rule; :func:`threshold_for_sensitivity` picks the threshold with the same ``>=`` convention.
* **Bootstrap**: percentile intervals from resampling the evaluated set, by default stratified by
  true class (every class keeps its count in every resample, so per-class recall and AUC stay
  defined; the interval is conditional on the observed class mix). Implemented with resample weights
  and a sort-once weighted AUC, so 1000 resamples of 1500 cases take about a second.

numpy at module level; scikit-learn is imported inside functions (``python -m trainer --help``
stays fast).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from desktop_app.core.risk import malignancy_risk, malignant_mask

CORE_METRICS = ("balanced_accuracy", "auc_macro")


def _f(x: Any) -> float | None:
    """A JSON-safe float: None for NaN/inf/None."""
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def _check(y_true: Any, probs: Any) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y_true).astype(np.int64).ravel()
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2:
        raise ValueError(f"probs must have shape (N, K), got {p.shape}")
    if p.shape[0] != y.shape[0]:
        raise ValueError(f"{y.shape[0]} labels but {p.shape[0]} probability rows")
    if y.size and (y.min() < 0 or y.max() >= p.shape[1]):
        raise ValueError(f"labels must be in 0..{p.shape[1] - 1}")
    return y, p


def top_k_accuracy(y_true: Any, probs: Any, k: int) -> float:
    """Fraction of cases whose true class is among the ``k`` most probable (ties: lower index
    wins)."""
    y, p = _check(y_true, probs)
    if y.size == 0:
        return float("nan")
    k = min(int(k), p.shape[1])
    order = np.argsort(-p, axis=1, kind="stable")[:, :k]
    return float(np.mean(np.any(order == y[:, None], axis=1)))


def balanced_accuracy(y_true: Any, y_pred: Any) -> float:
    """Mean recall over the classes present in ``y_true`` (ISIC's balanced multiclass accuracy)."""
    y = np.asarray(y_true).astype(np.int64).ravel()
    pred = np.asarray(y_pred).astype(np.int64).ravel()
    present = np.unique(y)
    if present.size == 0:
        return float("nan")
    return float(np.mean([np.mean(pred[y == c] == c) for c in present]))


def _binary_auc(y_bin: np.ndarray, score: np.ndarray) -> float | None:
    if y_bin.all() or not y_bin.any():
        return None
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(y_bin, score))


def binary_operating_point(y_pos: Any, score: Any, threshold: float) -> dict[str, Any]:
    """Sensitivity, specificity, PPV, NPV of the rule ``score >= threshold`` (None when
    undefined), with the counts behind them."""
    yb = np.asarray(y_pos, dtype=bool).ravel()
    s = np.asarray(score, dtype=np.float64).ravel()
    flag = s >= threshold
    tp = int(np.sum(flag & yb))
    fn = int(np.sum(~flag & yb))
    fp = int(np.sum(flag & ~yb))
    tn = int(np.sum(~flag & ~yb))

    def ratio(a: int, b: int) -> float | None:
        return a / b if b else None

    return {
        "threshold": float(threshold),
        "sensitivity": ratio(tp, tp + fn),
        "specificity": ratio(tn, tn + fp),
        "ppv": ratio(tp, tp + fp),
        "npv": ratio(tn, tn + fn),
        "auc": _binary_auc(yb, s),
        "n_malignant": tp + fn,
        "n_benign": tn + fp,
        "flagged": tp + fp,
        "tp": tp,
        "fp": fp,
        "tn": tn,
        "fn": fn,
    }


def threshold_for_sensitivity(y_malignant: Any, risk: Any, target: float = 0.95) -> float:
    """The largest threshold ``t`` such that the sensitivity of ``risk >= t`` is ``>= target`` here.

    Convention: a case is flagged when ``risk >= t`` (the app uses the same ``>=``). With the
    malignant cases' risks sorted in decreasing order r(1) >= r(2) >= ..., flagging at least
    ``k = ceil(target * P)`` of the ``P`` malignant cases requires ``t <= r(k)``, so
    ``t = r(k)``: any larger threshold would miss one more malignant case. Returning the largest
    such threshold keeps specificity as high as the sensitivity target allows. The value is only as
    good as the data it was chosen on: choose it on validation data and report test sensitivity
    separately. Raises ValueError when there is no malignant case.
    """
    yb = np.asarray(y_malignant, dtype=bool).ravel()
    r = np.asarray(risk, dtype=np.float64).ravel()
    if yb.shape != r.shape:
        raise ValueError("y_malignant and risk must have the same length")
    if not 0.0 < float(target) <= 1.0:
        raise ValueError(f"target sensitivity must be in (0, 1], got {target}")
    pos = np.sort(r[yb])[::-1]
    if pos.size == 0:
        raise ValueError("cannot choose a sensitivity threshold without any malignant case")
    k = max(1, math.ceil(float(target) * pos.size - 1e-9))
    return float(pos[k - 1])


def compute_metrics(
    y_true: Any,
    probs: Any,
    classes: Sequence[str],
    malignant: Any = None,
    threshold: float = 0.5,
    *,
    bootstrap: int = 0,
    seed: int = 0,
    alpha: float = 0.05,
) -> dict[str, Any]:
    """All evaluation metrics for probabilities ``probs`` (N, K) against integer labels ``y_true``.

    ``classes`` are the K class codes in output order; ``malignant`` is a boolean mask over them (or
    LesionClass objects / codes; default: the catalog's flags for ``classes``). ``threshold`` is the
    malignancy operating point (``risk >= threshold`` is flagged). ``bootstrap > 0`` adds percentile
    confidence intervals (``ci``) for BMA, macro AUC and the malignant AUC.
    """
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    y, p = _check(y_true, probs)
    codes = [str(c) for c in classes]
    k = p.shape[1]
    if len(codes) != k:
        raise ValueError(f"{len(codes)} class codes for {k} probability columns")
    mask = malignant_mask(codes if malignant is None else malignant)
    if mask.shape[0] != k:
        raise ValueError("the malignancy mask must have one entry per class")
    n = int(y.size)
    pred = np.argmax(p, axis=1)
    labels = np.arange(k)

    prec, rec, f1, support = precision_recall_fscore_support(
        y, pred, labels=labels, zero_division=0
    )
    per_class: dict[str, dict[str, Any]] = {}
    aucs: dict[str, float] = {}
    for i, code in enumerate(codes):
        auc = _binary_auc(y == i, p[:, i])
        if auc is not None:
            aucs[code] = auc
        present = bool(support[i] > 0)
        per_class[code] = {
            "precision": float(prec[i]),
            # recall of an absent class is undefined, not 0
            "recall": float(rec[i]) if present else None,
            "f1": float(f1[i]),
            "support": int(support[i]),
            "predicted": int(np.sum(pred == i)),
            "auc": auc,
            "malignant": bool(mask[i]),
        }
    cm = confusion_matrix(y, pred, labels=labels)
    row = cm.sum(axis=1, keepdims=True)
    cm_norm = np.divide(cm, row, out=np.zeros(cm.shape, dtype=np.float64), where=row > 0)

    risk = np.asarray(malignancy_risk(p, mask), dtype=np.float64).reshape(-1)
    out: dict[str, Any] = {
        "n": n,
        "classes": codes,
        "balanced_accuracy": _f(balanced_accuracy(y, pred)),
        "accuracy": _f(np.mean(pred == y)) if n else None,
        "top2": _f(top_k_accuracy(y, p, 2)) if n else None,
        "top3": _f(top_k_accuracy(y, p, 3)) if n else None,
        "auc_macro": _f(np.mean(list(aucs.values()))) if aucs else None,
        "auc_macro_classes": list(aucs),
        "auc_note": "one-vs-rest; classes without positives (or negatives) have auc null and are "
        "excluded from auc_macro",
        "per_class": per_class,
        "confusion_matrix": cm.astype(int).tolist(),
        "confusion_matrix_normalized": np.round(cm_norm, 6).tolist(),
        "malignant": {
            **binary_operating_point(mask[y], risk, threshold),
            "classes": [c for c, m in zip(codes, mask, strict=True) if m],
            "rule": "risk >= threshold, risk = sum of probabilities of malignant classes",
        },
    }
    if bootstrap and bootstrap > 0 and n > 0:
        out["ci"] = bootstrap_ci(y, p, n=int(bootstrap), seed=seed, alpha=alpha, malignant=mask)
    return out


# --------------------------------------------------------------------------------------------
# Bootstrap
# --------------------------------------------------------------------------------------------


def bootstrap_weights(
    y_true: Any, n: int, seed: int | np.random.Generator = 0, stratified: bool = True
) -> np.ndarray:
    """``(n, N)`` resample counts: row ``b`` says how often each case is drawn in resample ``b``.

    Stratified: each class is resampled within itself (its count is kept); plain: N draws from all.
    """
    y = np.asarray(y_true).astype(np.int64).ravel()
    size = y.size
    rng = np.random.default_rng(seed)
    if size == 0:
        return np.zeros((n, 0), dtype=np.float64)
    rows = (np.arange(n, dtype=np.int64) * size)[:, None]
    if stratified:
        draws = np.empty((n, size), dtype=np.int64)
        col = 0
        for c in np.unique(y):
            members = np.flatnonzero(y == c)
            m = members.size
            draws[:, col : col + m] = members[rng.integers(0, m, size=(n, m))]
            col += m
    else:
        draws = rng.integers(0, size, size=(n, size))
    counts = np.bincount((draws + rows).ravel(), minlength=n * size)
    return counts.reshape(n, size).astype(np.float64)


def weighted_balanced_accuracy(y_true: Any, pred: Any, weights: np.ndarray, k: int) -> np.ndarray:
    """BMA of each weighted resample (rows of ``weights``); classes with zero weight are skipped."""
    y = np.asarray(y_true).astype(np.int64).ravel()
    correct = (np.asarray(pred).ravel() == y).astype(np.float64)
    onehot = np.zeros((y.size, k))
    onehot[np.arange(y.size), y] = 1.0
    tot = weights @ onehot  # (n, K)
    hit = weights @ (onehot * correct[:, None])
    recall = np.where(tot > 0, hit / np.where(tot > 0, tot, 1.0), np.nan)
    return _nanmean_rows(recall)


def _nanmean_rows(a: np.ndarray) -> np.ndarray:
    """Row means ignoring NaN; NaN (without a warning) for an all-NaN row."""
    valid = np.isfinite(a)
    count = valid.sum(axis=1)
    total = np.where(valid, a, 0.0).sum(axis=1)
    return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def weighted_auc(y_pos: Any, score: Any, weights: np.ndarray) -> np.ndarray:
    """Binary ROC AUC of each weighted resample; ties count one half (as the Mann-Whitney U).

    Sorts the scores once; per resample it only sums weights (O(n N)). NaN where a resample has no
    positive or no negative weight.
    """
    yb = np.asarray(y_pos, dtype=bool).ravel()
    s = np.asarray(score, dtype=np.float64).ravel()
    order = np.argsort(s, kind="stable")
    s_sorted = s[order]
    starts = np.flatnonzero(np.r_[True, s_sorted[1:] != s_sorted[:-1]])
    w = weights[:, order]
    pos_sorted = yb[order]
    wp = np.add.reduceat(w * pos_sorted, starts, axis=1)  # positive weight per distinct score
    wn = np.add.reduceat(w * ~pos_sorted, starts, axis=1)
    neg_below = np.cumsum(wn, axis=1) - wn
    num = np.sum(wp * (neg_below + 0.5 * wn), axis=1)
    den = wp.sum(axis=1) * wn.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


def weighted_core_metrics(
    y_true: Any, probs: Any, weights: np.ndarray, malignant: Any = None
) -> dict[str, np.ndarray]:
    """BMA, macro one-vs-rest AUC (classes without positives in ``y_true`` excluded, as in
    :func:`compute_metrics`) and, given a mask, the malignant-vs-benign AUC, per resample."""
    y, p = _check(y_true, probs)
    k = p.shape[1]
    out = {"balanced_accuracy": weighted_balanced_accuracy(y, np.argmax(p, axis=1), weights, k)}
    present = [c for c in range(k) if 0 < np.sum(y == c) < y.size]
    if present:
        aucs = np.stack([weighted_auc(y == c, p[:, c], weights) for c in present], axis=1)
        out["auc_macro"] = _nanmean_rows(aucs)
    else:
        out["auc_macro"] = np.full(weights.shape[0], np.nan)
    if malignant is not None:
        mask = malignant_mask(malignant)
        out["malignant_auc"] = weighted_auc(
            mask[y], np.asarray(malignancy_risk(p, mask)).reshape(-1), weights
        )
    return out


def _resampled_core_metrics(
    y: np.ndarray,
    probs_list: list[np.ndarray],
    n: int,
    seed: int,
    stratified: bool,
    malignant: Any,
    chunk: int,
) -> list[dict[str, np.ndarray]]:
    """Core metrics of each probability matrix on the same ``n`` resamples, in chunks of resamples
    so memory stays ``O(chunk * N)``."""
    parts: list[dict[str, list[np.ndarray]]] = [{} for _ in probs_list]
    rng = np.random.default_rng(seed)
    for start in range(0, n, chunk):
        w = bootstrap_weights(y, min(chunk, n - start), seed=rng, stratified=stratified)
        for acc, p in zip(parts, probs_list, strict=True):
            for name, vals in weighted_core_metrics(y, p, w, malignant).items():
                acc.setdefault(name, []).append(vals)
    return [{k: np.concatenate(v) for k, v in acc.items()} for acc in parts]


def _interval(values: np.ndarray, point: float | None, alpha: float) -> dict[str, Any]:
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return {"point": _f(point), "low": None, "high": None, "std": None, "n_valid": 0}
    lo, hi = np.quantile(v, [alpha / 2, 1 - alpha / 2])
    return {
        "point": _f(point),
        "low": float(lo),
        "high": float(hi),
        "std": float(np.std(v, ddof=1)) if v.size > 1 else 0.0,
        "n_valid": int(v.size),
    }


def bootstrap_ci(
    y_true: Any,
    probs: Any,
    metric_fn: Callable[[np.ndarray, np.ndarray], Any] | None = None,
    n: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
    *,
    stratified: bool = True,
    malignant: Any = None,
    chunk: int = 250,
) -> dict[str, Any]:
    """Percentile bootstrap intervals (``1 - alpha``, default 95 %).

    ``metric_fn=None`` (the default, fast path): BMA and macro AUC (plus the malignant AUC when a
    ``malignant`` mask is given), computed for all resamples at once from resample weights.
    A custom ``metric_fn(y_true, probs) -> float | dict[str, float]`` is called once per resample on
    the resampled arrays (general but slower). Returns ``{metric: {point, low, high, std, n_valid},
    "n_resamples", "alpha", "method"}``; ``point`` is the metric on the full data.
    """
    y, p = _check(y_true, probs)
    n = int(n)
    if n <= 0:
        raise ValueError("the number of bootstrap resamples must be positive")
    method = f"percentile bootstrap, {'stratified by true class' if stratified else 'plain'}"
    result: dict[str, Any] = {"n_resamples": n, "alpha": float(alpha), "seed": int(seed)}
    if metric_fn is None:
        full = weighted_core_metrics(y, p, np.ones((1, y.size)), malignant)
        (samples,) = _resampled_core_metrics(y, [p], n, seed, stratified, malignant, chunk)
        for name, vals in samples.items():
            result[name] = _interval(vals, full[name][0], alpha)
        result["method"] = method
        return result

    def as_dict(v: Any) -> dict[str, float]:
        return {k: float(x) for k, x in v.items()} if isinstance(v, dict) else {"value": float(v)}

    full_d = as_dict(metric_fn(y, p))
    collected: dict[str, list[float]] = {name: [] for name in full_d}
    rng = np.random.default_rng(seed)
    groups = [np.flatnonzero(y == c) for c in np.unique(y)]
    for _ in range(n):
        if stratified:
            idx = np.concatenate([g[rng.integers(0, g.size, g.size)] for g in groups])
        else:
            idx = rng.integers(0, y.size, y.size)
        for name, v in as_dict(metric_fn(y[idx], p[idx])).items():
            collected.setdefault(name, []).append(v)
    for name, vals in collected.items():
        result[name] = _interval(np.array(vals, dtype=np.float64), full_d.get(name), alpha)
    result["method"] = method
    return result


def paired_bootstrap_delta(
    y_true: Any,
    probs_a: Any,
    probs_b: Any,
    n: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
    *,
    stratified: bool = True,
    malignant: Any = None,
    chunk: int = 250,
) -> dict[str, Any]:
    """Interval for ``metric(a) - metric(b)`` on the same resamples (paired), for BMA, macro AUC and
    (with a mask) malignant AUC; e.g. a = with metadata, b = metadata unknown."""
    y, pa = _check(y_true, probs_a)
    _, pb = _check(y_true, probs_b)
    ones = np.ones((1, y.size))
    fa = weighted_core_metrics(y, pa, ones, malignant)
    fb = weighted_core_metrics(y, pb, ones, malignant)
    sa, sb = _resampled_core_metrics(y, [pa, pb], int(n), seed, stratified, malignant, chunk)
    out: dict[str, Any] = {
        "n_resamples": int(n),
        "alpha": float(alpha),
        "method": f"paired percentile bootstrap, {'stratified' if stratified else 'plain'}",
    }
    for name in sa:
        out[name] = _interval(sa[name] - sb[name], fa[name][0] - fb[name][0], alpha)
    return out
