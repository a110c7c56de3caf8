"""The `clip_pretrain` stage: contrastive image-text pretraining on Ray Train, one MLflow child run."""
from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

from pipeline.clip import CLIP_CODE
from pipeline.data.fingerprint import data_fingerprint
from pipeline.engine.context import Job, RunContext, storage_of
from pipeline.engine.registry import stage
from pipeline.engine.units import Unit
from pipeline.errors import PipelineError, UnitFailed

STAGE = "clip_pretrain"


def build_pairs(context: RunContext, tokenizer, image_size: int):
    """PairData for the workers, and the images' normalization (mean, std)."""
    import torch

    from pipeline.clip.data import PairData
    from pipeline.data.captions import (
        BUILTIN_DESCRIPTIONS,
        pairs_from_dataset,
        pairs_from_labels,
    )

    spec = context.spec
    captions = spec.clip.captions
    train_templates, eval_templates = captions.templates()
    if captions.path:
        pairs = pairs_from_dataset(captions.path, captions.split, captions.image_column, captions.text_column,
                                   spec.data.in_chans or 3, image_size, captions.limit)
        # Held-out pairs: a seeded share of the images (at most a fifth), never trained on.
        order = torch.randperm(len(pairs), generator=torch.Generator().manual_seed(spec.clip.train.seed))
        n_held = min(spec.clip.train.heldout_pairs, max(1, len(pairs) // 5))
        train = pairs.subset(order[n_held:])
        heldout = pairs.subset(order[:n_held])
        classes = []
    else:
        if (splits := context.splits(spec.clip_data())) is None:
            raise PipelineError("captions from class labels need an in-memory data set: set data.streaming: false "
                                "or give clip.captions.path")
        descriptions = {**BUILTIN_DESCRIPTIONS.get(spec.data.name, {}), **captions.descriptions}
        unknown = sorted(set(captions.descriptions) - set(splits.classes))
        if unknown:
            raise PipelineError(f"clip.captions.descriptions: no class named {', '.join(map(repr, unknown))} in "
                                f"{spec.data.name} (classes: {', '.join(splits.classes)})")
        train = pairs_from_labels(splits.train, train_templates, descriptions)
        heldout = train.with_images(splits.val.images, splits.val.labels)
        classes = splits.classes
    if len(train) < 2:
        raise PipelineError(f"contrastive pretraining needs at least 2 training pairs, got {len(train)}")
    data = PairData(train, heldout, tokenizer(train.captions), classes, eval_templates)
    return data, train.mean, train.std


def clip_identity(spec) -> dict[str, Any]:
    captions = spec.clip.captions
    # clip.data is in the key as the data it makes (the fingerprint), not as written
    return {"clip": spec.clip.model_dump(mode="json", exclude={"zero_shot", "data"}),
            "data": data_fingerprint(spec.clip_data()),
            "captions_source": data_fingerprint(spec.data.model_copy(update={"name": "huggingface",
                                                                             "path": captions.path}))
            if captions.path else None, "world_size": spec.resources.num_workers}


def check_captions(context: RunContext) -> None:
    """An image-caption set opens and has its columns, before any run is written."""
    from pipeline.data.captions import open_caption_set

    captions = context.spec.clip.captions
    if captions.path:
        open_caption_set(captions.path, captions.split, captions.image_column, captions.text_column)


def finished_pretrain(run, context=None) -> dict[str, Any]:
    return {"run_id": run.info.run_id, "metrics": dict(run.data.metrics)}


@stage(STAGE, preflight=check_captions)
def plan(context: RunContext, planned: list[Unit]) -> list[Unit]:
    spec = context.spec
    return [Unit(name=f"{STAGE}/{spec.clip.model}", stage=STAGE,
                 code=(*CLIP_CODE, "pipeline/stages/clip_pretrain.py"),
                 title=f"{spec.clip.model} (clip pretrain)", identity=clip_identity(spec), resources=spec.resources,
                 uses_data=True, from_run=finished_pretrain, run=run_unit)]


def run_unit(job: Job) -> dict[str, Any]:
    import ray

    from models.clip import create_model
    from pipeline.clip.data import ImageInput, input_size
    from pipeline.clip.evaluation import save_model
    from pipeline.clip.loop import ClipWorkerConfig, pretrain_loop_per_worker
    from pipeline.tracking.writer import RunWriter
    from pipeline.training.harness import fit, read_state

    context, spec, tracker, run_id = job.context, job.spec, job.tracker, job.run_id
    config = spec.clip
    model, tokenizer = create_model(config.model, config.pretrained, **config.model_kwargs)
    image_size = input_size(model)
    data, mean, std = build_pairs(context, tokenizer, image_size)
    # A model trained from scratch normalizes with the data's statistics; pretrained weights keep their own.
    image_input = ImageInput.of_model(model) if config.pretrained else ImageInput(image_size, tuple(mean), tuple(std))
    params = sum(p.numel() for p in model.parameters()) / 1e6
    if not job.resumed:
        tracker.log(run_id, {"param_count": params,
                             "image_param_count": sum(p.numel() for p in model.visual.parameters()) / 1e6},
                    params={"model": config.model, "pretrained": config.pretrained, "model_kwargs": config.model_kwargs,
                            "clip_train": config.train.model_dump(), "captions": config.captions.model_dump(),
                            "resources": spec.resources.model_dump(), "pairs": len(data.train),
                            "distinct_captions": len(data.train.captions)})
    tracker.client.set_tag(run_id, "dataset", spec.data.name if not config.captions.path else config.captions.path)
    tracker.client.set_tag(run_id, "model", config.model)
    context.print(f"[bold]{job.unit.name}[/]: {params:.3f} M params, {len(data.train):,} image-text pairs, "
                  f"{len(data.train.captions):,} distinct captions, run {run_id}")
    worker_config = ClipWorkerConfig(
        model=config.model, pretrained=config.pretrained, model_kwargs=config.model_kwargs,
        train=config.train.model_dump(), data_ref=ray.put(data), image_input=image_input,
        max_shift=spec.data.max_shift if spec.data.augment else 0, threads=spec.resources.threads,
        label=job.unit.name, system_metrics=spec.tracking.system_metrics)
    show = context.display.handler(job.unit.name, config.train.epochs) if context.display else None
    writer = RunWriter(tracker, run_id, started_at=time.time(), show=show)
    result = fit(pretrain_loop_per_worker, worker_config, spec.resources, storage_of(spec), job.train_name,
                 on_event=writer, say=context.print)
    if result.error is not None or result.checkpoint is None:
        raise UnitFailed.of(result.error)
    state = read_state(result.checkpoint)
    writer.history(state["history"])
    model.load_state_dict(state["model"])
    with tempfile.TemporaryDirectory() as out:
        save_model(model, {"model": config.model, "model_kwargs": config.model_kwargs,
                           "image_size": image_size, "mean": list(image_input.mean), "std": list(image_input.std),
                           "pretrain_run_id": run_id}, Path(out))
        for name in ("model.pt", "model.json"):
            tracker.log_artifact(run_id, Path(out) / name, "model")
    history = state["history"]
    tracker.log(run_id, {"train_time_s": sum(h["epoch_time_s"] for h in history), "epochs": len(history)})
    return {"run_id": run_id, "metrics": result.metrics, "history": history}
