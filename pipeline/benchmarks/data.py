"""`pipeline benchmark data`: streamed decoding through Ray Data against a DataLoader."""
from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table


def _legacy_stream(source: str, split: str, image_size: int, batch_size: int):
    """The streaming path this product had before Ray Data, kept here only to measure it: `datasets` streams
    the parquet shards and the training process decodes each image with PIL and resizes it, one at a time."""
    import datasets
    import numpy as np

    files = sorted(str(p) for p in Path(source).glob(f"**/{split}-*.parquet"))
    dataset = datasets.load_dataset("parquet", data_files={split: files}, split=split, streaming=True)
    dataset = dataset.shuffle(seed=0, buffer_size=1000)
    for batch in dataset.iter(batch_size=batch_size):
        arrays = [np.asarray(image.convert("RGB").resize((image_size, image_size)), dtype=np.uint8)
                  for image in batch["image"]]
        yield torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2), torch.as_tensor(batch["label"])


class _PieceDataset(torch.utils.data.IterableDataset):
    """A plain DataLoader's view of the same shards: each loader worker reads whole pieces, decodes with the same
    decoder and applies the same timm transform (the usual webdataset-style loader)."""

    def __init__(self, split, transform: dict):
        self.split, self.transform = split, transform

    def __iter__(self):
        import numpy as np

        from pipeline.data.stream import decode_image, read_piece
        from pipeline.data.transforms import build_transform

        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        tf, pil = build_transform(self.transform)
        for piece in range(worker, len(self.split.pieces), workers):
            read = read_piece(self.split, piece, np.arange(self.split.counts[piece]))
            for blob, label, where in zip(read["bytes"], read["label"], read["where"]):
                yield tf(decode_image(blob, 3, where, self.split.image_column, pil=pil)), label


def _decode_rates(split, count: int = 200) -> dict[str, float]:
    """Decode-only images/s on one thread: PIL against libjpeg-turbo through torchvision.io.decode_jpeg, the
    same JPEGs, alternated three times (best of each)."""
    import io

    import numpy as np
    from PIL import Image

    from pipeline.data.stream import decode_image, read_piece

    blobs = []
    for piece in range(len(split.pieces)):
        blobs += read_piece(split, piece, np.arange(split.counts[piece]))["bytes"]
        if len(blobs) >= count:
            break
    decoders = {"PIL": lambda blob: np.asarray(Image.open(io.BytesIO(blob)).convert("RGB")),
                "decode_jpeg": lambda blob: decode_image(blob, 3, "", "image")}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    best = {name: 0.0 for name in decoders}
    for _ in range(3):
        for name, decode in decoders.items():
            started = time.perf_counter()
            for blob in blobs[:count]:
                decode(blob)
            best[name] = max(best[name], len(blobs[:count]) / (time.perf_counter() - started))
    torch.set_num_threads(threads)
    return best


def _rate(batches, warmup: int = 2) -> tuple[float, int]:
    """Images/s of an iterator of (images, labels) batches, timed after `warmup` batches."""
    seen, started = 0, None
    for index, (images, _) in enumerate(batches):
        if index == warmup:
            started, seen = time.perf_counter(), 0
        seen += len(images)
    return (seen / (time.perf_counter() - started) if started else 0.0), seen


