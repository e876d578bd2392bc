"""Knowledge distillation: soft targets from a frozen teacher, mixed with the hard labels.

Loss (Hinton, Vinyals & Dean 2015, "Distilling the Knowledge in a Neural Network")::

    L = alpha * CE(y, softmax(s)) + (1 - alpha) * T^2 * KL(softmax(t / T) || softmax(s / T))

``s``: student logits, ``t``: teacher logits, ``T``: temperature (softens both distributions so the
teacher's ranking of the *wrong* classes, its "dark knowledge", carries gradient), ``T^2`` keeps the
soft term's gradient on the same scale as the hard term's when ``T`` changes.

Offline teacher (the choice made here)
--------------------------------------
The teacher is frozen, so its logits are computed **once** for every train and val image and cached
next to the run (``teacher_logits.npy`` + ``.json``); training then feeds
``y_true = concat([one_hot, teacher_logits])`` to :class:`DistillationLoss`. Our augmentations are
label-preserving (flips, rotations, zoom/shift, moderate colour jitter, and with ``strong`` a
down-up resize and blur; see ``trainer/augment.py``), so the soft target of the clean image is a valid
target for each augmented view of it. Metadata dropout hides fields from the student only; the teacher
saw the full metadata, which is what we want the student to approach.

- Benefit: on a 2-core CPU the teacher (sklesion's Xception, ~70-95 ms per image) would otherwise
  run on every augmented view of every epoch: ~10 min per epoch on HAM10000's ~7,000 training images,
  more than the student's own epoch. Offline, it costs ~10 min once, then nothing; the cache is
  reused by every run and every search trial on the same split; memory is N x K floats.
- Cost: the student is matched to the teacher's view of the clean image, not of the augmented one
  ("consistent teaching", Beyer et al. 2022, finds online targets on the same view better for long
  schedules with strong augmentation). With mild, label-preserving augmentation and a few epochs the
  gap is small; the augmented view's teacher output would differ mostly by noise.
- The test split is never shown to the teacher: its rows are NaN in the cache and never computed
  (:class:`trainer.teachers.TeacherInputs` refuses test rows).

Caveat for ``sklesion``: it was trained on HAM10000 itself (see :mod:`trainer.teachers.sklesion`), so a
student distilled from it inherits knowledge of our HAM10000 test lesions; report such a student's
test metrics on non-HAM10000 data.

Contract with ``train`` (``trainer/train.py`` follows it):

- ``y = distill_targets(labels, teacher_logits, K)`` for the training rows (never test);
  ``model.compile(loss=DistillationLoss(alpha, temperature), ...)``.
- Class weights go in as per-sample weights (the dataset's third element, or
  :func:`class_sample_weights`), **not** as ``fit(class_weight=...)``: Keras turns ``class_weight``
  into per-sample weights with ``argmax(y_true)``, which over the 2K-wide target could pick a
  teacher-logit column.
- Built-in metrics such as ``"accuracy"`` would also read the 2K-wide target; use
  ``trainer.losses.accuracy_metric(K)`` (first K columns) or compute BMA from predictions.

This module imports Keras at module level (like ``trainer/model.py``) because the loss subclasses
``keras.losses.Loss``; import it inside the functions that train. The teacher side
(:func:`teacher_logits_for`) imports TensorFlow only when a teacher actually has to run.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import warnings
from pathlib import Path
from typing import Any

import keras
import numpy as np
from keras import ops

from desktop_app.core.atomic import atomic_save_json, atomic_write_with
from desktop_app.core.errors import ModelError

CACHE_VERSION = 1


# --------------------------------------------------------------------------------------------------
# The loss
# --------------------------------------------------------------------------------------------------


@keras.saving.register_keras_serializable(package="lesionlens")
class DistillationLoss(keras.losses.Loss):
    """Hinton et al. (2015) distillation loss on logits.

    ``y_true``: ``concat([one_hot (K), teacher_logits (K)], -1)``, shape ``(B, 2K)``;
    ``y_pred``: student **logits** ``(B, K)``. Returns the per-sample loss, so Keras applies
    ``sample_weight`` (class weights) and the reduction as for any loss.

    ``alpha``: weight of the hard-label cross-entropy (1 = plain CE, 0 = soft targets only).
    ``temperature``: T > 0 for the soft term; the soft term is multiplied by T^2.
    Non-finite teacher logits (the NaN rows of the test split) make the loss NaN on purpose: they
    must never reach training.
    """

    def __init__(
        self,
        alpha: float = 0.5,
        temperature: float = 4.0,
        name: str = "distillation",
        reduction: str = "sum_over_batch_size",
        dtype: Any = None,
    ) -> None:
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        alpha, temperature = float(alpha), float(temperature)
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {alpha}")
        if not temperature > 0.0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.alpha = alpha
        self.temperature = temperature

    def call(self, y_true, y_pred):
        y_pred = ops.convert_to_tensor(y_pred)
        k = y_pred.shape[-1]
        y_true = ops.cast(y_true, y_pred.dtype)
        onehot, teacher = y_true[..., :k], y_true[..., k:]
        ce = -ops.sum(onehot * ops.log_softmax(y_pred, axis=-1), axis=-1)
        t = self.temperature
        log_p_teacher = ops.log_softmax(teacher / t, axis=-1)
        log_p_student = ops.log_softmax(y_pred / t, axis=-1)
        kl = ops.sum(ops.exp(log_p_teacher) * (log_p_teacher - log_p_student), axis=-1)
        return self.alpha * ce + (1.0 - self.alpha) * (t * t) * kl

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "alpha": self.alpha, "temperature": self.temperature}


def distill_targets(labels: np.ndarray, teacher_logits: np.ndarray, num_classes: int) -> np.ndarray:
    """``concat([one_hot(labels), teacher_logits])`` as float32 (N, 2K), the ``y`` for ``fit``.
    Raises ValueError if a row has no teacher logits (a test row, or a row the cache lacks)."""
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    teacher_logits = np.asarray(teacher_logits, dtype=np.float32)
    if teacher_logits.shape != (len(labels), num_classes):
        raise ValueError(
            f"teacher logits have shape {teacher_logits.shape}, expected {(len(labels), num_classes)}"
        )
    if not np.isfinite(teacher_logits).all():
        raise ValueError("some rows have no teacher logits (NaN): test rows must not be trained on")
    onehot = np.eye(num_classes, dtype=np.float32)[labels]
    return np.concatenate([onehot, teacher_logits], axis=1)


def class_sample_weights(labels: np.ndarray, class_weight: dict[int, float] | None) -> np.ndarray:
    """Per-sample weights from a ``{class index: weight}`` map (1.0 for absent classes)."""
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    if not class_weight:
        return np.ones(len(labels), dtype=np.float32)
    table = np.ones(int(max(max(class_weight), labels.max(initial=0))) + 1, dtype=np.float32)
    for k, w in class_weight.items():
        table[int(k)] = float(w)
    return table[labels]


# --------------------------------------------------------------------------------------------------
# Cached teacher logits
# --------------------------------------------------------------------------------------------------


def _ids_hash(data: Any) -> str:
    digest = hashlib.sha256()
    for image_id in data.table["image_id"]:
        digest.update(f"{image_id}\n".encode())
    return digest.hexdigest()


def _inputs_hash(data: Any) -> str:
    """Everything else a teacher's output depends on: split, metadata fields, cached images' size."""
    digest = hashlib.sha256()
    table = data.table
    for row in zip(table["split"], table["age"], table["sex"], table["site"], strict=True):
        digest.update(("\t".join(str(v) for v in row) + "\n").encode())
    meta = getattr(data, "metadata", None)
    if meta is not None:
        digest.update(np.ascontiguousarray(meta, dtype=np.float32).tobytes())
    images = getattr(data, "images", None)
    if images is not None:
        digest.update(str(tuple(images.shape)).encode())
    return digest.hexdigest()


def _cache_files(cache_path: str | os.PathLike) -> tuple[Path, Path]:
    npy = Path(cache_path)
    if npy.suffix != ".npy":
        npy = npy.with_name(npy.name + ".npy")
    return npy, npy.with_suffix(".json")


def _teacher_rows(data: Any) -> np.ndarray:
    rows = np.concatenate([np.asarray(data.indices(s), dtype=np.int64) for s in ("train", "val")])
    return np.unique(rows)


def _read_cache(npy: Path, meta_file: Path, expected: dict[str, Any], n: int, k: int):
    if not (npy.is_file() and meta_file.is_file()):
        return None
    try:
        meta = json.loads(meta_file.read_text(encoding="utf-8"))
        if any(meta.get(key) != value for key, value in expected.items()):
            return None
        logits = np.load(npy, allow_pickle=False)
    except (OSError, ValueError):
        return None
    if logits.shape != (n, k) or logits.dtype != np.float32:
        return None
    return logits


def _column_map(teacher_classes: tuple[str, ...], data_classes: tuple[str, ...], who: str):
    missing = [c for c in data_classes if c not in teacher_classes]
    if missing:
        raise ModelError(
            f"The teacher {who} does not predict {', '.join(missing)}, which these data contain; "
            f"it knows {', '.join(teacher_classes)}. Choose a teacher trained on every class."
        )
    return [teacher_classes.index(c) for c in data_classes]


def teacher_logits_for(
    teacher_spec: Any,
    data: Any,
    cache_path: str | os.PathLike,
    *,
    batch_size: int = 16,
    progress: bool = True,
) -> np.ndarray:
    """Teacher logits for every row of ``data.table``: float32 (N, K) in ``data.classes`` order.

    ``teacher_spec``: ``"sklesion"``, the path of one of our ``.keras`` models, or a teacher object
    (see :mod:`trainer.teachers`). Only the train and val rows are computed; test rows are NaN and
    are never shown to the teacher. The result is cached in ``cache_path`` (``.npy``) with a JSON
    sidecar (teacher id, classes, hashes of the image ids and of the split/metadata) and reused
    while those match. Teacher classes that the data lack are dropped (the softmax over the rest is
    the teacher's distribution given that the lesion is one of our classes); a data class the
    teacher lacks is a ModelError.
    """
    from trainer.teachers import TeacherInputs, load_teacher

    teacher = (
        load_teacher(teacher_spec) if isinstance(teacher_spec, str | os.PathLike) else teacher_spec
    )
    data_classes = tuple(data.classes)
    n, k = len(data.table), len(data_classes)
    npy, meta_file = _cache_files(cache_path)
    expected = {
        "version": CACHE_VERSION,
        "teacher": teacher.teacher_id,
        "classes": list(data_classes),
        "image_ids_sha256": _ids_hash(data),
        "inputs_sha256": _inputs_hash(data),
    }
    cached = _read_cache(npy, meta_file, expected, n, k)
    if cached is not None:
        return cached

    who = f"'{teacher.teacher_id.split(':')[0]}'"
    if teacher.classes is not None:  # fail before a long run, not after it
        _column_map(tuple(teacher.classes), data_classes, who)

    rows = _teacher_rows(data)
    inputs = TeacherInputs(data, rows)  # AssertionError if a test row slipped in
    raw = np.asarray(
        teacher.predict_logits(inputs, batch_size=batch_size, progress=progress), dtype=np.float32
    )
    if raw.ndim != 2 or raw.shape[0] != len(rows):
        raise ModelError(
            f"The teacher returned logits of shape {raw.shape} for {len(rows)} images."
        )
    t_classes = tuple(teacher.classes) if teacher.classes is not None else None
    if t_classes is None:
        if raw.shape[1] != k:
            raise ModelError(
                f"The teacher {who} has {raw.shape[1]} outputs and no class list; these data have "
                f"{k} classes. Keep the teacher's run folder (config.json) next to its model."
            )
        warnings.warn(
            f"The teacher {who} has no class list (no config.json next to it): its outputs are "
            f"taken to be in this data's order, {', '.join(data_classes)}.",
            stacklevel=2,
        )
        t_classes = data_classes
    if raw.shape[1] != len(t_classes):
        raise ModelError(
            f"The teacher {who} has {raw.shape[1]} outputs for {len(t_classes)} classes."
        )
    if not np.isfinite(raw).all():
        raise ModelError(f"The teacher {who} produced non-finite logits.")

    logits = np.full((n, k), np.nan, dtype=np.float32)
    logits[rows] = raw[:, _column_map(t_classes, data_classes, who)]
    if np.isfinite(logits[np.asarray(data.indices("test"), dtype=np.int64)]).any():
        raise AssertionError("teacher logits were written for test rows")

    npy.parent.mkdir(parents=True, exist_ok=True)
    # The sidecar is the commit marker: remove the old one first, so a crash between the two
    # writes leaves no sidecar (recomputed next time), never an old sidecar over new logits.
    meta_file.unlink(missing_ok=True)
    atomic_write_with(npy, lambda tmp: np.save(tmp, logits, allow_pickle=False))
    atomic_save_json(
        meta_file,
        {
            **expected,
            "teacher_classes": list(t_classes),
            "rows": n,
            "computed_splits": ["train", "val"],
            "computed_rows": len(rows),
            "test_rows": "NaN: never shown to the teacher",
            "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        },
    )
    return logits
