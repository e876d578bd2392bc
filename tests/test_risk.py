"""Calibrated probabilities, malignancy risk and normalised entropy (shared by app and trainer)."""

import numpy as np
import pytest

from desktop_app.core.classes import CATALOG, get
from desktop_app.core.risk import apply_temperature, entropy, malignancy_risk, malignant_mask

HAM7 = ("MEL", "NV", "BCC", "AK", "BKL", "DF", "VASC")


def test_apply_temperature_is_a_stable_softmax_for_any_batch_shape():
    logits = np.array([[1000.0, 1001.0, 999.0], [0.0, 0.0, 0.0]])
    p = apply_temperature(logits, 1.0)
    assert np.all(np.isfinite(p))
    np.testing.assert_allclose(p.sum(axis=-1), 1.0)
    np.testing.assert_allclose(p[1], [1 / 3] * 3)
    batch = np.random.default_rng(0).normal(size=(2, 4, 5))
    pb = apply_temperature(batch, 2.0)
    assert pb.shape == (2, 4, 5)
    np.testing.assert_allclose(pb.sum(axis=-1), 1.0)
    single = apply_temperature([2.0, 1.0], 1.0)
    np.testing.assert_allclose(single, [np.e / (np.e + 1), 1 / (np.e + 1)])


def test_temperature_softens_but_keeps_the_ranking():
    z = np.array([3.0, 1.0, 0.5, -2.0])
    p1, p3 = apply_temperature(z, 1.0), apply_temperature(z, 3.0)
    assert p3.max() < p1.max()
    assert list(np.argsort(p1)) == list(np.argsort(p3))
    np.testing.assert_allclose(apply_temperature(z, 2.0), apply_temperature(z / 2.0, 1.0))


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), float("inf")])
def test_apply_temperature_rejects_bad_temperatures(bad):
    with pytest.raises(ValueError):
        apply_temperature([1.0, 2.0], bad)


def test_malignancy_risk_sums_malignant_classes():
    p = np.array([0.4, 0.2, 0.35, 0.0, 0.05, 0.0, 0.0])  # MEL + BCC = 0.75
    assert malignancy_risk(p, HAM7) == pytest.approx(0.75)
    # the same from LesionClass objects and from a boolean mask
    assert malignancy_risk(p, [get(c) for c in HAM7]) == pytest.approx(0.75)
    mask = np.array([True, False, True, True, False, False, False])
    assert malignancy_risk(p, mask) == pytest.approx(0.75)
    assert isinstance(malignancy_risk(p, mask), float)
    batch = np.stack([p, np.eye(7)[1], np.eye(7)[3]])
    np.testing.assert_allclose(malignancy_risk(batch, HAM7), [0.75, 0.0, 1.0])


def test_malignancy_mask_follows_the_catalog_and_card_flags():
    assert malignant_mask([c.code for c in CATALOG]).tolist() == [c.malignant for c in CATALOG]
    assert malignant_mask(["MEL", "NV", "SCC"]).tolist() == [True, False, True]
    with pytest.raises(ValueError):
        malignancy_risk(np.ones(3) / 3, HAM7)
    with pytest.raises(TypeError):
        malignant_mask(np.array([1, 0, 1]))


def test_entropy_is_normalised():
    assert entropy(np.ones(7) / 7) == pytest.approx(1.0)
    assert entropy(np.eye(8)[2]) == pytest.approx(0.0)
    h = entropy(np.array([[0.5, 0.5, 0.0, 0.0], [0.25] * 4]))
    np.testing.assert_allclose(h, [0.5, 1.0])
