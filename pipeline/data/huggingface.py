"""Image-classification data sets through Hugging Face `datasets`: hub names or local copies.

A local folder is read as parquet shards (`<split>-*.parquet` or `<split>/*.parquet`) when it holds
any, otherwise as an imagefolder (`<split>/<class>/<image>`). Small sets become uint8 tensors once and
are cached on disk; large ones stream through Ray Data (`pipeline.data.stream`).
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import torch

from pipeline.data.stream import parquet_files
from pipeline.data.tensors import ImageTensors
from pipeline.errors import PipelineError

CACHE_DIR = Path(os.environ.get("PIPELINE_CACHE", Path.home() / ".cache" / "vision-pipeline"))


def open_dataset(source: str, split: str, streaming: bool = False):
    """`datasets.load_dataset` on a hub id or a local folder, with one-line errors."""
    import datasets

    folder = Path(source).expanduser()
    try:
        if folder.is_dir():
            files = parquet_files(folder, split)
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


def load_image_tensors(source: str, split: str, image_column: str, label_column: str, in_chans: int,
                       image_size: int, mean, std, hflip: bool, classes: list[str] | None = None) -> ImageTensors:
    """Load a whole split as tensors, once: later calls read the cached tensors."""
    dataset = open_dataset(source, split)
    _check_columns(dataset.features, image_column, label_column, source)
    key = "|".join(map(str, [source, split, image_column, label_column, in_chans, image_size, dataset._fingerprint]))
    cache_file = CACHE_DIR / f"{hashlib.sha256(key.encode()).hexdigest()[:24]}.pt"
    if cache_file.exists():
        images, labels, cached_classes = torch.load(cache_file, weights_only=True)
    else:
        images = decode_images(dataset[image_column], in_chans, image_size)
        labels = torch.as_tensor(dataset[label_column], dtype=torch.long)
        cached_classes = _class_names(dataset.features, label_column, labels)
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        torch.save((images, labels, cached_classes), cache_file)
    return ImageTensors(images, labels, classes or cached_classes, tuple(mean), tuple(std), hflip, name=source)
