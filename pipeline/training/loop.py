"""The classification loop of one worker, which reads like single-process PyTorch (torchvision's and timm's
reference `train.py`): set-up, `train_one_epoch`, `validate`, and the final test.

`ray.train.torch.prepare_model` and `ray.train.report` are the only distributed seams: each worker
trains on its shard, DDP averages gradients, rank 0 writes checkpoints and sends its events to the driver."""
from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.nn as nn

from pipeline.data.augment import Augment
from pipeline.training.config import WorkerConfig
from pipeline.training.evaluation import classification_loss, evaluate
from pipeline.training.finetune import freeze
from pipeline.training.harness import (
    Events,
    all_reduce_sum,
    checkpoint_state,
    gather_in_dataset_order,
    report,
    resume,
    seed_epoch,
    start_events,
    unwrap,
    worker_setup,
)
from pipeline.training.learning_rate import LearningRate
from pipeline.training.mixing import Mixer

TEST_PROBS = "test_probs"  # softmax outputs on the test set, float16 (N, classes), in data-set order
EVAL_BATCH = 256


def make_batches(config: WorkerConfig, rank: int, world_size: int, device: torch.device):
    """(train, validation, test) batch sources for this worker."""
    import ray

    from pipeline.data.batches import StreamedBatches, TensorBatches

    batch_size, seed = config.recipe.optim.micro_batch, config.recipe.seed
    if config.splits_ref is not None:
        splits = ray.get(config.splits_ref)
        return (TensorBatches(splits.train, rank, world_size, batch_size, device, seed),
                TensorBatches(splits.val, rank, world_size, batch_size, device) if len(splits.val) else None,
                TensorBatches(splits.test, rank, world_size, batch_size, device))
    s, every = config.stream, config.stream.val_every
    common = dict(transforms=s.transforms, rank=rank, world_size=world_size, batch_size=batch_size,
                  device=device, seed=seed, prefetch_batches=s.prefetch_batches, train_cpus=s.train_cpus)
    return (StreamedBatches(s.train, (every, "train") if every else None, **common),
            StreamedBatches(s.train, (every, "val"), **common) if every else None,
            StreamedBatches(s.test, None, **common))


@dataclass
class Training:
    """One worker's training set-up: what `train_one_epoch`, `validate` and `final_test` share."""

    config: WorkerConfig
    rank: int
    world_size: int
    device: torch.device
    autocast: Callable
    model: nn.Module  # as prepared by Ray Train (DDP on several workers)
    schedule: LearningRate
    ema: Any  # timm's ModelEmaV3, or None
    mixer: Mixer
    augment: Augment
    channels_last: bool
    batches: tuple  # (train, validation or None, test)
    frozen_norms: list = field(default_factory=list)  # batch norms of frozen layers: kept in eval mode
    eval_criterion: nn.Module = field(default_factory=nn.CrossEntropyLoss)

    @property
    def accum(self) -> int:
        return self.config.recipe.optim.grad_accum_steps


