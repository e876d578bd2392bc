"""Adapter for the ``sklesion`` package's model (MIT, Elio Pereira; checked against version 0.2.2).

What the wheel holds (read from its files, not guessed):

- ``sklesion/model.keras``: a Keras 3.3.3 functional model, two inputs, one output:
  ``input_layer_2`` (None, 254, 254, 3) float32 and ``input_layer_3`` (None, 10) float32 ->
  ``dense_4`` (None, 7) **softmax probabilities**. The image branch is
  ``Normalization`` (per-channel mean/variance adapted on their training images, mean about
  (194, 139, 144), std about (36, 39, 43)) -> Xception (ImageNet architecture, fine-tuned) -> head.
  So it takes **0-255 RGB floats**; no scaling outside the model. It loads unchanged under
  Keras 3.15 / TensorFlow 2.21 with ``keras.saving.load_model(path, compile=False)``; no custom
  objects are needed (their ``ProbToLabel`` layer is not part of the saved model).
- ``sklesion/model.py`` (imports tensorflow, pandas; never imported here) preprocesses a JPEG with
  ``tf.image.decode_jpeg(channels=3)`` (RGB) then ``tf.image.resize(image, (254, 254))``: bilinear,
  **aspect ratio not kept** (HAM's 200x150 / 600x450 are stretched to a square), values left in 0-255.
- ``sklesion/model_props.pkl`` (pickle; read here only through a restricted unpickler that accepts
  numpy scalars/arrays and nothing else) gives the metadata encoding and class order::

      img_shape [254, 254]; age_max 90.0; age_mean 51.90180032733224
      i_cl_map  {0: akiec, 1: bcc, 2: bkl, 3: df, 4: mel, 5: nv, 6: vasc}
      oh_map.sex {female: [1,0,0], male: [0,1,0], unknown: [0,0,1]}
      oh_map.loc {arm, head-or-neck, leg-or-genital, trunk, unknown} one-hot in that order

  and ``model.py`` concatenates them as ``sex(3) + location(5) + [age/90] + [age_missing]`` = 10
  values, a missing age being replaced by the training mean (51.9 years) before scaling.
- ``cr_test.pkl``: its own test report, 1,511 images with MEL 171, NV 908, BCC 93, AKIEC 43,
  BKL 217, DF 44, VASC 35 (accuracy 0.825, macro recall 0.723): the class counts of the ISIC 2018
  task 3 test set. **The model was therefore trained on HAM10000 (the ISIC 2018 training set),
  including the lesions of our HAM10000 test split.** We never show it our test images, but its
  weights already know them: a student distilled from it, and sklesion itself, must be evaluated on
  data outside HAM10000 for an honest number (say so in the model card).

Our metadata -> sklesion's 10 values:

- sex: female / male / unknown, one-hot as above (no loss).
- age: ``age / 90``; unknown -> ``51.9018 / 90`` with ``age_missing = 1`` (no loss).
- site: our table holds the ISIC *general* site (HAM's ``localization`` was mapped by
  ``desktop_app.core.metadata.HAM10000_LOCALIZATION``). sklesion's five groups are coarser, so the
  map back is lossless except for one value:

  =======================================================  =================
  our site                                                 sklesion location
  =======================================================  =================
  head/neck (HAM face, scalp, ear, neck)                   head-or-neck
  upper extremity (HAM upper extremity, hand)              arm
  lower extremity (HAM lower extremity, foot)              leg-or-genital
  oral/genital (HAM genital)                               leg-or-genital
  anterior / posterior / lateral torso, torso (HAM
  abdomen, chest, back, trunk)                             trunk
  palms/soles (HAM acral, 7 images)                        unknown
  unknown                                                  unknown
  =======================================================  =================

  ``palms/soles`` could be a hand (arm) or a foot (leg): sklesion's code does not say where it put
  HAM's ``acral``, so it is given as unknown rather than guessed. ISIC ``oral`` sites are lumped
  with genital as the ISIC general vocabulary does, then with the leg as sklesion does.

Class order: ``akiec, bcc, bkl, df, mel, nv, vasc`` -> our codes ``AK, BCC, BKL, DF, MEL, NV, VASC``.

Logits: the final ``Dense`` has a softmax activation; the adapter switches it to linear after loading
and so returns the model's true logits (softmax of them equals sklesion's probabilities exactly),
which avoids ``log(0)`` for very confident predictions.

Speed on this 2-core CPU (compiled ``tf.function``): about 95 ms per image at batch 1 and 70 ms at
batch 16, plus ~3 ms to decode and resize a 200x150 JPEG: about 10-11 minutes for HAM10000's
~8,500 train + val images. Hence the offline cache in :mod:`trainer.distill`.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import io
import math
import pickle
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from desktop_app.core.errors import ModelError
from trainer.teachers import TeacherInputs, file_sha256, load_rgb, normalize_codes, progress_bar

ADAPTER_VERSION = 1  # bump when the preprocessing below changes: it invalidates cached logits
IMAGE_SIZE = (254, 254)
AGE_MAX = 90.0
AGE_MEAN = 51.90180032733224
SEXES = ("female", "male", "unknown")
LOCATIONS = ("arm", "head-or-neck", "leg-or-genital", "trunk", "unknown")
SKLESION_CLASSES = ("akiec", "bcc", "bkl", "df", "mel", "nv", "vasc")
CLASSES: tuple[str, ...] = normalize_codes(SKLESION_CLASSES)  # AK, BCC, BKL, DF, MEL, NV, VASC
META_FEATURES = (
    *(f"sex_{s}" for s in SEXES),
    *(f"loc_{loc}" for loc in LOCATIONS),
    "age_over_90",
    "age_missing",
)

# Our ISIC general site (desktop_app.core.metadata.SITE_CHOICES) -> sklesion's location group.
SITE_TO_LOCATION: dict[str, str] = {
    "head/neck": "head-or-neck",
    "upper extremity": "arm",
    "lower extremity": "leg-or-genital",
    "oral/genital": "leg-or-genital",
    "anterior torso": "trunk",
    "posterior torso": "trunk",
    "lateral torso": "trunk",
    "torso": "trunk",
    "palms/soles": "unknown",
    "unknown": "unknown",
}

INSTALL_HINT = (
    "The 'sklesion' teacher needs the sklesion package (MIT, ~80 MB). Install it without its "
    "pinned dependencies, which would replace our TensorFlow: pip install --no-deps sklesion"
)

# What model_props.pkl of sklesion 0.2.2 says; checked at load time so a future release that
# changes its preprocessing is refused instead of being fed the wrong numbers.
EXPECTED_PROPS: dict[str, Any] = {
    "img_shape": list(IMAGE_SIZE),
    "age_max": AGE_MAX,
    "age_mean": AGE_MEAN,
    "i_cl_map": dict(enumerate(SKLESION_CLASSES)),
    "sex": {s: [int(i == j) for j in range(len(SEXES))] for i, s in enumerate(SEXES)},
    "loc": {loc: [int(i == j) for j in range(len(LOCATIONS))] for i, loc in enumerate(LOCATIONS)},
}


# --------------------------------------------------------------------------------------------------
# Finding the package without importing it
# --------------------------------------------------------------------------------------------------


def package_dir() -> Path:
    """The installed ``sklesion`` folder. ``find_spec`` locates it without running its code (its
    ``model.py`` imports TensorFlow/pandas and is written for TF 2.17); ModelError if absent."""
    try:
        spec = importlib.util.find_spec("sklesion")
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(INSTALL_HINT)
    folder = Path(next(iter(spec.submodule_search_locations)))
    if not (folder / "model.keras").is_file():
        raise ModelError(f"The sklesion package at '{folder}' has no model.keras. {INSTALL_HINT}")
    return folder


def package_version() -> str:
    try:
        return importlib.metadata.version("sklesion")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def is_available() -> bool:
    try:
        package_dir()
    except ModelError:
        return False
    return True


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickle sklesion's property files without executing anything but numpy constructors."""

    _ALLOWED: ClassVar[frozenset[tuple[str, str]]] = frozenset(
        {
            ("numpy", "ndarray"),
            ("numpy", "dtype"),
            ("numpy.core.multiarray", "_reconstruct"),
            ("numpy.core.multiarray", "scalar"),
            ("numpy._core.multiarray", "_reconstruct"),
            ("numpy._core.multiarray", "scalar"),
        }
    )

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        import importlib

        # numpy 2 moved numpy.core to numpy._core (the old name still imports, with a warning)
        for candidate in dict.fromkeys((module.replace("numpy.core", "numpy._core"), module)):
            try:
                return getattr(importlib.import_module(candidate), name)
            except (ImportError, AttributeError):
                continue
        raise pickle.UnpicklingError(f"cannot find {module}.{name}")


