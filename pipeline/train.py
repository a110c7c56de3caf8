"""Training: the per-worker loop, which reads like single-process PyTorch, and its Ray Train wrapper.

`ray.train.torch.prepare_model` and `ray.train.report` are the only distributed seams: each worker
trains on its shard, DDP averages gradients, rank 0 writes checkpoints and logs metrics to MLflow.
"""
from __future__ import annotations

import contextlib
import math
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn

from pipeline.data.augment import Augment

STATE_FILE = "state.pt"
TEST_PROBS = "test_probs"  # softmax outputs on the test set, float16 (N, classes), in data-set order


@dataclass
class WorkerConfig:
    """Everything a training worker needs, picklable; built by the driver."""

    model: str
    model_kwargs: dict[str, Any]
    train: dict[str, Any]  # a TrainConfig as a dict
    data: dict[str, Any]  # a DataConfig as a dict
    num_classes: int
    in_chans: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    hflip: bool
    threads: int = 1
    splits_ref: Any = None  # ray.ObjectRef of in-memory Splits; None when the data set streams
    stream: dict[str, Any] = field(default_factory=dict)  # StreamedBatches arguments when it streams
    progress: Any = None  # the ray.util.queue.Queue of `fit`'s relay (set by `fit`)
    label: str = ""  # the unit's name in progress events
    evaluate_test: bool = True  # sweep trials select on validation only and never see the test set
    system_metrics: bool = True  # each node's CPU, memory and GPU use, sent through the relay


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def split_outputs(output) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Main logits and auxiliary logits (GoogLeNet's side heads return a tuple in training)."""
    if isinstance(output, (tuple, list)):
        return output[0], list(output[1:])
    return output, []


def classification_loss(model: nn.Module, output, labels, criterion) -> tuple[torch.Tensor, torch.Tensor]:
    logits, aux = split_outputs(output)
    loss = criterion(logits, labels)
    if aux:
        weight = getattr(unwrap(model), "aux_loss_weight", 0.3)
        loss = loss + weight * sum(criterion(a, labels) for a in aux)
    return loss, logits


def all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(tensor)
    return tensor.tolist()


@torch.no_grad()
def evaluate(model: nn.Module, batches, augment: Augment, criterion, device, autocast,
             probabilities: list | None = None) -> dict[str, float]:
    """Loss, top-1 and top-5 accuracy over every worker's shard, summed across workers.

    With `probabilities` given, this worker's softmax outputs are appended to it, batch by batch.
    """
    model.eval()
    loss_sum = correct1 = correct5 = count = 0.0
    for images, labels in batches:
        with autocast():
            logits = model(augment.eval(images)).float()
        if probabilities is not None:
            probabilities.append(logits.softmax(1).cpu())
        loss_sum += criterion(logits, labels).item() * len(labels)
        top5 = logits.topk(min(5, logits.shape[1]), dim=1).indices
        hits = top5 == labels[:, None]
        correct1 += hits[:, 0].sum().item()
        correct5 += hits.any(dim=1).sum().item()
        count += len(labels)
    loss_sum, correct1, correct5, count = all_reduce_sum([loss_sum, correct1, correct5, count], device)
    count = max(count, 1)
    return {"loss": loss_sum / count, "top1": 100 * correct1 / count, "top5": 100 * correct5 / count}


class Events:
    """Rank 0's progress events (step, epoch with its metrics, resumed, final), sent to whoever called `fit`:
    that process is the run's only MLflow writer, so the workers need no tracking credentials."""

    def __init__(self, config: WorkerConfig):
        self.queue = config.progress
        self.label = config.label

    def __call__(self, kind: str, **payload) -> None:
        if self.queue is not None:
            self.queue.actor.put_nowait.remote({"kind": kind, "model": self.label, **payload})

    def resumed(self, epoch: int, history: list[dict[str, float]]) -> None:
        """A restart from a checkpoint; its epochs are sent again for the writer to log those it missed."""
        self("resumed", epoch=epoch)
        for past in history:
            self("epoch", metrics=past)


def gather_in_dataset_order(shard: torch.Tensor, world_size: int) -> torch.Tensor | None:
    """Rows of every worker's evaluation shard (rank r holds items r, r + world_size, ...) in the
    data set's order, on rank 0; None on the other ranks."""
    if world_size == 1:
        return shard
    parts = [None] * world_size
    dist.all_gather_object(parts, shard)
    if dist.get_rank() != 0:
        return None
    full = torch.empty((sum(len(p) for p in parts), *shard.shape[1:]), dtype=shard.dtype)
    for rank, part in enumerate(parts):
        full[rank::world_size] = part
    return full


def report(metrics: dict[str, float], state: dict[str, Any] | None = None,
           extra: dict[str, torch.Tensor] | None = None) -> None:
    """`ray.train.report` with rank 0's checkpoint (the training state, extra tensors as files of their own)
    written to a temporary folder that is removed once Ray has copied it to storage. The state holds
    tensors and plain containers only, so it loads with `weights_only=True`."""
    import ray.train

    if state is None:
        ray.train.report(metrics)
        return
    with tempfile.TemporaryDirectory(prefix="ckpt-") as directory:
        torch.save(state, Path(directory) / STATE_FILE)
        for name, tensor in (extra or {}).items():
            torch.save(tensor, Path(directory) / f"{name}.pt")
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(directory))


