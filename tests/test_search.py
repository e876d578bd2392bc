"""The ``search`` sub-command: a 2-trial Optuna study on the synthetic set (SQLite, resumed), the
written results and reproduce command, and a pruned trial."""

from __future__ import annotations

import argparse
import csv
import json
import os
import shlex
from dataclasses import replace
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
optuna = pytest.importorskip("optuna")
pytest.importorskip("trainer.train")

from trainer import search as search_mod  # noqa: E402
from trainer.train import TrainConfig  # noqa: E402


class AlwaysPrune(optuna.pruners.BasePruner):
    def prune(self, study, trial) -> bool:
        return True


def test_search_space_and_pruning_callback():
    """The sampled values stay in the documented space; the callback reports every epoch across
    stages and raises TrialPruned when told to."""
    study = optuna.create_study(direction="maximize", pruner=AlwaysPrune())
    trial = study.ask()
    params = search_mod.suggest(trial, use_metadata=True)
    assert set(params) == set(search_mod.SEARCHED)
    assert 1e-4 <= params["lr"] <= 3e-3 and 1e-5 <= params["lr_finetune"] <= 3e-4
    assert 0.1 <= params["dropout"] <= 0.5 and 0.0 <= params["meta_dropout"] <= 0.4
    assert params["batch_size"] in (16, 32, 64) and params["unfreeze"] in (0, 20, 40, 80, -1)
    assert "meta_dropout" not in search_mod.suggest(study.ask(), use_metadata=False)

    cb = search_mod.pruning_callback(trial)
    cb.on_epoch_end(0, {"loss": 1.0})  # no val_bma: nothing reported
    with pytest.raises(optuna.TrialPruned):
        cb.on_epoch_end(0, {"val_bma": 0.4})
    assert trial.storage.get_trial(trial._trial_id).intermediate_values == {0: 0.4}

    never = optuna.create_study(direction="maximize", pruner=optuna.pruners.NopPruner())
    t2 = never.ask()
    cb2 = search_mod.pruning_callback(t2)
    for epoch, v in enumerate([0.2, 0.3, 0.5]):  # stage 2 restarts epoch at 0: steps still grow
        cb2.on_epoch_end(epoch % 2, {"val_bma": v})
    assert never.trials[0].intermediate_values == {0: 0.2, 1: 0.3, 2: 0.5}


def test_reproduce_command_parses_back_to_the_config(tmp_path):
    from trainer.cli import build_parser
    from trainer.train import config_from_args

    config = TrainConfig(
        data=str(tmp_path / "my data"),
        run="x",
        split=str(tmp_path / "split.csv"),
        image_size=64,
        weights="none",
        use_metadata=False,
        classes=["MEL", "NV"],
        lr=0.00123456789,
        batch_size=16,
        unfreeze=-1,
        epochs_frozen=3,
        epochs_finetune=10,
    )
    cmd = search_mod.reproduce_command(config, "runs/final")
    argv = shlex.split(cmd)
    assert argv[:4] == ["python", "-m", "trainer", "train"]
    back = config_from_args(build_parser().parse_args(argv[3:]))
    assert back.run == "runs/final" and back.data == config.data and back.split == config.split
    assert back.use_metadata is False and back.classes == ["MEL", "NV"]
    assert back.unfreeze == -1 and back.batch_size == 16 and back.image_size == 64
    assert back.lr == config.lr  # floats written exactly (repr)
    assert (back.epochs_frozen, back.epochs_finetune) == (3, 10)
    assert search_mod.final_run_dir("runs/ham-search") == str(Path("runs/ham"))
    assert search_mod.final_run_dir("runs/ham") == str(Path("runs/ham-best"))


def test_search_help_is_wired_into_the_cli():
    from trainer.cli import build_parser

    parser = build_parser()
    args = parser.parse_args(["search", "--data", "d", "--run", "r"])
    assert args.trials == 20 and (args.epochs_frozen, args.epochs_finetune) == (1, 2)
    assert args.storage is None and args.pruner == "median"


@pytest.mark.slow
def test_search_two_trials_then_resume_with_a_pruned_trial(synthetic_ham, tmp_path, capsys):
    from trainer.cli import main

    run = tmp_path / "runs" / "tiny-search"
    common = [
        "--data", str(synthetic_ham), "--run", str(run), "--image-size", "32",
        "--weights", "none", "--cache-dir", str(tmp_path / "cache"),
        "--epochs-frozen", "1", "--epochs-finetune", "0", "--augment", "none", "--seed", "3",
    ]  # fmt: skip
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    rc = main(["search", *common, "--trials", "2", "--storage", storage, "--pruner", "none"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "retrain with the full epochs" in out

    best = json.loads((run / "best_params.json").read_text())
    assert best["best_trial"] in (0, 1) and 0.0 <= best["best_val_bma"] <= 1.0
    assert set(best["params"]) == set(search_mod.SEARCHED)
    assert best["trials"] == {"complete": 2}
    command = (run / "best_command.txt").read_text().strip()
    assert command == best["reproduce"]
    assert "--epochs-frozen 3 --epochs-finetune 10" in command  # train's full defaults
    assert f"--split {run / 'split.csv'}" in command or str(run / "split.csv") in command
    for t in (0, 1):
        assert (run / f"trial_{t:03d}" / "model.keras").is_file()
        cfg = json.loads((run / f"trial_{t:03d}" / "config.json").read_text())
        assert Path(cfg["train_config"]["split"]).name == "split.csv"
    assert (run / "split.csv").is_file()

    # the same study resumed, one more trial, with a pruner that always prunes: it is PRUNED after
    # its first epoch and the best result is unchanged
    base = TrainConfig(
        data=str(synthetic_ham), run=str(run), image_size=32, weights="none",
        cache_dir=str(tmp_path / "cache"), epochs_frozen=1, epochs_finetune=0, augment="none",
        seed=3,
    )  # fmt: skip
    result = search_mod.search(
        base, run, trials=3, storage=storage, study_name=run.name, pruner=AlwaysPrune(),
        progress=False,
    )  # fmt: skip
    assert result["best_trial"] == best["best_trial"]
    assert result["trials"] == {"complete": 2, "pruned": 1}
    with open(run / "trials.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["state"] for r in rows] == ["COMPLETE", "COMPLETE", "PRUNED"]
    assert rows[2]["user_attrs_trial_dir"].endswith("trial_002")

    # nothing left to do: re-running starts no trial
    again = search_mod.search(
        replace(base), run, trials=3, storage=storage, study_name=run.name, progress=False
    )
    assert again["trials"] == {"complete": 2, "pruned": 1}

    # a new (in-memory) study in the same folder starts its trial_000 afresh instead of refusing
    # the folder left by the first study
    fresh = search_mod.search(
        base, run, trials=1, storage="memory", pruner=AlwaysPrune(), progress=False
    )
    assert fresh == {}  # its only trial was pruned: no best parameters
    assert json.loads((run / "best_params.json").read_text())["best_trial"] == best["best_trial"]


def test_run_rejects_zero_trials():
    from desktop_app.core.errors import ModelError

    with pytest.raises(ModelError):
        search_mod.run(argparse.Namespace(trials=0))
