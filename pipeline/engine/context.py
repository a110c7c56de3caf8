"""What stages see: the run context and the job of one unit."""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console

from pipeline.spec.schema import Spec


@dataclass
class RunContext:
    spec: Spec
    tracker: Any = None  # pipeline.tracking.store.Tracker
    experiment_id: str | None = None
    parent_run_id: str | None = None
    console: Console = field(default_factory=Console)
    verbose: bool = False
    outputs: dict[str, dict[str, Any]] = field(default_factory=dict)  # stage -> model (or unit) -> output
    failures: list[str] = field(default_factory=list)  # unit names
    failure_reasons: dict[str, str] = field(default_factory=dict)  # unit name -> one-line reason
    display: Any = None  # pipeline.engine.progress.WorkflowDisplay
    spec_yaml: str = ""  # the resolved spec, kept with every run

    # Initial weights resolved by the driver (pipeline/training/weights.py), by source, model and data shape.
    weights: dict[str, Any] = field(default_factory=dict)
    _splits: dict[str, Any] = field(default_factory=dict)  # data config digest -> (Splits, object ref)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def data(self):
        """The spec's data set in memory (None when it streams)."""
        return self.splits(self.spec.data)

    def splits(self, config=None):
        """A data set's in-memory Splits, loaded on first use by any unit (None when it streams)."""
        return self._loaded(config or self.spec.data)[0]

    def splits_ref(self, config=None):
        """The same Splits in Ray's object store, put there once for every unit's workers."""
        import ray

        config = config or self.spec.data
        splits = self.splits(config)
        if splits is None:
            return None
        with self._lock:
            key = config.model_dump_json()
            if self._splits[key][1] is None:
                self._splits[key] = (splits, ray.put(splits))
            return self._splits[key][1]

    def _loaded(self, config):
        from pipeline.data import is_streaming, load_splits

        key = config.model_dump_json()
        with self._lock:
            if key not in self._splits:
                self._splits[key] = (None if is_streaming(config) else load_splits(config), None)
            return self._splits[key]

    def print(self, text: str, **kwargs) -> None:
        (self.display or self.console).print(text, **kwargs)

    def failure_summary(self) -> str:
        """What failed and why, on one line."""
        if len(self.failures) == 1:
            name = self.failures[0]
            return f"{name} failed: {self.failure_reasons.get(name, '?')}"
        return f"{len(self.failures)} units failed: " + "; ".join(
            f"{name}: {self.failure_reasons.get(name, '?')}" for name in self.failures)


@dataclass
class Job:
    """One unit being run: its MLflow run (created or taken over by the engine), what it needs, and where
    its Ray Train run keeps checkpoints (`train_name`, the same when the unit resumes)."""

    context: RunContext
    unit: Any  # pipeline.engine.units.Unit
    run_id: str
    train_name: str
    inputs: dict[str, dict[str, Any]]  # unit name -> output, for the units it needs
    resumed: bool = False

    @property
    def spec(self) -> Spec:
        return self.context.spec

    @property
    def tracker(self):
        return self.context.tracker


def storage_of(spec: Spec) -> str:
    """Where Ray Train and Tune keep checkpoints: an absolute local path, or a URI as given."""
    from pathlib import Path

    return str(Path(spec.storage_path).expanduser().resolve()) if "://" not in spec.storage_path \
        else spec.storage_path
