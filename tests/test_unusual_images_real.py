"""The unusual-image check on real features: ImageNet MobileNetV2 features of real HAM10000 images.

Fitted on 500 real images and thresholded on 200 more (as the exporter does with a run's train and
validation splits), it must pass most new real images and flag images that are not dermoscopy.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from desktop_app.core.imaging import PreprocessSpec, load_image, resize_uint8
from desktop_app.core.uncertainty import FeatureModel, fit_feature_model

pytestmark = [pytest.mark.slow, pytest.mark.shared_data]
WEIGHTS = "weights/mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5"
SIZE = 128


def not_dermoscopy(rng: np.random.Generator) -> dict[str, np.ndarray]:
    scene = np.zeros((SIZE, SIZE, 3), np.uint8)
    scene[:] = (90, 140, 210)
    cv2.rectangle(scene, (15, 70), (110, 120), (40, 120, 40), -1)
    cv2.circle(scene, (95, 30), 16, (250, 230, 80), -1)
    stripes = np.zeros((SIZE, SIZE, 3), np.uint8)
    stripes[:, (np.arange(SIZE) // 8) % 2 == 1] = 255
    return {
        "noise": rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8),
        "black": np.zeros((SIZE, SIZE, 3), np.uint8),
        "stripes": stripes,
        "scene": scene,
    }


def test_real_images_pass_and_non_dermoscopy_is_flagged(shared_data_dir):
    from trainer.export import pooled_features
    from trainer.model import ModelSpec, build_model

    images_dir = shared_data_dir / "ham10000" / "images"
    weights = shared_data_dir / WEIGHTS
    if not (images_dir.is_dir() and weights.is_file()):
        pytest.skip("HAM10000 images or MobileNetV2 weights missing from the shared data")
    paths = sorted(images_dir.glob("ISIC_*.jpg"))[:900]
    spec = PreprocessSpec(height=SIZE, width=SIZE)
    real = np.stack([resize_uint8(load_image(p).rgb, spec) for p in paths])
    core = build_model(ModelSpec(num_classes=7, image_size=SIZE, weights=str(weights)))
    feats = pooled_features(core, real)
    model = FeatureModel.from_card_section(fit_feature_model(feats[:500], feats[500:700]))

    assert model.is_unusual(feats[700:]).mean() <= 0.05
    odd = not_dermoscopy(np.random.default_rng(0))
    flagged = model.is_unusual(pooled_features(core, np.stack(list(odd.values()))))
    assert flagged.all(), dict(zip(odd, flagged, strict=True))
