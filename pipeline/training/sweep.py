"""Hyperparameter sweeps: Ray Tune around the training loop.

Each trial is a Tune function trainable that runs a `TorchTrainer` through `pipeline.training.harness.fit`
(Ray 2.60's pattern; `Tuner(trainer)` is deprecated), its workers' epochs reaching Tune through
`TuneReportCallback`. Each trial is an MLflow child run of the sweep's run: the trial creates it, or
reuses it when a restored sweep runs the trial again (found by its `trial_key` tag), and the driver
records how the trial ended. A sweep lives under `<storage>/sweeps/<sweep key>`: running the same
command again restores it, so finished trials are kept and unfinished ones resume from their
Ray Train checkpoints.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ray import tune

from pipeline.spec.options import check_options
from pipeline.spec.sections import DataConfig, ResourcesConfig, TrainConfig
from pipeline.spec.sweep import SweepConfig
from pipeline.tracking.queries import find_runs, kill_runs
from pipeline.training.config import WorkerConfig
from pipeline.training.recipe import resolve_recipe

TRIAL_KEY = "trial_key"
SWEEP_KEY = "sweep_key"


@dataclass
class TrialSetup:
    """What every trial of one model's sweep shares; pickled into the Tune experiment."""

    worker: WorkerConfig  # its recipe is resolved again per trial, from base_train and the trial's values
    base_train: dict[str, Any]  # the model's train section, before the trial's own values
    data: DataConfig
    resources: ResourcesConfig  # per trial
    tracking_uri: str
    experiment_id: str
    sweep_run_id: str
    sweep_key: str
    train_storage: str  # where the trials' Ray Train runs keep their checkpoints
    tags: dict[str, str]  # model, family, dataset, spec


@dataclass
class SweepOutcome:
    best_trial_id: str | None
    best_config: dict[str, Any] | None  # the sampled values of the best trial
    best_metrics: dict[str, Any]
    trials: list[dict[str, Any]]  # trial_id, config, end, epochs, error
    wall_time_s: float
    restored: bool

    @property
    def trial_epochs(self) -> int:
        return sum(t["epochs"] for t in self.trials)


def search_space(sweep: SweepConfig) -> dict[str, Any]:
    """The spec's search space as Tune domains."""
    space = {}
    for name, param in sweep.space.items():
        if param.type == "grid" or (param.type == "choice" and sweep.search == "grid"):
            space[name] = tune.grid_search(param.values)
        elif param.type == "choice":
            space[name] = tune.choice(param.values)
        elif param.type == "uniform":
            space[name] = tune.uniform(param.low, param.high)
        elif param.type == "loguniform":
            space[name] = tune.loguniform(param.low, param.high)
        else:
            space[name] = tune.randint(int(param.low), int(param.high))
    return space


def max_epochs(sweep: SweepConfig, base_train: dict[str, Any]) -> int:
    if "epochs" in sweep.space:
        return int(max(sweep.space["epochs"].candidates()))
    return int(base_train["epochs"])


def tune_config(sweep: SweepConfig, epochs: int, seed: int) -> tune.TuneConfig:
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
    from ray.tune.search import BasicVariantGenerator

    if sweep.search == "optuna":
        from optuna.samplers import TPESampler
        from ray.tune.search.optuna import OptunaSearch

        search_alg = OptunaSearch(sampler=TPESampler(seed=seed))
    else:
        # Tune applies max_concurrent_trials only to a Searcher, so this generator is given it itself.
        search_alg = BasicVariantGenerator(random_state=seed, max_concurrent=sweep.max_concurrent_trials)
    if sweep.scheduler == "asha" and epochs > 1:
        # Rungs count epochs (the workers' own counter), so a trial resumed from a checkpoint stays on its rung.
        # max_t is one past the last epoch: a trial that trains to the end finishes by itself (see run_sweep).
        scheduler = ASHAScheduler(time_attr="epoch", max_t=epochs + 1, grace_period=min(sweep.grace_period, epochs),
                                  reduction_factor=sweep.reduction_factor)
    else:
        scheduler = FIFOScheduler()
    return tune.TuneConfig(metric=sweep.metric, mode=sweep.mode, search_alg=search_alg, scheduler=scheduler,
                           num_samples=sweep.num_samples,
                           max_concurrent_trials=sweep.max_concurrent_trials if sweep.search == "optuna" else None)