def set_up(config: WorkerConfig, marks: dict[str, float]) -> Training:
    import ray
    import ray.train.torch
    from timm.utils import ModelEmaV3

    from models._factory import build_model

    recipe = config.recipe
    rank, world_size, device, autocast = worker_setup(config.threads, recipe.precision)
    channels_last = recipe.channels_last if recipe.channels_last is not None else device.type == "cuda"
    marks["imports"] = time.time()
    batches = make_batches(config, rank, world_size, device)
    marks["data"] = time.time()
    augment = Augment(config.mean, config.std, config.augment.hflip, config.augment.max_shift, device,
                      seed=recipe.seed + rank)
    torch.manual_seed(recipe.seed)
    model = build_model(config.model, config.num_classes, config.in_chans, **config.model_kwargs)
    if config.init is not None and config.init.weights is not None:  # adapted to this model by the driver
        weights = config.init.weights
        model.load_state_dict(ray.get(weights) if isinstance(weights, ray.ObjectRef) else weights)
    frozen_norms = freeze(model, recipe.freeze)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    if recipe.compile:
        model.compile()  # in place: the state dict keeps its keys
    # Models that drop whole branches in training (stochastic depth, FractalNet's drop-path) leave
    # parameters without gradients in some steps; they say so with `has_unused_parameters`.
    model = ray.train.torch.prepare_model(model, parallel_strategy_kwargs={
        "find_unused_parameters": bool(getattr(model, "has_unused_parameters", False))})
    updates_per_epoch = -(-batches[0].steps_per_epoch // recipe.optim.grad_accum_steps)
    schedule = LearningRate(unwrap(model), recipe.optim, recipe.epochs, updates_per_epoch)
    ema = ModelEmaV3(unwrap(model), decay=recipe.ema_decay) if recipe.ema_decay else None
    marks["model"] = time.time()
    return Training(config, rank, world_size, device, autocast, model, schedule, ema,
                    Mixer(recipe.mixing, recipe.label_smoothing, config.num_classes), augment, channels_last, batches,
                    frozen_norms=frozen_norms)


def train_one_epoch(t: Training, epoch: int, events: Events | None, on_first_step=None) -> dict[str, float]:
    """One pass over this worker's shard; the epoch's training metrics, summed over workers."""
    model, optim, hp = t.model, t.schedule.optimizer, t.config.recipe
    model.train()
    for norm in t.frozen_norms:  # a frozen layer's statistics stay those it was given
        norm.eval()
    # The random streams (augmentation, dropout, drop-path, Mixup) are seeded per epoch and rank.
    t.augment.generator.manual_seed(seed_epoch(hp.seed, epoch, t.rank))
    train_batches = t.batches[0]
    steps = train_batches.steps_per_epoch
    updates_per_epoch = -(-steps // t.accum)
    started = last_event = time.perf_counter()
    loss_sum, correct = torch.zeros((), device=t.device), torch.zeros((), device=t.device)
    seen, waited = 0, 0.0  # waited: time spent waiting for the next batch
    batches = iter(train_batches.epoch(epoch))
    for step in range(steps):
        asked = time.perf_counter()
        images, labels = next(batches)
        waited += time.perf_counter() - asked
        inputs = t.augment.train(images)
        if t.channels_last:
            inputs = inputs.contiguous(memory_format=torch.channels_last)
        inputs, targets = t.mixer(inputs, labels)
        update = (step + 1) % t.accum == 0 or step + 1 == steps
        # Gradient accumulation: DDP all-reduces only on the micro-batch that ends an update.
        sync = model.no_sync() if not update and isinstance(model, nn.parallel.DistributedDataParallel) \
            else contextlib.nullcontext()
        with sync:
            with t.autocast():
                loss, logits = classification_loss(model, model(inputs), targets, t.mixer.criterion)
            (loss / t.accum).backward()
        if update:
            if hp.optim.grad_clip:
                nn.utils.clip_grad_norm_(model.parameters(), hp.optim.grad_clip)
            optim.step()
            optim.zero_grad(set_to_none=True)
            updates = epoch * updates_per_epoch + step // t.accum + 1
            t.schedule.after_update(updates)
            if t.ema is not None:
                t.ema.update(unwrap(model), step=updates)
        loss_sum += loss.detach() * len(labels)
        correct += (logits.detach().argmax(1) == labels).sum()
        seen += len(labels)
        if step == 0 and on_first_step is not None:
            on_first_step()
        if events and time.perf_counter() - last_event > 2:
            last_event = time.perf_counter()
            events("step", epoch=epoch + 1, epochs=hp.epochs, step=step + 1, steps=steps,
                   loss=loss_sum.item() / seen, images_per_sec=seen * t.world_size / (last_event - started))
    train_time = time.perf_counter() - started
    train_loss, train_correct, train_seen = all_reduce_sum([loss_sum.item(), correct.item(), seen], t.device)
    train_top1 = 100 * train_correct / train_seen
    return {"epoch": epoch + 1, "train_loss": train_loss / train_seen, "train_top1": train_top1,
            "train_top1_err": 100 - train_top1, "samples_per_sec": train_seen / train_time,
            "data_wait_frac": all_reduce_sum([waited / train_time], t.device)[0] / t.world_size}


def validate(t: Training, batches, model: nn.Module | None = None, probabilities: list | None = None) -> dict[str, float]:
    """Loss, top-1 and top-5 of the model (default: the trained one) on an evaluation split, over all workers."""
    return evaluate(model if model is not None else unwrap(t.model), batches.in_order(EVAL_BATCH), t.augment,
                    t.eval_criterion, t.device, t.autocast, probabilities)


def evaluate_epoch(t: Training) -> dict[str, float]:
    """An epoch's evaluation: validation (and the EMA weights' beside it), the test set per epoch if asked."""
    _, val_batches, test_batches = t.batches
    metrics = {}
    if val_batches is not None:
        metrics.update({f"val_{k}": v for k, v in validate(t, val_batches).items()})
        if t.ema is not None:  # the averaged weights, evaluated beside the raw ones
            metrics.update({f"val_ema_{k}": v for k, v in validate(t, val_batches, t.ema.module).items()})
    if t.config.recipe.eval_test_every_epoch and t.config.evaluate_test:  # training vs test curves; never in sweeps
        test_now = validate(t, test_batches)
        metrics.update({"test_loss": test_now["loss"], "test_top1_err": 100 - test_now["top1"]})
    return metrics


def final_test(t: Training, history: list[dict[str, float]]) -> tuple[dict[str, float], dict[str, torch.Tensor]]:
    """The run's summary metrics (test scores unless in a sweep) and, for in-memory sets, the test-set
    probabilities in data-set order (ensembles read them; streamed sets have no fixed order)."""
    test_batches, config = t.batches[2], t.config
    probabilities = [] if config.splits_ref is not None and config.evaluate_test else None
    test = validate(t, test_batches, probabilities=probabilities) if config.evaluate_test else None
    extra = {}
    if probabilities is not None:
        shard = torch.cat(probabilities).half() if probabilities else torch.empty(0, config.num_classes).half()
        if (full := gather_in_dataset_order(shard, t.world_size)) is not None:
            extra[TEST_PROBS] = full
    steady = history[1:] or history  # steady-state throughput: the first epoch includes warm-up
    final = {"epochs": config.recipe.epochs,
             "train_samples_per_sec": sum(h["samples_per_sec"] for h in steady) / len(steady),
             "train_time_s": sum(h["epoch_time_s"] for h in history)}
    if test is not None:
        final.update({"top1": test["top1"], "top1_err": 100 - test["top1"], "top5": test["top5"],
                      "top5_err": 100 - test["top5"], "test_loss": test["loss"]})
        if t.ema is not None:
            ema_test = validate(t, test_batches, t.ema.module)
            final.update({"ema_top1": ema_test["top1"], "ema_top1_err": 100 - ema_test["top1"],
                          "ema_top5_err": 100 - ema_test["top5"]})
    if not math.isfinite(test["loss"] if test is not None else history[-1]["train_loss"]):
        final["diverged"] = 1.0
    return final, extra


def train_loop_per_worker(config: WorkerConfig) -> None:
    marks = {"loop": time.time()}  # the start-up's parts, reported with the first step
    import ray

    t = set_up(config, marks)
    events, sampler = start_events(config, t.rank)
    start_epoch, history = resume(events, config.resume_from, model=unwrap(t.model),
                                  optimizer=t.schedule.optimizer, scheduler=t.schedule.scheduler,
                                  model_ema=t.ema.module if t.ema else None)

    def state(epoch: int) -> dict[str, Any] | None:
        return checkpoint_state(t.rank, epoch, history, model=unwrap(t.model), optimizer=t.schedule.optimizer,
                                scheduler=t.schedule.scheduler, model_ema=t.ema.module if t.ema else None,
                                model_name=config.model, model_kwargs=config.model_kwargs)

    def first_step():
        if events:
            events("first_step", time=time.time(), node=ray.get_runtime_context().get_node_id(), marks=marks,
                   epoch=start_epoch + 1)

    for epoch in range(start_epoch, config.recipe.epochs):
        started = time.perf_counter()
        metrics = train_one_epoch(t, epoch, events, first_step if epoch == start_epoch else None)
        metrics.update(evaluate_epoch(t))
        metrics.update({"epoch_time_s": time.perf_counter() - started, "lr": t.schedule.lr})
        t.schedule.after_epoch(epoch + 1, metrics.get("val_top1"))
        history.append(metrics)
        report(metrics, state(epoch + 1), staging=config.staging)
        if events:
            events("epoch", metrics=metrics)
    final, extra = final_test(t, history)
    if sampler is not None:
        sampler.stop()
    report({**history[-1], **final}, state(config.recipe.epochs), extra, config.staging)
    if events:
        events("final", metrics=final)
