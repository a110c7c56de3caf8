"""One model trained in a unit's MLflow run: Ray Train, the run's records, its LoggedModel (train and retrain)."""
from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Any

from pipeline.data.preprocess import eval_preprocessing
from pipeline.engine.context import Job, RunContext, storage_of
from pipeline.errors import UnitFailed
from pipeline.spec.sections import DataConfig, ModelEntry, TrainConfig
from pipeline.training.recipe import (
    accelerator,
    finetune_options,
    paper_year,
    validation_summary,
    worker_config,
)

# Summary metrics of a training run, logged once at its end under keys of their own (never per epoch).
SUMMARY_KEYS = ("epochs", "train_samples_per_sec", "train_time_s", "top1", "top1_err", "top5", "top5_err",
                "test_loss", "diverged", "ema_top1", "ema_top1_err", "ema_top5_err")


def init_lineage(init) -> dict[str, str]:
    """Where a run's weights came from, as its tags and its model.json say: `init` (scratch, the hub tag, the
    file with its digest, the source models:/ URI, the CLIP model), the source's model id or run id (a CLIP
    pretraining run) and the initial weights' digest."""
    if init.source == "scratch":
        return {"init": "scratch"}
    lineage = {"init": init.source, "init_digest": init.digest}
    if init.source.startswith("models:/"):
        lineage["init_model_id"] = init.source[len("models:/"):]
    if init.source.startswith("clip:runs:/"):
        lineage["init_run_id"] = init.source[len("clip:runs:/"):].split("/")[0]
    return lineage


def finished_output(run, context: RunContext | None = None) -> dict[str, Any]:
    from pipeline.tracking.logged_models import model_of_run

    client = context.tracker.client if context is not None else None
    return {"run_id": run.info.run_id, "metrics": dict(run.data.metrics),
            "model_id": model_of_run(client, run.info.run_id) if client is not None else None}


def _log_model(job: Job, name: str, checkpoint, state: dict, meta: dict, metrics: dict[str, float], data: DataConfig,
               test_labels=None) -> str:
    """The final weights as the run's LoggedModel (pyfunc, state dict, model.json), its metrics linked to
    it; the test-set probabilities with the labels they are scored against as run artifacts (ensembles and
    confusion matrices read them). Returns the model's id."""
    import torch

    from pipeline.tracking.logged_models import MODEL_TAGS, classifier_files, log_model
    from pipeline.training.loop import TEST_PROBS

    tracker, run_id = job.tracker, job.run_id
    with checkpoint.as_directory() as directory, tempfile.TemporaryDirectory() as out:
        if (probs := Path(directory) / f"{TEST_PROBS}.pt").exists():
            tracker.log_artifact(run_id, probs, "predictions")
            if test_labels is not None:
                torch.save(test_labels, Path(out) / "test_labels.pt")
                tracker.log_artifact(run_id, Path(out) / "test_labels.pt", "predictions")
        files = classifier_files(Path(out), state["model"], meta)
        run = tracker.client.get_run(run_id)
        tags = {key: run.data.tags.get(key, "") for key in MODEL_TAGS}
        tags.update({"kind": "network", "stage": job.unit.stage})
        params = {"model": meta["model"], "model_kwargs": json.dumps(meta["model_kwargs"]),
                  "epochs": run.data.params.get("epochs", ""), "seed": run.data.params.get("seed", ""),
                  "dataset": data.name, "num_classes": meta["num_classes"], "image_size": meta["image_size"]}
        return log_model(tracker, run_id, name, files, params, tags, metrics, data)


