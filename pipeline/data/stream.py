"""Large image data sets streamed through Ray Data: sharded parquet (as `datasets` writes them) or image folders.

The driver describes a split once (`describe`: its files, pieces and row counts, read from parquet footers
or a folder listing, never a pass over the images). Each training worker then builds, per epoch, a Ray Data
pipeline over its own pieces: reading, JPEG decoding and the timm transforms run in Ray Data's CPU tasks,
spread over the cluster, and the worker only receives uint8 batches (`pipeline.data.batches.StreamedBatches`).

Why our own split rather than Ray Train's `DataConfig` / `streaming_split(n, equal=True)`: Train V2 calls
`streaming_split` once per run, so the shuffle of every epoch comes from one plan and a seed can only vary
with Ray Data's execution count (`RandomSeedConfig(reseed_after_execution=True)`), which restarts at 0 in a
resumed run; and its split hands blocks to whichever worker asks first, so who sees which image is not
reproducible. Here the split is a pure function of (seed, epoch, world size): the epoch's permutation of the
pieces is dealt out as contiguous runs of rows, so no image is seen twice in an epoch, at most
world_size - 1 are dropped to keep the step counts equal, a resumed run shuffles as an uninterrupted one, and
evaluation reads the split in its file order, every image exactly once.
"""
from __future__ import annotations

import io
import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.errors import PipelineError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff"}
PIECE_ROWS = 256  # rows per read task; a parquet row group larger than this is read in slices


@dataclass(frozen=True)
class ShardedSplit:
    """One split in a fixed order: pieces of rows (a parquet row group or a slice of one, or a run of image
    files), each with its row count; global row ids run through the pieces in order."""

    name: str  # the source and split, for messages
    kind: str  # "parquet" or "folder"
    pieces: tuple[tuple[Any, ...], ...]  # parquet: (file, row group, start, stop); folder: (start, stop)
    image_column: str = "image"
    label_column: str = "label"
    classes: tuple[str, ...] = ()
    files: tuple[str, ...] = ()  # folder: every image file, in order
    labels: tuple[int, ...] = ()  # folder: their labels
    offsets: tuple[int, ...] = field(default=())  # first global row id of each piece

    def __post_init__(self):
        if not self.offsets:
            counts = [p[-1] - p[-2] for p in self.pieces]
            object.__setattr__(self, "offsets", tuple(int(x) for x in np.cumsum([0, *counts])[:-1]))

    @property
    def counts(self) -> list[int]:
        return [p[-1] - p[-2] for p in self.pieces]

    @property
    def num_rows(self) -> int:
        return sum(self.counts)


def parquet_files(folder: Path, split: str) -> list[str]:
    """A split's shards: `<split>-*.parquet`, `<split>/*.parquet`, `<split>.parquet`, or the hub's `data/<split>-*`."""
    found = [*folder.glob(f"{split}-*.parquet"), *folder.glob(f"{split}/*.parquet"),
             *folder.glob(f"{split}.parquet"), *folder.glob(f"data/{split}-*.parquet")]
    return sorted({str(p) for p in found})


def _class_names_from_schema(schema, label_column: str) -> list[str]:
    """The ClassLabel names `datasets` keeps in a parquet file's schema metadata."""
    try:
        features = json.loads((schema.metadata or {}).get(b"huggingface", b"{}"))["info"]["features"]
        return list(features[label_column].get("names") or [])
    except (KeyError, ValueError, TypeError, AttributeError):
        return []


def _describe_parquet(name: str, files: list[str], image_column: str, label_column: str) -> ShardedSplit:
    import pyarrow.parquet as pq

    pieces, classes = [], []
    for path in files:
        try:
            metadata = pq.ParquetFile(path).metadata
            schema = pq.read_schema(path)
        except Exception as exc:  # pyarrow raises ArrowInvalid, OSError, ...
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise PipelineError(f"shard {path} is not a readable parquet file ({reason}): replace or remove it") from None
        for role, column in (("image", image_column), ("label", label_column)):
            if column not in schema.names:
                raise PipelineError(f"shard {path} has no {role} column '{column}' (columns: "
                                    f"{', '.join(schema.names)}): set data.{role}_column")
        classes = classes or _class_names_from_schema(schema, label_column)
        for group in range(metadata.num_row_groups):
            rows = metadata.row_group(group).num_rows
            pieces += [(path, group, start, min(start + PIECE_ROWS, rows)) for start in range(0, rows, PIECE_ROWS)]
    return ShardedSplit(name, "parquet", tuple(pieces), image_column, label_column, tuple(classes))


