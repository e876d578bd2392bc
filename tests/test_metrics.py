"""ISIC-style metrics against hand-computed cases and scikit-learn, the sensitivity threshold, and
the fast bootstrap."""

import json
import time

import numpy as np
import pytest
from sklearn.metrics import balanced_accuracy_score, roc_auc_score

from trainer.metrics import (
    bootstrap_ci,
    bootstrap_weights,
    compute_metrics,
    paired_bootstrap_delta,
    threshold_for_sensitivity,
    top_k_accuracy,
    weighted_auc,
)

CODES3 = ["MEL", "NV", "BCC"]


def _probs_for(pred, k, conf=0.8):
    p = np.full((len(pred), k), (1 - conf) / (k - 1))
    p[np.arange(len(pred)), pred] = conf
    return p


def test_three_class_confusion_matrix_bma_and_per_class_by_hand():
    y = np.array([0, 0, 0, 0, 1, 1, 1, 2, 2, 2])
    pred = np.array([0, 0, 0, 1, 1, 1, 2, 2, 0, 2])
    m = compute_metrics(y, _probs_for(pred, 3), CODES3, threshold=0.5)
    assert m["confusion_matrix"] == [[3, 1, 0], [0, 2, 1], [1, 0, 2]]
    np.testing.assert_allclose(
        m["confusion_matrix_normalized"],
        [[0.75, 0.25, 0.0], [0.0, 2 / 3, 1 / 3], [1 / 3, 0.0, 2 / 3]],
        atol=1e-6,
    )
    # recalls 3/4, 2/3, 2/3 -> BMA is their mean
    assert m["balanced_accuracy"] == pytest.approx((0.75 + 2 / 3 + 2 / 3) / 3)
    assert m["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, pred))
    assert m["accuracy"] == pytest.approx(0.7)
    mel = m["per_class"]["MEL"]
    assert mel["support"] == 4 and mel["recall"] == pytest.approx(0.75)
    assert mel["precision"] == pytest.approx(3 / 4)  # predicted MEL: 3 right + 1 BCC
    assert mel["f1"] == pytest.approx(0.75)
    assert m["per_class"]["NV"]["precision"] == pytest.approx(2 / 3)
    assert m["n"] == 10
    json.dumps(m)  # JSON-ready


def test_bma_matches_sklearn_on_random_imbalanced_data():
    rng = np.random.default_rng(3)
    y = rng.choice(7, 500, p=[0.1, 0.6, 0.05, 0.05, 0.1, 0.05, 0.05])
    p = rng.dirichlet(np.ones(7), 500)
    p[np.arange(500), y] += rng.uniform(0, 0.6, 500)
    p /= p.sum(1, keepdims=True)
    codes = ["MEL", "NV", "BCC", "AK", "BKL", "DF", "VASC"]
    m = compute_metrics(y, p, codes)
    assert m["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, p.argmax(1)))
    for i, c in enumerate(codes):
        assert m["per_class"][c]["auc"] == pytest.approx(roc_auc_score(y == i, p[:, i]))


def test_top_k_by_hand():
    p = np.array([[0.5, 0.3, 0.2], [0.5, 0.3, 0.2], [0.5, 0.3, 0.2], [0.1, 0.2, 0.7]])
    y = np.array([0, 1, 2, 0])
    assert top_k_accuracy(y, p, 1) == pytest.approx(0.25)
    assert top_k_accuracy(y, p, 2) == pytest.approx(0.5)
    assert top_k_accuracy(y, p, 3) == pytest.approx(1.0)
    m = compute_metrics(y, p, CODES3)
    assert (m["top2"], m["top3"]) == (pytest.approx(0.5), pytest.approx(1.0))


def test_auc_with_an_absent_class_is_null_and_excluded_from_the_macro():
    y = np.array([0, 0, 1, 1, 0, 1])  # no BCC at all
    p = np.array(
        [[0.7, 0.2, 0.1], [0.6, 0.3, 0.1], [0.2, 0.7, 0.1], [0.4, 0.5, 0.1], [0.3, 0.6, 0.1],
         [0.1, 0.8, 0.1]]
    )  # fmt: skip
    m = compute_metrics(y, p, CODES3)
    assert m["per_class"]["BCC"]["auc"] is None
    assert m["per_class"]["BCC"]["recall"] is None
    assert m["per_class"]["BCC"]["support"] == 0
    assert m["auc_macro_classes"] == ["MEL", "NV"]
    a0, a1 = roc_auc_score(y == 0, p[:, 0]), roc_auc_score(y == 1, p[:, 1])
    assert m["auc_macro"] == pytest.approx((a0 + a1) / 2)
    assert m["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, p.argmax(1)))


def test_malignant_operating_point_by_hand():
    # MEL and BCC malignant; risk = p_MEL + p_BCC
    p = np.array(
        [[0.6, 0.3, 0.1], [0.2, 0.5, 0.3], [0.1, 0.8, 0.1], [0.3, 0.6, 0.1], [0.05, 0.9, 0.05]]
    )
    y = np.array([0, 2, 2, 1, 1])
    m = compute_metrics(y, p, CODES3, threshold=0.4)["malignant"]
    # risks: 0.7 (mal), 0.5 (mal), 0.2 (mal), 0.4 (benign), 0.1 (benign)
    assert (m["tp"], m["fn"], m["fp"], m["tn"]) == (2, 1, 1, 1)
    assert m["sensitivity"] == pytest.approx(2 / 3)
    assert m["specificity"] == pytest.approx(0.5)  # 0.4 >= 0.4 is flagged
    assert m["ppv"] == pytest.approx(2 / 3) and m["npv"] == pytest.approx(0.5)
    assert m["n_malignant"] == 3 and m["classes"] == ["MEL", "BCC"]
    assert m["auc"] == pytest.approx(roc_auc_score([1, 1, 1, 0, 0], [0.7, 0.5, 0.2, 0.4, 0.1]))


def test_threshold_for_sensitivity_reaches_the_target_and_is_maximal():
    rng = np.random.default_rng(1)
    for trial in range(50):
        n = int(rng.integers(5, 300))
        y = rng.random(n) < 0.3
        y[0] = True
        risk = np.round(np.clip(rng.normal(0.3 + 0.3 * y, 0.2), 0, 1), 2)  # ties on purpose
        for target in (0.5, 0.9, 0.95, 1.0):
            t = threshold_for_sensitivity(y, risk, target)
            assert np.mean(risk[y] >= t) >= target, (trial, target)
            # any larger threshold (the next distinct risk above t) misses the target
            above = np.unique(risk[risk > t])
            if above.size:
                assert np.mean(risk[y] >= above[0]) < target
                assert np.mean(risk[y] >= np.nextafter(t, 2.0)) < target


def test_threshold_for_sensitivity_simple_case_and_errors():
    y = np.array([True, True, True, True, False, False])
    r = np.array([0.9, 0.8, 0.6, 0.2, 0.5, 0.1])
    assert threshold_for_sensitivity(y, r, 0.75) == pytest.approx(0.6)
    assert threshold_for_sensitivity(y, r, 0.76) == pytest.approx(0.2)
    assert threshold_for_sensitivity(y, r, 1.0) == pytest.approx(0.2)
    with pytest.raises(ValueError):
        threshold_for_sensitivity(np.zeros(3, bool), np.ones(3), 0.9)
    with pytest.raises(ValueError):
        threshold_for_sensitivity(y, r, 0.0)


def test_weighted_auc_equals_sklearn_on_the_resampled_data():
    rng = np.random.default_rng(2)
    y = rng.random(300) < 0.2
    s = np.round(rng.random(300) + 0.3 * y, 1)  # many ties
    w = bootstrap_weights(y.astype(int), 5, seed=4, stratified=False)
    aucs = weighted_auc(y, s, w)
    for b in range(5):
        idx = np.repeat(np.arange(300), w[b].astype(int))
        assert aucs[b] == pytest.approx(roc_auc_score(y[idx], s[idx]))
    assert weighted_auc(y, s, np.ones((1, 300)))[0] == pytest.approx(roc_auc_score(y, s))


def test_stratified_bootstrap_keeps_class_counts():
    y = np.array([0] * 10 + [1] * 3 + [2] * 7)
    w = bootstrap_weights(y, 50, seed=0, stratified=True)
    assert w.shape == (50, 20)
    for c, n in ((0, 10), (1, 3), (2, 7)):
        np.testing.assert_array_equal(w[:, y == c].sum(axis=1), n)


def _synthetic(n, k=8, seed=0):
    rng = np.random.default_rng(seed)
    prior = np.array([0.11, 0.6, 0.05, 0.03, 0.1, 0.01, 0.015, 0.085][:k])
    y = rng.choice(k, n, p=prior / prior.sum())
    z = rng.normal(size=(n, k))
    z[np.arange(n), y] += 2.0
    p = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    return y, p


def test_bootstrap_ci_is_fast_contains_the_point_and_is_reproducible():
    y, p = _synthetic(1500)
    codes = ["MEL", "NV", "BCC", "AK", "BKL", "DF", "VASC", "SCC"]
    start = time.perf_counter()
    ci = bootstrap_ci(y, p, n=1000, seed=0, malignant=codes)
    elapsed = time.perf_counter() - start
    assert elapsed < 5.0
    for key in ("balanced_accuracy", "auc_macro", "malignant_auc"):
        c = ci[key]
        assert c["low"] < c["point"] < c["high"], key
        assert c["n_valid"] == 1000
    assert ci["balanced_accuracy"]["point"] == pytest.approx(
        balanced_accuracy_score(y, p.argmax(1))
    )
    assert bootstrap_ci(y, p, n=200, seed=0) == bootstrap_ci(y, p, n=200, seed=0)
    # half width of a BMA interval on 1500 cases: a few points, not zero, not huge
    assert 0.01 < ci["balanced_accuracy"]["high"] - ci["balanced_accuracy"]["low"] < 0.2


def test_bootstrap_ci_with_a_custom_metric_fn_matches_the_fast_path_roughly():
    y, p = _synthetic(400, seed=5)
    fast = bootstrap_ci(y, p, n=300, seed=1)

    def bma(yy, pp):
        return balanced_accuracy_score(yy, pp.argmax(1))

    slow = bootstrap_ci(y, p, metric_fn=bma, n=300, seed=1)
    assert slow["value"]["point"] == pytest.approx(fast["balanced_accuracy"]["point"])
    assert slow["value"]["low"] == pytest.approx(fast["balanced_accuracy"]["low"], abs=0.03)
    assert slow["value"]["high"] == pytest.approx(fast["balanced_accuracy"]["high"], abs=0.03)


def test_compute_metrics_includes_ci_when_asked():
    y, p = _synthetic(300, k=3, seed=1)
    m = compute_metrics(y, p, CODES3, bootstrap=100)
    assert set(m["ci"]) >= {"balanced_accuracy", "auc_macro", "malignant_auc", "method"}
    assert "ci" not in compute_metrics(y, p, CODES3)
    json.dumps(m)


def test_paired_delta_is_zero_for_identical_models():
    y, p = _synthetic(300, k=3, seed=2)
    d = paired_bootstrap_delta(y, p, p, n=100, malignant=CODES3)
    assert d["balanced_accuracy"]["point"] == 0.0
    assert d["balanced_accuracy"]["low"] == 0.0 == d["balanced_accuracy"]["high"]
