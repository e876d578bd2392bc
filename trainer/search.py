"""``search`` sub-command: Optuna hyper-parameter search on the validation split, with pruning.

::

    python -m trainer search --data PATH --run runs/NAME-search [--trials 20] [--timeout SECONDS]
        [--study-name NAME] [--storage sqlite:///runs/NAME-search/optuna.db]
        [--epochs-frozen 1 --epochs-finetune 2] [--limit N] [--seed S] [any `train` flag]

What it does:

- Prepares the data once: makes (or reuses) ``RUN/split.csv`` and fills the decoded-image cache;
  every trial then trains on that same split file and cache (``train`` re-opens them, which costs
  seconds, not a re-decode). With ``--teacher`` the teacher's logits are computed once into
  ``RUN/teacher_logits.npy`` and copied into each trial folder, where ``train`` finds them valid.
- Each trial is a short ``train`` run in ``RUN/trial_NNN/`` with sampled values of
  ``lr`` (log 1e-4..3e-3), ``lr_finetune`` (log 1e-5..3e-4), ``dropout`` (0.1..0.5),
  ``batch_size`` (16, 32, 64), ``unfreeze`` (0, 20, 40, 80, -1 = all) and ``meta_dropout``
  (0..0.4, only when the model uses metadata). The other ``train`` flags are fixed for the search;
  values given for the searched ones are ignored.
- Objective: the trial's best validation BMA (``train``'s ``val_bma``). The test split is never
  read: ``train`` refuses test rows, and nothing here looks at them.
- Pruning: ``MedianPruner``; a Keras callback reports ``val_bma`` after every epoch, counted across
  both stages (step 0, 1, ...), and stops a trial that falls below the median of earlier trials.
- Resumable: the study lives in ``RUN/optuna.db`` (SQLite) by default; re-running the same command
  continues it. ``--trials`` is the study's total of finished (complete or pruned) trials, not a
  number to add. A trial left "running" by a killed search is marked failed on restart.
- Writes, atomically: ``RUN/best_params.json``, ``RUN/trials.csv`` and ``RUN/best_command.txt``,
  the exact ``python -m trainer train ...`` line that retrains the best trial with the full epochs
  (``train``'s defaults unless ``--final-epochs-frozen/--final-epochs-finetune`` say otherwise) on
  the same split.

Optuna, TensorFlow and Keras are imported inside functions: ``python -m trainer --help`` stays fast.
"""

from __future__ import annotations

import argparse
import math
import shlex
import shutil
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from desktop_app.core.atomic import atomic_save_json, atomic_write_text
from desktop_app.core.errors import ModelError

SEARCHED = ("lr", "lr_finetune", "dropout", "batch_size", "unfreeze", "meta_dropout")
BATCH_SIZES = (16, 32, 64)
UNFREEZE_CHOICES = (0, 20, 40, 80, -1)
MONITOR = "val_bma"
# TrainConfig fields never copied into the reproduce command as such.
_NOT_REPRODUCED = frozenset({"data", "run", "split", "resume", "epochs_frozen", "epochs_finetune"})


# --------------------------------------------------------------------------------------------------
# Search space and pruning
# --------------------------------------------------------------------------------------------------


def suggest(trial: Any, use_metadata: bool = True) -> dict[str, Any]:
    """Sample one point of the search space (names are TrainConfig fields)."""
    params: dict[str, Any] = {
        "lr": trial.suggest_float("lr", 1e-4, 3e-3, log=True),
        "lr_finetune": trial.suggest_float("lr_finetune", 1e-5, 3e-4, log=True),
        "dropout": trial.suggest_float("dropout", 0.1, 0.5),
        "batch_size": trial.suggest_categorical("batch_size", list(BATCH_SIZES)),
        "unfreeze": trial.suggest_categorical("unfreeze", list(UNFREEZE_CHOICES)),
    }
    if use_metadata:
        params["meta_dropout"] = trial.suggest_float("meta_dropout", 0.0, 0.4)
    return params


