"""A run's data sets as MLflow inputs: the train, validation and test splits with their digests."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pipeline.data.fingerprint import data_fingerprint
from pipeline.hashing import digest

SPLITS = {"train": "train", "val": "validation", "test": "test"}  # split -> the input's context tag


def dataset_digest(data) -> str:
    """The digest of a data set as the workflow's unit keys see it (its fingerprint: checksums + split
    definition)."""
    return digest(data_fingerprint(data), 16)


def dataset_name(data, split: str) -> str:
    return f"{data.name}-{split}"


def dataset_source(data) -> tuple[str, str]:
    """(source type, source) of a data set: a local path, a hub id, or the synthetic generator."""
    from pipeline.data.catalog import DATASETS

    info = DATASETS[data.name]
    if info.source == "synthetic":
        return "code", f"pipeline.data.synthetic (seed {data.seed}, {data.synthetic_size} images)"
    if info.source == "idx":
        from pipeline.data.fashion_mnist import find_dir

        return "local", str(find_dir(data.path))
    source = data.path or info.hub_id
    return ("local", str(Path(source).expanduser().resolve())) if Path(source).expanduser().exists() \
        else ("hugging_face", source)


def log_datasets(tracker, run_id: str, data, shape: dict[str, Any], sizes: dict[str, int | None]) -> None:
    """The train, validation and test splits as inputs of a run (a split of size 0 is left out)."""
    from mlflow.entities import Dataset, DatasetInput, InputTag

    source_type, source = dataset_source(data)
    inputs = []
    for split, context in SPLITS.items():
        rows = sizes.get(split)
        if rows == 0:
            continue
        profile = {"num_rows": rows, "num_classes": len(shape["classes"]),
                   "image_shape": [shape["in_chans"], shape["image_size"], shape["image_size"]]}
        schema = {"fingerprint": data_fingerprint(data), "split": split, "classes": list(shape["classes"])}
        inputs.append(DatasetInput(
            Dataset(dataset_name(data, split), dataset_digest(data), source_type, source,
                    schema=json.dumps(schema, default=str)[:60000], profile=json.dumps(profile)),
            tags=[InputTag("mlflow.data.context", context)]))
    tracker.client.log_inputs(run_id, datasets=inputs)


def log_spec_datasets(context, run_id: str) -> None:
    """The spec's data set (its three splits) as inputs of a run, sized as loaded."""
    from pipeline.training.recipe import data_shape

    data = context.spec.data
    shape = data_shape(context, data)
    log_datasets(context.tracker, run_id, data, shape, split_sizes(context, data, shape))


def split_sizes(context, data, shape: dict[str, Any]) -> dict[str, int | None]:
    """Rows per split: as loaded in memory, or what a streamed set tells (None: unknown, 0: no such split)."""
    splits = context.splits(data)
    if splits is not None:
        return {"train": len(splits.train), "val": len(splits.val), "test": len(splits.test)}
    stream = shape["stream"]
    return {"train": stream["train"].num_rows if "train" in stream else None, "val": None if data.val_fraction else 0,
            "test": stream["test"].num_rows if "test" in stream else None}
