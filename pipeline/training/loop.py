"""The classification loop of one worker, which reads like single-process PyTorch.

`ray.train.torch.prepare_model` and `ray.train.report` are the only distributed seams: each worker
trains on its shard, DDP averages gradients, rank 0 writes checkpoints and sends its events to the driver."""
from __future__ import annotations

import contextlib
import math
import time
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from pipeline.data.augment import Augment
from pipeline.training.config import WorkerConfig
from pipeline.training.evaluation import classification_loss, evaluate
from pipeline.training.harness import (
    Events,
    all_reduce_sum,
    gather_in_dataset_order,
    load_checkpoint,
    report,
    unwrap,
    worker_setup,
)

TEST_PROBS = "test_probs"  # softmax outputs on the test set, float16 (N, classes), in data-set order


def batch_plan(config: WorkerConfig, world_size: int) -> dict[str, Any]:
    """Micro-batch, accumulation steps, global batch and scaled lr (`TrainConfig.batch_plan`) of this run."""
    from pipeline.spec.sections import TrainConfig

    return TrainConfig.model_validate(config.train).batch_plan(world_size)


def make_batches(config: WorkerConfig, rank: int, world_size: int, device: torch.device):
    """(train, validation, test) batch sources for this worker."""
    import ray

    from pipeline.data.batches import StreamedBatches, TensorBatches

    batch_size, seed = batch_plan(config, world_size)["micro_batch"], config.train["seed"]
    if config.splits_ref is not None:
        splits = ray.get(config.splits_ref)
        return (TensorBatches(splits.train, rank, world_size, batch_size, device, seed),
                TensorBatches(splits.val, rank, world_size, batch_size, device) if len(splits.val) else None,
                TensorBatches(splits.test, rank, world_size, batch_size, device))
    s = config.stream
    every = max(2, round(1 / config.data["val_fraction"])) if config.data["val_fraction"] else 0
    common = dict(transforms=s["transforms"], rank=rank, world_size=world_size, batch_size=batch_size,
                  device=device, seed=seed, prefetch_batches=s.get("prefetch_batches", 4),
                  train_cpus=s.get("train_cpus", 0))
    return (StreamedBatches(s["train"], (every, "train") if every else None, **common),
            StreamedBatches(s["train"], (every, "val"), **common) if every else None,
            StreamedBatches(s["test"], None, **common))


