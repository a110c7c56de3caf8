"""Training: the per-worker loop, which reads like single-process PyTorch, and its Ray Train wrapper.

`ray.train.torch.prepare_model` and `ray.train.report` are the only distributed seams: each worker
trains on its shard, DDP averages gradients, rank 0 writes checkpoints and logs metrics to MLflow.
"""
from __future__ import annotations

import math
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

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
    stream: dict[str, Any] = field(default_factory=dict)  # StreamBatches arguments when it streams
    run_id: str | None = None
    tracking_uri: str | None = None
    progress: Any = None  # a ray.util.queue.Queue the driver reads progress events from
    label: str = ""  # the model's name in progress events
    evaluate_test: bool = True  # sweep trials select on validation only and never see the test set
    started_at: float | None = None  # wall-clock start of the run; set, rank 0 logs `startup_s` at the first step


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


class EpochLog:
    """Rank 0's MLflow logging and progress events. Each epoch lands in MLflow exactly once,
    also when workers restart: steps already logged are skipped, and epochs that a checkpoint
    holds but MLflow missed (a kill between report and log) are logged on restart."""

    def __init__(self, config: WorkerConfig):
        self.progress = config.progress
        self.label = config.label
        self.tracker = None
        if config.run_id:
            from pipeline.tracking import Tracker

            self.tracker = Tracker(config.tracking_uri)
            self.run_id = config.run_id
            self.logged = self.tracker.logged_steps(config.run_id, "epoch")
            import ray

            self.tracker.client.set_tag(self.run_id, "ray_node_id", ray.get_runtime_context().get_node_id())

    def event(self, kind: str, **payload) -> None:
        if self.progress is not None:
            self.progress.actor.put_nowait.remote({"kind": kind, "model": self.label, **payload})

    def first_step(self, started_at: float | None) -> None:
        now = time.time()
        self.event("first_step", time=now)
        if self.tracker and started_at is not None and not self.tracker.logged_steps(self.run_id, "startup_s"):
            self.tracker.log(self.run_id, {"startup_s": now - started_at})

    def resumed(self, epoch: int) -> None:
        if self.tracker:
            self.tracker.client.set_tag(self.run_id, "resumed_from_epoch", str(epoch))
        self.event("resumed", epoch=epoch)

    def epoch(self, metrics: dict[str, float]) -> None:
        step = int(metrics["epoch"])
        if self.tracker and step not in self.logged:
            self.tracker.log(self.run_id, metrics, step=step)
            self.logged.add(step)
        self.event("epoch", metrics=metrics)

    def final(self, metrics: dict[str, float]) -> None:
        if self.tracker and not self.tracker.logged_steps(self.run_id, "train_time_s"):
            self.tracker.log(self.run_id, metrics, step=0)
        self.event("final", metrics=metrics)


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


def save_checkpoint(state: dict[str, Any], extra: dict[str, torch.Tensor] | None = None):
    """A checkpoint directory with the training state, plus extra tensors as files of their own."""
    import ray.train

    directory = tempfile.mkdtemp(prefix="ckpt-")
    torch.save(state, Path(directory) / STATE_FILE)
    for name, tensor in (extra or {}).items():
        torch.save(tensor, Path(directory) / f"{name}.pt")
    return ray.train.Checkpoint.from_directory(directory)


def load_checkpoint() -> dict[str, Any] | None:
    import ray.train

    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as directory:
        return torch.load(Path(directory) / STATE_FILE, map_location="cpu", weights_only=False)


