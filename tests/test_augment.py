"""Augmentation layers and metadata dropout (trainer/augment.py): fast, no training."""

from __future__ import annotations

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")

from desktop_app.core.metadata import DEFAULT_ENCODING, PatientMetadata  # noqa: E402
from trainer.augment import (  # noqa: E402
    CUSTOM_OBJECTS,
    AugmentConfig,
    MetadataDropout,
    RandomBlur,
    RandomColor,
    RandomGeometry,
    RandomResolution,
    build_augmentation,
    gaussian_blur,
)


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    """Eight 48x48 RGB images in 0..255 float32 with structure (so geometry and blur show)."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:48, 0:48]
    out = []
    for i in range(8):
        base = np.stack([xx * 4 + i, yy * 5, (xx + yy) * 2], -1).astype(np.float32)
        out.append(np.clip(base + rng.normal(0, 10, base.shape), 0, 255))
    return np.stack(out).astype(np.float32)


ALL_LAYERS = [
    lambda: RandomGeometry(seed=1),
    lambda: RandomColor(brightness=0.2, contrast=0.3, saturation=0.3, hue=0.05, seed=2),
    lambda: RandomResolution(p=1.0, seed=3),
    lambda: RandomBlur(p=1.0, min_sigma=0.5, seed=4),
]


@pytest.mark.parametrize("preset", ["basic", "strong"])
def test_augmentation_is_identity_at_inference_and_changes_training_images(images, preset):
    aug = build_augmentation(AugmentConfig.preset(preset, seed=0))
    x = tf.constant(images)
    np.testing.assert_array_equal(aug(x, training=False).numpy(), images)
    np.testing.assert_array_equal(aug(x).numpy(), images)  # default: inference
    y = aug(x, training=True).numpy()
    assert y.shape == images.shape and y.dtype == np.float32
    assert y.min() >= 0.0 and y.max() <= 255.0
    changed = np.abs(y - images).reshape(len(images), -1).max(axis=1) > 1.0
    assert changed.all()
    # ... and differently on each call (a seed generator, not a fixed draw)
    assert np.abs(aug(x, training=True).numpy() - y).max() > 1.0


def test_none_preset_is_identity_even_in_training(images):
    aug = build_augmentation("none")
    np.testing.assert_array_equal(aug(tf.constant(images), training=True).numpy(), images)
    assert AugmentConfig.preset("none").is_identity


@pytest.mark.parametrize("make", ALL_LAYERS)
def test_layers_keep_shape_dtype_range_and_are_identity_at_inference(images, make):
    layer = make()
    x = tf.constant(images)
    np.testing.assert_array_equal(layer(x, training=False).numpy(), images)
    y = layer(x, training=True)
    assert tuple(y.shape) == images.shape and y.dtype == tf.float32
    assert float(tf.reduce_min(y)) >= 0.0 and float(tf.reduce_max(y)) <= 255.0
    assert float(tf.reduce_max(tf.abs(y - x))) > 1.0
    # inside a traced function (how fit runs it), with an unknown batch size
    fn = tf.function(
        lambda t: layer(t, training=True),
        input_signature=[tf.TensorSpec((None, 48, 48, 3), tf.float32)],
    )
    assert tuple(fn(x[:3]).shape) == (3, 48, 48, 3)


@pytest.mark.parametrize("make", ALL_LAYERS)
def test_layers_serialise(make):
    layer = make()
    config = layer.get_config()
    clone = type(layer).from_config(config)
    assert clone.get_config() == config
    again = keras.layers.deserialize(keras.layers.serialize(layer), custom_objects=CUSTOM_OBJECTS)
    assert type(again) is type(layer) and again.get_config() == config


def test_sequential_augmentation_round_trips_through_a_saved_model(tmp_path, images):
    inp = keras.Input((48, 48, 3))
    model = keras.Model(inp, build_augmentation(AugmentConfig.preset("strong", seed=3))(inp))
    path = tmp_path / "aug.keras"
    model.save(path)
    loaded = keras.models.load_model(path, custom_objects=CUSTOM_OBJECTS)
    names = [type(layer).__name__ for layer in loaded.layers[1].layers]
    assert names == ["RandomGeometry", "RandomColor", "RandomResolution", "RandomBlur"]
    np.testing.assert_array_equal(loaded(tf.constant(images), training=False).numpy(), images)


def test_flips_cover_all_four_orientations(images):
    geo = RandomGeometry(flip=True, rotation=0.0, zoom=0.0, translate=0.0, seed=5)
    x = np.repeat(images[:1], 64, axis=0)
    y = geo(tf.constant(x), training=True).numpy()
    seen = set()
    for img in y:
        for name, ref in (
            ("id", x[0]),
            ("ud", x[0][::-1]),
            ("lr", x[0][:, ::-1]),
            ("both", x[0][::-1, ::-1]),
        ):
            if np.abs(img - ref).max() < 1e-3:
                seen.add(name)
    assert seen == {"id", "ud", "lr", "both"}


def test_colour_jitter_keeps_greys_grey_under_hue_and_saturation():
    grey = tf.fill((4, 8, 8, 3), 100.0)
    y = RandomColor(brightness=0.0, contrast=0.0, saturation=0.5, hue=0.5, seed=1)(
        grey, training=True
    )
    np.testing.assert_allclose(y.numpy(), 100.0, atol=1e-3)


def test_gaussian_blur_matches_scipy_per_image_sigma(images):
    ndimage = pytest.importorskip("scipy.ndimage")
    sigma = np.array([0.0, 0.6, 1.0, 1.5], np.float32)
    x = images[:4]
    y = gaussian_blur(tf.constant(x), tf.constant(sigma), radius=5).numpy()
    np.testing.assert_allclose(y[0], x[0], atol=1e-4)  # sigma 0: unchanged
    for i in range(1, 4):
        ref = np.stack(
            [
                ndimage.gaussian_filter(
                    x[i][..., c].astype(np.float64), sigma[i], mode="mirror", truncate=5 / sigma[i]
                )
                for c in range(3)
            ],
            -1,
        )
        np.testing.assert_allclose(y[i], ref, atol=1e-3)


def test_resolution_and_blur_with_small_probability_may_touch_nothing(images):
    x = tf.constant(images)
    for layer in (RandomResolution(p=1e-9, seed=1), RandomBlur(p=1e-9, seed=1)):
        np.testing.assert_array_equal(layer(x, training=True).numpy(), images)


def test_resolution_loses_detail():
    rng = np.random.default_rng(1)
    noise = rng.uniform(0, 255, (2, 64, 64, 3)).astype(np.float32)
    layer = RandomResolution(p=1.0, min_factor=0.4, max_factor=0.5, seed=0)
    y = layer(tf.constant(noise), training=True).numpy()
    # high-frequency energy (neighbour differences) drops when detail is lost
    assert np.abs(np.diff(y, axis=2)).mean() < 0.7 * np.abs(np.diff(noise, axis=2)).mean()


# ---------------------------------------------------------------------------------------------
# MetadataDropout
# ---------------------------------------------------------------------------------------------


def _metadata_batch(n: int = 32) -> np.ndarray:
    sites = [s for s in DEFAULT_ENCODING.site_choices() if s != "unknown"]
    metas = [
        PatientMetadata(age=20 + i, sex=("female", "male")[i % 2], site=sites[i % len(sites)])
        for i in range(n)
    ]
    return DEFAULT_ENCODING.encode_many(metas)


def test_metadata_dropout_rate_one_gives_the_unknown_encoding_per_field():
    meta = _metadata_batch()
    layer = MetadataDropout.from_encoding(DEFAULT_ENCODING, rate=1.0, seed=0)
    out = layer(tf.constant(meta), training=True).numpy()
    unknown = DEFAULT_ENCODING.unknown_vector()
    for name, sl in DEFAULT_ENCODING.field_slices().items():
        np.testing.assert_array_equal(
            out[:, sl], np.broadcast_to(unknown[sl], out[:, sl].shape), name
        )
    np.testing.assert_array_equal(out, np.broadcast_to(unknown, out.shape))
    assert all(DEFAULT_ENCODING.decode(v).is_unknown for v in out)


def test_metadata_dropout_rate_zero_and_inference_are_identity():
    meta = _metadata_batch()
    x = tf.constant(meta)
    np.testing.assert_array_equal(
        MetadataDropout.from_encoding(DEFAULT_ENCODING, 0.0)(x, training=True).numpy(), meta
    )
    strong = MetadataDropout.from_encoding(DEFAULT_ENCODING, 1.0)
    np.testing.assert_array_equal(strong(x, training=False).numpy(), meta)
    np.testing.assert_array_equal(strong(x).numpy(), meta)


def test_metadata_dropout_drops_fields_independently_and_whole():
    meta = np.repeat(_metadata_batch(1), 4000, axis=0)
    layer = MetadataDropout.from_encoding(DEFAULT_ENCODING, rate=0.3, seed=1)
    out = layer(tf.constant(meta), training=True).numpy()
    unknown = DEFAULT_ENCODING.unknown_vector()
    dropped = {}
    for name, sl in DEFAULT_ENCODING.field_slices().items():
        is_unknown = (out[:, sl] == unknown[sl]).all(axis=1)
        is_kept = (out[:, sl] == meta[:, sl]).all(axis=1)
        assert (is_unknown | is_kept).all(), f"{name}: a field was half replaced"
        dropped[name] = is_unknown
        assert abs(is_unknown.mean() - 0.3) < 0.04, name
    # independent per field: P(age and sex both dropped) ~ 0.09, not 0.3
    assert abs((dropped["age"] & dropped["sex"]).mean() - 0.09) < 0.03
    # every decoded vector is still a valid metadata record
    for v in out[:50]:
        DEFAULT_ENCODING.decode(v)


def test_metadata_dropout_serialises_slices_and_unknown_vector():
    layer = MetadataDropout.from_encoding(DEFAULT_ENCODING, rate=0.25, seed=3, name="md")
    config = layer.get_config()
    assert config["rate"] == 0.25
    assert config["unknown"] == [float(v) for v in DEFAULT_ENCODING.unknown_vector()]
    assert [s[0] for s in config["slices"]] == ["age", "sex", "site"]
    clone = MetadataDropout.from_config(config)
    assert clone.get_config() == config
    meta = _metadata_batch(16)
    full = MetadataDropout.from_config({**config, "rate": 1.0})
    np.testing.assert_array_equal(
        full(tf.constant(meta), training=True).numpy(),
        np.broadcast_to(DEFAULT_ENCODING.unknown_vector(), meta.shape),
    )
    again = keras.layers.deserialize(keras.layers.serialize(layer), custom_objects=CUSTOM_OBJECTS)
    assert isinstance(again, MetadataDropout) and again.get_config() == config


def test_preset_overrides_and_validation():
    cfg = AugmentConfig.preset("basic", seed=1, blur_p=0.5, resolution_p=None)
    assert cfg.blur_p == 0.5 and cfg.resolution_p == 0.0 and cfg.seed == 1
    assert AugmentConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError):
        AugmentConfig.preset("wild")
    with pytest.raises(ValueError):
        MetadataDropout(1.5, [("age", 0, 2)], np.zeros(2))
    with pytest.raises(ValueError):
        MetadataDropout(0.5, [("age", 0, 5)], np.zeros(2))
