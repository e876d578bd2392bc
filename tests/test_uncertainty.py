"""The warning flags: low confidence, unusual image (feature-space distance), severity disagreement."""

import json

import numpy as np
import pytest

from desktop_app.core.uncertainty import FeatureModel, assess, fit_feature_model

CODES = ("MEL", "NV", "BCC")
NAMES = ("Melanoma", "Melanocytic nevus", "Basal cell carcinoma")
MALIGNANT = (True, False, True)


BASIS = np.random.default_rng(42).normal(size=(8, 64))


def gaussian_features(rng, n):
    """Features on an 8-dimensional subspace of a 64-dimensional space, plus a little noise."""
    return rng.normal(size=(n, 8)) @ BASIS * 3 + rng.normal(scale=0.1, size=(n, 64)) + 5


@pytest.fixture(scope="module")
def fitted():
    feats = gaussian_features(np.random.default_rng(0), 1500)
    section = fit_feature_model(feats[:1000], feats[1000:], n_components=8, normalize=False)
    return FeatureModel.from_card_section(json.loads(json.dumps(section))), feats, section


def test_new_images_from_the_training_distribution_are_rarely_flagged(fitted):
    model, _, _ = fitted
    fresh = gaussian_features(np.random.default_rng(7), 2000)
    assert model.is_unusual(fresh).mean() < 0.05


def test_far_away_and_off_subspace_images_are_flagged(fitted):
    model, feats, _ = fitted
    far = feats[:20] + 40 * feats[:20].std(axis=0)  # far along every axis
    off = feats[:20].copy()
    off[:, :] += np.random.default_rng(2).normal(scale=3, size=off.shape)  # leaves the subspace
    assert model.is_unusual(far).all()
    assert model.is_unusual(off).mean() > 0.9
    _, resid = model.scores(off)
    assert resid.mean() > model.residual_threshold


def test_the_card_section_is_compact_json(fitted):
    _, _, section = fitted
    text = json.dumps(section)
    assert section["method"] == "pca-mahalanobis+residual"
    assert len(text) < 200_000
    assert section["fitted_on"] == {"train_images": 1000, "validation_images": 500}


def test_no_section_means_no_feature_model():
    assert FeatureModel.from_card_section(None) is None
    assert FeatureModel.from_card_section({"method": "something else"}) is None


def flags_for(probs, risk, threshold=0.3, unusual=False):
    return {
        f.code for f in assess(np.array(probs), CODES, NAMES, MALIGNANT, risk, threshold, unusual)
    }


def test_confident_benign_below_threshold_has_no_flags():
    assert flags_for([0.05, 0.9, 0.05], risk=0.1) == set()


def test_torn_prediction_is_low_confidence():
    flags = assess(np.array([0.4, 0.35, 0.25]), CODES, NAMES, MALIGNANT, 0.65, 0.3, False)
    low = next(f for f in flags if f.code == "low_confidence")
    assert "Melanoma" in low.detail and "40%" in low.detail


def test_benign_top_class_with_malignant_mass_above_threshold_errs_to_severity():
    assert "severity_disagreement" in flags_for([0.2, 0.6, 0.2], risk=0.4)
    assert "severity_disagreement" not in flags_for([0.6, 0.2, 0.2], risk=0.8)


def test_unusual_flag_follows_the_feature_model_and_is_absent_without_one():
    assert "unusual_image" in flags_for([0.05, 0.9, 0.05], 0.1, unusual=True)
    assert "unusual_image" not in flags_for([0.05, 0.9, 0.05], 0.1, unusual=None)


def test_normalised_features_judge_direction_not_size():
    rng = np.random.default_rng(3)
    feats = gaussian_features(rng, 1500)
    model = FeatureModel.from_card_section(fit_feature_model(feats[:1000], feats[1000:]))
    assert model.normalize
    assert model.is_unusual(feats[1000:1100] * 0.3).mean() < 0.05  # same direction, smaller
    assert model.is_unusual(-feats[1000:1100]).all()  # opposite direction