def make_batches(config: WorkerConfig, rank: int, world_size: int, device: torch.device):
    """(train, validation, test) batch sources for this worker."""
    import ray

    from pipeline.data.batches import StreamBatches, TensorBatches

    batch_size, seed = config.train["batch_size"], config.train["seed"]
    if config.splits_ref is not None:
        splits = ray.get(config.splits_ref)
        return (TensorBatches(splits.train, rank, world_size, batch_size, device, seed),
                TensorBatches(splits.val, rank, world_size, batch_size, device) if len(splits.val) else None,
                TensorBatches(splits.test, rank, world_size, batch_size, device))
    s = config.stream
    every = max(2, round(1 / config.data["val_fraction"])) if config.data["val_fraction"] else 0
    common = dict(source=s["source"], columns=s["columns"], in_chans=config.in_chans, image_size=s["image_size"],
                  rank=rank, world_size=world_size, batch_size=batch_size, device=device, seed=seed)
    train_rows = s["train_rows"] - (s["train_rows"] // every if every else 0)
    return (StreamBatches(split=s["train_split"], num_rows=train_rows, keep=(every, False) if every else None, **common),
            StreamBatches(split=s["train_split"], num_rows=0, keep=(every, True), **common) if every else None,
            StreamBatches(split=s["test_split"], num_rows=0, **common))


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
    import ray.train
    import ray.train.torch
    from timm.optim import create_optimizer_v2
    from timm.scheduler import create_scheduler_v2

    from pipeline.complexity import build_model

    hp, rank, world_size, device, autocast = worker_setup(config.threads, config.train)
    channels_last = hp.channels_last if hp.channels_last is not None else device.type == "cuda"

    train_batches, val_batches, test_batches = make_batches(config, rank, world_size, device)
    augment = Augment(config.mean, config.std, config.hflip and config.data["augment"],
                      config.data["max_shift"] if config.data["augment"] else 0, device, seed=hp.seed + rank)

    torch.manual_seed(hp.seed)
    model = build_model(config.model, config.num_classes, config.in_chans, **config.model_kwargs)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    # Models that drop whole branches in training (stochastic depth, FractalNet's drop-path) leave
    # parameters without gradients in some steps; they say so with `has_unused_parameters`.
    model = ray.train.torch.prepare_model(model, parallel_strategy_kwargs={
        "find_unused_parameters": bool(getattr(model, "has_unused_parameters", False))})
    optimizer = create_optimizer_v2(unwrap(model), opt=hp.optimizer, lr=hp.lr, weight_decay=hp.weight_decay,
                                    momentum=hp.momentum)
    scheduler, _ = create_scheduler_v2(optimizer, sched=hp.scheduler, num_epochs=hp.epochs,
                                       warmup_epochs=hp.warmup_epochs, min_lr=hp.min_lr, step_on_epochs=False,
                                       updates_per_epoch=train_batches.steps_per_epoch)
    criterion = nn.CrossEntropyLoss(label_smoothing=hp.label_smoothing)
    eval_criterion = nn.CrossEntropyLoss()

    start_epoch, history = 0, []
    if (state := load_checkpoint()) is not None:
        unwrap(model).load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if scheduler is not None:
            scheduler.load_state_dict(state["scheduler"])
        start_epoch, history = state["epoch"], state["history"]
    log = EpochLog(config) if rank == 0 else None
    if log and state is not None:
        log.resumed(start_epoch)
        for past in history:  # epochs a checkpoint holds but MLflow may have missed
            log.epoch(past)

    def checkpoint(epoch: int, extra: dict[str, torch.Tensor] | None = None):
        if rank != 0:
            return None
        return save_checkpoint({"model": unwrap(model).state_dict(), "optimizer": optimizer.state_dict(),
                                "scheduler": scheduler.state_dict() if scheduler is not None else None,
                                "epoch": epoch, "history": history, "model_name": config.model,
                                "model_kwargs": config.model_kwargs}, extra)

    steps = train_batches.steps_per_epoch
    for epoch in range(start_epoch, hp.epochs):
        model.train()
        started = time.perf_counter()
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device)
        seen = 0
        last_event = started
        for step, (images, labels) in enumerate(train_batches.epoch(epoch)):
            inputs = augment.train(images)
            if channels_last:
                inputs = inputs.contiguous(memory_format=torch.channels_last)
            with autocast():
                loss, logits = classification_loss(model, model(inputs), labels, criterion)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if hp.grad_clip:
                nn.utils.clip_grad_norm_(model.parameters(), hp.grad_clip)
            optimizer.step()
            if scheduler is not None:
                scheduler.step_update(epoch * steps + step + 1)
            loss_sum += loss.detach() * len(labels)
            correct += (logits.detach().argmax(1) == labels).sum()
            seen += len(labels)
            if log and step == 0 and epoch == start_epoch:
                log.first_step(config.started_at)
            if log and time.perf_counter() - last_event > 2:
                last_event = time.perf_counter()
                log.event("step", epoch=epoch + 1, epochs=hp.epochs, step=step + 1, steps=steps,
                          loss=loss_sum.item() / seen,
                          images_per_sec=seen * world_size / (last_event - started))
        train_time = time.perf_counter() - started
        train_loss, train_correct, train_seen = all_reduce_sum([loss_sum.item(), correct.item(), seen], device)
        val = evaluate(unwrap(model), val_batches.in_order(256), augment, eval_criterion, device, autocast) \
            if val_batches is not None else {}
        per_epoch_test = {}  # training vs test curves (the ResNet degradation plot); never in sweeps
        if getattr(hp, "eval_test_every_epoch", False) and getattr(config, "evaluate_test", True):
            test_now = evaluate(unwrap(model), test_batches.in_order(256), augment, eval_criterion, device, autocast)
            per_epoch_test = {"test_loss": test_now["loss"], "test_top1_err": 100 - test_now["top1"]}
        train_top1 = 100 * train_correct / train_seen
        metrics = {"epoch": epoch + 1, "train_loss": train_loss / train_seen,
                   "train_top1": train_top1, "train_top1_err": 100 - train_top1,
                   **{f"val_{k}": v for k, v in val.items()}, **per_epoch_test,
                   "train_samples_per_sec": train_seen / train_time, "epoch_time_s": time.perf_counter() - started,
                   "lr": optimizer.param_groups[0]["lr"]}
        history.append(metrics)
        ray.train.report(metrics, checkpoint=checkpoint(epoch + 1))
        if log:
            log.epoch(metrics)

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
             "train_samples_per_sec": sum(h["train_samples_per_sec"] for h in steady) / len(steady),
             "train_time_s": sum(h["epoch_time_s"] for h in history)}
    if test is not None:
        final.update({"top1": test["top1"], "top1_err": 100 - test["top1"], "top5": test["top5"],
                      "top5_err": 100 - test["top5"], "test_loss": test["loss"]})
    if not math.isfinite(test["loss"] if test is not None else history[-1]["train_loss"]):
        final["diverged"] = 1.0
    ray.train.report({**history[-1], **final}, checkpoint=checkpoint(hp.epochs, extra))
    if log:
        log.final(final)