def read_props(folder: Path) -> dict[str, Any]:
    data = (folder / "model_props.pkl").read_bytes()
    return _NumpyOnlyUnpickler(io.BytesIO(data)).load()


def check_props(props: dict[str, Any]) -> None:
    """ModelError unless the package's preprocessing constants are those this adapter encodes."""
    try:
        seen = {
            "img_shape": [int(v) for v in np.asarray(props["img_shape"]).tolist()],
            "age_max": float(props["age_max"]),
            "age_mean": float(props["age_mean"]),
            "i_cl_map": {int(k): str(v) for k, v in props["i_cl_map"].items()},
            "sex": {k: list(v) for k, v in props["oh_map"]["sex"].items()},
            "loc": {k: list(v) for k, v in props["oh_map"]["loc"].items()},
        }
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelError(f"sklesion's model_props.pkl is not as expected ({exc!r}).") from None
    diff = [
        k for k, v in EXPECTED_PROPS.items() if seen[k] != v and k not in ("age_max", "age_mean")
    ]
    diff += [k for k in ("age_max", "age_mean") if not math.isclose(seen[k], EXPECTED_PROPS[k])]
    if diff:
        raise ModelError(
            f"sklesion {package_version()} encodes its inputs differently from version 0.2.2, for "
            f"which this adapter was written ({', '.join(diff)} changed). Install "
            "sklesion==0.2.2 with --no-deps, or update trainer/teachers/sklesion.py."
        )


