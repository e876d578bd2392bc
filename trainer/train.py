"""``train`` sub-command: two-stage training of the dual-input model, resumable.

Pipeline::

    prepare()  ->  uint8 images (memory-mapped cache), encoded metadata, labels, split
               ->  tf.data over row indices (seeded shuffle per epoch; rows read by index, uint8 ->
                   float32 in the graph; prefetch), class weights as per-sample weights
               ->  training wrapper  Model(inputs, core(augment(image), MetadataDropout(metadata)))
               ->  stage 1: backbone frozen, --lr          (keras-io recipe, see docs/DESIGN sec. 3)
                   stage 2: top --unfreeze backbone layers trainable (BatchNorm stays frozen),
                            recompiled with --lr-finetune, continuing from the best stage-1 weights
               ->  RUN/model.keras: the best CORE model (no augmentation, no metadata dropout)

Validation runs once per epoch through a compiled ``tf.function`` of the core model (``model.predict``
is erratic on this CPU) and logs ``val_loss`` (plain cross-entropy), ``val_accuracy`` and ``val_bma``
(balanced multiclass accuracy, scikit-learn). ``val_bma`` is what early stopping, the learning-rate
schedule and the checkpoint watch. The TEST split is never read: the indices fed to training and
validation are checked against it, and the row reader refuses test rows.

Run folder (see docs/trainer-internals.md): ``config.json`` (written before training starts),
``split.csv`` (+ ``.json``), ``model.keras`` (best core), ``last.keras`` (core after the latest epoch),
``train_log.csv`` (one row per epoch per stage), ``best.json``, ``stageN.done.json``,
``train_summary.json``, ``backup/stageN/`` (Keras ``BackupAndRestore``), ``teacher_logits.npy``.

Resuming: re-run the same command. A finished stage (``stageN.done.json``) is skipped; an interrupted
stage continues from its last completed epoch (``BackupAndRestore`` restores weights, optimizer state,
learning rate and the epoch counter; we restore the early-stopping / plateau counters and the best
score from ``train_log.csv`` / ``best.json``). ``BackupAndRestore`` deletes its backup when ``fit``
returns normally, which is why the stage marker exists. A changed configuration is refused (it would
silently mix two runs); ``--fresh`` starts the run folder over.

TensorFlow and Keras are imported inside functions: ``python -m trainer --help`` stays fast.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import datetime as _dt
import json
import math
import os
import platform
import shlex
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from desktop_app.core.atomic import atomic_save_json, atomic_write_text, atomic_write_with
from desktop_app.core.errors import LesionLensError, ModelError

LOG_COLUMNS = (
    "stage",
    "epoch",
    "lr",
    "loss",
    "accuracy",
    "val_loss",
    "val_accuracy",
    "val_bma",
    "seconds",
    "time",
)
STATE_FILES = (
    "model.keras",
    "last.keras",
    "train_log.csv",
    "best.json",
    "stage1.done.json",
    "stage2.done.json",
    "train_summary.json",
    "split.csv",
    "split.csv.json",
)
# Settings that may change between a run and its resumption without mixing two different runs.
RESUME_MAY_CHANGE = frozenset({"resume", "cache_dir", "data"})


class RunConflictError(LesionLensError):
    """The run folder holds a run with another configuration."""


@dataclass
class TrainConfig:
    """Everything ``train`` needs. Field names are the CLI options with ``-`` -> ``_``."""

    data: str
    run: str
    format: str = "auto"
    split: str | None = None
    classes: list[str] | None = None
    backbone: str = "MobileNetV2"
    weights: str = "imagenet"  # "imagenet" | a local .h5 path | "none"
    image_size: int = 224
    use_metadata: bool = True
    epochs_frozen: int = 3
    epochs_finetune: int = 10
    unfreeze: int = 30
    lr: float = 1e-3
    lr_finetune: float = 1e-4
    batch_size: int = 32
    dropout: float = 0.3
    head_units: int = 256
    meta_units: int = 32
    meta_dropout: float = 0.2
    loss: str = "ce"
    focal_gamma: float = 2.0
    class_weights: str = "balanced"
    label_smoothing: float = 0.0
    augment: str = "basic"
    aug_resolution: float | None = None  # probability; None: the preset's
    aug_blur: float | None = None  # probability; None: the preset's
    teacher: str | None = None
    init_from: str | None = None  # an earlier run (folder or model.keras) to start from
    distill_temperature: float = 4.0
    distill_alpha: float = 0.5
    patience: int = 4
    limit: int | None = None
    seed: int = 42
    cache_dir: str | None = None
    resume: bool = True

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    @property
    def run_dir(self) -> Path:
        return Path(self.run)

    @property
    def model_weights(self) -> str | None:
        return None if str(self.weights).lower() == "none" else self.weights

    def validate(self) -> None:
        """Raise ValueError with a readable message for settings that cannot work."""
        from trainer.augment import PRESETS
        from trainer.losses import CLASS_WEIGHT_MODES, LOSSES

        def need(ok: bool, message: str) -> None:
            if not ok:
                raise ValueError(message)

        need(self.image_size >= 32, "--image-size must be at least 32")
        need(self.batch_size >= 1, "--batch-size must be at least 1")
        need(self.epochs_frozen >= 0 and self.epochs_finetune >= 0, "epochs must be >= 0")
        need(
            self.epochs_frozen + self.epochs_finetune > 0,
            "nothing to train: both epoch counts are 0",
        )
        need(self.unfreeze >= -1, "--unfreeze is a number of layers, or -1 for all")
        need(self.lr > 0 and self.lr_finetune > 0, "learning rates must be > 0")
        need(0.0 <= self.dropout < 1.0, "--dropout must be in [0, 1)")
        need(0.0 <= self.meta_dropout <= 1.0, "--meta-dropout must be in [0, 1]")
        need(self.head_units >= 1 and self.meta_units >= 1, "layer sizes must be >= 1")
        need(self.loss in LOSSES, f"--loss must be one of {', '.join(LOSSES)}")
        need(self.focal_gamma >= 0, "--focal-gamma must be >= 0")
        need(
            self.class_weights in CLASS_WEIGHT_MODES,
            f"--class-weights must be one of {', '.join(CLASS_WEIGHT_MODES)}",
        )
        need(0.0 <= self.label_smoothing < 1.0, "--label-smoothing must be in [0, 1)")
        need(self.augment in PRESETS, f"--augment must be one of {', '.join(PRESETS)}")
        for name, p in (("--aug-resolution", self.aug_resolution), ("--aug-blur", self.aug_blur)):
            need(p is None or 0.0 <= p <= 1.0, f"{name} is a probability in [0, 1]")
        need(self.patience >= 1, "--patience must be at least 1")
        need(self.limit is None or self.limit > 0, "--limit must be a positive number of images")
        need(self.distill_temperature > 0, "--distill-temperature must be > 0")
        need(0.0 <= self.distill_alpha <= 1.0, "--distill-alpha must be in [0, 1]")
        if self.teacher:
            need(self.loss == "ce", "distillation has its own loss: leave --loss at ce")
            need(self.label_smoothing == 0.0, "--label-smoothing does not apply to distillation")
        if self.init_from:
            need(
                init_model_path(self.init_from).is_file(),
                f"--init-from: no model at {self.init_from!r} (give a run folder or its "
                "model.keras)",
            )
        w = self.model_weights
        need(
            w is None or w == "imagenet" or Path(w).is_file(),
            f"--weights: no such file {w!r} (use imagenet, none or the path of a .h5 file)",
        )

    def augment_config(self):
        from trainer.augment import AugmentConfig

        return AugmentConfig.preset(
            self.augment, seed=self.seed, resolution_p=self.aug_resolution, blur_p=self.aug_blur
        )


@dataclass
class TrainResult:
    run_dir: Path
    model_path: Path
    classes: tuple[str, ...]
    best_val_bma: float | None
    best_stage: int | None
    best_epoch: int | None  # 1-based, within its stage
    stages: dict[int, dict[str, Any]]  # stage -> {"status": trained|resumed|skipped, "epochs": ...}
    seconds: float
    history: list[dict[str, Any]] = field(default_factory=list)  # train_log.csv rows, all stages
    model: Any = field(default=None, repr=False, compare=False)  # the core model, best weights

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "model"}
        d["run_dir"], d["model_path"] = str(self.run_dir), str(self.model_path)
        d["classes"] = list(self.classes)
        d["stages"] = {str(k): v for k, v in self.stages.items()}
        return d


# --------------------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------------------


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


def _say(progress: bool, message: str) -> None:
    if progress:
        print(message, flush=True)


def _fmt_seconds(s: float) -> str:
    m, s = divmod(round(s), 60)
    h, m = divmod(m, 60)
    return f"{h}h {m:02d}m {s:02d}s" if h else f"{m}m {s:02d}s"


def library_versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"python": platform.python_version(), "platform": platform.platform()}
    for dist in (
        "tensorflow",
        "keras",
        "numpy",
        "scikit-learn",
        "pandas",
        "opencv-python-headless",
    ):
        with contextlib.suppress(md.PackageNotFoundError):
            out[dist] = md.version(dist)
    return out


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _read_log(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    with path.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    out = []
    for row in rows:
        parsed: dict[str, Any] = {}
        for k, v in row.items():
            if k in ("stage", "epoch"):
                parsed[k] = int(v)
            elif k == "time":
                parsed[k] = v
            else:
                parsed[k] = float(v) if v not in ("", None) else None
        out.append(parsed)
    return out


def _write_log(path: Path, rows: list[dict[str, Any]]) -> None:
    lines = [",".join(LOG_COLUMNS)]
    for r in rows:
        lines.append(",".join(_csv_value(r.get(c)) for c in LOG_COLUMNS))
    atomic_write_text(path, "\n".join(lines) + "\n")


def _csv_value(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v)


def _backup_epoch(backup_dir: Path) -> int:
    """Epochs completed according to a BackupAndRestore folder (0 when there is none)."""
    meta = _read_json(backup_dir / "training_metadata.json")
    has_weights = (backup_dir / "latest.weights.h5").is_file()
    return int(meta.get("epoch", 0)) if meta and has_weights else 0


def _replay(
    values: list[float], patience: int, reset_on_patience: bool
) -> tuple[float | None, int]:
    """(best, wait) that a max-mode EarlyStopping / ReduceLROnPlateau would hold after ``values``."""
    best, wait = None, 0
    for v in values:
        if v is None or (isinstance(v, float) and math.isnan(v)):
            continue
        if best is None or v > best:
            best, wait = v, 0
        else:
            wait += 1
            if reset_on_patience and wait >= patience:
                wait = 0
    return best, wait


def _read_rows(data: Any, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Images (uint8) and metadata (float32) of the given rows, ``idx`` ascending. Every image that
    training or validation sees comes through here (tests spy on it)."""
    return np.asarray(data.images[idx]), np.asarray(data.metadata[idx], dtype=np.float32)


