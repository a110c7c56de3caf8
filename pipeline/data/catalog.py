"""The named data sets: where they come from, their classes, image size and normalization."""
from __future__ import annotations

from dataclasses import dataclass

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)

FASHION_MNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    source: str  # "idx" (local IDX files), "huggingface" (`datasets`), or "synthetic"
    image_size: int
    in_chans: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    hflip: bool  # does a horizontal flip keep the label?
    classes: tuple[str, ...] = ()  # empty: read from the data set's label feature
    hub_id: str | None = None
    image_column: str = "image"
    label_column: str = "label"
    streaming: bool = False  # too large for memory: stream from sharded files


DATASETS: dict[str, DatasetInfo] = {info.name: info for info in [
    DatasetInfo("fashion_mnist", "idx", 28, 1, (0.2860,), (0.3530,), True, tuple(FASHION_MNIST_CLASSES)),
    DatasetInfo("mnist", "huggingface", 28, 1, (0.1307,), (0.3081,), False,
                tuple(str(d) for d in range(10)), hub_id="ylecun/mnist"),
    DatasetInfo("cifar10", "huggingface", 32, 3, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), True,
                tuple(CIFAR10_CLASSES), hub_id="uoft-cs/cifar10", image_column="img"),
    DatasetInfo("cifar100", "huggingface", 32, 3, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762), True,
                hub_id="uoft-cs/cifar100", image_column="img", label_column="fine_label"),
    DatasetInfo("imagenet-1k", "huggingface", 224, 3, IMAGENET_MEAN, IMAGENET_STD, True,
                hub_id="ILSVRC/imagenet-1k", streaming=True),
    # Any `datasets` image-classification set, local (imagefolder or parquet) or on the hub: give data.path.
    DatasetInfo("huggingface", "huggingface", 0, 0, (), (), True),
    DatasetInfo("synthetic", "synthetic", 28, 1, (0.5,), (0.25,), False, tuple(f"class{i}" for i in range(10))),
]}
