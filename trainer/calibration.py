"""Temperature scaling and calibration measures.

A network trained with cross-entropy is usually over-confident: "95 %" is right far less than 95 %
of the time. Temperature scaling (Guo et al., 2017) divides the logits by one scalar ``T`` fitted on
validation data by minimising the negative log-likelihood. It cannot change which class wins, so
accuracy, BMA and AUC are untouched; it only makes the probabilities (and the malignancy risk
summed from them) mean what they say. The fitted ``T`` travels in the model card and the app
applies it with :func:`desktop_app.core.risk.apply_temperature`.

Expected calibration error here is the usual **top-label** ECE: cases are binned by the confidence
of the predicted class into ``n_bins`` equal-width bins ``(0, 1/n], (1/n, 2/n], ...`` (a confidence
of exactly 0 falls in the first bin), and ECE = sum over bins of (bin share) x |accuracy - mean
confidence|.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from desktop_app.core.risk import apply_temperature

T_BOUNDS = (0.05, 20.0)


def _logits_labels(logits: Any, y_true: Any) -> tuple[np.ndarray, np.ndarray]:
    z = np.asarray(logits, dtype=np.float64)
    y = np.asarray(y_true).astype(np.int64).ravel()
    if z.ndim != 2 or z.shape[0] != y.shape[0]:
        raise ValueError(f"logits must be (N, K) with N = {y.shape[0]}, got {z.shape}")
    if y.size and (y.min() < 0 or y.max() >= z.shape[1]):
        raise ValueError(f"labels must be in 0..{z.shape[1] - 1}")
    return z, y


def negative_log_likelihood(logits: Any, y_true: Any, temperature: float = 1.0) -> float:
    """Mean NLL of the true class under ``softmax(logits / T)`` (computed with log-sum-exp)."""
    z, y = _logits_labels(logits, y_true)
    if y.size == 0:
        return float("nan")
    z = z / float(temperature)
    m = z.max(axis=1, keepdims=True)
    lse = m[:, 0] + np.log(np.sum(np.exp(z - m), axis=1))
    return float(np.mean(lse - z[np.arange(y.size), y]))


def fit_temperature(logits: Any, y_true: Any, bounds: tuple[float, float] = T_BOUNDS) -> float:
    """The temperature ``T`` minimising validation NLL of ``softmax(logits / T)``.

    Searches ``log T`` (the NLL is smooth and well scaled in it) with a bounded scalar minimiser
    over ``bounds`` (default 0.05..20; a value at a bound means the logits carry almost no
    information or are wildly over-confident, and should be looked at). Returns 1.0 when there is
    nothing to fit on (no cases).
    """
    from scipy.optimize import minimize_scalar

    z, y = _logits_labels(logits, y_true)
    if y.size == 0:
        return 1.0
    lo, hi = (math.log(float(b)) for b in bounds)
    res = minimize_scalar(
        lambda log_t: negative_log_likelihood(z, y, math.exp(log_t)),
        bounds=(lo, hi),
        method="bounded",
        options={"xatol": 1e-5},
    )
    t = float(math.exp(res.x))
    # The bounded minimiser never evaluates T = 1 exactly; never return something worse than it.
    if negative_log_likelihood(z, y, t) > negative_log_likelihood(z, y, 1.0) and lo <= 0 <= hi:
        return 1.0
    return t


@dataclass(frozen=True)
class ReliabilityCurve:
    """Per-bin data of a reliability diagram. Empty bins have count 0 and NaN confidence/accuracy."""

    bin_lower: np.ndarray
    bin_upper: np.ndarray
    confidence: np.ndarray
    accuracy: np.ndarray
    count: np.ndarray

    @property
    def ece(self) -> float:
        n = self.count.sum()
        if n == 0:
            return float("nan")
        used = self.count > 0
        gaps = np.abs(self.accuracy[used] - self.confidence[used])
        return float(np.sum(self.count[used] / n * gaps))

    def to_dict(self) -> dict[str, list]:
        """JSON-ready; empty bins' confidence and accuracy are null."""

        def clean(a: np.ndarray) -> list:
            return [None if not np.isfinite(v) else float(v) for v in a]

        return {
            "bin_lower": [float(v) for v in self.bin_lower],
            "bin_upper": [float(v) for v in self.bin_upper],
            "confidence": clean(self.confidence),
            "accuracy": clean(self.accuracy),
            "count": [int(v) for v in self.count],
        }


def reliability_curve(probs: Any, y_true: Any, n_bins: int = 15) -> ReliabilityCurve:
    """Top-label reliability data: mean confidence, accuracy and count per equal-width bin."""
    p = np.asarray(probs, dtype=np.float64)
    y = np.asarray(y_true).astype(np.int64).ravel()
    if p.ndim != 2 or p.shape[0] != y.shape[0]:
        raise ValueError(f"probs must be (N, K) with N = {y.shape[0]}, got {p.shape}")
    if n_bins < 1:
        raise ValueError("n_bins must be at least 1")
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    conf = p.max(axis=1) if p.size else np.zeros(0)
    correct = (p.argmax(axis=1) == y).astype(np.float64) if p.size else np.zeros(0)
    # bin b holds (edges[b], edges[b+1]]; confidence 0 goes to bin 0.
    b = np.clip(np.searchsorted(edges, conf, side="left") - 1, 0, n_bins - 1)
    count = np.bincount(b, minlength=n_bins)
    conf_sum = np.bincount(b, weights=conf, minlength=n_bins)
    acc_sum = np.bincount(b, weights=correct, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.where(count > 0, conf_sum / np.maximum(count, 1), np.nan)
        mean_acc = np.where(count > 0, acc_sum / np.maximum(count, 1), np.nan)
    return ReliabilityCurve(edges[:-1], edges[1:], mean_conf, mean_acc, count.astype(np.int64))


def expected_calibration_error(probs: Any, y_true: Any, n_bins: int = 15) -> float:
    """Top-label ECE with ``n_bins`` equal-width confidence bins (0 = perfectly calibrated)."""
    return reliability_curve(probs, y_true, n_bins).ece


def calibration_summary(
    logits: Any, y_true: Any, temperature: float, n_bins: int = 15
) -> dict[str, Any]:
    """ECE and NLL before (T = 1) and after temperature scaling, JSON-ready."""
    z, y = _logits_labels(logits, y_true)
    before, after = apply_temperature(z, 1.0), apply_temperature(z, temperature)

    def f(x: float) -> float | None:
        return x if math.isfinite(x) else None

    return {
        "temperature": float(temperature),
        "n_bins": int(n_bins),
        "ece_before": f(expected_calibration_error(before, y, n_bins)),
        "ece_after": f(expected_calibration_error(after, y, n_bins)),
        "nll_before": f(negative_log_likelihood(z, y, 1.0)),
        "nll_after": f(negative_log_likelihood(z, y, temperature)),
    }