def pruning_callback(trial: Any, monitor: str = MONITOR) -> Any:
    """A Keras callback: report ``logs[monitor]`` to Optuna after each epoch and raise
    ``optuna.TrialPruned`` when the pruner says so. The step counts epochs across both stages (the
    same instance is passed to both ``fit`` calls), so stage 2's first epoch is step
    ``epochs_frozen``."""
    import keras
    import optuna

    class OptunaPruning(keras.callbacks.Callback):
        def __init__(self) -> None:
            super().__init__()
            self.step = 0

        def on_epoch_end(self, epoch, logs=None):
            value = (logs or {}).get(monitor)
            if value is None or not math.isfinite(float(value)):
                return
            trial.report(float(value), self.step)
            self.step += 1
            if trial.should_prune():
                raise optuna.TrialPruned(f"{monitor} {float(value):.4f} at step {self.step - 1}")

    return OptunaPruning()


def make_pruner(kind: str = "median", startup: int = 3, warmup: int = 1) -> Any:
    import optuna

    if kind == "none":
        return optuna.pruners.NopPruner()
    return optuna.pruners.MedianPruner(n_startup_trials=startup, n_warmup_steps=warmup)


# --------------------------------------------------------------------------------------------------
# Reproduce command
# --------------------------------------------------------------------------------------------------


def _train_parser() -> argparse.ArgumentParser:
    from trainer import train as train_mod

    parser = argparse.ArgumentParser(add_help=False)
    train_mod.add_arguments(parser)
    return parser


def final_run_dir(search_run: str | Path) -> str:
    """runs/NAME-search -> runs/NAME; anything else -> RUN-best."""
    path = Path(search_run)
    name = path.name[: -len("-search")] if path.name.endswith("-search") else f"{path.name}-best"
    return str(path.with_name(name or "best"))


def reproduce_command(config: Any, run: str, *, python: str = "python") -> str:
    """``python -m trainer train ...`` for ``config`` (a TrainConfig): every setting that differs
    from train's defaults, plus data, run, split, both epoch counts and the searched values,
    always (so the line still means the same if train's defaults change)."""
    from trainer.train import TrainConfig

    defaults = TrainConfig(data="", run="")
    values = asdict(config)
    by_dest: dict[str, argparse.Action] = {}
    for action in _train_parser()._actions:
        by_dest.setdefault(action.dest, action)
    argv = [python, "-m", "trainer", "train", "--data", str(config.data), "--run", str(run)]
    if config.split:
        argv += ["--split", str(config.split)]
    argv += ["--epochs-frozen", str(config.epochs_frozen)]
    argv += ["--epochs-finetune", str(config.epochs_finetune)]
    searched = set(SEARCHED) - (set() if config.use_metadata else {"meta_dropout"})
    for name, value in values.items():
        if name in _NOT_REPRODUCED:
            continue
        if name not in searched and value == getattr(defaults, name):
            continue
        action = by_dest.get(name)
        if action is None or not action.option_strings:
            continue
        flag = action.option_strings[0]
        if isinstance(action, argparse._StoreFalseAction | argparse._StoreTrueAction):
            if bool(value) != bool(action.default):
                argv.append(flag)
            continue
        if value is None:
            continue
        if isinstance(value, list | tuple):
            value = ",".join(str(v) for v in value)
        argv += [flag, repr(value) if isinstance(value, float) else str(value)]  # exact floats
    return shlex.join(argv)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


# --------------------------------------------------------------------------------------------------
# The search
# --------------------------------------------------------------------------------------------------


def default_storage(run_dir: str | Path) -> str:
    return f"sqlite:///{(Path(run_dir) / 'optuna.db').resolve()}"


def _prepare_once(base: Any, run_dir: Path, progress: bool) -> tuple[Any, str]:
    """Make or reuse the split file and fill the image cache once for all trials."""
    from trainer.train import prepare_config_data

    split_file = run_dir / "split.csv"
    kwargs: dict[str, Any] = {}
    if base.split:
        kwargs["split_path"] = base.split
        used = str(Path(base.split).resolve())
    elif split_file.is_file():
        kwargs["split_path"] = split_file
        used = str(split_file.resolve())
    else:
        kwargs["split_out"] = split_file
        used = str(split_file.resolve())
    data = prepare_config_data(base, progress=progress, **kwargs)
    if len(data.indices("val")) == 0:
        raise ModelError("The split has no validation images: the search has nothing to score.")
    return data, used


def _fail_stale_trials(study: Any) -> int:
    """A trial still RUNNING when a single-process search starts was left by a killed search."""
    from optuna.trial import TrialState

    stale = [t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))]
    for number in stale:
        study.tell(number, state=TrialState.FAIL)
    return len(stale)


