"""The distributed harness shared by the classification and CLIP loops: worker set-up, events,
reports with checkpoints, resume, and `fit` (one Ray Train run)."""
from __future__ import annotations

import tempfile
import uuid
from pathlib import Path
from typing import Any, Callable

import torch
import torch.distributed as dist
import torch.nn as nn

from pipeline.training.config import WorkerConfig

STATE_FILE = "state.pt"


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(tensor)
    return tensor.tolist()


class Events:
    """Rank 0's progress events (step, epoch with its metrics, resumed, final), sent to whoever called `fit`:
    that process is the run's only MLflow writer, so the workers need no tracking credentials."""

    def __init__(self, config: WorkerConfig):
        self.queue = config.progress
        self.label = config.label
        self.sender = uuid.uuid4().hex  # this attempt's events, numbered: the relay hands them on in order
        self.sent = 0

    def __call__(self, kind: str, **payload) -> None:
        if self.queue is not None:
            self.queue.actor.put_nowait.remote({"kind": kind, "model": self.label, **payload,
                                                "sender": self.sender, "seq": self.sent})
            self.sent += 1

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
           extra: dict[str, torch.Tensor] | None = None, staging: str | None = None) -> None:
    """`ray.train.report` with rank 0's checkpoint (the training state, extra tensors as files of their own)
    written to a temporary folder under `staging` (`fit`'s per-run folder, emptied by the driver, so a worker
    killed mid-report leaves no copy behind) that is removed once Ray has copied it to storage. The state holds
    tensors and plain containers only, so it loads with `weights_only=True`."""
    import ray.train

    if state is None:
        ray.train.report(metrics)
        return
    if staging:
        Path(staging).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="ckpt-", dir=staging) as directory:
        torch.save(state, Path(directory) / STATE_FILE)
        for name, tensor in (extra or {}).items():
            torch.save(tensor, Path(directory) / f"{name}.pt")
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(directory))


def load_state(path: Path) -> dict[str, Any]:
    """A checkpoint's state file, loaded without unpickling code (a planted file is refused in one line)."""
    import pickle

    from pipeline.errors import PipelineError

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        reason = str(exc).strip().splitlines()[0]
        raise PipelineError(f"checkpoint {path} holds more than tensors and plain containers and is not "
                            f"loaded ({reason}): delete it, or train the unit again with --rerun") from None


def read_state(checkpoint) -> dict[str, Any]:
    """The training state of a Ray checkpoint (see `load_state`)."""
    with checkpoint.as_directory() as directory:
        return load_state(Path(directory) / STATE_FILE)


def starting_checkpoint(run_folder: Path, say: Callable[[str], None]) -> str | None:
    """The newest checkpoint folder of a Ray Train run whose state loads, or None when it has none. Ray's own
    snapshot of its checkpoints can lag the folders on disk (an interrupt between a report and the snapshot's
    write), so the folders decide. A damaged newer one is named and skipped; if none loads, one line says which
    file and the way out."""
    from pipeline.errors import PipelineError

    folders = sorted((p for p in run_folder.glob("checkpoint_*") if p.is_dir()), reverse=True)  # named by time
    damaged = []
    for folder in folders:
        try:
            load_state(folder / STATE_FILE)
        except PipelineError:
            raise
        except Exception as exc:  # truncated or missing: a copy cut short
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:100]
            damaged.append(f"{folder / STATE_FILE} ({reason})")
            continue
        if damaged:
            say(f"checkpoint {'; '.join(damaged)} does not load: resuming from the older checkpoint {folder}")
        return str(folder)
    if damaged:
        raise PipelineError(f"no checkpoint of {run_folder.name} loads (the newest: {damaged[0]}): "
                            f"train the unit again with --rerun")
    return None


def load_checkpoint(start: str | None = None) -> dict[str, Any] | None:
    """The newer of Ray's latest checkpoint and `start` (the driver's choice, `starting_checkpoint`)."""
    import ray.train

    from pipeline.errors import PipelineError

    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None and start and Path(checkpoint.path).resolve() == Path(start).resolve():
        start = None  # the same folder: load it once
    states = [load_state(Path(start) / STATE_FILE)] if start else []
    if checkpoint is not None:
        try:
            states.append(read_state(checkpoint))
        except PipelineError:
            raise
        except Exception:
            if not states:  # damaged, and nothing else to start from
                raise
    return max(states, key=lambda state: state["epoch"], default=None)