# Workers log to MLflow themselves; on a cluster they do not share the driver's environment.
CREDENTIALS = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN",
               "MLFLOW_TRACKING_INSECURE_TLS")


def tracking_credentials() -> dict[str, str]:
    import os

    return {key: os.environ[key] for key in CREDENTIALS if key in os.environ}


def fit(config: WorkerConfig, resources, storage_path: str, run_name: str, loop=None,
        callbacks: list | None = None):
    """Run the worker loop (default: `train_loop_per_worker`) on `resources.num_workers` Ray Train
    workers; returns Ray's Result.

    Reusing `run_name` under the same storage path resumes from its latest checkpoint. `callbacks` are
    Ray Train UserCallbacks (in a Tune trial: `ray.tune.integration.ray_train.TuneReportCallback()`).
    """
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    use_gpu = resources.gpus_per_worker > 0
    per_worker = {"CPU": resources.cpus_per_worker, **({"GPU": resources.gpus_per_worker} if use_gpu else {})}
    trainer = TorchTrainer(
        loop or train_loop_per_worker,
        train_loop_config=config,
        scaling_config=ScalingConfig(num_workers=resources.num_workers, use_gpu=use_gpu,
                                     resources_per_worker=per_worker),
        run_config=RunConfig(name=run_name, storage_path=storage_path,
                             failure_config=FailureConfig(max_failures=resources.max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=2), callbacks=callbacks,
                             worker_runtime_env={"env_vars": tracking_credentials()}),
    )
    return trainer.fit()