def _finished(study: Any) -> int:
    from optuna.trial import TrialState

    return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))


def _write_results(study: Any, base: Any, run_dir: Path, final_epochs: tuple[int, int]) -> dict:
    from optuna.trial import TrialState

    frame = study.trials_dataframe(attrs=("number", "value", "state", "params", "user_attrs",
                                          "duration", "datetime_start", "datetime_complete"))  # fmt: skip
    atomic_write_text(run_dir / "trials.csv", frame.to_csv(index=False))
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        return {}
    best = study.best_trial
    config = replace(
        base,
        **best.params,
        epochs_frozen=final_epochs[0],
        epochs_finetune=final_epochs[1],
        resume=True,
    )
    command = reproduce_command(config, final_run_dir(run_dir))
    counts = {
        s.name.lower(): len(study.get_trials(deepcopy=False, states=(s,))) for s in TrialState
    }
    result = {
        "study": study.study_name,
        "objective": f"best {MONITOR} (validation split; the test split is never used)",
        "best_trial": best.number,
        "best_val_bma": best.value,
        "params": best.params,
        "trial_dir": best.user_attrs.get("trial_dir"),
        "search_epochs": {"frozen": base.epochs_frozen, "finetune": base.epochs_finetune},
        "final_epochs": {"frozen": final_epochs[0], "finetune": final_epochs[1]},
        "split": base.split,
        # with --teacher: copy these next to the final run to skip recomputing the teacher
        "teacher_logits": str(run_dir / "teacher_logits.npy") if base.teacher else None,
        "trials": {k: v for k, v in counts.items() if v},
        "reproduce": command,
    }
    atomic_save_json(run_dir / "best_params.json", result)
    atomic_write_text(run_dir / "best_command.txt", command + "\n")
    return result


def search(
    base: Any,
    run_dir: str | Path,
    *,
    trials: int = 20,
    timeout: float | None = None,
    study_name: str | None = None,
    storage: str | None = "default",
    pruner: Any = None,
    final_epochs: tuple[int, int] | None = None,
    progress: bool = True,
    trial_progress: bool = False,
) -> dict[str, Any]:
    """Run (or resume) a study. ``base`` is a TrainConfig holding the fixed settings and the short
    search epochs; ``storage``: "default" (``RUN/optuna.db``), None/"memory" (in memory) or an
    Optuna storage URL. Returns what ``best_params.json`` holds ({} if no trial completed)."""
    import optuna
    import tensorflow as tf

    from trainer import train as train_mod

    if not trial_progress:  # every trial builds a new model: TF's retracing warnings are expected
        tf.get_logger().setLevel("ERROR")
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if final_epochs is None:
        d = train_mod.TrainConfig(data="", run="")
        final_epochs = (d.epochs_frozen, d.epochs_finetune)
    try:
        replace(base, run=str(run_dir / "trial_000")).validate()
    except ValueError as exc:
        raise ModelError(str(exc)) from None

    data, split = _prepare_once(base, run_dir, progress)
    base = replace(base, split=split, resume=True)
    teacher_cache = None
    if base.teacher:
        from trainer.distill import teacher_logits_for

        teacher_cache = run_dir / "teacher_logits.npy"
        teacher_logits_for(base.teacher, data, teacher_cache, progress=progress)
    del data  # trials re-open the same split and cache through train()

    if storage == "default":
        storage = default_storage(run_dir)
    elif storage in ("memory", ":memory:", ""):
        storage = None
    study = optuna.create_study(
        storage=storage,
        study_name=study_name or run_dir.name,
        direction="maximize",
        sampler=optuna.samplers.TPESampler(seed=base.seed),
        pruner=pruner if pruner is not None else make_pruner(),
        load_if_exists=True,
    )
    if _fail_stale_trials(study) and progress:
        print("a trial left running by an interrupted search was marked failed", flush=True)
    remaining = max(0, trials - _finished(study))
    if progress:
        print(f"study {study.study_name!r}: {_finished(study)} trials done, {remaining} to run "
              f"(storage: {storage or 'memory'})", flush=True)  # fmt: skip

    def objective(trial: Any) -> float:
        import keras

        params = suggest(trial, base.use_metadata)
        trial_dir = run_dir / f"trial_{trial.number:03d}"
        trial.set_user_attr("trial_dir", str(trial_dir))
        trial_dir.mkdir(parents=True, exist_ok=True)
        if teacher_cache is not None:
            for src in (teacher_cache, teacher_cache.with_suffix(".json")):
                shutil.copy2(src, trial_dir / src.name)
        # A trial always starts fresh: a folder already there is left over from another study
        # (e.g. an in-memory one, or a deleted optuna.db) and must not be resumed or refused.
        config = replace(base, run=str(trial_dir), resume=False, **params)
        try:
            result = train_mod.train(
                config, progress=trial_progress, callbacks=[pruning_callback(trial)]
            )
        finally:
            keras.backend.clear_session()
        trial.set_user_attr("best_stage", result.best_stage)
        trial.set_user_attr("best_epoch", result.best_epoch)
        trial.set_user_attr("seconds", result.seconds)
        if result.best_val_bma is None:
            return float("nan")  # Optuna records the trial as failed
        return float(result.best_val_bma)

    def after_trial(study: Any, trial: Any) -> None:
        _write_results(study, base, run_dir, final_epochs)  # partial results survive a crash

    if remaining:
        study.optimize(
            objective,
            n_trials=remaining,
            timeout=timeout,
            callbacks=[after_trial],
            gc_after_trial=True,
            show_progress_bar=progress,
        )
    result = _write_results(study, base, run_dir, final_epochs)
    if progress:
        if result:
            params = ", ".join(f"{k}={_fmt(v)}" for k, v in result["params"].items())
            print(f"\nbest: trial {result['best_trial']}, val BMA {result['best_val_bma']:.4f}\n"
                  f"  {params}\nresults: {run_dir / 'best_params.json'}, {run_dir / 'trials.csv'}\n"
                  f"retrain with the full epochs:\n  {result['reproduce']}", flush=True)  # fmt: skip
        else:
            print("no trial completed: no best parameters yet (see trials.csv)", flush=True)
    return result


