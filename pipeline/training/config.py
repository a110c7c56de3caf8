"""What a training worker receives: typed, frozen objects resolved by the driver (`recipe.worker_config`).

A worker reads attributes of these and nothing else; no field has a fallback here, and nothing in the
worker's imports knows the spec's schema."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Optimization:
    """The optimizer, its learning-rate schedule and the batch it steps on, resolved for the run's world size."""

    optimizer: str
    lr: float  # already scaled to the global batch
    weight_decay: float
    momentum: float
    scheduler: str  # a timm scheduler name; plateau steps once per epoch on validation top-1
    warmup_epochs: int
    min_lr: float
    decay_epochs: float
    decay_milestones: tuple[int, ...]
    decay_rate: float
    grad_clip: float | None
    micro_batch: int  # per worker and step
    grad_accum_steps: int
    global_batch: int
    layer_decay: float | None = None  # timm's layer-wise decay of the lr (create_optimizer_v2's layer_decay)
    head_lr_scale: float | None = None  # the classifier's lr as a multiple of the others' (timm's lr_scale)


@dataclass(frozen=True)
class Mixing:
    """timm's Mixup/CutMix; None on the recipe when both alphas are 0."""

    mixup: float
    cutmix: float
    prob: float
    switch_prob: float


@dataclass(frozen=True)
class Recipe:
    """How a worker trains: everything of the spec's train section, resolved."""

    epochs: int
    seed: int
    optim: Optimization
    mixing: Mixing | None
    label_smoothing: float
    ema_decay: float | None
    precision: str  # auto | fp32 | bf16
    channels_last: bool | None  # None: on GPU
    compile: bool
    eval_test_every_epoch: bool
    freeze: str | int | None = None  # "backbone": only the classifier trains; N: the first N layer groups frozen


@dataclass(frozen=True)
class Init:
    """The weights a run starts from, resolved and adapted to the model by the driver
    (`pipeline.training.weights`): they load strictly into the model the worker builds."""

    source: str  # what the lineage names: scratch, timm:TAG, file:NAME#DIGEST, models:/m-ID
    digest: str  # of the adapted weights; part of the unit's key
    weights: Any = field(default=None, compare=False)  # the state dict, or its ray.ObjectRef


@dataclass(frozen=True)
class TensorAugment:
    """The augmentation of an in-memory set, applied on the worker's device (`pipeline.data.augment`)."""

    hflip: bool
    max_shift: int


@dataclass(frozen=True)
class Stream:
    """A streamed set: its splits, timm's resolved train/eval transforms, and how workers read it."""

    train: Any  # pipeline.data.stream.ShardedSplit
    test: Any
    transforms: dict[str, Any]  # `pipeline.data.transforms.resolve_transforms`
    val_every: int  # every k-th training row is held out for validation; 0: no validation
    train_cpus: float  # the training workers' CPUs, not Ray Data's to plan with
    prefetch_batches: int = 4


@dataclass(frozen=True)
class WorkerConfig:
    """Everything a training worker needs, picklable; built by the driver."""

    model: str
    model_kwargs: dict[str, Any]
    recipe: Recipe
    num_classes: int
    in_chans: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    augment: TensorAugment  # off (no flip, no shift) on a streamed set: its transforms augment it
    threads: int = 1
    splits_ref: Any = None  # ray.ObjectRef of in-memory Splits; None when the data set streams
    stream: Stream | None = None
    progress: Any = None  # the ray.util.queue.Queue of `fit`'s relay (set by `fit`)
    label: str = ""  # the unit's name in progress events
    resume_from: str | None = None  # the checkpoint folder to start from (set by `fit`)
    staging: str | None = None  # where rank 0 writes a checkpoint before Ray copies it (set by `fit`)
    evaluate_test: bool = True  # sweep trials select on validation only and never see the test set
    system_metrics: bool = True  # each node's CPU, memory and GPU use, sent through the relay
    init: Init | None = None  # None: random weights