def read_state(checkpoint) -> dict[str, Any]:
    """The training state of a checkpoint, loaded without unpickling code (a planted file is refused)."""
    import pickle

    from pipeline.errors import PipelineError

    with checkpoint.as_directory() as directory:
        path = Path(directory) / STATE_FILE
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            reason = str(exc).strip().splitlines()[0]
            raise PipelineError(f"checkpoint {path} holds more than tensors and plain containers and is not "
                                f"loaded ({reason}): delete it, or train the unit again with --rerun") from None


def load_checkpoint() -> dict[str, Any] | None:
    import ray.train

    checkpoint = ray.train.get_checkpoint()
    return None if checkpoint is None else read_state(checkpoint)


def batch_plan(config: WorkerConfig, world_size: int) -> dict[str, Any]:
    """Micro-batch, accumulation steps, global batch and scaled lr (`TrainConfig.batch_plan`) of this run."""
    from pipeline.config import TrainConfig

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


def worker_setup(threads: int, train: dict[str, Any]):
    """What every training loop starts with: CPU threads, hyperparameters, rank, world size, device,
    and an autocast context (bf16 on GPU with precision 'auto', or wherever precision is 'bf16')."""
    import ray.train
    import ray.train.torch

    torch.set_num_threads(threads)
    hp = SimpleNamespace(**train)
    context = ray.train.get_context()
    device = ray.train.torch.get_device()
    use_bf16 = hp.precision == "bf16" or (hp.precision == "auto" and device.type == "cuda")

    def autocast():
        return torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16)

    return hp, context.get_world_rank(), context.get_world_size(), device, autocast


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

    from pipeline.complexity import build_model

    hp, rank, world_size, device, autocast = worker_setup(config.threads, config.train)
    from pipeline.system_metrics import start_for_worker

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


def fit(config, resources, storage_path: str, run_name: str, on_event=None, loop=None,
        callbacks: list | None = None):
    """Run the worker loop (default: `train_loop_per_worker`) on `resources.num_workers` Ray Train
    workers; returns Ray's Result.

    Rank 0's events reach `on_event` in this process through a `pipeline.relay.Relay` (this process is the
    run's MLflow writer; the workers get no credentials). Reusing `run_name` under the same storage path
    resumes from its latest checkpoint. `callbacks` are Ray Train UserCallbacks (in a Tune trial:
    `ray.tune.integration.ray_train.TuneReportCallback()`).
    """
    import dataclasses

    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from pipeline.relay import Relay

    use_gpu = resources.gpus_per_worker > 0
    per_worker = {"CPU": resources.cpus_per_worker, **({"GPU": resources.gpus_per_worker} if use_gpu else {})}
    with Relay(on_event) as relay:
        trainer = TorchTrainer(
            loop or train_loop_per_worker,
            train_loop_config=dataclasses.replace(config, progress=relay.queue),
            scaling_config=ScalingConfig(num_workers=resources.num_workers, use_gpu=use_gpu,
                                         resources_per_worker=per_worker),
            run_config=RunConfig(name=run_name, storage_path=storage_path,
                                 failure_config=FailureConfig(max_failures=resources.max_failures),
                                 checkpoint_config=CheckpointConfig(num_to_keep=2), callbacks=callbacks),
        )
        return trainer.fit()