# --------------------------------------------------------------------------------------------------
# Encoding
# --------------------------------------------------------------------------------------------------


def encode_metadata(age: Any, sex: Any, site: Any) -> np.ndarray:
    """One patient (our vocabulary: age in years or None/NaN, sex, ISIC general site) -> the 10
    values sklesion was trained on: ``sex(3) + location(5) + [age/90, age_missing]``."""
    from desktop_app.core.metadata import PatientMetadata

    meta = PatientMetadata(age=age, sex=sex, site=site)  # validates and normalises every field
    vec = np.zeros(len(META_FEATURES), dtype=np.float32)
    vec[SEXES.index(meta.sex if meta.sex in SEXES else "unknown")] = 1.0
    vec[len(SEXES) + LOCATIONS.index(SITE_TO_LOCATION[meta.site])] = 1.0
    if meta.age is None:
        vec[-2], vec[-1] = AGE_MEAN / AGE_MAX, 1.0
    else:
        vec[-2] = meta.age / AGE_MAX
    return vec


def encode_table(table: Any) -> np.ndarray:
    """Our unified table's ``age, sex, site`` columns -> (N, 10) float32."""
    if len(table) == 0:
        return np.zeros((0, len(META_FEATURES)), dtype=np.float32)
    return np.stack(
        [
            encode_metadata(a, s, site)
            for a, s, site in zip(table["age"], table["sex"], table["site"], strict=True)
        ]
    )


def resize_images(rgbs: list[np.ndarray]) -> np.ndarray:
    """RGB uint8 images of any size -> (n, 254, 254, 3) float32 0-255, as sklesion's own
    ``tf.image.resize`` (bilinear, aspect ratio not kept) does."""
    import tensorflow as tf

    return np.stack(
        [tf.image.resize(tf.constant(rgb), IMAGE_SIZE, method="bilinear").numpy() for rgb in rgbs]
    ).astype(np.float32)


