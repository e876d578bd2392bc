"""The inference engine: one ONNX model file, checked, and ``predict`` -> :class:`Prediction`.

onnxruntime + numpy (+ OpenCV for heatmap resizing) only: never TensorFlow, never the ``onnx``
package. Loading a model file checks, in this order, that it is readable, that onnxruntime accepts
it, that it carries a LesionLens model card, that its graph is the one the card was written for
(the integrity digest of :mod:`desktop_app.core.onnx_digest`) and that its inputs and outputs are
the ones the card describes. Every failure is a :class:`ModelError` written for the clinician.

The road through it is the same for the single-case view, the batch and the CLI::

    image (uint8 RGB or LoadedImage) -> imaging.preprocess(card.preprocess)
    metadata (PatientMetadata or None = unknown) -> card.metadata_encoding
    -> session.run -> logits, heatmaps, features
    -> risk.apply_temperature(logits, card.temperature) -> calibrated probabilities
    -> risk.malignancy_risk(card's malignant classes) -> risk vs card.threshold

A :class:`Prediction` carries no patient data beyond what the caller passed in (not even that:
only the model's outputs).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import cv2
import numpy as np
import onnxruntime as ort

from desktop_app.core.card import CARD_KEY, ModelCard, card_digest, card_from_json
from desktop_app.core.errors import ModelError
from desktop_app.core.imaging import (
    ANALYSIS_MAX_SIDE,
    LoadedImage,
    batch_preprocess,
    load_image,
)
from desktop_app.core.metadata import UNKNOWN_METADATA, PatientMetadata
from desktop_app.core.onnx_digest import graph_digest
from desktop_app.core.risk import apply_temperature, entropy, malignancy_risk
from desktop_app.core.uncertainty import DEFAULT_MIN_TOP_PROBABILITY, FeatureModel, Flag, assess

__all__ = ["Engine", "ImageInput", "Prediction", "Providers", "heatmap_for"]

Providers = Literal["auto", "cpu", "cuda"]
ImageInput = np.ndarray | LoadedImage

_CUDA = "CUDAExecutionProvider"
_CPU = "CPUExecutionProvider"
_NOT_ONNX = (
    "{name} is not a valid ONNX model: it may be damaged or truncated, or be another kind of file."
)


@dataclass(frozen=True, eq=False)
class Prediction:
    """The model's answer for one image, in the card's class order.

    ``probabilities`` are calibrated (temperature scaling with the card's temperature) and are what
    the clinician sees; ``raw_probabilities`` are the model's own softmax, kept for comparison.
    ``risk`` is the calibrated probability mass of the malignant classes; ``above_threshold`` is
    ``risk >= threshold``. ``heatmaps`` (h, w, K) float32 in [0, 1] is Grad-CAM at the backbone's
    last feature map for every class (use :func:`heatmap_for` to upsample one). ``entropy`` is the
    normalised entropy of the calibrated probabilities (0 certain, 1 uniform).
    """

    codes: tuple[str, ...]
    names: tuple[str, ...]
    probabilities: np.ndarray
    raw_probabilities: np.ndarray
    logits: np.ndarray
    top_code: str
    top_name: str
    risk: float
    threshold: float
    above_threshold: bool
    heatmaps: np.ndarray
    features: np.ndarray | None
    entropy: float
    used_metadata: bool
    flags: tuple[Flag, ...] = ()
    unusual: bool | None = None  # None: this model's card has no feature statistics

    def probability(self, code: str) -> float:
        return float(self.probabilities[self._index(code)])

    def heatmap(self, code: str) -> np.ndarray:
        """The (h, w) feature-map-sized heatmap of one class."""
        return self.heatmaps[..., self._index(code)]

    def _index(self, code: str) -> int:
        try:
            return self.codes.index(code)
        except ValueError:
            raise KeyError(
                f"this model has no class {code!r}; it has {', '.join(self.codes)}"
            ) from None


def heatmap_for(pred: Prediction, code: str, size: tuple[int, int]) -> np.ndarray:
    """One class's heatmap resized (bilinear) to ``size`` = (width, height), the order of
    :attr:`LoadedImage.original_size` and OpenCV. Returns float32 (height, width) in [0, 1].

    The map covers the model's input, i.e. the whole image for the card's "stretch" resize; for
    "center_crop"/"pad" it covers the crop / the padded canvas, which the caller must map back."""
    width, height = (int(v) for v in size)
    if width < 1 or height < 1:
        raise ValueError(f"heatmap size must be positive, got {size!r}")
    small = np.ascontiguousarray(pred.heatmap(code), dtype=np.float32)
    big = cv2.resize(small, (width, height), interpolation=cv2.INTER_LINEAR)
    return np.clip(big, 0.0, 1.0).astype(np.float32, copy=False)


def _display_name(path: str | os.PathLike[str] | None) -> str:
    if path is None:
        return "The model data"
    return f"The model file '{Path(path).name}'"


def _read_model_bytes(path: Path) -> bytes:
    name = path.name
    if path.is_dir():
        raise ModelError(f"'{name}' is a folder, not a model file.")
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ModelError(
            f"The model file '{name}' was not found. It may have been moved, renamed or deleted."
        ) from None
    except PermissionError:
        raise ModelError(f"The model file '{name}' could not be read: permission denied.") from None
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise ModelError(f"The model file '{name}' could not be read ({reason}).") from None
    if not data:
        raise ModelError(f"The model file '{name}' is empty (0 bytes).")
    return data


def _session_options() -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: provider probing is expected to fail on CPU PCs
    return options


def _try_cuda(data: bytes) -> tuple[ort.InferenceSession | None, str]:
    """A session asking for CUDA first. onnxruntime-gpu lists CUDA even where its libraries or a
    GPU are missing, logs an error and quietly runs on CPU: its error log is silenced for this one
    attempt (restored to onnxruntime's default, warnings) and the truth read from the session."""
    ort.set_default_logger_severity(4)
    try:
        return ort.InferenceSession(data, _session_options(), providers=[_CUDA, _CPU]), ""
    except Exception as exc:  # a broken CUDA set-up or a broken model: the CPU attempt tells which
        return None, f"{type(exc).__name__}: {exc}"
    finally:
        ort.set_default_logger_severity(2)


def _make_session(data: bytes, providers: str, name: str) -> tuple[ort.InferenceSession, str, str]:
    """An InferenceSession, the provider it really runs on ("CUDA" or "CPU"), and a note saying
    why CUDA is not used when it was listed (empty otherwise)."""
    choice = str(providers).lower()
    if choice not in ("auto", "cpu", "cuda"):
        raise ValueError(f"providers must be 'auto', 'cpu' or 'cuda', not {providers!r}")
    note = ""
    if choice in ("auto", "cuda") and _CUDA in ort.get_available_providers():
        session, error = _try_cuda(data)
        if session is not None and _CUDA in session.get_providers():
            return session, "CUDA", ""
        note = "CUDA is listed by onnxruntime but could not be used (no GPU or CUDA libraries)"
        if session is not None and choice == "auto":
            return session, "CPU", note  # onnxruntime fell back to CPU by itself: that is fine
        if error and choice == "auto":
            note = f"{note}; {error}"
    elif choice == "cuda":
        note = "this onnxruntime has no CUDA support (install onnxruntime-gpu)"
    if choice == "cuda":
        raise ModelError(
            f"The GPU (CUDA) was requested but is not usable on this computer ({note}); "
            "choose the automatic or CPU setting instead."
        )
    try:
        session = ort.InferenceSession(data, _session_options(), providers=[_CPU])
    except Exception:
        raise ModelError(_NOT_ONNX.format(name=name)) from None
    return session, "CPU", note


def _dim(value: object) -> int | None:
    return value if isinstance(value, int) else None


def _check_io(session: ort.InferenceSession, card: ModelCard, name: str) -> None:
    """The session's inputs and outputs must be exactly what the card describes."""
    problem = f"{name} does not match its model card: "
    inputs = {i.name: i for i in session.get_inputs()}
    want = {card.image_input} | ({card.metadata_input} if card.metadata_input else set())
    if set(inputs) != want:
        raise ModelError(
            problem + f"the model's inputs are {sorted(inputs)}, the card says {sorted(want)}."
        )
    image = inputs[card.image_input]
    shape = list(image.shape)
    spec = card.preprocess
    if (
        len(shape) != 4
        or _dim(shape[3]) != 3
        or _dim(shape[1]) != spec.height
        or _dim(shape[2]) != spec.width
    ):
        raise ModelError(
            problem + f"the model takes images of shape {shape} (batch, height, width, 3), the "
            f"card says {spec.height} x {spec.width} pixels."
        )
    if image.type != "tensor(float)" or spec.dtype != "float32":
        raise ModelError(problem + f"image input type {image.type}, card dtype {spec.dtype}.")
    if card.metadata_input is not None and card.metadata_encoding is not None:
        meta_shape = list(inputs[card.metadata_input].shape)
        size = card.metadata_encoding.size
        if len(meta_shape) != 2 or _dim(meta_shape[1]) != size:
            raise ModelError(
                problem + f"the model's metadata input has shape {meta_shape}, the card's "
                f"encoding has {size} values."
            )
    outputs = {o.name: o for o in session.get_outputs()}
    n_classes = len(card.classes)
    for role in ("logits", "probabilities", "heatmaps"):
        out_name = card.outputs.get(role)
        if out_name not in outputs:
            raise ModelError(problem + f"it has no output {out_name!r} for the {role}.")
        last = _dim(list(outputs[out_name].shape)[-1])
        if last != n_classes:
            raise ModelError(
                problem + f"its {role} have {last} classes, the card lists {n_classes}."
            )
    features = card.outputs.get("features")
    if features and features not in outputs:
        raise ModelError(problem + f"it has no output {features!r} for the features.")


class Engine:
    """A loaded, verified model. Use :meth:`load` (or :meth:`from_bytes`), then :meth:`predict`.

    Attributes: ``card`` (:class:`ModelCard`), ``path`` (None when loaded from bytes), ``sha256``
    (of the whole file, as printed on reports), ``provider`` ("CUDA" or "CPU": what the session
    really runs on), ``provider_note`` (why CUDA is not used although listed; "" otherwise),
    ``session`` (the onnxruntime session; thread-safe for ``run``).
    """

    def __init__(
        self,
        session: ort.InferenceSession,
        card: ModelCard,
        *,
        path: Path | None,
        sha256: str,
        provider: str,
        provider_note: str = "",
    ) -> None:
        self.session = session
        self.card = card
        self.path = path
        self.sha256 = sha256
        self.provider = provider
        self.provider_note = provider_note
        self._output_names = [o.name for o in session.get_outputs()]
        self._malignant = np.array([c in card.malignant_codes for c in card.codes], dtype=bool)
        ood = card.raw.get("ood")
        self._feature_model = FeatureModel.from_card_section(ood)
        self._min_top_probability = float(
            (ood or {}).get("min_top_probability", DEFAULT_MIN_TOP_PROBABILITY)
        )

    # -- loading --------------------------------------------------------------------------------
    @classmethod
    def load(cls, path: str | os.PathLike[str], providers: Providers | str = "auto") -> Engine:
        """Open and verify a LesionLens ONNX model file. Raises ModelError with a readable message."""
        p = Path(path)
        return cls.from_bytes(_read_model_bytes(p), providers=providers, path=p)

    @classmethod
    def from_bytes(
        cls,
        data: bytes,
        providers: Providers | str = "auto",
        path: str | os.PathLike[str] | None = None,
    ) -> Engine:
        """Like :meth:`load` for a model already in memory (the exporter checks before writing)."""
        name = _display_name(path)
        if not data:
            raise ModelError(f"{name} is empty (0 bytes).")
        session, provider, note = _make_session(data, providers, name)
        props = session.get_modelmeta().custom_metadata_map
        if CARD_KEY not in props:
            raise ModelError(
                f"{name} carries no LesionLens model card; "
                "export it with `python -m trainer export`."
            )
        card = card_from_json(props[CARD_KEY])
        try:
            digest = graph_digest(data)
        except ModelError:
            raise ModelError(_NOT_ONNX.format(name=name)) from None
        if digest != card.graph_sha256:
            raise ModelError(
                "The model file has been modified since it was exported (integrity check failed). "
                "Use the original file or export the model again."
            )
        stored = card.raw.get("integrity", {}).get("card_sha256")
        if stored is not None and stored != card_digest(card.raw):
            raise ModelError(
                "The model's card (its calibration, threshold or classes) has been changed since "
                "the model was exported (integrity check failed). Use the original file or "
                "export the model again."
            )
        _check_io(session, card, name)
        return cls(
            session,
            card,
            path=Path(path) if path is not None else None,
            sha256=hashlib.sha256(data).hexdigest(),
            provider=provider,
            provider_note=note,
        )

    def __repr__(self) -> str:
        return f"Engine({self.card.name!r} {self.card.version}, provider={self.provider})"

    # -- running --------------------------------------------------------------------------------
    @property
    def codes(self) -> tuple[str, ...]:
        return self.card.codes

    def run_arrays(
        self, images: np.ndarray, metadata: np.ndarray | None = None
    ) -> dict[str, np.ndarray]:
        """One ``session.run`` on already preprocessed input: images (N,H,W,3) float32 and, for a
        model that uses metadata, encoded metadata (N,D) (None = all unknown). Returns every output
        by name."""
        images = np.ascontiguousarray(images, dtype=np.float32)
        spec = self.card.preprocess
        if images.ndim != 4 or images.shape[1:] != (spec.height, spec.width, 3):
            raise ValueError(
                f"this model takes images of shape (N, {spec.height}, {spec.width}, 3), "
                f"got {images.shape}"
            )
        feed = {self.card.image_input: images}
        encoding = self.card.metadata_encoding
        if self.card.metadata_input is not None and encoding is not None:
            if metadata is None:
                metadata = np.tile(encoding.unknown_vector(), (len(images), 1))
            metadata = np.ascontiguousarray(metadata, dtype=np.float32)
            if metadata.shape != (len(images), encoding.size):
                raise ValueError(
                    f"expected metadata of shape ({len(images)}, {encoding.size}), "
                    f"got {metadata.shape}"
                )
            feed[self.card.metadata_input] = metadata
        values = self.session.run(self._output_names, feed)
        return dict(zip(self._output_names, values, strict=True))

    def predict(
        self,
        images: Sequence[ImageInput],
        metadata: Sequence[PatientMetadata | None] | None = None,
        *,
        batch_size: int = 16,
    ) -> list[Prediction]:
        """Classify images (HxWx3 uint8 RGB arrays or LoadedImage), with one PatientMetadata per
        image (None, or a None entry, = unknown). Metadata is ignored by an image-only model.
        Runs ``batch_size`` images per session call."""
        items = list(images)
        if metadata is not None and len(metadata) != len(items):
            raise ValueError(f"{len(items)} images but {len(metadata)} metadata entries")
        metas = list(metadata) if metadata is not None else [None] * len(items)
        out: list[Prediction] = []
        for start in range(0, len(items), max(1, int(batch_size))):
            chunk = items[start : start + batch_size]
            out.extend(self._predict_batch(chunk, metas[start : start + batch_size]))
        return out

    def predict_one(self, image: ImageInput, metadata: PatientMetadata | None = None) -> Prediction:
        return self.predict([image], [metadata])[0]

    def predict_file(
        self, path: str | os.PathLike[str], metadata: PatientMetadata | None = None
    ) -> Prediction:
        """Decode an image file the way every analysis does (:func:`imaging.load_image` with
        ``max_side=ANALYSIS_MAX_SIDE``; ImageError if unusable), then predict."""
        return self.predict_one(load_image(path, max_side=ANALYSIS_MAX_SIDE), metadata)

    def _predict_batch(
        self, images: list[ImageInput], metas: list[PatientMetadata | None]
    ) -> list[Prediction]:
        if not images:
            return []
        rgb = [im.rgb if isinstance(im, LoadedImage) else im for im in images]
        batch = batch_preprocess(rgb, self.card.preprocess)
        encoding = self.card.metadata_encoding
        meta_vec = None
        if encoding is not None:
            meta_vec = encoding.encode_many(
                [m if m is not None else UNKNOWN_METADATA for m in metas]
            )
        outputs = self.run_arrays(batch, meta_vec)
        names = self.card.outputs
        logits = outputs[names["logits"]]
        raw = outputs[names["probabilities"]].astype(np.float64)
        heatmaps = outputs[names["heatmaps"]].astype(np.float32, copy=False)
        feature_name = names.get("features")
        features = outputs.get(feature_name) if feature_name else None
        probs = apply_temperature(logits, self.card.temperature)
        risks = np.atleast_1d(malignancy_risk(probs, self._malignant))
        ents = np.atleast_1d(entropy(probs))
        codes = self.card.codes
        class_names = tuple(c.name for c in self.card.classes)
        threshold = self.card.threshold
        unusual = None
        if self._feature_model is not None and features is not None:
            unusual = self._feature_model.is_unusual(features)
        malignant = [bool(m) for m in self._malignant]
        preds = []
        for i in range(len(images)):
            top = int(np.argmax(probs[i]))
            risk = float(risks[i])
            is_unusual = None if unusual is None else bool(unusual[i])
            flags = assess(
                probs[i],
                codes,
                class_names,
                malignant,
                risk,
                threshold,
                is_unusual,
                self._min_top_probability,
            )
            preds.append(
                Prediction(
                    codes=codes,
                    names=class_names,
                    probabilities=probs[i],
                    raw_probabilities=raw[i],
                    logits=np.array(logits[i], dtype=np.float32),
                    top_code=codes[top],
                    top_name=class_names[top],
                    risk=risk,
                    threshold=threshold,
                    above_threshold=risk >= threshold,
                    heatmaps=np.array(heatmaps[i]),
                    features=None if features is None else np.array(features[i]),
                    entropy=float(ents[i]),
                    used_metadata=encoding is not None,
                    flags=flags,
                    unusual=is_unusual,
                )
            )
        return preds
