"""The whole road, as a newcomer walks it: train -> evaluate -> export -> the app's engine and CLI.

The synthetic run always happens (tiny images, random backbone, one epoch per stage). When the real
HAM10000 set and the MobileNetV2 weights are in ``../shared/data``, a short smoke run on 200 real
images follows the same commands with the real weights.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from desktop_app.core.engine import Engine
from desktop_app.core.imaging import load_image
from desktop_app.core.metadata import PatientMetadata
from trainer.cli import main as trainer_main

REPO_ROOT = Path(__file__).resolve().parent.parent
WEIGHTS = "weights/mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5"

pytestmark = pytest.mark.slow


def run_pipeline(data: Path, run: Path, cache: Path, extra_train: list[str]) -> Path:
    """The README's three commands; returns the exported ONNX path."""
    train_args = ["train", "--data", str(data), "--run", str(run), "--cache-dir", str(cache)]
    assert trainer_main(train_args + extra_train + ["--quiet"]) == 0
    assert trainer_main(["evaluate", str(run), "--bootstrap", "50", "--gallery", "4"]) == 0
    assert trainer_main(["export", str(run)]) == 0
    return run / "model.onnx"


def check_run_folder(run: Path, n_classes: int) -> dict:
    for name in ("config.json", "split.csv", "model.keras", "train_log.csv", "model.onnx"):
        assert (run / name).is_file(), name
    metrics = json.loads((run / "evaluation" / "metrics.json").read_text())
    test = metrics["test"]
    assert 0.0 <= test["balanced_accuracy"] <= 1.0
    assert len(test["confusion_matrix"]) == n_classes
    assert test["ablation_no_metadata"] is not None
    assert metrics["temperature"] > 0
    assert (run / "evaluation" / "report.md").read_text().count("balanced multiclass accuracy") >= 1
    # The test split was scored once and that was written down.
    log = (run / "evaluation" / "test_evaluations.log").read_text().strip().splitlines()
    assert len(log) == 1
    # No test image was used for training or validation.
    split = pd.read_csv(run / "split.csv")
    groups = split.groupby("lesion_id")["split"].nunique()
    assert (groups == 1).all()
    return metrics


def check_model_in_the_app(onnx_path: Path, metrics: dict, image: Path) -> None:
    engine = Engine.load(onnx_path, providers="cpu")
    card = engine.card
    assert list(card.codes) == metrics["classes"]
    assert card.temperature == pytest.approx(metrics["temperature"])
    assert card.threshold == pytest.approx(metrics["threshold"]["value"])
    assert card.uses_metadata
    pred = engine.predict_file(image, PatientMetadata(age=60, sex="male", site="head/neck"))
    assert pred.probabilities.sum() == pytest.approx(1.0, abs=1e-5)
    assert pred.heatmaps.shape[-1] == len(card.codes)
    assert pred.heatmaps.min() >= 0 and pred.heatmaps.max() <= 1
    # The export fitted the unusual-image statistics on the training features.
    assert card.raw["ood"]["fitted_on"]["train_images"] > 0
    assert pred.unusual is not None

    # The app's CLI, in a fresh interpreter, must load it without TensorFlow.
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, json\nfrom desktop_app.cli import main\n"
            f"rc = main(['predict', {str(image)!r}, '--model', {str(onnx_path)!r}, '--age', '60',"
            " '--sex', 'male', '--site', 'head/neck', '--json'])\n"
            "assert 'tensorflow' not in sys.modules\nsys.exit(rc)",
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr
    printed = json.loads(out.stdout)
    assert printed["top_class"]["code"] == pred.top_code
    assert printed["malignancy_risk"] == pytest.approx(pred.risk, abs=1e-5)
    assert printed["model"]["sha256"] == engine.sha256


def test_synthetic_train_evaluate_export_and_use(synthetic_ham, tmp_path):
    run = tmp_path / "runs" / "synthetic"
    onnx_path = run_pipeline(
        synthetic_ham,
        run,
        tmp_path / "cache",
        [
            "--image-size",
            "64",
            "--weights",
            "none",
            "--head-units",
            "16",
            "--epochs-frozen",
            "1",
            "--epochs-finetune",
            "1",
            "--batch-size",
            "16",
        ],
    )
    metrics = check_run_folder(run, n_classes=7)
    image = next((synthetic_ham / "images").glob("*.jpg"))
    check_model_in_the_app(onnx_path, metrics, image)


@pytest.mark.shared_data
def test_real_ham10000_smoke_run_on_200_images(shared_data_dir, tmp_path):
    ham = shared_data_dir / "ham10000"
    weights = shared_data_dir / WEIGHTS
    if not (ham.is_dir() and weights.is_file()):
        pytest.skip("HAM10000 or the MobileNetV2 weights are missing from the shared data")
    run = tmp_path / "runs" / "ham200"
    onnx_path = run_pipeline(
        ham,
        run,
        tmp_path / "cache",
        [
            "--limit",
            "200",
            "--image-size",
            "96",
            "--weights",
            str(weights),
            "--epochs-frozen",
            "1",
            "--epochs-finetune",
            "1",
            "--batch-size",
            "32",
        ],
    )
    metrics = check_run_folder(run, n_classes=7)
    check_model_in_the_app(onnx_path, metrics, next((ham / "images").glob("ISIC_*.jpg")))
    # ImageNet features are real: the heatmaps are not all empty.
    engine = Engine.load(onnx_path, providers="cpu")
    images = sorted((ham / "images").glob("ISIC_*.jpg"))[:4]
    preds = engine.predict([load_image(p).rgb for p in images])
    assert max(float(p.heatmaps.max()) for p in preds) > 0.5
