"""When not to trust the answer: low confidence, an unusual image, benign-vs-malignant disagreement.

A confident wrong answer misleads clinicians most, so these flags are shown as prominently as the
answer itself. Three signals, each documented in docs/uncertainty.md:

* ``low_confidence``: the top calibrated probability is below the card's ``min_top_probability``
  (default 0.5): the model is torn between classes.
* ``unusual_image``: the image's pooled backbone features point away from the training images'.
  Features are L2-normalised first (their direction, not their size: measured on a HAM10000 model,
  raw distances let grey, black, noise and landscape images pass as ordinary, cosine-normalised ones
  flagged them all while flagging ~2% of test images). The distance is Mahalanobis in the top 16
  principal components of the training features plus the part those components do not explain.
  Either value above its 99th percentile on the validation images raises the flag. Fitted at export
  time, stored in the card's ``ood`` section.
* ``severity_disagreement``: the top class is benign, yet the malignant classes together pass the
  operating threshold. We err toward the more severe reading, and say so.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

DEFAULT_MIN_TOP_PROBABILITY = 0.5


@dataclass(frozen=True)
class Flag:
    """One warning for the clinician: a stable code, a short title and one explanatory sentence."""

    code: str
    title: str
    detail: str


@dataclass(frozen=True)
class FeatureModel:
    """The training images' feature distribution, as stored in the card's ``ood`` section."""

    mean: np.ndarray  # (C,)
    components: np.ndarray  # (k, C), orthonormal rows
    variances: np.ndarray  # (k,)
    residual_scale: float  # mean squared residual norm on training features
    mahalanobis_threshold: float
    residual_threshold: float
    percentile: float
    normalize: bool = True

    @classmethod
    def from_card_section(cls, section: Mapping[str, Any] | None) -> FeatureModel | None:
        if not section or section.get("method") != "pca-mahalanobis+residual":
            return None
        return cls(
            mean=np.asarray(section["mean"], np.float64),
            components=np.asarray(section["components"], np.float64),
            variances=np.asarray(section["variances"], np.float64),
            residual_scale=float(section["residual_scale"]),
            mahalanobis_threshold=float(section["mahalanobis_threshold"]),
            residual_threshold=float(section["residual_threshold"]),
            percentile=float(section.get("percentile", 99)),
            normalize=bool(section.get("normalize", False)),
        )

    def scores(self, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(mean squared Mahalanobis distance per component, residual relative to training)."""
        x = np.atleast_2d(np.asarray(features, np.float64))
        if self.normalize:
            x = _unit(x)
        x = x - self.mean
        proj = x @ self.components.T
        maha = np.mean(proj**2 / self.variances, axis=1)
        resid = np.sum(x**2, axis=1) - np.sum(proj**2, axis=1)
        return maha, np.maximum(resid, 0.0) / self.residual_scale

    def is_unusual(self, features: np.ndarray) -> np.ndarray:
        maha, resid = self.scores(features)
        return (maha > self.mahalanobis_threshold) | (resid > self.residual_threshold)


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def fit_feature_model(
    train_features: np.ndarray,
    val_features: np.ndarray,
    n_components: int = 16,
    percentile: float = 99.0,
    normalize: bool = True,
) -> dict[str, Any]:
    """Fit on training features, set thresholds on validation features. Returns the card section."""
    train = np.asarray(train_features, np.float64)
    if normalize:
        train = _unit(train)
    if train.ndim != 2 or len(train) < 2:
        raise ValueError("need at least two training feature vectors")
    mean = train.mean(axis=0)
    centred = train - mean
    _, sing, vt = np.linalg.svd(centred, full_matrices=False)
    k = int(min(n_components, vt.shape[0], max(1, len(train) - 1)))
    variances = np.maximum(sing[:k] ** 2 / (len(train) - 1), 1e-12)
    components = vt[:k]
    proj = centred @ components.T
    resid = np.maximum(np.sum(centred**2, axis=1) - np.sum(proj**2, axis=1), 0.0)
    residual_scale = float(max(resid.mean(), 1e-12))
    model = FeatureModel(
        mean, components, variances, residual_scale, np.inf, np.inf, percentile, normalize
    )
    maha_val, resid_val = model.scores(val_features)

    def r(values: np.ndarray) -> list[float]:  # 6 significant digits keep the card small
        return [float(f"{v:.6g}") for v in np.ravel(values)]

    return {
        "method": "pca-mahalanobis+residual",
        "n_components": k,
        "normalize": normalize,
        "percentile": percentile,
        "mean": r(mean),
        "components": [r(row) for row in components],
        "variances": r(variances),
        "residual_scale": float(f"{residual_scale:.6g}"),
        "mahalanobis_threshold": float(np.percentile(maha_val, percentile)),
        "residual_threshold": float(np.percentile(resid_val, percentile)),
        "fitted_on": {"train_images": len(train), "validation_images": len(maha_val)},
        "min_top_probability": DEFAULT_MIN_TOP_PROBABILITY,
    }


def assess(
    probabilities: np.ndarray,
    codes: Sequence[str],
    names: Sequence[str],
    malignant: Sequence[bool],
    risk: float,
    threshold: float,
    unusual: bool | None,
    min_top_probability: float = DEFAULT_MIN_TOP_PROBABILITY,
) -> tuple[Flag, ...]:
    """The flags for one prediction (``unusual`` None = no feature model in this card)."""
    flags: list[Flag] = []
    top = int(np.argmax(probabilities))
    top_p = float(probabilities[top])
    if top_p < min_top_probability:
        second = int(np.argsort(probabilities)[-2])
        flags.append(
            Flag(
                "low_confidence",
                "Low confidence",
                f"The model is unsure: its most likely class, {names[top]}, has only "
                f"{top_p:.0%}; next is {names[second]} at {float(probabilities[second]):.0%}.",
            )
        )
    if unusual:
        flags.append(
            Flag(
                "unusual_image",
                "Unusual image",
                "This image looks unlike the dermoscopy images the model was trained on (other "
                "device, lighting, zoom, not dermoscopy, or a lesion type it does not know): "
                "treat the result with extra caution.",
            )
        )
    if not malignant[top] and risk >= threshold:
        flags.append(
            Flag(
                "severity_disagreement",
                "Malignant classes above threshold",
                f"The most likely single class is benign ({names[top]}), but the malignant "
                f"classes together reach {risk:.0%}, above the threshold of {threshold:.0%}: "
                "the more severe reading should be considered.",
            )
        )
    return tuple(flags)