def _guarded_reader(data: Any, forbidden: np.ndarray):
    forbidden = np.asarray(forbidden, dtype=np.int64)

    def read(idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        idx = np.sort(np.asarray(idx, dtype=np.int64))
        if forbidden.size and np.isin(idx, forbidden).any():
            raise AssertionError("a TEST-split image was about to be fed to training: refused")
        return _read_rows(data, idx)

    return read


# --------------------------------------------------------------------------------------------------
# Data pipeline
# --------------------------------------------------------------------------------------------------


def make_train_dataset(
    data: Any,
    indices: np.ndarray,
    targets: np.ndarray,
    weights: np.ndarray,
    batch_size: int,
    seed: int,
    use_metadata: bool,
    forbidden: np.ndarray | None = None,
):
    """``tf.data`` of ``({"image", ["metadata"]}, targets, sample_weights)`` batches over ``indices``.

    ``targets`` and ``weights`` are aligned with ``data``'s rows. Row indices are shuffled (seeded, a
    new order each epoch), batched, then read from the memory-mapped cache in one sorted gather per
    batch (``tf.numpy_function``); images travel as uint8 and become float32 in the graph.
    """
    import tensorflow as tf

    read = _guarded_reader(data, np.empty(0) if forbidden is None else forbidden)
    targets = np.asarray(targets, np.float32)
    weights = np.asarray(weights, np.float32)
    h, w = data.images.shape[1:3]
    d = data.metadata.shape[1]
    k = targets.shape[1]

    def load(idx):
        idx = np.sort(idx)
        x, m = read(idx)
        return x, m, targets[idx], weights[idx]

    @tf.autograph.experimental.do_not_convert  # no Python control flow on tensors here
    def to_model(idx):
        x, m, y, sw = tf.numpy_function(load, [idx], [tf.uint8, tf.float32, tf.float32, tf.float32])
        x = tf.cast(tf.ensure_shape(x, [None, h, w, 3]), tf.float32)
        inputs = {"image": x}
        if use_metadata:
            inputs["metadata"] = tf.ensure_shape(m, [None, d])
        return inputs, tf.ensure_shape(y, [None, k]), tf.ensure_shape(sw, [None])

    ds = tf.data.Dataset.from_tensor_slices(np.asarray(indices, np.int64))
    ds = ds.shuffle(len(indices), seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size)
    ds = ds.map(to_model, num_parallel_calls=1)
    return ds.prefetch(2)


# --------------------------------------------------------------------------------------------------
# Callbacks (built lazily: Keras is imported inside functions)
# --------------------------------------------------------------------------------------------------


def _callbacks_module():
    import keras
    import tensorflow as tf

    class ValMetrics(keras.callbacks.Callback):
        """Predict the validation rows with a compiled tf.function of the core model; put
        ``val_loss`` (cross-entropy), ``val_accuracy`` and ``val_bma`` into the epoch logs."""

        def __init__(self, core, read, val_idx, val_labels, num_classes, batch_size, use_metadata):
            super().__init__()
            self.read, self.val_idx, self.y = read, np.asarray(val_idx), np.asarray(val_labels)
            self.k, self.batch_size, self.use_metadata = num_classes, batch_size, use_metadata
            h, w = core.inputs[0].shape[1:3]
            sig = [tf.TensorSpec((None, h, w, 3), tf.float32)]
            if use_metadata:
                sig.append(tf.TensorSpec((None, core.inputs[1].shape[1]), tf.float32))

            def logits(*inputs):
                return core(list(inputs), training=False)

            # compiled once; autograph off: plain Keras graph building, no Python control flow
            self.fn = tf.function(logits, input_signature=sig, autograph=False)

        def predict(self) -> np.ndarray:
            out = []
            for s in range(0, len(self.val_idx), self.batch_size):
                x, m = self.read(self.val_idx[s : s + self.batch_size])
                args = [tf.constant(x, tf.float32)]
                if self.use_metadata:
                    args.append(tf.constant(m))
                out.append(np.asarray(self.fn(*args)))
            return np.concatenate(out) if out else np.zeros((0, self.k), np.float32)

        def on_epoch_end(self, epoch, logs=None):
            import warnings

            from sklearn.metrics import balanced_accuracy_score

            logits = self.predict().astype(np.float64)
            z = logits - logits.max(axis=1, keepdims=True)
            logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
            pred = logits.argmax(axis=1)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # a class absent from val: sklearn warns
                bma = float(balanced_accuracy_score(self.y, pred))
            if logs is not None:
                logs["val_loss"] = float(-logp[np.arange(len(self.y)), self.y].mean())
                logs["val_accuracy"] = float((pred == self.y).mean())
                logs["val_bma"] = bma

    class BestCoreCheckpoint(keras.callbacks.Callback):
        """Save the CORE model (not the training wrapper) atomically: to ``model.keras`` when
        ``val_bma`` beats the best so far (over all stages and resumptions, kept in ``best.json``),
        and to ``last.keras`` after every epoch."""

        def __init__(self, core, run_dir: Path, stage: int):
            super().__init__()
            self.core, self.run_dir, self.stage = core, run_dir, stage
            state = _read_json(run_dir / "best.json") or {}
            self.best = state.get("val_bma")

        def on_epoch_end(self, epoch, logs=None):
            current = (logs or {}).get("val_bma")
            atomic_write_with(self.run_dir / "last.keras", lambda p: self.core.save(p))
            if current is None or not (self.best is None or current > self.best):
                return
            self.best = current
            atomic_write_with(self.run_dir / "model.keras", lambda p: self.core.save(p))
            atomic_save_json(
                self.run_dir / "best.json",
                {"val_bma": current, "stage": self.stage, "epoch": epoch + 1, "time": _now()},
            )

    class EpochLog(keras.callbacks.Callback):
        """One row per epoch in ``train_log.csv`` with fixed columns (a ``stage`` column; the
        ``epoch`` counts from 1 within its stage), plus the epoch's wall time."""

        def __init__(self, path: Path, stage: int):
            super().__init__()
            self.path, self.stage, self.t0 = path, stage, time.time()
            self.rows: list[dict[str, Any]] = []

        def on_epoch_begin(self, epoch, logs=None):
            self.t0 = time.time()

        def on_epoch_end(self, epoch, logs=None):
            logs = logs or {}
            row = {
                "stage": self.stage,
                "epoch": epoch + 1,
                "lr": float(np.asarray(self.model.optimizer.learning_rate)),
                **{c: logs.get(c) for c in LOG_COLUMNS[3:8]},
                "seconds": round(time.time() - self.t0, 3),
                "time": _now(),
            }
            row = {
                k: (float(v) if isinstance(v, np.floating | np.ndarray) else v)
                for k, v in row.items()
            }
            new = not self.path.is_file() or self.path.stat().st_size == 0
            with self.path.open("a", newline="", encoding="utf-8") as f:
                if new:
                    f.write(",".join(LOG_COLUMNS) + "\n")
                f.write(",".join(_csv_value(row.get(c)) for c in LOG_COLUMNS) + "\n")
            self.rows.append(row)

    class StageEarlyStopping(keras.callbacks.EarlyStopping):
        """EarlyStopping whose counters survive a resumption (replayed from the log)."""

        def __init__(self, prior: list[float], **kwargs):
            super().__init__(**kwargs)
            self.prior = prior

        def on_train_begin(self, logs=None):
            super().on_train_begin(logs)
            self.best, self.wait = _replay(self.prior, self.patience, reset_on_patience=False)

    class StageReduceLR(keras.callbacks.ReduceLROnPlateau):
        def __init__(self, prior: list[float], **kwargs):
            super().__init__(**kwargs)
            self.prior = prior

        def on_train_begin(self, logs=None):
            super().on_train_begin(logs)
            self.best, self.wait = _replay(self.prior, self.patience, reset_on_patience=True)

    return argparse.Namespace(
        ValMetrics=ValMetrics,
        BestCoreCheckpoint=BestCoreCheckpoint,
        EpochLog=EpochLog,
        StageEarlyStopping=StageEarlyStopping,
        StageReduceLR=StageReduceLR,
    )


# --------------------------------------------------------------------------------------------------
# Run folder
# --------------------------------------------------------------------------------------------------


def _start_fresh(run_dir: Path) -> None:
    """--fresh: remove this run's training state; move an old evaluation aside (it scored another
    model); keep cached teacher logits (validated by their own sidecar)."""
    shutil.rmtree(run_dir / "backup", ignore_errors=True)
    for name in (*STATE_FILES, "config.json"):
        with contextlib.suppress(FileNotFoundError):
            (run_dir / name).unlink()
    ev = run_dir / "evaluation"
    if ev.exists():
        ev.rename(run_dir / f"evaluation.stale-{_dt.datetime.now():%Y%m%d-%H%M%S}")


def _check_compatible(run_dir: Path, config: TrainConfig) -> dict[str, Any] | None:
    """The run's previous config.json, or None; RunConflictError if it trained something else."""
    old = _read_json(run_dir / "config.json")
    if old is None:
        return None
    before = old.get("train_config") or {}
    now = config.to_dict()
    changed = [
        f"{k}: {before.get(k)!r} -> {now[k]!r}"
        for k in now
        if k not in RESUME_MAY_CHANGE and before.get(k) != now[k]
    ]
    if changed:
        raise RunConflictError(
            f"The run folder {run_dir} holds a run with other settings ({'; '.join(changed)}). "
            "Re-run with the same options to resume it, add --fresh to start it over, or choose "
            "another --run folder."
        )
    return old


def _dataset_summary(data: Any) -> dict[str, Any]:
    counts = {
        s: {c: int(n) for c, n in zip(data.classes, data.class_counts(s), strict=True)}
        for s in ("train", "val", "test")
    }
    report = getattr(data, "report", None)
    return {
        "n_images": len(data),
        "image_shape": list(data.images.shape[1:]),
        "metadata_size": int(data.metadata.shape[1]),
        "counts": counts,
        "images_per_split": {s: int(sum(v.values())) for s, v in counts.items()},
        "excluded_classes": dict(getattr(data, "excluded", {}) or {}),
        "source": getattr(report, "source", None),
        "format": getattr(report, "fmt", None),
        "cache": str(getattr(data, "cache_path", "") or ""),
    }


def _write_config(run_dir: Path, config: TrainConfig, data: Any, split_file: Path, old) -> None:
    import trainer

    spec = getattr(data, "spec", None)
    argv = list(sys.argv)
    command = shlex.join([Path(sys.executable).name, "-m", "trainer", *argv[1:]]) if argv else ""
    content = {
        # the flat keys that evaluate/export read
        "data": config.data,
        "data_path": config.data,
        "format": config.format,
        "dataset": getattr(getattr(data, "report", None), "source", None),
        "split": str(split_file),
        "image_size": config.image_size,
        "resize": getattr(spec, "resize", "stretch"),
        "preprocess": spec.to_dict() if spec is not None else None,
        "backbone": config.backbone,
        "weights": config.weights,
        "use_metadata": config.use_metadata,
        "seed": config.seed,
        "limit": config.limit,
        "cache_dir": config.cache_dir,
        "classes": list(data.classes),
        "metadata_encoding": data.encoding.to_dict(),
        # everything else
        "train_config": config.to_dict(),
        "augmentation": config.augment_config().to_dict(),
        "dataset_summary": _dataset_summary(data),
        "command": command if old is None else old.get("command", command),
        "argv": argv if old is None else old.get("argv", argv),
        "created": _now() if old is None else old.get("created", _now()),
        "resumed": [] if old is None else [*old.get("resumed", []), {"time": _now(), "argv": argv}],
        "trainer_version": trainer.__version__,
        "versions": library_versions(),
    }
    atomic_save_json(run_dir / "config.json", content)


def _copy_split(src: Path, run_dir: Path) -> Path:
    from trainer.splits import sidecar_path

    dst = run_dir / "split.csv"
    if src.resolve() != dst.resolve():
        atomic_write_text(dst, src.read_text(encoding="utf-8-sig"))
        side = sidecar_path(src)
        if side.is_file():
            atomic_write_text(sidecar_path(dst), side.read_text(encoding="utf-8"))
    return dst


# --------------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------------


def init_model_path(init_from: str | os.PathLike) -> Path:
    """The .keras model that ``--init-from`` names: the file itself, or a run folder's model."""
    path = Path(init_from)
    return path / "model.keras" if path.is_dir() else path


def check_init_run(init_from: str | os.PathLike, config: TrainConfig, data: Any) -> Path:
    """The model to warm-start from, after checking that it fits and that it never saw this run's
    test split.

    Why: continuing from an earlier run saves hours on a CPU, but a model trained on a different
    split may have learned this run's test lesions, and its test figures would then be worthless.
    The earlier run's ``config.json`` and ``split.csv`` must sit next to its model, so that the
    check is made, not assumed.
    """
    from trainer.splits import read_split_file

    model = init_model_path(init_from)
    run = model.parent
    old = _read_json(run / "config.json")
    if old is None or not (run / "split.csv").is_file():
        raise ModelError(
            f"--init-from {init_from}: {run} lacks config.json or split.csv, so it cannot be "
            "checked that the model never saw this run's test images. Give a run folder made by "
            "`python -m trainer train`."
        )
    mismatch = [
        f"{name}: {old.get(name)!r} there, {now!r} here"
        for name, now in (
            ("classes", list(data.classes)),
            ("backbone", config.backbone),
            ("image_size", config.image_size),
            ("use_metadata", config.use_metadata),
            ("metadata_encoding", data.encoding.to_dict()),
        )
        if old.get(name) != now
    ]
    old_tc = old.get("train_config") or {}
    for name in ("head_units", "meta_units"):
        if name in old_tc and old_tc[name] != getattr(config, name):
            mismatch.append(f"{name}: {old_tc[name]!r} there, {getattr(config, name)!r} here")
    if mismatch:
        raise ModelError(
            f"--init-from {init_from}: that model has another shape ({'; '.join(mismatch)})."
        )
    seen = read_split_file(run / "split.csv")
    seen_ids = set(seen.loc[seen["split"] != "test", "image_id"])
    test_ids = data.table["image_id"].to_numpy()[np.asarray(data.indices("test"), np.int64)]
    leaked = sorted(seen_ids.intersection(test_ids))
    if leaked:
        raise ModelError(
            f"--init-from {init_from}: that model trained or tuned on {len(leaked)} images that "
            f"are in this run's test split (e.g. {', '.join(leaked[:3])}). Start from it only "
            f"with its split: --split {run / 'split.csv'}."
        )
    return model


def build_core(config: TrainConfig, num_classes: int, metadata_size: int, weights: str | None):
    from trainer.model import ModelSpec, build_model

    spec = ModelSpec(
        num_classes=num_classes,
        image_size=config.image_size,
        backbone=config.backbone,
        weights=weights,
        metadata_size=metadata_size if config.use_metadata else None,
        meta_units=config.meta_units,
        head_units=config.head_units,
        dropout=config.dropout,
    )
    try:
        return build_model(spec)
    except ValueError as exc:
        raise ModelError(str(exc)) from None
    except FileNotFoundError as exc:
        raise ModelError(
            f"{exc}. Pass --weights PATH to a local .h5 file, or --weights none."
        ) from None
    except Exception as exc:  # a failed ImageNet download surfaces as many kinds of errors
        if weights == "imagenet":
            raise ModelError(
                f"Could not get the ImageNet weights for {config.backbone} ({type(exc).__name__}: "
                f"{exc}). Offline, pass --weights PATH to a local weights file (for MobileNetV2: "
                "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5), or --weights "
                "none to start from random weights."
            ) from None
        raise


def build_training_model(core, config: TrainConfig, encoding):
    """``Model(inputs, core(augment(image), MetadataDropout(metadata)))``: what ``fit`` trains. The
    augmentation and the dropout are identity at inference; only ``core`` is saved."""
    import keras

    from trainer.augment import MetadataDropout, build_augmentation

    h, w = core.inputs[0].shape[1:3]
    image = keras.Input((h, w, 3), name="image", dtype="float32")
    x = build_augmentation(config.augment_config())(image)
    inputs = {"image": image}
    if config.use_metadata:
        meta = keras.Input((core.inputs[1].shape[1],), name="metadata", dtype="float32")
        inputs["metadata"] = meta
        m = MetadataDropout.from_encoding(
            encoding, config.meta_dropout, seed=config.seed + 5, name="metadata_dropout"
        )(meta)
        out = core([x, m])
    else:
        out = core([x])
    return keras.Model(inputs, out, name="training_wrapper")


def _targets(config: TrainConfig, data: Any, train_idx, val_idx, test_idx, k: int, progress: bool):
    """Targets aligned with the data rows: one-hot, or ``[one-hot, teacher logits]`` when
    distilling (train rows only; the others are never read)."""
    onehot = np.eye(k, dtype=np.float32)[np.asarray(data.labels)]
    if not config.teacher:
        return onehot
    from trainer.distill import distill_targets, teacher_logits_for

    logits = teacher_logits_for(
        config.teacher, data, config.run_dir / "teacher_logits.npy", progress=progress
    )
    targets = np.zeros((len(data), 2 * k), np.float32)
    targets[train_idx] = distill_targets(data.labels[train_idx], logits[train_idx], k)
    return targets


def _make_loss(config: TrainConfig):
    from trainer.losses import make_loss

    if config.teacher:
        from trainer.distill import DistillationLoss

        return DistillationLoss(alpha=config.distill_alpha, temperature=config.distill_temperature)
    return make_loss(config.loss, config.label_smoothing, config.focal_gamma)


def prepare_config_data(config: TrainConfig, *, progress: bool = True, **split: Any) -> Any:
    """``trainer.data.prepare`` with a TrainConfig's data settings; ``split`` is ``split_path=``
    (an existing split file) or ``split_out=`` (where to save a new one)."""
    from trainer.data import prepare

    return prepare(
        config.data,
        fmt=config.format,
        image_size=config.image_size,
        cache_dir=config.cache_dir,
        seed=config.seed,
        classes=config.classes,
        limit=config.limit,
        progress=progress,
        **split,
    )


def train(config: TrainConfig, progress: bool = True, callbacks: list | None = None) -> TrainResult:
    """Train (or resume) the run described by ``config``; see the module docstring. ``callbacks``
    are appended to each stage's callbacks (tests use them to interrupt a run)."""
    t_start = time.time()
    try:
        config.validate()
    except ValueError as exc:
        raise ModelError(str(exc)) from None
    run_dir = config.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    if not config.resume:
        _start_fresh(run_dir)
    old = _check_compatible(run_dir, config)

    # -- data and split ------------------------------------------------------------------------

    split_file = run_dir / "split.csv"
    kwargs: dict[str, Any] = {}
    if config.split:
        kwargs["split_path"] = _copy_split(Path(config.split), run_dir)
    elif split_file.is_file():  # resuming: the split this run was started with
        kwargs["split_path"] = split_file
    else:
        kwargs["split_out"] = split_file
    data = prepare_config_data(config, progress=progress, **kwargs)
    train_idx = np.asarray(data.indices("train"), np.int64)
    val_idx = np.asarray(data.indices("val"), np.int64)
    test_idx = np.asarray(data.indices("test"), np.int64)
    if np.intersect1d(np.union1d(train_idx, val_idx), test_idx).size:  # not `assert`: -O keeps it
        raise AssertionError("test-split rows are in the training or validation split")
    if len(train_idx) == 0 or len(val_idx) == 0:
        raise ModelError("The split has no training or no validation images: nothing to train on.")
    k = len(data.classes)
    _write_config(run_dir, config, data, split_file, old)  # before training: a crash keeps it

    # -- model ---------------------------------------------------------------------------------
    import keras

    from trainer.losses import accuracy_metric, class_weights, sample_weights
    from trainer.model import set_backbone_trainable

    keras.utils.set_random_seed(config.seed)
    cbm = _callbacks_module()
    best_path = run_dir / "model.keras"
    have_best = best_path.is_file()
    init_model = (
        None
        if have_best or not config.init_from
        else check_init_run(config.init_from, config, data)
    )
    core = build_core(
        config,
        k,
        data.metadata.shape[1],
        None if have_best or init_model else config.model_weights,
    )
    if have_best:  # resuming: start from the best so far (a stage backup, if any, overrides it)
        core.load_weights(best_path)
    elif init_model is not None:  # warm start from an earlier run (checked above)
        core.load_weights(init_model)
        _say(progress, f"starting from the weights of {init_model}")
    model = build_training_model(core, config, data.encoding)

    cw = class_weights(data.labels[train_idx], k, config.class_weights)
    weights = np.zeros(len(data), np.float32)
    weights[train_idx] = sample_weights(data.labels[train_idx], cw)
    targets = _targets(config, data, train_idx, val_idx, test_idx, k, progress)
    read = _guarded_reader(data, test_idx)
    val_metrics = cbm.ValMetrics(
        core,
        read,
        val_idx,
        data.labels[val_idx],
        k,
        max(2 * config.batch_size, 32),
        config.use_metadata,
    )
    _say(
        progress,
        f"classes: {', '.join(data.classes)}; train {len(train_idx)}, val "
        f"{len(val_idx)} images (test {len(test_idx)}: not used here)",
    )
    _say(
        progress,
        "class weights: " + ", ".join(f"{c} {cw[i]:.3g}" for i, c in enumerate(data.classes)),
    )

    verbose = (1 if sys.stdout.isatty() else 2) if progress else 0
    log_path = run_dir / "train_log.csv"
    stages: dict[int, dict[str, Any]] = {}
    plan = (
        (1, config.epochs_frozen, 0, config.lr),
        (2, config.epochs_finetune, config.unfreeze, config.lr_finetune),
    )
    for stage, epochs, unfreeze, lr in plan:
        marker = run_dir / f"stage{stage}.done.json"
        if marker.is_file():
            _say(progress, f"stage {stage}: already done ({marker.name}), skipped")
            stages[stage] = {"status": "skipped", **(_read_json(marker) or {})}
            continue
        if epochs == 0:
            atomic_save_json(marker, {"epochs": 0, "time": _now()})
            stages[stage] = {"status": "trained", "epochs": 0}
            continue
        backup_dir = run_dir / "backup" / f"stage{stage}"
        resumed_from = _backup_epoch(backup_dir)
        log = _read_log(log_path)
        # drop rows of epochs the backup does not hold (they will be redone)
        kept = [r for r in log if r["stage"] != stage or r["epoch"] <= resumed_from]
        if len(kept) != len(log):
            _write_log(log_path, kept)
        prior = [r["val_bma"] for r in kept if r["stage"] == stage]
        trainable = set_backbone_trainable(core, unfreeze)
        model.compile(
            optimizer=keras.optimizers.Adam(lr),
            loss=_make_loss(config),
            metrics=[accuracy_metric(k)],
            jit_compile=False,  # XLA is ~10x slower on this CPU (DESIGN sec. 2)
        )
        what = "backbone frozen" if unfreeze == 0 else f"{trainable} backbone layers trainable"
        _say(
            progress,
            f"stage {stage}: {epochs} epochs, {what}, lr {lr:g}"
            + (f"; resuming after epoch {resumed_from}" if resumed_from else ""),
        )
        ds = make_train_dataset(
            data,
            train_idx,
            targets,
            weights,
            config.batch_size,
            seed=config.seed * 1000 + stage * 100 + resumed_from,
            use_metadata=config.use_metadata,
            forbidden=test_idx,
        )
        epoch_log = cbm.EpochLog(log_path, stage)
        stage_callbacks = [
            val_metrics,  # first: the others read val_bma from the logs
            cbm.BestCoreCheckpoint(core, run_dir, stage),
            epoch_log,
            keras.callbacks.TerminateOnNaN(),
            cbm.StageEarlyStopping(
                prior,
                monitor="val_bma",
                mode="max",
                patience=config.patience,
                restore_best_weights=True,
                verbose=0,
            ),
            cbm.StageReduceLR(
                prior,
                monitor="val_bma",
                mode="max",
                factor=0.5,
                patience=max(1, config.patience // 2),
                min_lr=1e-7,
                verbose=1 if progress else 0,
            ),
            keras.callbacks.BackupAndRestore(str(backup_dir)),  # after the log: see _read_log use
            *(callbacks or []),
        ]
        t0 = time.time()
        model.fit(ds, epochs=epochs, callbacks=stage_callbacks, verbose=verbose, shuffle=False)
        bad = [r["epoch"] for r in epoch_log.rows if not np.isfinite(r.get("loss") or np.nan)]
        if bad:  # TerminateOnNaN stopped it: not done, and its backup holds broken weights
            shutil.rmtree(backup_dir, ignore_errors=True)
            raise ModelError(
                f"Training diverged in stage {stage} (loss not finite in epoch {bad[0]}). "
                "Lower the learning rate (--lr / --lr-finetune) and re-run the same command with "
                "the new values and --fresh."
            )
        if best_path.is_file():  # continue from / end with the best weights of all epochs so far
            core.load_weights(best_path)
        info = {
            "epochs": resumed_from + len(epoch_log.rows),
            "epochs_this_call": len(epoch_log.rows),
            "resumed_from": resumed_from,
            "seconds_this_call": round(time.time() - t0, 1),
            "time": _now(),
        }
        atomic_save_json(marker, info)
        shutil.rmtree(backup_dir, ignore_errors=True)
        with contextlib.suppress(OSError):
            backup_dir.parent.rmdir()  # only when empty
        stages[stage] = {"status": "resumed" if resumed_from else "trained", **info}

    # -- summary -------------------------------------------------------------------------------
    history = _read_log(log_path)
    best = _read_json(run_dir / "best.json") or {}
    seconds = time.time() - t_start
    result = TrainResult(
        run_dir=run_dir,
        model_path=best_path,
        classes=tuple(data.classes),
        best_val_bma=best.get("val_bma"),
        best_stage=best.get("stage"),
        best_epoch=best.get("epoch"),
        stages=stages,
        seconds=round(seconds, 1),
        history=history,
        model=core,
    )
    atomic_save_json(run_dir / "train_summary.json", result.to_dict())
    if progress:
        epoch_s = [r["seconds"] for r in history if r.get("seconds")]
        bma = "n/a" if result.best_val_bma is None else f"{result.best_val_bma:.4f}"
        print(
            f"\nbest: stage {result.best_stage} epoch {result.best_epoch}, val BMA {bma}; "
            f"{len(history)} epochs logged, median {np.median(epoch_s) if epoch_s else 0:.1f} s/epoch; "
            f"this call {_fmt_seconds(seconds)}\nmodel: {best_path}\nnext: python -m trainer "
            f"evaluate {run_dir}",
            flush=True,
        )
    return result


# --------------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = TrainConfig(data="", run="")
    a = parser.add_argument
    g = parser.add_argument_group("data")
    g.add_argument("--data", required=True, help="data set folder (HAM10000, ISIC 2019, ...)")
    g.add_argument("--format", default=d.format, help="data set format (default: auto-detect)")
    g.add_argument("--split", default=None, help="split file to use (default: make one in the run)")
    g.add_argument(
        "--classes",
        default=None,
        help="comma-separated class codes to train on (default: all present)",
    )
    g.add_argument(
        "--image-size", type=int, default=d.image_size, help="square input size in pixels"
    )
    g.add_argument("--cache-dir", default=None, help="decoded-image cache folder")
    g.add_argument(
        "--limit",
        type=int,
        default=None,
        help="use about N images (whole lesions, classes in proportion): smoke runs",
    )
    a("--run", required=True, help="run folder, e.g. runs/NAME (created; re-run to resume)")
    m = parser.add_argument_group("model")
    m.add_argument("--backbone", default=d.backbone, help="MobileNetV2, EfficientNetB0..B4, ...")
    m.add_argument(
        "--weights", default=d.weights, help="backbone start: imagenet, a local .h5 file, or none"
    )
    m.add_argument(
        "--no-metadata",
        dest="use_metadata",
        action="store_false",
        help="image-only model (no age/sex/site input)",
    )
    m.add_argument("--dropout", type=float, default=d.dropout, help="head dropout")
    m.add_argument("--head-units", type=int, default=d.head_units, help="head dense units")
    m.add_argument("--meta-units", type=int, default=d.meta_units, help="metadata branch units")
    t = parser.add_argument_group("training")
    t.add_argument(
        "--epochs-frozen",
        type=int,
        default=d.epochs_frozen,
        help="stage 1 epochs (backbone frozen)",
    )
    t.add_argument(
        "--epochs-finetune",
        type=int,
        default=d.epochs_finetune,
        help="stage 2 epochs (top backbone layers trainable)",
    )
    t.add_argument(
        "--unfreeze",
        type=int,
        default=d.unfreeze,
        help="backbone layers trainable in stage 2 (-1: all; BatchNorm stays frozen)",
    )
    t.add_argument(
        "--init-from",
        default=None,
        metavar="RUN",
        help="start from an earlier run's weights (its folder or model.keras) instead of "
        "--weights; it must share this run's shape and never have seen its test split",
    )
    t.add_argument("--lr", type=float, default=d.lr, help="stage 1 learning rate (Adam)")
    t.add_argument("--lr-finetune", type=float, default=d.lr_finetune, help="stage 2 learning rate")
    t.add_argument("--batch-size", type=int, default=d.batch_size)
    t.add_argument(
        "--meta-dropout",
        type=float,
        default=d.meta_dropout,
        help="probability of hiding each metadata field in training",
    )
    t.add_argument("--loss", choices=("ce", "focal"), default=d.loss)
    t.add_argument("--focal-gamma", type=float, default=d.focal_gamma)
    t.add_argument(
        "--class-weights",
        choices=("balanced", "sqrt", "none"),
        default=d.class_weights,
        help="per-class loss weights (passed to fit as sample weights)",
    )
    t.add_argument("--label-smoothing", type=float, default=d.label_smoothing)
    t.add_argument(
        "--augment",
        choices=("none", "basic", "strong"),
        default=d.augment,
        help="augmentation preset (strong adds resolution and blur robustness)",
    )
    t.add_argument(
        "--aug-resolution",
        type=float,
        default=None,
        metavar="P",
        help="probability of a random down-then-up resize (overrides the preset)",
    )
    t.add_argument(
        "--aug-blur",
        type=float,
        default=None,
        metavar="P",
        help="probability of a random Gaussian blur (overrides the preset)",
    )
    t.add_argument(
        "--patience",
        type=int,
        default=d.patience,
        help="epochs without a better val BMA before a stage stops",
    )
    t.add_argument("--seed", type=int, default=d.seed)
    k = parser.add_argument_group("distillation")
    k.add_argument("--teacher", default=None, help="teacher: a .keras model of ours, or sklesion")
    k.add_argument("--distill-temperature", type=float, default=d.distill_temperature)
    k.add_argument(
        "--distill-alpha",
        type=float,
        default=d.distill_alpha,
        help="weight of the hard-label loss (1: no distillation)",
    )
    r = parser.add_mutually_exclusive_group()
    r.add_argument(
        "--resume",
        dest="resume",
        action="store_true",
        default=True,
        help="continue the run in --run if there is one (default)",
    )
    r.add_argument(
        "--fresh",
        dest="resume",
        action="store_false",
        help="discard the training state in --run and start over",
    )
    a("--quiet", action="store_true", help="no progress output")


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    values = {f.name: getattr(args, f.name) for f in fields(TrainConfig) if hasattr(args, f.name)}
    if isinstance(values.get("classes"), str):
        values["classes"] = [c.strip() for c in values["classes"].split(",") if c.strip()]
    return TrainConfig(**values)


def run(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    train(config, progress=not getattr(args, "quiet", False))
    return 0
