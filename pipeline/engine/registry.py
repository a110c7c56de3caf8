"""The stage registry: each stage is a plug-in module `pipeline/stages/NAME.py` that declares itself with
`@stage(NAME, after=..., per_model=..., preflight=...)` over its planner. The engine knows stages only
through what they declare here; it loads a spec's stage modules by name and plans them in dependency order.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Callable

from pipeline.engine.context import RunContext
from pipeline.engine.units import Unit
from pipeline.errors import PipelineError

EVERY_STAGE = "*"  # `after=EVERY_STAGE`: planned after every other stage of the spec (the leaderboard)
STAGES_PACKAGE = "pipeline.stages"


@dataclass(frozen=True)
class Stage:
    name: str
    plan: Callable[[RunContext, list[Unit]], list[Unit]]  # (context, units planned so far) -> its units
    after: tuple[str, ...] = ()  # stages whose units it may need or follow: planned (and rerun) before it
    per_model: bool = False  # a unit per model of the spec: its outputs are kept by model
    # Checks before any run is written, when a unit of the stage is about to run (names, columns, files).
    preflight: Callable[[RunContext], None] | None = None


STAGES: dict[str, Stage] = {}


def stage(name: str, after: tuple[str, ...] | str = (), per_model: bool = False,
          preflight: Callable[[RunContext], None] | None = None):
    """Register a stage's planner under `name`."""
    def register(plan):
        STAGES[name] = Stage(name, plan, (after,) if isinstance(after, str) else tuple(after), per_model, preflight)
        return plan
    return register


def load(name: str) -> Stage:
    """A stage by name, its module imported on first use (a spec names only the stages it runs)."""
    if name not in STAGES:
        try:
            importlib.import_module(f"{STAGES_PACKAGE}.{name}")
        except ModuleNotFoundError:
            raise PipelineError(f"unknown stage '{name}': no module {STAGES_PACKAGE}.{name}") from None
    return STAGES[name]


def ordered(names: list[str]) -> list[Stage]:
    """The named stages, each after the stages it declares `after` (those of them the spec has), otherwise
    in the spec's order."""
    stages = {name: load(name) for name in dict.fromkeys(names)}
    done: list[Stage] = []
    while len(done) < len(stages):
        for stage_ in stages.values():
            if stage_ in done:
                continue
            before = set(stages) - {stage_.name} if EVERY_STAGE in stage_.after else set(stage_.after) & set(stages)
            if before <= {s.name for s in done}:
                done.append(stage_)
                break
        else:
            raise PipelineError(f"stages wait on each other: {', '.join(s.name for s in stages.values() if s not in done)}")
    return done


def plan(context: RunContext) -> list[Unit]:
    """The spec's units, stage by stage, each stage's planner seeing the units planned before it."""
    units: list[Unit] = []
    for stage_ in ordered(context.spec.stages):
        units.extend(stage_.plan(context, list(units)))
    names = {u.name for u in units}
    for unit in units:
        if missing := [n for n in unit.needs if n not in names]:
            raise PipelineError(f"unit {unit.name} needs {missing[0]}, which no stage of the spec produces")
    return units


def preflight(context: RunContext, units: list[Unit]) -> None:
    """Each stage's checks, once, for the stages with a unit about to run."""
    for name in dict.fromkeys(u.stage for u in units):
        if (check := load(name).preflight) is not None:
            check(context)
