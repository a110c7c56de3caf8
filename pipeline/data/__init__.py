"""Data sets: named ones from the catalog, loaded as uint8 tensors split into train / validation / test."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from pipeline.data.catalog import DATASETS, DatasetInfo

if TYPE_CHECKING:  # torch is imported by the loaders, not by the spec's validation
    from pipeline.data.tensors import ImageTensors


@dataclass
class Splits:
    train: ImageTensors
    val: ImageTensors
    test: ImageTensors

    @property
    def classes(self) -> list[str]:
        return self.train.classes


def dataset_info(config) -> DatasetInfo:
    return DATASETS[config.name]


def is_streaming(config) -> bool:
    return config.streaming if config.streaming is not None else dataset_info(config).streaming


def normalization(config, in_chans: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std: the data set's own, or a generic (0.5, 0.25) for unnamed sets."""
    info = dataset_info(config)
    return info.mean or (0.5,) * in_chans, info.std or (0.25,) * in_chans


def _load_split(config, split: str) -> ImageTensors:
    info = dataset_info(config)
    if info.source == "idx":
        from pipeline.data.fashion_mnist import load_fashion_mnist

        return load_fashion_mnist(split, config.path)
    if info.source == "synthetic":
        from pipeline.data.synthetic import make_synthetic

        size = config.synthetic_size if split == "train" else max(10, config.synthetic_size // 5)
        return make_synthetic(size, image_size=config.image_size or info.image_size,
                              in_chans=config.in_chans or info.in_chans, seed=config.seed + (split != "train"))
    from pipeline.data.huggingface import load_image_tensors

    in_chans = config.in_chans or info.in_chans or 3
    return load_image_tensors(
        config.path or info.hub_id, config.train_split if split == "train" else config.test_split,
        config.image_column or info.image_column, config.label_column or info.label_column, in_chans,
        config.image_size or info.image_size or 32, *normalization(config, in_chans),
        info.hflip, list(info.classes) or None, config.skip_unreadable)


def load_splits(config) -> Splits:
    """Train and validation (a seeded split of the training set) and the test set, held apart. With
    `classes`, every split keeps those classes, relabelled 0..k-1; with `per_class`, the training images are
    that many of each class, drawn from what the validation split leaves (validation is as without it)."""
    train_full = _load_split(config, "train")
    test = _load_split(config, "test")
    if config.classes:
        train_full, test = train_full.select_classes(config.classes), test.select_classes(config.classes)
    train, val = train_full.split(config.val_fraction, config.seed)
    if config.per_class is not None:
        train = train.per_class(config.per_class, config.seed)
    return Splits(train.head(config.limit_train), val, test.head(config.limit_test))
