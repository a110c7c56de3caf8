"""Units of work and their identity: what a workflow caches, resumes, schedules and shows.

A stage fans out into units (one per model to train or sweep, one CLIP model to evaluate, one ensemble...).
A unit's content key hashes everything that decides its result; a FINISHED MLflow run tagged with the key
is its cached result. No torch, timm or Ray imports here: `pipeline status` plans without them.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from pipeline.engine.keys import unit_code, unit_key


@dataclass
class Unit:
    """One piece of work of a stage.

    `identity` is what decides the result (hashed into the key, with the digest of its `code`); for a unit whose
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
    # The source its result depends on, relative to the project (files, folders, `timm==VERSION`);
    # default: its stage's module. See pipeline.engine.keys.
    code: tuple[str, ...] = ()
    tags: dict[str, str] = field(default_factory=dict)  # set on its MLflow run when the run is created
    key: str | None = None

    @property
    def code_paths(self) -> tuple[str, ...]:
        return self.code or (f"pipeline/stages/{self.stage}.py",)

    @property
    def code_version(self) -> str:
        return unit_code(self.code_paths)

    def resolve_key(self, outputs: dict[str, dict[str, Any]]) -> str:
        identity = self.identity if self.identify is None else self.identify(outputs)
        self.key = unit_key(self.stage, identity, self.code_paths)
        return self.key

    @property
    def slug(self) -> str:
        return self.name.replace("/", "-")
