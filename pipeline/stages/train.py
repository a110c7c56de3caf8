"""The `train` stage: a unit per model, each its own Ray Train run with its own resources and MLflow run."""
from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Any

from pipeline.config import DataConfig, ModelEntry, Spec, TrainConfig
from pipeline.context import Job, RunContext, stage, storage_of
from pipeline.errors import PipelineError, UnitFailed
from pipeline.units import Unit, data_fingerprint

# Summary metrics of a training run, logged once at its end under keys of their own (never per epoch).
SUMMARY_KEYS = ("epochs", "train_samples_per_sec", "train_time_s", "top1", "top1_err", "top5", "top5_err",
                "test_loss", "diverged", "ema_top1", "ema_top1_err", "ema_top5_err")


def named_entries(spec: Spec) -> list[tuple[str, ModelEntry]]:
    """The spec's distinct model entries, each with a name unique in the spec: the model's, with its place
    in the list when two entries of one model differ (`lenet5`, `lenet5#1`). An entry identical to an
    earlier one is the same unit, listed once."""
    seen_names, seen_entries, named = set(), [], []
    for index, entry in enumerate(spec.models):
        if entry in seen_entries:
            continue
        named.append((entry.name if entry.name not in seen_names else f"{entry.name}#{index}", entry))
        seen_names.add(entry.name)
        seen_entries.append(entry)
    return named


def training_identity(spec: Spec, entry: ModelEntry, train: TrainConfig, data: DataConfig) -> dict[str, Any]:
    """What decides a training run's result: model, recipe, data, world size and the global batch."""
    world_size = spec.resources_for(entry).num_workers
    return {"model": entry.name, "kwargs": entry.kwargs, "train": train.model_dump(mode="json"),
            "data": data_fingerprint(data), "world_size": world_size,
            "global_batch": train.batch_plan(world_size)["global_batch"]}


def finished_output(run, context: RunContext | None = None) -> dict[str, Any]:
    from pipeline.logged_models import model_of_run

    client = context.tracker.client if context is not None else None
    return {"run_id": run.info.run_id, "metrics": dict(run.data.metrics),
            "model_id": model_of_run(client, run.info.run_id) if client is not None else None}


@stage("train")
def plan(context: RunContext, planned: list[Unit]) -> list[Unit]:
    spec = context.spec
    units = []
    for name, entry in named_entries(spec):
        train = spec.train_config(entry)
        units.append(Unit(
            name=f"train/{name}", stage="train", model=name, resources=spec.resources_for(entry), uses_data=True,
            identity=training_identity(spec, entry, train, spec.data), from_run=finished_output,
            run=lambda job, entry=entry, train=train: run_training(job, entry, train, job.spec.data)))
    return units


def validation_summary(history: list[dict[str, float]]) -> dict[str, float]:
    """Selection metrics of a run, from its per-epoch history: the last epoch's validation error (the
    weights it keeps) and its best epoch's, under keys of their own; none without a validation split."""
    scored = [h for h in history if "val_top1" in h]
    if not scored:
        return {}
    best = min(scored, key=lambda h: (100 - h["val_top1"], h.get("val_loss", 0.0)))
    return {"val_top1_err": 100 - scored[-1]["val_top1"], "best_val_top1_err": 100 - best["val_top1"],
            "best_epoch": best["epoch"]}


def _log_model(job: Job, name: str, checkpoint, state: dict, meta: dict, metrics: dict[str, float], data: DataConfig,
               test_labels=None) -> str:
    """The final weights as the run's LoggedModel (pyfunc, state dict, model.json), its metrics linked to
    it; the test-set probabilities with the labels they are scored against as run artifacts (ensembles and
    confusion matrices read them). Returns the model's id."""
    import torch

    from pipeline.logged_models import MODEL_TAGS, classifier_files, log_model
    from pipeline.train import TEST_PROBS

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


def paper_year(model: str) -> str:
    from models.catalogue import FAMILIES, family_of

    family = family_of(model)
    return next((str(f.year) for f in FAMILIES if f.name == family), "")


def accelerator(resources) -> str:
    """What the workers train on: 'cpu', or the GPU's name as seen from a worker (the driver may have none)."""
    if resources.gpus_per_worker <= 0:
        return "cpu"
    import ray

    @ray.remote(num_cpus=0, num_gpus=resources.gpus_per_worker)
    def gpu_name() -> str:
        import torch

        return torch.cuda.get_device_name(0)

    return ray.get(gpu_name.remote(), timeout=300)


def data_shape(context: RunContext, data: DataConfig) -> dict[str, Any]:
    """Channels, image size, classes and normalization of a data set, and how workers read it."""
    from pipeline.data import dataset_info, normalization

    info = dataset_info(data)
    splits = context.splits(data)
    if splits is not None:
        return {"in_chans": splits.train.in_chans, "image_size": splits.train.image_size, "classes": splits.classes,
                "mean": splits.train.mean, "std": splits.train.std, "hflip": splits.train.hflip,
                "stream": {}, "test_labels": splits.test.labels}
    in_chans = data.in_chans or info.in_chans or 3
    image_size = data.image_size or info.image_size or 224
    stream = stream_args(data, info)
    mean, std = normalization(data, in_chans)
    return {"in_chans": in_chans, "image_size": image_size, "classes": stream["classes"], "mean": mean, "std": std,
            "hflip": info.hflip, "stream": stream, "test_labels": None}


