"""Workflows: the spec's stages run in order inside one MLflow parent run.

A stage is a function of the run context, in its own module `pipeline/stages/NAME.py`, registered
under its name with `@stage(NAME)`; later stages read what earlier ones left in `context.outputs`. Everything that can fail on user input is checked in
`preflight` before the first run is written to the tracking store.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable

import yaml
from rich.console import Console

from pipeline import stages
from pipeline.config import Spec


@dataclass
class RunContext:
    spec: Spec
    tracker: Any  # pipeline.tracking.Tracker
    experiment_id: str
    parent_run_id: str
    console: Console
    verbose: bool = False
    data: Any = None  # the loaded Splits (in memory) or None when the data set streams
    outputs: dict[str, Any] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)


STAGES: dict[str, Callable[[RunContext], None]] = {}


def stage(name: str):
    def register(function: Callable[[RunContext], None]):
        STAGES[name] = function
        return function
    return register


def preflight(spec: Spec):
    """Load the data and reach the tracking store; raise a one-line error on any problem."""
    from pipeline.data import is_streaming, load_splits
    from pipeline.tracking import check_reachable, resolve_uri

    uri = resolve_uri(spec.tracking.uri)
    check_reachable(uri)
    data = None if is_streaming(spec.data) else load_splits(spec.data)
    return uri, data


def run(spec: Spec, console: Console | None = None, verbose: bool = False) -> RunContext:
    from pipeline.cluster import init_ray
    from pipeline.tracking import Tracker

    console = console or Console()
    uri, data = preflight(spec)
    init_ray(verbose)
    tracker = Tracker(uri)
    experiment_id = tracker.experiment_id(spec.experiment_name)
    parent = tracker.start_run(experiment_id, f"{spec.name}-{time.strftime('%Y%m%d-%H%M%S')}",
                               params={"spec": spec.name, "stages": ",".join(spec.stages)},
                               tags={"spec": spec.name, "stage": "workflow", "dataset": spec.data.name})
    tracker.log_text(parent, yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False), "spec.yaml")
    context = RunContext(spec, tracker, experiment_id, parent, console, verbose, data)
    console.print(f"[bold]{spec.name}[/]: experiment '{spec.experiment_name}' in {uri} (run {parent})")
    status = "FAILED"
    try:
        for name in spec.stages:
            console.rule(f"stage: {name}")
            stages.load(name)
            STAGES[name](context)
        status = "FAILED" if context.failures else "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        tracker.finish(parent, status)
    return context
