"""The ``train`` step (trainer/train.py) on tiny synthetic data: run folder, reload, class weights,
resume, image-only, and the test split kept out. Slow tests train real (tiny) models: 64 px,
MobileNetV2 without ImageNet weights, 16 head units, batch 16."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from trainer.losses import class_weights, sample_weights
from trainer.train import TrainConfig, _replay

# ---------------------------------------------------------------------------------------------
# Fast: pure functions
# ---------------------------------------------------------------------------------------------


def test_class_weights_balanced_sqrt_none():
    labels = np.array([0] * 60 + [1] * 30 + [2] * 10)
    bal = class_weights(labels, 4, "balanced")
    # scikit-learn's n / (K * count) over the classes present
    assert bal[0] == pytest.approx(100 / (3 * 60)) and bal[2] == pytest.approx(100 / (3 * 10))
    assert bal[3] == 0.0  # no sample: unused
    sk = pytest.importorskip("sklearn.utils.class_weight")
    ref = sk.compute_class_weight("balanced", classes=np.arange(3), y=labels)
    np.testing.assert_allclose([bal[k] for k in range(3)], ref)
    sq = class_weights(labels, 4, "sqrt")
    assert sq[2] / sq[0] == pytest.approx(np.sqrt(6.0))  # softer than balanced's 6
    for w in (bal, sq):  # mean weight over the training samples is 1: the lr keeps its meaning
        assert sample_weights(labels, w).mean() == pytest.approx(1.0)
    assert set(class_weights(labels, 4, "none").values()) == {1.0}
    with pytest.raises(ValueError):
        class_weights(labels, 4, "inverse")


def test_every_loss_honours_sample_weights():
    pytest.importorskip("keras")
    from trainer.distill import DistillationLoss
    from trainer.losses import make_loss

    rng = np.random.default_rng(0)
    logits = rng.normal(size=(6, 3)).astype(np.float32)
    onehot = np.eye(3, dtype=np.float32)[[0, 1, 2, 0, 1, 2]]
    teacher = rng.normal(size=(6, 3)).astype(np.float32)
    sw = np.array([5, 1, 1, 5, 1, 1], np.float32)
    cases = [
        (make_loss("ce"), onehot),
        (make_loss("focal", focal_gamma=2.0), onehot),
        (make_loss("ce", label_smoothing=0.1), onehot),
        (DistillationLoss(alpha=0.5, temperature=4.0), np.concatenate([onehot, teacher], 1)),
    ]
    for loss, y in cases:
        plain = float(loss(y, logits))
        weighted = float(loss(y, logits, sample_weight=sw))
        assert weighted != pytest.approx(plain), loss.name


def test_train_config_round_trip_and_validation(tmp_path):
    cfg = TrainConfig(data="d", run=str(tmp_path / "r"), weights="none", classes=["MEL", "NV"])
    assert TrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    cfg.validate()
    for bad in (
        {"loss": "hinge"},
        {"class_weights": "inverse"},
        {"augment": "wild"},
        {"epochs_frozen": 0, "epochs_finetune": 0},
        {"teacher": "sklesion", "loss": "focal"},
        {"weights": str(tmp_path / "missing.h5")},
        {"meta_dropout": 1.5},
    ):
        with pytest.raises(ValueError):
            TrainConfig.from_dict({**cfg.to_dict(), **bad}).validate()


def test_replay_restores_early_stopping_and_plateau_counters():
    assert _replay([0.2, 0.5, 0.4, 0.45], patience=4, reset_on_patience=False) == (0.5, 2)
    assert _replay([0.2, 0.5, 0.4, 0.45], patience=2, reset_on_patience=True) == (0.5, 0)
    assert _replay([], patience=2, reset_on_patience=False) == (None, 0)


def test_cli_builds_the_config():
    import argparse

    from trainer.train import add_arguments, config_from_args

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(
        shlex.split(
            "--data D --run R --no-metadata --fresh --classes MEL,NV --loss focal "
            "--class-weights sqrt --augment strong --aug-blur 0 --unfreeze -1"
        )
    )
    cfg = config_from_args(args)
    assert (cfg.use_metadata, cfg.resume, cfg.classes) == (False, False, ["MEL", "NV"])
    assert (cfg.loss, cfg.class_weights, cfg.augment, cfg.aug_blur, cfg.unfreeze) == (
        "focal",
        "sqrt",
        "strong",
        0.0,
        -1,
    )
    assert cfg.augment_config().blur_p == 0.0 and cfg.augment_config().resolution_p > 0


def test_the_row_reader_refuses_test_rows():
    from trainer.train import _guarded_reader

    class Data:
        images = np.zeros((10, 4, 4, 3), np.uint8)
        metadata = np.zeros((10, 2), np.float32)

    read = _guarded_reader(Data(), forbidden=np.array([7, 8]))
    x, m = read(np.array([3, 1]))
    assert x.shape == (2, 4, 4, 3) and m.shape == (2, 2)
    with pytest.raises(AssertionError, match="TEST"):
        read(np.array([1, 8]))


def test_fresh_clears_the_training_state_and_sets_old_evaluations_aside(tmp_path):
    from trainer.train import STATE_FILES, _start_fresh

    for name in (*STATE_FILES, "config.json", "teacher_logits.npy"):
        (tmp_path / name).write_text("x")
    (tmp_path / "backup" / "stage1").mkdir(parents=True)
    (tmp_path / "evaluation").mkdir()
    (tmp_path / "evaluation" / "metrics.json").write_text("{}")
    _start_fresh(tmp_path)
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left[0] == "evaluation.stale-" + left[0].split("-", 1)[1] and left[1:] == [
        "teacher_logits.npy"
    ]


def test_a_given_split_file_is_copied_with_its_sidecar(tmp_path):
    from trainer.train import _copy_split

    src = tmp_path / "my_split.csv"
    src.write_text("image_id,split\na,train\n")
    (tmp_path / "my_split.csv.json").write_text('{"seed": 1}')
    run = tmp_path / "run"
    run.mkdir()
    dst = _copy_split(src, run)
    assert dst == run / "split.csv" and dst.read_text() == src.read_text()
    assert json.loads((run / "split.csv.json").read_text()) == {"seed": 1}
    assert _copy_split(dst, run) == dst  # the run's own split: left alone


# ---------------------------------------------------------------------------------------------
# Slow: real (tiny) training runs
# ---------------------------------------------------------------------------------------------

TINY = dict(
    weights="none",
    image_size=64,
    head_units=16,
    meta_units=8,
    epochs_frozen=1,
    epochs_finetune=1,
    batch_size=16,
    patience=2,
    seed=7,
)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("image_cache")


@pytest.fixture(scope="module")
def imbalanced_ham(tmp_path_factory) -> Path:
    """The synthetic HAM10000 layout with DF and VASC cut to 3 lesions (6 images) each, so class
    weights are not all 1."""
    from tests.synthetic import make_ham10000

    root = make_ham10000(tmp_path_factory.mktemp("imbalanced_ham"), per_class=12, seed=3)
    table = pd.read_csv(root / "HAM10000_metadata.csv")
    rare = table["dx"].isin(["df", "vasc"])
    keep = ~rare | (table.groupby("dx").cumcount() < 6)
    for image_id in table.loc[~keep, "image_id"]:
        (root / "images" / f"{image_id}.jpg").unlink()
    table[keep].to_csv(root / "HAM10000_metadata.csv", index=False)
    return root


@pytest.fixture(scope="module")
def main_run(imbalanced_ham, cache_dir, tmp_path_factory):
    """One full two-stage run, with spies on every row read and on the training dataset."""
    import trainer.train as train_mod

    reads: list[np.ndarray] = []
    datasets: list = []
    real_read, real_make = train_mod._read_rows, train_mod.make_train_dataset

    def spy_read(data, idx):
        reads.append(np.array(idx))
        return real_read(data, idx)

    def spy_make(*args, **kwargs):
        ds = real_make(*args, **kwargs)
        datasets.append(ds)
        return ds

    mp = pytest.MonkeyPatch()
    mp.setattr(train_mod, "_read_rows", spy_read)
    mp.setattr(train_mod, "make_train_dataset", spy_make)
    run_dir = tmp_path_factory.mktemp("runs") / "main"
    config = TrainConfig(
        data=str(imbalanced_ham),
        run=str(run_dir),
        cache_dir=str(cache_dir),
        augment="strong",
        **TINY,
    )
    try:
        result = train_mod.train(config, progress=False)
    finally:
        mp.undo()
    return config, result, reads, datasets


@pytest.mark.slow
def test_run_folder_is_complete(main_run):
    config, result, _, _ = main_run
    run = Path(config.run)
    for name in (
        "config.json",
        "model.keras",
        "last.keras",
        "train_log.csv",
        "split.csv",
        "split.csv.json",
        "best.json",
        "stage1.done.json",
        "stage2.done.json",
    ):
        assert (run / name).is_file(), name
    assert not (run / "backup").exists()  # removed once the stages completed
    saved = json.loads((run / "config.json").read_text())
    assert TrainConfig.from_dict(saved["train_config"]) == config
    assert (
        saved["classes"] == list(result.classes) == ["MEL", "NV", "BCC", "AK", "BKL", "DF", "VASC"]
    )
    assert saved["metadata_encoding"]["feature_names"][0] == "age_scaled"
    assert saved["image_size"] == 64 and saved["use_metadata"] is True
    assert saved["trainer_version"] and saved["versions"]["tensorflow"]
    assert saved["argv"] and saved["command"]
    counts = saved["dataset_summary"]["counts"]
    assert counts["train"]["NV"] > counts["train"]["DF"] > 0
    log = pd.read_csv(run / "train_log.csv")
    assert list(log["stage"]) == [1, 2] and list(log["epoch"]) == [1, 1]
    assert {"val_bma", "val_loss", "val_accuracy", "loss", "accuracy", "lr", "seconds"} <= set(log)
    assert log["val_bma"].between(0, 1).all()
    assert log["lr"].tolist() == pytest.approx([1e-3, 1e-4])
    assert result.best_val_bma == pytest.approx(log["val_bma"].max())
    assert set(pd.read_csv(run / "split.csv")["split"]) == {"train", "val", "test"}


@pytest.mark.slow
def test_saved_model_is_the_core_and_predicts_like_the_in_memory_model(main_run):
    import keras

    from trainer.model import CUSTOM_OBJECTS

    config, result, _, _ = main_run
    loaded = keras.models.load_model(
        Path(config.run) / "model.keras", custom_objects=CUSTOM_OBJECTS
    )
    assert [t.name for t in loaded.inputs] == ["image", "metadata"]
    kinds = {type(layer).__name__ for layer in loaded._flatten_layers()}
    assert not kinds & {"MetadataDropout", "RandomGeometry", "RandomColor", "Sequential"}
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (5, 64, 64, 3)).astype(np.float32)
    m = rng.uniform(0, 1, (5, loaded.inputs[1].shape[1])).astype(np.float32)
    expected = np.asarray(result.model([x, m], training=False))
    np.testing.assert_allclose(np.asarray(loaded([x, m], training=False)), expected, atol=1e-5)


@pytest.mark.slow
def test_class_weights_reach_fit_as_sample_weights(main_run):
    config, _, _, datasets = main_run
    from trainer.data import prepare

    assert len(datasets) == 2  # one per stage
    data = prepare(
        config.data,
        image_size=64,
        cache_dir=config.cache_dir,
        split_path=Path(config.run) / "split.csv",
        progress=False,
    )
    k = len(data.classes)
    expected = class_weights(data.labels[data.indices("train")], k, "balanced")
    assert len(set(np.round(list(expected.values()), 6))) > 1  # imbalanced: weights differ
    seen = 0
    for inputs, y, sw in datasets[0]:
        labels = np.argmax(y.numpy()[:, :k], axis=1)
        np.testing.assert_allclose(sw.numpy(), [expected[c] for c in labels], rtol=1e-6)
        assert set(inputs) == {"image", "metadata"}
        seen += len(labels)
    assert seen == len(data.indices("train"))


@pytest.mark.slow
def test_test_split_is_never_read_during_training(main_run):
    config, _, reads, _ = main_run
    split = pd.read_csv(Path(config.run) / "split.csv")
    from trainer.data import prepare

    data = prepare(
        config.data,
        image_size=64,
        cache_dir=config.cache_dir,
        split_path=Path(config.run) / "split.csv",
        progress=False,
    )
    seen = np.unique(np.concatenate(reads))
    test = data.indices("test")
    assert len(test) > 0 and (split["split"] == "test").sum() == len(test)
    assert not np.isin(seen, test).any()
    # ... while every train and val row was read
    assert np.isin(data.indices("train"), seen).all() and np.isin(data.indices("val"), seen).all()


@pytest.mark.slow
def test_rerunning_a_finished_run_redoes_nothing(main_run):
    import trainer.train as train_mod

    config, first, _, _ = main_run
    run = Path(config.run)
    before = {p: (run / p).stat().st_mtime_ns for p in ("model.keras", "train_log.csv")}
    again = train_mod.train(config, progress=False)
    assert {s["status"] for s in again.stages.values()} == {"skipped"}
    assert {p: (run / p).stat().st_mtime_ns for p in before} == before
    assert len(pd.read_csv(run / "train_log.csv")) == 2
    assert again.best_val_bma == first.best_val_bma
    # a different configuration is refused instead of silently mixing two runs
    from trainer.train import RunConflictError

    with pytest.raises(RunConflictError, match="lr"):
        train_mod.train(TrainConfig.from_dict({**config.to_dict(), "lr": 0.5}), progress=False)


@pytest.mark.slow
def test_an_interrupted_stage_resumes_after_its_last_epoch(
    synthetic_ham, cache_dir, tmp_path, main_run
):
    """Also a distillation run: the main run's model is the teacher (cached logits, 2K targets)."""
    import keras

    import trainer.train as train_mod

    class Interrupt(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            raise KeyboardInterrupt  # after BackupAndRestore saved epoch 1

    config = TrainConfig(
        data=str(synthetic_ham),
        run=str(tmp_path / "run"),
        cache_dir=str(cache_dir),
        augment="basic",
        teacher=str(Path(main_run[0].run) / "model.keras"),
        **{**TINY, "epochs_frozen": 2, "epochs_finetune": 0},
    )
    with pytest.raises(KeyboardInterrupt):
        train_mod.train(config, progress=False, callbacks=[Interrupt()])
    run = Path(config.run)
    assert (run / "config.json").is_file()  # written before training
    assert (run / "backup" / "stage1" / "training_metadata.json").is_file()
    assert not (run / "stage1.done.json").exists()
    assert len(pd.read_csv(run / "train_log.csv")) == 1

    result = train_mod.train(config, progress=False)  # the same command again
    info = result.stages[1]
    assert info["status"] == "resumed" and info["resumed_from"] == 1
    assert info["epochs_this_call"] == 1 and info["epochs"] == 2
    log = pd.read_csv(run / "train_log.csv")
    assert list(log["epoch"]) == [1, 2] and list(log["stage"]) == [1, 1]
    assert (run / "stage1.done.json").is_file() and not (run / "backup").exists()
    saved = json.loads((run / "config.json").read_text())
    assert len(saved["resumed"]) == 1
    teacher = np.load(run / "teacher_logits.npy")
    test_rows = pd.read_csv(run / "split.csv")["split"].eq("test").to_numpy()
    assert np.isnan(teacher[test_rows]).all() and np.isfinite(teacher[~test_rows]).all()


@pytest.mark.slow
def test_image_only_model(synthetic_ham, cache_dir, tmp_path):
    import keras

    import trainer.train as train_mod
    from trainer.model import CUSTOM_OBJECTS, uses_metadata

    config = TrainConfig(
        data=str(synthetic_ham),
        run=str(tmp_path / "image_only"),
        cache_dir=str(cache_dir),
        use_metadata=False,
        loss="focal",
        class_weights="sqrt",
        label_smoothing=0.1,
        **{**TINY, "epochs_finetune": 0},
    )
    result = train_mod.train(config, progress=False)
    loaded = keras.models.load_model(result.model_path, custom_objects=CUSTOM_OBJECTS)
    assert len(loaded.inputs) == 1 and not uses_metadata(loaded)
    x = np.random.default_rng(1).uniform(0, 255, (3, 64, 64, 3)).astype(np.float32)
    np.testing.assert_allclose(
        np.asarray(loaded([x], training=False)),
        np.asarray(result.model([x], training=False)),
        atol=1e-5,
    )
    assert json.loads((Path(config.run) / "config.json").read_text())["use_metadata"] is False


def warm_start_config(config: TrainConfig, run: Path) -> TrainConfig:
    """One fine-tuning epoch that continues ``config``'s run on its own split."""
    return TrainConfig(
        **{
            **config.to_dict(),
            "run": str(run),
            "split": str(Path(config.run) / "split.csv"),
            "init_from": config.run,
            "epochs_frozen": 0,
            "epochs_finetune": 1,
        }
    )


@pytest.mark.slow
def test_init_from_starts_from_the_earlier_runs_weights(main_run, tmp_path):
    """A warm start with the earlier run's split begins where that run ended: before any update,
    its val predictions equal the earlier model's."""
    import trainer.train as train_mod

    config, result, _, _ = main_run
    import keras

    seen: list[np.ndarray] = []

    class WeightsAtStart(keras.callbacks.Callback):  # the head's bias before the first update
        def on_train_begin(self, logs=None):
            seen.append(self.model.get_weights()[-1].copy())

    warm = warm_start_config(config, tmp_path / "warm")
    train_mod.train(warm, progress=False, callbacks=[WeightsAtStart()])
    np.testing.assert_array_equal(seen[0], result.model.get_weights()[-1])
    saved = json.loads((tmp_path / "warm" / "config.json").read_text())
    assert saved["train_config"]["init_from"] == config.run


@pytest.mark.slow
def test_init_from_refuses_a_model_that_saw_this_runs_test_split(main_run, tmp_path):
    import trainer.train as train_mod
    from desktop_app.core.errors import ModelError

    config, _, _, _ = main_run
    other = TrainConfig(
        **{
            **config.to_dict(),
            "run": str(tmp_path / "other_split"),
            "seed": config.seed + 1,  # another split: some of its test images were trained on
            "init_from": config.run,
        }
    )
    with pytest.raises(ModelError, match="test split"):
        train_mod.train(other, progress=False)
    assert not (tmp_path / "other_split" / "model.keras").exists()


def test_init_from_needs_an_existing_model(tmp_path):
    config = TrainConfig(data=str(tmp_path), run=str(tmp_path / "r"), init_from=str(tmp_path / "x"))
    with pytest.raises(ValueError, match="--init-from"):
        config.validate()


@pytest.mark.slow
def test_a_soup_of_two_runs_is_a_run_that_evaluate_and_export_accept(main_run, tmp_path):
    """Greedy soup of the main run and a warm-started run on the same split: a loadable core,
    its val BMA recorded, and the distillation teacher (none here) carried into the config."""
    import argparse

    import trainer.train as train_mod
    from trainer import soup
    from trainer.evaluate import load_model

    config, _, _, _ = main_run
    warm = warm_start_config(config, tmp_path / "warm")
    train_mod.train(warm, progress=False)
    out = tmp_path / "soup"
    args = argparse.Namespace(
        runs=[Path(config.run), tmp_path / "warm"],
        run=out,
        uniform=True,
        batch_size=16,
        data=None,
        cache_dir=None,
    )
    assert soup.run(args) == 0
    model = load_model(out / "model.keras")
    a = load_model(Path(config.run) / "model.keras")
    b = load_model(tmp_path / "warm" / "model.keras")
    expected = (a.get_weights()[-1] + b.get_weights()[-1]) / 2
    np.testing.assert_allclose(model.get_weights()[-1], expected, rtol=1e-6)
    saved = json.loads((out / "config.json").read_text())
    assert saved["soup"]["method"] == "uniform"
    assert [i["used"] for i in saved["soup"]["ingredients"]] == [True, True]
    assert (out / "split.csv").read_text() == (Path(config.run) / "split.csv").read_text()
    assert saved["train_config"]["teacher"] is None
