"""Temperature scaling, ECE and reliability data; plots and the report, all without TensorFlow."""

import json

import numpy as np
import pytest

from desktop_app.core.risk import apply_temperature
from trainer import plots
from trainer.calibration import (
    expected_calibration_error,
    fit_temperature,
    negative_log_likelihood,
    reliability_curve,
)
from trainer.evaluate import (
    evaluate_arrays,
    previous_test_scorings,
    record_test_scoring,
    render_report,
    summary_table,
    write_plots,
    write_predictions_csv,
)

CODES = ["MEL", "NV", "BCC", "AK", "BKL", "DF", "VASC"]


def _sample_labels(logits, temperature, seed):
    rng = np.random.default_rng(seed)
    p = apply_temperature(logits, temperature)
    u = rng.random((p.shape[0], 1))
    return np.minimum((u > np.cumsum(p, axis=1)).sum(axis=1), p.shape[1] - 1)


def _logits(n, k=7, seed=0, scale=3.0):
    return np.random.default_rng(seed).normal(0.0, scale, size=(n, k))


def test_fit_temperature_recovers_a_known_temperature():
    z = _logits(5000, seed=1)
    y = _sample_labels(z, 2.5, seed=2)
    t = fit_temperature(z, y)
    assert t == pytest.approx(2.5, rel=0.1)
    assert negative_log_likelihood(z, y, t) <= negative_log_likelihood(z, y, 1.0)


def test_fit_temperature_stays_within_bounds():
    z = _logits(500, seed=3)
    y = np.random.default_rng(4).integers(0, 7, 500)  # labels unrelated to logits
    t = fit_temperature(z, y)
    assert 0.05 <= t <= 20.0
    assert t > 5  # no information -> as flat as allowed
    assert fit_temperature(np.zeros((0, 3)), np.zeros(0, int)) == 1.0


def test_ece_small_for_calibrated_large_for_overconfident_and_fixed_by_temperature():
    z = _logits(6000, seed=5)
    y_cal = _sample_labels(z, 1.0, seed=6)
    assert expected_calibration_error(apply_temperature(z, 1.0), y_cal) < 0.03
    # labels drawn at T = 3 but read at T = 1: the model is over-confident
    y_over = _sample_labels(z, 3.0, seed=7)
    before = expected_calibration_error(apply_temperature(z, 1.0), y_over)
    assert before > 0.15
    t = fit_temperature(z, y_over)
    after = expected_calibration_error(apply_temperature(z, t), y_over)
    assert after < 0.03 < before


def test_reliability_curve_by_hand():
    p = np.array([[0.95, 0.05], [0.95, 0.05], [0.6, 0.4], [0.55, 0.45], [0.0, 1.0]])
    y = np.array([0, 1, 0, 0, 1])
    rc = reliability_curve(p, y, n_bins=10)
    assert rc.count.sum() == 5
    assert rc.count[9] == 3  # 0.95, 0.95 and 1.0 fall in (0.9, 1.0]
    assert rc.confidence[9] == pytest.approx((0.95 + 0.95 + 1.0) / 3)
    assert rc.accuracy[9] == pytest.approx(2 / 3)
    assert rc.count[5] == 2 and rc.accuracy[5] == 1.0  # 0.6 is in (0.5, 0.6], 0.55 too
    expected = (3 / 5) * abs(2 / 3 - 2.9 / 3) + (2 / 5) * abs(1.0 - 0.575)
    assert rc.ece == pytest.approx(expected)
    assert expected_calibration_error(p, y, 10) == pytest.approx(expected)
    d = rc.to_dict()
    assert d["accuracy"][0] is None and d["count"][9] == 3
    json.dumps(d)


# --- end-to-end on arrays: plots, predictions, report ------------------------------------------


def _fake_run(seed=0, n_val=400, n_test=500):
    """Over-confident logits: labels are drawn from softmax(z / 2.5) but the model reports z."""
    rng = np.random.default_rng(seed)
    k = len(CODES)
    bias = np.log([0.12, 0.6, 0.06, 0.04, 0.1, 0.04, 0.04])

    def split(n, s):
        z = 2.5 * (rng.normal(0, 2.0, (n, k)) + bias)
        return _sample_labels(z, 2.5, seed=s), z

    yv, zv = split(n_val, seed + 100)
    yt, zt = split(n_test, seed + 200)
    zt_nm = zt + rng.normal(0, 4.0, zt.shape)  # metadata unknown: noisier
    return yv, zv, yt, zt, zt_nm


