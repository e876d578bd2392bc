"""Every selectable backbone builds into the dual-input contract, with its scaling inside the model."""

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from trainer.model import (  # noqa: E402
    BACKBONES,
    ModelSpec,
    ScaleToBackbone,
    build_model,
    set_backbone_trainable,
)

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("backbone", sorted(BACKBONES))
def test_each_backbone_builds_the_dual_input_contract(backbone):
    model = build_model(ModelSpec(num_classes=8, image_size=64, backbone=backbone, head_units=8))
    assert [t.name for t in model.inputs] == ["image", "metadata"]
    out = model([np.zeros((2, 64, 64, 3), np.float32), np.zeros((2, 14), np.float32)])
    assert tuple(out.shape) == (2, 8)
    for name in ("backbone", "pool", "meta_dense", "fusion", "head_dense", "logits"):
        model.get_layer(name)


def test_image_only_model_has_one_input():
    model = build_model(ModelSpec(num_classes=7, image_size=64, metadata_size=None))
    assert [t.name for t in model.inputs] == ["image"]


@pytest.mark.parametrize(
    ("mode", "pixel", "expected"),
    [("tf", 255.0, [1.0, 1.0, 1.0]), ("tf", 0.0, [-1.0, -1.0, -1.0]), ("none", 7.0, [7.0] * 3)],
)
def test_scaling_to_the_backbone_range(mode, pixel, expected):
    x = np.full((1, 2, 2, 3), pixel, np.float32)
    np.testing.assert_allclose(np.asarray(ScaleToBackbone(mode)(x))[0, 0, 0], expected, atol=1e-6)


def test_caffe_scaling_flips_to_bgr_and_subtracts_the_imagenet_mean():
    x = np.array([[[[10.0, 20.0, 30.0]]]], np.float32)  # RGB
    got = np.asarray(ScaleToBackbone("caffe")(x))[0, 0, 0]
    np.testing.assert_allclose(got, [30 - 103.939, 20 - 116.779, 10 - 123.68], atol=1e-4)


def test_fine_tuning_unfreezes_top_layers_but_keeps_batchnorm_frozen():
    model = build_model(ModelSpec(num_classes=7, image_size=64))
    assert set_backbone_trainable(model, 0) == 0
    n = set_backbone_trainable(model, 30)
    backbone = model.get_layer("backbone")
    assert n > 0
    bn = [la for la in backbone.layers if isinstance(la, keras.layers.BatchNormalization)]
    assert bn and not any(la.trainable for la in bn)
    assert not any(la.trainable for la in backbone.layers[: len(backbone.layers) - 30])