def run_training(job: Job, entry: ModelEntry, train: TrainConfig, data: DataConfig,
                 extra_metrics: dict[str, float] | None = None, source: str | None = None) -> dict[str, Any]:
    """Train one model in the job's MLflow run, resuming from the unit's Ray Train checkpoint if it has one;
    `source`: the unit an `init: unit:` entry starts from, where not the one it names (a seed's own)."""
    from models._factory import model_complexity
    from models.catalogue import family_of
    from pipeline.tracking.writer import RunWriter
    from pipeline.training.harness import fit, read_state
    from pipeline.training.loop import train_loop_per_worker

    context, spec, tracker, unit = job.context, job.spec, job.tracker, job.unit
    resources = unit.resources
    config, shape = worker_config(context, entry, train, data, resources.threads, unit.name, resources=resources,
                                  outputs=job.inputs, source=source)
    lineage = init_lineage(shape["init"])
    complexity = model_complexity(entry.name, len(shape["classes"]), shape["in_chans"], shape["image_size"],
                                  **entry.kwargs)
    tracker.log(job.run_id, complexity if not job.resumed else {}, params=None if job.resumed else {
        "model": entry.name, "model_kwargs": entry.kwargs, "train": train.model_dump(), "data": data.model_dump(),
        "resources": resources.model_dump(), "seed": train.seed, "epochs": train.epochs,
        "batch": train.batch_plan(resources.num_workers), "init": lineage["init"], **finetune_options(entry),
        **({"entry": entry.id} if entry.id else {})})
    for key, value in {"family": family_of(entry.name), "dataset": data.name, "paper_year": paper_year(entry.name),
                       "accelerator": accelerator(resources), "model": entry.name, **lineage}.items():
        tracker.client.set_tag(job.run_id, key, value)
    if not job.resumed:
        from pipeline.tracking.datasets import log_datasets, split_sizes

        log_datasets(tracker, job.run_id, data, shape, split_sizes(context, data, shape))
    context.print(f"[bold]{unit.name}[/]: {complexity['param_count']:.3f} M params, "
                  f"{complexity['gmacs'] * 1e3:.2f} MMACs/image, {resources.num_workers} worker(s), run {job.run_id}")
    writer = RunWriter(tracker, job.run_id, started_at=time.time(), show=context.display.handler(unit.name, train.epochs)
                       if context.display else None)
    result = fit(train_loop_per_worker, config, resources, storage_of(spec), job.train_name, on_event=writer,
                 say=context.print)
    if result.error is not None or result.checkpoint is None:
        raise UnitFailed.of(result.error)
    state = read_state(result.checkpoint)
    writer.history(state["history"])  # epochs whose events were lost (a restart between report and event)
    from pipeline.tracking.logged_models import TEST_METRICS, VAL_METRICS

    summary = {**{k: result.metrics[k] for k in SUMMARY_KEYS if k in result.metrics},
               **validation_summary(state["history"]), **(extra_metrics or {})}
    if entry.wise_ft:  # the zero-shot and fine-tuned weights interpolated, evaluated here
        from pipeline.training.clip_transfer import wise_ft, wise_ft_line

        mixed = wise_ft(context, entry, data, shape, config.mean, config.std, shape["init"].weights, state["model"])
        summary.update(mixed)
        context.print(f"[bold]{unit.name}[/] WiSE-FT, (1-a) zero-shot + a fine-tuned: {wise_ft_line(entry.wise_ft, mixed)}")
    tracker.log(job.run_id, {k: v for k, v in summary.items() if k not in TEST_METRICS + VAL_METRICS})
    model_id = _log_model(job, entry.name, result.checkpoint, state, {
        "model": entry.name, "model_kwargs": entry.kwargs, "num_classes": len(shape["classes"]),
        "classes": shape["classes"], "in_chans": shape["in_chans"], "image_size": shape["image_size"],
        "mean": list(config.mean), "std": list(config.std), "init": lineage,
        "preprocessing": eval_preprocessing(shape["in_chans"], shape["image_size"],
                                            config.stream.transforms["eval"] if config.stream else None)},
        {k: v for k, v in summary.items() if k in TEST_METRICS + VAL_METRICS}, data, shape["test_labels"])
    return {"run_id": job.run_id, "model_id": model_id, "metrics": {**result.metrics, **summary}}