def test_evaluate_arrays_structure_and_threshold_from_validation():
    yv, zv, yt, zt, zt_nm = _fake_run()
    m = evaluate_arrays(
        classes=CODES,
        val_logits=zv,
        val_labels=yv,
        test_logits=zt,
        test_labels=yt,
        test_logits_no_metadata=zt_nm,
        target_sensitivity=0.9,
        bootstrap=200,
    )
    json.dumps(m)
    assert m["temperature"] == pytest.approx(2.5, rel=0.25)  # over-confidence is undone
    thr = m["threshold"]
    assert thr["tuned"] and thr["target_sensitivity"] == 0.9
    assert thr["validation_sensitivity"] >= 0.9
    assert m["validation"]["malignant"]["sensitivity"] == thr["validation_sensitivity"]
    test = m["test"]
    assert test["malignant"]["threshold"] == thr["value"]
    assert test["ece_after"] < test["ece_before"]
    ab = test["ablation_no_metadata"]
    assert ab["delta_balanced_accuracy_points"] == pytest.approx(
        100 * (test["balanced_accuracy"] - ab["balanced_accuracy"])
    )
    assert ab["delta_balanced_accuracy_points"] > 0
    assert set(test["ci"]) >= {"balanced_accuracy", "auc_macro"}
    assert "ablation_no_metadata" not in m["validation"]
    assert m["malignant_classes"] == ["MEL", "BCC", "AK"]


def test_evaluate_arrays_validation_only():
    yv, zv, *_ = _fake_run(seed=1)
    m = evaluate_arrays(classes=CODES, val_logits=zv, val_labels=yv, bootstrap=0)
    assert m["test"] is None and "ci" not in m["validation"]
    text = render_report({**m, "command": "python -m trainer evaluate x --split val"})
    assert "not scored" in text


def test_plots_predictions_and_report(tmp_path):
    yv, zv, yt, zt, zt_nm = _fake_run(seed=2, n_val=200, n_test=150)
    body = evaluate_arrays(
        classes=CODES,
        val_logits=zv,
        val_labels=yv,
        test_logits=zt,
        test_labels=yt,
        test_logits_no_metadata=zt_nm,
        bootstrap=100,
    )
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (150, 32, 32, 3), dtype=np.uint8)
    ids = [f"ISIC_{i:07d}" for i in range(150)]
    t, thr = body["temperature"], body["threshold"]["value"]
    files = write_plots(
        tmp_path,
        "test",
        classes=CODES,
        labels=yt,
        logits=zt,
        temperature=t,
        threshold=thr,
        confusion=body["test"]["confusion_matrix"],
        images=images,
        image_ids=ids,
        gallery=12,
    )
    assert set(files) == {"confusion", "roc", "reliability", "gallery"}
    for name in files.values():
        png = tmp_path / name
        assert png.stat().st_size > 5000
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(tmp_path.glob(".*"))  # no temporary files left behind

    csv = write_predictions_csv(tmp_path / "p.csv", ids, yt, apply_temperature(zt, t), CODES)
    header, first = csv.read_text().splitlines()[:2]
    assert header == "image_id,label,pred," + ",".join(CODES) + ",risk"
    values = first.split(",")
    probs = np.array(values[3:10], dtype=float)
    assert probs.sum() == pytest.approx(1.0, abs=1e-4)
    assert float(values[10]) == pytest.approx(probs[[0, 2, 3]].sum(), abs=1e-5)

    metrics = {**body, "command": "python -m trainer evaluate runs/x", "model_sha256": "ab" * 32}
    text = render_report(metrics, {"test": files})
    assert f"{body['test']['balanced_accuracy']:.3f}" in text
    assert f"{body['test']['auc_macro']:.3f}" in text
    assert f"{thr:.4f}" in text and f"{t:.4f}" in text
    assert f"{body['test']['ece_after']:.4f}" in text
    assert "Metadata ablation" in text
    assert f"{body['test']['ablation_no_metadata']['delta_balanced_accuracy_points']:.2f}" in text
    assert "](confusion_test.png)" in text and "](errors_test.png)" in text
    assert "python -m trainer evaluate runs/x" in text
    low = body["test"]["ci"]["balanced_accuracy"]["low"]
    assert f"{low:.3f}" in text
    assert "BMA" in summary_table(metrics)


