"""From logits to the numbers a clinician sees: calibrated probabilities, malignancy risk,
uncertainty.

Numpy only: the app (onnxruntime outputs) and the trainer (Keras outputs, evaluation) call the same
functions, so the risk shown on screen is computed exactly as the risk the threshold was tuned on.

* :func:`apply_temperature` turns logits into probabilities with the temperature fitted on
  validation data (temperature scaling, Guo et al. 2017). It changes confidence, never the ranking
  of classes.
* :func:`malignancy_risk` is the calibrated probability mass on the malignant classes. Summing is
  what makes it a probability of "malignant" rather than a score: a lesion split 40 % MEL / 35 % BCC
  is a 75 % malignancy risk even though no single malignant class wins. The risk is reported as it
  is; erring towards severity (flagging at a threshold chosen for high sensitivity) is the app's
  job, with the threshold carried by the model card, not something folded into the number.
* :func:`entropy` is a model-independent uncertainty in [0, 1], comparable across models with
  different numbers of classes because it is divided by its maximum, log(K).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from desktop_app.core.classes import LesionClass, is_malignant


def apply_temperature(logits: Any, temperature: float = 1.0) -> np.ndarray:
    """Softmax of ``logits / temperature`` over the last axis, for any batch shape ``(..., K)``.

    Stable (the row maximum is subtracted before exponentiating), so large logits or a small
    temperature never overflow. ``temperature > 1`` softens over-confident models; the arg-max class
    is unchanged by construction. Returns float64 probabilities that sum to 1 along the last axis.
    """
    t = float(temperature)
    if not np.isfinite(t) or t <= 0:
        raise ValueError(f"temperature must be a positive finite number, got {temperature!r}")
    z = np.asarray(logits, dtype=np.float64) / t
    if z.ndim == 0 or z.shape[-1] < 1:
        raise ValueError("logits must have a class axis (shape (..., K))")
    z = z - np.max(z, axis=-1, keepdims=True)
    e = np.exp(z)
    return e / np.sum(e, axis=-1, keepdims=True)


def malignant_mask(classes_or_mask: Sequence[LesionClass] | Sequence[str] | Any) -> np.ndarray:
    """A boolean mask over the output classes: True where the class is malignant.

    Accepts a sequence of :class:`LesionClass` (uses ``.malignant``, so a model card's own flags
    win), a sequence of ISIC codes (looked up in the catalog), or a boolean mask (returned as is).
    """
    items = list(classes_or_mask) if not isinstance(classes_or_mask, np.ndarray) else None
    if items is None:
        arr = classes_or_mask
        if arr.dtype != bool:
            raise TypeError("a malignancy mask must be boolean")
        return arr.astype(bool, copy=False)
    if all(isinstance(c, LesionClass) for c in items):
        return np.array([c.malignant for c in items], dtype=bool)
    if all(isinstance(c, str) for c in items):
        return np.array([is_malignant(c) for c in items], dtype=bool)
    if all(isinstance(c, bool | np.bool_) for c in items):
        return np.array(items, dtype=bool)
    raise TypeError("expected LesionClass objects, class codes, or a boolean mask")


def malignancy_risk(
    probabilities: Any, classes_or_mask: Sequence[LesionClass] | Sequence[str] | Any
) -> float | np.ndarray:
    """Sum of the (calibrated) probabilities of the malignant classes.

    ``probabilities`` has shape ``(..., K)``; the result has shape ``(...)`` (a Python float for a
    single vector). Pass probabilities that went through :func:`apply_temperature` with the model's
    fitted temperature: the threshold in the model card was chosen on calibrated risk.
    """
    p = np.asarray(probabilities, dtype=np.float64)
    mask = malignant_mask(classes_or_mask)
    if p.shape[-1] != mask.shape[0]:
        raise ValueError(
            f"probabilities have {p.shape[-1]} classes but the malignancy mask has {mask.shape[0]}"
        )
    risk = np.clip(np.sum(p[..., mask], axis=-1), 0.0, 1.0)
    return float(risk) if risk.ndim == 0 else risk


def entropy(probabilities: Any) -> float | np.ndarray:
    """Shannon entropy of ``(..., K)`` probabilities divided by log(K): 0 = certain, 1 = uniform.

    Normalising by the maximum makes the value comparable between a 7-class and an 8-class model.
    Zero probabilities contribute nothing (0 log 0 = 0). A single-class "distribution" has
    entropy 0.
    """
    p = np.clip(np.asarray(probabilities, dtype=np.float64), 0.0, 1.0)
    k = p.shape[-1]
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, -p * np.log(p), 0.0)
    h = np.sum(terms, axis=-1)
    h = h / np.log(k) if k > 1 else np.zeros_like(h)
    h = np.clip(h, 0.0, 1.0)
    return float(h) if h.ndim == 0 else h
