"""Contrastive image-text pretraining on Ray Train, one worker's loop.

The loop reads like the classification loop: `prepare_model` and `ray.train.report` are the
distributed seams, plus open_clip's `ClipLoss`, which gathers every worker's features so that the
negatives of each pair are the whole global batch."""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import torch
import torch.nn as nn

from models.clip import create_model
from pipeline.clip.data import ImageInput, PairData
from pipeline.clip.evaluation import (
    classification_metrics,
    encode_images,
    encode_texts,
    retrieval_recall,
    zero_shot_classifier,
)


@dataclass
class ClipWorkerConfig:
    """Everything a pretraining worker needs, picklable; built by the driver."""

    model: str
    pretrained: str | None
    model_kwargs: dict[str, Any]
    train: dict[str, Any]  # a ClipTrainConfig as a dict
    data_ref: Any  # ray.ObjectRef of PairData
    image_input: ImageInput
    max_shift: int = 0
    threads: int = 1
    progress: Any = None  # set by `fit`
    label: str = ""
    resume_from: str | None = None  # set by `fit`
    staging: str | None = None  # set by `fit`
    system_metrics: bool = True  # each node's CPU, memory and GPU use, sent through the relay


def contrastive_loss(model, loss_fn, images: torch.Tensor, tokens: torch.Tensor,
                     caption_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """ClipLoss of a batch of pairs; each distinct caption goes through the text tower once."""
    unique, inverse = caption_ids.unique(return_inverse=True)
    out = model(images, tokens[unique])
    loss = loss_fn(out["image_features"], out["text_features"][inverse], out["logit_scale"])
    return loss, out["logit_scale"]


def pretrain_loop_per_worker(config: ClipWorkerConfig) -> None:
    import ray
    import ray.train
    import ray.train.torch
    from open_clip.loss import ClipLoss
    from timm.optim import create_optimizer_v2
    from timm.scheduler import create_scheduler_v2

    from pipeline.data.augment import random_hflip, random_translate
    from pipeline.data.batches import TensorBatches
    from pipeline.data.captions import heldout_pairs
    from pipeline.training.harness import (
        all_reduce_sum,
        checkpoint_state,
        report,
        resume,
        seed_epoch,
        start_events,
        unwrap,
        worker_setup,
    )

    hp = SimpleNamespace(**config.train)
    rank, world_size, device, autocast = worker_setup(config.threads, hp.precision)
    events, sampler = start_events(config, rank)

    data: PairData = ray.get(config.data_ref)
    batches = TensorBatches(data.train.as_tensors(), rank, world_size, hp.batch_size, device, hp.seed)
    tokens = data.tokens.to(device)
    image_input = config.image_input

    torch.manual_seed(hp.seed)
    model, tokenizer = create_model(config.model, config.pretrained, **config.model_kwargs)
    if not config.pretrained:
        model.logit_scale.data.fill_(math.log(1 / hp.init_temperature))
    model = ray.train.torch.prepare_model(model)
    loss_fn = ClipLoss(local_loss=hp.local_loss, gather_with_grad=True, cache_labels=True,
                       rank=rank, world_size=world_size)
    optimizer = create_optimizer_v2(unwrap(model), opt="adamw", lr=hp.lr, weight_decay=hp.weight_decay)
    steps = batches.steps_per_epoch
    scheduler, _ = create_scheduler_v2(optimizer, sched="cosine", num_epochs=hp.epochs, warmup_epochs=hp.warmup_epochs,
                                       min_lr=hp.min_lr, step_on_epochs=False, updates_per_epoch=steps)

    start_epoch, history = resume(events, config.resume_from, model=unwrap(model), optimizer=optimizer,
                                  scheduler=scheduler)

    heldout_index, heldout_captions, heldout_groups = heldout_pairs(data.heldout, hp.heldout_pairs, hp.seed)
    budget_s = hp.time_limit_min * 60 if hp.time_limit_min else None
    spent_s = sum(h["epoch_time_s"] for h in history)
    out_of_time = False
    for epoch in range(start_epoch, hp.epochs):
        if out_of_time or (budget_s and spent_s >= budget_s):
            break
        model.train()
        started = time.perf_counter()
        # Seeded per epoch and rank: a restarted worker draws the same captions and shifts again.
        seed_epoch(hp.seed, epoch, rank)
        generator = torch.Generator().manual_seed(hp.seed * 100_003 + epoch * 101 + rank)
        loss_sum, seen = torch.zeros((), device=device), 0
        last_event = started
        for step, (images, groups) in enumerate(batches.epoch(epoch)):
            caption_ids = data.train.sample_captions(groups.cpu(), generator, hp.captions_per_group).to(device)
            images = random_translate(images, config.max_shift, generator)
            if data.train.hflip:
                images = random_hflip(images, generator)
            with autocast():
                loss, _ = contrastive_loss(model, loss_fn, image_input(images), tokens, caption_ids)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if hp.grad_clip:
                nn.utils.clip_grad_norm_(model.parameters(), hp.grad_clip)
            optimizer.step()
            if budget_s:  # the cosine schedule runs over the epochs or the time budget, whichever ends first
                time_used = _slowest_clock(spent_s + time.perf_counter() - started, device) / budget_s
                fraction = max(time_used, (epoch * steps + step + 1) / (hp.epochs * steps))
                _set_lr(optimizer, _cosine(hp.lr, hp.min_lr, fraction))
                out_of_time = time_used >= 1
            else:
                scheduler.step_update(epoch * steps + step + 1)
            with torch.no_grad():  # CLIP's cap on the temperature: logit scale at most 100
                unwrap(model).logit_scale.clamp_(0, math.log(100))
            loss_sum += loss.detach() * len(groups)
            seen += len(groups)
            if events and step == 0 and epoch == start_epoch:
                events("first_step", time=time.time(), node=ray.get_runtime_context().get_node_id(),
                       epoch=epoch + 1)
            if events and time.perf_counter() - last_event > 2:
                last_event = time.perf_counter()
                events("step", epoch=epoch + 1, epochs=hp.epochs, step=step + 1, steps=steps,
                          loss=loss_sum.item() / seen, images_per_sec=seen * world_size / (last_event - started))
            if out_of_time:
                break
        train_time = time.perf_counter() - started
        loss_total, seen_total = all_reduce_sum([loss_sum.item(), seen], device)
        metrics = {"epoch": epoch + 1, "train_loss": loss_total / seen_total,
                   "temperature": 1 / unwrap(model).logit_scale.exp().item(),
                   "logit_scale": unwrap(model).logit_scale.exp().item(),
                   "samples_per_sec": seen_total / train_time, "lr": optimizer.param_groups[0]["lr"]}
        if rank == 0:  # held-out evaluation is small: rank 0 alone computes it while the others wait
            clip = unwrap(model)
            image_features = encode_images(clip, data.heldout.images[heldout_index], image_input, device,
                                           autocast=autocast)
            with autocast():
                text_features = encode_texts(clip, tokens[heldout_captions], device)
            metrics.update(retrieval_recall(image_features, text_features, heldout_groups.to(device)))
            if data.classes and data.eval_templates:
                weights = zero_shot_classifier(clip, tokenizer, data.classes, data.eval_templates, device)
                labels = data.heldout.groups[heldout_index].to(device)
                metrics["val_zero_shot_top1"] = classification_metrics(image_features @ weights, labels)["top1"]
        metrics["epoch_time_s"] = time.perf_counter() - started
        spent_s += metrics["epoch_time_s"]
        history.append(metrics)
        report(metrics, checkpoint_state(rank, epoch + 1, history, model=unwrap(model), optimizer=optimizer,
                                         scheduler=scheduler, model_name=config.model), staging=config.staging)
        if events:
            events("epoch", metrics=metrics)
    if sampler is not None:
        sampler.stop()


def _slowest_clock(seconds: float, device) -> float:
    """The largest of the workers' clocks: every worker takes the same decision on the same step."""
    import torch.distributed as dist

    value = torch.tensor([seconds], dtype=torch.float64, device=device)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return value.item()


def _cosine(lr: float, min_lr: float, fraction: float) -> float:
    return min_lr + (lr - min_lr) * 0.5 * (1 + math.cos(math.pi * min(fraction, 1.0)))


def _set_lr(optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