def test_gallery_without_errors_still_writes_a_png(tmp_path):
    p = np.eye(3)[[0, 1, 2]]
    out = plots.plot_misclassification_gallery(
        np.zeros((3, 8, 8, 3), np.uint8), [0, 1, 2], p, ["MEL", "NV", "BCC"], tmp_path / "g.png"
    )
    assert out.stat().st_size > 0


def test_test_log_records_every_scoring(tmp_path):
    log = tmp_path / "evaluation" / "test_evaluations.log"
    assert previous_test_scorings(log, "a" * 64) == []
    record_test_scoring(log, "a" * 64, "python -m trainer evaluate r", when="2024-01-01T00:00:00")
    record_test_scoring(log, "b" * 64, "python -m trainer evaluate r2")
    assert len(previous_test_scorings(log, "a" * 64)) == 1
    assert len(log.read_text().splitlines()) == 2
    record_test_scoring(log, "a" * 64, "python -m trainer evaluate r")
    assert len(previous_test_scorings(log, "a" * 64)) == 2


# --- the CLI wrapper's helpers (no TensorFlow) ----------------------------------------------------


def _parse(argv):
    import argparse

    from trainer import evaluate

    parser = argparse.ArgumentParser()
    evaluate.add_arguments(parser)
    return parser.parse_args(argv)


def test_canonical_command_spells_out_every_option():
    from trainer.evaluate import canonical_command

    args = _parse(["runs/a b", "--split", "val", "--bootstrap", "10"])
    cmd = canonical_command(args)
    assert cmd[:5] == ["python", "-m", "trainer", "evaluate", "runs/a b"]
    for flag, value in (
        ("--split", "val"),
        ("--bootstrap", "10"),
        ("--batch-size", "64"),
        ("--target-sensitivity", "0.95"),
        ("--gallery", "24"),
    ):
        assert cmd[cmd.index(flag) + 1] == value
    assert "--out" not in cmd


def test_prepare_is_called_with_the_runs_recorded_settings(tmp_path, monkeypatch):
    """The run's config.json, its own split file and any moved-data override reach prepare()."""
    import trainer.data
    from trainer.evaluate import load_prepared_data

    seen = {}

    def recording_prepare(config):
        seen.clear()
        seen.update(trainer.data._kwargs_from_config(config))  # prepare's own reading of it
        return "prepared"

    monkeypatch.setattr(trainer.data, "prepare", recording_prepare)
    (tmp_path / "split.csv").write_text("image_id,split\n")
    config = {
        "data": "/data/ham",
        "data_path": "/data/ham",
        "format": "ham10000",
        "image_size": 96,
        "seed": 3,
        "classes": [{"code": "MEL"}, {"code": "NV"}],
        "cache_dir": "/c",
        "split": "/elsewhere/old-split.csv",
    }
    assert load_prepared_data(config, tmp_path, None, None) == "prepared"
    assert seen["data_path"] == "/data/ham"
    assert seen["fmt"] == "ham10000"
    assert seen["image_size"] == 96 and seen["seed"] == 3 and seen["cache_dir"] == "/c"
    assert seen["classes"] == ["MEL", "NV"]
    assert seen["split_path"] == str(tmp_path / "split.csv")  # the run's own split wins
    assert seen["progress"] is False
    load_prepared_data(config, tmp_path, "/moved/ham", "/new-cache")
    assert seen["data_path"] == "/moved/ham" and seen["cache_dir"] == "/new-cache"


def test_evaluation_refuses_to_resplit(tmp_path):
    from desktop_app.core.errors import DatasetError
    from trainer.evaluate import load_prepared_data

    with pytest.raises(DatasetError, match="split"):
        load_prepared_data({"data": "/data/ham"}, tmp_path, None, None)


def test_run_reports_a_missing_run_folder_readably(tmp_path):
    from desktop_app.core.errors import LesionLensError
    from trainer.evaluate import run

    with pytest.raises(LesionLensError, match=r"config\.json"):
        run(_parse([str(tmp_path / "nope")]))
