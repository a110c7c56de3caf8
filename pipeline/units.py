"""Units of work and their identity: what a workflow caches, resumes, schedules and shows.

A stage fans out into units (one per model to train or sweep, one CLIP model to evaluate, one ensemble...).
A unit's content key hashes everything that decides its result; a FINISHED MLflow run tagged with the key
is its cached result. No torch, timm or Ray imports here: `pipeline status` plans without them.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable

# MLflow tags of a unit's run.
UNIT_TAG = "unit"
KEY_TAG = "unit_key"
CODE_TAG = "code_version"
TRAIN_NAME_TAG = "ray_train_name"  # the Ray Train run (checkpoint folder) the unit resumes from
LEASE_OWNER_TAG = "lease_owner"  # driver id: host/pid/uuid
LEASE_EXPIRES_TAG = "lease_expires"  # unix seconds; the holder renews it while it runs the unit

ROOT = Path(__file__).resolve().parents[1]
SOURCE_PACKAGES = ("pipeline", "models")


def digest(value: Any, length: int = 16) -> str:
    """A stable hash of a JSON-able value (dict keys sorted)."""
    text = json.dumps(value, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:length]


@lru_cache(maxsize=1)
def code_version() -> str:
    """The package version plus a hash of the project's own source files: the same in a checkout and in a
    Ray Job's working directory, where `.git` is not uploaded."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        package = version("vision-pipeline")
    except PackageNotFoundError:
        package = "0"
    sha = hashlib.sha256()
    for package_dir in SOURCE_PACKAGES:
        for path in sorted((ROOT / package_dir).rglob("*.py")):
            sha.update(path.relative_to(ROOT).as_posix().encode())
            sha.update(path.read_bytes())
    return f"{package}+{sha.hexdigest()[:12]}"


def data_fingerprint(data) -> dict[str, Any]:
    """What identifies the data a unit reads, cheaply: the checksums the IDX loader verifies, the synthetic
    generator's arguments, or a local folder's file names and sizes; a hub id as given (its revision is the
    hub's). Never a pass over the images."""
    from pipeline.data.catalog import DATASETS

    info = DATASETS[data.name]
    config = data.model_dump(mode="json")
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


@dataclass
class Unit:
    """One piece of work of a stage.

    `identity` is what decides the result (hashed into the key, with the code version); for a unit whose
    inputs are only known once what it needs has run (a retrain needs its sweep's best config), `identify`
    computes it from those results. `resources` is what it asks of the cluster (None: it runs in the driver
    and needs no Ray). `run(job)` does the work and returns the unit's output for the units that need it.
    """

    name: str  # stage/model, unique in the workflow
    stage: str
    run: Callable[[Any], dict[str, Any]]
    needs: list[str] = field(default_factory=list)  # names of units whose outputs it reads
    after: list[str] = field(default_factory=list)  # units it runs after, whether they finish or fail
    identity: dict[str, Any] | None = None
    identify: Callable[[dict[str, dict[str, Any]]], dict[str, Any]] | None = None
    resources: Any = None  # a ResourcesConfig, or None
    model: str | None = None
    title: str | None = None  # its MLflow run name (default: the model, else the unit name)
    parallel: int = 1  # copies of `resources` it holds at once (a sweep's concurrent trials)
    cacheable: bool = True  # a leaderboard is rebuilt every time
    uses_data: bool = False  # needs the in-memory data set
    from_run: Callable[[Any, Any], dict[str, Any]] | None = None  # (run, context) -> output of a cached run
    key: str | None = None

    def resolve_key(self, outputs: dict[str, dict[str, Any]]) -> str:
        identity = self.identity if self.identify is None else self.identify(outputs)
        self.key = digest({"stage": self.stage, "identity": identity, "code": code_version()}, 24)
        return self.key

    @property
    def slug(self) -> str:
        return self.name.replace("/", "-")