# --------------------------------------------------------------------------------------------------
# The teacher
# --------------------------------------------------------------------------------------------------


class SklesionTeacher:
    """The sklesion model as a frozen teacher. ``classes`` are our codes in its output order."""

    def __init__(self) -> None:
        self.folder = package_dir()
        check_props(read_props(self.folder))
        self.version = package_version()
        digest = file_sha256(self.folder / "model.keras")
        self._id = f"sklesion=={self.version}:sha256={digest}:adapter={ADAPTER_VERSION}"
        self._model: Any = None
        self._infer: Any = None

    @property
    def teacher_id(self) -> str:
        return self._id

    @property
    def classes(self) -> tuple[str, ...]:
        return CLASSES

    def _load(self) -> Any:
        if self._infer is not None:
            return self._infer
        import keras
        import tensorflow as tf

        path = self.folder / "model.keras"
        try:
            model = keras.saving.load_model(str(path), compile=False)
        except Exception as exc:
            raise ModelError(
                f"sklesion {self.version}'s model could not be loaded with Keras "
                f"{keras.__version__}: {exc}"
            ) from exc
        shapes = [tuple(t.shape) for t in model.inputs]
        if shapes != [(None, *IMAGE_SIZE, 3), (None, len(META_FEATURES))]:
            raise ModelError(f"sklesion's model has unexpected inputs {shapes}.")
        out_layer = model.layers[-1]
        self._probabilities = True
        if (
            isinstance(out_layer, keras.layers.Dense)
            and getattr(out_layer.activation, "__name__", "") == "softmax"
        ):
            # Same weights, linear output: the true logits (softmax of them == its probabilities).
            out_layer.activation = keras.activations.linear
            self._probabilities = False
        self._model = model

        @tf.function(reduce_retracing=True)
        def infer(x, m):
            out = model([x, m], training=False)
            return out[0] if isinstance(out, list | tuple) else out

        self._infer = infer
        return infer

    def _logits(self, images: np.ndarray, meta: np.ndarray) -> np.ndarray:
        import tensorflow as tf

        infer = self._load()
        out = infer(tf.constant(images, tf.float32), tf.constant(meta, tf.float32)).numpy()
        if self._probabilities:
            out = np.log(np.clip(out, 1e-12, 1.0))
        return out.astype(np.float32)

    def predict_logits(
        self, inputs: TeacherInputs, *, batch_size: int = 16, progress: bool = True
    ) -> np.ndarray:
        """Logits (n, 7) in :data:`CLASSES` order. Images are decoded again from their files (as
        sklesion did from its JPEGs) rather than taken from our square cache, whose resize differs."""
        meta = encode_table(inputs.table)
        chunks = []
        with progress_bar(len(inputs), f"teacher sklesion {self.version}", progress) as bar:
            for start, stop in inputs.batches(batch_size):
                images = resize_images([load_rgb(p) for p in inputs.paths(start, stop)])
                chunks.append(self._logits(images, meta[start:stop]))
                bar.update(stop - start)
        if not chunks:
            return np.zeros((0, len(CLASSES)), dtype=np.float32)
        return np.concatenate(chunks)

    def predict_proba(self, rgbs: list[np.ndarray], metas: list[Any] | None = None) -> np.ndarray:
        """Probabilities (n, 7) over :data:`CLASSES` for RGB uint8 images of any size and
        ``PatientMetadata`` (None: unknown). For peer comparison outside the distillation cache."""
        if not rgbs:
            return np.zeros((0, len(CLASSES)), dtype=np.float32)
        if metas is None:
            metas = [None] * len(rgbs)
        meta = np.stack(
            [
                encode_metadata(None, "unknown", "unknown")
                if m is None
                else encode_metadata(m.age, m.sex, m.site)
                for m in metas
            ]
        )
        logits = self._logits(resize_images(rgbs), meta)
        z = logits - logits.max(axis=1, keepdims=True)
        p = np.exp(z)
        return (p / p.sum(axis=1, keepdims=True)).astype(np.float32)