def _describe_folder(name: str, root: Path) -> ShardedSplit:
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    files, labels = [], []
    for label, cls in enumerate(classes):
        images = sorted(str(p) for p in (root / cls).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        files += images
        labels += [label] * len(images)
    if not files:
        raise PipelineError(f"image folder {root} holds no images in class folders ({root}/<class>/<image>.jpg)")
    pieces = tuple((start, min(start + PIECE_ROWS, len(files))) for start in range(0, len(files), PIECE_ROWS))
    return ShardedSplit(name, "folder", pieces, classes=tuple(classes), files=tuple(files), labels=tuple(labels))


def describe(source: str, split: str, image_column: str = "image", label_column: str = "label") -> ShardedSplit:
    """A split of a local folder: parquet shards when it holds any, else an image folder `<split>/<class>/<image>`.
    The first image is decoded here, so a wrong image column fails before any worker starts."""
    folder = Path(source).expanduser()
    if not folder.is_dir():
        if source.startswith((".", "/", "~")):
            raise PipelineError(f"data path {source} does not exist: point data.path to a folder of parquet shards "
                                "or of images")
        raise PipelineError(f"data set '{source}' streams from local shards: download it first (e.g. `hf download "
                            f"--repo-type dataset {source} --local-dir DIR`) and set data.path to DIR")
    name = f"{folder}:{split}"
    if files := parquet_files(folder, split):
        described = _describe_parquet(name, files, image_column, label_column)
    elif (folder / split).is_dir():
        described = _describe_folder(name, folder / split)
    else:
        raise PipelineError(f"data folder {folder} has no '{split}' split: add {split}-*.parquet shards or "
                            f"{folder / split}/<class>/<images>, or set data.{split}_split")
    if described.num_rows == 0:
        raise PipelineError(f"split '{split}' of {folder} has no rows")
    first = read_piece(described, 0, np.array([0]))
    decode_image(first["bytes"][0], 3, first["where"][0], described.image_column)
    return described


# --- What runs in Ray Data's tasks -----------------------------------------------------------------------

def read_piece(split: ShardedSplit, piece: int, rows: np.ndarray) -> dict[str, list]:
    """Encoded images and labels of some rows (indices within the piece) of one piece."""
    spec = split.pieces[piece]
    if split.kind == "folder":
        start = spec[0]
        paths = [split.files[start + int(r)] for r in rows]
        labels = [split.labels[start + int(r)] for r in rows]
        return {"bytes": [Path(p).read_bytes() for p in paths], "label": labels, "where": paths}
    import pyarrow.parquet as pq

    path, group, start, _ = spec
    table = pq.ParquetFile(path).read_row_group(group, columns=[split.image_column, split.label_column])
    take = np.asarray(rows, dtype=np.int64) + start
    table = table.take(take)
    images = table.column(split.image_column).to_pylist()
    blobs = [image.get("bytes") if isinstance(image, dict) else image for image in images]
    return {"bytes": blobs, "label": table.column(split.label_column).to_pylist(),
            "where": [f"shard {path} row {group}:{int(t)}" for t in take]}


def decode_image(blob, in_chans: int, where: str, column: str, pil: bool = False):
    """Encoded bytes to a uint8 (C, H, W) tensor: libjpeg-turbo through torchvision for JPEGs (measured
    faster than PIL), PIL for other formats (or when a PIL-only transform follows: `pil=True` returns a PIL image)."""
    import torch
    import torchvision.io as tio
    from PIL import Image

    if not isinstance(blob, (bytes, bytearray)) or not blob:
        raise PipelineError(f"{where}: column '{column}' holds no encoded image bytes: point data.image_column "
                            "to the image column")
    try:
        if not pil and blob[:2] == b"\xff\xd8":
            mode = tio.ImageReadMode.GRAY if in_chans == 1 else tio.ImageReadMode.RGB
            return tio.decode_jpeg(torch.frombuffer(bytearray(blob), dtype=torch.uint8), mode=mode)
        image = Image.open(io.BytesIO(blob)).convert("L" if in_chans == 1 else "RGB")
    except Exception as exc:  # PIL and libjpeg raise many types on corrupt data
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise PipelineError(f"{where}: column '{column}' holds bytes that are not an image ({reason}): "
                            "fix or remove the shard, or point data.image_column to the image column") from None
    if pil:
        return image
    array = np.asarray(image, dtype=np.uint8)
    return torch.from_numpy(array.reshape(*array.shape[:2], -1).copy()).permute(2, 0, 1)


def decode_batch(batch: dict[str, np.ndarray], split: ShardedSplit, transform: dict[str, Any], in_chans: int,
                 keep: tuple[int, str] | None, seed: int) -> dict[str, np.ndarray]:
    """One task: a piece's rows (`skip`/`take` of its kept rows), read, decoded and transformed to uint8
    (N, C, S, S). Random transforms are seeded by (seed, epoch, piece), so an epoch augments the same way
    on a resumed run."""
    import torch

    from pipeline.data.transforms import build_transform

    torch.set_num_threads(1)
    images, labels, ids = [], [], []
    tf, pil = build_transform(transform)
    for piece, skip, take, epoch in zip(batch["piece"], batch["skip"], batch["take"], batch["epoch"]):
        piece = int(piece)
        rows = kept_rows(split, piece, keep)[int(skip):int(skip) + int(take)]
        if not len(rows):
            continue
        random.seed(hash((seed, int(epoch), piece)))
        torch.manual_seed(hash((seed, int(epoch), piece)) & 0x7FFF_FFFF)
        read = read_piece(split, piece, rows)
        for blob, where in zip(read["bytes"], read["where"]):
            image = decode_image(blob, in_chans, where, split.image_column, pil=pil)
            images.append(tf(image))
        labels += read["label"]
        ids += [split.offsets[piece] + int(r) for r in rows]
    shape = (0, in_chans, transform["size"], transform["size"])
    return {"image": torch.stack(images).numpy() if images else np.zeros(shape, dtype=np.uint8),
            "label": np.asarray(labels, dtype=np.int64), "id": np.asarray(ids, dtype=np.int64)}


# --- Who reads what --------------------------------------------------------------------------------------

def kept_rows(split: ShardedSplit, piece: int, keep: tuple[int, str] | None) -> np.ndarray:
    """Row indices within a piece that a view keeps: all, or with keep=(k, 'val') the rows whose global id is
    a multiple of k (the held-out validation set), with (k, 'train') all others."""
    offset, count = split.offsets[piece], split.counts[piece]
    rows = np.arange(count, dtype=np.int64)
    if keep is None:
        return rows
    every, part = keep
    held = (offset + rows) % every == 0
    return rows[held] if part == "val" else rows[~held]


def kept_counts(split: ShardedSplit, keep: tuple[int, str] | None) -> list[int]:
    if keep is None:
        return split.counts
    every, part = keep
    counts = []
    for offset, count in zip(split.offsets, split.counts):
        held = (offset + count - 1) // every - (offset - 1) // every if count else 0  # multiples of k in range
        counts.append(held if part == "val" else count - held)
    return counts


def assign(counts: list[int], order: list[int], rank: int, world_size: int,
           equal: bool) -> list[tuple[int, int, int]]:
    """This rank's (piece, skip, take) runs of the pieces taken in `order`: a contiguous share of their rows.
    equal=True: every rank gets total // world_size rows (the remainder, < world_size, is dropped);
    equal=False: the shares differ by one row at most and cover every row."""
    total = sum(counts[p] for p in order)
    if equal:
        size = total // world_size
        begin, end = rank * size, (rank + 1) * size
    else:
        begin, end = rank * total // world_size, (rank + 1) * total // world_size
    runs, position = [], 0
    for piece in order:
        lo, hi = max(begin, position), min(end, position + counts[piece])
        if lo < hi:
            runs.append((piece, lo - position, hi - lo))
        position += counts[piece]
    return runs


def epoch_order(num_pieces: int, seed: int, epoch: int) -> list[int]:
    """The pieces' order in a training epoch: a permutation seeded by (seed, epoch), the same on every rank."""
    return np.random.default_rng([seed, epoch]).permutation(num_pieces).tolist()


def write_jpeg_shards(root: Path, split: str, num_images: int, shards: int, size: tuple[int, int],
                      num_classes: int, seed: int = 0, quality: int = 90, layout: str = "data") -> list[str]:
    """A synthetic set of JPEGs in parquet shards as `datasets` writes them (ImageNet's hub layout:
    `data/<split>-0000i-of-0000n.parquet`, an image struct column with bytes, a ClassLabel label), for
    benchmarks and tests. Each image is a smooth per-class colour field plus noise; row i has label i % classes."""
    import datasets
    from PIL import Image

    folder = root / layout if layout else root
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    width, height = size
    base = rng.integers(0, 256, (num_classes, 3), dtype=np.int64)
    features = datasets.Features({"image": datasets.Image(),
                                  "label": datasets.ClassLabel(names=[f"class{i}" for i in range(num_classes)])})
    paths, per_shard = [], -(-num_images // shards)
    gradient = np.linspace(0, 60, width, dtype=np.float32)[None, :, None]
    for shard in range(shards):
        rows = range(shard * per_shard, min(num_images, (shard + 1) * per_shard))
        blobs = []
        for row in rows:
            pixels = base[row % num_classes][None, None, :] + gradient + rng.normal(0, 20, (height, width, 3))
            buffer = io.BytesIO()
            Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(buffer, "JPEG", quality=quality)
            blobs.append({"bytes": buffer.getvalue(), "path": None})
        part = datasets.Dataset.from_dict({"image": blobs, "label": [r % num_classes for r in rows]}, features=features)
        path = folder / f"{split}-{shard:05d}-of-{shards:05d}.parquet"
        part.to_parquet(str(path))
        paths.append(str(path))
    return paths
