"""Losses, class weights and the training accuracy metric.

Class imbalance is handled in ONE place: per-sample weights (``class_weight[label]``) that
:mod:`trainer.train` puts in the training ``tf.data`` stream as the third element, so Keras multiplies
every sample's loss by them. That works the same for cross-entropy, focal loss and distillation (where
Keras' ``class_weight=`` argument cannot be used: the targets are not one-hot). A public project
computed class weights and never passed them; ``tests/test_train.py`` checks that ours reach ``fit``.

Focal loss is Keras' own ``CategoricalFocalCrossentropy`` on logits with ``alpha=1``: its per-class
``alpha`` would be the same thing as the class weights, so it is left neutral rather than applied
twice (Keras' default ``alpha=0.25`` would only scale the loss down).

Keras is imported inside functions: ``python -m trainer --help`` must not pay for it.
"""

from __future__ import annotations

from typing import Any

import numpy as np

CLASS_WEIGHT_MODES = ("balanced", "sqrt", "none")
LOSSES = ("ce", "focal")


def class_weights(labels: Any, num_classes: int, mode: str = "balanced") -> dict[int, float]:
    """Weight per class index from the training labels.

    - ``balanced``: scikit-learn's ``n / (K * count)``; every class then carries the same total weight.
    - ``sqrt``: the square root of that, rescaled so that the mean weight over the training samples is
      1 (as it is for ``balanced``): softer, rare classes are up-weighted less.
    - ``none``: all 1.
    A class with no training sample gets 0 (no sample would carry it anyway).
    """
    if mode not in CLASS_WEIGHT_MODES:
        raise ValueError(
            f"unknown class weight mode {mode!r}; choose from {', '.join(CLASS_WEIGHT_MODES)}"
        )
    labels = np.asarray(labels, dtype=np.int64).ravel()
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(
            f"labels must be in [0, {num_classes}); got {labels.min()}..{labels.max()}"
        )
    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
    if mode == "none":
        return {k: 1.0 for k in range(num_classes)}
    n = counts.sum()
    present = counts > 0
    w = np.zeros(num_classes, np.float64)
    w[present] = n / (present.sum() * counts[present])
    if mode == "sqrt":
        w = np.sqrt(w)
        w = w * n / float(counts @ w)  # mean weight over the training samples = 1
    return {k: float(w[k]) for k in range(num_classes)}


def sample_weights(labels: Any, weights: dict[int, float]) -> np.ndarray:
    """``weights[label]`` for each label, float32."""
    table = np.array([weights[k] for k in range(len(weights))], np.float32)
    return table[np.asarray(labels, dtype=np.int64)]


def make_loss(
    kind: str = "ce",
    label_smoothing: float = 0.0,
    focal_gamma: float = 2.0,
):
    """The loss on logits for one-hot targets: ``ce`` (categorical cross-entropy) or ``focal``."""
    import keras

    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError("label_smoothing must be in [0, 1)")
    if kind == "ce":
        return keras.losses.CategoricalCrossentropy(
            from_logits=True, label_smoothing=label_smoothing, name="ce"
        )
    if kind == "focal":
        return keras.losses.CategoricalFocalCrossentropy(
            alpha=1.0,
            gamma=focal_gamma,
            from_logits=True,
            label_smoothing=label_smoothing,
            name="focal",
        )
    raise ValueError(f"unknown loss {kind!r}; choose from {', '.join(LOSSES)}")


def accuracy_metric(num_classes: int):
    """Categorical accuracy that reads only the first ``num_classes`` target columns, so it works
    for one-hot targets and for distillation targets ``[one-hot, teacher logits]`` alike."""
    import keras

    def accuracy(y_true, y_pred):
        return keras.metrics.categorical_accuracy(y_true[:, :num_classes], y_pred)

    return keras.metrics.MeanMetricWrapper(accuracy, name="accuracy")
