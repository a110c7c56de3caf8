"""The `clip_pretrain` stage: contrastive image-text pretraining on Ray Train, one MLflow child run."""
from __future__ import annotations

import tempfile
from pathlib import Path

from pipeline.errors import PipelineError
from pipeline.progress import ProgressPrinter
from pipeline.workflow import RunContext, stage

STAGE = "clip_pretrain"


class ClipProgress(ProgressPrinter):
    """Per-epoch lines of contrastive pretraining (loss, temperature, retrieval)."""

    def show(self, event: dict) -> None:
        if event["kind"] != "epoch":
            return super().show(event)
        m = event["metrics"]
        zero_shot = f" | val zero-shot top-1 {m['val_zero_shot_top1']:.2f}%" if "val_zero_shot_top1" in m else ""
        self.console.print(
            f"[bold]{event['model']}[/] epoch {int(m['epoch'])}: loss {m['train_loss']:.4f} "
            f"temperature {m['temperature']:.4f} | held-out R@1 i2t {m['i2t_r1']:.1f}% t2i {m['t2i_r1']:.1f}%, "
            f"R@5 i2t {m['i2t_r5']:.1f}% t2i {m['t2i_r5']:.1f}%{zero_shot} | "
            f"{m['train_samples_per_sec']:,.0f} img/s, {m['epoch_time_s']:.1f} s")
        self._status.update(f"[bold]{event['model']}[/] next epoch...")


def build_pairs(context: RunContext, tokenizer, image_size: int):
    """PairData for the workers, and the images' normalization (mean, std)."""
    import torch

    from pipeline.clip import PairData
    from pipeline.data.captions import BUILTIN_DESCRIPTIONS, pairs_from_dataset, pairs_from_labels

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
        if context.data is None:
            raise PipelineError("captions from class labels need an in-memory data set: set data.streaming: false "
                                "or give clip.captions.path")
        descriptions = {**BUILTIN_DESCRIPTIONS.get(spec.data.name, {}), **captions.descriptions}
        unknown = sorted(set(captions.descriptions) - set(context.data.classes))
        if unknown:
            raise PipelineError(f"clip.captions.descriptions: no class named {', '.join(map(repr, unknown))} in "
                                f"{spec.data.name} (classes: {', '.join(context.data.classes)})")
        train = pairs_from_labels(context.data.train, train_templates, descriptions)
        heldout = train.with_images(context.data.val.images, context.data.val.labels)
        classes = context.data.classes
    if len(train) < 2:
        raise PipelineError(f"contrastive pretraining needs at least 2 training pairs, got {len(train)}")
    data = PairData(train, heldout, tokenizer(train.captions), classes, eval_templates)
    return data, train.mean, train.std


@stage(STAGE)
def clip_pretrain_stage(context: RunContext) -> None:
    import ray

    from pipeline.clip import (ClipWorkerConfig, ImageInput, create_model, input_size, pretrain_loop_per_worker,
                               save_model)
    from pipeline.train import STATE_FILE, fit

    spec, tracker = context.spec, context.tracker
    config = spec.clip
    model, tokenizer = create_model(config.model, config.pretrained, **config.model_kwargs)
    image_size = input_size(model)
    data, mean, std = build_pairs(context, tokenizer, image_size)
    # A model trained from scratch normalizes with the data's statistics; pretrained weights keep their own.
    image_input = ImageInput.of_model(model) if config.pretrained else ImageInput(image_size, tuple(mean), tuple(std))
    params = sum(p.numel() for p in model.parameters()) / 1e6
    run_id = tracker.start_run(
        context.experiment_id, f"{config.model} (clip pretrain)", parent_id=context.parent_run_id,
        params={"model": config.model, "pretrained": config.pretrained, "model_kwargs": config.model_kwargs,
                "clip_train": config.train.model_dump(), "captions": config.captions.model_dump(),
                "resources": spec.resources.model_dump(), "pairs": len(data.train),
                "distinct_captions": len(data.train.captions)},
        tags={"model": config.model, "dataset": spec.data.name if not config.captions.path else config.captions.path,
              "stage": STAGE, "spec": spec.name},
        metrics={"param_count": params,
                 "image_param_count": sum(p.numel() for p in model.visual.parameters()) / 1e6})
    context.console.print(f"[bold]{config.model}[/]: {params:.3f} M params, {len(data.train):,} image-text pairs, "
                          f"{len(data.train.captions):,} distinct captions, run {run_id}")
    storage = str(Path(spec.storage_path).expanduser().resolve()) if "://" not in spec.storage_path \
        else spec.storage_path
    with ClipProgress(context.console) as progress:
        worker_config = ClipWorkerConfig(
            model=config.model, pretrained=config.pretrained, model_kwargs=config.model_kwargs,
            train=config.train.model_dump(), data_ref=ray.put(data), image_input=image_input,
            max_shift=spec.data.max_shift if spec.data.augment else 0, threads=spec.resources.threads,
            run_id=run_id, tracking_uri=tracker.uri, progress=progress.queue, label=config.model)
        result = fit(worker_config, spec.resources, storage, f"{spec.name}-clip-{context.parent_run_id[:8]}",
                     loop=pretrain_loop_per_worker)
    if result.error is not None or result.checkpoint is None:
        reason = str(result.error).strip().splitlines()[-1] if result.error else "no checkpoint"
        context.console.print(f"[bold red]{config.model} pretraining failed:[/] {reason}")
        tracker.client.set_tag(run_id, "error", reason[:5000])
        tracker.finish(run_id, "FAILED")
        context.failures.append(f"{config.model} (clip pretrain)")
        return
    import torch

    with result.checkpoint.as_directory() as directory, tempfile.TemporaryDirectory() as out:
        state = torch.load(Path(directory) / STATE_FILE, map_location="cpu", weights_only=False)
        model.load_state_dict(state["model"])
        save_model(model, {"model": config.model, "model_kwargs": config.model_kwargs,
                           "image_size": image_size, "mean": list(image_input.mean), "std": list(image_input.std),
                           "pretrain_run_id": run_id}, Path(out))
        for name in ("model.pt", "model.json"):
            tracker.log_artifact(run_id, Path(out) / name, "model")
    history = state["history"]
    tracker.log(run_id, {"train_time_s": sum(h["epoch_time_s"] for h in history), "epochs": len(history)})
    tracker.finish(run_id)
    context.outputs[STAGE] = {"run_id": run_id, "metrics": result.metrics, "history": history}