def worker_setup(threads: int, precision: str):
    """What every training loop starts with: CPU threads, rank, world size, device, and an autocast context
    (bf16 on GPU with precision 'auto', or wherever precision is 'bf16')."""
    import ray.train
    import ray.train.torch

    torch.set_num_threads(threads)
    context = ray.train.get_context()
    device = ray.train.torch.get_device()
    use_bf16 = precision == "bf16" or (precision == "auto" and device.type == "cuda")

    def autocast():
        return torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16)

    return context.get_world_rank(), context.get_world_size(), device, autocast


def start_events(config, rank: int):
    """(rank 0's Events or None, this node's system-metrics sampler or None) of a loop whose config has
    `progress`, `label` and `system_metrics`."""
    from pipeline.tracking.system_metrics import start_for_worker

    sampler = start_for_worker(Events(config) if config.progress is not None else None, config.system_metrics)
    return (Events(config) if rank == 0 else None), sampler


def seed_epoch(seed: int, epoch: int, rank: int) -> int:
    """Seed torch's and numpy's random streams (dropout, drop-path, timm's Mixup) for one epoch of one rank,
    so a run resumed from an epoch's checkpoint follows the path an uninterrupted one takes; returns the seed."""
    import numpy as np

    value = seed * 1_000_003 + epoch * 1009 + rank
    torch.manual_seed(value)
    np.random.seed(value % 2**32)
    return value


def resume(events: Events | None, start: str | None = None, **parts) -> tuple[int, list[dict[str, float]]]:
    """(first epoch to train, history so far): the latest checkpoint's (Ray's, or `start`, the config's
    `resume_from`, whichever is newer), loaded into `parts` (each a name of the saved state and an object with
    `load_state_dict`, or None), or (0, []) on a fresh start."""
    if (state := load_checkpoint(start)) is None:
        return 0, []
    for name, part in parts.items():
        if part is not None and state.get(name) is not None:
            part.load_state_dict(state[name])
    if events:
        events.resumed(state["epoch"], state["history"])
    return state["epoch"], state["history"]


def checkpoint_state(rank: int, epoch: int, history: list[dict[str, float]], **parts) -> dict[str, Any] | None:
    """What rank 0 saves with an epoch's report: each part's state dict (None for a missing one), the epoch
    and the history; the other ranks save nothing."""
    if rank != 0:
        return None
    return {**{name: part.state_dict() if hasattr(part, "state_dict") else part for name, part in parts.items()},
            "epoch": epoch, "history": history}


def fit(loop, config, resources, storage_path: str, run_name: str, on_event=None, callbacks: list | None = None,
        say: Callable[[str], None] | None = None):
    """Run the worker loop (`pipeline.training.loop.train_loop_per_worker`, the CLIP loop...) on `resources.num_workers` Ray Train
    workers; returns Ray's Result.

    Rank 0's events reach `on_event` in this process through a `pipeline.training.relay.Relay` (this process is the
    run's MLflow writer; the workers get no credentials). Reusing `run_name` under the same storage path
    resumes from its newest checkpoint that loads (`starting_checkpoint`; `say` gets its one-line notes).
    `callbacks` are Ray Train UserCallbacks (in a Tune trial: `ray.tune.integration.ray_train.TuneReportCallback()`).
    """
    import dataclasses
    import logging
    import shutil

    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig

    from pipeline.training.relay import Relay
    from pipeline.training.trainer import Trainer

    start = staging = None
    if "://" not in storage_path:  # a local (or mounted shared) folder: its checkpoints can be read here
        run_folder = Path(storage_path) / run_name
        staging = run_folder / "staging"
        shutil.rmtree(staging, ignore_errors=True)  # what workers killed mid-report left
        start = starting_checkpoint(run_folder, say or logging.getLogger(__name__).warning)
    use_gpu = resources.gpus_per_worker > 0
    per_worker = {"CPU": resources.cpus_per_worker, **({"GPU": resources.gpus_per_worker} if use_gpu else {})}
    try:
        with Relay(on_event) as relay:
            trainer = Trainer(
                loop,
                train_loop_config=dataclasses.replace(config, progress=relay.queue, resume_from=start,
                                                      staging=staging and str(staging)),
                scaling_config=ScalingConfig(num_workers=resources.num_workers, use_gpu=use_gpu,
                                             resources_per_worker=per_worker),
                run_config=RunConfig(name=run_name, storage_path=storage_path,
                                     failure_config=FailureConfig(max_failures=resources.max_failures),
                                     checkpoint_config=CheckpointConfig(num_to_keep=2), callbacks=callbacks),
            )
            return trainer.fit()
    finally:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