def worker_config(context: RunContext, entry: ModelEntry, train: TrainConfig, data: DataConfig, threads: int,
                  label: str, evaluate_test: bool = True, resources=None):
    """The one place a WorkerConfig is built (train, retrain, sweep trials and the benchmarks); `resources`
    are the run's (default: the spec's for the entry), which fix the world size of the global batch."""
    from pipeline.train import WorkerConfig

    shape = data_shape(context, data)
    if resources is None:
        resources = context.spec.resources_for(entry) if entry in context.spec.models else context.spec.resources
    mean, std, stream = tuple(shape["mean"]), tuple(shape["std"]), shape["stream"]
    if stream:  # timm's transforms for this model, run by the stream's Ray Data tasks
        from pipeline.data.transforms import resolve_transforms

        transforms = resolve_transforms(entry.name, train.transforms.model_dump(), shape["image_size"],
                                        shape["in_chans"], mean, std, shape["hflip"])
        mean, std = transforms["mean"], transforms["std"]
        train_cpus = resources.num_workers * resources.cpus_per_worker
        check_decode_cpus(train_cpus)
        stream = {**stream, "transforms": transforms, "train_cpus": train_cpus}
    config = WorkerConfig(
        model=entry.name, model_kwargs=entry.kwargs, train=train.model_dump(), data=data.model_dump(),
        num_classes=len(shape["classes"]), in_chans=shape["in_chans"], mean=mean,
        std=std, hflip=shape["hflip"], threads=threads, splits_ref=context.splits_ref(data),
        stream=stream, label=label, evaluate_test=evaluate_test, system_metrics=context.spec.tracking.system_metrics)
    return config, shape


def check_decode_cpus(train_cpus: float) -> None:
    """A streamed set is decoded by Ray Data tasks of 1 CPU each: with every CPU of the cluster taken by the
    training workers they would never run, and the workers would wait for data forever."""
    import ray

    if not ray.is_initialized():
        return
    total = ray.cluster_resources().get("CPU", 0)
    if total - train_cpus < 1:
        raise PipelineError(f"a streamed data set needs CPUs to decode images beside the training workers, but the "
                            f"workers take {train_cpus:g} of the cluster's {total:g} CPUs: lower "
                            "resources.cpus_per_worker or num_workers, or add nodes")


def run_training(job: Job, entry: ModelEntry, train: TrainConfig, data: DataConfig,
                 extra_metrics: dict[str, float] | None = None) -> dict[str, Any]:
    """Train one model in the job's MLflow run, resuming from the unit's Ray Train checkpoint if it has one."""
    from models.catalogue import family_of
    from pipeline.complexity import model_complexity
    from pipeline.relay import RunWriter
    from pipeline.train import fit, read_state

    context, spec, tracker, unit = job.context, job.spec, job.tracker, job.unit
    resources = unit.resources
    config, shape = worker_config(context, entry, train, data, resources.threads, unit.name, resources=resources)
    complexity = model_complexity(entry.name, len(shape["classes"]), shape["in_chans"], shape["image_size"],
                                  **entry.kwargs)
    tracker.log(job.run_id, complexity if not job.resumed else {}, params=None if job.resumed else {
        "model": entry.name, "model_kwargs": entry.kwargs, "train": train.model_dump(), "data": data.model_dump(),
        "resources": resources.model_dump(), "seed": train.seed, "epochs": train.epochs,
        "batch": train.batch_plan(resources.num_workers)})
    for key, value in {"family": family_of(entry.name), "dataset": data.name, "paper_year": paper_year(entry.name),
                       "accelerator": accelerator(resources), "model": entry.name}.items():
        tracker.client.set_tag(job.run_id, key, value)
    if not job.resumed:
        from pipeline.logged_models import log_datasets, split_sizes

        log_datasets(tracker, job.run_id, data, shape, split_sizes(context, data, shape))
    context.print(f"[bold]{unit.name}[/]: {complexity['param_count']:.3f} M params, "
                  f"{complexity['gmacs'] * 1e3:.2f} MMACs/image, {resources.num_workers} worker(s), run {job.run_id}")
    writer = RunWriter(tracker, job.run_id, started_at=time.time(), show=context.display.handler(unit.name, train.epochs)
                       if context.display else None)
    result = fit(config, resources, storage_of(spec), job.train_name, on_event=writer)
    if result.error is not None or result.checkpoint is None:
        raise UnitFailed.of(result.error)
    state = read_state(result.checkpoint)
    writer.history(state["history"])  # epochs whose events were lost (a restart between report and event)
    from pipeline.logged_models import TEST_METRICS, VAL_METRICS

    summary = {**{k: result.metrics[k] for k in SUMMARY_KEYS if k in result.metrics},
               **validation_summary(state["history"]), **(extra_metrics or {})}
    tracker.log(job.run_id, {k: v for k, v in summary.items() if k not in TEST_METRICS + VAL_METRICS})
    model_id = _log_model(job, entry.name, result.checkpoint, state, {
        "model": entry.name, "model_kwargs": entry.kwargs, "num_classes": len(shape["classes"]),
        "classes": shape["classes"], "in_chans": shape["in_chans"], "image_size": shape["image_size"],
        "mean": list(config.mean), "std": list(config.std)},
        {k: v for k, v in summary.items() if k in TEST_METRICS + VAL_METRICS}, data, shape["test_labels"])
    return {"run_id": job.run_id, "model_id": model_id, "metrics": {**result.metrics, **summary}}


def stream_args(data: DataConfig, info) -> dict[str, Any]:
    """The streamed splits, described once by the driver (files, pieces, row counts; the first image decoded)."""
    from pipeline.data.stream import describe

    source = data.path or info.hub_id
    columns = (data.image_column or info.image_column, data.label_column or info.label_column)
    train = describe(source, data.train_split, *columns)
    test = describe(source, data.test_split, *columns)
    if not (train.classes or info.classes):
        raise PipelineError(f"data set '{source}' has no class names on its label column '{columns[1]}': "
                            "use a ClassLabel column")
    return {"train": train, "test": test, "classes": list(train.classes or info.classes)}
