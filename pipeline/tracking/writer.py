"""The driver's writer of a training run: events from rank 0 become MLflow metrics, once each."""
from __future__ import annotations

import os
import signal
import threading
from typing import Any, Callable


# The first epoch each attempt of a run trained, logged at its first step: a resumed attempt that trained again
# epochs its checkpoint holds shows here (the epoch metrics are logged once and cannot show it).
ATTEMPT_START = "attempt_start_epoch"


class RunWriter:
    """Writes a training run's epochs into its MLflow run, each epoch once: steps already logged (by an
    earlier attempt of the same unit, or a worker restarted from a checkpoint) are skipped, and the epochs
    a checkpoint holds are logged at the end if an event was lost."""

    def __init__(self, tracker, run_id: str, started_at: float | None = None,
                 show: Callable[[dict], None] | None = None):
        self.tracker, self.run_id, self.started_at, self.show = tracker, run_id, started_at, show
        self.logged = tracker.logged_steps(run_id, "epoch")
        self._startup_logged = bool(tracker.logged_steps(run_id, "startup_s"))
        self._lock = threading.Lock()

    def __call__(self, event: dict) -> None:
        kind = event["kind"]
        if kind == "epoch":
            test_fault("before_epoch_write", event.get("model"), event["metrics"]["epoch"])
            if not self.epoch(event["metrics"]):
                return  # an epoch a restarted worker sent again: logged and shown already
            test_fault("after_epoch_write", event.get("model"), event["metrics"]["epoch"])
        elif kind == "system":  # a node's CPU, memory and GPU use (pipeline.tracking.system_metrics)
            self.tracker.log(self.run_id, event["metrics"], step=int(event["step"]))
        elif kind == "resumed":
            self.tracker.client.set_tag(self.run_id, "resumed_from_epoch", str(event["epoch"]))
        elif kind == "first_step":
            if "epoch" in event:  # one value per attempt (a start or a restart of the workers): where it began
                self.tracker.log(self.run_id, {ATTEMPT_START: event["epoch"]}, step=int(event["epoch"]))
            if event.get("node"):
                self.tracker.client.set_tag(self.run_id, "ray_node_id", event["node"])
            with self._lock:
                if not self._startup_logged and self.started_at is not None:
                    self.tracker.log(self.run_id, startup_parts(self.started_at, event["time"], event.get("marks")))
                    self._startup_logged = True
        if self.show is not None:
            self.show(event)

    def epoch(self, metrics: dict[str, float]) -> bool:
        """Log an epoch's metrics unless they are logged already; whether they were new."""
        step = int(metrics["epoch"])
        with self._lock:
            if step in self.logged:
                return False
            self.tracker.log(self.run_id, metrics, step=step)
            self.logged.add(step)
            return True

    def history(self, history: list[dict[str, Any]]) -> None:
        for metrics in history:
            self.epoch(metrics)


FAULT_ENV = "PIPELINE_TEST_FAULT"


def test_fault(point: str, unit: str | None, epoch: float) -> None:
    """Test-only hook of the fault-injection suite (tests/test_faults.py), inert unless $PIPELINE_TEST_FAULT is
    `<point>:<unit>:<epoch>:<SIGNAL>`: at that point this process sends itself the signal, to hit moments no
    outside observer can time (between an epoch's report and its MLflow write; the final evaluation)."""
    wanted = os.environ.get(FAULT_ENV)
    if wanted and wanted.rpartition(":")[0] == f"{point}:{unit}:{int(epoch)}":
        os.kill(os.getpid(), signal.Signals[wanted.rpartition(":")[2]])


# The parts of a Train run's start-up, from `fit` to its first step, as rank 0 marked them.
STARTUP_PARTS = (("startup_workers_s", None, "loop"),  # placement group, worker processes, torch, process group
                 ("startup_imports_s", "loop", "imports"), ("startup_data_s", "imports", "data"),
                 ("startup_model_s", "data", "model"), ("startup_first_step_s", "model", None))


def startup_parts(started_at: float, first_step: float, marks: dict[str, float] | None) -> dict[str, float]:
    parts = {"startup_s": first_step - started_at}
    if marks:
        for key, begin, end in STARTUP_PARTS:
            parts[key] = (marks[end] if end else first_step) - (marks[begin] if begin else started_at)
    return parts