def trial_run(tracker, setup: TrialSetup, trial_id: str, sampled: dict[str, Any], train: dict[str, Any]) -> str:
    """The trial's MLflow run: created on its first start, reused when a restored sweep runs it again."""
    key = f"{setup.sweep_key}/{trial_id}"
    if runs := find_runs(tracker.client, setup.experiment_id, {TRIAL_KEY: key, "stage": "trial"}, oldest_first=True):
        tracker.client.update_run(runs[0].info.run_id, status="RUNNING")
        return runs[0].info.run_id
    return tracker.start_run(
        setup.experiment_id, f"{setup.tags['model']}-{trial_id}", parent_id=setup.sweep_run_id,
        params={"train": train, "sampled": sampled, "resources": setup.resources.model_dump()},
        tags={**setup.tags, "stage": "trial", TRIAL_KEY: key, SWEEP_KEY: setup.sweep_key, "trial_id": trial_id,
              "sweep_run_id": setup.sweep_run_id})


def run_trial(config: dict[str, Any], setup: TrialSetup) -> None:
    """One trial, inside Tune: its config on top of the model's train section, trained by Ray Train."""
    from ray.tune.integration.ray_train import TuneReportCallback

    from pipeline.tracking.store import Tracker
    from pipeline.tracking.writer import RunWriter
    from pipeline.training.harness import fit
    from pipeline.training.loop import train_loop_per_worker

    started = time.time()
    trial_id = tune.get_context().get_trial_id()
    tracker = Tracker(setup.tracking_uri)
    run_id = trial_run(tracker, setup, trial_id, config, {**setup.base_train, **config})
    # The trial's values, resolved as the driver resolves a unit's (a failure ends the trial).
    train = TrainConfig.model_validate({**setup.base_train, **config})
    check_options(setup.data, train)
    worker = dataclasses.replace(setup.worker, recipe=resolve_recipe(train, setup.resources.num_workers),
                                 evaluate_test=False, label=f"{setup.tags['model']}-{trial_id}")
    # The Train run's name is the trial's: a restored trial resumes from its own latest checkpoint.
    # This trial process is the trial run's MLflow writer, as the driver is for a unit's run.
    result = fit(train_loop_per_worker, worker, setup.resources, setup.train_storage, f"{setup.sweep_key}-{trial_id}",
                 on_event=RunWriter(tracker, run_id, started_at=started), callbacks=[TuneReportCallback()])
    if result.error is not None:
        raise result.error


def error_reason(trial) -> str:
    """The last line of the trial's error (the exception itself, under Ray's wrapping)."""
    text = ""
    if trial.error_file and Path(trial.error_file).exists():
        text = Path(trial.error_file).read_text()
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return (lines[-1] if lines else "unknown error")[:5000]


class TrialEnds(tune.Callback):
    """Driver side: how each trial ended, on its MLflow run (tag `end`, status, `error`)."""

    def __init__(self, tracking_uri: str, experiment_id: str, sweep_key: str, epochs: int):
        self.tracking_uri, self.experiment_id, self.sweep_key, self.epochs = tracking_uri, experiment_id, sweep_key, epochs

    def on_trial_complete(self, iteration, trials, trial, **info):
        planned = int(trial.config.get("epochs", self.epochs))
        trained = int((trial.last_result or {}).get("epoch", 0))
        self._end(trial, "FINISHED", "completed" if trained >= planned else "stopped_early", trained)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._end(trial, "FAILED", "failed", int((trial.last_result or {}).get("epoch", 0)), error_reason(trial))

    def _end(self, trial, status: str, end: str, epochs: int, error: str | None = None) -> None:
        from rich import print as show

        from pipeline.tracking.store import Tracker

        tracker = Tracker(self.tracking_uri)
        runs = find_runs(tracker.client, self.experiment_id,
                         {TRIAL_KEY: f"{self.sweep_key}/{trial.trial_id}", "stage": "trial"}, oldest_first=True)
        if not runs:  # the trial failed before it created its run
            return
        run = runs[0]
        tracker.client.set_tag(run.info.run_id, "end", end)
        if error:
            tracker.client.set_tag(run.info.run_id, "error", error)
        tracker.log(run.info.run_id, {"epochs_trained": epochs})
        tracker.finish(run.info.run_id, status)
        values = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in trial.config.items())
        colour = {"completed": "green", "stopped_early": "yellow", "failed": "red"}[end]
        show(f"  trial {trial.trial_id} [{colour}]{end}[/] after {epochs} epoch(s): {values}"
             + (f" ({error})" if error else ""))


