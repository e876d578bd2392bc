"""On-the-fly augmentation layers and metadata dropout. Training only: never part of the exported model.

The training wrapper built by :mod:`trainer.train` is ``core(augment(image), MetadataDropout(metadata))``;
only ``core`` is saved and exported, so nothing here reaches the app. Every layer is the identity when
``training`` is false (inference, validation, export).

Why our own fused layers rather than a stack of ``keras.layers.Random*``: on this 2-core CPU
(32 x 224 x 224 images) RandomFlip, RandomRotation, RandomZoom and RandomTranslation each resample the
whole batch (~40-80 ms each), and RandomSaturation / RandomHue each round-trip through HSV (~45 ms
each): ~300 ms per batch against a ~400 ms training step. Here one affine resample does flips,
rotation, zoom and translation together (one interpolation, so also less blur), and one per-sample
3x3 colour matrix does brightness, contrast, saturation and hue. Same distributions, a fraction of the
cost. All layers draw their randomness from a seeded ``keras.random.SeedGenerator``.

Dermoscopy has no "up": both flips and the full circle of rotation are label-preserving. Colour moves
moderately (dermoscopes, lighting and cameras differ) but not so far that a blue-white veil or a red
vascular pattern changes its meaning. ``RandomResolution`` and ``RandomBlur`` prepare a model trained
on HAM10000's 200x150 images for what users bring (600x450 to 6000x4000, other optics).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

import keras
import numpy as np
import tensorflow as tf
from keras import layers

PRESETS = ("none", "basic", "strong")


@dataclass(frozen=True)
class AugmentConfig:
    """What to augment. A strength of 0 (or ``flip=False``) turns that part off."""

    flip: bool = True  # horizontal and vertical, each with probability 0.5
    rotation: float = 1.0  # fraction of the full circle: 1.0 -> uniform in [-180, 180] degrees
    zoom: float = 0.15  # scale in [1 - zoom, 1 + zoom]
    translate: float = 0.05  # shift up to this fraction of the side, each axis
    brightness: float = 0.1  # add up to +-brightness * 255
    contrast: float = 0.15  # scale around the image mean by [1 - c, 1 + c]
    saturation: float = 0.15  # scale chroma by [1 - s, 1 + s]
    hue: float = 0.02  # rotate hue by up to +-hue of the full circle (0.02 -> 7.2 degrees)
    resolution_p: float = 0.0  # probability of a down-then-up resize
    resolution_min: float = 0.4  # smallest down-scale factor (uniform in [min, 1])
    blur_p: float = 0.0  # probability of a Gaussian blur
    blur_sigma: float = 1.5  # sigma uniform in [0, blur_sigma] pixels
    seed: int | None = None

    @classmethod
    def preset(cls, name: str, seed: int | None = None, **overrides: Any) -> AugmentConfig:
        """``none``: nothing; ``basic``: geometry + moderate colour; ``strong``: a little more colour
        plus resolution and blur robustness."""
        if name == "none":
            cfg = cls(
                flip=False,
                rotation=0.0,
                zoom=0.0,
                translate=0.0,
                brightness=0.0,
                contrast=0.0,
                saturation=0.0,
                hue=0.0,
            )
        elif name == "basic":
            cfg = cls()
        elif name == "strong":
            cfg = cls(
                brightness=0.15,
                contrast=0.25,
                saturation=0.25,
                hue=0.03,
                resolution_p=0.3,
                blur_p=0.3,
            )
        else:
            raise ValueError(
                f"unknown augmentation preset {name!r}; choose from {', '.join(PRESETS)}"
            )
        return replace(cfg, seed=seed, **{k: v for k, v in overrides.items() if v is not None})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AugmentConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    @property
    def is_identity(self) -> bool:
        return not (
            self.flip
            or self.rotation
            or self.zoom
            or self.translate
            or self.brightness
            or self.contrast
            or self.saturation
            or self.hue
            or self.resolution_p
            or self.blur_p
        )


def _sub_seed(seed: int | None, k: int) -> int | None:
    return None if seed is None else int(seed) * 7919 + k


def _nhwc(x: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    shape = tf.shape(x)
    return shape[0], shape[1], shape[2]


def _apply_to_some(images: tf.Tensor, apply: tf.Tensor, fn, *per_image: tf.Tensor) -> tf.Tensor:
    """``fn`` on the images where ``apply`` is true only (the others are not computed at all), put
    back in place. ``per_image`` tensors (first axis = batch) are gathered alongside."""

    def some():
        idx = tf.where(apply)  # (m, 1) int64
        out = fn(tf.gather_nd(images, idx), *(tf.gather_nd(t, idx) for t in per_image))
        return tf.tensor_scatter_nd_update(images, idx, out)

    out = tf.cond(tf.reduce_any(apply), some, lambda: tf.identity(images))
    return tf.ensure_shape(out, images.shape)


@keras.saving.register_keras_serializable(package="lesionlens")
class RandomGeometry(layers.Layer):
    """Flips (both axes), rotation, isotropic zoom and translation as ONE affine resample per image,
    reflecting at the borders. Identity when not training."""

    def __init__(
        self,
        flip: bool = True,
        rotation: float = 1.0,
        zoom: float = 0.15,
        translate: float = 0.05,
        fill_mode: str = "reflect",
        seed: int | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if not 0.0 <= rotation <= 1.0:
            raise ValueError("rotation is a fraction of the full circle, in [0, 1]")
        if not 0.0 <= zoom < 1.0 or not 0.0 <= translate < 1.0:
            raise ValueError("zoom and translate must be in [0, 1)")
        self.flip, self.rotation, self.zoom, self.translate = bool(flip), rotation, zoom, translate
        self.fill_mode, self.seed = fill_mode, seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def _transforms(self, n, h, w):
        u = lambda lo, hi: keras.random.uniform((n,), lo, hi, seed=self.seed_generator)  # noqa: E731
        one = tf.ones((n,), tf.float32)
        sx = sy = one
        if self.flip:
            sx = tf.where(u(0.0, 1.0) < 0.5, -one, one)
            sy = tf.where(u(0.0, 1.0) < 0.5, -one, one)
        theta = u(-math.pi * self.rotation, math.pi * self.rotation) if self.rotation else 0.0 * one
        inv_zoom = 1.0 / u(1.0 - self.zoom, 1.0 + self.zoom) if self.zoom else one
        hf, wf = tf.cast(h, tf.float32), tf.cast(w, tf.float32)
        tx = u(-self.translate, self.translate) * wf if self.translate else 0.0 * one
        ty = u(-self.translate, self.translate) * hf if self.translate else 0.0 * one
        # output pixel p -> input pixel c + A (p - c) + t, with A = R(theta) * (1/zoom) * flip
        cos, sin = tf.cos(theta) * inv_zoom, tf.sin(theta) * inv_zoom
        a00, a01, a10, a11 = cos * sx, -sin * sy, sin * sx, cos * sy
        cx, cy = (wf - 1.0) / 2.0, (hf - 1.0) / 2.0
        b0 = cx + tx - (a00 * cx + a01 * cy)
        b1 = cy + ty - (a10 * cx + a11 * cy)
        zero = 0.0 * one
        return tf.stack([a00, a01, b0, a10, a11, b1, zero, zero], axis=1)

    def call(self, images, training=None):
        if not training or not (self.flip or self.rotation or self.zoom or self.translate):
            return images
        n, h, w = _nhwc(images)
        out = tf.raw_ops.ImageProjectiveTransformV3(
            images=images,
            transforms=self._transforms(n, h, w),
            output_shape=tf.stack([h, w]),
            fill_value=tf.constant(0.0, tf.float32),
            interpolation="BILINEAR",
            fill_mode=self.fill_mode.upper(),
        )
        return tf.ensure_shape(out, images.shape)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {
            **super().get_config(),
            "flip": self.flip,
            "rotation": self.rotation,
            "zoom": self.zoom,
            "translate": self.translate,
            "fill_mode": self.fill_mode,
            "seed": self.seed,
        }


@keras.saving.register_keras_serializable(package="lesionlens")
class RandomColor(layers.Layer):
    """Brightness, contrast, saturation and hue jitter as one per-image affine colour map on 0-255 RGB:
    ``y = c * C (x - mean) + C mean + delta`` with ``C = P + s (R_hue - P)`` (``P`` projects on the grey
    axis, ``R_hue`` rotates about it), clipped to [0, 255]. Identity when not training."""

    def __init__(
        self,
        brightness: float = 0.1,
        contrast: float = 0.15,
        saturation: float = 0.15,
        hue: float = 0.02,
        seed: int | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        for name, v in (
            ("brightness", brightness),
            ("contrast", contrast),
            ("saturation", saturation),
        ):
            if not 0.0 <= v < 1.0:
                raise ValueError(f"{name} must be in [0, 1)")
        if not 0.0 <= hue <= 0.5:
            raise ValueError("hue is a fraction of the full circle, in [0, 0.5]")
        self.brightness, self.contrast, self.saturation, self.hue = (
            brightness,
            contrast,
            saturation,
            hue,
        )
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, images, training=None):
        if not training or not (self.brightness or self.contrast or self.saturation or self.hue):
            return images
        n = tf.shape(images)[0]
        u = lambda lo, hi: keras.random.uniform((n,), lo, hi, seed=self.seed_generator)  # noqa: E731
        c = u(1.0 - self.contrast, 1.0 + self.contrast)
        s = u(1.0 - self.saturation, 1.0 + self.saturation)
        theta = u(-2.0 * math.pi * self.hue, 2.0 * math.pi * self.hue)
        delta = u(-self.brightness, self.brightness) * 255.0
        axis = np.full(3, 1.0 / math.sqrt(3.0), np.float32)
        p = tf.constant(np.outer(axis, axis))  # projection on the grey axis
        k = tf.constant(np.cross(np.eye(3), axis).astype(np.float32))  # [axis]_x
        eye = tf.eye(3)
        cos, sin = tf.cos(theta)[:, None, None], tf.sin(theta)[:, None, None]
        rot = cos * eye + sin * k + (1.0 - cos) * p  # Rodrigues, (n, 3, 3)
        colour = p + s[:, None, None] * (rot - p)  # (n, 3, 3)
        mean = tf.reduce_mean(images, axis=[1, 2])  # (n, 3)
        matrix = c[:, None, None] * colour
        offset = tf.linalg.matvec(colour, mean) * (1.0 - c)[:, None] + delta[:, None]
        # y[n,h,w,:] = matrix[n] @ x[n,h,w,:] + offset[n]
        out = tf.einsum("nhwc,ndc->nhwd", images, matrix) + offset[:, None, None, :]
        return tf.clip_by_value(out, 0.0, 255.0)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {
            **super().get_config(),
            "brightness": self.brightness,
            "contrast": self.contrast,
            "saturation": self.saturation,
            "hue": self.hue,
            "seed": self.seed,
        }


@keras.saving.register_keras_serializable(package="lesionlens")
class RandomResolution(layers.Layer):
    """With probability ``p`` per image, down-scale by a factor in ``[min_factor, max_factor]`` (area
    averaging, as the app shrinks large photos) and scale back up (bilinear, as the app enlarges small
    ones): the image keeps its size and loses detail. One factor is drawn per batch, so the batch is
    resized as one tensor; which images get it is drawn per image. Identity when not training."""

    def __init__(
        self, p: float = 0.3, min_factor: float = 0.4, max_factor: float = 1.0, seed=None, **kwargs
    ):
        super().__init__(**kwargs)
        if not 0.0 <= p <= 1.0:
            raise ValueError("p must be in [0, 1]")
        if not 0.0 < min_factor <= max_factor <= 1.0:
            raise ValueError("need 0 < min_factor <= max_factor <= 1")
        self.p, self.min_factor, self.max_factor, self.seed = p, min_factor, max_factor, seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, images, training=None):
        if not training or self.p <= 0.0:
            return images
        n, h, w = _nhwc(images)
        f = keras.random.uniform((), self.min_factor, self.max_factor, seed=self.seed_generator)
        apply = keras.random.uniform((n,), 0.0, 1.0, seed=self.seed_generator) < self.p
        small_h = tf.maximum(1, tf.cast(tf.round(tf.cast(h, tf.float32) * f), tf.int32))
        small_w = tf.maximum(1, tf.cast(tf.round(tf.cast(w, tf.float32) * f), tf.int32))

        def degrade(sub):
            small = tf.image.resize(sub, tf.stack([small_h, small_w]), method="area")
            back = tf.image.resize(small, tf.stack([h, w]), method="bilinear")
            return tf.clip_by_value(back, 0.0, 255.0)

        return _apply_to_some(images, apply, degrade)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {
            **super().get_config(),
            "p": self.p,
            "min_factor": self.min_factor,
            "max_factor": self.max_factor,
            "seed": self.seed,
        }


def gaussian_blur(images: tf.Tensor, sigma: tf.Tensor, radius: int) -> tf.Tensor:
    """Separable Gaussian blur with a different ``sigma`` (shape ``(n,)``, pixels) for each image,
    reflecting at the borders. The batch is folded into the channels so that one depthwise
    convolution per axis blurs every image with its own kernel; sigma 0 leaves an image unchanged."""
    n, h, w = _nhwc(images)
    c = images.shape[-1] or 3
    t = tf.range(-radius, radius + 1, dtype=tf.float32)
    s = tf.maximum(tf.cast(sigma, tf.float32), 1e-3)[:, None]
    k = tf.exp(-0.5 * tf.square(t[None, :] / s))
    k = k / tf.reduce_sum(k, axis=1, keepdims=True)  # (n, 2r+1)
    k = tf.transpose(tf.repeat(k, c, axis=0))  # (2r+1, n*c), channel-major like the folded input
    y = tf.reshape(tf.transpose(images, [1, 2, 0, 3]), tf.stack([1, h, w, n * c]))
    y = tf.pad(y, [[0, 0], [radius, radius], [radius, radius], [0, 0]], mode="REFLECT")
    size = 2 * radius + 1
    y = tf.nn.depthwise_conv2d(y, tf.reshape(k, [size, 1, -1, 1]), [1, 1, 1, 1], "VALID")
    y = tf.nn.depthwise_conv2d(y, tf.reshape(k, [1, size, -1, 1]), [1, 1, 1, 1], "VALID")
    y = tf.transpose(tf.reshape(y, tf.stack([h, w, n, c])), [2, 0, 1, 3])
    return tf.ensure_shape(y, images.shape)


@keras.saving.register_keras_serializable(package="lesionlens")
class RandomBlur(layers.Layer):
    """With probability ``p`` per image, a Gaussian blur with sigma uniform in
    ``[min_sigma, max_sigma]`` pixels, drawn per image (other optics, focus, compression).
    Identity when not training."""

    def __init__(
        self, p: float = 0.3, max_sigma: float = 1.5, min_sigma: float = 0.0, seed=None, **kwargs
    ):
        super().__init__(**kwargs)
        if not 0.0 <= p <= 1.0:
            raise ValueError("p must be in [0, 1]")
        if not 0.0 <= min_sigma <= max_sigma:
            raise ValueError("need 0 <= min_sigma <= max_sigma")
        self.p, self.max_sigma, self.min_sigma, self.seed = p, max_sigma, min_sigma, seed
        self.radius = max(1, math.ceil(3.0 * max_sigma))
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, images, training=None):
        if not training or self.p <= 0.0 or self.max_sigma <= 0.0:
            return images
        n = tf.shape(images)[0]
        sigma = keras.random.uniform((n,), self.min_sigma, self.max_sigma, seed=self.seed_generator)
        apply = keras.random.uniform((n,), 0.0, 1.0, seed=self.seed_generator) < self.p

        def blur(sub, sub_sigma):
            return tf.clip_by_value(gaussian_blur(sub, sub_sigma, self.radius), 0.0, 255.0)

        return _apply_to_some(images, apply, blur, sigma)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {
            **super().get_config(),
            "p": self.p,
            "max_sigma": self.max_sigma,
            "min_sigma": self.min_sigma,
            "seed": self.seed,
        }


def build_augmentation(
    cfg: AugmentConfig | str = "basic", name: str = "augment"
) -> keras.Sequential:
    """The image augmentation for training, as a Sequential of the layers above (0-255 float RGB in
    and out, same shape). Every layer is the identity at inference. ``cfg`` may be a preset name."""
    if isinstance(cfg, str):
        cfg = AugmentConfig.preset(cfg)
    seq: list[layers.Layer] = []
    if cfg.flip or cfg.rotation or cfg.zoom or cfg.translate:
        seq.append(
            RandomGeometry(
                flip=cfg.flip,
                rotation=cfg.rotation,
                zoom=cfg.zoom,
                translate=cfg.translate,
                seed=_sub_seed(cfg.seed, 1),
                name="random_geometry",
            )
        )
    if cfg.brightness or cfg.contrast or cfg.saturation or cfg.hue:
        seq.append(
            RandomColor(
                brightness=cfg.brightness,
                contrast=cfg.contrast,
                saturation=cfg.saturation,
                hue=cfg.hue,
                seed=_sub_seed(cfg.seed, 2),
                name="random_color",
            )
        )
    if cfg.resolution_p > 0:
        seq.append(
            RandomResolution(
                p=cfg.resolution_p,
                min_factor=cfg.resolution_min,
                seed=_sub_seed(cfg.seed, 3),
                name="random_resolution",
            )
        )
    if cfg.blur_p > 0 and cfg.blur_sigma > 0:
        seq.append(
            RandomBlur(
                p=cfg.blur_p,
                max_sigma=cfg.blur_sigma,
                seed=_sub_seed(cfg.seed, 4),
                name="random_blur",
            )
        )
    if not seq:
        seq.append(layers.Identity(name="no_augmentation"))
    return keras.Sequential(seq, name=name)


@keras.saving.register_keras_serializable(package="lesionlens")
class MetadataDropout(layers.Layer):
    """In training, replace each metadata field (age, sex, site) of each sample, independently with
    probability ``rate``, by that field's "unknown" encoding, so the model learns to answer when the
    clinician does not know. Identity at inference.

    ``slices``: ``[(name, start, stop), ...]`` (from ``MetadataEncoding.field_slices()``);
    ``unknown``: the encoding's ``unknown_vector()``. Both are stored in the config.
    """

    def __init__(self, rate: float, slices, unknown, seed: int | None = None, **kwargs):
        super().__init__(**kwargs)
        if not 0.0 <= rate <= 1.0:
            raise ValueError("rate must be in [0, 1]")
        self.rate = float(rate)
        self.slices = [(str(n), int(a), int(b)) for n, a, b in slices]
        self.unknown = [float(v) for v in np.asarray(unknown, np.float32).ravel()]
        self.seed = seed
        size = len(self.unknown)
        field_of = np.full(size, len(self.slices), np.int32)  # positions in no field: never dropped
        for i, (_, a, b) in enumerate(self.slices):
            if not 0 <= a < b <= size:
                raise ValueError(f"field slice {a}:{b} outside a vector of length {size}")
            field_of[a:b] = i
        self._field_of = field_of
        self.seed_generator = keras.random.SeedGenerator(seed)

    @classmethod
    def from_encoding(
        cls, encoding, rate: float, seed: int | None = None, **kwargs
    ) -> MetadataDropout:
        slices = [(k, s.start, s.stop) for k, s in encoding.field_slices().items()]
        return cls(rate, slices, encoding.unknown_vector(), seed=seed, **kwargs)

    def call(self, metadata, training=None):
        if not training or self.rate <= 0.0:
            return metadata
        n = tf.shape(metadata)[0]
        drop = (
            keras.random.uniform((n, len(self.slices)), 0.0, 1.0, seed=self.seed_generator)
            < self.rate
        )
        drop = tf.concat([drop, tf.zeros((n, 1), tf.bool)], axis=1)  # the "no field" column
        mask = tf.gather(drop, tf.constant(self._field_of), axis=1)  # (n, size)
        unknown = tf.constant(self.unknown, metadata.dtype)[None, :]
        return tf.where(mask, unknown, metadata)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {
            **super().get_config(),
            "rate": self.rate,
            "slices": [list(s) for s in self.slices],
            "unknown": list(self.unknown),
            "seed": self.seed,
        }


CUSTOM_OBJECTS = {
    "RandomGeometry": RandomGeometry,
    "RandomColor": RandomColor,
    "RandomResolution": RandomResolution,
    "RandomBlur": RandomBlur,
    "MetadataDropout": MetadataDropout,
}