# --------------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from trainer import train as train_mod

    train_mod.add_arguments(parser)  # the base training flags, with train's defaults
    parser.set_defaults(epochs_frozen=1, epochs_finetune=2)
    d = train_mod.TrainConfig(data="", run="")
    s = parser.add_argument_group("search")
    s.add_argument("--trials", type=int, default=20,
                   help="total finished trials in the study (re-running resumes up to this)")  # fmt: skip
    s.add_argument("--timeout", type=float, default=None, metavar="SECONDS",
                   help="stop starting new trials after this many seconds")  # fmt: skip
    s.add_argument("--study-name", default=None, help="default: the run folder's name")
    s.add_argument("--storage", default=None,
                   help="Optuna storage URL (default: sqlite:///RUN/optuna.db, so it resumes; "
                   "'memory' for none)")  # fmt: skip
    s.add_argument("--pruner", choices=("median", "none"), default="median")
    s.add_argument("--prune-startup", type=int, default=3,
                   help="trials before the median pruner starts pruning")  # fmt: skip
    s.add_argument("--prune-warmup", type=int, default=1,
                   help="epochs of a trial before it may be pruned")  # fmt: skip
    s.add_argument("--final-epochs-frozen", type=int, default=d.epochs_frozen,
                   help="stage 1 epochs in the reproduce command")  # fmt: skip
    s.add_argument("--final-epochs-finetune", type=int, default=d.epochs_finetune,
                   help="stage 2 epochs in the reproduce command")  # fmt: skip
    s.add_argument("--trial-progress", action="store_true",
                   help="show each trial's training output (Keras progress)")  # fmt: skip


def run(args: argparse.Namespace) -> int:
    from trainer import train as train_mod

    if args.trials < 1:
        raise ModelError("--trials must be at least 1")
    base = train_mod.config_from_args(args)
    progress = not getattr(args, "quiet", False)
    result = search(
        base,
        args.run,
        trials=args.trials,
        timeout=args.timeout,
        study_name=args.study_name,
        storage=args.storage or "default",
        pruner=make_pruner(args.pruner, args.prune_startup, args.prune_warmup),
        final_epochs=(args.final_epochs_frozen, args.final_epochs_finetune),
        progress=progress,
        trial_progress=args.trial_progress and progress,
    )
    return 0 if result else 1