def mark_orphans_killed(client, experiment_id: str, sweep_key: str) -> int:
    """Trial runs still RUNNING after the sweep belong to no live trial (a driver killed before Tune
    saved them): mark them KILLED."""
    return kill_runs(client, find_runs(client, experiment_id, {SWEEP_KEY: sweep_key, "stage": "trial"}, "RUNNING"))


def run_sweep(sweep: SweepConfig, setup: TrialSetup, storage: str, verbose: bool = False) -> SweepOutcome:
    """Run (or restore and finish) one model's sweep under `<storage>/sweeps/<sweep key>`."""
    if not verbose:  # each trial's end is printed by TrialEnds and kept in MLflow; Tune's own report is noise
        os.environ["RAY_AIR_NEW_OUTPUT"] = "0"
        logging.getLogger("ray.tune").setLevel(logging.CRITICAL)
    epochs = max_epochs(sweep, setup.base_train)
    # A trial that Tune stops (ASHA, or the last epoch reached) is blocked waiting on its Train run, so it
    # never stops by itself; Tune kills it after this many seconds (default 600), and with it the Train run's
    # controller and workers, which would otherwise keep their CPUs.
    os.environ.setdefault("TUNE_FORCE_TRIAL_CLEANUP_S", "5")
    # The sweep's state (which trials ended) is saved every second rather than every 10+ s, so a driver
    # killed right after a trial ends does not run it again on resume.
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "1")
    # The trial's driver only waits on its Train workers, which hold the CPUs; Tune needs a non-empty
    # bundle, so it asks for a little memory instead of a CPU.
    trainable = tune.with_resources(tune.with_parameters(run_trial, setup=setup), {"CPU": 0, "memory": 2**26})
    path = f"{storage.rstrip('/')}/sweeps/{setup.sweep_key}"
    started = time.time()
    restored = tune.Tuner.can_restore(path)
    if restored:
        tuner = tune.Tuner.restore(path, trainable, resume_unfinished=True, resume_errored=False)
    else:
        tuner = tune.Tuner(
            trainable, param_space=search_space(sweep), tune_config=tune_config(sweep, epochs, setup.base_train["seed"]),
            run_config=tune.RunConfig(
                name=setup.sweep_key, storage_path=f"{storage.rstrip('/')}/sweeps", verbose=0,
                failure_config=tune.FailureConfig(max_failures=0, fail_fast=False),  # a failed trial is recorded, not retried
                callbacks=[TrialEnds(setup.tracking_uri, setup.experiment_id, setup.sweep_key, epochs)]))
    results = tuner.fit()
    trials = []
    for result in results:
        trial_id = result.metrics.get("trial_id") if result.metrics else None
        trial_id = trial_id or Path(result.path).name
        trials.append({"trial_id": trial_id, "config": result.config,
                       "epochs": int((result.metrics or {}).get("epoch", 0)),
                       "error": str(result.error).strip().splitlines()[-1] if result.error else None,
                       sweep.metric: (result.metrics or {}).get(sweep.metric)})
    try:
        best = results.get_best_result(sweep.metric, sweep.mode, scope="last", filter_nan_and_inf=True)
    except RuntimeError:  # no trial reported the metric
        best = None
    return SweepOutcome(
        best_trial_id=best.metrics.get("trial_id") if best else None, best_config=dict(best.config) if best else None,
        best_metrics={k: v for k, v in (best.metrics if best else {}).items() if isinstance(v, (int, float))},
        trials=trials, wall_time_s=time.time() - started, restored=restored)
