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
            _check_class_folders(folder, split)
            datasets.disable_progress_bars()  # a local folder: nothing to download, and the run has its own display
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


def _check_class_folders(folder: Path, split: str) -> None:
    """An imagefolder's splits hold one folder per class; with one class in all, `datasets` infers no labels."""
    split_folder = folder / split
    classes = sorted({p.name for s in folder.iterdir() if s.is_dir() for p in s.iterdir()
                      if p.is_dir() and not p.name.startswith(".")})
    if len(classes) == 1:
        raise PipelineError(f"image folder {split_folder} has a single class folder '{classes[0]}': a classifier needs "
                            f"at least two classes, so add a folder per class ({split_folder}/<class>/<images>)")


def _check_classes(names: list[str], source: str, label_column: str) -> None:
    if len(names) < 2:
        raise PipelineError(f"data set '{source}' has {len(names)} class(es) in column '{label_column}' "
                            f"({', '.join(names)}): a classifier needs at least two classes; check data.path and "
                            "data.label_column")


def open_images(dataset, image_column: str, source: str, skip_unreadable: bool = False) -> tuple[list, list[int]]:
    """The split's images as PIL images, each decoded whole, and the rows they come from. Files that are not
    images are named in one error (PIL's traceback from inside the run otherwise), or with `skip_unreadable`
    left out, their count and the first of them printed."""
    import io

    import datasets
    from PIL import Image

    if not isinstance(dataset.features[image_column], datasets.Image):
        return dataset[image_column], list(range(len(dataset)))
    images, rows, broken = [], [], []
    for i, item in enumerate(dataset.cast_column(image_column, datasets.Image(decode=False))[image_column]):
        try:
            image = Image.open(io.BytesIO(item["bytes"]) if item.get("bytes") else item["path"])
            image.load()  # a truncated file fails here, not at its first use
            images.append(image)
            rows.append(i)
        except (OSError, Image.DecompressionBombError) as exc:  # UnidentifiedImageError is an OSError
            where = item.get("path") or f"row {i}"
            reason = str(exc).strip().splitlines()[0].replace(f" '{where}'", "") if str(exc).strip() else ""
            broken.append((where, reason or type(exc).__name__))
    if broken:
        (where, reason), more = broken[0], len(broken) - 1
        if skip_unreadable and images:
            print(f"data set '{source}': left out {len(broken)} of its {len(images) + len(broken)} images that are "
                  f"not images it can read (data.skip_unreadable), the first {where} ({reason})", flush=True)
            return images, rows
        others = f" and {more} more of its {len(images) + len(broken)} images" if more else ""
        fix = "remove or replace the file(s), or set data.skip_unreadable: true to leave them out"
        raise PipelineError(f"data set '{source}': {where} is not an image it can read ({reason}){others}: {fix}")
    return images, rows


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
                       image_size: int, mean, std, hflip: bool, classes: list[str] | None = None,
                       skip_unreadable: bool = False) -> ImageTensors:
    """Load a whole split as tensors, once: later calls read the cached tensors."""
    dataset = open_dataset(source, split)
    _check_columns(dataset.features, image_column, label_column, source)
    key = "|".join(map(str, [source, split, image_column, label_column, in_chans, image_size, dataset._fingerprint,
                             *(["skip_unreadable"] if skip_unreadable else [])]))
    cache_file = CACHE_DIR / f"{hashlib.sha256(key.encode()).hexdigest()[:24]}.pt"
    if cache_file.exists():
        images, labels, cached_classes = torch.load(cache_file, weights_only=True)
    else:
        labels = torch.as_tensor(dataset[label_column], dtype=torch.long)
        cached_classes = _class_names(dataset.features, label_column, labels)
        _check_classes(cached_classes, source, label_column)
        opened, rows = open_images(dataset, image_column, source, skip_unreadable)
        images, labels = decode_images(opened, in_chans, image_size), labels[rows]
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        torch.save((images, labels, cached_classes), cache_file)
    return ImageTensors(images, labels, classes or cached_classes, tuple(mean), tuple(std), hflip, name=source)