def train_loop_per_worker(config: WorkerConfig) -> None:
    marks = {"loop": time.time()}  # the start-up's parts, reported with the first step
    import ray.train
    import ray.train.torch
    from timm.data import Mixup
    from timm.data.mixup import mixup_target
    from timm.loss import SoftTargetCrossEntropy
    from timm.optim import create_optimizer_v2
    from timm.scheduler import create_scheduler_v2
    from timm.utils import ModelEmaV3

    from models._factory import build_model

    hp, rank, world_size, device, autocast = worker_setup(config.threads, config.train)
    from pipeline.tracking.system_metrics import start_for_worker

    sampler = start_for_worker(Events(config) if config.progress is not None else None, config.system_metrics)
    channels_last = hp.channels_last if hp.channels_last is not None else device.type == "cuda"
    marks["imports"] = time.time()

    train_batches, val_batches, test_batches = make_batches(config, rank, world_size, device)
    marks["data"] = time.time()
    # A streamed set arrives augmented by its Ray Data tasks (timm's transforms); here it is only normalized.
    in_memory_augment = config.data["augment"] and config.splits_ref is not None
    augment = Augment(config.mean, config.std, config.hflip and in_memory_augment,
                      config.data["max_shift"] if in_memory_augment else 0, device, seed=hp.seed + rank)
    plan = batch_plan(config, world_size)
    accum, lr = plan["grad_accum_steps"], plan["lr"]

    torch.manual_seed(hp.seed)
    model = build_model(config.model, config.num_classes, config.in_chans, **config.model_kwargs)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    if hp.compile:
        model.compile()  # in place: the state dict keeps its keys
    # Models that drop whole branches in training (stochastic depth, FractalNet's drop-path) leave
    # parameters without gradients in some steps; they say so with `has_unused_parameters`.
    model = ray.train.torch.prepare_model(model, parallel_strategy_kwargs={
        "find_unused_parameters": bool(getattr(model, "has_unused_parameters", False))})
    optimizer = create_optimizer_v2(unwrap(model), opt=hp.optimizer, lr=lr, weight_decay=hp.weight_decay,
                                    momentum=hp.momentum)
    ema = ModelEmaV3(unwrap(model), decay=hp.ema_decay) if hp.ema_decay else None
    marks["model"] = time.time()
    steps = train_batches.steps_per_epoch
    updates_per_epoch = -(-steps // accum)
    scheduler, _ = create_scheduler_v2(optimizer, sched=hp.scheduler, num_epochs=hp.epochs,
                                       warmup_epochs=hp.warmup_epochs, min_lr=hp.min_lr, step_on_epochs=False,
                                       decay_epochs=hp.decay_epochs, decay_milestones=hp.decay_milestones,
                                       decay_rate=hp.decay_rate, updates_per_epoch=updates_per_epoch)
    mixup = Mixup(mixup_alpha=hp.mixup, cutmix_alpha=hp.cutmix, prob=hp.mixup_prob, switch_prob=hp.mixup_switch_prob,
                  label_smoothing=hp.label_smoothing, num_classes=config.num_classes) if hp.mixup or hp.cutmix else None
    criterion = SoftTargetCrossEntropy() if mixup else nn.CrossEntropyLoss(label_smoothing=hp.label_smoothing)
    eval_criterion = nn.CrossEntropyLoss()

    start_epoch, history = 0, []
    if (state := load_checkpoint()) is not None:
        unwrap(model).load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if scheduler is not None:
            scheduler.load_state_dict(state["scheduler"])
        if ema is not None and state.get("model_ema") is not None:
            ema.module.load_state_dict(state["model_ema"])
        start_epoch, history = state["epoch"], state["history"]
    events = Events(config) if rank == 0 else None
    if events and state is not None:
        events.resumed(start_epoch, history)

    def training_state(epoch: int) -> dict[str, Any] | None:
        if rank != 0:
            return None
        return {"model": unwrap(model).state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict() if scheduler is not None else None,
                **({"model_ema": ema.module.state_dict()} if ema is not None else {}),
                "epoch": epoch, "history": history, "model_name": config.model, "model_kwargs": config.model_kwargs}

    for epoch in range(start_epoch, hp.epochs):
        model.train()
        # The random streams (augmentation, dropout, drop-path) are seeded per epoch and rank, so a unit
        # resumed from an epoch's checkpoint follows the path an uninterrupted one takes.
        augment.generator.manual_seed(hp.seed * 1_000_003 + epoch * 1009 + rank)
        torch.manual_seed(hp.seed * 1_000_003 + epoch * 1009 + rank)
        np.random.seed((hp.seed * 1_000_003 + epoch * 1009 + rank) % 2**32)  # timm's Mixup draws from numpy
        started = time.perf_counter()
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device)
        seen = 0
        last_event = started
        waited = 0.0  # time spent waiting for the next batch
        batches = iter(train_batches.epoch(epoch))
        for step in range(steps):
            asked = time.perf_counter()
            images, labels = next(batches)
            waited += time.perf_counter() - asked
            inputs = augment.train(images)
            if channels_last:
                inputs = inputs.contiguous(memory_format=torch.channels_last)
            targets = labels
            if mixup is not None:  # timm's Mixup needs an even batch; an odd last batch gets smoothed targets
                inputs, targets = mixup(inputs, labels) if len(labels) % 2 == 0 else \
                    (inputs, mixup_target(labels, config.num_classes, smoothing=hp.label_smoothing))
            update = (step + 1) % accum == 0 or step + 1 == steps
            # Gradient accumulation: DDP all-reduces only on the micro-batch that ends an update.
            sync = model.no_sync() if not update and isinstance(model, nn.parallel.DistributedDataParallel) \
                else contextlib.nullcontext()
            with sync:
                with autocast():
                    loss, logits = classification_loss(model, model(inputs), targets, criterion)
                (loss / accum).backward()
            if update:
                if hp.grad_clip:
                    nn.utils.clip_grad_norm_(model.parameters(), hp.grad_clip)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                updates = epoch * updates_per_epoch + step // accum + 1
                if scheduler is not None:
                    scheduler.step_update(updates)
                if ema is not None:
                    ema.update(unwrap(model), step=updates)
            loss_sum += loss.detach() * len(labels)
            correct += (logits.detach().argmax(1) == labels).sum()
            seen += len(labels)
            if events and step == 0 and epoch == start_epoch:
                events("first_step", time=time.time(), node=ray.get_runtime_context().get_node_id(), marks=marks)
            if events and time.perf_counter() - last_event > 2:
                last_event = time.perf_counter()
                events("step", epoch=epoch + 1, epochs=hp.epochs, step=step + 1, steps=steps,
                          loss=loss_sum.item() / seen,
                          images_per_sec=seen * world_size / (last_event - started))
        train_time = time.perf_counter() - started
        train_loss, train_correct, train_seen = all_reduce_sum([loss_sum.item(), correct.item(), seen], device)
        val = evaluate(unwrap(model), val_batches.in_order(256), augment, eval_criterion, device, autocast) \
            if val_batches is not None else {}
        if ema is not None and val_batches is not None:  # the averaged weights, evaluated beside the raw ones
            val.update({f"ema_{k}": v for k, v in evaluate(ema.module, val_batches.in_order(256), augment,
                                                              eval_criterion, device, autocast).items()})
        per_epoch_test = {}  # training vs test curves (the ResNet degradation plot); never in sweeps
        if getattr(hp, "eval_test_every_epoch", False) and getattr(config, "evaluate_test", True):
            test_now = evaluate(unwrap(model), test_batches.in_order(256), augment, eval_criterion, device, autocast)
            per_epoch_test = {"test_loss": test_now["loss"], "test_top1_err": 100 - test_now["top1"]}
        train_top1 = 100 * train_correct / train_seen
        metrics = {"epoch": epoch + 1, "train_loss": train_loss / train_seen,
                   "train_top1": train_top1, "train_top1_err": 100 - train_top1,
                   **{f"val_{k}": v for k, v in val.items()}, **per_epoch_test,
                   "samples_per_sec": train_seen / train_time, "epoch_time_s": time.perf_counter() - started,
                   "data_wait_frac": all_reduce_sum([waited / train_time], device)[0] / world_size,
                   "lr": optimizer.param_groups[0]["lr"]}
        history.append(metrics)
        report(metrics, training_state(epoch + 1))
        if events:
            events("epoch", metrics=metrics)

    # Test-set probabilities (in data-set order) are kept for ensembles; streamed sets have no fixed order.
    probabilities = [] if config.splits_ref is not None and config.evaluate_test else None
    test = evaluate(unwrap(model), test_batches.in_order(256), augment, eval_criterion, device, autocast,
                    probabilities) if config.evaluate_test else None
    extra = {}
    if probabilities is not None:
        shard = torch.cat(probabilities).half() if probabilities else torch.empty(0, config.num_classes).half()
        if (full := gather_in_dataset_order(shard, world_size)) is not None:
            extra[TEST_PROBS] = full
    # Steady-state throughput: the first epoch includes warm-up (allocations, lazy init).
    steady = history[1:] or history
    final = {"epochs": hp.epochs,
             "train_samples_per_sec": sum(h["samples_per_sec"] for h in steady) / len(steady),
             "train_time_s": sum(h["epoch_time_s"] for h in history)}
    if test is not None:
        final.update({"top1": test["top1"], "top1_err": 100 - test["top1"], "top5": test["top5"],
                      "top5_err": 100 - test["top5"], "test_loss": test["loss"]})
        if ema is not None:
            ema_test = evaluate(ema.module, test_batches.in_order(256), augment, eval_criterion, device, autocast)
            final.update({"ema_top1": ema_test["top1"], "ema_top1_err": 100 - ema_test["top1"],
                          "ema_top5_err": 100 - ema_test["top5"]})
    if not math.isfinite(test["loss"] if test is not None else history[-1]["train_loss"]):
        final["diverged"] = 1.0
    if sampler is not None:
        sampler.stop()
    report({**history[-1], **final}, training_state(hp.epochs), extra)
    if events:
        events("final", metrics=final)
