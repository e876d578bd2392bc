"""Grad-CAM for every class as a plain forward graph, plus the GradientTape reference it is checked on.

tf2onnx has no converters for TensorFlow's gradient ops (DESIGN.md section 2), so the exported
model cannot run a GradientTape. For our head the gradient of a class logit with respect to
the backbone's last feature map has a closed form::

    A        = backbone output                      (N, h, w, C)
    pooled   = GAP(A)                               (N, C)            'pool'
    h1       = relu(W1 . [pooled, meta_emb] + b1)   (N, U)            'head_dense' (fused by 'fusion')
    logits   = W2 . dropout(h1) + b2                (N, K)            'logits' (dropout = identity)

    d logit_k / d A[n, y, x, c] = 1/(h*w) * sum_j W1_img[c, j] * 1[h1[n, j] > 0] * W2[j, k]

which does not depend on (y, x): it *is* the Grad-CAM weight ``alpha[n, c, k]`` (the spatial mean of
the gradient). ``W1_img`` are the first C rows of W1 (the image part of the ``fusion`` concat; all of
W1 for an image-only model). The heatmap is ``relu(sum_c A[..., c] * alpha[n, c, k])`` scaled by its
maximum to [0, 1]. This costs two small matrix products, not a second pass through the backbone,
and converts with a dynamic batch.

The formula is only right for exactly this head, so :func:`check_head` validates the layer graph
first and refuses anything else loudly: a changed head must fail, never give wrong heatmaps.
:func:`gradcam_tape` computes the same maps with ``tf.GradientTape``; the export compares both.

Like ``trainer/model.py`` this module imports Keras at module level (its layer subclasses Keras'
Layer); only steps that already need Keras import it (``trainer.export`` does so inside functions).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import keras
import numpy as np
from keras import layers

from desktop_app.core.errors import ModelError

OUTPUT_NAMES = ("logits", "probabilities", "heatmaps", "features")
EPSILON = 1e-8

# Layers a supported core model may contain; anything else means the head changed.
_REQUIRED = ("image", "preprocess", "backbone", "pool", "head_dense", "head_dropout", "logits")
_METADATA_LAYERS = ("metadata", "meta_dense", "fusion")


@dataclass(frozen=True)
class HeadInfo:
    """What :func:`check_head` found: the tensors the closed form needs and the layer sizes."""

    feature_map: Any  # KerasTensor (N, h, w, C): the backbone output in the core graph
    pooled: Any  # KerasTensor (N, C)
    hidden: Any  # KerasTensor (N, U): relu(head_dense)
    logits: Any  # KerasTensor (N, K)
    map_size: tuple[int, int]
    channels: int
    units: int
    num_classes: int
    uses_metadata: bool


def _fail(problem: str) -> ModelError:
    return ModelError(
        "Cannot build the exported model's Grad-CAM heatmaps: "
        f"{problem}. The closed-form Grad-CAM in trainer/gradcam.py only knows the head built by "
        "trainer.model.build_model (pool -> [fusion with meta_dense] -> head_dense (relu) -> "
        "head_dropout -> logits); update it together with the head."
    )


def _layer(core: keras.Model, name: str) -> keras.layers.Layer:
    try:
        return core.get_layer(name)
    except ValueError:
        raise _fail(f"the model has no layer named {name!r}") from None


def _node(layer: keras.layers.Layer) -> Any:
    nodes = getattr(layer, "_inbound_nodes", [])
    if len(nodes) != 1:
        raise _fail(f"layer {layer.name!r} is used {len(nodes)} times (expected once)")
    return nodes[0]


def _inputs_of(layer: keras.layers.Layer) -> list[Any]:
    return list(_node(layer).input_tensors)


def _output_of(layer: keras.layers.Layer) -> Any:
    outputs = list(_node(layer).output_tensors)
    if len(outputs) != 1:
        raise _fail(f"layer {layer.name!r} has {len(outputs)} outputs (expected one)")
    return outputs[0]


def _reads(layer: keras.layers.Layer, *sources: keras.layers.Layer) -> bool:
    """True when ``layer`` is called on exactly the outputs of ``sources``, in that order."""
    got = _inputs_of(layer)
    want = [_output_of(s) for s in sources]
    return len(got) == len(want) and all(g is w for g, w in zip(got, want, strict=True))


def _activation_name(layer: keras.layers.Layer) -> str:
    act = getattr(layer, "activation", None)
    return getattr(act, "__name__", str(act))


def check_head(core: keras.Model) -> HeadInfo:
    """Validate that ``core`` has exactly the head the closed form assumes; raise ModelError if not.

    Checks the layer set (nothing added, nothing missing), each layer's type and activation, and
    every connection from the backbone to the single ``logits`` output.
    """
    names = [layer.name for layer in core.layers]
    uses_metadata = any(n in names for n in _METADATA_LAYERS)
    expected = set(_REQUIRED) | (set(_METADATA_LAYERS) if uses_metadata else set())
    missing = sorted(expected - set(names))
    if missing:
        raise _fail(f"layers {missing} are missing")
    extra = sorted(set(names) - expected)
    if extra:
        raise _fail(f"unexpected layers {extra} in the model")
    if len(core.outputs) != 1:
        raise _fail(f"the model has {len(core.outputs)} outputs (expected the logits only)")
    if len(core.inputs) != (2 if uses_metadata else 1):
        raise _fail(f"the model has {len(core.inputs)} inputs")

    image = _layer(core, "image")
    preprocess = _layer(core, "preprocess")
    backbone = _layer(core, "backbone")
    pool = _layer(core, "pool")
    head = _layer(core, "head_dense")
    dropout = _layer(core, "head_dropout")
    logits = _layer(core, "logits")

    if not isinstance(pool, layers.GlobalAveragePooling2D) or getattr(pool, "keepdims", False):
        raise _fail("'pool' is not a GlobalAveragePooling2D without keepdims")
    if getattr(pool, "data_format", "channels_last") != "channels_last":
        raise _fail("'pool' is not channels_last")
    if not isinstance(head, layers.Dense) or _activation_name(head) != "relu":
        raise _fail("'head_dense' is not a Dense layer with a relu activation")
    if not isinstance(dropout, layers.Dropout):
        raise _fail("'head_dropout' is not a Dropout layer")
    if not isinstance(logits, layers.Dense) or _activation_name(logits) != "linear":
        raise _fail("'logits' is not a Dense layer with a linear activation")

    if not _reads(preprocess, image):
        raise _fail("'preprocess' does not read the 'image' input")
    if not _reads(backbone, preprocess):
        raise _fail("'backbone' does not read 'preprocess'")
    if not _reads(pool, backbone):
        raise _fail("'pool' does not read the backbone's output")
    fmap = _output_of(backbone)
    if len(fmap.shape) != 4:
        raise _fail(f"the backbone output has shape {tuple(fmap.shape)} (expected N,h,w,C)")
    _, mh, mw, channels = fmap.shape
    if mh is None or mw is None or channels is None:
        raise _fail("the backbone's feature map has no fixed size")

    if uses_metadata:
        fusion = _layer(core, "fusion")
        meta_dense = _layer(core, "meta_dense")
        if not isinstance(fusion, layers.Concatenate) or fusion.axis not in (-1, 1):
            raise _fail("'fusion' is not a Concatenate on the feature axis")
        if not _reads(meta_dense, _layer(core, "metadata")):
            raise _fail("'meta_dense' does not read the 'metadata' input")
        if not _reads(fusion, pool, meta_dense):
            raise _fail("'fusion' does not concatenate [pool, meta_dense] in that order")
        if not _reads(head, fusion):
            raise _fail("'head_dense' does not read 'fusion'")
    elif not _reads(head, pool):
        raise _fail("'head_dense' does not read 'pool'")
    if not _reads(dropout, head):
        raise _fail("'head_dropout' does not read 'head_dense'")
    if not _reads(logits, dropout):
        raise _fail("'logits' does not read 'head_dropout'")
    if core.outputs[0] is not _output_of(logits):
        raise _fail("the model's output is not the 'logits' layer")

    w1 = head.kernel
    w2 = logits.kernel
    units = int(w1.shape[1])
    fused_width = int(w1.shape[0])
    if fused_width < int(channels) or (not uses_metadata and fused_width != channels):
        raise _fail(f"'head_dense' kernel {tuple(w1.shape)} does not fit {channels} image features")
    if int(w2.shape[0]) != units:
        raise _fail(
            f"'logits' kernel {tuple(w2.shape)} does not follow 'head_dense' ({units} units)"
        )
    return HeadInfo(
        feature_map=fmap,
        pooled=_output_of(pool),
        hidden=_output_of(head),
        logits=_output_of(logits),
        map_size=(int(mh), int(mw)),
        channels=int(channels),
        units=units,
        num_classes=int(w2.shape[1]),
        uses_metadata=uses_metadata,
    )


@keras.saving.register_keras_serializable(package="lesionlens")
class ClosedFormGradCam(layers.Layer):
    """Grad-CAM of every class from the feature map and the head's hidden activations.

    Inputs ``[A (N,h,w,C), h1 (N,U)]``; output ``(N,h,w,K)`` in [0, 1]. The two kernels are the
    core model's own variables (``head_dense`` rows 0..C-1 and ``logits``) when built by
    :func:`build_inference_model`, so nothing is copied; from a config it creates its own.
    """

    def __init__(
        self,
        channels: int,
        units: int,
        num_classes: int,
        fused_width: int | None = None,
        epsilon: float = EPSILON,
        *,
        head_kernel: Any = None,
        logits_kernel: Any = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.channels = int(channels)
        self.units = int(units)
        self.num_classes = int(num_classes)
        self.fused_width = int(fused_width or channels)
        self.epsilon = float(epsilon)
        self._shared = (head_kernel, logits_kernel)

    def build(self, input_shape: Any) -> None:
        head_kernel, logits_kernel = self._shared
        if head_kernel is None or logits_kernel is None:
            head_kernel = self.add_weight(
                shape=(self.fused_width, self.units), name="head_kernel", trainable=False
            )
            logits_kernel = self.add_weight(
                shape=(self.units, self.num_classes), name="logits_kernel", trainable=False
            )
        self.head_kernel = head_kernel
        self.logits_kernel = logits_kernel
        self._shared = (None, None)
        self.built = True

    def call(self, inputs: Any) -> Any:
        ops = keras.ops
        fmap, hidden = inputs
        h, w = int(fmap.shape[1]), int(fmap.shape[2])
        w1 = self.head_kernel[: self.channels]  # (C, U): image rows of the fused kernel
        mask = ops.cast(ops.greater(hidden, 0.0), fmap.dtype)  # relu'(pre) == 1[h1 > 0]
        # alpha[n, c, k] = 1/(h*w) * sum_u W1[c, u] * mask[n, u] * W2[u, k]
        gated = ops.expand_dims(mask, -1) * ops.expand_dims(self.logits_kernel, 0)  # (N, U, K)
        alpha = ops.matmul(w1, gated) / float(h * w)  # (C,U) @ (N,U,K) -> (N, C, K)
        flat = ops.reshape(fmap, (-1, h * w, self.channels))  # (N, hw, C)
        cam = ops.relu(ops.matmul(flat, alpha))  # (N, hw, K)
        peak = ops.max(cam, axis=1, keepdims=True)
        cam = cam / (peak + self.epsilon)
        return ops.reshape(cam, (-1, h, w, self.num_classes))

    def compute_output_shape(self, input_shape: Any) -> tuple:
        fmap_shape = input_shape[0]
        return (fmap_shape[0], fmap_shape[1], fmap_shape[2], self.num_classes)

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "channels": self.channels,
            "units": self.units,
            "num_classes": self.num_classes,
            "fused_width": self.fused_width,
            "epsilon": self.epsilon,
        }


def build_inference_model(core: keras.Model) -> keras.Model:
    """The exported graph: the core model's own layers (same weights, same inputs) with four
    outputs ``logits`` (N,K), ``probabilities`` (N,K), ``heatmaps`` (N,h,w,K), ``features`` (N,C).

    Raises ModelError when the head is not the one the closed-form Grad-CAM is derived for.
    """
    info = check_head(core)
    head = core.get_layer("head_dense")
    logits_layer = core.get_layer("logits")
    heatmaps = ClosedFormGradCam(
        info.channels,
        info.units,
        info.num_classes,
        fused_width=int(head.kernel.shape[0]),
        head_kernel=head.kernel,
        logits_kernel=logits_layer.kernel,
        name="heatmaps",
    )([info.feature_map, info.hidden])
    probabilities = layers.Softmax(name="probabilities")(info.logits)
    features = layers.Identity(name="features")(info.pooled)
    return keras.Model(
        core.inputs,
        {
            "logits": info.logits,
            "probabilities": probabilities,
            "heatmaps": heatmaps,
            "features": features,
        },
        name=f"{core.name}_inference",
    )


def _as_inputs(core: keras.Model, images: np.ndarray, metadata: np.ndarray | None) -> list:
    images = np.asarray(images, dtype=np.float32)
    if len(core.inputs) == 1:
        return [images]
    if metadata is None:
        raise ValueError("this model needs metadata")
    return [images, np.asarray(metadata, dtype=np.float32)]


def gradcam_tape(
    core: keras.Model,
    images: np.ndarray,
    metadata: np.ndarray | None = None,
    class_index: int | None = None,
) -> np.ndarray:
    """Reference Grad-CAM with ``tf.GradientTape``: gradient of each class *logit* with respect to
    the backbone's feature map, weights = spatial mean of the gradient, ReLU, each map scaled by its
    maximum (+1e-8). Returns (N,h,w,K) float32, or (N,h,w,1) for one ``class_index``."""
    import tensorflow as tf

    info = check_head(core)
    probe = keras.Model(core.inputs, [info.feature_map, info.logits])
    inputs = [tf.convert_to_tensor(x) for x in _as_inputs(core, images, metadata)]
    if class_index is not None and not 0 <= int(class_index) < info.num_classes:
        raise ValueError(f"class_index must be in 0..{info.num_classes - 1}, not {class_index}")
    classes = range(info.num_classes) if class_index is None else [int(class_index)]
    maps = []
    with tf.GradientTape(persistent=True) as tape:
        fmap, logits = probe(inputs, training=False)
        targets = {k: logits[:, k] for k in classes}
    for k in classes:
        grads = tape.gradient(targets[k], fmap)  # (N, h, w, C)
        weights = tf.reduce_mean(grads, axis=(1, 2), keepdims=True)
        cam = tf.nn.relu(tf.reduce_sum(fmap * weights, axis=-1))
        cam = cam / (tf.reduce_max(cam, axis=(1, 2), keepdims=True) + EPSILON)
        maps.append(cam.numpy())
    del tape
    return np.stack(maps, axis=-1).astype(np.float32)


def heatmap_correlation(a: np.ndarray, b: np.ndarray, floor: float = 1e-6) -> np.ndarray:
    """Pearson correlation per (n, k) map between two (N,h,w,K) stacks; NaN where both maps are
    (near) zero or constant, i.e. where a correlation means nothing."""
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    n, h, w, k = a.shape
    x = a.transpose(0, 3, 1, 2).reshape(n * k, h * w)
    y = b.transpose(0, 3, 1, 2).reshape(n * k, h * w)
    x = x - x.mean(axis=1, keepdims=True)
    y = y - y.mean(axis=1, keepdims=True)
    sx = np.sqrt((x * x).sum(axis=1))
    sy = np.sqrt((y * y).sum(axis=1))
    out = np.full(n * k, np.nan)
    ok = (sx > floor) & (sy > floor)
    out[ok] = (x[ok] * y[ok]).sum(axis=1) / (sx[ok] * sy[ok])
    # One map varies and the other does not: they disagree completely.
    out[(sx > floor) ^ (sy > floor)] = 0.0
    # Both constant (e.g. a 1x1 feature map) but not both zero: agree iff the values agree.
    flat = (sx <= floor) & (sy <= floor)
    zero = (np.abs(a).reshape(n, -1, k).max(axis=1) <= floor).reshape(-1) & (
        np.abs(b).reshape(n, -1, k).max(axis=1) <= floor
    ).reshape(-1)
    same = np.abs(a - b).reshape(n, -1, k).max(axis=1).reshape(-1) <= 1e-3
    out[flat & ~zero] = np.where(same[flat & ~zero], 1.0, 0.0)
    return out.reshape(n, k)
