"""The `train` stage: every model of the spec on Ray Train, one MLflow child run each."""
from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from pipeline.config import Spec
from pipeline.errors import PipelineError
from pipeline.workflow import RunContext, stage


def _log_model(tracker, run_id: str, checkpoint, meta: dict, test_labels=None) -> None:
    """The final weights and what it takes to rebuild the model, as artifacts of the run; the test-set
    probabilities with the labels they are scored against (ensembles and confusion matrices read them)."""
    import torch

    from pipeline.train import STATE_FILE, TEST_PROBS

    with checkpoint.as_directory() as directory, tempfile.TemporaryDirectory() as out:
        state = torch.load(Path(directory) / STATE_FILE, map_location="cpu", weights_only=False)
        torch.save(state["model"], Path(out) / "model.pt")
        (Path(out) / "model.json").write_text(json.dumps(meta, indent=2))
        tracker.log_artifact(run_id, Path(out) / "model.pt", "model")
        tracker.log_artifact(run_id, Path(out) / "model.json", "model")
        if (probs := Path(directory) / f"{TEST_PROBS}.pt").exists():
            tracker.log_artifact(run_id, probs, "predictions")
            if test_labels is not None:
                torch.save(test_labels, Path(out) / "test_labels.pt")
                tracker.log_artifact(run_id, Path(out) / "test_labels.pt", "predictions")


def _paper_year(model: str) -> str:
    from models.catalogue import FAMILIES, family_of

    family = family_of(model)
    return next((str(f.year) for f in FAMILIES if f.name == family), "")


def _accelerator(resources) -> str:
    """What the workers train on: 'cpu', or the GPU's name as seen from a worker (the driver may have none)."""
    if resources.gpus_per_worker <= 0:
        return "cpu"
    import ray

    @ray.remote(num_cpus=0, num_gpus=resources.gpus_per_worker)
    def gpu_name() -> str:
        import torch

        return torch.cuda.get_device_name(0)

    return ray.get(gpu_name.remote(), timeout=300)


@stage("train")
def train_stage(context: RunContext) -> None:
    """Train every model of the spec; one MLflow child run each."""
    import ray

    from models.catalogue import family_of
    from pipeline.complexity import model_complexity
    from pipeline.data import dataset_info, normalization
    from pipeline.progress import ProgressPrinter
    from pipeline.train import WorkerConfig, fit

    spec, tracker = context.spec, context.tracker
    info = dataset_info(spec.data)
    data = context.data
    in_chans = data.train.in_chans if data is not None else spec.data.in_chans or info.in_chans or 3
    image_size = data.train.image_size if data is not None else spec.data.image_size or info.image_size or 224
    splits_ref = ray.put(data) if data is not None else None
    stream = {} if data is not None else _stream_args(spec, info, image_size)
    classes = data.classes if data is not None else stream["classes"]
    storage = str(Path(spec.storage_path).expanduser().resolve()) if "://" not in spec.storage_path else spec.storage_path
    results = context.outputs.setdefault("train", {})
    accelerator = _accelerator(spec.resources)

    for entry in spec.models:
        train = spec.train_config(entry)
        complexity = model_complexity(entry.name, len(classes), in_chans, image_size, **entry.kwargs)
        run_id = tracker.start_run(
            context.experiment_id, entry.name, parent_id=context.parent_run_id,
            params={"model": entry.name, "model_kwargs": entry.kwargs, "train": train.model_dump(),
                    "data": spec.data.model_dump(), "resources": spec.resources.model_dump(),
                    "seed": train.seed, "epochs": train.epochs},
            tags={"model": entry.name, "family": family_of(entry.name), "dataset": spec.data.name,
                  "stage": "train", "spec": spec.name, "paper_year": _paper_year(entry.name),
                  "accelerator": accelerator},
            metrics=complexity)
        try:  # an interrupt anywhere after the run exists marks it killed, not left running
            context.console.print(f"[bold]{entry.name}[/]: {complexity['param_count']:.3f} M params, "
                                  f"{complexity['gmacs'] * 1e3:.2f} MMACs/image, run {run_id}")
            with ProgressPrinter(context.console) as progress:
                config = WorkerConfig(
                    model=entry.name, model_kwargs=entry.kwargs, train=train.model_dump(),
                    data=spec.data.model_dump(), num_classes=len(classes), in_chans=in_chans,
                    mean=data.train.mean if data is not None else normalization(spec.data, in_chans)[0],
                    std=data.train.std if data is not None else normalization(spec.data, in_chans)[1],
                    hflip=data.train.hflip if data is not None else info.hflip, threads=spec.resources.threads,
                    splits_ref=splits_ref, stream=stream, run_id=run_id, tracking_uri=tracker.uri,
                    progress=progress.queue, label=entry.name)
                result = fit(config, spec.resources, storage, f"{spec.name}-{entry.name}-{context.parent_run_id[:8]}")
            if result.error is not None or result.checkpoint is None:
                reason = str(result.error).strip().splitlines()[-1] if result.error else "no checkpoint"
                context.console.print(f"[bold red]{entry.name} failed:[/] {reason}")
                tracker.client.set_tag(run_id, "error", reason[:5000])
                tracker.finish(run_id, "FAILED")
                context.failures.append(entry.name)
                continue
            _log_model(tracker, run_id, result.checkpoint, {
                "model": entry.name, "model_kwargs": entry.kwargs, "num_classes": len(classes), "classes": classes,
                "in_chans": in_chans, "image_size": image_size, "mean": list(config.mean), "std": list(config.std)},
                data.test.labels if data is not None else None)
            tracker.finish(run_id)
            results[entry.name] = {"run_id": run_id, "metrics": result.metrics}
        except KeyboardInterrupt:
            tracker.finish(run_id, "KILLED")
            raise


def _stream_args(spec: Spec, info, image_size: int) -> dict[str, Any]:
    from pipeline.data.huggingface import count_rows, open_dataset

    source = spec.data.path or info.hub_id
    label_column = spec.data.label_column or info.label_column
    features = open_dataset(source, spec.data.train_split, streaming=True).features or {}
    names = getattr(features.get(label_column), "names", None)
    if not (names or info.classes):
        raise PipelineError(f"data set '{source}' has no class names on its label column '{label_column}': "
                            "use a ClassLabel column")
    return {"source": source, "train_split": spec.data.train_split, "test_split": spec.data.test_split,
            "columns": (spec.data.image_column or info.image_column, label_column), "image_size": image_size,
            "train_rows": count_rows(source, spec.data.train_split), "classes": list(names or info.classes)}
