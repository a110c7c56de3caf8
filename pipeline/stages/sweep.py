"""The `sweep` stage: a Ray Tune search per model, one MLflow run per sweep with a child run per trial.

Selection uses the validation split only; the best config is recorded on the sweep run (params
`best.<field>`, tags, `best_config.json`) for the `retrain` stage.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from pipeline.config import ModelEntry, Spec
from pipeline.workflow import RunContext, stage


def sweep_key(spec: Spec, entry: ModelEntry) -> str:
    """Names one model's sweep for as long as what it searches stays the same: the same command resumes it,
    a changed spec starts a new one."""
    what = {"model": entry.model_dump(), "train": spec.train_config(entry).model_dump(),
            "data": spec.data.model_dump(), "sweep": spec.sweep.model_dump()}
    digest = hashlib.sha1(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()[:10]
    return f"{spec.name}-{entry.name}-{digest}"


def storage_of(spec: Spec) -> str:
    return str(Path(spec.storage_path).expanduser().resolve()) if "://" not in spec.storage_path else spec.storage_path


def worker_template(context: RunContext, entry: ModelEntry, splits_ref):
    """The WorkerConfig every trial of the model starts from (data, model, normalization)."""
    from pipeline.data import dataset_info
    from pipeline.stages.train import _stream_args
    from pipeline.train import WorkerConfig

    spec, data = context.spec, context.data
    info = dataset_info(spec.data)
    in_chans = data.train.in_chans if data is not None else spec.data.in_chans or info.in_chans or 3
    image_size = data.train.image_size if data is not None else spec.data.image_size or info.image_size or 224
    stream = {} if data is not None else _stream_args(spec, info, image_size)
    classes = data.classes if data is not None else stream["classes"]
    return WorkerConfig(
        model=entry.name, model_kwargs=entry.kwargs, train=spec.train_config(entry).model_dump(),
        data=spec.data.model_dump(), num_classes=len(classes), in_chans=in_chans,
        mean=data.train.mean if data is not None else info.mean, std=data.train.std if data is not None else info.std,
        hflip=data.train.hflip if data is not None else info.hflip, threads=spec.sweep.resources.threads,
        splits_ref=splits_ref, stream=stream, label=entry.name)


def sweep_run(context: RunContext, entry: ModelEntry, key: str) -> str:
    """The model's sweep run: reused when the same sweep resumes (its old workflow run, orphaned by a
    killed driver, is marked KILLED), otherwise created under this workflow run."""
    from models.catalogue import family_of
    from pipeline.sweep import SWEEP_KEY, find_run

    tracker, spec = context.tracker, context.spec
    if (run := find_run(tracker.client, context.experiment_id, SWEEP_KEY, key, "sweep")) is not None:
        old_parent = run.data.tags.get("mlflow.parentRunId")
        if old_parent and old_parent != context.parent_run_id:
            if tracker.client.get_run(old_parent).info.status == "RUNNING":
                tracker.client.set_terminated(old_parent, "KILLED")
            tracker.client.set_tag(run.info.run_id, "mlflow.parentRunId", context.parent_run_id)
        tracker.client.update_run(run.info.run_id, status="RUNNING")
        return run.info.run_id
    space = {name: param.model_dump(exclude_none=True) for name, param in spec.sweep.space.items()}
    return tracker.start_run(
        context.experiment_id, f"{entry.name}-sweep", parent_id=context.parent_run_id,
        params={"model": entry.name, "train": spec.train_config(entry).model_dump(),
                "sweep": {**spec.sweep.model_dump(exclude={"space"}), "space": json.dumps(space)}},
        tags={"model": entry.name, "family": family_of(entry.name), "dataset": spec.data.name, "stage": "sweep",
              "spec": spec.name, SWEEP_KEY: key})


def record_best(tracker, run_id: str, outcome, train: dict, metric: str) -> None:
    best = {**train, **outcome.best_config}
    tracker.log(run_id, {f"best_{metric}": outcome.best_metrics[metric], "trials": len(outcome.trials),
                         "trial_epochs": outcome.trial_epochs},
                params={"best": outcome.best_config})
    tracker.client.set_tag(run_id, "best_trial_id", outcome.best_trial_id)
    tracker.log_text(run_id, json.dumps(best, indent=2), "best_config.json")


@stage("sweep")
def sweep_stage(context: RunContext) -> None:
    """A Ray Tune search per model of the spec."""
    import ray

    from models.catalogue import family_of
    from pipeline.sweep import TrialSetup, mark_orphans_killed, run_sweep

    spec, tracker, console = context.spec, context.tracker, context.console
    splits_ref = ray.put(context.data) if context.data is not None else None
    storage = storage_of(spec)
    results = context.outputs.setdefault("sweep", {})
    for entry in spec.models:
        key = sweep_key(spec, entry)
        run_id = sweep_run(context, entry, key)
        base_train = spec.train_config(entry).model_dump()
        setup = TrialSetup(
            worker=worker_template(context, entry, splits_ref), base_train=base_train,
            resources=spec.sweep.resources, tracking_uri=tracker.uri, experiment_id=context.experiment_id,
            sweep_run_id=run_id, sweep_key=key, train_storage=f"{storage.rstrip('/')}/sweep-trials",
            tags={"model": entry.name, "family": family_of(entry.name), "dataset": spec.data.name, "spec": spec.name})
        console.print(f"[bold]{entry.name}[/]: sweep {key} ({spec.sweep.num_samples} sample(s), {spec.sweep.search}, "
                      f"scheduler {spec.sweep.scheduler}, {spec.sweep.metric} {spec.sweep.mode}), run {run_id}")
        try:
            outcome = run_sweep(spec.sweep, setup, storage, context.verbose)
        except KeyboardInterrupt:
            tracker.finish(run_id, "KILLED")
            raise
        killed = mark_orphans_killed(tracker.client, context.experiment_id, key)
        ends = f"{len(outcome.trials)} trial(s), {outcome.trial_epochs} trial-epochs, {outcome.wall_time_s:.0f} s" + \
            (" (resumed)" if outcome.restored else "") + (f", {killed} orphaned run(s) marked killed" if killed else "")
        if outcome.best_config is None:
            console.print(f"[bold red]{entry.name} sweep failed:[/] no trial reported {spec.sweep.metric}; {ends}")
            tracker.client.set_tag(run_id, "error", f"no trial reported {spec.sweep.metric}")
            tracker.finish(run_id, "FAILED")
            context.failures.append(entry.name)
            continue
        record_best(tracker, run_id, outcome, base_train, spec.sweep.metric)
        tracker.finish(run_id)
        values = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in outcome.best_config.items())
        console.print(f"[bold green]{entry.name}[/] best: {values} ({spec.sweep.metric} "
                      f"{outcome.best_metrics[spec.sweep.metric]:.4f}); {ends}")
        results[entry.name] = {"run_id": run_id, "sweep_key": key, "best_config": {**base_train, **outcome.best_config},
                               "outcome": outcome}
