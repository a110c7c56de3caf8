"""What identifies the data a unit reads, cheaply, for its key and its MLflow inputs."""
from __future__ import annotations

from pathlib import Path
from typing import Any

SUBSET_OPTIONS = ("classes", "per_class", "skip_unreadable")  # DataConfig options that select images of the set


def data_fingerprint(data) -> dict[str, Any]:
    """What identifies the data a unit reads, cheaply: the checksums the IDX loader verifies, the synthetic
    generator's arguments, or a local folder's file names and sizes; a hub id as given (its revision is the
    hub's). Never a pass over the images."""
    from pipeline.data.catalog import DATASETS

    info = DATASETS[data.name]
    config = data.model_dump(mode="json")
    for subset in SUBSET_OPTIONS:  # unset, they leave the data (and the keys of units that read it) as before
        if config.get(subset) in (None, False):
            config.pop(subset, None)
    if info.source == "idx":
        from pipeline.data.fashion_mnist import FILES

        return {"config": config, "files": {split: [f[2] for f in files] for split, files in FILES.items()}}
    if info.source == "synthetic":
        return {"config": config}
    source = data.path or info.hub_id
    folder = Path(source).expanduser()
    if folder.is_dir():
        files = sorted(p for p in folder.rglob("*") if p.is_file())
        return {"config": config, "files": [(p.relative_to(folder).as_posix(), p.stat().st_size) for p in files]}
    return {"config": config, "hub_id": source}
