"""Image-classification data sets through Hugging Face `datasets`: hub names or local copies.

A local folder is read as parquet shards (`<split>-*.parquet` or `<split>/*.parquet`) when it holds
any, otherwise as an imagefolder (`<split>/<class>/<image>`). Small sets become uint8 tensors once and
are cached on disk; large ones stream batch by batch, each worker reading its own shards.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from pipeline.data.tensors import ImageTensors
from pipeline.errors import PipelineError

CACHE_DIR = Path(os.environ.get("PIPELINE_CACHE", Path.home() / ".cache" / "vision-pipeline"))


def _parquet_files(folder: Path, split: str) -> list[str]:
    return sorted(str(p) for p in [*folder.glob(f"{split}-*.parquet"), *folder.glob(f"{split}/*.parquet"),
                                   *folder.glob(f"{split}.parquet")])


def open_dataset(source: str, split: str, streaming: bool = False):
    """`datasets.load_dataset` on a hub id or a local folder, with one-line errors."""
    import datasets

    folder = Path(source).expanduser()
    try:
        if folder.is_dir():
            files = _parquet_files(folder, split)
            if files:
                return datasets.load_dataset("parquet", data_files={split: files}, split=split, streaming=streaming)
            if not (folder / split).is_dir():
                raise PipelineError(f"data folder {folder} has no '{split}' split: add {folder / split}/<class>/"
                                    f"<images> or {split}-*.parquet files, or set data.{split}_split")
            return datasets.load_dataset("imagefolder", data_dir=str(folder), split=split, streaming=streaming)
        if source.startswith((".", "/", "~")):
            raise PipelineError(f"data path {source} does not exist: point data.path to a folder of images or parquet files")
        return datasets.load_dataset(source, split=split, streaming=streaming)
    except PipelineError:
        raise
    except Exception as exc:  # datasets raises many types (network, missing split, bad files)
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise PipelineError(f"cannot load data set '{source}' split '{split}': {reason} "
                            f"(check the name, the network, or give a local copy as data.path)") from None


def _check_columns(features, image_column: str, label_column: str, source: str) -> None:
    for role, column in (("image", image_column), ("label", label_column)):
        if column not in features:
            raise PipelineError(f"data set '{source}' has no {role} column '{column}' (columns: "
                                f"{', '.join(features)}): set data.{role}_column")


def _class_names(features, label_column: str, labels: torch.Tensor) -> list[str]:
    names = getattr(features[label_column], "names", None)
    return list(names) if names else [str(i) for i in range(int(labels.max()) + 1)]


def decode_images(images, in_chans: int, image_size: int) -> torch.Tensor:
    """PIL images to one uint8 (N, C, H, W) tensor, converted to `in_chans` channels and resized."""
    mode = "L" if in_chans == 1 else "RGB"
    arrays = []
    for image in images:
        image = image.convert(mode)
        if image.size != (image_size, image_size):
            image = image.resize((image_size, image_size))
        arrays.append(np.asarray(image, dtype=np.uint8).reshape(image_size, image_size, in_chans))
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


def count_rows(source: str, split: str) -> int:
    """Number of records of a split without reading it: parquet footers, or the hub's split info."""
    folder = Path(source).expanduser()
    if folder.is_dir() and (files := _parquet_files(folder, split)):
        import pyarrow.parquet as pq

        return sum(pq.ParquetFile(f).metadata.num_rows for f in files)
    info = open_dataset(source, split, streaming=True).info
    if info.splits and split in info.splits:
        return info.splits[split].num_examples
    raise PipelineError(f"cannot tell the size of '{source}' split '{split}': use parquet shards or a hub data set with split info")


def load_image_tensors(source: str, split: str, image_column: str, label_column: str, in_chans: int,
                       image_size: int, mean, std, hflip: bool, classes: list[str] | None = None) -> ImageTensors:
    """Load a whole split as tensors, once: later calls read the cached tensors."""
    dataset = open_dataset(source, split)
    _check_columns(dataset.features, image_column, label_column, source)
    key = "|".join(map(str, [source, split, image_column, label_column, in_chans, image_size, dataset._fingerprint]))
    cache_file = CACHE_DIR / f"{hashlib.sha256(key.encode()).hexdigest()[:24]}.pt"
    if cache_file.exists():
        images, labels, cached_classes = torch.load(cache_file)
    else:
        images = decode_images(dataset[image_column], in_chans, image_size)
        labels = torch.as_tensor(dataset[label_column], dtype=torch.long)
        cached_classes = _class_names(dataset.features, label_column, labels)
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        torch.save((images, labels, cached_classes), cache_file)
    return ImageTensors(images, labels, classes or cached_classes, tuple(mean), tuple(std), hflip, name=source)


def stream_batches(source: str, split: str, image_column: str, label_column: str, in_chans: int,
                   image_size: int, batch_size: int, rank: int, world_size: int, epoch: int,
                   seed: int = 0, shuffle: bool = True,
                   keep: tuple[int, bool] | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield (uint8 images, labels) batches of this worker's part of a sharded data set.

    keep=(k, True) keeps only every k-th record of the split, keep=(k, False) all the others.
    """
    from datasets.distributed import split_dataset_by_node

    dataset = open_dataset(source, split, streaming=True)
    _check_columns(dataset.features or {image_column: None, label_column: None}, image_column, label_column, source)
    if keep is not None:
        every, held_out = keep
        dataset = dataset.filter(lambda _, index: (index % every == 0) == held_out, with_indices=True)
    dataset = split_dataset_by_node(dataset, rank=rank, world_size=world_size)
    if shuffle:
        dataset = dataset.shuffle(seed=seed, buffer_size=1000)
        dataset.set_epoch(epoch)
    for batch in dataset.iter(batch_size=batch_size):
        yield (decode_images(batch[image_column], in_chans, image_size),
               torch.as_tensor(batch[label_column], dtype=torch.long))
