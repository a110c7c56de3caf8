"""The stage registry: stages register a planner; the engine plans a spec's units in stage order."""
from __future__ import annotations

from typing import Callable

from pipeline.engine.context import RunContext

# The order stages are planned in: a stage's units may only need units of stages before it.
STAGE_ORDER = ("train", "sweep", "retrain", "clip_pretrain", "zero_shot", "ensemble", "tables", "leaderboard")


PLANNERS: dict[str, Callable[[RunContext, list], list]] = {}


def stage(name: str):
    """Register a stage's planner: (context, units planned so far) -> this stage's units."""
    def register(function):
        PLANNERS[name] = function
        return function
    return register
