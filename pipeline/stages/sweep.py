"""The `sweep` stage: a Ray Tune search per model, one MLflow run per sweep with a child run per trial.

Selection uses the validation split only; the best config is recorded on the sweep run (params
`best.<field>`, tags, `best_config.json`) for the `retrain` stage.
"""
from __future__ import annotations

import json
import threading
from typing import Any

from pipeline.engine.context import Job, RunContext, storage_of
from pipeline.engine.registry import stage
from pipeline.engine.units import Unit
from pipeline.errors import UnitFailed
from pipeline.training.model_checks import check_models
from pipeline.training.recipe import (
    training_code,
    training_identity,
    worker_config,
)

# Sweep units run one at a time in this process: each is a Ray Tune run whose own trials run concurrently,
# and two Tune controllers in one driver share process-wide state (its environment settings, its output).
SWEEP_LOCK = threading.Lock()


def record_best(tracker, run_id: str, outcome, train: dict, metric: str) -> None:
    best = {**train, **outcome.best_config}
    # The best trial's validation top-1 error, whatever the metric: what its retrained model is selected by.
    val_err = {"best_val_top1_err": 100 - outcome.best_metrics["val_top1"]} \
        if "val_top1" in outcome.best_metrics else {}
    tracker.log(run_id, {f"best_{metric}": outcome.best_metrics[metric], "trials": len(outcome.trials),
                         "trial_epochs": outcome.trial_epochs, **val_err},
                params={"best": outcome.best_config})
    tracker.client.set_tag(run_id, "best_trial_id", outcome.best_trial_id)
    tracker.log_text(run_id, json.dumps(best, indent=2), "best_config.json")


def finished_sweep(run, context: RunContext) -> dict[str, Any]:
    """A finished sweep's output: its run, key and best config (from `best_config.json`)."""
    import tempfile

    client = context.tracker.client
    with tempfile.TemporaryDirectory() as folder:
        path = client.download_artifacts(run.info.run_id, "best_config.json", folder)
        with open(path) as handle:
            best = json.load(handle)
    return {"run_id": run.info.run_id, "sweep_key": run.data.tags.get("sweep_key"), "best_config": best}


@stage("sweep", per_model=True, preflight=check_models)
def plan(context: RunContext, planned: list[Unit]) -> list[Unit]:
    spec = context.spec
    units = []
    for name, entry in spec.named_entries():
        if not spec.swept(entry):
            continue
        identity = {**training_identity(spec, entry, spec.train_config(entry), spec.data),
                    "sweep": spec.sweep.model_dump(mode="json"), "world_size": spec.sweep.resources.num_workers}
        units.append(Unit(
            name=f"sweep/{name}", stage="sweep", model=name,
            title=f"{name}-sweep", identity=identity,
            code=training_code(entry.name, "pipeline/stages/sweep.py", "pipeline/training/sweep.py"),
            resources=spec.sweep.resources, parallel=spec.sweep.max_concurrent_trials, uses_data=True,
            from_run=finished_sweep, run=lambda job, entry=entry: run_unit(job, entry)))
    return units


def run_unit(job: Job, entry) -> dict[str, Any]:
    """One model's Ray Tune search, in the job's run; trials are its child runs."""
    from models.catalogue import family_of
    from pipeline.training.sweep import (
        SWEEP_KEY,
        TrialSetup,
        mark_orphans_killed,
        run_sweep,
    )

    context, spec, tracker = job.context, job.spec, job.tracker
    key = f"{spec.name}-{entry.name}-{job.unit.key[:10]}"  # names the Tune experiment: the same unit resumes it
    base_train = spec.train_config(entry).model_dump()
    if not job.resumed:
        space = {name: param.model_dump(exclude_none=True) for name, param in spec.sweep.space.items()}
        tracker.log(job.run_id, {}, params={
            "model": entry.name, "train": base_train,
            "sweep": {**spec.sweep.model_dump(exclude={"space"}), "space": json.dumps(space)}})
    tracker.client.set_tag(job.run_id, SWEEP_KEY, key)
    tracker.client.set_tag(job.run_id, "family", family_of(entry.name))
    tracker.client.set_tag(job.run_id, "dataset", spec.data.name)
    worker, _ = worker_config(context, entry, spec.train_config(entry), spec.data, spec.sweep.resources.threads,
                              job.unit.name, evaluate_test=False, resources=spec.sweep.resources)
    setup = TrialSetup(
        worker=worker, base_train=base_train, data=spec.data, resources=spec.sweep.resources, tracking_uri=tracker.uri,
        experiment_id=context.experiment_id, sweep_run_id=job.run_id, sweep_key=key,
        train_storage=f"{storage_of(spec).rstrip('/')}/sweep-trials",
        tags={"model": entry.name, "family": family_of(entry.name), "dataset": spec.data.name, "spec": spec.name})
    context.print(f"[bold]{job.unit.name}[/]: {spec.sweep.num_samples} sample(s), {spec.sweep.search}, "
                  f"scheduler {spec.sweep.scheduler}, {spec.sweep.metric} {spec.sweep.mode}, run {job.run_id}")
    with SWEEP_LOCK:
        outcome = run_sweep(spec.sweep, setup, storage_of(spec), context.verbose)
    killed = mark_orphans_killed(tracker.client, context.experiment_id, key)
    ends = f"{len(outcome.trials)} trial(s), {outcome.trial_epochs} trial-epochs, {outcome.wall_time_s:.0f} s" + \
        (" (resumed)" if outcome.restored else "") + (f", {killed} orphaned run(s) marked killed" if killed else "")
    if outcome.best_config is None:
        raise UnitFailed(f"no trial reported {spec.sweep.metric}; {ends}")
    record_best(tracker, job.run_id, outcome, base_train, spec.sweep.metric)
    values = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in outcome.best_config.items())
    context.print(f"[bold green]{job.unit.name}[/] best: {values} ({spec.sweep.metric} "
                  f"{outcome.best_metrics[spec.sweep.metric]:.4f}); {ends}")
    return {"run_id": job.run_id, "sweep_key": key, "best_config": {**base_train, **outcome.best_config},
            "outcome": outcome}
