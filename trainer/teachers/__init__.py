"""Teachers for knowledge distillation: frozen models whose logits become soft targets.

A teacher is anything with

- ``teacher_id`` (str): a stable identity for the logits cache; it changes when the model file or
  the adapter's preprocessing changes, and it is known *without* loading the model, so a cache hit
  costs no model load;
- ``classes`` (tuple of our ISIC codes, or None when unknown until the model is loaded): the order
  of the logits the teacher returns;
- ``predict_logits(inputs: TeacherInputs, *, batch_size, progress) -> (len(inputs), K)`` float32
  logits in ``classes`` order.

Two kinds exist: a ``.keras`` model made by our own trainer (:class:`KerasTeacher`) and the ``sklesion``
package's model (:class:`trainer.teachers.sklesion.SklesionTeacher`). :func:`load_teacher` picks one
from a command-line spec.

The test split is kept away from every teacher *by construction*: a teacher only ever receives a
:class:`TeacherInputs`, which holds the rows it may see and refuses (``AssertionError``) to be built
with any row of the test split. TensorFlow / Keras are imported inside functions only.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from desktop_app.core import classes as catalog
from desktop_app.core.errors import ModelError

SKLESION = "sklesion"


# --------------------------------------------------------------------------------------------------
# What a teacher may see
# --------------------------------------------------------------------------------------------------


class TeacherInputs:
    """The rows of a ``PreparedData`` that a teacher is allowed to see (never the test split).

    ``rows`` index ``data.table`` / ``data.images`` / ``data.metadata``. The teacher reads images and
    metadata through this object only, in slices of ``rows`` (``start``/``stop`` are positions in
    ``rows``, not table indices), so the memory-mapped image cache is never copied whole.
    """

    def __init__(self, data: Any, rows: np.ndarray) -> None:
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        test_rows = np.asarray(data.indices("test"), dtype=np.int64)
        split = data.table["split"].to_numpy()
        # A real check, not an `assert` statement: it must survive `python -O`.
        if np.isin(rows, test_rows).any() or (len(rows) and (split[rows] == "test").any()):
            raise AssertionError("a teacher must never see images of the test split")
        self._data = data
        self.rows = rows
        self.table = data.table.iloc[rows].reset_index(drop=True)

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def cached_size(self) -> tuple[int, int] | None:
        """(height, width) of the prepared uint8 image cache, or None when there is none."""
        images = getattr(self._data, "images", None)
        if images is None or getattr(images, "ndim", 0) != 4:
            return None
        return int(images.shape[1]), int(images.shape[2])

    def cached_images(self, start: int, stop: int) -> np.ndarray:
        """uint8 (n, H, W, 3) from the prepared cache (the trainer's own preprocessing)."""
        return np.asarray(self._data.images[self.rows[start:stop]])

    def metadata(self, start: int, stop: int) -> np.ndarray:
        """float32 (n, D): our encoded metadata vectors (``data.encoding``)."""
        return np.asarray(self._data.metadata[self.rows[start:stop]], dtype=np.float32)

    @property
    def cached_resize(self) -> str | None:
        """The resize mode ("stretch", "center_crop", "pad") of the prepared cache, if known."""
        return getattr(getattr(self._data, "spec", None), "resize", None)

    @property
    def metadata_size(self) -> int:
        meta = getattr(self._data, "metadata", None)
        return 0 if meta is None else int(np.shape(meta)[1])

    @property
    def encoding(self) -> Any:
        return getattr(self._data, "encoding", None)

    def paths(self, start: int, stop: int) -> list[str]:
        return [str(p) for p in self.table["path"].iloc[start:stop]]

    def batches(self, batch_size: int) -> Iterator[tuple[int, int]]:
        for start in range(0, len(self), batch_size):
            yield start, min(start + batch_size, len(self))


def load_rgb(path: str) -> np.ndarray:
    """Decode one image file exactly as the app does (RGB uint8, EXIF orientation applied)."""
    from desktop_app.core.imaging import load_image

    return load_image(path).rgb


# --------------------------------------------------------------------------------------------------
# The protocol and the factory
# --------------------------------------------------------------------------------------------------


class Teacher(Protocol):
    @property
    def teacher_id(self) -> str: ...

    @property
    def classes(self) -> tuple[str, ...] | None: ...

    def predict_logits(
        self, inputs: TeacherInputs, *, batch_size: int = 32, progress: bool = True
    ) -> np.ndarray: ...


def load_teacher(spec: str) -> Teacher:
    """``"sklesion"`` -> the sklesion package's model; anything else -> a path to a ``.keras`` model
    made by our trainer. Nothing heavy happens here: models load on first prediction."""
    if str(spec).strip().lower() == SKLESION:
        from trainer.teachers.sklesion import SklesionTeacher

        return SklesionTeacher()
    return KerasTeacher(spec)


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def progress_bar(total: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="img", disable=not enabled, dynamic_ncols=True)


def normalize_codes(labels: Any) -> tuple[str, ...]:
    """Class names/codes as our ISIC codes (``akiec`` -> ``AK``); ModelError if one is unknown."""
    try:
        return tuple(catalog.normalize_label(str(c)) for c in labels)
    except catalog.UnknownClassError as exc:
        raise ModelError(f"The teacher's classes cannot be matched to ours: {exc}") from None


# --------------------------------------------------------------------------------------------------
# Our own .keras models
# --------------------------------------------------------------------------------------------------


def load_keras_model(path: str) -> Any:
    """Load one of our ``.keras`` models (compile=False). A separate function so tests can count
    the loads."""
    import keras

    from trainer.model import CUSTOM_OBJECTS

    try:
        return keras.saving.load_model(path, custom_objects=CUSTOM_OBJECTS, compile=False)
    except Exception as exc:  # any failure to deserialise means the same to the user
        raise ModelError(
            f"The teacher model '{Path(path).name}' could not be loaded: {exc}"
        ) from exc


class KerasTeacher:
    """A ``.keras`` model made by our trainer: inputs ``image`` (0-255 RGB float32, square) and
    optionally ``metadata`` (our encoding); output logits.

    Its class order is read from ``config.json`` in the same folder (the run folder written by
    ``train``) when there is one; otherwise the model is assumed to use the data's own class order,
    and only if its output width matches. Images come from the prepared cache when its size (and
    resize mode) equal the teacher's, else each file is decoded again and resized to the teacher's
    input size (its run's ``resize`` mode when config.json records one, else the cache's, else
    "stretch"): the teacher then sees what it was trained on.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise ModelError(
                f"Teacher model not found: '{self.path}'. Give 'sklesion' or the path of a .keras "
                "model made by `python -m trainer train` (runs/NAME/model.keras)."
            )
        if self.path.suffix.lower() != ".keras":
            raise ModelError(
                f"The teacher '{self.path.name}' is not a .keras file; export formats such as ONNX "
                "cannot be used as a teacher."
            )
        self._id = f"keras:{self.path.name}:sha256={file_sha256(self.path)}"
        self._classes, self._feature_names, self._resize = self._read_run_config()
        self._model: Any = None

    # -- identity -------------------------------------------------------------------------------
    @property
    def teacher_id(self) -> str:
        return self._id

    @property
    def classes(self) -> tuple[str, ...] | None:
        return self._classes

    def _read_run_config(self) -> tuple[tuple[str, ...] | None, list[str] | None, str | None]:
        cfg_path = self.path.parent / "config.json"
        try:
            cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None, None, None
        if not isinstance(cfg, dict):
            return None, None, None
        codes = cfg.get("classes")
        classes = normalize_codes(codes) if codes else None
        names = None
        for key in ("metadata_encoding", "encoding"):
            enc = cfg.get(key)
            if isinstance(enc, dict) and enc.get("feature_names"):
                names = list(enc["feature_names"])
                break
        resize = cfg.get("resize")
        if resize is None and isinstance(cfg.get("preprocess"), dict):
            resize = cfg["preprocess"].get("resize")
        return classes, names, resize if isinstance(resize, str) else None

    # -- prediction -----------------------------------------------------------------------------
    def _load(self) -> Any:
        if self._model is None:
            self._model = load_keras_model(str(self.path))
        return self._model

    def predict_logits(
        self, inputs: TeacherInputs, *, batch_size: int = 32, progress: bool = True
    ) -> np.ndarray:
        import tensorflow as tf

        model = self._load()
        image_in, meta_in = _find_inputs(model)
        size = tuple(int(d) for d in image_in.shape[1:3])
        if meta_in is not None:
            want = int(meta_in.shape[-1])
            if want != inputs.metadata_size:
                raise ModelError(
                    f"The teacher '{self.path.name}' expects {want} metadata values but the data "
                    f"are encoded with {inputs.metadata_size}: train the teacher with the same "
                    "metadata encoding, or use an image-only teacher."
                )
            enc = inputs.encoding
            if (
                self._feature_names is not None
                and enc is not None
                and list(self._feature_names) != list(enc.feature_names())
            ):
                raise ModelError(
                    f"The teacher '{self.path.name}' was trained with a different metadata "
                    "encoding (other fields or site list) than these data."
                )
        softmax_out = _ends_in_softmax(model)
        order = [t.name for t in model.inputs]

        @tf.function(reduce_retracing=True)
        def infer(x, m):
            feed = {image_in.name: x} if m is None else {image_in.name: x, meta_in.name: m}
            out = model([feed[name] for name in order], training=False)
            return out[0] if isinstance(out, list | tuple) else out

        resize = self._resize or inputs.cached_resize or "stretch"
        use_cache = inputs.cached_size == size and resize == (inputs.cached_resize or "stretch")
        chunks = []
        with progress_bar(len(inputs), f"teacher {self.path.name}", progress) as bar:
            for start, stop in inputs.batches(batch_size):
                if use_cache:
                    x = inputs.cached_images(start, stop)
                else:
                    x = _load_resized(inputs.paths(start, stop), size, resize)
                m = inputs.metadata(start, stop) if meta_in is not None else None
                out = infer(
                    tf.constant(x, tf.float32), None if m is None else tf.constant(m, tf.float32)
                ).numpy()
                chunks.append(out)
                bar.update(stop - start)
        out = np.concatenate(chunks) if chunks else np.zeros((0, 0), np.float32)
        if softmax_out:  # a foreign model that outputs probabilities: back to logits
            out = np.log(np.clip(out, 1e-12, 1.0))
        return out.astype(np.float32)


def _find_inputs(model: Any) -> tuple[Any, Any]:
    """(image input, metadata input or None): by our names, else by rank."""
    image = meta = None
    for t in model.inputs:
        name = t.name.lower()
        if len(t.shape) == 4 and (image is None or name.startswith("image")):
            image = t
        elif len(t.shape) == 2 and (meta is None or "metadata" in name):
            meta = t
    if image is None or len(model.inputs) > 2:
        raise ModelError(
            "The teacher model must take an image (and optionally a metadata vector) as input."
        )
    if image.shape[1] is None or image.shape[2] is None:
        raise ModelError("The teacher model's image input must have a fixed size.")
    return image, meta


def _ends_in_softmax(model: Any) -> bool:
    try:
        layer = model.layers[-1]
        act = getattr(layer, "activation", None)
        return getattr(act, "__name__", "") == "softmax" or type(layer).__name__ == "Softmax"
    except (AttributeError, IndexError):
        return False


def _load_resized(paths: list[str], size: tuple[int, int], resize: str) -> np.ndarray:
    from desktop_app.core.imaging import PreprocessSpec, resize_uint8

    spec = PreprocessSpec(height=size[0], width=size[1], resize=resize)
    return np.stack([resize_uint8(load_rgb(p), spec) for p in paths])
