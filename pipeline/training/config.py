"""What a training worker receives: one typed object, resolved by the driver."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


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
