"""`pipeline benchmark clip`: CLIP pretraining's zero-shot accuracy against a supervised baseline at the same budget."""
from __future__ import annotations

import time

import torch
import torch.nn as nn
import torch.nn.functional as F

from models.clip import create_model
from pipeline.clip.data import ImageInput
from pipeline.clip.evaluation import classification_metrics
from pipeline.clip.loop import _cosine, _set_lr
from pipeline.errors import PipelineError


def supervised_baseline(model_name: str, model_kwargs: dict, splits, image_input: ImageInput, epochs: int,
                        batch_size: int, lr: float, weight_decay: float, max_shift: int, time_budget_s: float,
                        threads: int, seed: int = 0) -> dict[str, float]:
    """The CLIP model's image tower plus a linear head, trained with cross-entropy in a plain loop:
    the same epochs, global batch, augmentation and CPU threads, within the same wall-clock budget."""
    from timm.optim import create_optimizer_v2

    from pipeline.data.augment import random_hflip, random_translate
    from pipeline.data.batches import TensorBatches

    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    clip_model, _ = create_model(model_name, **model_kwargs)
    tower = clip_model.visual
    with torch.no_grad():
        width = tower(image_input(splits.train.images[:2])).shape[1]
    net = nn.Sequential(tower, nn.Linear(width, splits.train.num_classes))
    batches = TensorBatches(splits.train, 0, 1, batch_size, torch.device("cpu"), seed)
    optimizer = create_optimizer_v2(net, opt="adamw", lr=lr, weight_decay=weight_decay)
    total_steps = epochs * batches.steps_per_epoch
    generator = torch.Generator().manual_seed(seed)
    started, steps_done, out_of_time = time.perf_counter(), 0, False
    for epoch in range(epochs):
        net.train()
        for images, labels in batches.epoch(epoch):
            images = random_translate(images, max_shift, generator)
            if splits.train.hflip:
                images = random_hflip(images, generator)
            loss = F.cross_entropy(net(image_input(images)), labels, label_smoothing=0.1)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            steps_done += 1
            # The cosine schedule runs over the epochs or the time budget, whichever ends first.
            fraction = max(steps_done / total_steps, (time.perf_counter() - started) / time_budget_s)
            _set_lr(optimizer, _cosine(lr, 1e-5, fraction))
            if fraction >= 1:
                out_of_time = True
                break
        if out_of_time:
            break
    train_time = time.perf_counter() - started
    net.eval()
    with torch.no_grad():
        logits = torch.cat([net(image_input(chunk)) for chunk in splits.test.images.split(1000)])
    return {**classification_metrics(logits, splits.test.labels), "train_time_s": train_time,
            "epochs": steps_done / batches.steps_per_epoch}


def run_benchmark(spec_path: str, overrides: list[str], budget_min: float, target: float, console) -> bool:
    """Pretrain and evaluate zero-shot as the spec says, then train the same image tower supervised
    with the same budget; print the figures side by side. True when the target is met."""
    from rich.table import Table

    from pipeline.engine import workflow
    from pipeline.spec.loading import load_spec

    spec = load_spec(spec_path, overrides)
    spec.stages = ["clip_pretrain", "zero_shot"]
    started = time.perf_counter()
    context = workflow.run(spec, console)
    if context.failures:
        raise PipelineError(f"pretraining failed: {', '.join(context.failures)} (see the run's 'error' tag in MLflow)")
    pretrain = context.outputs["clip_pretrain"]
    if "history" not in pretrain:
        raise PipelineError("the pretraining is cached, so its time is not measured here: rerun with a fresh "
                            "store, or pass --set clip.train.seed=N for a new unit")
    pretrain_s = sum(h["epoch_time_s"] for h in pretrain["history"])
    evaluated = context.outputs["zero_shot"]
    zero_shot = evaluated["zero_shot"]["metrics"]
    probe = evaluated.get("linear_probe", {}).get("metrics")
    console.print(f"pretraining: {len(pretrain['history'])} epochs in {pretrain_s / 60:.1f} min "
                  f"(whole workflow so far {(time.perf_counter() - started) / 60:.1f} min); "
                  "now the same image tower, supervised, with the same budget...")
    clip_config = spec.clip
    image_input = ImageInput.of_model(create_model(clip_config.model, **clip_config.model_kwargs)[0],
                                      context.data.train.mean, context.data.train.std)
    supervised = supervised_baseline(
        clip_config.model, clip_config.model_kwargs, context.data, image_input,
        clip_config.train.epochs, clip_config.train.batch_size * spec.resources.num_workers, clip_config.train.lr,
        clip_config.train.weight_decay, spec.data.max_shift if spec.data.augment else 0, pretrain_s,
        max(1, int(spec.resources.num_workers * spec.resources.cpus_per_worker)), clip_config.train.seed)

    table = Table(title=f"{clip_config.model} on {spec.data.name}: test set, {len(context.data.test):,} images")
    for column in ("", "top-1", "top-5", "mean class recall", "training"):
        table.add_column(column, justify="left" if not column else "right")
    train_note = f"{len(pretrain['history'])} epochs, {pretrain_s / 60:.1f} min"
    table.add_row("zero-shot (contrastive pretraining)", f"{zero_shot['top1']:.2f}%", f"{zero_shot['top5']:.2f}%",
                  f"{zero_shot['mean_class_recall']:.2f}%", train_note)
    if probe:
        table.add_row("linear probe on the same frozen features", f"{probe['top1']:.2f}%", f"{probe['top5']:.2f}%",
                      f"{probe['mean_class_recall']:.2f}%", train_note + " + probe")
    table.add_row("supervised, same image tower", f"{supervised['top1']:.2f}%", f"{supervised['top5']:.2f}%",
                  f"{supervised['mean_class_recall']:.2f}%",
                  f"{supervised['epochs']:.1f} epochs, {supervised['train_time_s'] / 60:.1f} min")
    console.print(table)
    met = zero_shot["top1"] >= target and pretrain_s <= budget_min * 60
    console.print(f"target: zero-shot top-1 >= {target:.0f}% after at most {budget_min:g} min of pretraining: "
                  f"[bold]{'met' if met else 'NOT met'}[/] ({zero_shot['top1']:.2f}% after {pretrain_s / 60:.1f} min)")
    return met