def run_data_benchmark(console: Console, images: int = 3000, size: tuple[int, int] = (400, 350),
                       image_size: int = 224, batch_size: int = 64, cores: int | None = None,
                       folder: str | None = None, model_images: int = 640) -> dict[str, float]:
    """Images/s of the old streaming path, the Ray Data path and a plain DataLoader on the same cores and the
    same synthetic JPEG shards; then the share of a ResNet-18's step time spent waiting for data."""
    import tempfile

    from pipeline.data.batches import StreamedBatches
    from pipeline.data.stream import describe, write_jpeg_shards
    from pipeline.data.transforms import resolve_transforms
    from pipeline.engine.cluster import init_ray

    cores = cores or os.cpu_count() or 1
    root = Path(folder or tempfile.mkdtemp(prefix="data-benchmark-"))
    if not list(root.glob("data/train-*.parquet")):
        console.print(f"writing {images} JPEGs of {size[0]}x{size[1]} px in parquet shards to {root} ...")
        write_jpeg_shards(root, "train", images, max(1, images // 500), size, 100)
        write_jpeg_shards(root, "validation", max(64, images // 10), 1, size, 100)
    split = describe(str(root), "train")
    transforms = resolve_transforms("resnet50", {"interpolation": "bilinear"}, image_size, 3,
                                    (0.5,) * 3, (0.25,) * 3)
    console.print(f"{split.num_rows} images in {len(split.pieces)} pieces; train transform RandomResizedCrop "
                  f"{image_size} + flip; {cores} core(s); batch {batch_size}")
    results = {}
    decode = _decode_rates(split)
    console.print(f"decode only, 1 thread: PIL {decode['PIL']:,.0f} images/s, torchvision.io.decode_jpeg "
                  f"(libjpeg-turbo) {decode['decode_jpeg']:,.0f} images/s")
    results.update({f"decode_{k}": v for k, v in decode.items()})
    # The old path decodes in the consumer's own thread; it gets the cores as torch threads.
    torch.set_num_threads(cores)
    results["old"], _ = _rate(_legacy_stream(str(root), "train", image_size, batch_size))
    loader = torch.utils.data.DataLoader(_PieceDataset(split, transforms["train"]), batch_size=batch_size,
                                         num_workers=cores, persistent_workers=True, prefetch_factor=4)
    _rate(loader)  # first pass: worker start-up
    results["dataloader"], _ = _rate(loader)
    del loader
    init_ray(num_cpus=cores)
    stream = StreamedBatches(split, None, transforms, 0, 1, batch_size, torch.device("cpu"), prefetch_batches=4)
    _rate(stream.epoch(0))  # first epoch: Ray Data's worker processes start and import torch
    results["ray_data"], _ = _rate(stream.epoch(1))
    table = Table(title=f"Streaming {size[0]}x{size[1]} JPEGs to {image_size} px batches on {cores} core(s)")
    for column in ("path", "images/s", "images/s per core", "vs DataLoader"):
        table.add_column(column, justify="left" if column == "path" else "right")
    for name, key in (("before: datasets stream + PIL in the training thread", "old"),
                      (f"torch DataLoader, {cores} workers, same decode + transforms", "dataloader"),
                      ("Ray Data path (this product)", "ray_data")):
        table.add_row(name, f"{results[key]:,.0f}", f"{results[key] / cores:,.0f}",
                      f"{results[key] / results['dataloader']:.2f}")
    console.print(table)
    results["data_wait_frac"] = _data_wait(root, model_images, cores)
    console.print(f"ResNet-18 at 112 px, 1 Ray Train worker (1 CPU) fed by the Ray Data path on the other "
                  f"{cores - 1} core(s): [bold]{100 * results['data_wait_frac']:.1f}%[/] of step time waiting for "
                  "data (goal < 5% when decoding outpaces the model)")
    return results


def _data_wait(root: Path, images: int, cores: int) -> float:
    """data_wait_frac of the product's training loop (second epoch) for a ResNet-18 at 112 px on one CPU worker."""
    import tempfile

    from pipeline.engine.context import RunContext
    from pipeline.spec.loading import parse_spec
    from pipeline.training.harness import fit, read_state
    from pipeline.training.loop import train_loop_per_worker
    from pipeline.training.recipe import worker_config

    spec = parse_spec({
        "name": "data-wait", "models": ["resnet18"], "stages": ["train"],
        "data": {"name": "huggingface", "path": str(root), "test_split": "validation", "streaming": True,
                 "image_size": 112, "val_fraction": 0.0},
        "train": {"epochs": 2, "batch_size": 32, "optimizer": "momentum", "lr": 0.1, "warmup_epochs": 0},
        "resources": {"num_workers": 1, "cpus_per_worker": 1, "max_failures": 0}})
    entry = spec.models[0]
    config, _ = worker_config(RunContext(spec), entry, spec.train, spec.data, 1, entry.name)
    train = config.stream.train
    keep = []  # the first pieces, about `images` images: the model, not the data, bounds the run's length
    for piece in train.pieces:
        if sum(p[-1] - p[-2] for p in keep) >= images:
            break
        keep.append(piece)
    train = type(train)(train.name, train.kind, tuple(keep), train.image_column, train.label_column, train.classes)
    config = dataclasses.replace(config, stream=dataclasses.replace(config.stream, train=train), evaluate_test=False)
    result = fit(train_loop_per_worker, config, spec.resources, tempfile.mkdtemp(prefix="data-wait-"), f"data-wait-{int(time.time())}")
    if result.error:
        raise result.error
    return read_state(result.checkpoint)["history"][-1]["data_wait_frac"]
