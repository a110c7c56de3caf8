"""System metrics: MLflow's own monitors sampled without a run (as on a training worker), their reports as
the relay's events, and the spec switch that turns them off."""
import time

from pipeline.spec.loading import parse_spec
from pipeline.tracking.store import Tracker
from pipeline.tracking.system_metrics import Sampler
from pipeline.tracking.writer import RunWriter


def test_a_sampler_reports_node_metrics_that_the_run_writer_logs(tmp_path):
    events = []
    sampler = Sampler(lambda kind, **payload: events.append({"kind": kind, **payload}), node=1,
                      sample_every_s=0.05, report_every_s=0.2).start()
    deadline = time.time() + 60  # the sampler's first sample creates MLflow's monitors: slow on a loaded machine
    while len(events) < 2 and time.time() < deadline:
        time.sleep(0.05)
    sampler.stop()
    assert len(events) >= 2 and all(e["kind"] == "system" and e["node"] == 1 for e in events)
    metrics = events[-1]["metrics"]
    assert 0 <= metrics["system/node_1/cpu_utilization_percentage"] <= 100
    assert 0 < metrics["system/node_1/system_memory_usage_percentage"] < 100
    assert metrics["system/node_1/system_memory_usage_megabytes"] > 10
    steps = [e["step"] for e in events]
    assert steps == sorted(steps)
    # The driver's writer logs each report at its step (seconds since the sampler started).
    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}")
    run_id = tracker.start_run(tracker.experiment_id("sys"), "run")
    writer = RunWriter(tracker, run_id)
    for event in events:
        writer(event)
    history = tracker.client.get_metric_history(run_id, "system/node_1/cpu_utilization_percentage")
    assert sorted(h.step for h in history) == sorted(steps)


def test_the_spec_switch():
    on = parse_spec({"name": "s", "models": ["lenet5"]})
    off = parse_spec({"name": "s", "models": ["lenet5"], "tracking": {"system_metrics": False}})
    assert on.tracking.system_metrics is True and off.tracking.system_metrics is False
